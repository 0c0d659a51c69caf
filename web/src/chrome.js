// The room page around the stage: the status, the banner (with the outage clock), the device
// notice, the participant count and the invite panel. Owns those elements' text; it must never
// change the media session.

import { $, announce } from "./page.js";

/** RoomSession methods (mixed into its prototype). */
export const chromeMethods = {

  /**
   * One more failed attempt to reach the server or the room: the banner says what is wrong, which
   * attempt this is and for how long it has lasted, refreshed every second, so a long outage
   * does not look like a frozen page.
   */
  outageAttempt(text, isError = false) {
    if (!this.outage) {
      this.outage = { since: Date.now(), attempts: 0 };
      this.outageTimer = setInterval(() => this.showOutage(), 1000);
    }
    Object.assign(this.outage, { text, isError });
    this.outage.attempts += 1;
    this.showOutage();
  },

  showOutage() {
    if (!this.outage) return;
    const { since, attempts, text, isError } = this.outage;
    const secs = Math.floor((Date.now() - since) / 1000);
    const clock = `${Math.floor(secs / 60)}:${String(secs % 60).padStart(2, "0")}`;
    this.setBanner(`${text} Attempt ${attempts + 1}, for ${clock}.`, isError);
  },

  endOutage() {
    clearInterval(this.outageTimer);
    this.outage = null;
  },

  updateCount() {
    $("participant-count").textContent = String(1 + this.peers.size);
    this.showInvite();
    this.layout();
  },

  /**
   * The invite panel: while alone in the media session (not while it reconnects), otherwise only
   * once copying had to fall back to it.
   */
  showInvite() {
    const alone = this.peers.size === 0 && !!this.selfId;
    $("invite").hidden = !(alone || this.inviteForced);
    $("invite-text").textContent = alone
      ? "You are the only one here. Share the link to invite others:"
      : "Share this link to invite others:";
  },

  async copyInvite() {
    const url = $("invite-link").value;
    try {
      await navigator.clipboard.writeText(url);
      announce("Link copied");
      return;
    } catch (_) {
      // No clipboard access (insecure page, or denied): let the person copy it themselves.
    }
    this.inviteForced = true;
    this.showInvite();
    this.layout();
    const input = $("invite-link");
    input.focus();
    input.select();
    announce("The link is selected: press Ctrl+C (or ⌘C) to copy it");
  },

  setMediaNotice(text, focus = true) {
    $("media-notice").hidden = !text;
    $("media-notice-text").textContent = text || "";
    if (text && focus) $("media-notice").focus();
    this.layout();
  },

  setStatus(text, ok = false) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("ok", ok);
  },

  setBanner(text, isError = false) {
    const b = $("banner");
    b.hidden = !text;
    b.textContent = text || "";
    b.classList.toggle("error", isError);
  },
};
