// Helpers shared by the browser tests (room.mjs, layout.mjs, ...): launching Debian's Chromium
// with fake camera and microphone, waiting for a condition with a bounded timeout, joining a room
// through the lobby, checking a page with axe-core, asking the test driver over stdin.

import fs from "node:fs";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const AXE = createRequire(import.meta.url).resolve("axe-core/axe.min.js");

export const STEP_MS = 30_000;

export const log = (...a) => console.log("[e2e]", ...a);

/**
 * Headless Chromium (VIDEOROOM_CHROMIUM or /usr/bin/chromium) with fake media devices: one camera
 * by default, `fakeDevices` options such as "device-count=2" for more, `audioFile` a WAV file the
 * fake microphone plays (in a loop) instead of its beep. With the fake UI, getDisplayMedia shares
 * a fake screen (1280x720) without a picker.
 */
export function launchChromium({ fakeDevices = "", audioFile = "" } = {}) {
  return chromium.launch({
    executablePath: process.env.VIDEOROOM_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless=new",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      fakeDevices ? `--use-fake-device-for-media-stream=${fakeDevices}` : "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
      "--allow-loopback-in-peer-connection",
      ...(audioFile ? [`--use-file-for-fake-audio-capture=${audioFile}`] : []),
    ],
  });
}

/** Polls `fn` until it returns `{ok: true, ...}`; throws with its last answer after the timeout. */
export async function waitFor(what, fn, timeoutMs = STEP_MS, everyMs = 250) {
  const until = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last && last.ok) return last;
    } catch (e) {
      last = { error: String(e) };
    }
    if (Date.now() > until) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${JSON.stringify(last)}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Joins `room` as `name` through the lobby and waits until the page is in its media session. */
export async function joinRoom(page, base, room, name) {
  await page.goto(base);
  await page.fill("#room-name", room);
  await page.fill("#display-name", name);
  await page.click("#join");
  await page.waitForSelector("#room:not([hidden])", { timeout: STEP_MS });
  await waitFor(`${name} joined`, async () => {
    const s = await page.evaluate(() => window.__videoroom.state());
    return { ok: s.phase === "joined" && !!s.selfId, phase: s.phase };
  });
  log(`${name} joined room ${room}`);
}

/** Runs axe-core on the page; fails on any violation with impact "serious" or "critical". */
export async function expectAccessible(page, where) {
  await page.addScriptTag({ path: AXE });
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" ")) }));
  });
  const bad = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) throw new Error(`axe: ${where} has serious violations: ${JSON.stringify(bad)}`);
  log(`axe: ${where}: no serious or critical violations (${violations.length} minor)`);
  return violations.map((v) => `${v.impact}:${v.id}`);
}

/**
 * What the pages print: every console line and uncaught exception kept for a failure report,
 * console errors and exceptions also in `errors` (a page must have none). `watch` a page to
 * listen to it.
 */
export function pageConsole() {
  const lines = [];
  const errors = [];
  const watch = (page, name) => {
    page.on("console", (m) => {
      lines.push(`${name} console.${m.type()}: ${m.text()}`);
      if (m.type() === "error") errors.push(`${name}: ${m.text()}`);
    });
    page.on("pageerror", (e) => {
      lines.push(`${name} pageerror: ${e.message}`);
      errors.push(`${name}: ${e.message}`);
    });
  };
  return { lines, errors, watch };
}

/**
 * Runs a browser script's body and exits: 0 after printing `E2E_RESULT <json>` of what it
 * returns, 1 with the error and the pages' last console lines. Closes the browser either way.
 */
export async function runScript(body, consoleLines, launchOptions = {}) {
  let browser;
  try {
    browser = await launchChromium(launchOptions);
    log(`chromium ${browser.version()}`);
    const result = await body(browser);
    console.log(`E2E_RESULT ${JSON.stringify(result)}`);
    await browser.close();
    process.exit(0);
  } catch (e) {
    console.error(`[e2e] FAILED: ${e && e.stack ? e.stack : e}`);
    console.error("[e2e] page console:\n" + consoleLines.slice(-80).join("\n"));
    if (browser) await browser.close().catch(() => {});
    process.exit(1);
  }
}


let driverLines = null;
let driverWaiter = null;

/**
 * Asks the test driver (the Rust test running this script): prints `question` as one line and
 * returns the next line it writes on stdin; throws if none comes within `timeoutMs`.
 */
export async function askDriver(question, timeoutMs = STEP_MS) {
  if (!driverLines) {
    driverLines = [];
    createInterface({ input: process.stdin }).on("line", (l) => {
      driverLines.push(l);
      if (driverWaiter) driverWaiter();
    });
  }
  console.log(question);
  const until = Date.now() + timeoutMs;
  while (driverLines.length === 0) {
    if (Date.now() > until) throw new Error(`no answer from the test driver to ${question}`);
    await new Promise((r) => {
      driverWaiter = r;
      setTimeout(r, 200);
    });
  }
  return driverLines.shift();
}

/**
 * A WAV (48 kHz, 16-bit mono, 3 s, played in a loop) that sounds enough like speech for the
 * microphone's noise suppression to let it through: a tone changing pitch and loudness every
 * 120 ms, never silent long enough to end the speaking marker.
 */
export function speechLikeWav(file) {
  const rate = 48_000;
  const n = rate * 3;
  const buf = Buffer.alloc(44 + n * 2);
  buf.write("RIFF", 0);
  buf.writeUInt32LE(36 + n * 2, 4);
  buf.write("WAVEfmt ", 8);
  buf.writeUInt32LE(16, 16);
  buf.writeUInt16LE(1, 20); // PCM
  buf.writeUInt16LE(1, 22); // mono
  buf.writeUInt32LE(rate, 24);
  buf.writeUInt32LE(rate * 2, 28);
  buf.writeUInt16LE(2, 32);
  buf.writeUInt16LE(16, 34);
  buf.write("data", 36);
  buf.writeUInt32LE(n * 2, 40);
  const pitches = [180, 240, 310, 210, 400, 270, 150, 350, 230];
  let phase = 0;
  for (let i = 0; i < n; i++) {
    const seg = Math.floor(i / (rate * 0.12));
    phase += (2 * Math.PI * pitches[seg % pitches.length]) / rate;
    const amp = 0.25 + 0.2 * Math.abs(Math.sin((Math.PI * i) / (rate * 0.12)));
    const v = amp * (Math.sin(phase) + 0.5 * Math.sin(2 * phase) + 0.25 * Math.sin(3 * phase)) / 1.75;
    buf.writeInt16LE(Math.round(v * 32767), 44 + i * 2);
  }
  fs.writeFileSync(file, buf);
  return file;
}
