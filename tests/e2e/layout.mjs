// The room page's layout and accessibility in headless Chromium: with 1, 2 and 3 people in one
// room, at desktop, tablet and phone sizes (portrait and landscape), no two tiles overlap, every
// tile lies inside the stage and every name label is readable (inside its tile; a long name is
// ellipsised and carries its full text in `title`, while "(you)" stays visible). Clicking a tile
// or pressing Enter/Space on it pins it large and again unpins it. The lobby and the room pass
// axe-core with no "serious" or "critical" violations. Alone in the room a page shows the invite
// link, whose Copy button puts it on the clipboard and says so in the live region.
//
// Usage: node tests/e2e/layout.mjs <base url> <screenshot dir>
// Saves e2e-layout-<n>p-<w>x<h>.png for 3 people at every size into the screenshot dir.
// Prints progress lines, then `E2E_RESULT <json>`; exits non-zero on any failed check.
// Driven by tests/it/e2e.rs (which starts the server); needs scripts/setup-chromium.sh.

import path from "node:path";
import { STEP_MS, expectAccessible, joinRoom, log, pageConsole, runScript, waitFor } from "./lib.mjs";

const [base, shotDir] = process.argv.slice(2);
if (!base || !shotDir) {
  console.error("usage: node layout.mjs <base url> <screenshot dir>");
  process.exit(2);
}
const ROOM = `layout-${Date.now().toString(36)}`;
const SIZES = [[1280, 800], [1024, 768], [390, 844], [844, 390]];
// The longest name the lobby accepts: it must be ellipsised, with "(you)" still shown.
const LONG_NAME = "Maximiliana Featherstonehaugh-Li";
const NAMES = [LONG_NAME, "Bob", "Carol"];

const join = (page, name) => joinRoom(page, base, ROOM, name);


/**
 * Checks the tiles from their bounding boxes: n of them, 16:9, inside the stage, no overlaps,
 * using a fair share of the stage, and each label inside its tile with its name readable.
 */
function checkTiles(n) {
  const stage = document.getElementById("grid").getBoundingClientRect();
  const tiles = [...document.querySelectorAll("#grid .tile")].map((t) => ({ t, r: t.getBoundingClientRect() }));
  const problems = [];
  const inside = (a, b) =>
    a.left >= b.left - 0.5 && a.top >= b.top - 0.5 && a.right <= b.right + 0.5 && a.bottom <= b.bottom + 0.5;
  const overlap = (a, b) => a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5;
  let area = 0;
  tiles.forEach(({ t, r }, i) => {
    const who = t.title;
    area += r.width * r.height;
    if (!inside(r, stage)) problems.push(`${who}: tile outside the stage`);
    if (Math.abs(r.width / r.height - 16 / 9) > 0.05) problems.push(`${who}: tile not 16:9`);
    for (const { t: u, r: q } of tiles.slice(i + 1)) if (overlap(r, q)) problems.push(`${who} overlaps ${u.title}`);
    const label = t.querySelector(".label");
    const lr = label.getBoundingClientRect();
    if (!inside(lr, r)) problems.push(`${who}: label outside its tile`);
    const name = label.querySelector(".name");
    const nr = name.getBoundingClientRect();
    if (!inside(nr, lr) || nr.width < 8) problems.push(`${who}: name squeezed out of its label`);
    const clipped = name.scrollWidth > name.clientWidth;
    if (clipped && !(name.title === who && getComputedStyle(name).textOverflow === "ellipsis")) {
      problems.push(`${who}: name clipped without an ellipsis and a title`);
    }
    for (const extra of label.querySelectorAll(".you:not([hidden]), .badge:not([hidden])")) {
      const er = extra.getBoundingClientRect();
      if (!inside(er, lr) || extra.scrollWidth > extra.clientWidth + 1) problems.push(`${who}: "${extra.textContent}" hidden`);
    }
  });
  const coverage = area / (stage.width * stage.height);
  // 3 tiles of 16:9 in a phone-shaped stage cannot cover much more than a quarter of it.
  if (coverage < 0.25) problems.push(`tiles cover only ${Math.round(coverage * 100)}% of the stage`);
  return {
    ok: tiles.length === n && problems.length === 0,
    count: tiles.length,
    problems,
    stage: [stage.width, stage.height].map(Math.round),
    coverage: Math.round(coverage * 100) / 100,
    tiles: tiles.map(({ t, r }) => [t.title.slice(0, 12), ...[r.x, r.y, r.width, r.height].map(Math.round)]),
  };
}

/**
 * The layout function itself for 1 to 32 tiles on this page's stage, grid and pinned: inside the
 * stage, no overlaps, 16:9, and grid tiles tall enough for a name label. Returns the problems
 * and the smallest grid tile per count.
 */
function checkTileRects(max) {
  const grid = document.getElementById("grid");
  const [w, h] = [grid.clientWidth, grid.clientHeight];
  const problems = [];
  const smallest = {};
  const smallestStrip = {};
  for (let n = 1; n <= max; n++) {
    for (const pinned of [-1, 0, n - 1]) {
      const rects = window.__videoroom.tileRects(n, w, h, pinned);
      if (rects.length !== n) problems.push(`n=${n} pinned=${pinned}: ${rects.length} rects`);
      rects.forEach((a, i) => {
        if (a.x < 0 || a.y < 0 || a.x + a.w > w + 0.5 || a.y + a.h > h + 0.5) problems.push(`n=${n} pinned=${pinned}: tile ${i} outside`);
        // Sizes are whole pixels: 16:9 to within a pixel.
        if (Math.abs(a.h - (a.w * 9) / 16) > 1) problems.push(`n=${n} pinned=${pinned}: tile ${i} not 16:9`);
        for (const b of rects.slice(i + 1)) {
          if (a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h) problems.push(`n=${n} pinned=${pinned}: overlap`);
        }
      });
      if (pinned < 0) smallest[n] = [rects[0].w, rects[0].h];
      else smallestStrip[n] = Math.min(smallestStrip[n] || Infinity, ...rects.filter((_, i) => i !== pinned).map((r) => r.h));
    }
    // A tile this short still holds a one-line label (0.7rem at the smallest), a strip tile
    // (pinned view) one on its bottom edge.
    if (smallest[n][1] < 36) problems.push(`n=${n}: grid tiles only ${smallest[n][1]} px tall`);
    if (smallestStrip[n] < 24) problems.push(`n=${n}: strip tiles only ${smallestStrip[n]} px tall`);
  }
  return { ok: problems.length === 0, stage: [w, h], problems: problems.slice(0, 10), smallest: smallest[max], smallestStrip };
}

const expectLayout = (page, n, what) => waitFor(what, () => page.evaluate(checkTiles, n));

const result = { room: ROOM, layouts: {} };
const pageLog = pageConsole();
await runScript(async (browser) => {
  const pages = [];
  for (const name of NAMES) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    await ctx.grantPermissions(["clipboard-read", "clipboard-write"], { origin: new URL(base).origin });
    const page = await ctx.newPage();
    pageLog.watch(page, name);
    pages.push(page);
  }
  const [alice] = pages;

  // The lobby, fresh and with a field error (tied to its input).
  await alice.goto(base);
  result.axeLobby = await expectAccessible(alice, "the lobby");
  await alice.fill("#room-name", "has spaces");
  await alice.click("#join");
  const described = await alice.evaluate(() => {
    const input = document.getElementById("room-name");
    const err = document.getElementById(input.getAttribute("aria-describedby"));
    return input.getAttribute("aria-invalid") === "true" && !!err && !err.hidden && err.textContent.length > 0 &&
      document.activeElement === input;
  });
  if (!described) throw new Error("the room name error is not tied to its input (aria-describedby, aria-invalid, focus)");
  result.axeLobbyError = await expectAccessible(alice, "the lobby with a field error");

  // Alone in the room: focus on Mute, the invite link shown, and Copy puts it on the clipboard.
  await join(alice, LONG_NAME);
  const focused = await alice.evaluate(() => document.activeElement && document.activeElement.id);
  if (focused !== "toggle-mic") throw new Error(`after joining the focus is on #${focused}, not on Mute`);
  await alice.waitForSelector("#invite:not([hidden])", { timeout: STEP_MS });
  const link = await alice.inputValue("#invite-link");
  if (!link.endsWith(`/?room=${ROOM}`)) throw new Error(`the invite link is ${link}`);
  await alice.click("#copy-invite");
  await waitFor("the live region to say the link was copied", async () => {
    const said = await alice.textContent("#announce");
    return { ok: said === "Link copied", said };
  });
  const copied = await alice.evaluate(() => navigator.clipboard.readText());
  if (copied !== link) throw new Error(`the clipboard holds ${copied}, not ${link}`);
  result.invite = link;
  log(`alone: the invite link ${link} is shown and copied`);
  result.axeRoomAlone = await expectAccessible(alice, "the room, alone");

  for (let n = 1; n <= NAMES.length; n++) {
    if (n > 1) {
      await join(pages[n - 1], NAMES[n - 1]);
      await alice.waitForSelector("#invite", { state: "hidden", timeout: STEP_MS });
      // The screenshots show people, not avatars: wait for every remote video to play.
      await waitFor(`${n - 1} remote videos playing on ${NAMES[0]}'s page`, () => alice.evaluate((want) => {
        const playing = [...document.querySelectorAll(".tile:not(.local)")]
          .filter((t) => !t.classList.contains("no-video") && t.querySelector("video").currentTime > 0);
        return { ok: playing.length === want, playing: playing.length };
      }, n - 1), 45_000);
    }
    for (const [width, height] of SIZES) {
      for (const page of pages.slice(0, n)) await page.setViewportSize({ width, height });
      for (const [i, page] of pages.slice(0, n).entries()) {
        const r = await expectLayout(page, n, `${n} tiles laid out on ${NAMES[i]}'s page at ${width}x${height}`);
        if (i === 0) result.layouts[`${n}p-${width}x${height}`] = r;
      }
      if (n === NAMES.length) {
        const geometry = await alice.evaluate(checkTileRects, 32);
        if (!geometry.ok) throw new Error(`the layout for up to 32 tiles at ${width}x${height}: ${JSON.stringify(geometry)}`);
        result.layouts[`32p-${width}x${height}`] = geometry;
        log(`1 to 32 tiles fit at ${width}x${height} (stage ${geometry.stage}; 32 tiles of ${geometry.smallest})`);
        const shot = path.join(shotDir, `e2e-layout-${n}p-${width}x${height}.png`);
        await alice.screenshot({ path: shot });
        log(`${n} people at ${width}x${height}: ${JSON.stringify(result.layouts[`${n}p-${width}x${height}`].tiles)}; screenshot ${shot}`);
      }
    }
  }
  result.axeRoomFull = await expectAccessible(alice, "the room with three people");

  // Pinning: a click or Enter/Space on a tile enlarges it; the same again restores the grid.
  const pinnedName = () => alice.evaluate(() => {
    const s = window.__videoroom.state();
    const p = [s.self, ...s.peers].find((x) => x.pinned);
    return p ? p.name : null;
  });
  const expectPinned = async (who, what) => {
    await waitFor(what, async () => {
      const layout = await alice.evaluate(checkTiles, NAMES.length);
      const pinned = await pinnedName();
      const big = await alice.evaluate(() => {
        const [a, ...rest] = [...document.querySelectorAll("#grid .tile")]
          .map((t) => ({ pinned: t.classList.contains("pinned"), w: t.getBoundingClientRect().width }))
          .sort((x, y) => y.w - x.w);
        return !!a && a.pinned && rest.every((r) => r.w < a.w / 2);
      });
      return { ok: layout.ok && pinned === who && (who === null || big), pinned, big, layout };
    });
  };
  for (const [width, height] of [[1280, 800], [390, 844]]) {
    await alice.setViewportSize({ width, height });
    await alice.click('#grid .tile[title="Bob"]');
    await expectPinned("Bob", `Bob pinned by a click at ${width}x${height}`);
    await alice.click('#grid .tile[title="Bob"]');
    await expectPinned(null, `Bob unpinned by a second click at ${width}x${height}`);
  }
  await alice.setViewportSize({ width: 1280, height: 800 });
  await alice.focus('#grid .tile[title="Carol"]');
  await alice.keyboard.press("Enter");
  await expectPinned("Carol", "Carol pinned with Enter");
  await alice.screenshot({ path: path.join(shotDir, "e2e-layout-pinned-1280x800.png") });
  await alice.keyboard.press(" ");
  await expectPinned(null, "Carol unpinned with Space");
  log("pinning by click, Enter and Space works");

  // Leaving puts the focus back on a lobby field.
  await pages[2].click("#leave");
  await pages[2].waitForSelector("#lobby:not([hidden])", { timeout: STEP_MS });
  const afterLeave = await pages[2].evaluate(() => document.activeElement && document.activeElement.id);
  if (afterLeave !== "room-name" && afterLeave !== "display-name") {
    throw new Error(`after leaving the focus is on #${afterLeave}, not a lobby field`);
  }
  await expectLayout(alice, 2, "two tiles after Carol left");

  // Without clipboard access the link is shown selected, for the person to copy it.
  await alice.evaluate(() => {
    navigator.clipboard.writeText = () => Promise.reject(new DOMException("denied", "NotAllowedError"));
  });
  await alice.click("#copy-link");
  result.copyFallback = await waitFor("the invite link shown and selected", async () => {
    const r = await alice.evaluate(() => {
      const input = document.getElementById("invite-link");
      return {
        shown: !document.getElementById("invite").hidden,
        focused: document.activeElement === input,
        selected: input.selectionStart === 0 && input.selectionEnd === input.value.length && input.value.length > 0,
        said: document.getElementById("announce").textContent,
      };
    });
    return { ok: r.shown && r.focused && r.selected && /selected/.test(r.said), ...r };
  });
  await expectLayout(alice, 2, "two tiles below the invite link");
  log(`copy fallback: ${JSON.stringify(result.copyFallback)}`);

  if (pageLog.errors.length) throw new Error(`errors on the pages: ${JSON.stringify(pageLog.errors)}`);
  return result;
}, pageLog.lines);
