// Two headless Chromium pages join one videoroom through the real UI (lobby form, Join
// button) with fake camera and microphone, and check what a person would: each decodes the
// other's video and hears its audio (inbound-rtp stats through the page's `window.__videoroom`
// hook), both names are in the participants list, mute and camera-off show on the other side,
// the speaking marker lights up, and after one leaves the other loses its tile and list entry;
// a third page then joins in the leaver's place and plays on the m-lines the server recycled.
//
// "Stop camera" stops the camera track (the camera light goes off) and "Start camera" swaps a new
// one onto the same sender, after which the other side decodes video again. A page whose camera
// is denied joins with its microphone only (and says so), and the other side hears it and shows
// "no camera"; a page denied both joins with neither, and the other side shows "no camera · no mic".
//
// Usage: node tests/e2e/room.mjs <base url> <screenshot.png>
// With E2E_ROOM_LIMIT=2 (the server's peers-per-room limit) a third page checks that a full
// room is refused with a clear message in the lobby. With E2E_CONTROL=1 the script asks its
// driver to crash the room (prints `E2E_KILL_ROOM <room>`, reads one line `killed true` on stdin)
// and checks both pages show the reconnecting state, rejoin and get media flowing again.
// With E2E_TOKEN_LINK=?room=<name>&token=<token> (a server with a join secret) it only checks
// token links: that link joins through the lobby and keeps its token in the address bar, and the
// room's bare link is refused with a message saying a token is needed.
// Prints progress lines, then `E2E_RESULT <json>`; exits non-zero on any failed check.
// Driven by tests/it/e2e.rs (which starts the server); needs scripts/setup-chromium.sh.

import { createInterface } from "node:readline";
import path from "node:path";
import { STEP_MS, expectAccessible, joinRoom, log, pageConsole, runScript, speechLikeWav, waitFor } from "./lib.mjs";

const [base, screenshotPath] = process.argv.slice(2);
if (!base || !screenshotPath) {
  console.error("usage: node room.mjs <base url> <screenshot.png>");
  process.exit(2);
}
const ROOM = `e2e-${Date.now().toString(36)}`;
const ROOM_LIMIT = Number(process.env.E2E_ROOM_LIMIT || 0);

const stdinLines = [];
let stdinWaiter = null;
if (process.env.E2E_CONTROL === "1") {
  createInterface({ input: process.stdin }).on("line", (l) => {
    stdinLines.push(l);
    if (stdinWaiter) stdinWaiter();
  });
}
async function readLine(timeoutMs = STEP_MS) {
  const until = Date.now() + timeoutMs;
  while (stdinLines.length === 0) {
    if (Date.now() > until) throw new Error("no answer from the test driver on stdin");
    await new Promise((r) => {
      stdinWaiter = r;
      setTimeout(r, 200);
    });
  }
  return stdinLines.shift();
}

const join = (page, name) => joinRoom(page, base, ROOM, name);

const listNames = (page) =>
  page.$$eval("#participants li .name", (els) => els.map((e) => e.textContent));

const stats = (page) => page.evaluate(() => window.__videoroom.inboundStats());

function sum(list, kind, key) {
  return list.filter((s) => s.kind === kind).reduce((a, s) => a + (s[key] || 0), 0);
}

/** Samples the inbound stats twice and requires video frames and audio energy to grow. */
async function expectMediaFlowing(page, who) {
  return waitFor(`${who} decoding remote video and audio`, async () => {
    const a = await stats(page);
    await new Promise((r) => setTimeout(r, 1500));
    const b = await stats(page);
    const r = {
      videoStreams: b.filter((s) => s.kind === "video").length,
      audioStreams: b.filter((s) => s.kind === "audio").length,
      framesDecoded: sum(b, "video", "framesDecoded"),
      framesDecodedDelta: sum(b, "video", "framesDecoded") - sum(a, "video", "framesDecoded"),
      frameWidth: Math.max(0, ...b.filter((s) => s.kind === "video").map((s) => s.frameWidth)),
      totalAudioEnergy: sum(b, "audio", "totalAudioEnergy"),
      audioEnergyDelta: sum(b, "audio", "totalAudioEnergy") - sum(a, "audio", "totalAudioEnergy"),
      audioLevel: Math.max(0, ...b.filter((s) => s.kind === "audio").map((s) => s.audioLevel)),
      audioPackets: sum(b, "audio", "packetsReceived"),
    };
    r.ok =
      r.videoStreams >= 1 &&
      r.audioStreams >= 1 &&
      r.framesDecodedDelta > 5 &&
      (r.audioEnergyDelta > 0 || r.audioLevel > 0);
    return r;
  }, 45_000);
}

/** Samples the inbound stats twice and requires audio energy to grow (video not needed). */
async function expectAudioFlowing(page, who) {
  return waitFor(`${who} hearing remote audio`, async () => {
    const a = await stats(page);
    await new Promise((r) => setTimeout(r, 1000));
    const b = await stats(page);
    const r = {
      audioEnergyDelta: sum(b, "audio", "totalAudioEnergy") - sum(a, "audio", "totalAudioEnergy"),
      audioPacketsDelta: sum(b, "audio", "packetsReceived") - sum(a, "audio", "packetsReceived"),
    };
    r.ok = r.audioEnergyDelta > 0 && r.audioPacketsDelta > 0;
    return r;
  }, 45_000);
}

/** The camera's state on `page`: its sender's track and the local stream's video track. */
const localCamera = (page) => page.evaluate(() => {
  const pc = window.__videoroom.peerConnection();
  const sender = pc && pc.getSenders().find((s) => s.track && s.track.kind === "video");
  return { sender: sender ? sender.track.readyState : null, local: window.__videoroom.localVideoState() };
});

/** The text of the "no camera" / "no mic" marker on `name`'s tile on `page` ("" when none). */
const devicesMarker = (page, name) => page.evaluate((n) => {
  const t = [...document.querySelectorAll(".tile:not(.local)")].find((x) => x.title === n);
  const d = t && t.querySelector(".devices");
  return t ? (d.hidden ? "" : d.textContent) : null;
}, name);

async function peerView(page, name) {
  const s = await page.evaluate(() => window.__videoroom.state());
  return (s.peers || []).find((p) => p.name === name);
}

const result = { room: ROOM };
// Console errors and uncaught exceptions on the pages (not the deliberately offline one).
const pageLog = pageConsole();
const watchConsole = pageLog.watch;
const pageErrors = pageLog.errors;
await runScript(async (browser) => {
  result.browser = browser.version();
  const pages = {};
  for (const name of ["Alice", "Bob", "Carol"]) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 720 } });
    const page = await ctx.newPage();
    watchConsole(page, name);
    pages[name] = page;
  }
  const { Alice: alice, Bob: bob, Carol: carol } = pages;

  if (process.env.E2E_TOKEN_LINK) {
    const linkRoom = new URLSearchParams(process.env.E2E_TOKEN_LINK).get("room");
    await alice.goto(base + process.env.E2E_TOKEN_LINK);
    result.tokenRoom = await alice.inputValue("#room-name");
    await alice.fill("#display-name", "Alice");
    await alice.click("#join");
    await alice.waitForSelector("#room:not([hidden])", { timeout: STEP_MS });
    await waitFor("Alice joined with the token link", async () => {
      const st = await alice.evaluate(() => window.__videoroom.state());
      return { ok: st.phase === "joined" && !!st.selfId, st };
    });
    result.tokenInAddressBar = new URL(alice.url()).searchParams.get("token") ===
      new URLSearchParams(process.env.E2E_TOKEN_LINK).get("token");
    log(`a token link joins room ${result.tokenRoom}; token kept: ${result.tokenInAddressBar}`);
    await bob.goto(`${base}?room=${encodeURIComponent(linkRoom)}`);
    await bob.fill("#display-name", "Bob");
    await bob.click("#join");
    await waitFor("Bob told a token is needed", async () => {
      const visible = await bob.isVisible("#lobby-error");
      const text = visible ? await bob.textContent("#lobby-error-text") : "";
      return { ok: visible && /token/.test(text), text };
    });
    result.bareLink = await bob.textContent("#lobby-error-text");
    log(`the bare link is refused: "${result.bareLink}"`);
    await alice.screenshot({ path: screenshotPath });
    console.log(`E2E_RESULT ${JSON.stringify(result)}`);
    await browser.close();
    process.exit(0);
  }

  // The lobby validates before joining.
  await alice.goto(base);
  await alice.fill("#room-name", "has spaces");
  await alice.fill("#display-name", "Alice");
  await alice.click("#join");
  const roomError = await alice.textContent("#room-name-error");
  if (!roomError || (await alice.isHidden("#room-name-error"))) {
    throw new Error("the lobby accepted an invalid room name");
  }
  log(`lobby rejects a bad room name: "${roomError}"`);

  await join(alice, "Alice");
  await join(bob, "Bob");

  for (const [page, who] of [[alice, "Alice"], [bob, "Bob"]]) {
    await waitFor(`${who}'s participants list to show both`, async () => {
      const names = await listNames(page);
      return { ok: names.includes("Alice (you)") !== names.includes("Bob (you)") &&
        names.some((n) => n.startsWith("Alice")) && names.some((n) => n.startsWith("Bob")) &&
        names.length === 2, names };
    });
  }
  result.participantsAlice = await listNames(alice);
  result.participantsBob = await listNames(bob);
  log("participants (Alice's page):", JSON.stringify(result.participantsAlice));
  log("participants (Bob's page):", JSON.stringify(result.participantsBob));

  result.alice = await expectMediaFlowing(alice, "Alice");
  log("Alice receives:", JSON.stringify(result.alice));
  result.bob = await expectMediaFlowing(bob, "Bob");
  log("Bob receives:", JSON.stringify(result.bob));

  // Remote tiles show video (not the avatar).
  for (const [page, other] of [[alice, "Bob"], [bob, "Alice"]]) {
    await waitFor(`${other}'s tile playing video`, async () => {
      const r = await page.evaluate((n) => {
        const v = [...document.querySelectorAll(".tile:not(.local)")].find((t) => t.title === n);
        const video = v && v.querySelector("video");
        return { ok: !!video && !v.classList.contains("no-video") && video.videoWidth > 0 && video.currentTime > 0,
          w: video && video.videoWidth, t: video && video.currentTime };
      }, other);
      return r;
    });
  }

  // The speaking marker: the fake microphones play speech-like sound, and the server's voice
  // activity notification marks Alice speaking on Bob's page.
  result.speaking = await waitFor("Alice marked speaking on Bob's page", async () => {
    const p = await peerView(bob, "Alice");
    const s = await bob.evaluate(() => window.__videoroom.state());
    return { ok: !!p && p.speaking && p.voice, audioContext: s.audioContext, peer: p };
  }, 15_000, 50);
  log("speaking marker:", JSON.stringify(result.speaking));

  await alice.screenshot({ path: screenshotPath });
  log(`screenshot: ${screenshotPath}`);

  if (ROOM_LIMIT === 2) {
    await carol.goto(base);
    await carol.fill("#room-name", ROOM);
    await carol.fill("#display-name", "Carol");
    await carol.click("#join");
    await waitFor("Carol told the room is full", async () => {
      const visible = await carol.isVisible("#lobby-error");
      const text = visible ? await carol.textContent("#lobby-error-text") : "";
      return { ok: visible && /is full/.test(text) && (await carol.isVisible("#lobby")), text };
    });
    result.roomFull = await carol.textContent("#lobby-error-text");
    log(`a third peer is refused: "${result.roomFull}"`);
  }

  // Mute and camera-off travel as track metadata and show on the other side.
  await alice.click("#toggle-mic");
  await alice.click("#toggle-camera");
  await waitFor("Bob to see Alice muted with the camera off", async () => {
    const p = await peerView(bob, "Alice");
    const entry = await bob.$$eval("#participants li", (els) =>
      els.map((e) => e.textContent).find((t) => t.startsWith("Alice")));
    const tileOff = await bob.evaluate(() =>
      [...document.querySelectorAll(".tile:not(.local)")].some((t) => t.title === "Alice" && t.classList.contains("no-video")));
    return { ok: !!p && p.audioActive === false && p.videoActive === false && tileOff &&
      /muted/.test(entry) && /camera off/.test(entry), p, entry };
  });
  await expectAccessible(bob, "the room with a muted peer, camera off");
  const mutedShot = screenshotPath.replace(/\.png$/, "") + "-muted.png";
  await bob.screenshot({ path: mutedShot });
  log(`screenshot (Bob's page, Alice muted, camera off): ${mutedShot}`);
  // Stop camera stops the track (the camera light goes off), not just sends black frames.
  result.cameraStopped = await waitFor("Alice's camera track to be stopped", async () => {
    const c = await localCamera(alice);
    return { ok: c.sender === "ended" && c.local === "ended", ...c };
  });
  log("after Stop camera:", JSON.stringify(result.cameraStopped));
  await alice.click("#toggle-mic");
  await alice.click("#toggle-camera");
  await waitFor("Bob to see Alice unmuted with the camera on", async () => {
    const p = await peerView(bob, "Alice");
    return { ok: !!p && p.audioActive === true && p.videoActive === true, p };
  });
  result.cameraRestarted = await waitFor("Alice's new camera track on the same sender", async () => {
    const c = await localCamera(alice);
    return { ok: c.sender === "live" && c.local === "live", ...c };
  });
  result.afterCameraRestart = await expectMediaFlowing(bob, "Bob (Alice's camera restarted)");
  log("after Start camera, Bob receives:", JSON.stringify(result.afterCameraRestart));
  log("mute and camera toggles show on the other side");

  if (process.env.E2E_CONTROL === "1") {
    // The room process crashes: both channels get phx_error, phoenix rejoins into a fresh room,
    // and each page starts a new media session on its own.
    const before = {};
    for (const [page, who] of [[alice, "Alice"], [bob, "Bob"]]) {
      before[who] = await page.evaluate(() => window.__videoroom.state().selfId);
    }
    console.log(`E2E_KILL_ROOM ${ROOM}`);
    const answer = await readLine();
    if (answer.trim() !== "killed true") throw new Error(`the driver could not kill the room: ${answer}`);
    for (const [page, who] of [[alice, "Alice"], [bob, "Bob"]]) {
      await waitFor(`${who} to rejoin after the room crash`, async () => {
        const s = await page.evaluate(() => window.__videoroom.state());
        const names = await listNames(page);
        return { ok: s.phase === "joined" && s.reconnects >= 1 && !!s.selfId && s.selfId !== before[who] &&
          names.length === 2, phase: s.phase, reconnects: s.reconnects, names };
      });
    }
    result.afterCrash = {
      alice: await expectMediaFlowing(alice, "Alice"),
      bob: await expectMediaFlowing(bob, "Bob"),
    };
    log("after the room crash, Alice receives:", JSON.stringify(result.afterCrash.alice));
    log("after the room crash, Bob receives:", JSON.stringify(result.afterCrash.bob));
  }

  // Bob leaves: his tile and list entry go from Alice's page, and Bob is back in the lobby.
  await bob.click("#leave");
  await bob.waitForSelector("#lobby:not([hidden])", { timeout: STEP_MS });
  await waitFor("Bob's tile and list entry to leave Alice's page", async () => {
    const names = await listNames(alice);
    const tiles = await alice.$$eval(".tile", (els) => els.length);
    const count = await alice.textContent("#participant-count");
    return { ok: tiles === 1 && names.length === 1 && names[0] === "Alice (you)" && count === "1", names, tiles, count };
  });
  result.afterLeave = await listNames(alice);
  log("after Bob left, Alice's list:", JSON.stringify(result.afterLeave));

  // Carol takes Bob's place: the server recycles the m-lines that carried Bob (answered
  // inactive after he left) instead of growing Alice's connection, and Alice's browser must
  // still fire a fresh track for Carol on them, so Carol's tile plays.
  const recvonly = (page) => page.evaluate(() => {
    const pc = window.__videoroom.peerConnection();
    const t = pc ? pc.getTransceivers() : [];
    return {
      recvonly: t.filter((x) => x.direction === "recvonly").length,
      mids: t.filter((x) => x.direction === "recvonly").map((x) => x.mid),
    };
  });
  const beforeCarol = await recvonly(alice);
  await join(carol, "Carol");
  await waitFor("Carol's tile playing video on Alice's page", async () => {
    const r = await alice.evaluate(() => {
      const v = [...document.querySelectorAll(".tile:not(.local)")].find((t) => t.title === "Carol");
      const video = v && v.querySelector("video");
      return { ok: !!video && !v.classList.contains("no-video") && video.videoWidth > 0 && video.currentTime > 0,
        w: video && video.videoWidth, t: video && video.currentTime };
    });
    if (!r.ok) {
      r.debug = await alice.evaluate(async () => {
        const pc = window.__videoroom.peerConnection();
        if (!pc) return { pc: null, state: window.__videoroom.state() };
        return {
          tr: pc.getTransceivers().map((t) => [t.mid, t.direction, t.currentDirection, t.receiver.track.id, t.receiver.track.readyState, t.receiver.track.muted]),
          stats: await window.__videoroom.inboundStats(),
          sdp: pc.remoteDescription && pc.remoteDescription.sdp,
        };
      });
    }
    return r;
  });
  result.recycled = {
    alice: await expectMediaFlowing(alice, "Alice (receiving Carol)"),
    carol: await expectMediaFlowing(carol, "Carol"),
    before: beforeCarol,
    after: await recvonly(alice),
  };
  log("Carol on recycled m-lines:", JSON.stringify(result.recycled));
  await carol.click("#leave");
  await carol.waitForSelector("#lobby:not([hidden])", { timeout: STEP_MS });

  // Camera denied, microphone allowed: Frank joins with his microphone only and is told so;
  // Alice hears him and sees "no camera" on his tile.
  const audioOnly = await (await browser.newContext()).newPage();
  watchConsole(audioOnly, "Frank");
  await audioOnly.addInitScript(() => {
    const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    navigator.mediaDevices.getUserMedia = (c) => c && c.video
      ? Promise.reject(new DOMException("Permission denied", "NotAllowedError"))
      : real(c);
  });
  await join(audioOnly, "Frank");
  result.audioOnly = await waitFor("Frank told he joined with his microphone only", async () => {
    const text = await audioOnly.textContent("#media-notice-text");
    const focused = await audioOnly.evaluate(() => document.activeElement && document.activeElement.id);
    const mic = await audioOnly.isEnabled("#toggle-mic");
    const cam = await audioOnly.isDisabled("#toggle-camera");
    return { ok: /^Camera unavailable: you joined with your microphone only/.test(text) &&
      (await audioOnly.isVisible("#media-notice")) && focused === "media-notice" && mic && cam, text, focused, mic, cam };
  });
  log(`camera denied, microphone allowed: "${result.audioOnly.text}"`);
  result.audioOnlyMarker = await waitFor("Alice to show Frank has no camera", async () => {
    const marker = await devicesMarker(alice, "Frank");
    const p = await peerView(alice, "Frank");
    return { ok: marker === "no camera" && !!p && p.hasCamera === false && p.hasMic === true, marker };
  });
  result.audioOnlyHeard = await expectAudioFlowing(alice, "Alice (hearing Frank)");
  log("Alice hears Frank:", JSON.stringify(result.audioOnlyHeard));
  // The notice, the disabled camera button and the tiles pass axe-core too.
  await expectAccessible(audioOnly, "the room joined with the microphone only");
  // "Try again" asks for the devices again (a fresh join); the camera is still denied.
  const firstId = await audioOnly.evaluate(() => window.__videoroom.state().selfId);
  await audioOnly.click("#retry-media");
  await waitFor("Frank to rejoin after Try again, still told about the camera", async () => {
    const s = await audioOnly.evaluate(() => window.__videoroom.state());
    const text = await audioOnly.textContent("#media-notice-text");
    return { ok: s.phase === "joined" && !!s.selfId && s.selfId !== firstId && /^Camera unavailable/.test(text) &&
      (await audioOnly.isVisible("#media-notice")), phase: s.phase, text };
  });
  log("Try again rejoins and still says the camera is unavailable");
  await audioOnly.click("#leave");
  await audioOnly.waitForSelector("#lobby:not([hidden])", { timeout: STEP_MS });

  // Both denied: Dave joins with neither, is told so, and Alice shows that on his tile.
  const denied = await (await browser.newContext()).newPage();
  watchConsole(denied, "Dave");
  await denied.addInitScript(() => {
    navigator.mediaDevices.getUserMedia = () =>
      Promise.reject(new DOMException("Permission denied", "NotAllowedError"));
  });
  await join(denied, "Dave");
  await waitFor("Dave told he joined without camera and microphone", async () => {
    const text = await denied.textContent("#media-notice-text");
    return { ok: /^Camera and microphone unavailable/.test(text) && /denied/.test(text), text };
  });
  result.cameraDenied = await denied.textContent("#media-notice-text");
  log(`camera and microphone denied: "${result.cameraDenied}"`);
  result.deniedMarker = await waitFor("Alice to show Dave has no camera and no mic", async () => {
    const marker = await devicesMarker(alice, "Dave");
    return { ok: marker === "no camera · no mic", marker };
  });
  await alice.screenshot({ path: screenshotPath.replace(/\.png$/, "") + "-no-devices.png" });
  await denied.click("#leave");
  await denied.waitForSelector("#lobby:not([hidden])", { timeout: STEP_MS });

  // Error states a person must be told about.
  const offline = await (await browser.newContext()).newPage();
  await offline.addInitScript(() => {
    // Every WebSocket goes to a closed port: the server looks unreachable.
    const Real = window.WebSocket;
    window.WebSocket = class extends Real {
      constructor(_url, protocols) {
        super("ws://127.0.0.1:9/socket/websocket", protocols);
      }
    };
  });
  await offline.goto(base);
  await offline.fill("#room-name", ROOM);
  await offline.fill("#display-name", "Erin");
  await offline.click("#join");
  await waitFor("Erin told the server is unreachable", async () => {
    const visible = await offline.isVisible("#banner");
    const text = visible ? await offline.textContent("#banner") : "";
    return { ok: /Cannot reach the server/.test(text), text };
  });
  // A long outage shows that it goes on: the attempt count and the time both move.
  await waitFor("Erin sees the attempts and the time of the outage go on", async () => {
    const text = await offline.textContent("#banner");
    const m = /Attempt (\d+), for (\d+):(\d\d)/.exec(text);
    return { ok: !!m && Number(m[1]) >= 3 && Number(m[3]) + 60 * Number(m[2]) >= 1, text };
  });
  result.unreachable = await offline.textContent("#banner");
  if (pageErrors.length) throw new Error(`errors on the pages: ${JSON.stringify(pageErrors)}`);
  log(`server unreachable: "${result.unreachable}"`);
  await offline.click("#leave");
  await offline.waitForSelector("#lobby:not([hidden])", { timeout: STEP_MS });

  return result;
}, pageLog.lines, { audioFile: speechLikeWav(path.join(path.dirname(screenshotPath), "e2e-speech-like.wav")) });
