// The room session: the phoenix socket and the `room:<name>` channel (Phoenix Channels V2), and
// one `@jellyfish-dev/membrane-webrtc-js` 0.5.3 WebRTCEndpoint per channel join (media events in
// `mediaEvent {data: "<json string>"}` both ways). Its methods for peers, screen sharing, local
// media, health, layout, speaking, the speaker view and the page chrome live in their own
// modules and are mixed in here. Owns the connection's lifetime; it must never show the lobby
// itself (its `onClosed` callback does).

import { Socket } from "phoenix";
import { WebRTCEndpoint } from "@jellyfish-dev/membrane-webrtc-js";
import { $, inviteUrl, tokenFor } from "./page.js";
import { chromeMethods } from "./chrome.js";
import { STATS_EVERY_MS, healthMethods } from "./health.js";
import { layoutMethods } from "./layout.js";
import { localMediaMethods } from "./local-media.js";
import { peerInfoOf, peerMethods } from "./peers.js";
import { screenMethods } from "./screen.js";
import { speakerMethods } from "./speaker.js";
import { LevelMeter, METER_EVERY_MS, speakingMethods } from "./speaking.js";
import { makeTile, renderPeer, renderScreen } from "./tiles.js";

export class RoomSession {
  /** `onClosed(session, lobbyError)` runs last in close(): whoever started it shows the lobby. */
  constructor(room, name, stream, audioCtx, onClosed) {
    this.onClosed = onClosed;
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
    this.initSpeakerView();
    this.inviteForced = false;
    this.screens = new Map(); // owner id ("local" for this page) -> screen tile
    this.screenShare = null; // this page's share: {stream, track}
    this.screenBusy = false;
    this.mediaOwner = new Map(); // remote MediaStreamTrack id -> {peer, kind}
    this.uplink = []; // the last samples of this page's sending side (remote-inbound-rtp)
    this.settleUntil = 0; // no quality judged before this (performance.now()): see renegotiated()
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
    this.statsTimer = setInterval(() => this.pollStats(), STATS_EVERY_MS);
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
    if (reason === "room temporarily unavailable") {
      // A cluster node of the room is gone and its name is not free yet: phoenix.js rejoins
      // by itself, and the room comes back on a live node within the lease time.
      this.setBanner("The room is moving to another server. Rejoining…", true);
      return;
    }
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
    // A track removed while its answer was being applied (a screen share stopped at once) still
    // fires `ontrack` for its m-line, which the client library (0.5.3) no longer maps to a known
    // track and throws on (`trackId.startsWith` of undefined). Its `ontrack` handler asks this
    // function (only there) whether to skip the track: skip one it could not use anyway.
    if (typeof ep.checkIfTrackBelongToEndpoint === "function") {
      const belongs = ep.checkIfTrackBelongToEndpoint;
      ep.checkIfTrackBelongToEndpoint = (trackId, endpoint) =>
        trackId === undefined || belongs(trackId, endpoint) || !ep.trackIdToTrack.has(trackId);
    }
    ep.on("sendMediaEvent", (data) => this.channel.push("mediaEvent", { data }));
    ep.on("connected", (id, others) => {
      this.selfId = id;
      for (const other of others) this.addPeer(other.id, other.metadata);
      this.updateCount();
      this.publish();
    });
    ep.on("endpointAdded", (e) => this.addPeer(e.id, e.metadata));
    ep.on("endpointRemoved", (e) => {
      this.renegotiated();
      this.removePeer(e.id);
    });
    ep.on("endpointUpdated", (e) => {
      const p = this.peers.get(e.id);
      if (p) {
        Object.assign(p, peerInfoOf(e.metadata));
        renderPeer(p);
        const screen = this.screens.get(e.id);
        if (screen) renderScreen(screen);
      }
    });
    ep.on("trackAdded", (ctx) => {
      this.renegotiated();
      this.onTrackMeta(ctx);
      ctx.on("voiceActivityChanged", (c) => this.onVoiceActivity(c));
    });
    ep.on("trackUpdated", (ctx) => this.onTrackMeta(ctx));
    ep.on("trackReady", (ctx) => this.onTrackReady(ctx));
    ep.on("trackRemoved", (ctx) => {
      this.renegotiated();
      if (ctx) this.onTrackRemoved(ctx);
    });
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
    this.renegotiated();
    this.localTrackIds = {};
    for (const track of this.stream ? this.stream.getTracks() : []) {
      const type = track.kind === "audio" ? "audio" : "camera";
      const active = type === "audio" ? this.micOn : this.cameraOn;
      this.localTrackIds[type] = this.endpoint.addTrack(track, this.stream, { type, active });
    }
    this.queueScreen(() => this.publishScreen());
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
    clearInterval(this.statsTimer);
    if (this.screenShare) this.screenShare.track.stop();
    this.screenShare = null;
    this.removeScreen("local");
    $("share-screen").setAttribute("aria-pressed", "false");
    $("share-screen").textContent = "Share screen";
    if ($("settings").open) $("settings").close();
    if (this.local.meter) this.local.meter.close();
    if (this.channel) this.channel.leave();
    if (this.socket) this.socket.disconnect();
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.audioCtx.close().catch(() => {});
    $("grid").replaceChildren();
    $("participants").replaceChildren();
    $("media-notice").hidden = true;
    $("invite").hidden = true;
    this.onClosed(this, lobbyError);
  }
}

Object.assign(
  RoomSession.prototype,
  chromeMethods,
  healthMethods,
  layoutMethods,
  localMediaMethods,
  peerMethods,
  screenMethods,
  speakerMethods,
  speakingMethods,
);
