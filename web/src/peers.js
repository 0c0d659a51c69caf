// The other people in the room: their tiles coming and going, and their tracks (camera,
// microphone, screen) arriving, changing and leaving. Owns the maps from tracks to peers; it must
// never send anything to the server.

import { $ } from "./page.js";
import { applySpeaker } from "./devices.js";
import { makeTile, renderPeer, renderScreen } from "./tiles.js";

/** A peer's name and (when it says) whether it has a camera and a microphone at all. */
export function peerInfoOf(metadata) {
  const m = metadata || {};
  const n = typeof m.displayName === "string" ? m.displayName : "";
  return { name: n.trim() || "Guest", hasCamera: m.camera !== false, hasMic: m.mic !== false };
}

/** RoomSession methods (mixed into its prototype). */
export const peerMethods = {
  addPeer(id, metadata) {
    if (id === this.selfId || this.peers.has(id)) return;
    const info = peerInfoOf(metadata);
    const p = Object.assign(makeTile(id, info.name, false), info);
    p.hasVideo = false;
    p.voice = false;
    this.peers.set(id, p);
    $("grid").append(p.tile);
    $("participants").append(p.entry);
    renderPeer(p);
    this.updateCount();
  },

  removePeer(id) {
    const p = this.peers.get(id);
    if (!p) return;
    this.peers.delete(id);
    this.removeScreen(id);
    p.video.srcObject = null;
    p.audio.srcObject = null;
    p.tile.remove();
    p.entry.remove();
    for (const [t, owner] of this.trackOwner) if (owner === id) this.trackOwner.delete(t);
    for (const [t, m] of this.mediaOwner) if (m.peer === id) this.mediaOwner.delete(t);
    if (this.pinnedId === id) this.pinnedId = null;
    this.updateCount();
  },

  onTrackMeta(ctx) {
    const id = ctx.endpoint && ctx.endpoint.id;
    const p = this.peers.get(id);
    if (!p) return;
    this.trackOwner.set(ctx.trackId, id);
    const meta = ctx.metadata || {};
    if (meta.type === "screensharing") {
      this.addScreen(p);
      return;
    }
    const kind = meta.type === "audio" || (ctx.track && ctx.track.kind === "audio") ? "audio" : "video";
    const active = meta.active !== false;
    if (kind === "audio") p.audioActive = active;
    else p.videoActive = active;
    renderPeer(p);
  },

  onTrackReady(ctx) {
    const id = ctx.endpoint && ctx.endpoint.id;
    const p = this.peers.get(id);
    if (!p || !ctx.track) return;
    this.onTrackMeta(ctx);
    const only = new MediaStream([ctx.track]);
    if (ctx.metadata && ctx.metadata.type === "screensharing") {
      // Not a camera or microphone: its statistics say nothing about the peer's connection.
      this.mediaOwner.delete(ctx.track.id);
      const screen = this.screens.get(id);
      if (!screen) return;
      screen.video.srcObject = only;
      screen.hasVideo = true;
      screen.video.play().catch(() => {});
      renderScreen(screen);
      return;
    }
    // A recycled receiver keeps its track: the latest owner is the one that counts.
    this.mediaOwner.set(ctx.track.id, { peer: id, kind: ctx.track.kind });
    if (ctx.track.kind === "video") {
      p.video.srcObject = only;
      p.hasVideo = true;
      p.video.play().catch(() => {});
    } else {
      p.audio.srcObject = only;
      applySpeaker(p.audio);
      p.audio.play().catch((e) => this.soundBlocked(e));
      if (this.audioCtx.state === "suspended") this.audioCtx.resume().catch(() => {});
    }
    renderPeer(p);
  },

  onTrackRemoved(ctx) {
    const id = this.trackOwner.get(ctx.trackId) || (ctx.endpoint && ctx.endpoint.id);
    this.trackOwner.delete(ctx.trackId);
    const p = this.peers.get(id);
    if (!p) return;
    if (ctx.metadata && ctx.metadata.type === "screensharing") {
      this.removeScreen(id);
      return;
    }
    const kind = ctx.track ? ctx.track.kind : ctx.metadata && ctx.metadata.type === "audio" ? "audio" : "video";
    if (kind === "audio") {
      p.audio.srcObject = null;
      p.audioActive = undefined;
      // The server says nothing more about a track it removed.
      if (p.voice) this.onVoiceActivity({ endpoint: { id }, vadStatus: "silence" });
    } else {
      p.video.srcObject = null;
      p.hasVideo = false;
    }
    renderPeer(p);
  },

  /** The browser refused to play sound without a click: ask for one, then play everything. */
  soundBlocked(err) {
    if (!err || err.name !== "NotAllowedError" || this.waitingForClick) return;
    this.waitingForClick = true;
    this.setBanner("Your browser blocked the sound: click anywhere on the page to hear the others.");
    const unblock = () => {
      this.waitingForClick = false;
      if (this.closed) return;
      this.audioCtx.resume().catch(() => {});
      for (const p of this.peers.values()) if (p.audio.srcObject) p.audio.play().catch(() => {});
      if (this.phase === "joined") this.setBanner(null);
    };
    document.addEventListener("click", unblock, { once: true });
  },
};
