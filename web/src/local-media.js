// This page's own camera and microphone in the room: mute, stop and start the camera, and the
// settings dialog that switches devices (and the speaker) without rejoining. Owns the local
// tracks' on/off state; it must never open a second media session or rejoin.

import { $ } from "./page.js";
import {
  DEVICE_NOUN,
  applySpeaker,
  canPickSpeaker,
  deviceOf,
  deviceReason,
  fillDeviceSelect,
  listDevices,
  openDevice,
  openRemembered,
  preferredId,
  saveDevice,
} from "./devices.js";
import { LevelMeter } from "./speaking.js";
import { renderPeer } from "./tiles.js";

/** RoomSession methods (mixed into its prototype). */
export const localMediaMethods = {
  toggleMic() {
    const track = this.stream && this.stream.getAudioTracks()[0];
    if (!track) return;
    this.micOn = !this.micOn;
    track.enabled = this.micOn;
    this.local.audioActive = this.micOn;
    $("toggle-mic").setAttribute("aria-pressed", String(!this.micOn));
    $("toggle-mic").textContent = this.micOn ? "Mute" : "Unmute";
    renderPeer(this.local);
    this.sendTrackMetadata("audio", this.micOn);
  },

  async toggleCamera() {
    if (this.cameraBusy || !this.local.hasCamera) return;
    this.cameraBusy = true;
    try {
      if (this.cameraOn) this.stopCamera();
      else await this.startCamera();
    } finally {
      this.cameraBusy = false;
    }
  },

  /**
   * Stops (not just disables) the camera track, so the camera light goes off. The ended track
   * stays on its sender: the client library finds the sender by that track for replaceTrack.
   */
  stopCamera() {
    for (const t of this.stream.getVideoTracks()) t.stop();
    this.setCameraOn(false);
    this.sendTrackMetadata("camera", false);
  },

  /** Opens the camera again and swaps the new track onto the existing sender: no rejoin. */
  async startCamera() {
    let track;
    try {
      const s = await openRemembered({ video: true });
      track = s.getVideoTracks()[0];
    } catch (err) {
      this.setMediaNotice(`Cannot start the camera. ${deviceReason(err)}`, false);
      return;
    }
    if (this.closed) {
      track.stop();
      return;
    }
    for (const old of this.stream.getVideoTracks()) this.stream.removeTrack(old);
    // A reconnect publishes this stream's tracks, so it must hold the live one.
    this.stream.addTrack(track);
    this.local.video.srcObject = this.stream;
    const id = this.localTrackIds.camera;
    const swapped = this.endpoint && id
      ? await this.endpoint.replaceTrack(id, track, { type: "camera", active: true })
      : false;
    this.setCameraOn(true);
    if (!swapped) this.sendTrackMetadata("camera", true);
  },

  setCameraOn(on) {
    this.cameraOn = on;
    this.local.videoActive = on;
    $("toggle-camera").setAttribute("aria-pressed", String(!on));
    $("toggle-camera").textContent = on ? "Stop camera" : "Start camera";
    renderPeer(this.local);
  },

  sendTrackMetadata(type, active) {
    const id = this.localTrackIds[type];
    if (this.endpoint && id) this.endpoint.updateTrackMetadata(id, { type, active });
  },

  openSettings() {
    const dialog = $("settings");
    if (dialog.open) return;
    $("settings-status").textContent = "";
    this.fillSettings();
    dialog.showModal();
    listDevices().then(() => this.fillSettings());
  },

  fillSettings() {
    const cam = this.stream && this.stream.getVideoTracks()[0];
    const mic = this.stream && this.stream.getAudioTracks()[0];
    // With the camera stopped, the choice is for the next start.
    const camId = cam && cam.readyState === "live" ? deviceOf(cam) : preferredId("videoinput") || "";
    fillDeviceSelect($("room-camera"), "videoinput", camId, cam ? null : "No camera in this call");
    fillDeviceSelect($("room-mic"), "audioinput", deviceOf(mic), mic ? null : "No microphone in this call");
    $("room-speaker-field").hidden = !canPickSpeaker();
    if (canPickSpeaker()) fillDeviceSelect($("room-speaker"), "audiooutput", preferredId("audiooutput") || "default");
  },

  /**
   * Switches the camera or microphone without rejoining: opens the new device, swaps it onto the
   * track's sender (replaceTrack) and stops the old one; the latest choice wins. A stopped camera
   * only remembers it.
   */
  async switchDevice(kind, id) {
    if (!id || !this.stream) return;
    const video = kind === "videoinput";
    const ofKind = () => (video ? this.stream.getVideoTracks() : this.stream.getAudioTracks());
    const old = ofKind()[0];
    if (!old || (old.readyState === "live" && deviceOf(old) === id)) return;
    if (video && !this.cameraOn) {
      saveDevice(kind, id);
      return;
    }
    const ticket = {};
    this.switching = { ...this.switching, [kind]: ticket };
    const latest = () => !this.closed && this.switching[kind] === ticket;
    let track;
    try {
      track = await openDevice(kind, id, old);
    } catch (err) {
      if (!latest()) return;
      $("settings-status").textContent = `Cannot use that ${DEVICE_NOUN[kind]}. ${deviceReason(err)}`;
      this.fillSettings();
      return;
    }
    if (!latest() || (video && !this.cameraOn)) {
      track.stop();
      return;
    }
    if (!video) track.enabled = this.micOn;
    const type = video ? "camera" : "audio";
    const trackId = this.localTrackIds[type];
    const metadata = { type, active: video ? true : this.micOn };
    const swapped = this.endpoint && trackId ? await this.endpoint.replaceTrack(trackId, track, metadata) : true;
    if (!swapped || this.closed) {
      track.stop();
      if (!this.closed) $("settings-status").textContent = `Cannot switch the ${DEVICE_NOUN[kind]}.`;
      return;
    }
    // A reconnect publishes this stream's tracks, so it holds the new one (and only it).
    for (const t of ofKind()) {
      this.stream.removeTrack(t);
      t.stop();
    }
    this.stream.addTrack(track);
    saveDevice(kind, id);
    if (video) {
      this.local.video.srcObject = this.stream;
    } else {
      if (this.local.meter) this.local.meter.close();
      this.local.meter = new LevelMeter(this.audioCtx, track);
    }
    if (latest()) $("settings-status").textContent = `Now using ${track.label || `the new ${DEVICE_NOUN[kind]}`}.`;
  },

  setSpeaker(id) {
    saveDevice("audiooutput", id);
    for (const p of this.peers.values()) applySpeaker(p.audio, id);
  },
};
