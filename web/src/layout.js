// Where the tiles go on the stage: a best-fit grid of 16:9 tiles, or the pinned tile (else the
// speaker view's active speaker, see speaker.js) large with the others in a strip; and pinning a
// tile. Tiles are laid out in JS (not CSS auto rows) so that they fill the stage without
// overlapping. Owns the geometry; it must never build or draw a tile.

import { $ } from "./page.js";

const TILE_ASPECT = 16 / 9;
const TILE_GAP = 8;

/** Columns, rows and tile size that give n tiles of 16:9 the most area in a w x h box. */
function bestGrid(n, w, h, gap = TILE_GAP) {
  let best = { cols: 1, rows: n, tileW: 0, tileH: 0 };
  for (let cols = 1; cols <= n; cols++) {
    const rows = Math.ceil(n / cols);
    const fitW = (w - gap * (cols - 1)) / cols;
    const fitH = (h - gap * (rows - 1)) / rows;
    const tileW = Math.floor(Math.min(fitW, fitH * TILE_ASPECT));
    if (tileW > best.tileW) best = { cols, rows, tileW, tileH: Math.floor(tileW / TILE_ASPECT) };
  }
  return best;
}

/** Rectangles for n tiles centred in `box` ({x, y, w, h}); a short last row is centred too. */
function gridRects(n, box) {
  const { cols, rows, tileW, tileH } = bestGrid(n, box.w, box.h);
  const span = (k, size) => k * size + (k - 1) * TILE_GAP;
  const top = box.y + (box.h - span(rows, tileH)) / 2;
  const rects = [];
  for (let i = 0; i < n; i++) {
    const row = Math.floor(i / cols);
    const inRow = Math.min(cols, n - row * cols);
    const left = box.x + (box.w - span(inRow, tileW)) / 2;
    const x = left + (i % cols) * (tileW + TILE_GAP);
    rects.push({ x, y: top + row * (tileH + TILE_GAP), w: tileW, h: tileH });
  }
  return rects;
}

// Strip tiles this tall still show a name; the strip grows (up to half the stage) to keep them so.
const STRIP_TILE_MIN_H = 48;

/**
 * The pinned tile's box and the strip for the `others`: on the right of a very wide stage, else
 * below. The strip starts at a fifth of the stage and grows until its tiles are tall enough.
 */
function splitStage(w, h, others) {
  const wide = w / h > TILE_ASPECT * 1.3;
  const along = wide ? w : h;
  const stripBox = (side) => (wide ? { x: w - side, y: 0, w: side, h } : { x: 0, y: h - side, w, h: side });
  const half = Math.floor(along / 2);
  let side = Math.min(Math.round(Math.max(along * 0.2, 64)), wide ? 320 : 180, half);
  while (side < half) {
    const strip = stripBox(side);
    if (bestGrid(others, strip.w, strip.h).tileH >= STRIP_TILE_MIN_H) break;
    side = Math.min(Math.round(side * 1.2) + 1, half);
  }
  const main = wide ? { x: 0, y: 0, w: w - side - TILE_GAP, h } : { x: 0, y: 0, w, h: h - side - TILE_GAP };
  return { main, strip: stripBox(side) };
}

/**
 * Where n tiles go on a w x h stage: a best-fit grid, or with `pinned` (an index) that tile as
 * large as fits and the others in a strip.
 */
export function tileRects(n, w, h, pinned = -1) {
  if (pinned < 0 || n < 2) return gridRects(n, { x: 0, y: 0, w, h });
  const { main, strip } = splitStage(w, h, n - 1);
  const rest = gridRects(n - 1, strip);
  return [...rest.slice(0, pinned), gridRects(1, main)[0], ...rest.slice(pinned)];
}

function place(tile, r) {
  Object.assign(tile.style, {
    left: `${Math.floor(r.x)}px`,
    top: `${Math.floor(r.y)}px`,
    width: `${r.w}px`,
    height: `${r.h}px`,
  });
}

/** RoomSession methods (mixed into its prototype). */
export const layoutMethods = {
  /** Every tile in stage order: this page, then each peer, a screen share after its owner. */
  tiles() {
    const out = [];
    for (const p of [this.local, ...this.peers.values()]) {
      out.push(p);
      const screen = this.screens.get(p.id);
      if (screen) out.push(screen);
    }
    return out;
  },

  /**
   * Places every tile: a best-fit grid, or one tile large with the others in a strip: the pinned
   * one (by the user, or a peer's screen share), else the speaker view's active speaker.
   */
  layout() {
    const grid = $("grid");
    const w = grid.clientWidth;
    const h = grid.clientHeight;
    if (!w || !h) return;
    const all = this.tiles();
    const at = (id) => (all.length > 1 && id ? all.findIndex((p) => p.id === id) : -1);
    const pinned = at(this.pinnedId);
    const speaker = pinned < 0 ? at(this.speakerTileId()) : -1;
    all.forEach((p, i) => {
      p.tile.classList.toggle("pinned", i === pinned);
      p.tile.classList.toggle("speaker", i === speaker);
      // Said when the tile is reached, never announced: speakers change too often for that.
      if (i === speaker) p.tile.setAttribute("aria-current", "true");
      else p.tile.removeAttribute("aria-current");
    });
    tileRects(all.length, w, h, pinned < 0 ? speaker : pinned).forEach((r, i) => place(all[i].tile, r));
  },

  togglePin(id) {
    this.pinnedId = this.pinnedId === id ? null : id;
    this.updatePressed();
    this.layout();
  },

  updatePressed() {
    for (const p of this.tiles()) p.tile.setAttribute("aria-pressed", String(p.id === this.pinnedId));
  },
};
