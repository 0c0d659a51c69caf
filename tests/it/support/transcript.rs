//! Deterministic wire transcripts for snapshots.
//!
//! A transcript lists the V2 frames one client sent (`->`) and received (`<-`), taken from the
//! driver's `trace` events, with everything that varies between runs replaced by stable names:
//!
//! * `join_ref` / `ref` (per-socket counters that timer-driven heartbeats also advance) become
//!   `"r1"`, `"r2"`, … in order of first appearance within that client's transcript, so equal refs
//!   stay equal (a join's `join_ref == ref`, a reply echoing its push's ref);
//! * peer ids named by the test become `<name>`; any other UUID becomes `<uuid-N>`.
//!
//! Heartbeat frames (topic `phoenix`) come from a timer, so they are left out unless asked for.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::driver::decode_frame;

/// Normalisation state shared by the sections of one snapshot (peer ids and UUIDs keep one
/// name across clients).
#[derive(Default)]
pub struct Transcript {
    names: Vec<(String, String)>,
    uuids: BTreeMap<String, String>,
    out: String,
}

impl Transcript {
    pub fn new() -> Transcript {
        Transcript::default()
    }

    /// Replaces `id` (e.g. a peer id learned from `connected`) with `<name>` everywhere.
    pub fn name(&mut self, id: &str, name: &str) -> &mut Self {
        self.names.push((id.to_owned(), format!("<{name}>")));
        self
    }

    /// Appends the frames of one client (`events` = its driver's events) under a heading.
    /// `heartbeats`: keep at most this many heartbeat frames (requests and replies).
    pub fn section(&mut self, title: &str, events: &[Value], heartbeats: usize) -> &mut Self {
        let _ = writeln!(self.out, "== {title}");
        let mut refs: BTreeMap<String, String> = BTreeMap::new();
        let mut hb_kept = 0;
        for e in events {
            let dir = match e["ev"].as_str() {
                Some("frame_out") => "->",
                Some("frame_in") => "<-",
                _ => continue,
            };
            let Some(mut frame) = decode_frame(e) else {
                let raw = e["data"]
                    .as_str()
                    .or(e["binary_b64"].as_str())
                    .unwrap_or("?");
                let _ = writeln!(self.out, "{dir} (not a V2 frame) {raw}");
                continue;
            };
            if frame.get(2).and_then(Value::as_str) == Some("phoenix") {
                if hb_kept >= heartbeats {
                    continue;
                }
                hb_kept += 1;
            }
            for slot in frame.iter_mut().take(2) {
                if let Value::String(r) = slot {
                    let n = refs.len() + 1;
                    let sym = refs.entry(r.clone()).or_insert_with(|| format!("r{n}"));
                    *r = sym.clone();
                }
            }
            let line = self.scrub(&Value::Array(frame).to_string());
            let _ = writeln!(self.out, "{dir} {line}");
        }
        self
    }

    pub fn text(&self) -> String {
        self.out.clone()
    }

    fn scrub(&mut self, s: &str) -> String {
        let mut s = s.to_owned();
        for (id, name) in &self.names {
            s = s.replace(id.as_str(), name);
        }
        // Any remaining UUID (8-4-4-4-12 hex digits).
        let bytes = s.as_bytes();
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        while i < bytes.len() {
            if i + 36 <= bytes.len() && is_uuid(&bytes[i..i + 36]) {
                let u = s[i..i + 36].to_owned();
                let n = self.uuids.len() + 1;
                let name = self.uuids.entry(u).or_insert_with(|| format!("<uuid-{n}>"));
                out.push_str(name);
                i += 36;
            } else {
                let ch = s[i..].chars().next().expect("in bounds");
                out.push(ch);
                i += ch.len_utf8();
            }
        }
        out
    }
}

fn is_uuid(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => *c == b'-',
        _ => c.is_ascii_hexdigit(),
    })
}

#[test]
fn transcript_normalises_refs_and_ids() {
    use serde_json::json;
    let ev = |dir: &str, frame: Value| json!({"ev": dir, "data": frame.to_string()});
    let events = vec![
        ev("frame_out", json!(["7", "7", "room:a", "phx_join", {}])),
        ev(
            "frame_in",
            json!(["7", "7", "room:a", "phx_reply", {"status": "ok", "response": {}}]),
        ),
        ev("frame_out", json!([null, "9", "phoenix", "heartbeat", {}])),
        ev(
            "frame_in",
            json!([null, "9", "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
        ),
        ev("frame_out", json!([null, "11", "phoenix", "heartbeat", {}])),
        json!({"ev": "join_ok"}),
        ev(
            "frame_in",
            json!(["7", null, "room:a", "mediaEvent",
            {"data": "{\"id\":\"peer-xyz\",\"other\":\"0f8fad5b-d9cb-469f-a165-70867728950e\"}"}]),
        ),
    ];
    let mut t = Transcript::new();
    t.name("peer-xyz", "A").section("a", &events, 2);
    assert_eq!(
        t.text(),
        "== a\n\
         -> [\"r1\",\"r1\",\"room:a\",\"phx_join\",{}]\n\
         <- [\"r1\",\"r1\",\"room:a\",\"phx_reply\",{\"response\":{},\"status\":\"ok\"}]\n\
         -> [null,\"r2\",\"phoenix\",\"heartbeat\",{}]\n\
         <- [null,\"r2\",\"phoenix\",\"phx_reply\",{\"response\":{},\"status\":\"ok\"}]\n\
         <- [\"r1\",null,\"room:a\",\"mediaEvent\",{\"data\":\"{\\\"id\\\":\\\"<A>\\\",\\\"other\\\":\\\"<uuid-1>\\\"}\"}]\n"
    );
}
