// Two headless Chromium pages on two cluster nodes: Alice's page is served by node A (its
// WebSocket is on A), Bob's by node B; both join one fresh room through the lobby, and each must
// decode the other's video, hear the other's audio and list both names. The room (its media
// engine and TURN) runs on one of the nodes, so one page's signalling crosses nodes and its media
// goes to the other node's TURN.
//
// Usage: node tests/e2e/cluster.mjs <base url of node A> <base url of node B>
// With E2E_CONTROL=1, once media flows both ways it asks its driver which nodes run the room
// (prints `E2E_ROOM_OWNER <room>`, reads one line on stdin) and reports the answer as `owner`.
// Prints progress lines, then `E2E_RESULT <json>`; exits non-zero on any failed check.
// Driven by tests/it/e2e_cluster.rs (which starts etcd and the nodes).

import { askDriver, joinRoom, log, pageConsole, runScript, waitFor } from "./lib.mjs";

const [baseA, baseB] = process.argv.slice(2);
if (!baseA || !baseB) {
  console.error("usage: node cluster.mjs <base url A> <base url B>");
  process.exit(2);
}
const ROOM = `e2e-cluster-${Date.now().toString(36)}`;

const listNames = (page) =>
  page.$$eval("#participants li .name", (els) => els.map((e) => e.textContent));

const stats = (page) => page.evaluate(() => window.__videoroom.inboundStats());

const sum = (list, kind, key) =>
  list.filter((s) => s.kind === kind).reduce((a, s) => a + (s[key] || 0), 0);

/** Samples the inbound stats twice and requires video frames and audio energy to grow. */
const expectMediaFlowing = (page, who) =>
  waitFor(`${who} decoding remote video and audio`, async () => {
    const a = await stats(page);
    await new Promise((r) => setTimeout(r, 1500));
    const b = await stats(page);
    const r = {
      videoStreams: b.filter((s) => s.kind === "video").length,
      audioStreams: b.filter((s) => s.kind === "audio").length,
      framesDecodedDelta: sum(b, "video", "framesDecoded") - sum(a, "video", "framesDecoded"),
      frameWidth: Math.max(0, ...b.filter((s) => s.kind === "video").map((s) => s.frameWidth)),
      audioEnergyDelta: sum(b, "audio", "totalAudioEnergy") - sum(a, "audio", "totalAudioEnergy"),
      audioLevel: Math.max(0, ...b.filter((s) => s.kind === "audio").map((s) => s.audioLevel)),
      audioPackets: sum(b, "audio", "packetsReceived"),
    };
    r.ok = r.videoStreams >= 1 && r.audioStreams >= 1 && r.framesDecodedDelta > 5 &&
      (r.audioEnergyDelta > 0 || r.audioLevel > 0);
    return r;
  }, 60_000);

const pageLog = pageConsole();
await runScript(async (browser) => {
  const result = { room: ROOM, browser: browser.version() };
  const page = async (name) => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 720 } });
    const p = await ctx.newPage();
    pageLog.watch(p, name);
    return p;
  };
  const alice = await page("Alice");
  const bob = await page("Bob");

  await joinRoom(alice, baseA, ROOM, "Alice");
  await joinRoom(bob, baseB, ROOM, "Bob");

  for (const [p, who] of [[alice, "Alice"], [bob, "Bob"]]) {
    await waitFor(`${who}'s participants list to show both`, async () => {
      const names = await listNames(p);
      return { ok: names.length === 2 && names.includes(`${who} (you)`) &&
        names.some((n) => n.startsWith("Alice")) && names.some((n) => n.startsWith("Bob")), names };
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

  if (process.env.E2E_CONTROL === "1") {
    result.owner = await askDriver(`E2E_ROOM_OWNER ${ROOM}`);
    log(`room ${ROOM} runs on: ${result.owner}`);
  }
  if (pageLog.errors.length) throw new Error(`errors on the pages: ${JSON.stringify(pageLog.errors)}`);
  for (const p of [alice, bob]) {
    await p.click("#leave");
    await p.waitForSelector("#lobby:not([hidden])", { timeout: 30_000 });
  }
  return result;
}, pageLog.lines);
