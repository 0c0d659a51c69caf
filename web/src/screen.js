// Screen sharing: this page's share (getDisplayMedia, one at a time, added to and removed from
// the media session in turn) and the screen tiles of everyone who shares. Owns the share's
// stream; it must never touch the camera or microphone tracks.

import { $, announce } from "./page.js";
import { makeScreenTile, renderPeer, renderScreen } from "./tiles.js";

/** RoomSession methods (mixed into its prototype). */
export const screenMethods = {
  /** A tile for `owner`'s screen (the local page's or a peer's); a peer's is pinned large. */
  addScreen(owner) {
    if (this.screens.has(owner.id)) return;
    const screen = makeScreenTile(owner);
    this.screens.set(owner.id, screen);
    owner.tile.after(screen.tile);
    owner.sharing = true;
    renderPeer(owner);
    if (!owner.local) {
      announce(`${owner.name} is sharing their screen`);
      this.pinnedId = screen.id;
      this.updatePressed();
    }
    this.layout();
  },

  removeScreen(ownerId) {
    const screen = this.screens.get(ownerId);
    if (!screen) return;
    this.screens.delete(ownerId);
    screen.video.srcObject = null;
    screen.tile.remove();
    screen.owner.sharing = false;
    if (!this.closed) {
      renderPeer(screen.owner);
      if (!screen.owner.local) announce(`${screen.owner.name} stopped sharing their screen`);
    }
    if (this.pinnedId === screen.id) {
      this.pinnedId = null;
      this.updatePressed();
    }
    this.layout();
  },

  /** Shares the screen, or stops sharing: one share at a time. */
  async toggleScreenShare() {
    if (this.screenBusy) return;
    if (this.screenShare) {
      this.stopScreenShare();
      return;
    }
    this.screenBusy = true;
    let stream;
    try {
      // Called in the click itself: the browser requires it.
      stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
    } catch (err) {
      // Cancelling the browser's picker is not an error worth a notice.
      if (err && err.name !== "NotAllowedError" && err.name !== "AbortError") {
        this.setMediaNotice(`Cannot share the screen: ${err.message || err}`, false);
      }
      return;
    } finally {
      this.screenBusy = false;
    }
    const track = stream.getVideoTracks()[0];
    if (this.closed || !track) {
      for (const t of stream.getTracks()) t.stop();
      return;
    }
    if ("contentHint" in track) track.contentHint = "detail";
    const share = { stream, track, endpoint: null, trackId: null };
    // The browser's own "Stop sharing" ends the track.
    track.addEventListener("ended", () => {
      if (this.screenShare === share) this.stopScreenShare();
    });
    this.screenShare = share;
    this.setSharing(true);
    const screen = this.screens.get("local");
    screen.video.srcObject = stream;
    screen.hasVideo = true;
    screen.video.play().catch(() => {});
    renderScreen(screen);
    this.queueScreen(() => this.publishScreen(share));
  },

  /**
   * Runs adding and removing the share one after the other, each once the previous one has been
   * negotiated: the client library removing a track while the offer that adds it is out breaks
   * the connection (the answer's directions no longer fit).
   */
  queueScreen(op) {
    this.screenQueue = (this.screenQueue || Promise.resolve()).then(op).catch(() => {});
  },

  /** Adds the share to the current media session (also after a reconnect); resolves once negotiated. */
  async publishScreen(share = this.screenShare) {
    const ep = this.endpoint;
    if (!share || share !== this.screenShare || !ep || !this.selfId || share.track.readyState !== "live") return;
    if (share.endpoint === ep) return; // already in this session
    this.renegotiated();
    share.endpoint = ep;
    share.trackId = ep.addTrack(share.track, share.stream, { type: "screensharing" });
    await this.screenNegotiated(share, true);
  },

  /** Stops capturing at once; the track leaves the media session once it may (see queueScreen). */
  stopScreenShare() {
    const share = this.screenShare;
    if (!share) return;
    this.screenShare = null;
    share.track.stop();
    this.setSharing(false);
    this.queueScreen(() => this.unpublishScreen(share));
  },

  async unpublishScreen(share) {
    const ep = this.endpoint;
    const pc = ep && ep.connection;
    if (!share.trackId || share.endpoint !== ep || !pc) return;
    // removeTrack finds the sender by the track: only once it is on the connection.
    const transceiver = pc.getTransceivers().find((x) => x.sender.track === share.track);
    if (!transceiver) return;
    this.renegotiated();
    ep.removeTrack(share.trackId);
    await this.screenNegotiated(share, false, transceiver);
  },

  /**
   * Waits until the share's m-line has been negotiated as sending (or no longer sending), with
   * no offer out; gives up after 10 s, or when the media session ends.
   */
  async screenNegotiated(share, sending, transceiver = null) {
    const ep = share.endpoint;
    const until = performance.now() + 10_000;
    while (!this.closed && this.endpoint === ep && performance.now() < until) {
      const pc = ep.connection;
      const t = transceiver || (pc && pc.getTransceivers().find((x) => x.sender.track === share.track));
      const dir = t && t.currentDirection;
      const isSending = dir === "sendonly" || dir === "sendrecv";
      if (pc && pc.signalingState === "stable" && dir && isSending === sending) return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  },

  setSharing(on) {
    const button = $("share-screen");
    button.setAttribute("aria-pressed", String(on));
    button.textContent = on ? "Stop sharing" : "Share screen";
    if (on) this.addScreen(this.local);
    else this.removeScreen("local");
    announce(on ? "You are sharing your screen" : "You stopped sharing your screen");
  },
};
