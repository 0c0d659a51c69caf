// The room's extra features in headless Chromium, one part per run:
//
// screen   Alice shares her screen (getDisplayMedia: the fake UI shares a fake 1280x720 screen
//          without a picker): Bob sees it large as "Alice's screen" with the camera tiles in a
//          strip, laid out without overlaps and passing axe-core; Carol, joining later, sees it
//          too. A double click starts one share only. "Stop sharing" removes the track and the
//          large view on the others' pages; so does the browser ending the track itself. A
//          browser without getDisplayMedia has no Share button.
// devices  (three fake cameras; Chromium's fake_device_1 is a depth camera that WebRTC does not
//          send, so the test picks fake_device_2) The lobby lists cameras, microphones and
//          speakers, plays a live preview, and remembers the choices across a reload; joining
//          uses them. In the room the
//          settings dialog switches camera and microphone on the same senders (replaceTrack, the
//          old track stopped) while Bob keeps decoding, and the speaker (setSinkId). A remembered
//          camera that is gone falls back to the default one and says so.
// health   Three people: on a healthy connection no page shows a quality or interruption marker
//          once its quality window is full. Carol's senders stop (replaceTrack(null)): Alice's
//          page shows "Connection interrupted" on Carol's tile within 6.5 s, and not on Bob's,
//          who stopped his camera and muted well before; it clears when Carol's media resumes.
//          The quality levels (good / weak / bad) for given loss, jitter and round-trip figures.
//          Dave then joins through a relay in front of the TURN server, which starts dropping a
//          fifth of the media datagrams each way once his media flows: his own tile shows the
//          uplink marker, his view of Alice and Alice's view of him show a quality marker (with
//          its words for screen readers). (Alice's other tiles are only recorded: four browsers on a small, busy
//          machine lose packets on the loopback too.)
// speaker  (the fake microphones play a speech-like WAV) Three people, Bob and Carol muted: the
//          Speaker view button is off by default; turned on (by keyboard on Bob's page), Alice's
//          tile becomes the large one on Bob's and Carol's pages, never her own on hers; it stays
//          large when she falls quiet; a pin wins over it; Carol speaking takes over after at
//          least a second; turning the view off gives the grid back, and the speaker leaving too.
//
// Usage: node tests/e2e/features.mjs <base url> <screenshot dir> <screen|devices|health|speaker>
// Prints progress lines, then `E2E_RESULT <json>`; exits non-zero on any failed check.
// Driven by tests/it/e2e.rs (which starts the server); needs scripts/setup-chromium.sh.

import dgram from "node:dgram";
import path from "node:path";
import { STEP_MS, expectAccessible, joinRoom, log, pageConsole, runScript, speechLikeWav, waitFor } from "./lib.mjs";

const [base, shotDir, part] = process.argv.slice(2);
if (!base || !shotDir || !["screen", "devices", "health", "speaker"].includes(part)) {
  console.error("usage: node features.mjs <base url> <screenshot dir> <screen|devices|health|speaker>");
  process.exit(2);
}
const ROOM = `${part}-${Date.now().toString(36)}`;
const join = (page, name) => joinRoom(page, base, ROOM, name);
const state = (page) => page.evaluate(() => window.__videoroom.state());

/** Waits until the video in `selector` on `page` has a size and its time moves on. */
async function expectVideoPlaying(page, selector, what) {
  const start = await page.evaluate((sel) => {
    const v = document.querySelector(sel);
    return v ? v.currentTime : 0;
  }, selector);
  return waitFor(what, () => page.evaluate(([sel, t0]) => {
    const v = document.querySelector(sel);
    const r = { w: v ? v.videoWidth : 0, t: v ? v.currentTime : 0 };
    return { ok: !!v && r.w > 0 && r.t > t0 + 0.5, ...r };
  }, [selector, start]), 45_000);
}

/** Inbound video frames decoded on `page`, summed over its streams. */
const framesDecoded = (page) => page.evaluate(async () =>
  (await window.__videoroom.inboundStats()).filter((s) => s.kind === "video").reduce((a, s) => a + s.framesDecoded, 0));
const audioEnergy = (page) => page.evaluate(async () =>
  (await window.__videoroom.inboundStats()).filter((s) => s.kind === "audio").reduce((a, s) => a + s.totalAudioEnergy, 0));

/** Waits until `page` decodes more than `n` further video frames. */
async function expectFramesAdvancing(page, what, n = 5) {
  const before = await framesDecoded(page);
  return waitFor(what, async () => {
    const now = await framesDecoded(page);
    return { ok: now - before > n, delta: now - before };
  }, 45_000);
}

/** The tiles on the stage: none overlaps another or leaves the stage, every label inside its tile. */
function checkStage() {
  const stage = document.getElementById("grid").getBoundingClientRect();
  const tiles = [...document.querySelectorAll("#grid .tile")].map((t) => ({ t, r: t.getBoundingClientRect() }));
  const inside = (a, b) =>
    a.left >= b.left - 0.5 && a.top >= b.top - 0.5 && a.right <= b.right + 0.5 && a.bottom <= b.bottom + 0.5;
  const overlap = (a, b) => a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5;
  const problems = [];
  tiles.forEach(({ t, r }, i) => {
    if (!inside(r, stage)) problems.push(`${t.title}: outside the stage`);
    for (const { t: u, r: q } of tiles.slice(i + 1)) if (overlap(r, q)) problems.push(`${t.title} overlaps ${u.title}`);
    if (!inside(t.querySelector(".label").getBoundingClientRect(), r)) problems.push(`${t.title}: label outside`);
  });
  const sorted = tiles.map(({ t, r }) => ({ title: t.title, pinned: t.classList.contains("pinned"),
    speaker: t.classList.contains("speaker"), w: Math.round(r.width) })).sort((a, b) => b.w - a.w);
  return { problems, tiles: sorted };
}

/**
 * `page` shows `title` large (marked `why`: "pinned", or "speaker" by the speaker view; more than
 * twice as wide as any other tile), laid out cleanly.
 */
const expectLarge = (page, title, what, why = "pinned", timeoutMs = STEP_MS) => waitFor(what, async () => {
  const s = await page.evaluate(checkStage);
  const [big, ...rest] = s.tiles;
  return { ok: s.problems.length === 0 && !!big && big.title === title && big[why] && rest.every((x) => x.w * 2 < big.w), ...s };
}, timeoutMs);

/** `page` shows no screen tile and no large tile (the plain grid), laid out cleanly. */
const expectGrid = (page, n, what) => waitFor(what, async () => {
  const s = await page.evaluate(checkStage);
  const st = await state(page);
  return { ok: s.problems.length === 0 && st.screens.length === 0 && s.tiles.length === n &&
    s.tiles.every((x) => !x.pinned && !x.speaker), ...s };
});

/** A page in a browser context of its own at 1280x800, its console and errors watched as `name`. */
async function openPage(browser, pageLog, name) {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  pageLog.watch(page, name);
  return page;
}

/** Alice, Bob and Carol on pages of their own, joined one after the other; `then(page, name)` after each. */
async function joinThree(browser, pageLog, then = async () => {}) {
  const pages = {};
  for (const name of ["Alice", "Bob", "Carol"]) {
    pages[name] = await openPage(browser, pageLog, name);
    await join(pages[name], name);
    await then(pages[name], name);
  }
  return pages;
}

/** The page's live screen-share senders (tracks from getDisplayMedia are labelled "screen:…"). */
const screenSenders = (page) => page.evaluate(() => {
  const pc = window.__videoroom.peerConnection();
  return pc ? pc.getSenders().filter((x) => x.track && x.track.label.startsWith("screen") && x.track.readyState === "live").length : -1;
});

const shareButton = (page) => page.evaluate(() => {
  const b = document.getElementById("share-screen");
  return { hidden: b.hidden, text: b.textContent, pressed: b.getAttribute("aria-pressed") };
});

async function screenPart(browser, pageLog) {
  const result = {};
  const pages = {};
  for (const name of ["Alice", "Bob", "Carol"]) pages[name] = await openPage(browser, pageLog, name);
  const { Alice: alice, Bob: bob, Carol: carol } = pages;
  await join(alice, "Alice");
  await join(bob, "Bob");
  result.buttonBefore = await shareButton(alice);
  if (result.buttonBefore.hidden || result.buttonBefore.text !== "Share screen") {
    throw new Error(`the share button before sharing: ${JSON.stringify(result.buttonBefore)}`);
  }

  // Two clicks in a row (the second while the share is being set up) start one share only.
  await alice.evaluate(() => {
    const b = document.getElementById("share-screen");
    b.click();
    b.click();
  });
  result.aliceSharing = await waitFor("Alice sharing her screen", async () => {
    const s = await state(alice);
    const button = await shareButton(alice);
    const senders = await screenSenders(alice);
    return { ok: s.sharingScreen && senders === 1 && button.text === "Stop sharing" && button.pressed === "true" &&
      s.screens.length === 1 && s.screens[0].name === "Your screen", senders, button, screens: s.screens };
  });
  log("Alice shares her screen (one share after a double click)");

  result.bobSees = await waitFor("Bob to get Alice's screen, pinned", async () => {
    const s = await state(bob);
    const alicePeer = s.peers.find((p) => p.name === "Alice");
    return { ok: s.screens.length === 1 && s.screens[0].name === "Alice's screen" && s.screens[0].pinned &&
      s.screens[0].hasVideo && !!alicePeer && alicePeer.sharing, screens: s.screens };
  });
  const screenVideo = '#grid .tile.screen video';
  result.bobPlays = await expectVideoPlaying(bob, screenVideo, "Alice's screen playing on Bob's page");
  result.bobLayout = await expectLarge(bob, "Alice's screen", "Alice's screen large on Bob's page, the cameras in a strip");
  result.bobLabel = await bob.evaluate(() => {
    const t = document.querySelector("#grid .tile.screen");
    return { label: t.querySelector(".label").textContent, aria: t.getAttribute("aria-label"), pressed: t.getAttribute("aria-pressed") };
  });
  if (result.bobLabel.label !== "Alice's screen" || result.bobLabel.aria !== "Alice's screen") {
    throw new Error(`the screen tile's label: ${JSON.stringify(result.bobLabel)}`);
  }
  await waitFor("Bob told Alice shares her screen", async () => {
    const said = await bob.textContent("#announce");
    return { ok: said === "Alice is sharing their screen", said };
  });
  await expectAccessible(bob, "the room with a screen share");
  await bob.screenshot({ path: path.join(shotDir, "e2e-screen-share.png") });
  log(`Bob sees Alice's screen large: ${JSON.stringify(result.bobLayout.tiles)}`);

  // A phone-sized page keeps the same guarantees.
  await bob.setViewportSize({ width: 390, height: 844 });
  await expectLarge(bob, "Alice's screen", "Alice's screen large on Bob's phone-sized page");
  await bob.setViewportSize({ width: 1280, height: 800 });

  // Joining during the share: Carol gets it from the tracks already published.
  await join(carol, "Carol");
  result.carolSees = await expectLarge(carol, "Alice's screen", "Alice's screen large on Carol's page");
  await expectVideoPlaying(carol, screenVideo, "Alice's screen playing on Carol's page");
  log("Carol, joining later, sees Alice's screen large");

  // Stop sharing: the track is removed and the large view goes on both pages.
  await alice.click("#share-screen");
  result.stopped = await waitFor("Alice's share stopped", async () => {
    const s = await state(alice);
    const button = await shareButton(alice);
    const senders = await screenSenders(alice);
    return { ok: !s.sharingScreen && senders === 0 && s.screens.length === 0 && button.text === "Share screen" &&
      button.pressed === "false", senders, button };
  });
  await expectGrid(bob, 3, "Bob back to the grid after Alice stopped sharing");
  await expectGrid(carol, 3, "Carol back to the grid after Alice stopped sharing");
  result.bobAfterStop = await state(bob);
  if (result.bobAfterStop.peers.some((p) => p.sharing)) throw new Error("Bob still lists Alice as sharing");
  log("Stop sharing removes the screen from the others' pages");

  // The browser's own "Stop sharing" ends the track: the same as the button.
  await alice.click("#share-screen");
  await expectLarge(bob, "Alice's screen", "Alice's second share large on Bob's page");
  await expectVideoPlaying(bob, screenVideo, "Alice's second share playing on Bob's page");
  await alice.evaluate(() => {
    const pc = window.__videoroom.peerConnection();
    const sender = pc.getSenders().find((x) => x.track && x.track.label.startsWith("screen"));
    sender.track.stop();
    sender.track.dispatchEvent(new Event("ended"));
  });
  result.browserStopped = await waitFor("Alice's share ended by the browser", async () => {
    const s = await state(alice);
    const button = await shareButton(alice);
    return { ok: !s.sharingScreen && s.screens.length === 0 && button.text === "Share screen", button };
  });
  await expectGrid(bob, 3, "Bob back to the grid after the browser ended Alice's share");
  log("the browser ending the shared track stops the share");

  // No getDisplayMedia (phones): no Share button.
  const phone = await (await browser.newContext()).newPage();
  pageLog.watch(phone, "Phone");
  await phone.addInitScript(() => {
    delete MediaDevices.prototype.getDisplayMedia;
  });
  await phone.goto(base);
  result.hiddenWithoutDisplayMedia = await phone.evaluate(() => document.getElementById("share-screen").hidden);
  if (!result.hiddenWithoutDisplayMedia) throw new Error("the Share button shows without getDisplayMedia");
  log("without getDisplayMedia the Share button is hidden");
  return result;
}

/** The lobby's preview and selects: the preview track per kind, each select's value and options. */
const lobbyDevices = (page) => page.evaluate(() => {
  const video = document.getElementById("preview");
  const s = video.srcObject;
  const track = (kind) => {
    const t = s && s.getTracks().find((x) => x.kind === kind);
    return t ? { label: t.label, id: t.getSettings().deviceId, state: t.readyState } : null;
  };
  const sel = (id) => {
    const el = document.getElementById(id);
    return { value: el.value, disabled: el.disabled, visible: !!el.offsetParent,
      options: [...el.options].map((o) => ({ id: o.value, label: o.textContent })) };
  };
  return {
    camera: track("video"), mic: track("audio"), videoWidth: video.videoWidth,
    cameraSelect: sel("camera-select"), micSelect: sel("mic-select"), speakerSelect: sel("speaker-select"),
    status: document.getElementById("preview-status").textContent,
    saved: { camera: localStorage.getItem("videoroom.camera"), mic: localStorage.getItem("videoroom.mic"),
      speaker: localStorage.getItem("videoroom.speaker") },
  };
});

/** The page's senders: mid, kind and track (label, device, state). */
const senders = (page) => page.evaluate(() => {
  const pc = window.__videoroom.peerConnection();
  return pc.getTransceivers().filter((t) => t.sender.track).map((t) => ({
    mid: t.mid, kind: t.sender.track.kind, label: t.sender.track.label, state: t.sender.track.readyState,
  }));
});

/**
 * After a device switch: the page's senders, the one of `kind`, and the state of the track of that
 * kind it sent before (kept in `window.__oldTracks`), which the switch must have ended.
 */
async function switchedSender(page, kind) {
  const s = await senders(page);
  const sender = s.find((x) => x.kind === kind);
  const old = await page.evaluate((k) => window.__oldTracks.find((t) => t.kind === k).readyState, kind);
  return { s, sender, old };
}

const optionId = (select, label) => {
  const o = select.options.find((x) => x.label === label);
  if (!o) throw new Error(`no option "${label}" in ${JSON.stringify(select.options)}`);
  return o.id;
};

async function devicesPart(browser, pageLog) {
  const result = {};
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const alice = await ctx.newPage();
  pageLog.watch(alice, "Alice");

  // The lobby: a live preview and the devices listed (labels: access was granted for the preview).
  await alice.goto(base);
  result.lobby = await waitFor("the lobby listing the devices", async () => {
    const d = await lobbyDevices(alice);
    return { ok: !!d.camera && d.cameraSelect.options.length === 3 && d.micSelect.options.length >= 2 &&
      d.speakerSelect.options.length >= 2 && d.speakerSelect.visible && !d.cameraSelect.disabled &&
      d.cameraSelect.value === d.camera.id, ...d };
  });
  await expectVideoPlaying(alice, "#preview", "the lobby's preview playing");
  await expectAccessible(alice, "the lobby with the device preview");
  log(`lobby: cameras ${result.lobby.cameraSelect.options.map((o) => o.label)}, microphones ${result.lobby.micSelect.options.map((o) => o.label)}`);

  // Pick the second camera, another microphone and speaker: the preview follows, the choice is kept.
  const cam1 = optionId(result.lobby.cameraSelect, "fake_device_2");
  const mic1 = optionId(result.lobby.micSelect, "Fake Audio Input 1");
  const out1 = optionId(result.lobby.speakerSelect, "Fake Audio Output 1");
  await alice.selectOption("#camera-select", cam1);
  await alice.selectOption("#mic-select", mic1);
  await alice.selectOption("#speaker-select", out1);
  result.picked = await waitFor("the preview on the picked devices, the choice saved", async () => {
    const d = await lobbyDevices(alice);
    return { ok: d.camera && d.camera.label === "fake_device_2" && d.camera.state === "live" && d.mic && d.mic.id === mic1 &&
      JSON.parse(d.saved.camera || "{}").id === cam1 && JSON.parse(d.saved.mic || "{}").id === mic1 &&
      JSON.parse(d.saved.speaker || "{}").id === out1, ...d };
  });
  await expectVideoPlaying(alice, "#preview", "the preview playing the picked camera");

  // A reload: the picked devices are the defaults now.
  await alice.reload();
  result.reloaded = await waitFor("the remembered devices after a reload", async () => {
    const d = await lobbyDevices(alice);
    return { ok: !!d.camera && d.camera.label === "fake_device_2" && d.cameraSelect.value === cam1 &&
      d.mic && d.mic.id === mic1 && d.micSelect.value === mic1 && d.speakerSelect.value === out1, ...d };
  });
  await expectVideoPlaying(alice, "#preview", "the preview after the reload");
  log("the picked camera, microphone and speaker are remembered across a reload");

  // Joining uses them (the preview's stream goes on), and the speaker plays Bob.
  await join(alice, "Alice");
  result.joined = await waitFor("Alice sending from the picked devices", async () => {
    const s = await senders(alice);
    const video = s.find((x) => x.kind === "video");
    const audio = s.find((x) => x.kind === "audio");
    return { ok: !!video && video.label === "fake_device_2" && !!audio && audio.label === "Fake Audio Input 1", s };
  });
  const bob = await openPage(browser, pageLog, "Bob");
  await join(bob, "Bob");
  await expectFramesAdvancing(bob, "Bob decoding Alice's video");
  result.sink = await waitFor("Bob's sound on Alice's picked speaker", () => alice.evaluate((want) => {
    const a = document.querySelector("#grid .tile:not(.local) audio");
    return { ok: !!a && !!a.srcObject && a.sinkId === want, sinkId: a && a.sinkId };
  }, out1));

  // The settings dialog: opened by its button, focus inside, the devices in use selected.
  await alice.click("#open-settings");
  result.dialog = await waitFor("the settings dialog open", () => alice.evaluate((want) => {
    const d = document.getElementById("settings");
    const cam = document.getElementById("room-camera");
    return { ok: d.open && d.contains(document.activeElement) && cam.value === want && cam.options.length === 3,
      focused: document.activeElement && document.activeElement.id, value: cam.value };
  }, cam1));
  await expectAccessible(alice, "the room with the settings dialog open");

  // Switch the camera: the same sender gets the new track (replaceTrack), the old one stops, and
  // Bob keeps decoding Alice's video.
  const before = await senders(alice);
  await alice.evaluate(() => {
    const pc = window.__videoroom.peerConnection();
    window.__oldTracks = pc.getSenders().map((x) => x.track).filter(Boolean);
  });
  const cam0 = optionId(result.lobby.cameraSelect, "fake_device_0");
  await alice.selectOption("#room-camera", cam0);
  result.cameraSwitched = await waitFor("Alice's camera switched on the same sender", async () => {
    const { s, sender: video, old } = await switchedSender(alice, "video");
    const saved = await alice.evaluate(() => JSON.parse(localStorage.getItem("videoroom.camera")).id);
    const local = await alice.evaluate(() => {
      const v = document.querySelector("#grid .tile.local video");
      return v.srcObject.getVideoTracks().map((t) => t.label);
    });
    return { ok: !!video && video.label === "fake_device_0" && video.state === "live" &&
      video.mid === before.find((x) => x.kind === "video").mid && s.length === before.length && old === "ended" &&
      saved === cam0 && local.length === 1 && local[0] === "fake_device_0", video, old, saved, local };
  });
  result.bobAfterCameraSwitch = await expectFramesAdvancing(bob, "Bob decoding Alice's video after the camera switch");
  await waitFor("Alice's video playing on Bob's page", () => bob.evaluate(() => {
    const v = document.querySelector("#grid .tile:not(.local) video");
    return { ok: !!v && v.videoWidth > 0, w: v && v.videoWidth };
  }));
  log(`camera switched in the room: ${JSON.stringify(result.cameraSwitched.video)}; Bob decodes ${result.bobAfterCameraSwitch.delta} more frames`);

  // Switch the microphone the same way; Bob keeps hearing Alice.
  const mic2 = optionId(result.lobby.micSelect, "Fake Audio Input 2");
  await alice.selectOption("#room-mic", mic2);
  result.micSwitched = await waitFor("Alice's microphone switched on the same sender", async () => {
    const { sender: audio, old } = await switchedSender(alice, "audio");
    return { ok: !!audio && audio.label === "Fake Audio Input 2" && audio.state === "live" &&
      audio.mid === before.find((x) => x.kind === "audio").mid && old === "ended", audio, old };
  });
  const energy = await audioEnergy(bob);
  result.bobHearsAfterMicSwitch = await waitFor("Bob hearing Alice after the microphone switch", async () => {
    const now = await audioEnergy(bob);
    return { ok: now > energy, delta: now - energy };
  });

  // And the speaker.
  const out2 = optionId(result.lobby.speakerSelect, "Fake Audio Output 2");
  await alice.selectOption("#room-speaker", out2);
  result.sinkSwitched = await waitFor("Bob's sound on Alice's new speaker", () => alice.evaluate((want) => {
    const a = document.querySelector("#grid .tile:not(.local) audio");
    return { ok: !!a && a.sinkId === want, sinkId: a && a.sinkId };
  }, out2));
  await alice.screenshot({ path: path.join(shotDir, "e2e-settings.png") });

  // Escape closes the dialog, and the focus goes back to its button.
  await alice.keyboard.press("Escape");
  result.dialogClosed = await waitFor("the dialog closed, focus on Settings", () => alice.evaluate(() => ({
    ok: !document.getElementById("settings").open && document.activeElement === document.getElementById("open-settings"),
    focused: document.activeElement && document.activeElement.id,
  })));
  log("the settings dialog switches camera, microphone and speaker without rejoining");

  // A remembered camera that is gone: the default one is used, and the lobby says so.
  await alice.click("#leave");
  await alice.waitForSelector("#lobby:not([hidden])", { timeout: STEP_MS });
  await alice.evaluate(() => localStorage.setItem("videoroom.camera", JSON.stringify({ id: "unplugged", label: "Old Webcam" })));
  await alice.reload();
  result.gone = await waitFor("the lobby falling back from a camera that is gone", async () => {
    const d = await lobbyDevices(alice);
    return { ok: !!d.camera && d.camera.state === "live" && d.cameraSelect.value === d.camera.id &&
      d.cameraSelect.options.some((o) => o.id === d.camera.id) && /"Old Webcam" is not connected/.test(d.status), ...d };
  });
  await expectVideoPlaying(alice, "#preview", "the preview on the default camera");
  log(`a camera that is gone: "${result.gone.status}"`);
  return result;
}

/** What `page` shows on `name`'s tile: the interruption overlay and the quality marker. */
const markers = (page, name) => page.evaluate((n) => {
  const t = [...document.querySelectorAll("#grid .tile:not(.screen)")].find((x) => x.title === n ||
    (n === "self" && x.classList.contains("local")));
  if (!t) return null;
  const box = t.querySelector(".interrupted");
  const q = t.querySelector(".quality");
  return {
    interrupted: t.classList.contains("is-interrupted"),
    text: box.textContent,
    visible: !!box.querySelector(".pill") && box.querySelector(".pill").getBoundingClientRect().width > 0,
    live: box.getAttribute("aria-live"),
    aria: t.getAttribute("aria-label"),
    quality: q.hidden ? null : q.dataset.level,
  };
}, name);

/**
 * A UDP relay to the TURN server at 127.0.0.1:`target` that drops the fraction `loss` (settable)
 * of the media each way, however TURN frames it: ChannelData (first byte 0x40-0x7f) and the
 * Send and Data indications a client and the server use for a peer without a bound channel
 * (Chrome falls back to them while a ChannelBind is outstanding or failed; a relay that let
 * them through once left a whole direction lossless). Other STUN passes, so TURN stays whole.
 */
async function lossyRelay(target) {
  const front = dgram.createSocket("udp4");
  const upstream = new Map();
  const relay = { loss: 0, seen: { channelData: 0, indication: 0 } };
  const media = (m) => {
    if (m.length > 0 && m[0] >= 0x40 && m[0] <= 0x7f) return "channelData";
    const type = m.length >= 20 && m.readUInt32BE(4) === 0x2112a442 ? m.readUInt16BE(0) : -1;
    return type === 0x0016 || type === 0x0017 ? "indication" : null;
  };
  const drop = (m) => {
    const kind = media(m);
    if (!kind) return false;
    relay.seen[kind] += 1;
    return Math.random() < relay.loss;
  };
  front.on("message", (msg, from) => {
    const key = `${from.address}:${from.port}`;
    let up = upstream.get(key);
    if (!up) {
      up = dgram.createSocket("udp4");
      up.on("message", (m) => {
        if (!drop(m)) front.send(m, from.port, from.address);
      });
      up.bind(0, "127.0.0.1");
      upstream.set(key, up);
    }
    if (!drop(msg)) up.send(msg, target, "127.0.0.1");
  });
  await new Promise((resolve) => front.bind(0, "127.0.0.1", resolve));
  return Object.assign(relay, {
    port: front.address().port,
    close() {
      front.close();
      for (const up of upstream.values()) up.close();
    },
  });
}

async function healthPart(browser, pageLog) {
  const result = {};
  const pages = await joinThree(browser, pageLog);
  const { Alice: alice, Bob: bob, Carol: carol } = pages;
  await expectFramesAdvancing(alice, "Alice decoding Bob and Carol", 10);

  // The quality levels.
  result.levels = await alice.evaluate(() => {
    const q = window.__videoroom.qualityLevel;
    return {
      healthy: q({ loss: 0, jitter: 0.01, rtt: 0.05 }),
      someLoss: q({ loss: 0.05 }),
      jittery: q({ jitter: 0.08 }),
      slowUplink: q({ rtt: 0.5 }),
      heavyLoss: q({ loss: 0.15 }),
      lossAndFreezes: q({ loss: 0.04, freezes: 3 }),
      freezesAlone: q({ freezes: 5 }),
      veryLate: q({ rtt: 1.2 }),
    };
  });
  const want = { healthy: "good", someLoss: "weak", jittery: "weak", slowUplink: "weak", heavyLoss: "bad",
    lossAndFreezes: "bad", freezesAlone: "good", veryLate: "bad" };
  if (JSON.stringify(result.levels) !== JSON.stringify(want)) {
    throw new Error(`quality levels ${JSON.stringify(result.levels)}, want ${JSON.stringify(want)}`);
  }

  // Healthy: once every page has judged a full window, no marker anywhere.
  for (const [who, page] of Object.entries(pages)) {
    result[`healthy${who}`] = await waitFor(`${who}'s page judging a full window, all good`, async () => {
      const s = await state(page);
      const all = [s.self, ...s.peers];
      const shown = await page.evaluate(() =>
        document.querySelectorAll("#grid .quality:not([hidden]), #grid .tile.is-interrupted").length);
      return { ok: s.self.healthSamples >= 3 && s.peers.length === 2 && s.peers.every((p) => p.healthSamples >= 6) &&
        all.every((p) => p.quality === "good" && !p.interrupted) && shown === 0,
      samples: all.map((p) => p.healthSamples), quality: all.map((p) => p.quality), shown };
    }, 45_000);
  }
  log("healthy connections: no quality or interruption marker on any page");

  // Bob stops his camera and mutes: nothing of his should flow, so nothing is missing.
  await bob.click("#toggle-camera");
  await bob.click("#toggle-mic");
  await waitFor("Alice to see Bob muted with the camera off", async () => {
    const p = (await state(alice)).peers.find((x) => x.name === "Bob");
    return { ok: !!p && p.audioActive === false && p.videoActive === false, p };
  });
  const bobQuietSince = Date.now();

  // Carol's media stops (her senders send nothing, as when her network drops).
  await carol.evaluate(async () => {
    const pc = window.__videoroom.peerConnection();
    window.__held = pc.getSenders().filter((x) => x.track).map((x) => [x, x.track]);
    for (const [sender] of window.__held) await sender.replaceTrack(null);
  });
  const stoppedAt = Date.now();
  const bobMarked = [];
  result.interrupted = await waitFor("Carol marked interrupted on Alice's page (not Bob)", async () => {
    const c = await markers(alice, "Carol");
    const b = await markers(alice, "Bob");
    if (b.interrupted) bobMarked.push(Date.now() - bobQuietSince);
    return { ok: c.interrupted && c.visible && /Connection interrupted/.test(c.text) && c.live === "polite" &&
      /connection interrupted/.test(c.aria), carol: c, bob: b };
  }, 6_500, 200);
  result.interruptedAfterMs = Date.now() - stoppedAt;
  await alice.screenshot({ path: path.join(shotDir, "e2e-interrupted.png") });
  log(`Carol marked "Connection interrupted" after ${result.interruptedAfterMs} ms`);
  // Bob has been quiet for longer than the stall time by now, and was never marked.
  result.bobQuiet = await waitFor("Bob (camera off, muted) quiet long enough, never marked", async () => {
    const b = await markers(alice, "Bob");
    if (b.interrupted) bobMarked.push(Date.now() - bobQuietSince);
    const quietMs = Date.now() - bobQuietSince;
    return { ok: quietMs > 4_000 && bobMarked.length === 0, quietMs, marked: bobMarked };
  }, 10_000, 200);
  if (bobMarked.length) throw new Error(`Bob, who only stopped his camera and muted, was marked interrupted: ${bobMarked}`);
  result.participantFlag = await alice.evaluate(() =>
    [...document.querySelectorAll("#participants li")].map((li) => li.textContent).find((t) => t.startsWith("Carol")));
  if (!/connection interrupted/.test(result.participantFlag)) {
    throw new Error(`the participants list does not say Carol's connection is interrupted: ${result.participantFlag}`);
  }
  await expectAccessible(alice, "the room with an interrupted peer");

  // Carol's media resumes: the marker goes.
  await carol.evaluate(async () => {
    for (const [sender, track] of window.__held) await sender.replaceTrack(track);
  });
  const resumedAt = Date.now();
  result.resumed = await waitFor("Carol's marker cleared on Alice's page", async () => {
    const c = await markers(alice, "Carol");
    return { ok: !c.interrupted && c.text === "" && !/interrupted/.test(c.aria), carol: c };
  }, 6_500, 200);
  result.clearedAfterMs = Date.now() - resumedAt;
  log(`Carol's marker cleared ${result.clearedAfterMs} ms after her media resumed`);

  // Bob's camera and microphone come back: he is not marked while his video starts again.
  await bob.click("#toggle-camera");
  await bob.click("#toggle-mic");
  const backAt = Date.now();
  await waitFor("Bob back, never marked", async () => {
    const b = await markers(alice, "Bob");
    if (b.interrupted) bobMarked.push(Date.now() - bobQuietSince);
    const p = (await state(alice)).peers.find((x) => x.name === "Bob");
    return { ok: p.videoActive === true && p.audioActive === true && Date.now() - backAt > 4_000, bob: b };
  }, 15_000, 200);
  if (bobMarked.length) throw new Error(`Bob was marked interrupted while his camera restarted: ${bobMarked}`);
  result.localMarkers = {};
  for (const [who, page] of Object.entries(pages)) {
    result.localMarkers[who] = await markers(page, "self");
    if (result.localMarkers[who].quality !== null) {
      throw new Error(`${who}'s own tile shows a quality marker on a healthy connection: ${JSON.stringify(result.localMarkers[who])}`);
    }
  }

  // Dave's network loses a fifth of his media each way: his page goes through a lossy relay.
  const turnPort = await alice.evaluate(() => {
    const urls = [].concat(window.__videoroom.peerConnection().getConfiguration().iceServers[0].urls);
    return Number(/:(\d+)\?/.exec(urls[0])[1]);
  });
  const relay = await lossyRelay(turnPort);
  try {
    const dave = await openPage(browser, pageLog, "Dave");
    await dave.addInitScript((port) => {
      const Real = window.RTCPeerConnection;
      window.RTCPeerConnection = class extends Real {
        constructor(config, ...rest) {
          const iceServers = ((config && config.iceServers) || [])
            .map((s) => ({ ...s, urls: [].concat(s.urls).map((u) => u.replace(/:\d+\?/, `:${port}?`)) }));
          super({ ...config, iceServers }, ...rest);
        }
      };
    }, relay.port);
    await join(dave, "Dave");
    // The network turns lossy once Dave's media flows (losing his ICE and DTLS handshakes too
    // could keep him from connecting at all).
    await expectFramesAdvancing(dave, "Dave decoding the others", 10);
    relay.loss = 0.2;
    const marked = (m) => !!m && (m.quality === "weak" || m.quality === "bad") &&
      /(weak|poor) connection/.test(m.aria);
    result.lossy = await waitFor("quality markers for Dave's lossy connection", async () => {
      const r = {
        daveSelf: await markers(dave, "self"),
        daveSeesAlice: await markers(dave, "Alice"),
        aliceSeesDave: await markers(alice, "Dave"),
        daveJudges: (await state(dave)).peers.map((x) => [x.name, x.quality, x.healthSamples, x.healthFigures]),
        relayed: { ...relay.seen },
      };
      return { ok: marked(r.daveSelf) && marked(r.daveSeesAlice) && marked(r.aliceSeesDave), ...r };
    }, 45_000, 500);
    result.lossyWords = await dave.evaluate(() => {
      const q = document.querySelector("#grid .tile.local .quality");
      return { text: q.textContent, title: q.title, hidden: q.hidden };
    });
    if (!/^(Weak|Poor) connection$/.test(result.lossyWords.text)) {
      throw new Error(`the quality marker's words: ${JSON.stringify(result.lossyWords)}`);
    }
    await dave.screenshot({ path: path.join(shotDir, "e2e-lossy.png") });
    // For the record only: with four browsers on a small machine the loopback loses packets too.
    const s = await state(alice);
    result.aliceFigures = [s.self, ...s.peers].map((x) => [x.name, x.quality, x.healthFigures]);
    await expectAccessible(dave, "the room with quality markers");
    log(`a lossy connection: Dave's own tile ${result.lossy.daveSelf.quality}, his view of Alice ${result.lossy.daveSeesAlice.quality}, Alice's view of him ${result.lossy.aliceSeesDave.quality}; media through the relay: ${JSON.stringify(relay.seen)}`);
    // Leaving while the relay still carries Dave's media.
    await dave.click("#leave");
    await dave.waitForSelector("#lobby:not([hidden])", { timeout: STEP_MS });
  } finally {
    relay.close();
  }
  return result;
}

/** The "Speaker view" button on `page`: its name, state, whether it is focused, and what is remembered. */
const speakerButton = (page) => page.evaluate(() => {
  const b = document.getElementById("speaker-view");
  return { text: b.textContent, pressed: b.getAttribute("aria-pressed"), focused: document.activeElement === b,
    saved: localStorage.getItem("videoroom.speakerView") };
});

/**
 * Waits until `page` hears `name` speaking, or (`on` false) no longer: the marker and the
 * server's voice activity notification (`voice`) agree, since the page no longer judges remote
 * sound itself.
 */
const expectSpeaking = (page, name, on = true) => waitFor(`${name} ${on ? "" : "not "}speaking on the page`, async () => {
  const p = (await state(page)).peers.find((x) => x.name === name);
  return { ok: !!p && p.speaking === on && p.voice === on, peer: p };
});

async function speakerPart(browser, pageLog) {
  const result = {};
  const { Alice: alice, Bob: bob, Carol: carol } = await joinThree(browser, pageLog, async (page, name) => {
    if (name !== "Alice") await page.click("#toggle-mic");
  });
  await expectSpeaking(bob, "Alice");
  // Carol's microphone plays the same sound, muted: over two seconds of Alice speaking, the
  // server never says Carol speaks.
  for (const until = Date.now() + 2_000; Date.now() < until;) {
    const carolSeen = (await state(bob)).peers.find((x) => x.name === "Carol");
    if (!carolSeen || carolSeen.speaking || carolSeen.voice) {
      throw new Error(`muted Carol marked speaking on Bob's page: ${JSON.stringify(carolSeen)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  // Off by default: Alice speaking changes nothing.
  result.buttonBefore = await speakerButton(bob);
  if (result.buttonBefore.text !== "Speaker view" || result.buttonBefore.pressed !== "false") {
    throw new Error(`the Speaker view button before: ${JSON.stringify(result.buttonBefore)}`);
  }
  await expectGrid(bob, 3, "the grid on Bob's page while the speaker view is off");

  // On by keyboard on Bob's page (by click on the others'): Alice goes large, remembered.
  await bob.focus("#speaker-view");
  let started = Date.now();
  await bob.keyboard.press("Enter");
  await alice.click("#speaker-view");
  await carol.click("#speaker-view");
  result.buttonOn = await speakerButton(bob);
  if (result.buttonOn.pressed !== "true" || !result.buttonOn.focused || result.buttonOn.saved !== "on") {
    throw new Error(`the Speaker view button after Enter: ${JSON.stringify(result.buttonOn)}`);
  }
  result.bobSeesAlice = await expectLarge(bob, "Alice", "Alice large on Bob's page", "speaker", 10_000);
  result.aliceLargeAfterMs = Date.now() - started;
  await expectLarge(carol, "Alice", "Alice large on Carol's page", "speaker", 10_000);
  // Alice has been speaking as long on her own page: it still never enlarges her.
  await waitFor("Alice speaking on her own page", async () => ({ ok: (await state(alice)).self.speaking }));
  await expectGrid(alice, 3, "the grid on Alice's own page");
  result.speakerAria = await bob.evaluate(() => document.querySelector("#grid .tile.speaker").getAttribute("aria-current"));
  await expectAccessible(bob, "the room in the speaker view");
  await bob.screenshot({ path: path.join(shotDir, "e2e-speaker-view.png") });
  log(`speaker view: Alice large on Bob's page after ${result.aliceLargeAfterMs} ms`);

  // Nobody speaking: the last speaker stays large.
  await alice.click("#toggle-mic");
  await expectSpeaking(bob, "Alice", false);
  await expectLarge(bob, "Alice", "Alice still large on Bob's page when quiet", "speaker", 1_000);

  // A pin wins over the speaker; unpinned, the speaker is back.
  await bob.click('#grid .tile[title="Carol"]');
  await expectLarge(bob, "Carol", "Carol pinned large on Bob's page", "pinned", 5_000);
  await bob.click('#grid .tile[title="Carol"]');
  await expectLarge(bob, "Alice", "Alice large again on Bob's page after unpinning", "speaker", 5_000);
  log("a pin wins over the speaker view");

  // Carol speaks: she takes over once she has spoken for a second.
  started = Date.now();
  await carol.click("#toggle-mic");
  result.bobSeesCarol = await expectLarge(bob, "Carol", "Carol large on Bob's page", "speaker", 10_000);
  result.carolLargeAfterMs = Date.now() - started;
  if (result.carolLargeAfterMs < 1_000) throw new Error(`Carol went large after ${result.carolLargeAfterMs} ms`);
  log(`the speaker changes to Carol after ${result.carolLargeAfterMs} ms`);

  // Off: the grid; on again: Carol; Carol leaves: the grid (nobody else speaks).
  await bob.click("#speaker-view");
  await expectGrid(bob, 3, "the grid on Bob's page with the speaker view off");
  result.buttonOff = await speakerButton(bob);
  await bob.click("#speaker-view");
  await expectLarge(bob, "Carol", "Carol large on Bob's page with the speaker view on again", "speaker", 5_000);
  await carol.click("#leave");
  await expectGrid(bob, 2, "the grid on Bob's page after the speaker left");
  log("speaker view off, and the speaker leaving, give the grid back");
  return result;
}

const pageLog = pageConsole();
const parts = { screen: screenPart, devices: devicesPart, health: healthPart, speaker: speakerPart };
const launchOptions = part === "devices" ? { fakeDevices: "device-count=3" }
  : part === "speaker" ? { audioFile: speechLikeWav(path.join(shotDir, "e2e-speech-like.wav")) } : {};
await runScript(async (browser) => {
  const result = { part, room: ROOM };
  Object.assign(result, await parts[part](browser, pageLog));
  if (pageLog.errors.length) throw new Error(`errors on the pages: ${JSON.stringify(pageLog.errors)}`);
  return result;
}, pageLog.lines, launchOptions);
