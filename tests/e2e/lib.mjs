// Helpers shared by the browser tests (room.mjs, layout.mjs, ...): launching Debian's Chromium
// with fake camera and microphone, waiting for a condition with a bounded timeout, joining a room
// through the lobby, checking a page with axe-core, asking the test driver over stdin.

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
