// Benchmark (not a test): how long a person waits for video. In each round two headless
// Chromium pages join a fresh room of a running server through the real UI, the second one
// after the first is in; for the second it reports join click → peer connection created,
// → connected (ICE through the integrated TURN server, then DTLS), → first remote video frame
// decoded. Rooms of two keep the browser's own encode/decode load constant: with every page in
// one room the machine's two cores saturate and measure Chromium, not the server.
//
// Usage: node tests/e2e/join_time.mjs <base url> [rounds, default 5]
// (needs scripts/setup-chromium.sh; start the server first, e.g. `cargo run --release`).

import { chromium } from "playwright-core";

const base = process.argv[2];
const rounds = Number(process.argv[3] || 5);
if (!base || !(rounds >= 1)) {
  console.error("usage: node join_time.mjs <base url> [rounds >= 1]");
  process.exit(2);
}
const RUN = `join-time-${Date.now().toString(36)}`;
const browser = await chromium.launch({
  executablePath: process.env.VIDEOROOM_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection"],
});

async function measure(page, room, name) {
  await page.goto(base);
  await page.fill("#room-name", room);
  await page.fill("#display-name", name);
  const t0 = Date.now();
  await page.click("#join");
  const at = {};
  while (Date.now() - t0 < 20_000) {
    const s = await page.evaluate(async () => {
      const pc = window.__videoroom && window.__videoroom.peerConnection();
      const stats = window.__videoroom ? await window.__videoroom.inboundStats() : [];
      const frames = stats.filter((x) => x.kind === "video").reduce((a, x) => a + (x.framesDecoded || 0), 0);
      return { pc: !!pc, state: pc && pc.connectionState, frames };
    });
    const now = Date.now() - t0;
    if (s.pc && at.pc === undefined) at.pc = now;
    if (s.state === "connected" && at.connected === undefined) at.connected = now;
    if (s.frames > 0) {
      at.frame = now;
      return at;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`${name}: no remote frame within 20 s (${JSON.stringify(at)})`);
}

const rows = [];
try {
  for (let i = 0; i < rounds; i++) {
    const room = `${RUN}-${i}`;
    const firstCtx = await browser.newContext();
    const first = await firstCtx.newPage();
    await first.goto(base);
    await first.fill("#room-name", room);
    await first.fill("#display-name", "First");
    await first.click("#join");
    await first.waitForSelector("#room:not([hidden])");
    await new Promise((r) => setTimeout(r, 1500));
    const secondCtx = await browser.newContext();
    const at = await measure(await secondCtx.newPage(), room, "Second");
    rows.push(at);
    console.log(`round ${i + 1}: pc created ${at.pc} ms, connected ${at.connected} ms, first remote frame ${at.frame} ms`);
    await secondCtx.close();
    await firstCtx.close();
  }
  const median = (k) => {
    const v = rows.map((r) => r[k]).sort((a, b) => a - b);
    return v[Math.floor(v.length / 2)];
  };
  console.log(`median over ${rows.length} rounds: pc created ${median("pc")} ms, connected ${median("connected")} ms, first remote frame ${median("frame")} ms`);
} finally {
  await browser.close();
}
