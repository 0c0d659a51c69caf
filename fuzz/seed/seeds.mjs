// Turns recorded wire traffic into seed inputs for every fuzz target.
//
// Usage: node fuzz/seed/seeds.mjs <out dir> <recording>...
// A recording is a capture.mjs JSON-lines file ({page, dir: "sent"|"recv", text}) or an insta
// wire transcript from snapshots/ (`== <client>` sections of `-> frame` / `<- frame` lines).
// Writes <out dir>/<target>/<sha1 of the input>, the names cargo-fuzz uses:
// - phoenix_frame: every frame, either direction
// - phoenix_socket: per client, its frames in order, with the channel reports the server's
//   frames imply (`k<chan>` for a join's ok reply, `p<chan> <payload>` for a push,
//   `X<chan>` for phx_error); see fuzz_targets/phoenix_socket.rs
// - media_event: every mediaEvent data string, either direction
// - media_session: per recording, every client's mediaEvent data in wire order from peers
//   p0, p1, ... (their server-given ids rewritten, so track ids keep their `<peer>:` prefix;
//   offers slimmed, see slimSdp), each followed by `*` (the plane answers at once), and `-<d>`
//   when the client leaves
// - sdp, sdp_webrtc: every SDP offer and answer
// scripts/fuzz.sh then merges them into fuzz/corpus/<target> (minimized).

import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const [outDir, ...recordings] = process.argv.slice(2);
if (!outDir || recordings.length === 0) {
  console.error("usage: node seeds.mjs <out dir> <recording>...");
  process.exit(2);
}

const seeds = new Map(); // target -> Set of inputs
const add = (target, input) => {
  if (!seeds.has(target)) seeds.set(target, new Set());
  seeds.get(target).add(input);
};

function read(path) {
  const text = readFileSync(path, "utf8");
  if (path.endsWith(".jsonl")) {
    return text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
  }
  const frames = [];
  let page = null;
  for (const line of text.split("\n")) {
    if (line.startsWith("== ")) page = line.slice(3);
    else if (line.startsWith("-> ")) frames.push({ page, dir: "sent", text: line.slice(3) });
    else if (line.startsWith("<- ")) frames.push({ page, dir: "recv", text: line.slice(3) });
  }
  return frames;
}

// Session scripts carry the offers with only the first codec of each m-line (and no header
// extensions or SSRC lines): the session reads m-lines, mids and directions, and the rest would
// make every script 5 times longer (and slower to fuzz). The sdp target keeps them whole.
function slimSdp(sdp) {
  let first = null;
  return sdp
    .split("\r\n")
    .filter((line) => {
      if (line.startsWith("m=")) first = line.split(" ")[3];
      const codec = /^a=(rtpmap|fmtp|rtcp-fb):(\d+)/.exec(line);
      if (codec) return codec[2] === first;
      return !/^a=(extmap|ssrc|rtcp-xr)/.test(line);
    })
    .join("\r\n");
}

function slimEvent(data) {
  const ev = JSON.parse(data);
  if (ev.type !== "custom" || ev.data?.type !== "sdpOffer") return data;
  ev.data.data.sdpOffer.sdp = slimSdp(ev.data.data.sdpOffer.sdp);
  return JSON.stringify(ev);
}

for (const path of recordings) {
  const frames = read(path).map((f) => ({ ...f, frame: JSON.parse(f.text) }));
  const socket = new Map(); // page -> {lines, chans: join_ref -> chan, next}
  const peers = new Map(); // page -> {name, id}
  const session = [];
  for (const { page, dir, text, frame } of frames) {
    add("phoenix_frame", text);
    const [joinRef, ref, , event, payload] = frame;
    if (!socket.has(page)) socket.set(page, { lines: [], chans: new Map(), next: 0 });
    const s = socket.get(page);
    if (dir === "sent") {
      s.lines.push(text);
      if (event === "phx_join") s.chans.set(joinRef, s.next++);
    } else {
      const chan = s.chans.get(joinRef);
      if (chan === undefined) continue;
      if (event === "phx_reply" && ref === joinRef && payload.status === "ok") s.lines.push(`k${chan}`);
      else if (event === "phx_error") s.lines.push(`X${chan}`);
      else if (ref === null && event !== "phx_reply") s.lines.push(`p${chan}`); // content is opaque here
    }
    if (event === "phx_leave" && dir === "sent" && peers.has(page)) {
      session.push(`-${[...peers.keys()].indexOf(page)}`);
    }
    if (event !== "mediaEvent" || typeof payload?.data !== "string") continue;
    const data = payload.data;
    add("media_event", data);
    const ev = JSON.parse(data);
    const inner = ev.type === "custom" ? ev.data : null;
    for (const target of ["sdp", "sdp_webrtc"]) {
      if (inner?.type === "sdpOffer") add(target, inner.data.sdpOffer.sdp);
      if (inner?.type === "sdpAnswer") add(target, inner.data.sdp);
    }
    if (dir === "sent" && !peers.has(page)) peers.set(page, { name: `p${peers.size}`, id: null });
    if (dir === "recv" && ev.type === "connected" && peers.has(page)) peers.get(page).id = ev.data.id;
    if (dir === "sent") session.push({ page, data: slimEvent(data) });
  }
  for (const { lines } of socket.values()) add("phoenix_socket", lines.join("\n") + "\n");
  const rewrite = (data) =>
    [...peers.values()].reduce((d, { name, id }) => (id ? d.split(id).join(name) : d), data);
  const script = session.map((e) =>
    typeof e === "string" ? e : `${peers.get(e.page).name.slice(1)}${rewrite(e.data)}\n*`);
  if (script.length > 0) add("media_session", script.join("\n") + "\n");
}

for (const [target, inputs] of seeds) {
  const dir = join(outDir, target);
  mkdirSync(dir, { recursive: true });
  for (const input of inputs) {
    const name = createHash("sha1").update(input).digest("hex");
    writeFileSync(join(dir, name), input);
  }
  console.log(`${target}: ${inputs.size} seeds`);
}
