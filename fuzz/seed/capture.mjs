// Records real WebSocket traffic for the fuzz seed corpora: headless Chromium pages run the
// real web app (membrane-webrtc-js 0.5.3 over phoenix.js) against a running server, and every
// frame each page sends or receives is written as one JSON line {page, dir, text}.
//
// Usage: node fuzz/seed/capture.mjs <base url> <out.jsonl>
// Needs scripts/setup-chromium.sh (Debian's chromium, playwright-core in tests/e2e). The
// session: Alice and Bob join one room with fake camera and microphone, Alice mutes and stops
// the camera and turns them back on, Bob leaves, Carol joins in his place, then Carol and
// Alice leave. fuzz/seed/seeds.mjs turns the recording into corpus files.

import { createRequire } from "node:module";
import { writeFileSync } from "node:fs";

const require = createRequire(new URL("../../tests/e2e/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const [base, out] = process.argv.slice(2);
if (!base || !out) {
  console.error("usage: node capture.mjs <base url> <out.jsonl>");
  process.exit(2);
}
const ROOM = `fuzz-${Date.now().toString(36)}`;
const frames = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, ms = 30_000) {
  const end = Date.now() + ms;
  while (!(await fn().catch(() => false))) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

const browser = await chromium.launch({
  executablePath: process.env.VIDEOROOM_CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
  ],
});

async function open(name) {
  const page = await (await browser.newContext()).newPage();
  page.on("websocket", (ws) => {
    ws.on("framesent", (f) => frames.push({ page: name, dir: "sent", text: String(f.payload) }));
    ws.on("framereceived", (f) => frames.push({ page: name, dir: "recv", text: String(f.payload) }));
  });
  await page.goto(base);
  await page.fill("#room-name", ROOM);
  await page.fill("#display-name", name);
  await page.click("#join");
  await until(`${name} joined`, async () =>
    (await page.evaluate(() => window.__videoroom.state())).phase === "joined");
  return page;
}

const tiles = (page) => page.evaluate(() => document.querySelectorAll("video").length);
try {
  const alice = await open("Alice");
  const bob = await open("Bob");
  await until("media both ways", async () => (await tiles(alice)) >= 2 && (await tiles(bob)) >= 2);
  await sleep(1500);
  await alice.click("#toggle-mic");
  await alice.click("#toggle-camera");
  await sleep(1000);
  await alice.click("#toggle-mic");
  await alice.click("#toggle-camera");
  await sleep(1000);
  await bob.click("#leave");
  await sleep(1500);
  const carol = await open("Carol");
  await until("Carol's media", async () => (await tiles(carol)) >= 2);
  await sleep(1500);
  await carol.click("#leave");
  await alice.click("#leave");
  await sleep(1000);
} finally {
  await browser.close();
  writeFileSync(out, frames.map((f) => JSON.stringify(f)).join("\n") + "\n");
  console.log(`${frames.length} frames to ${out}`);
}
