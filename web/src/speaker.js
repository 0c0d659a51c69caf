// The speaker view: which remote peer is shown large while nobody is pinned, chosen from the
// speaking markers (speaking.js) with hysteresis, and its "Speaker view" button (remembered).
// Owns the choice of the active speaker; it must never place a tile (layout.js does) or judge a
// level (speaking.js does).

import { $, recall, remember } from "./page.js";

// A peer becomes the large one after speaking this long without a break; the one shown stays at
// least this long (and, while nobody else has spoken that long, for good).
export const SPEAKER_AFTER_MS = 1000;
export const SPEAKER_KEEP_MS = 3000;
const STORE_SPEAKER_VIEW = "videoroom.speakerView";

/** RoomSession methods (mixed into its prototype). */
export const speakerMethods = {
  /** Off unless turned on before (on this browser): a layout that moves by itself surprises. */
  initSpeakerView() {
    this.speakerView = recall(STORE_SPEAKER_VIEW) === "on";
    this.speakerId = null;
    this.speakerSince = 0;
    $("speaker-view").setAttribute("aria-pressed", String(this.speakerView));
  },

  toggleSpeakerView() {
    this.speakerView = !this.speakerView;
    remember(STORE_SPEAKER_VIEW, this.speakerView ? "on" : "off");
    $("speaker-view").setAttribute("aria-pressed", String(this.speakerView));
    this.layout();
  },

  /**
   * After each level sample: the active speaker becomes whoever else has spoken for
   * SPEAKER_AFTER_MS on end (the longest first), once the current one is quiet and has been
   * shown for SPEAKER_KEEP_MS. This page's own voice never counts.
   */
  followSpeaker(now) {
    const current = this.peers.get(this.speakerId);
    if (current && (current.speaking || now - this.speakerSince < SPEAKER_KEEP_MS)) return;
    let next = null;
    for (const p of this.peers.values()) {
      if (p === current || !p.speaking || now - p.speakingSince < SPEAKER_AFTER_MS) continue;
      if (!next || p.speakingSince < next.speakingSince) next = p;
    }
    if (!next) return;
    this.speakerId = next.id;
    this.speakerSince = now;
    if (this.speakerView) this.layout();
  },

  /** The tile the speaker view shows large (a peer still here), or null. */
  speakerTileId() {
    return this.speakerView && this.peers.has(this.speakerId) ? this.speakerId : null;
  },
};
