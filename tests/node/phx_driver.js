#!/usr/bin/env node
"use strict";
// Drives the unmodified npm `phoenix` client (see package.json for the pinned
// version) from newline-delimited JSON commands on stdin and reports what it
// sees as newline-delimited JSON events on stdout. Protocol: README.md.

const { Socket } = require("phoenix");
const io = require("./driver_io");
const { emit, withId } = io;

io.installCrashGuards();

let socket = null;
// topic -> { ch, joins: number of ok join replies, errors: number of error join replies }
const channels = new Map();

function requireSocket() {
  if (!socket) throw new Error("not connected: send a `connect` command first");
  return socket;
}

function requireChannel(topic) {
  const entry = channels.get(topic);
  if (!entry) throw new Error("no channel for topic " + JSON.stringify(topic));
  return entry;
}

function cmdConnect(cmd) {
  if (socket) throw new Error("already connected: send `disconnect` first");
  if (typeof cmd.url !== "string") throw new Error("`url` (absolute ws:// URL) is required");
  const s = new Socket(cmd.url, io.socketOptions(cmd));
  socket = s;
  s.onOpen(() => emit({ ev: "socket_open" }));
  s.onClose((e) => emit({
    ev: "socket_close",
    code: e && e.code !== undefined ? e.code : null,
    reason: e && e.reason !== undefined ? String(e.reason) : null,
    wasClean: e && e.wasClean !== undefined ? e.wasClean : null,
  }));
  s.onError((err) => emit({
    ev: "socket_error",
    message: err && err.message ? err.message : io.errMessage(err),
  }));
  s.connect();
  emit(withId(cmd, { ev: "ack", cmd: "connect" }));
}

function cmdJoin(cmd) {
  const s = requireSocket();
  const topic = cmd.topic;
  if (typeof topic !== "string") throw new Error("`topic` is required");
  const ch = s.channel(topic, cmd.payload || {});
  const entry = { ch, joins: 0, errors: 0 };
  channels.set(topic, entry);
  const alive = () => channels.get(topic) === entry;

  ch.onMessage = (event, payload, ref, joinRef) => {
    // Only frames that came off the wire: phoenix also triggers local events
    // (phx_close "leave", transport phx_error, `chan_reply_<ref>` re-dispatch of
    // phx_reply, push timeouts) with `ref` undefined; decoded frames have a
    // string or null ref.
    if (alive() && ref !== undefined && !String(event).startsWith("chan_reply_")) {
      emit({
        ev: "msg",
        topic,
        event,
        payload: io.safeData(payload),
        ref: ref === undefined ? null : ref,
        join_ref: joinRef === undefined ? null : joinRef,
      });
    }
    return payload;
  };
  ch.onError((reason) => {
    if (alive()) emit({ ev: "channel_error", topic, reason: io.safeData(reason) });
  });
  ch.onClose((payload) => {
    if (!alive()) return;
    // A closed channel is removed from the socket and never rejoined.
    channels.delete(topic);
    emit({ ev: "channel_close", topic, payload: io.safeData(payload) });
  });

  ch.join(cmd.timeout)
    .receive("ok", (resp) => {
      if (!alive()) return;
      entry.joins += 1;
      const ev = entry.joins === 1
        ? withId(cmd, { ev: "join_ok", topic })
        : { ev: "rejoined", topic, attempt: entry.joins };
      ev.response = io.safeData(resp);
      ev.join_ref = ch.joinRef();
      emit(ev);
    })
    .receive("error", (resp) => {
      if (!alive()) return;
      entry.errors += 1;
      emit(withId(cmd, { ev: "join_error", topic, response: io.safeData(resp), attempt: entry.errors }));
    })
    .receive("timeout", () => {
      if (alive()) emit(withId(cmd, { ev: "join_timeout", topic }));
    });
  emit(withId(cmd, { ev: "ack", cmd: "join", topic }));
}

function cmdPush(cmd) {
  requireSocket();
  const { ch } = requireChannel(cmd.topic);
  if (typeof cmd.event !== "string") throw new Error("`event` is required");
  const base = { topic: cmd.topic, event: cmd.event };
  const push = cmd.timeout !== undefined
    ? ch.push(cmd.event, cmd.payload || {}, cmd.timeout)
    : ch.push(cmd.event, cmd.payload || {});
  push
    .receive("ok", (resp) => emit(withId(cmd, { ev: "push_ok", ...base, response: io.safeData(resp) })))
    .receive("error", (resp) => emit(withId(cmd, { ev: "push_error", ...base, response: io.safeData(resp) })))
    .receive("timeout", () => emit(withId(cmd, { ev: "push_timeout", ...base })));
  emit(withId(cmd, { ev: "ack", cmd: "push", ...base }));
}

function cmdLeave(cmd) {
  requireSocket();
  const entry = requireChannel(cmd.topic);
  // phoenix fires the leave "ok" locally at once when it cannot push, and
  // runs onClose("leave") on ok or timeout, before any server reply.
  entry.ch.leave()
    .receive("ok", (resp) => emit(withId(cmd, { ev: "leave_ok", topic: cmd.topic, response: io.safeData(resp) })))
    .receive("timeout", () => emit(withId(cmd, { ev: "leave_timeout", topic: cmd.topic })));
  emit(withId(cmd, { ev: "ack", cmd: "leave", topic: cmd.topic }));
}

function cmdRaw(cmd) {
  const conn = requireSocket().conn;
  if (!conn || conn.readyState !== 1) throw new Error("websocket is not open");
  if (typeof cmd.frame === "string") {
    conn.send(cmd.frame);
  } else if (typeof cmd.binary_b64 === "string") {
    conn.send(Buffer.from(cmd.binary_b64, "base64"));
  } else {
    throw new Error("`frame` (text) or `binary_b64` is required");
  }
  emit(withId(cmd, { ev: "ack", cmd: "raw" }));
}

function disconnectSocket(done) {
  const s = socket;
  socket = null;
  channels.clear();
  if (!s) return done();
  let finished = false;
  const finish = () => {
    if (!finished) {
      finished = true;
      done();
    }
  };
  // phoenix waits for the close handshake (bounded); do not wait forever.
  setTimeout(finish, 2000).unref();
  s.disconnect(finish);
}

function cmdDisconnect(cmd) {
  if (!socket) {
    emit(withId(cmd, { ev: "disconnected" }));
    return;
  }
  emit(withId(cmd, { ev: "ack", cmd: "disconnect" }));
  disconnectSocket(() => emit(withId(cmd, { ev: "disconnected" })));
}

function cmdState(cmd) {
  const chans = {};
  for (const [topic, { ch }] of channels) chans[topic] = { state: ch.state, join_ref: ch.joinRef() || null };
  emit(withId(cmd, {
    ev: "state",
    socket: socket ? socket.connectionState() : "none",
    channels: chans,
  }));
}

let exiting = false;
function exit(cmd) {
  if (exiting) return;
  exiting = true;
  disconnectSocket(() => {
    emit(withId(cmd || {}, { ev: "exiting" }));
    process.exit(0);
  });
}

const handlers = {
  connect: cmdConnect,
  join: cmdJoin,
  push: cmdPush,
  leave: cmdLeave,
  raw: cmdRaw,
  disconnect: cmdDisconnect,
  state: cmdState,
  exit: exit,
};

io.commandLoop((cmd) => {
  const h = handlers[cmd.cmd];
  if (!h) throw new Error("unknown command " + JSON.stringify(cmd.cmd));
  h(cmd);
}, () => exit(null));

emit({ ev: "ready", driver: "phx", phoenix: io.pkgVersion("phoenix") });
