#!/usr/bin/env node
"use strict";
// Self-check of phx_driver.js and membrane_driver.js against a tiny scripted
// Phoenix V2 mock server (ws, 127.0.0.1, random port). No Rust server needed.
// Run: node tests/node/selftest.js  (after scripts/setup-node.sh). Exit 0 = pass.

const path = require("path");
const { spawn } = require("child_process");
const readline = require("readline");
const { WebSocketServer } = require("ws");

const FAST = { heartbeatIntervalMs: 200, rejoinAfterMs: 50, reconnectAfterMs: 50, timeout: 1000 };

// ---------------------------------------------------------------- mock server

function startMock() {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  const state = { frames: [], conns: [], joins: {}, paths: [] };
  wss.on("connection", (ws, req) => {
    state.paths.push(req.url);
    state.conns.push(ws);
    const send = (f) => ws.send(JSON.stringify(f));
    ws.on("message", (raw, isBinary) => {
      const text = isBinary ? null : raw.toString();
      let f;
      try { f = JSON.parse(text); } catch (_) { f = null; }
      state.frames.push({ text, frame: f });
      if (!Array.isArray(f) || f.length < 5) return; // garbage: ignore
      const [jr, ref, topic, event, payload] = f;
      const reply = (status, response) => send([jr, ref, topic, "phx_reply", { status, response }]);
      if (topic === "phoenix" && event === "heartbeat") return reply("ok", {});
      if (event === "phx_join") {
        const n = (state.joins[topic] = (state.joins[topic] || 0) + 1);
        if (topic === "room:deny") return reply("error", { reason: "denied" });
        reply("ok", { n });
        if (topic === "room:crash" && n === 1) {
          setTimeout(() => send([jr, jr, topic, "phx_error", { reason: "channel_crash" }]), 50);
        }
        return;
      }
      if (event === "phx_leave") {
        reply("ok", {});
        return send([jr, jr, topic, "phx_close", {}]);
      }
      if (event === "echo") return reply("ok", payload);
      if (event === "refuse") return reply("error", { why: "no" });
      if (event === "please_close") return send([jr, jr, topic, "phx_close", {}]);
      if (event === "please_push") return send([jr, null, topic, "hello", { x: 1 }]);
      if (event === "mediaEvent") return onMediaEvent(send, jr, topic, payload);
      // anything else: no reply (like a :noreply handle_in)
    });
  });

  function onMediaEvent(send, jr, topic, payload) {
    let me;
    try { me = JSON.parse(payload.data); } catch (_) { return; }
    const push = (obj) => send([jr, null, topic, "mediaEvent", { data: JSON.stringify(obj) }]);
    if (me.type === "connect") {
      push({
        type: "connected",
        data: {
          id: "peer-1",
          otherEndpoints: [{
            id: "peer-0", type: "webrtc", metadata: { displayName: "z" },
            trackIdToMetadata: {}, tracks: {},
          }],
        },
      });
    }
  }

  return new Promise((resolve) => wss.on("listening", () => {
    const port = wss.address().port;
    resolve({
      wss, state, url: `ws://127.0.0.1:${port}/socket`,
      // push a frame to every open connection
      broadcastFrame: (f) => state.conns.forEach((c) => c.readyState === 1 && c.send(JSON.stringify(f))),
      close: () => new Promise((r) => { state.conns.forEach((c) => c.terminate()); wss.close(() => r()); }),
    });
  }));
}

// ------------------------------------------------------------- driver harness

class Driver {
  constructor(script) {
    this.events = [];
    this.waiters = [];
    this.stderr = "";
    this.proc = spawn(process.execPath, [path.join(__dirname, script)], { stdio: ["pipe", "pipe", "pipe"] });
    this.proc.stderr.on("data", (d) => { this.stderr += d; });
    this.exited = new Promise((r) => this.proc.on("exit", (code) => r(code)));
    readline.createInterface({ input: this.proc.stdout }).on("line", (line) => {
      let ev;
      try { ev = JSON.parse(line); } catch (e) { throw new Error("driver wrote non-JSON line: " + line); }
      this.events.push(ev);
      this.waiters = this.waiters.filter((w) => !w.check());
    });
  }
  send(cmd) { this.proc.stdin.write(JSON.stringify(cmd) + "\n"); }
  // Waits for the first event (from index `from`) matching pred.
  waitFor(pred, what, timeoutMs = 3000, from = 0) {
    return new Promise((resolve, reject) => {
      const w = {
        check: () => {
          const ev = this.events.slice(from).find(pred);
          if (ev) { clearTimeout(w.t); resolve(ev); return true; }
          return false;
        },
      };
      if (w.check()) return;
      w.t = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error(`timeout waiting for ${what}; events so far:\n` +
          this.events.map((e) => "  " + JSON.stringify(e)).join("\n") + "\nstderr: " + this.stderr));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }
  ev(name, extra = () => true, timeoutMs) { return this.waitFor((e) => e.ev === name && extra(e), name, timeoutMs); }
}

function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(cond, what, timeoutMs = 3000) {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timeout waiting for " + what);
    await sleep(10);
  }
}

// ------------------------------------------------------------------ phx tests

async function testPhx() {
  const mock = await startMock();
  const d = new Driver("phx_driver.js");
  try {
    await d.ev("ready");
    d.send({ cmd: "connect", id: 1, url: mock.url, params: { token: "t" }, opts: FAST });
    await d.ev("ack", (e) => e.id === 1);
    await d.ev("socket_open");
    assert(mock.state.paths[0] === "/socket/websocket?token=t&vsn=2.0.0", "upgrade path " + mock.state.paths[0]);

    d.send({ cmd: "join", id: 2, topic: "room:a", payload: { isSimulcastOn: false } });
    const ok = await d.ev("join_ok", (e) => e.topic === "room:a");
    assert(ok.id === 2 && ok.response.n === 1 && typeof ok.join_ref === "string", "join_ok " + JSON.stringify(ok));
    const joinFrame = mock.state.frames.find((f) => f.frame && f.frame[3] === "phx_join");
    assert(JSON.stringify(joinFrame.frame[4]) === '{"isSimulcastOn":false}', "join payload");

    d.send({ cmd: "push", id: 3, topic: "room:a", event: "echo", payload: { a: 1 } });
    const pok = await d.ev("push_ok", (e) => e.id === 3);
    assert(pok.response.a === 1 && pok.event === "echo", "push_ok " + JSON.stringify(pok));
    d.send({ cmd: "push", id: 4, topic: "room:a", event: "refuse", payload: {} });
    const perr = await d.ev("push_error", (e) => e.id === 4);
    assert(perr.response.why === "no", "push_error");
    d.send({ cmd: "push", id: 5, topic: "room:a", event: "please_push", payload: {} });
    const msg = await d.ev("msg", (e) => e.event === "hello");
    assert(msg.topic === "room:a" && msg.payload.x === 1 && msg.join_ref === ok.join_ref, "msg " + JSON.stringify(msg));
    await d.ev("push_timeout", (e) => e.id === 5, 3000);

    // heartbeats flow with the fast interval
    await until(() => mock.state.frames.some((f) => f.frame && f.frame[3] === "heartbeat"), "heartbeat");

    d.send({ cmd: "raw", id: 6, frame: "this is not json" });
    await d.ev("ack", (e) => e.id === 6);
    await until(() => mock.state.frames.some((f) => f.text === "this is not json"), "raw frame");

    d.send({ cmd: "leave", id: 7, topic: "room:a" });
    await d.ev("leave_ok", (e) => e.id === 7);
    await d.ev("channel_close", (e) => e.topic === "room:a");
    await until(() => mock.state.frames.some((f) => f.frame && f.frame[3] === "phx_leave"), "phx_leave");

    d.send({ cmd: "join", id: 8, topic: "room:deny" });
    const jerr = await d.ev("join_error", (e) => e.id === 8);
    assert(jerr.response.reason === "denied", "join_error");
    d.send({ cmd: "leave", topic: "room:deny" });

    // phx_error -> channel_error -> automatic rejoin -> rejoined
    d.send({ cmd: "join", id: 9, topic: "room:crash" });
    await d.ev("join_ok", (e) => e.id === 9);
    const cerr = await d.ev("channel_error", (e) => e.topic === "room:crash");
    assert(cerr.reason.reason === "channel_crash", "channel_error reason");
    const rj = await d.ev("rejoined", (e) => e.topic === "room:crash");
    assert(rj.response.n === 2, "rejoin reply");

    // server-side close: channel_close, and the channel is gone (no rejoin)
    d.send({ cmd: "join", id: 13, topic: "room:b" });
    await d.ev("join_ok", (e) => e.id === 13);
    d.send({ cmd: "push", topic: "room:b", event: "please_close", payload: {} });
    const cc = await d.ev("channel_close", (e) => e.topic === "room:b");
    assert(JSON.stringify(cc.payload) === "{}", "server phx_close payload");
    await d.ev("msg", (e) => e.topic === "room:b" && e.event === "phx_close");
    assert(!d.events.some((e) => e.ev === "msg" && e.payload === "leave"), "local close leaked as msg");

    d.send({ cmd: "state", id: 10 });
    const st = await d.ev("state", (e) => e.id === 10);
    assert(st.socket === "open" && st.channels["room:crash"].state === "joined" &&
      !("room:b" in st.channels), "state " + JSON.stringify(st));

    d.send({ cmd: "disconnect", id: 11 });
    await d.ev("disconnected", (e) => e.id === 11);
    await d.ev("socket_close");

    d.send({ cmd: "exit", id: 12 });
    await d.ev("exiting");
    assert((await d.exited) === 0, "exit code 0");
  } finally {
    d.proc.kill();
    await mock.close();
  }

  // stdin EOF => disconnect and exit 0
  const mock2 = await startMock();
  const d2 = new Driver("phx_driver.js");
  try {
    await d2.ev("ready");
    d2.send({ cmd: "connect", url: mock2.url, opts: FAST });
    await d2.ev("socket_open");
    d2.proc.stdin.end();
    assert((await d2.exited) === 0, "EOF exit code 0");
  } finally {
    d2.proc.kill();
    await mock2.close();
  }
}

// ------------------------------------------------------------- membrane tests

async function testMembrane() {
  const mock = await startMock();
  const d = new Driver("membrane_driver.js");
  const mediaIn = () => mock.state.frames
    .filter((f) => f.frame && f.frame[3] === "mediaEvent")
    .map((f) => f.frame[4].data);
  try {
    const ready = await d.ev("ready");
    assert(ready.membrane_webrtc_js === "0.5.3" && ready.phoenix === "1.8.16", "versions " + JSON.stringify(ready));
    d.send({ cmd: "join", id: 1, url: mock.url, room: "x", metadata: { displayName: "a" }, opts: FAST });
    const cj = await d.ev("channel_joined", (e) => e.id === 1);
    assert(cj.topic === "room:x", "topic");

    // the library's connect() output, verbatim
    await until(() => mediaIn().length > 0, "connect media event");
    assert(mediaIn()[0] === '{"type":"connect","data":{"metadata":{"displayName":"a"}}}', "connect event " + mediaIn()[0]);

    const js = await d.ev("join_success");
    assert(js.peerId === "peer-1", "peerId");
    assert(js.peersInRoom.length === 1 && js.peersInRoom[0].id === "peer-0" &&
      js.peersInRoom[0].metadata.displayName === "z", "peersInRoom " + JSON.stringify(js));

    const jr = cj.join_ref;
    const push = (obj) => mock.broadcastFrame([jr, null, "room:x", "mediaEvent", { data: JSON.stringify(obj) }]);
    push({ type: "endpointAdded", data: { id: "peer-2", type: "webrtc", metadata: { displayName: "b" } } });
    const pj = await d.ev("peer_joined");
    assert(pj.id === "peer-2" && pj.metadata.displayName === "b", "peer_joined");
    push({ type: "endpointUpdated", data: { id: "peer-2", metadata: { displayName: "b2" } } });
    const pu = await d.ev("peer_updated");
    assert(pu.id === "peer-2" && pu.metadata.displayName === "b2", "peer_updated");
    push({ type: "endpointRemoved", data: { id: "peer-2" } });
    const pl = await d.ev("peer_left");
    assert(pl.id === "peer-2", "peer_left");

    // Negotiation needs RTCPeerConnection, which Node lacks: reported, not fatal.
    push({ type: "custom", data: { type: "offerData", data: { tracksTypes: { audio: 1, video: 1 }, integratedTurnServers: [] } } });
    await d.waitFor((e) => (e.ev === "driver_error" || e.ev === "media_event_error") && /RTCPeerConnection/.test(e.message),
      "RTCPeerConnection error");

    mock.broadcastFrame([jr, null, "room:x", "simulcastConfig", { data: false }]);
    await d.ev("msg", (e) => e.event === "simulcastConfig");

    d.send({ cmd: "update_metadata", id: 2, metadata: { displayName: "a2" } });
    await until(() => mediaIn().includes('{"type":"updateEndpointMetadata","data":{"metadata":{"displayName":"a2"}}}'), "update");

    d.send({ cmd: "state", id: 3 });
    const st = await d.ev("state", (e) => e.id === 3);
    assert(st.peerId === "peer-1" && st.channel === "joined", "state " + JSON.stringify(st));

    push({ type: "error", data: { message: "room is full" } });
    const ce = await d.ev("connection_error");
    assert(ce.message === "room is full", "connection_error");
    await until(() => mediaIn().includes('{"type":"disconnect"}'), "disconnect after error");

    const before = mediaIn().filter((m) => m === '{"type":"disconnect"}').length;
    d.send({ cmd: "leave", id: 4 });
    await d.ev("left", (e) => e.id === 4);
    await until(() => mock.state.frames.some((f) => f.frame && f.frame[3] === "phx_leave"), "phx_leave");
    assert(mediaIn().filter((m) => m === '{"type":"disconnect"}').length === before + 1, "disconnect on leave");
    const idxDisc = mock.state.frames.map((f) => f.frame && f.frame[4] && f.frame[4].data).lastIndexOf('{"type":"disconnect"}');
    const idxLeave = mock.state.frames.findIndex((f) => f.frame && f.frame[3] === "phx_leave");
    assert(idxDisc < idxLeave, "disconnect media event precedes phx_leave");

    d.send({ cmd: "exit", id: 5 });
    assert((await d.exited) === 0, "exit code 0");
  } finally {
    d.proc.kill();
    await mock.close();
  }

  // join refused at the phoenix level
  const mock2 = await startMock();
  const d2 = new Driver("membrane_driver.js");
  try {
    await d2.ev("ready");
    d2.send({ cmd: "join", id: 1, url: mock2.url, room: "deny", metadata: {}, opts: FAST });
    const je = await d2.ev("join_error", (e) => e.id === 1);
    assert(je.response.reason === "denied", "membrane join_error");
    d2.proc.stdin.end();
    assert((await d2.exited) === 0, "EOF exit code 0");
  } finally {
    d2.proc.kill();
    await mock2.close();
  }
}

(async () => {
  const tests = [["phx_driver", testPhx], ["membrane_driver", testMembrane]];
  let failed = 0;
  for (const [name, fn] of tests) {
    try {
      await fn();
      console.log("ok   " + name);
    } catch (e) {
      failed += 1;
      console.log("FAIL " + name + ": " + (e && e.stack ? e.stack : e));
    }
  }
  console.log(failed ? `${failed} failed` : "all passed");
  process.exit(failed ? 1 : 0);
})();
