// The lobby's camera and microphone preview: opens the remembered (else default) devices, lists
// them, lets the person pick; joining takes its stream over, so the camera does not blink. Owns
// the preview's stream until `take()` hands it over; it must never join a room itself.

import { $ } from "./page.js";
import {
  DEVICE_NOUN,
  canPickSpeaker,
  deviceOf,
  deviceReason,
  fillDeviceSelect,
  listDevices,
  missingSavedText,
  openDevice,
  openLocalMedia,
  preferredId,
  saveDevice,
} from "./devices.js";

export const preview = {
  stream: null,
  opening: null,

  supported() {
    return !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
  },

  start() {
    $("device-setup").hidden = !this.supported();
    $("lobby-form").classList.toggle("no-devices", !this.supported());
    if (!this.supported() || this.stream || this.opening) return;
    this.setStatus("Starting your camera and microphone…");
    const ticket = {};
    this.ticket = ticket;
    this.opening = (async () => {
      let media;
      try {
        media = await openLocalMedia();
      } catch (err) {
        media = { stream: null, cameraError: err, micError: err };
      }
      if (this.ticket !== ticket) {
        // Stopped meanwhile.
        if (media.stream) for (const t of media.stream.getTracks()) t.stop();
        return;
      }
      this.stream = media.stream;
      await listDevices();
      if (this.ticket !== ticket) return;
      this.opening = null;
      this.show(media);
    })();
  },

  show(media) {
    const s = this.stream;
    const video = $("preview");
    video.srcObject = s;
    const hasVideo = !!(s && s.getVideoTracks().length);
    $("preview-box").classList.toggle("no-video", !hasVideo);
    if (hasVideo) video.play().catch(() => {});
    this.fill(media);
    const problems = [];
    if (media.cameraError) problems.push(`Camera: ${deviceReason(media.cameraError)}`);
    if (media.micError && media.micError !== media.cameraError) problems.push(`Microphone: ${deviceReason(media.micError)}`);
    this.setStatus([...problems, missingSavedText(s)].filter(Boolean).join(" "));
  },

  fill(media = {}) {
    const s = this.stream;
    const cam = s && s.getVideoTracks()[0];
    const mic = s && s.getAudioTracks()[0];
    fillDeviceSelect($("camera-select"), "videoinput", deviceOf(cam), !cam && media.cameraError ? "Camera unavailable" : null);
    fillDeviceSelect($("mic-select"), "audioinput", deviceOf(mic), !mic && media.micError ? "Microphone unavailable" : null);
    $("speaker-field").hidden = !canPickSpeaker();
    if (canPickSpeaker()) {
      fillDeviceSelect($("speaker-select"), "audiooutput", preferredId("audiooutput") || "default", !s ? "Speaker unavailable" : null);
    }
  },

  /** The person picked another camera or microphone: open it and show it (the latest pick wins). */
  async pick(kind, id) {
    const s = this.stream;
    if (!s || !id) return;
    const ofKind = () => s.getTracks().filter((t) => t.kind === (kind === "videoinput" ? "video" : "audio"));
    const old = ofKind()[0];
    if (old && deviceOf(old) === id) return;
    const ticket = {};
    this.picking = { ...this.picking, [kind]: ticket };
    let track;
    try {
      track = await openDevice(kind, id, old);
    } catch (err) {
      if (this.picking[kind] !== ticket) return;
      this.setStatus(`Cannot use that ${DEVICE_NOUN[kind]}. ${deviceReason(err)}`);
      this.fill();
      return;
    }
    if (this.stream !== s || this.picking[kind] !== ticket) {
      track.stop();
      return;
    }
    for (const t of ofKind()) {
      s.removeTrack(t);
      t.stop();
    }
    s.addTrack(track);
    saveDevice(kind, id);
    if (kind === "videoinput") {
      $("preview").srcObject = s;
      $("preview-box").classList.remove("no-video");
      $("preview").play().catch(() => {});
    }
    this.setStatus("");
  },

  setStatus(text) {
    $("preview-status").textContent = text;
    $("preview-status").hidden = !text;
  },

  /** Hands the preview's stream over (once it opened), or null; the preview stops showing it. */
  async take() {
    if (this.opening) await this.opening;
    const s = this.stream;
    this.stream = null;
    this.opening = null;
    this.ticket = null;
    $("preview").srcObject = null;
    return s;
  },

  stop() {
    this.opening = null;
    this.ticket = null;
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.stream = null;
    $("preview").srcObject = null;
    $("preview-box").classList.add("no-video");
  },
};
