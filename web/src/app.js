// The videoroom web app: a lobby (room name + display name) and a room page, over the
// unmodified `phoenix` client (Phoenix Channels V2, topic `room:<name>`) and
// `@jellyfish-dev/membrane-webrtc-js` 0.5.3 (`WebRTCEndpoint`, media events in
// `mediaEvent {data: "<json string>"}` both ways).
//
// A small debug hook, `window.__videoroom`, exposes the page's state and the peer
// connection's inbound RTP statistics for the end-to-end test.

import { Socket } from "phoenix";
import { WebRTCEndpoint } from "@jellyfish-dev/membrane-webrtc-js";
import "./style.css";

const ROOM_NAME_MAX = 64;
const DISPLAY_NAME_MAX = 32;
const STORE_NAME = "videoroom.displayName";
const STORE_ROOM = "videoroom.lastRoom";
// RMS level (0..1) above which a peer counts as speaking, and how long the marker stays on.
const SPEAKING_LEVEL = 0.02;
const SPEAKING_HOLD_MS = 400;
const METER_EVERY_MS = 80;

const $ = (id) => document.getElementById(id);

// A link minted with `videoroom token` carries `?room=<name>&token=<token>`. The token admits to
// that room only; it is sent with the join (the server ignores it unless it has a join secret).
const link = (() => {
  const params = new URLSearchParams(location.search);
  const room = params.get("room");
  const token = params.get("token");
  return room && token ? { room, token } : null;
})();

function tokenFor(room) {
  return link && link.room === room ? link.token : null;
}

function roomQuery(room) {
  const token = tokenFor(room);
  const q = `?room=${encodeURIComponent(room)}`;
  return token ? `${q}&token=${encodeURIComponent(token)}` : q;
}

// ---------------------------------------------------------------------------------------------
// Validation and remembered values

export function validateRoomName(raw) {
  const name = raw.trim();
  if (name === "") return [null, "Enter a room name."];
  if (name.length > ROOM_NAME_MAX) return [null, `At most ${ROOM_NAME_MAX} characters.`];
  if (!/^[A-Za-z0-9._-]+$/.test(name)) {
    return [null, "Use letters, digits, '.', '_' or '-' (no spaces)."];
  }
  return [name, null];
}

export function validateDisplayName(raw) {
  const name = raw.trim().replace(/\s+/g, " ");
  if (name === "") return [null, "Enter your name."];
  if ([...name].length > DISPLAY_NAME_MAX) return [null, `At most ${DISPLAY_NAME_MAX} characters.`];
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) return [null, "No control characters."];
  return [name, null];
}

function remember(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch (_) {
    // Storage may be disabled (private mode); remembering is a convenience only.
  }
}

function recall(key) {
  try {
    return localStorage.getItem(key) || "";
  } catch (_) {
    return "";
  }
}

// ---------------------------------------------------------------------------------------------
// Lobby

function showLobby(error, offerWithoutMedia = false) {
  $("room").hidden = true;
  $("lobby").hidden = false;
  document.title = "videoroom";
  // A token link stays in the address bar, so a reload can still join.
  const keep = link ? roomQuery(link.room) : "";
  if (location.search !== keep) history.replaceState(null, "", location.pathname + keep);
  const box = $("lobby-error");
  box.hidden = !error;
  $("lobby-error-text").textContent = error || "";
  $("join-without-media").hidden = !offerWithoutMedia;
}

function fieldError(inputId, message) {
  const input = $(inputId);
  const out = $(`${inputId}-error`);
  input.setAttribute("aria-invalid", message ? "true" : "false");
  out.hidden = !message;
  out.textContent = message || "";
}

function readLobby() {
  const [room, roomErr] = validateRoomName($("room-name").value);
  const [name, nameErr] = validateDisplayName($("display-name").value);
  fieldError("room-name", roomErr);
  fieldError("display-name", nameErr);
  if (roomErr) $("room-name").focus();
  else if (nameErr) $("display-name").focus();
  return room && name ? { room, name } : null;
}

function initLobby() {
  const params = new URLSearchParams(location.search);
  $("room-name").value = params.get("room") || recall(STORE_ROOM);
  $("display-name").value = recall(STORE_NAME);
  $("lobby-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const wanted = readLobby();
    if (wanted) enterRoom(wanted.room, wanted.name, true);
  });
  $("join-without-media").addEventListener("click", () => {
    const wanted = readLobby();
    if (wanted) enterRoom(wanted.room, wanted.name, false);
  });
  for (const id of ["room-name", "display-name"]) {
    $(id).addEventListener("input", () => fieldError(id, null));
  }
  if ($("room-name").value && !$("display-name").value) $("display-name").focus();
  else $("room-name").focus();
}

// ---------------------------------------------------------------------------------------------
// Media helpers

function mediaErrorText(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Camera and microphone access was denied. Allow it in the browser's site settings and join again, or join without them.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No camera or microphone was found.";
    case "NotReadableError":
      return "The camera or microphone is in use by another program.";
    default:
      if (!navigator.mediaDevices) {
        return "This page cannot use the camera: open it over https or on localhost.";
      }
      return `Cannot open the camera or microphone: ${err && err.message ? err.message : err}`;
  }
}

async function openLocalMedia() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw Object.assign(new Error("getUserMedia unavailable"), { name: "Unavailable" });
  }
  return navigator.mediaDevices.getUserMedia({
    audio: true,
    video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24 } },
  });
}

/** Samples a track's loudness with WebAudio; `level()` is the RMS of the last window (0..1). */
class LevelMeter {
  constructor(ctx, track) {
    this.source = ctx.createMediaStreamSource(new MediaStream([track]));
    this.analyser = ctx.createAnalyser();
    // ~85 ms at 48 kHz, sampled about as often (METER_EVERY_MS): short sounds are not missed.
    this.analyser.fftSize = 4096;
    this.buf = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
  }

  level() {
    this.analyser.getFloatTimeDomainData(this.buf);
    let sum = 0;
    for (const v of this.buf) sum += v * v;
    return Math.sqrt(sum / this.buf.length);
  }

  close() {
    this.source.disconnect();
  }
}

function initials(name) {
  const parts = name.split(" ").filter(Boolean);
  const letters = parts.length > 1 ? [parts[0], parts[parts.length - 1]] : [name];
  return letters.map((p) => [...p][0] || "").join("").toUpperCase();
}

// ---------------------------------------------------------------------------------------------
// Tiles and the participants list

function makeTile(id, name, local) {
  const tile = document.createElement("div");
  tile.className = `tile no-video${local ? " local" : ""}`;
  tile.dataset.peerId = id;
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  video.muted = true; // sound goes through the <audio> element
  const audio = document.createElement("audio");
  audio.autoplay = true;
  const avatar = document.createElement("div");
  avatar.className = "avatar";
  const label = document.createElement("div");
  label.className = "label";
  tile.append(video, audio, avatar, label);
  const entry = document.createElement("li");
  entry.dataset.peerId = id;
  entry.innerHTML = '<span class="dot"></span><span class="who"><span class="name"></span><span class="flags"></span></span>';
  return { id, name, local, tile, video, audio, avatar, label, entry };
}

function renderPeer(p) {
  const you = p.local ? " (you)" : "";
  p.avatar.textContent = initials(p.name);
  p.label.textContent = p.name + you;
  const micOff = p.audioActive === false;
  const camOff = p.videoActive === false || !p.hasVideo;
  p.tile.classList.toggle("no-video", camOff);
  if (micOff) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "muted";
    p.label.append(badge);
  }
  p.entry.querySelector(".name").textContent = p.name + you;
  const flags = [];
  if (micOff) flags.push("muted");
  if (p.videoActive === false) flags.push("camera off");
  const flagsEl = p.entry.querySelector(".flags");
  flagsEl.textContent = flags.join(", ");
  flagsEl.hidden = flags.length === 0;
  p.tile.title = p.name;
}

function setSpeaking(p, on) {
  if (p.speaking === on) return;
  p.speaking = on;
  p.tile.classList.toggle("speaking", on);
  p.entry.classList.toggle("speaking", on);
}

// ---------------------------------------------------------------------------------------------
// The room session

let current = null;

class RoomSession {
  constructor(room, name, stream, audioCtx) {
    this.room = room;
    this.name = name;
    this.stream = stream; // null: receive only
    this.peers = new Map(); // endpoint id -> peer view
    this.trackOwner = new Map(); // remote track id -> endpoint id
    this.localTrackIds = {}; // "audio" | "camera" -> track id in the current endpoint
    this.micOn = true;
    this.cameraOn = true;
    this.endpoint = null;
    this.selfId = null;
    this.phase = "connecting";
    this.everJoined = false;
    this.reconnects = 0;
    this.closed = false;
    this.audioCtx = audioCtx;
    this.local = makeTile("local", name, true);
    this.local.hasVideo = !!(stream && stream.getVideoTracks().length);
    this.local.audioActive = stream && stream.getAudioTracks().length ? true : undefined;
    if (stream) {
      this.local.video.srcObject = stream;
      const mic = stream.getAudioTracks()[0];
      if (mic) this.local.meter = new LevelMeter(this.audioCtx, mic);
    }
    $("grid").replaceChildren(this.local.tile);
    $("participants").replaceChildren(this.local.entry);
    renderPeer(this.local);
    this.updateCount();
    this.meterTimer = setInterval(() => this.sampleLevels(), METER_EVERY_MS);
  }

  // --- socket and channel ---

  start() {
    this.setStatus("connecting…");
    this.socket = new Socket("/socket", { params: {} });
    this.socket.onOpen(() => {
      if (this.phase === "unreachable") this.setBanner("Connected to the server, joining…");
    });
    this.socket.onError(() => {
      if (this.closed) return;
      if (!this.everJoined) {
        this.phase = "unreachable";
        this.setStatus("offline");
        this.setBanner(`Cannot reach the server at ${location.host}. Retrying…`, true);
      }
    });
    this.socket.onClose(() => {
      if (this.closed || !this.everJoined) return;
      if (this.phase !== "reconnecting") this.reconnects += 1;
      this.phase = "reconnecting";
      this.setStatus("reconnecting…");
      this.setBanner("Connection to the server lost. Reconnecting…");
    });
    this.socket.connect();

    const token = tokenFor(this.room);
    this.channel = this.socket.channel(`room:${this.room}`, token ? { token } : {});
    this.channel.on("mediaEvent", (ev) => {
      if (!this.endpoint) return;
      try {
        this.endpoint.receiveMediaEvent(ev.data);
      } catch (e) {
        console.error("media event failed", e, ev.data);
      }
    });
    this.channel.on("error", (ev) => this.setBanner(`Server error: ${ev && ev.message}`, true));
    // The room let this peer go (e.g. it never got into the media session); the server closes
    // the channel next, and phoenix does not rejoin a closed channel.
    this.channel.on("dropped", (ev) => {
      const reason = (ev && ev.reason) || "no reason given";
      this.close(`You were removed from room "${this.room}": ${reason}.`);
    });
    this.channel.onError(() => {
      if (this.closed) return;
      // The room or the connection went away; phoenix rejoins by itself and the join's "ok"
      // starts a fresh media session.
      this.dropEndpoint();
      if (this.everJoined && this.phase !== "reconnecting") {
        this.reconnects += 1;
        this.phase = "reconnecting";
        this.setStatus("reconnecting…");
        this.setBanner("Connection to the room lost. Reconnecting…");
      }
    });
    this.channel
      .join()
      .receive("ok", () => this.onJoined())
      .receive("error", (resp) => this.onJoinRefused(resp))
      .receive("timeout", () => {
        this.setBanner("The server does not answer. Retrying…", true);
      });
  }

  onJoinRefused(resp) {
    const reason = (resp && resp.reason) || "unknown reason";
    let text = `Cannot join room "${this.room}": ${reason}.`;
    if (reason === "room is full") {
      text = `Room "${this.room}" is full. Try again later or pick another room.`;
    } else if (reason === "server is at its room limit") {
      text = `The server runs as many rooms as it may. Try again later, or join a room that is already running.`;
    } else if (/token/.test(reason)) {
      text = `Cannot join room "${this.room}": ${reason}. Ask whoever sent you the link for a new one.`;
    }
    this.close(text);
  }

  onJoined() {
    if (this.closed) return;
    this.everJoined = true;
    this.phase = "joined";
    this.setStatus("joined", true);
    this.setBanner(null);
    this.startEndpoint();
  }

  // --- media session (one WebRTCEndpoint per channel join) ---

  startEndpoint() {
    this.dropEndpoint();
    const ep = new WebRTCEndpoint();
    this.endpoint = ep;
    ep.on("sendMediaEvent", (data) => this.channel.push("mediaEvent", { data }));
    ep.on("connected", (id, others) => {
      this.selfId = id;
      for (const other of others) this.addPeer(other.id, other.metadata);
      this.publish();
    });
    ep.on("endpointAdded", (e) => this.addPeer(e.id, e.metadata));
    ep.on("endpointRemoved", (e) => this.removePeer(e.id));
    ep.on("endpointUpdated", (e) => {
      const p = this.peers.get(e.id);
      if (p) {
        p.name = displayNameOf(e.metadata);
        renderPeer(p);
      }
    });
    ep.on("trackAdded", (ctx) => this.onTrackMeta(ctx));
    ep.on("trackUpdated", (ctx) => this.onTrackMeta(ctx));
    ep.on("trackReady", (ctx) => this.onTrackReady(ctx));
    ep.on("trackRemoved", (ctx) => ctx && this.onTrackRemoved(ctx));
    ep.on("disconnected", () => this.close("You were removed from the room."));
    ep.on("connectionError", (message) => {
      if (message === "room is full") {
        this.close(`Room "${this.room}" is full. Try again later or pick another room.`);
      } else {
        this.setBanner(`Media connection problem: ${message}`, true);
      }
    });
    ep.connect({ displayName: this.name });
  }

  publish() {
    this.localTrackIds = {};
    if (!this.stream) return;
    for (const track of this.stream.getTracks()) {
      const type = track.kind === "audio" ? "audio" : "camera";
      const active = type === "audio" ? this.micOn : this.cameraOn;
      this.localTrackIds[type] = this.endpoint.addTrack(track, this.stream, { type, active });
    }
  }

  dropEndpoint() {
    const ep = this.endpoint;
    if (!ep) return;
    this.endpoint = null;
    const pc = ep.connection;
    ep.removeAllListeners();
    ep.cleanUp();
    if (pc) pc.close();
    for (const id of [...this.peers.keys()]) this.removePeer(id);
    this.selfId = null;
  }

  // --- remote peers ---

  addPeer(id, metadata) {
    if (id === this.selfId || this.peers.has(id)) return;
    const p = makeTile(id, displayNameOf(metadata), false);
    p.hasVideo = false;
    p.meter = null;
    this.peers.set(id, p);
    $("grid").append(p.tile);
    $("participants").append(p.entry);
    renderPeer(p);
    this.updateCount();
  }

  removePeer(id) {
    const p = this.peers.get(id);
    if (!p) return;
    this.peers.delete(id);
    if (p.meter) p.meter.close();
    p.video.srcObject = null;
    p.audio.srcObject = null;
    p.tile.remove();
    p.entry.remove();
    for (const [t, owner] of this.trackOwner) if (owner === id) this.trackOwner.delete(t);
    this.updateCount();
  }

  onTrackMeta(ctx) {
    const id = ctx.endpoint && ctx.endpoint.id;
    const p = this.peers.get(id);
    if (!p) return;
    this.trackOwner.set(ctx.trackId, id);
    const meta = ctx.metadata || {};
    const kind = meta.type === "audio" || (ctx.track && ctx.track.kind === "audio") ? "audio" : "video";
    const active = meta.active !== false;
    if (kind === "audio") p.audioActive = active;
    else p.videoActive = active;
    renderPeer(p);
  }

  onTrackReady(ctx) {
    const id = ctx.endpoint && ctx.endpoint.id;
    const p = this.peers.get(id);
    if (!p || !ctx.track) return;
    this.onTrackMeta(ctx);
    const only = new MediaStream([ctx.track]);
    if (ctx.track.kind === "video") {
      p.video.srcObject = only;
      p.hasVideo = true;
      p.video.play().catch(() => {});
    } else {
      p.audio.srcObject = only;
      p.audio.play().catch((e) => this.soundBlocked(e));
      if (this.audioCtx.state === "suspended") this.audioCtx.resume().catch(() => {});
      if (p.meter) p.meter.close();
      p.meter = new LevelMeter(this.audioCtx, ctx.track);
    }
    renderPeer(p);
  }

  onTrackRemoved(ctx) {
    const id = this.trackOwner.get(ctx.trackId) || (ctx.endpoint && ctx.endpoint.id);
    this.trackOwner.delete(ctx.trackId);
    const p = this.peers.get(id);
    if (!p) return;
    const kind = ctx.track ? ctx.track.kind : ctx.metadata && ctx.metadata.type === "audio" ? "audio" : "video";
    if (kind === "audio") {
      p.audio.srcObject = null;
      if (p.meter) p.meter.close();
      p.meter = null;
      p.audioActive = undefined;
    } else {
      p.video.srcObject = null;
      p.hasVideo = false;
    }
    renderPeer(p);
  }

  sampleLevels() {
    const now = performance.now();
    for (const p of [this.local, ...this.peers.values()]) {
      let loud = false;
      if (p.meter && p.audioActive !== false) {
        p.lastLevel = p.meter.level();
        loud = p.lastLevel > SPEAKING_LEVEL;
      }
      if (loud) p.loudAt = now;
      setSpeaking(p, !!p.loudAt && now - p.loudAt < SPEAKING_HOLD_MS);
    }
  }

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
  }

  // --- local controls ---

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
  }

  toggleCamera() {
    const track = this.stream && this.stream.getVideoTracks()[0];
    if (!track) return;
    this.cameraOn = !this.cameraOn;
    track.enabled = this.cameraOn;
    this.local.videoActive = this.cameraOn;
    $("toggle-camera").setAttribute("aria-pressed", String(!this.cameraOn));
    $("toggle-camera").textContent = this.cameraOn ? "Stop camera" : "Start camera";
    renderPeer(this.local);
    this.sendTrackMetadata("camera", this.cameraOn);
  }

  sendTrackMetadata(type, active) {
    const id = this.localTrackIds[type];
    if (this.endpoint && id) this.endpoint.updateTrackMetadata(id, { type, active });
  }

  // --- page chrome ---

  updateCount() {
    $("participant-count").textContent = String(1 + this.peers.size);
  }

  setStatus(text, ok = false) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("ok", ok);
  }

  setBanner(text, isError = false) {
    const b = $("banner");
    b.hidden = !text;
    b.textContent = text || "";
    b.classList.toggle("error", isError);
  }

  /** Leaves the room (a `disconnect` media event, then the channel and socket) and shows the lobby. */
  close(lobbyError) {
    if (this.closed) return;
    this.closed = true;
    if (this.endpoint) {
      const ep = this.endpoint;
      const pc = ep.connection;
      ep.disconnect();
      if (pc) pc.close();
      ep.removeAllListeners();
      this.endpoint = null;
    }
    for (const id of [...this.peers.keys()]) this.removePeer(id);
    clearInterval(this.meterTimer);
    if (this.local.meter) this.local.meter.close();
    if (this.channel) this.channel.leave();
    if (this.socket) this.socket.disconnect();
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.audioCtx.close().catch(() => {});
    $("grid").replaceChildren();
    $("participants").replaceChildren();
    if (current === this) current = null;
    showLobby(lobbyError);
  }

  snapshot() {
    const view = (p) => ({
      id: p.id,
      name: p.name,
      hasVideo: !!p.hasVideo,
      hasAudio: !!(p.local ? p.meter : p.audio.srcObject),
      audioActive: p.audioActive,
      videoActive: p.videoActive,
      speaking: !!p.speaking,
      level: p.lastLevel || 0,
    });
    return {
      room: this.room,
      phase: this.phase,
      reconnects: this.reconnects,
      audioContext: this.audioCtx.state,
      selfId: this.selfId,
      self: view(this.local),
      peers: [...this.peers.values()].map(view),
    };
  }
}

function displayNameOf(metadata) {
  const n = metadata && typeof metadata.displayName === "string" ? metadata.displayName : "";
  return n.trim() || "Guest";
}

async function enterRoom(room, name, withMedia) {
  remember(STORE_ROOM, room);
  remember(STORE_NAME, name);
  if (current) current.close();
  // Made inside the click that joins, so the browser lets it (and the sound) run.
  const audioCtx = new (window.AudioContext || window.webkitAudioContext)();
  audioCtx.resume().catch(() => {});
  const joinButton = $("join");
  joinButton.disabled = true;
  let stream = null;
  if (withMedia) {
    try {
      stream = await openLocalMedia();
    } catch (err) {
      joinButton.disabled = false;
      audioCtx.close().catch(() => {});
      showLobby(mediaErrorText(err), true);
      return;
    }
  }
  joinButton.disabled = false;
  $("lobby").hidden = true;
  $("room").hidden = false;
  $("room-title").textContent = room;
  document.title = `${room} · videoroom`;
  history.replaceState(null, "", roomQuery(room));
  for (const [id, label] of [["toggle-mic", "Mute"], ["toggle-camera", "Stop camera"]]) {
    $(id).setAttribute("aria-pressed", "false");
    $(id).textContent = label;
  }
  $("toggle-mic").disabled = !(stream && stream.getAudioTracks().length);
  $("toggle-camera").disabled = !(stream && stream.getVideoTracks().length);
  current = new RoomSession(room, name, stream, audioCtx);
  current.start();
}

function initRoomControls() {
  $("toggle-mic").addEventListener("click", () => current && current.toggleMic());
  $("toggle-camera").addEventListener("click", () => current && current.toggleCamera());
  $("leave").addEventListener("click", () => current && current.close());
  window.addEventListener("pagehide", () => current && current.close());
}

// ---------------------------------------------------------------------------------------------
// Debug hook (read-only views for tests and for poking around in the console)

window.__videoroom = {
  state: () => (current ? current.snapshot() : { phase: "lobby" }),
  peerConnection: () => (current && current.endpoint ? current.endpoint.connection || null : null),
  /** Inbound RTP streams of the peer connection: kind, framesDecoded, audio energy and level. */
  async inboundStats() {
    const pc = this.peerConnection();
    if (!pc) return [];
    const report = await pc.getStats();
    const out = [];
    report.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      out.push({
        kind: s.kind,
        mid: s.mid,
        trackIdentifier: s.trackIdentifier,
        packetsReceived: s.packetsReceived || 0,
        bytesReceived: s.bytesReceived || 0,
        framesDecoded: s.framesDecoded || 0,
        frameWidth: s.frameWidth || 0,
        totalAudioEnergy: s.totalAudioEnergy || 0,
        audioLevel: s.audioLevel || 0,
      });
    });
    return out;
  },
};

initLobby();
initRoomControls();
