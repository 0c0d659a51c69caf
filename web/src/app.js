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
// Tiles are laid out in JS (not CSS auto rows) so that they fill the stage without overlapping.
const TILE_ASPECT = 16 / 9;
const TILE_GAP = 8;
const VIDEO_CONSTRAINTS = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24 } };
// getUserMedia errors after which asking for each device on its own may still get the other.
const RETRY_DEVICES_ALONE = new Set(["NotAllowedError", "NotFoundError", "NotReadableError", "OverconstrainedError"]);

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
  // Keyboard and screen-reader users land where they can act next.
  if (offerWithoutMedia) $("join-without-media").focus();
  else if (error) $("lobby-error-text").focus();
  else focusFirstLobbyField();
}

function focusFirstLobbyField() {
  if ($("room-name").value && !$("display-name").value) $("display-name").focus();
  else $("room-name").focus();
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
  focusFirstLobbyField();
}

// ---------------------------------------------------------------------------------------------
// Media helpers

function mediaErrorText(err) {
  if (!navigator.mediaDevices) {
    return "This page cannot use the camera: open it over https or on localhost.";
  }
  return `Cannot open the camera or microphone: ${err && err.message ? err.message : err}`;
}

/** Why one device could not be opened, in words a person can act on. */
function deviceReason(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Access was denied: allow it in the browser's site settings, then press Try again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "None was found.";
    case "NotReadableError":
      return "It is in use by another program.";
    default:
      return err && err.message ? err.message : String(err);
  }
}

/**
 * Opens the camera and the microphone. When asking for both fails, asks for each on its own, so
 * a denied camera does not cost the microphone. Returns `{stream, cameraError, micError}`
 * (`stream` null when neither opened); throws only when getUserMedia cannot be used at all.
 */
async function openLocalMedia() {
  const media = navigator.mediaDevices;
  if (!media || !media.getUserMedia) {
    throw Object.assign(new Error("getUserMedia unavailable"), { name: "Unavailable" });
  }
  try {
    const stream = await media.getUserMedia({ audio: true, video: VIDEO_CONSTRAINTS });
    return { stream, cameraError: null, micError: null };
  } catch (err) {
    if (!RETRY_DEVICES_ALONE.has(err && err.name)) throw err;
  }
  // One after the other: a browser shows one permission prompt at a time.
  const mic = await media.getUserMedia({ audio: true }).then((s) => [s, null], (e) => [null, e]);
  const cam = await media.getUserMedia({ video: VIDEO_CONSTRAINTS }).then((s) => [s, null], (e) => [null, e]);
  const tracks = [mic[0], cam[0]].filter(Boolean).flatMap((s) => s.getTracks());
  return { stream: tracks.length ? new MediaStream(tracks) : null, cameraError: cam[1], micError: mic[1] };
}

/** The notice for a join that lacks a device (null when both opened). */
function missingDeviceText({ cameraError, micError }) {
  if (cameraError && micError) {
    return `Camera and microphone unavailable: you joined without them, so the others can neither see nor hear you. ${deviceReason(cameraError)}`;
  }
  if (cameraError) return `Camera unavailable: you joined with your microphone only. ${deviceReason(cameraError)}`;
  if (micError) return `Microphone unavailable: you joined with your camera only. ${deviceReason(micError)}`;
  return null;
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
  // A tile is a toggle button: it pins that person large (see RoomSession.togglePin).
  tile.tabIndex = 0;
  tile.setAttribute("role", "button");
  tile.setAttribute("aria-pressed", "false");
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  video.muted = true; // sound goes through the <audio> element
  const audio = document.createElement("audio");
  audio.autoplay = true;
  const avatar = document.createElement("div");
  avatar.className = "avatar";
  avatar.setAttribute("aria-hidden", "true"); // the initials only repeat the name
  const devices = document.createElement("div");
  devices.className = "devices";
  // The name shrinks (ellipsis); "(you)" and "muted" never do, so they stay readable.
  const label = document.createElement("div");
  label.className = "label";
  label.innerHTML = '<span class="name"></span> <span class="you">(you)</span> <span class="badge">muted</span>';
  label.querySelector(".you").hidden = !local;
  // The space keeps the label's and the marker's words apart in the tile's text.
  tile.append(video, audio, avatar, label, " ", devices);
  const entry = document.createElement("li");
  entry.dataset.peerId = id;
  entry.innerHTML = '<span class="dot"></span><span class="who"><span class="name"><span class="text"></span></span><span class="flags"></span></span>';
  // As on the tile, a long name is ellipsised but "(you)" is not.
  if (local) entry.querySelector(".name").insertAdjacentHTML("beforeend", '<span class="you"> (you)</span>');
  return { id, name, local, tile, video, audio, avatar, devices, label, entry };
}

/** Devices a peer has none of ("no camera", "no mic"): from its endpoint metadata. */
function missingDevices(p) {
  const missing = [];
  if (p.hasCamera === false) missing.push("no camera");
  if (p.hasMic === false) missing.push("no mic");
  return missing;
}

function renderPeer(p) {
  const you = p.local ? " (you)" : "";
  // Drawn by CSS (::before), so the tile's text is what its aria-label starts with.
  p.avatar.dataset.initials = initials(p.name);
  const nameEl = p.label.querySelector(".name");
  nameEl.textContent = p.name;
  nameEl.title = p.name;
  const micOff = p.audioActive === false;
  const camOff = p.videoActive === false || !p.hasVideo;
  p.tile.classList.toggle("no-video", camOff);
  p.label.querySelector(".badge").hidden = !micOff;
  const missing = missingDevices(p);
  p.devices.textContent = missing.join(" · ");
  p.devices.hidden = missing.length === 0;
  p.entry.querySelector(".name .text").textContent = p.name;
  const flags = [...missing];
  if (micOff) flags.push("muted");
  if (p.videoActive === false) flags.push("camera off");
  const flagsEl = p.entry.querySelector(".flags");
  flagsEl.textContent = flags.join(", ");
  flagsEl.hidden = flags.length === 0;
  p.tile.title = p.name;
  // The visible text first, in order (so speech input can say what it sees), then "camera off",
  // which only the avatar shows. Whether it is pinned is the button's aria-pressed.
  const said = [p.name + you + (micOff ? " muted" : ""), missing.join(" · ")];
  if (p.videoActive === false && p.hasCamera !== false) said.push("camera off");
  p.tile.setAttribute("aria-label", said.filter(Boolean).join(", "));
}

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
function tileRects(n, w, h, pinned = -1) {
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
    this.pinnedId = null;
    this.inviteForced = false;
    this.local = makeTile("local", name, true);
    this.local.hasVideo = !!(stream && stream.getVideoTracks().length);
    this.local.hasCamera = this.local.hasVideo;
    this.local.hasMic = !!(stream && stream.getAudioTracks().length);
    this.local.audioActive = this.local.hasMic ? true : undefined;
    if (stream) {
      this.local.video.srcObject = stream;
      const mic = stream.getAudioTracks()[0];
      if (mic) this.local.meter = new LevelMeter(this.audioCtx, mic);
    }
    $("grid").replaceChildren(this.local.tile);
    $("participants").replaceChildren(this.local.entry);
    renderPeer(this.local);
    this.updateCount();
    $("invite-link").value = inviteUrl(room);
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
        this.outageAttempt(`Cannot reach the server at ${location.host}. Retrying…`, true);
      }
    });
    this.socket.onClose(() => {
      if (this.closed || !this.everJoined) return;
      if (this.phase !== "reconnecting") this.reconnects += 1;
      this.phase = "reconnecting";
      this.setStatus("reconnecting…");
      this.outageAttempt("Connection to the server lost. Reconnecting…");
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
        this.outageAttempt("Connection to the room lost. Reconnecting…");
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
  }

  showOutage() {
    if (!this.outage) return;
    const { since, attempts, text, isError } = this.outage;
    const secs = Math.floor((Date.now() - since) / 1000);
    const clock = `${Math.floor(secs / 60)}:${String(secs % 60).padStart(2, "0")}`;
    this.setBanner(`${text} Attempt ${attempts + 1}, for ${clock}.`, isError);
  }

  endOutage() {
    clearInterval(this.outageTimer);
    this.outage = null;
  }

  onJoined() {
    if (this.closed) return;
    this.endOutage();
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
      this.updateCount();
      this.publish();
    });
    ep.on("endpointAdded", (e) => this.addPeer(e.id, e.metadata));
    ep.on("endpointRemoved", (e) => this.removePeer(e.id));
    ep.on("endpointUpdated", (e) => {
      const p = this.peers.get(e.id);
      if (p) {
        Object.assign(p, peerInfoOf(e.metadata));
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
    // Which devices this peer has at all, so the others can show "no camera" / "no mic".
    ep.connect({ displayName: this.name, camera: this.local.hasCamera, mic: this.local.hasMic });
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
    this.showInvite();
  }

  // --- remote peers ---

  addPeer(id, metadata) {
    if (id === this.selfId || this.peers.has(id)) return;
    const info = peerInfoOf(metadata);
    const p = Object.assign(makeTile(id, info.name, false), info);
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
    if (this.pinnedId === id) this.pinnedId = null;
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

  async toggleCamera() {
    if (this.cameraBusy || !this.local.hasCamera) return;
    this.cameraBusy = true;
    try {
      if (this.cameraOn) this.stopCamera();
      else await this.startCamera();
    } finally {
      this.cameraBusy = false;
    }
  }

  /**
   * Stops (not just disables) the camera track, so the camera light goes off. The ended track
   * stays on its sender: the client library finds the sender by that track for replaceTrack.
   */
  stopCamera() {
    for (const t of this.stream.getVideoTracks()) t.stop();
    this.setCameraOn(false);
    this.sendTrackMetadata("camera", false);
  }

  /** Opens the camera again and swaps the new track onto the existing sender: no rejoin. */
  async startCamera() {
    let track;
    try {
      const s = await navigator.mediaDevices.getUserMedia({ video: VIDEO_CONSTRAINTS });
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
  }

  setCameraOn(on) {
    this.cameraOn = on;
    this.local.videoActive = on;
    $("toggle-camera").setAttribute("aria-pressed", String(!on));
    $("toggle-camera").textContent = on ? "Stop camera" : "Start camera";
    renderPeer(this.local);
  }

  sendTrackMetadata(type, active) {
    const id = this.localTrackIds[type];
    if (this.endpoint && id) this.endpoint.updateTrackMetadata(id, { type, active });
  }

  // --- page chrome ---

  updateCount() {
    $("participant-count").textContent = String(1 + this.peers.size);
    this.showInvite();
    this.layout();
  }

  // --- layout and pinning ---

  /** Places every tile: a best-fit grid, or the pinned tile large with the others in a strip. */
  layout() {
    const grid = $("grid");
    const w = grid.clientWidth;
    const h = grid.clientHeight;
    if (!w || !h) return;
    const all = [this.local, ...this.peers.values()];
    const pinned = all.length > 1 ? all.findIndex((p) => p.id === this.pinnedId) : -1;
    all.forEach((p, i) => p.tile.classList.toggle("pinned", i === pinned));
    tileRects(all.length, w, h, pinned).forEach((r, i) => place(all[i].tile, r));
  }

  togglePin(id) {
    this.pinnedId = this.pinnedId === id ? null : id;
    for (const p of [this.local, ...this.peers.values()]) {
      p.tile.setAttribute("aria-pressed", String(p.id === this.pinnedId));
    }
    this.layout();
  }

  // --- invite link ---

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
  }

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
  }

  // --- device notice ---

  setMediaNotice(text, focus = true) {
    $("media-notice").hidden = !text;
    $("media-notice-text").textContent = text || "";
    if (text && focus) $("media-notice").focus();
    this.layout();
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
    this.endOutage();
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
    $("media-notice").hidden = true;
    $("invite").hidden = true;
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
      hasCamera: p.hasCamera !== false,
      hasMic: p.hasMic !== false,
      pinned: p.id === this.pinnedId,
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

/** A peer's name and (when it says) whether it has a camera and a microphone at all. */
function peerInfoOf(metadata) {
  const m = metadata || {};
  const n = typeof m.displayName === "string" ? m.displayName : "";
  return { name: n.trim() || "Guest", hasCamera: m.camera !== false, hasMic: m.mic !== false };
}

function inviteUrl(room) {
  return `${location.origin}${location.pathname}${roomQuery(room)}`;
}

/** Says `text` through the polite live region (cleared first, so a repeat is announced too). */
function announce(text) {
  const region = $("announce");
  region.textContent = "";
  requestAnimationFrame(() => {
    region.textContent = text;
  });
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
  let media = { stream: null, cameraError: null, micError: null };
  if (withMedia) {
    try {
      media = await openLocalMedia();
    } catch (err) {
      joinButton.disabled = false;
      audioCtx.close().catch(() => {});
      showLobby(mediaErrorText(err), true);
      return;
    }
  }
  const { stream } = media;
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
  const notice = missingDeviceText(media);
  if (notice) current.setMediaNotice(notice);
  else focusFirstControl();
}

/** After joining: the first control that does something (Mute, unless there is no mic). */
function focusFirstControl() {
  const first = ["toggle-mic", "toggle-camera", "copy-link"].map($).find((b) => !b.disabled);
  first.focus();
}

function initRoomControls() {
  $("toggle-mic").addEventListener("click", () => current && current.toggleMic());
  $("toggle-camera").addEventListener("click", () => current && current.toggleCamera());
  $("leave").addEventListener("click", () => current && current.close());
  $("copy-link").addEventListener("click", () => current && current.copyInvite());
  $("copy-invite").addEventListener("click", () => current && current.copyInvite());
  // Trying the devices again is a fresh join: the new tracks need a fresh media session anyway.
  $("retry-media").addEventListener("click", () => {
    if (current) enterRoom(current.room, current.name, true);
  });
  const grid = $("grid");
  grid.addEventListener("click", (e) => {
    const tile = e.target.closest(".tile");
    if (tile && current) current.togglePin(tile.dataset.peerId);
  });
  grid.addEventListener("keydown", (e) => {
    if ((e.key !== "Enter" && e.key !== " ") || !e.target.classList.contains("tile")) return;
    e.preventDefault();
    if (current) current.togglePin(e.target.dataset.peerId);
  });
  new ResizeObserver(() => current && current.layout()).observe(grid);
  window.addEventListener("pagehide", () => current && current.close());
}

// ---------------------------------------------------------------------------------------------
// Debug hook (read-only views for tests and for poking around in the console)

window.__videoroom = {
  state: () => (current ? current.snapshot() : { phase: "lobby" }),
  peerConnection: () => (current && current.endpoint ? current.endpoint.connection || null : null),
  /** The layout for n tiles on a w x h stage (see tileRects), to check it for any n. */
  tileRects,
  /** The local camera track's readyState ("ended" after Stop camera), or null without one. */
  localVideoState() {
    const track = current && current.stream && current.stream.getVideoTracks()[0];
    return track ? track.readyState : null;
  },
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
