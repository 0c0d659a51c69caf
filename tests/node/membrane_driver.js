#!/usr/bin/env node
"use strict";
// Drives the unmodified npm `@jellyfish-dev/membrane-webrtc-js` client (its
// `WebRTCEndpoint` class, version pinned in package.json) over a phoenix
// channel `room:<room>`, wired the way the membrane videoroom app wires it:
//
//   webrtc.on("sendMediaEvent", data => channel.push("mediaEvent", {data}))
//   channel.on("mediaEvent", ev => webrtc.receiveMediaEvent(ev.data))
//   channel.join().receive("ok", () => webrtc.connect(metadata))
//
// Commands on stdin, events on stdout, one JSON object per line; see README.md.
//
// No browser globals are stubbed. The join path (connect -> connected,
// endpointAdded/Removed/Updated, error, disconnect) only uses `events`, `uuid`
// and JSON. Anything that needs a peer connection (`offerData` creates an
// RTCPeerConnection, `candidate` an RTCIceCandidate) fails inside the library;
// the driver reports that as `media_event_error` / `driver_error` and keeps going.

const { Socket } = require("phoenix");
const { WebRTCEndpoint } = require("@jellyfish-dev/membrane-webrtc-js");
const io = require("./driver_io");
const { emit, withId } = io;

io.installCrashGuards();

// Current session: { socket, ch, webrtc, topic }
let session = null;

function peerOf(endpoint) {
  if (!endpoint) return null;
  return { id: endpoint.id, type: endpoint.type, metadata: io.safeData(endpoint.metadata) };
}

function trackOf(ctx) {
  if (!ctx) return { trackId: null };
  return {
    trackId: ctx.trackId,
    endpointId: ctx.endpoint ? ctx.endpoint.id : null,
    metadata: io.safeData(ctx.metadata),
  };
}

function wireWebRTC(webrtc, ch, isCurrent) {
  const guard = (fn) => (...args) => { if (isCurrent()) fn(...args); };

  webrtc.on("sendMediaEvent", (data) => {
    if (!isCurrent()) return;
    emit({ ev: "media_event_out", data });
    ch.push("mediaEvent", { data });
  });
  webrtc.on("connected", guard((peerId, otherEndpoints) => {
    // Emitted before the library converts the endpoints' `tracks` into Maps.
    const peersInRoom = (otherEndpoints || []).map((e) => ({
      ...peerOf(e),
      trackIds: e && e.tracks && typeof e.tracks === "object" ? Object.keys(e.tracks) : [],
    }));
    emit({ ev: "join_success", peerId, peersInRoom });
  }));
  webrtc.on("disconnected", guard(() => emit({ ev: "disconnected" })));
  webrtc.on("endpointAdded", guard((e) => emit({ ev: "peer_joined", ...peerOf(e) })));
  webrtc.on("endpointRemoved", guard((e) => emit({ ev: "peer_left", ...peerOf(e) })));
  webrtc.on("endpointUpdated", guard((e) => emit({ ev: "peer_updated", ...peerOf(e) })));
  webrtc.on("connectionError", guard((message) => emit({ ev: "connection_error", message: io.safeData(message) })));
  webrtc.on("trackAdded", guard((ctx) => emit({ ev: "track_added", ...trackOf(ctx) })));
  webrtc.on("trackRemoved", guard((ctx) => emit({ ev: "track_removed", ...trackOf(ctx) })));
  webrtc.on("trackUpdated", guard((ctx) => emit({ ev: "track_updated", ...trackOf(ctx) })));
  webrtc.on("trackReady", guard((ctx) => emit({ ev: "track_ready", ...trackOf(ctx) })));
  webrtc.on("bandwidthEstimationChanged", guard((estimation) => emit({ ev: "bandwidth_estimation", estimation })));
}

function teardown(done) {
  const s = session;
  session = null;
  if (!s) return done();
  s.webrtc.removeAllListeners();
  let finished = false;
  const finish = () => {
    if (!finished) {
      finished = true;
      done();
    }
  };
  setTimeout(finish, 2000).unref();
  s.socket.disconnect(finish);
}

function cmdJoin(cmd) {
  if (typeof cmd.url !== "string") throw new Error("`url` (absolute ws:// URL) is required");
  if (typeof cmd.room !== "string") throw new Error("`room` is required");
  if (session) throw new Error("already joined: send `leave` or `disconnect` first");
  const topic = "room:" + cmd.room;
  const metadata = cmd.metadata;

  const socket = new Socket(cmd.url, io.socketOptions(cmd));
  const ch = socket.channel(topic, cmd.join_payload || {});
  const webrtc = new WebRTCEndpoint();
  const s = { socket, ch, webrtc, topic };
  session = s;
  const isCurrent = () => session === s;

  socket.onOpen(() => { if (isCurrent()) emit({ ev: "socket_open" }); });
  socket.onClose((e) => {
    if (isCurrent()) emit({ ev: "socket_close", code: e && e.code !== undefined ? e.code : null });
  });
  socket.onError((err) => {
    if (isCurrent()) emit({ ev: "socket_error", message: err && err.message ? err.message : io.errMessage(err) });
  });

  ch.onMessage = (event, payload, ref, joinRef) => {
    // Wire frames only (local triggers have `ref` undefined), without the
    // media events (reported as media_event_in) and replies.
    if (isCurrent() && ref !== undefined && event !== "mediaEvent" && event !== "phx_reply" &&
        !String(event).startsWith("chan_reply_")) {
      emit({ ev: "msg", topic, event, payload: io.safeData(payload), join_ref: joinRef === undefined ? null : joinRef });
    }
    return payload;
  };
  ch.on("mediaEvent", (payload) => {
    if (!isCurrent()) return;
    const data = payload ? payload.data : undefined;
    emit({ ev: "media_event_in", data: io.safeData(data) });
    try {
      webrtc.receiveMediaEvent(data);
    } catch (e) {
      let type = null;
      try { type = JSON.parse(data).type; } catch (_) { /* not JSON */ }
      emit({ ev: "media_event_error", type, message: io.errMessage(e) });
    }
  });
  ch.onError((reason) => { if (isCurrent()) emit({ ev: "channel_error", topic, reason: io.safeData(reason) }); });
  ch.onClose((payload) => { if (isCurrent()) emit({ ev: "channel_close", topic, payload: io.safeData(payload) }); });

  wireWebRTC(webrtc, ch, isCurrent);

  let joins = 0;
  let errors = 0;
  // As in the reference app, connect() runs in the join "ok" hook. phoenix
  // keeps the hooks of the join push, so an automatic rejoin (after phx_error
  // or a reconnect) calls connect() again: the server sees a new `connect`.
  ch.join()
    .receive("ok", (resp) => {
      if (!isCurrent()) return;
      joins += 1;
      emit(joins === 1
        ? withId(cmd, { ev: "channel_joined", topic, response: io.safeData(resp), join_ref: ch.joinRef() })
        : { ev: "rejoined", topic, response: io.safeData(resp), join_ref: ch.joinRef(), attempt: joins });
      webrtc.connect(metadata);
    })
    .receive("error", (resp) => {
      if (!isCurrent()) return;
      errors += 1;
      emit(withId(cmd, { ev: "join_error", topic, response: io.safeData(resp), attempt: errors }));
    })
    .receive("timeout", () => { if (isCurrent()) emit(withId(cmd, { ev: "join_timeout", topic })); });

  socket.connect();
  emit(withId(cmd, { ev: "ack", cmd: "join", topic }));
}

function requireSession() {
  if (!session) throw new Error("not joined: send `join` first");
  return session;
}

function cmdLeave(cmd) {
  const s = requireSession();
  // 0.5.3 has no leave(): disconnect() sends {"type":"disconnect"} and cleans up.
  s.webrtc.disconnect();
  s.ch.leave().receive("ok", () => emit(withId(cmd, { ev: "left", topic: s.topic })));
  // The socket stays open until `disconnect`/`exit`; a later `join` needs `disconnect` first.
  emit(withId(cmd, { ev: "ack", cmd: "leave" }));
}

function cmdUpdateMetadata(cmd) {
  requireSession().webrtc.updateEndpointMetadata(cmd.metadata);
  emit(withId(cmd, { ev: "ack", cmd: "update_metadata" }));
}

// Push an arbitrary media event string (e.g. to test server robustness).
function cmdSendMediaEvent(cmd) {
  const s = requireSession();
  const data = typeof cmd.data === "string" ? cmd.data : JSON.stringify(cmd.data);
  emit({ ev: "media_event_out", data });
  s.ch.push("mediaEvent", { data });
  emit(withId(cmd, { ev: "ack", cmd: "send_media_event" }));
}

function cmdState(cmd) {
  const s = session;
  if (!s) {
    emit(withId(cmd, { ev: "state", joined: false }));
    return;
  }
  const peers = Array.from(s.webrtc.idToEndpoint ? s.webrtc.idToEndpoint.values() : []).map(peerOf);
  emit(withId(cmd, {
    ev: "state",
    joined: true,
    socket: s.socket.connectionState(),
    channel: s.ch.state,
    peerId: s.webrtc.getEndpointId ? s.webrtc.getEndpointId() : null,
    peers,
  }));
}

function cmdDisconnect(cmd) {
  emit(withId(cmd, { ev: "ack", cmd: "disconnect" }));
  teardown(() => emit(withId(cmd, { ev: "socket_disconnected" })));
}

let exiting = false;
function exit(cmd) {
  if (exiting) return;
  exiting = true;
  teardown(() => {
    emit(withId(cmd || {}, { ev: "exiting" }));
    process.exit(0);
  });
}

const handlers = {
  join: cmdJoin,
  leave: cmdLeave,
  update_metadata: cmdUpdateMetadata,
  send_media_event: cmdSendMediaEvent,
  state: cmdState,
  disconnect: cmdDisconnect,
  exit: exit,
};

io.commandLoop((cmd) => {
  const h = handlers[cmd.cmd];
  if (!h) throw new Error("unknown command " + JSON.stringify(cmd.cmd));
  h(cmd);
}, () => exit(null));

emit({
  ev: "ready",
  driver: "membrane",
  phoenix: io.pkgVersion("phoenix"),
  membrane_webrtc_js: io.pkgVersion("@jellyfish-dev/membrane-webrtc-js"),
});
