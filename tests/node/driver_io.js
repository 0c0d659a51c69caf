"use strict";
// Shared plumbing for the stdin/stdout test drivers (phx_driver.js, membrane_driver.js).
//
// * stdin: newline-delimited JSON commands, one object per line.
// * stdout: newline-delimited JSON events, one object per line. Nothing else is
//   ever written to stdout; diagnostics go to stderr.

const readline = require("readline");
const WebSocket = require("ws");

// Writes one event line. On Linux, writes to a pipe are synchronous, so every
// line is flushed before the call returns.
function emit(ev) {
  let line;
  try {
    line = JSON.stringify(ev);
  } catch (e) {
    line = JSON.stringify({ ev: "driver_error", message: "unserialisable event: " + String(e) });
  }
  process.stdout.write(line + "\n");
}

// Copies the command's `id` (if any) onto an event.
function withId(cmd, ev) {
  if (cmd && cmd.id !== undefined) ev.id = cmd.id;
  return ev;
}

// Reads commands from stdin and calls `handle(cmd)` for each. Bad lines produce
// `{"ev":"error"}` and are otherwise ignored. `onEof` runs once stdin closes.
function commandLoop(handle, onEof) {
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  rl.on("line", (line) => {
    if (line.trim() === "") return;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (e) {
      emit({ ev: "error", message: "invalid JSON command: " + e.message, line });
      return;
    }
    if (cmd === null || typeof cmd !== "object" || typeof cmd.cmd !== "string") {
      emit({ ev: "error", message: "command must be an object with a string `cmd`", line });
      return;
    }
    try {
      handle(cmd);
    } catch (e) {
      emit(withId(cmd, { ev: "error", cmd: cmd.cmd, message: errMessage(e) }));
    }
  });
  rl.on("close", onEof);
}

// The drivers must never die on their own: report instead of crashing.
function installCrashGuards() {
  process.on("uncaughtException", (e) => {
    emit({ ev: "driver_error", kind: "uncaughtException", message: errMessage(e) });
  });
  process.on("unhandledRejection", (e) => {
    emit({ ev: "driver_error", kind: "unhandledRejection", message: errMessage(e) });
  });
  // A closed stdout (parent gone) must not loop through uncaughtException.
  process.stdout.on("error", () => process.exit(0));
}

function errMessage(e) {
  if (e instanceof Error) return e.message;
  if (typeof e === "string") return e;
  try {
    return JSON.stringify(e);
  } catch (_) {
    return String(e);
  }
}

// Builds the `transport` class handed to phoenix's Socket: the `ws` client
// (Node 20 has no global WebSocket; without it phoenix silently falls back to
// LongPoll), optionally sending an Origin header and tracing every frame.
function makeTransport({ origin, trace }) {
  if (!origin && !trace) return WebSocket;
  return class DriverWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, origin ? { origin } : {});
      if (trace) {
        this.on("message", (data, isBinary) => {
          emit(isBinary
            ? { ev: "frame_in", binary_b64: Buffer.from(data).toString("base64") }
            : { ev: "frame_in", data: data.toString() });
        });
      }
    }
    send(data, ...rest) {
      if (trace) {
        emit(typeof data === "string"
          ? { ev: "frame_out", data }
          : { ev: "frame_out", binary_b64: Buffer.from(data).toString("base64") });
      }
      return super.send(data, ...rest);
    }
  };
}

// Number → constant backoff function; array → per-try list (last entry repeats).
function backoff(v) {
  if (typeof v === "number") return () => v;
  if (Array.isArray(v) && v.length > 0) return (tries) => v[Math.min(tries, v.length) - 1];
  return undefined;
}

// Maps the driver's `opts` object onto phoenix Socket options.
function socketOptions(cmd) {
  const o = cmd.opts || {};
  const opts = {
    transport: makeTransport({ origin: o.origin, trace: !!o.trace }),
    params: cmd.params || {},
  };
  if (typeof o.heartbeatIntervalMs === "number") opts.heartbeatIntervalMs = o.heartbeatIntervalMs;
  if (typeof o.timeout === "number") opts.timeout = o.timeout;
  if (backoff(o.rejoinAfterMs)) opts.rejoinAfterMs = backoff(o.rejoinAfterMs);
  if (backoff(o.reconnectAfterMs)) opts.reconnectAfterMs = backoff(o.reconnectAfterMs);
  if (typeof o.authToken === "string") opts.authToken = o.authToken;
  if (o.log) {
    opts.logger = (kind, msg, data) => emit({ ev: "log", kind, msg, data: safeData(data) });
  }
  return opts;
}

function safeData(data) {
  try {
    return JSON.parse(JSON.stringify(data === undefined ? null : data));
  } catch (_) {
    return String(data);
  }
}

// Installed version of a dependency (some packages do not export package.json).
function pkgVersion(name) {
  try {
    const fs = require("fs");
    const path = require("path");
    return JSON.parse(fs.readFileSync(path.join(__dirname, "node_modules", name, "package.json"), "utf8")).version;
  } catch (_) {
    return null;
  }
}

module.exports = { pkgVersion, emit, withId, commandLoop, installCrashGuards, errMessage, socketOptions, safeData };
