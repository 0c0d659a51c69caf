//! The conformance scenario that holds the simulation's etcd model to real etcd: one script of
//! gateway calls (and waits for a lease to lapse), run against Debian's etcd by
//! `tests/it/etcd.rs` and against [`super::model`] by this module's test, each transcript
//! normalised to text that must equal `snapshots/etcd_conformance.txt`. That file is only ever
//! written from real etcd (`ETCD_CONFORMANCE_WRITE=1`): when the model disagrees, the model is
//! what gets fixed.
//!
//! Owns the script ([`scenario`]), a sans-IO [`Runner`] that turns it into calls and sleeps (so
//! one script drives a socket and a simulated clock alike), and [`normalise`]. It never does I/O
//! and never reads a clock: a wait is counted in the sleeps it asked for.
//!
//! Script bodies are JSON with two conveniences: the `key`, `range_end` and `value` fields are
//! written as text (the runner base64-encodes them, as the gateway wants), and `{L1}` / `{L1:x}`
//! stand for the first lease id seen in an answer, in decimal / lowercase hex (`{L2}` the
//! second...). The normaliser writes those names back, so the text is the same on every run.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

/// One line of the script.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// Post `body` to `path`; the answer goes into the transcript.
    Call {
        note: &'static str,
        path: &'static str,
        body: &'static str,
    },
    /// Post `body` to `path` every [`POLL_MS`] until `until` holds for the answer, which goes
    /// into the transcript (how long it took does not). Fails if it holds before
    /// `not_before_ms` or still does not after `within_ms`, counted in the runner's sleeps.
    WaitUntil {
        note: &'static str,
        path: &'static str,
        body: &'static str,
        until: Until,
        not_before_ms: u64,
        within_ms: u64,
    },
}

/// What a [`Step::WaitUntil`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// A 200 range answer without any key.
    NoKeys,
}

impl Until {
    fn holds(self, status: u16, body: &[u8]) -> bool {
        match self {
            Until::NoKeys => {
                status == 200
                    && serde_json::from_slice::<Value>(body).is_ok_and(|v| {
                        v.get("kvs")
                            .is_none_or(|k| k.as_array().is_some_and(|a| a.is_empty()))
                    })
            }
        }
    }
}

/// How often a wait polls.
pub const POLL_MS: u64 = 100;

const RANGE: &str = "/v3/kv/range";
const PUT: &str = "/v3/kv/put";
const TXN: &str = "/v3/kv/txn";
const GRANT: &str = "/v3/lease/grant";
const KEEPALIVE: &str = "/v3/lease/keepalive";
const REVOKE: &str = "/v3/lease/revoke";

/// The script, in the key layout the cluster uses (docs/cluster.md, "Keys").
pub fn scenario() -> &'static [Step] {
    use Step::*;
    &[
        Call {
            note: "n1 takes a lease",
            path: GRANT,
            body: r#"{"TTL":60}"#,
        },
        Call {
            note: "n1 registers alive/n1 = hex(L1) on it",
            path: PUT,
            body: r#"{"key":"/videoroom/v1/alive/n1","value":"{L1:x}","lease":"{L1}"}"#,
        },
        Call {
            note: "n2 takes a lease",
            path: GRANT,
            body: r#"{"TTL":60}"#,
        },
        Call {
            note: "n2 registers alive/n2",
            path: PUT,
            body: r#"{"key":"/videoroom/v1/alive/n2","value":"{L2:x}","lease":"{L2}"}"#,
        },
        Call {
            note: "n1 writes its record",
            path: PUT,
            body: r#"{"key":"/videoroom/v1/nodes/n1","value":"{\"rooms\":0}","lease":"{L1}"}"#,
        },
        Call {
            note: "and rewrites it",
            path: PUT,
            body: r#"{"key":"/videoroom/v1/nodes/n1","value":"{\"rooms\":1}","lease":"{L1}"}"#,
        },
        Call {
            note: "the record: version 2, created at the first write, modified at the second",
            path: RANGE,
            body: r#"{"key":"/videoroom/v1/nodes/n1"}"#,
        },
        Call {
            note: "n1 claims room a and wins: value(rooms/a) > \"\" is false on a missing key",
            path: TXN,
            body: r#"{"compare":[{"key":"/videoroom/v1/rooms/a","target":"VALUE","result":"GREATER","value":""}],
                      "success":[{"request_range":{"key":"/videoroom/v1/rooms/a"}}],
                      "failure":[{"request_put":{"key":"/videoroom/v1/rooms/a","value":"n1","lease":"{L1}"}}]}"#,
        },
        Call {
            note: "n2 claims room a and loses: the range names n1",
            path: TXN,
            body: r#"{"compare":[{"key":"/videoroom/v1/rooms/a","target":"VALUE","result":"GREATER","value":""}],
                      "success":[{"request_range":{"key":"/videoroom/v1/rooms/a"}}],
                      "failure":[{"request_put":{"key":"/videoroom/v1/rooms/a","value":"n2","lease":"{L2}"}}]}"#,
        },
        Call {
            note: "n1's guarded claim of room b: alive/n1 holds hex(L1), the nested claim wins",
            path: TXN,
            body: r#"{"compare":[{"key":"/videoroom/v1/alive/n1","target":"VALUE","result":"EQUAL","value":"{L1:x}"}],
                      "success":[{"request_txn":{
                          "compare":[{"key":"/videoroom/v1/rooms/b","target":"VALUE","result":"GREATER","value":""}],
                          "success":[{"request_range":{"key":"/videoroom/v1/rooms/b"}}],
                          "failure":[{"request_put":{"key":"/videoroom/v1/rooms/b","value":"n1","lease":"{L1}"}}]}}],
                      "failure":[{"request_range":{"key":"/videoroom/v1/alive/n1"}}]}"#,
        },
        Call {
            note: "n2's guarded claim of room b: its guard holds, the nested claim loses",
            path: TXN,
            body: r#"{"compare":[{"key":"/videoroom/v1/alive/n2","target":"VALUE","result":"EQUAL","value":"{L2:x}"}],
                      "success":[{"request_txn":{
                          "compare":[{"key":"/videoroom/v1/rooms/b","target":"VALUE","result":"GREATER","value":""}],
                          "success":[{"request_range":{"key":"/videoroom/v1/rooms/b"}}],
                          "failure":[{"request_put":{"key":"/videoroom/v1/rooms/b","value":"n2","lease":"{L2}"}}]}}],
                      "failure":[{"request_range":{"key":"/videoroom/v1/alive/n2"}}]}"#,
        },
        Call {
            note: "a guarded claim by n3, which has no alive key: the guard is false, the failure branch reads nothing",
            path: TXN,
            body: r#"{"compare":[{"key":"/videoroom/v1/alive/n3","target":"VALUE","result":"EQUAL","value":"x"}],
                      "success":[{"request_txn":{
                          "compare":[{"key":"/videoroom/v1/rooms/c","target":"VALUE","result":"GREATER","value":""}],
                          "failure":[{"request_put":{"key":"/videoroom/v1/rooms/c","value":"n3"}}]}}],
                      "failure":[{"request_range":{"key":"/videoroom/v1/alive/n3"}}]}"#,
        },
        Call {
            note: "value(missing) != \"x\" is false too",
            path: TXN,
            body: r#"{"compare":[{"key":"/videoroom/v1/rooms/zz","target":"VALUE","result":"NOT_EQUAL","value":"x"}]}"#,
        },
        Call {
            note: "create_revision(missing) == 0 is true",
            path: TXN,
            body: r#"{"compare":[{"key":"/videoroom/v1/rooms/zz","target":"CREATE","result":"EQUAL","create_revision":"0"}]}"#,
        },
        Call {
            note: "mod_revision(rooms/a) > 0 and version(rooms/a) == 1",
            path: TXN,
            body: r#"{"compare":[{"key":"/videoroom/v1/rooms/a","target":"MOD","result":"GREATER","mod_revision":"0"},
                                 {"key":"/videoroom/v1/rooms/a","target":"VERSION","result":"EQUAL","version":"1"}]}"#,
        },
        Call {
            note: "a put on an unknown lease is refused",
            path: PUT,
            body: r#"{"key":"/videoroom/v1/rooms/c","value":"x","lease":"12345"}"#,
        },
        Call {
            note: "so is a txn put on one, on the branch taken",
            path: TXN,
            body: r#"{"success":[{"request_put":{"key":"/videoroom/v1/rooms/c","value":"x","lease":"12345"}}]}"#,
        },
        Call {
            note: "on the branch not taken it is not looked at (and nothing is written)",
            path: TXN,
            body: r#"{"success":[{"request_range":{"key":"/videoroom/v1/rooms/c"}}],
                      "failure":[{"request_put":{"key":"/videoroom/v1/rooms/c","value":"x","lease":"12345"}}]}"#,
        },
        Call {
            note: "a key put twice in one txn is refused",
            path: TXN,
            body: r#"{"success":[{"request_put":{"key":"/videoroom/v1/rooms/d","value":"1"}},
                                 {"request_put":{"key":"/videoroom/v1/rooms/d","value":"2"}}]}"#,
        },
        Call {
            note: "as is a key put in a nested txn and deleted in its parent",
            path: TXN,
            body: r#"{"success":[{"request_delete_range":{"key":"/videoroom/v1/rooms/","range_end":"/videoroom/v1/rooms0"}},
                                 {"request_txn":{"success":[{"request_put":{"key":"/videoroom/v1/rooms/d","value":"1"}}]}}]}"#,
        },
        Call {
            note: "but a delete to the end (range_end \"\\0\") is not seen to overlap a put (etcd's quirk)",
            path: TXN,
            body: r#"{"success":[{"request_delete_range":{"key":"/videoroom/v1/zz","range_end":"\u0000"}},
                                 {"request_put":{"key":"/videoroom/v1/zz2","value":"q"}}]}"#,
        },
        Call {
            note: "a nested compare sees the state before the txn (zz2 still there), its range the state after the delete",
            path: TXN,
            body: r#"{"success":[{"request_delete_range":{"key":"/videoroom/v1/zz2"}},
                                 {"request_txn":{
                                     "compare":[{"key":"/videoroom/v1/zz2","target":"VALUE","result":"EQUAL","value":"q"}],
                                     "success":[{"request_range":{"key":"/videoroom/v1/zz2"}}]}}]}"#,
        },
        Call {
            note: "a txn op with no request in it is refused",
            path: TXN,
            body: r#"{"success":[{}]}"#,
        },
        Call {
            note: "an empty key is refused",
            path: PUT,
            body: r#"{"key":"","value":"x"}"#,
        },
        Call {
            note: "n2's guarded delete of room a does nothing: the value is not its own",
            path: TXN,
            body: r#"{"compare":[{"key":"/videoroom/v1/rooms/a","target":"VALUE","result":"EQUAL","value":"n2"}],
                      "success":[{"request_delete_range":{"key":"/videoroom/v1/rooms/a"}}]}"#,
        },
        Call {
            note: "n1's guarded delete of room a deletes it",
            path: TXN,
            body: r#"{"compare":[{"key":"/videoroom/v1/rooms/a","target":"VALUE","result":"EQUAL","value":"n1"}],
                      "success":[{"request_delete_range":{"key":"/videoroom/v1/rooms/a"}}]}"#,
        },
        Call {
            note: "the rooms left, by prefix",
            path: RANGE,
            body: r#"{"key":"/videoroom/v1/rooms/","range_end":"/videoroom/v1/rooms0"}"#,
        },
        Call {
            note: "everything under the deployment prefix, two at a time",
            path: RANGE,
            body: r#"{"key":"/videoroom/v1/","range_end":"/videoroom/v10","limit":2}"#,
        },
        Call {
            note: "a write txn: its range sees the state before its put, the put's answer the new revision",
            path: TXN,
            body: r#"{"success":[{"request_range":{"key":"/videoroom/v1/nodes/n2"}},
                                 {"request_put":{"key":"/videoroom/v1/nodes/n2","value":"{}","lease":"{L2}"}},
                                 {"request_range":{"key":"/videoroom/v1/nodes/n2"}},
                                 {"request_delete_range":{"key":"/videoroom/v1/nodes/zz"}}]}"#,
        },
        Call {
            note: "a delete of nothing changes nothing",
            path: "/v3/kv/deleterange",
            body: r#"{"key":"/videoroom/v1/nodes/zz"}"#,
        },
        Call {
            note: "keepalive of L2 answers its TTL",
            path: KEEPALIVE,
            body: r#"{"ID":"{L2}"}"#,
        },
        Call {
            note: "keepalive of an unknown lease answers without a TTL",
            path: KEEPALIVE,
            body: r#"{"ID":"12345"}"#,
        },
        Call {
            note: "revoking L1 deletes alive/n1, nodes/n1 and rooms/b in one revision",
            path: REVOKE,
            body: r#"{"ID":"{L1}"}"#,
        },
        Call {
            note: "what is left under the prefix",
            path: RANGE,
            body: r#"{"key":"/videoroom/v1/","range_end":"/videoroom/v10"}"#,
        },
        Call {
            note: "keepalive of the revoked lease: no TTL",
            path: KEEPALIVE,
            body: r#"{"ID":"{L1}"}"#,
        },
        Call {
            note: "revoking it again is refused",
            path: REVOKE,
            body: r#"{"ID":"{L1}"}"#,
        },
        Call {
            note: "an unknown path",
            path: "/v3/kv/nothing",
            body: "{}",
        },
        Call {
            note: "a lease with an id of the caller's choosing",
            path: GRANT,
            body: r#"{"TTL":60,"ID":"7777"}"#,
        },
        Call {
            note: "the same id again is refused",
            path: GRANT,
            body: r#"{"TTL":60,"ID":"7777"}"#,
        },
        Call {
            note: "as is a TTL above etcd's maximum",
            path: GRANT,
            body: r#"{"TTL":9000000001}"#,
        },
        Call {
            note: "a lease asked for 1 s gets etcd's minimum, 2 s",
            path: GRANT,
            body: r#"{"TTL":1}"#,
        },
        Call {
            note: "a key on it",
            path: PUT,
            body: r#"{"key":"/videoroom/v1/nodes/n3","value":"{}","lease":"{L5}"}"#,
        },
        WaitUntil {
            note: "left alone, the lease lapses and its key goes, in one revision",
            path: RANGE,
            body: r#"{"key":"/videoroom/v1/nodes/n3"}"#,
            until: Until::NoKeys,
            not_before_ms: 1_500,
            within_ms: 5_000,
        },
        Call {
            note: "keepalive of the lapsed lease: no TTL",
            path: KEEPALIVE,
            body: r#"{"ID":"{L5}"}"#,
        },
    ]
}

/// One call of a run, as the transcript keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub note: String,
    pub path: String,
    /// The script's body (placeholders and text fields as written).
    pub request: String,
    pub status: u16,
    pub body: Vec<u8>,
}

/// What the driver does next for a [`Runner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Post `body` to `path`, then [`Runner::answer`] with what came back.
    Post { path: &'static str, body: Vec<u8> },
    /// Let this much time pass (real or simulated), then ask [`Runner::next_action`] again.
    Sleep(u64),
    /// The normalised transcript, or why the run failed.
    Finished(Result<String, String>),
}

/// Runs [`scenario`] without doing I/O: ask [`Runner::next_action`], do what it says, repeat.
#[derive(Debug)]
pub struct Runner {
    steps: &'static [Step],
    at: usize,
    /// Time slept on the current wait.
    waited_ms: u64,
    sleep_next: bool,
    leases: Leases,
    exchanges: Vec<Exchange>,
    failure: Option<String>,
}

impl Default for Runner {
    fn default() -> Self {
        Runner::new()
    }
}

impl Runner {
    pub fn new() -> Runner {
        Runner::with_steps(scenario())
    }

    fn with_steps(steps: &'static [Step]) -> Runner {
        Runner {
            steps,
            at: 0,
            waited_ms: 0,
            sleep_next: false,
            leases: Leases::default(),
            exchanges: Vec::new(),
            failure: None,
        }
    }

    pub fn next_action(&mut self) -> Action {
        if let Some(f) = &self.failure {
            return Action::Finished(Err(f.clone()));
        }
        if std::mem::take(&mut self.sleep_next) {
            self.waited_ms += POLL_MS;
            return Action::Sleep(POLL_MS);
        }
        let Some(step) = self.steps.get(self.at) else {
            return Action::Finished(Ok(normalise(&self.exchanges)));
        };
        let (path, body) = match step {
            Step::Call { path, body, .. } | Step::WaitUntil { path, body, .. } => (*path, *body),
        };
        match render(body, &self.leases) {
            Ok(body) => Action::Post { path, body },
            Err(e) => {
                let f = format!("step {} ({}): {e}", self.at + 1, note(step));
                self.failure = Some(f.clone());
                Action::Finished(Err(f))
            }
        }
    }

    pub fn answer(&mut self, status: u16, body: Vec<u8>) {
        let Some(step) = self.steps.get(self.at).copied() else {
            return;
        };
        let (path, request) = match step {
            Step::Call { path, body, .. } | Step::WaitUntil { path, body, .. } => (path, body),
        };
        if let Step::WaitUntil {
            until,
            not_before_ms,
            within_ms,
            ..
        } = step
        {
            let holds = until.holds(status, &body);
            let seen = || String::from_utf8_lossy(&body).into_owned();
            if holds && self.waited_ms < not_before_ms {
                self.failure = Some(format!(
                    "step {} ({}): held after {} ms, before {not_before_ms} ms: {}",
                    self.at + 1,
                    note(&step),
                    self.waited_ms,
                    seen()
                ));
                return;
            }
            if !holds {
                if self.waited_ms >= within_ms {
                    self.failure = Some(format!(
                        "step {} ({}): did not hold within {within_ms} ms; last answer {status} {}",
                        self.at + 1,
                        note(&step),
                        seen()
                    ));
                } else {
                    self.sleep_next = true;
                }
                return;
            }
        }
        self.leases.learn(&body);
        self.exchanges.push(Exchange {
            note: note(&step).to_string(),
            path: path.to_string(),
            request: request.to_string(),
            status,
            body,
        });
        self.at += 1;
        self.waited_ms = 0;
    }

    /// The calls recorded so far.
    pub fn exchanges(&self) -> &[Exchange] {
        &self.exchanges
    }
}

fn note(step: &Step) -> &'static str {
    match step {
        Step::Call { note, .. } | Step::WaitUntil { note, .. } => note,
    }
}

/// Lease ids in order of first appearance in an answer (`ID` and `lease` fields).
#[derive(Debug, Default, Clone)]
struct Leases(Vec<i64>);

impl Leases {
    fn learn(&mut self, body: &[u8]) {
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            self.walk(&v);
        }
    }

    fn walk(&mut self, v: &Value) {
        match v {
            Value::Object(m) => {
                // Sorted, whatever order the map keeps, so numbering never depends on it.
                let mut fields: Vec<_> = m.iter().collect();
                fields.sort_by(|a, b| a.0.cmp(b.0));
                for (k, v) in fields {
                    if is_lease_field(k) {
                        if let Some(id) = int64(v).filter(|id| *id != 0) {
                            self.number(id);
                        }
                    }
                    self.walk(v);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| self.walk(v)),
            _ => {}
        }
    }

    /// The 1-based name of `id`, learning it if new.
    fn number(&mut self, id: i64) -> usize {
        match self.0.iter().position(|l| *l == id) {
            Some(i) => i + 1,
            None => {
                self.0.push(id);
                self.0.len()
            }
        }
    }

    /// `text` with every known lease's hex and decimal forms replaced by its name, longest
    /// forms first so that no form is replaced inside a longer one.
    fn names_in(&self, text: &str) -> String {
        let mut forms: Vec<(String, String)> = Vec::new();
        for (i, id) in self.0.iter().enumerate() {
            forms.push((format!("{id:x}"), format!("{{L{}:x}}", i + 1)));
            forms.push((id.to_string(), format!("{{L{}}}", i + 1)));
        }
        forms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let mut out = text.to_string();
        for (form, name) in forms {
            out = out.replace(&form, &name);
        }
        out
    }

    /// `text` with `{Ln}` / `{Ln:x}` replaced by the lease's decimal / hex form.
    fn fill(&self, text: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("{L") {
            out.push_str(&rest[..start]);
            let tail = &rest[start + 2..];
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unclosed placeholder in {text:?}"))?;
            let (num, hex) = match tail[..end].strip_suffix(":x") {
                Some(n) => (n, true),
                None => (&tail[..end], false),
            };
            let n: usize = num
                .parse()
                .map_err(|_| format!("bad placeholder {{L{}}}", &tail[..end]))?;
            let id = *self
                .0
                .get(n.wrapping_sub(1))
                .ok_or_else(|| format!("{{L{n}}} used before {n} leases were seen"))?;
            if hex {
                out.push_str(&format!("{id:x}"));
            } else {
                out.push_str(&id.to_string());
            }
            rest = &tail[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn is_lease_field(name: &str) -> bool {
    name == "ID" || name == "lease"
}

fn is_revision_field(name: &str) -> bool {
    matches!(name, "revision" | "create_revision" | "mod_revision")
}

fn is_bytes_field(name: &str) -> bool {
    matches!(name, "key" | "range_end" | "value")
}

fn int64(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// A script body made ready to send: placeholders filled, text fields base64-encoded.
fn render(template: &str, leases: &Leases) -> Result<Vec<u8>, String> {
    let filled = leases.fill(template)?;
    let mut v: Value =
        serde_json::from_str(&filled).map_err(|e| format!("body is not JSON: {e}: {filled}"))?;
    encode_bytes(&mut v);
    Ok(serde_json::to_vec(&v).expect("a JSON value serialises"))
}

fn encode_bytes(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                match v {
                    Value::String(s) if is_bytes_field(k) => {
                        *s = STANDARD.encode(s.as_bytes());
                    }
                    _ => encode_bytes(v),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(encode_bytes),
        _ => {}
    }
}

/// The transcript as stable text: per call the note, the request as scripted and the answer,
/// with lease ids named `{L1}`, `{L2}`... by first appearance, revisions written relative to
/// the first one seen (`R+3`), `cluster_id`/`member_id`/`raft_term` dropped, bytes decoded to
/// text and object fields sorted. Bodies that are not JSON are quoted as they are.
pub fn normalise(exchanges: &[Exchange]) -> String {
    let mut n = Normaliser::default();
    let mut out = String::from(
        "# etcd 3.4 gateway conformance: written from real etcd by `ETCD_CONFORMANCE_WRITE=1 \
         cargo test --test it etcd`;\n# the model (src/cluster/etcd/model.rs) must replay it \
         exactly. Never edit by hand.\n",
    );
    for (i, x) in exchanges.iter().enumerate() {
        let request: String = x.request.split_whitespace().collect::<Vec<_>>().join(" ");
        out.push_str(&format!(
            "\n## {}. {}\n{} {}\n=> {} {}\n",
            i + 1,
            x.note,
            x.path,
            request,
            x.status,
            n.body(&x.body)
        ));
    }
    out
}

#[derive(Default)]
struct Normaliser {
    leases: Leases,
    first_revision: Option<i64>,
}

impl Normaliser {
    fn body(&mut self, body: &[u8]) -> String {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => {
                // Names first (in the runner's order), then the rendering can use them.
                self.leases.walk(&v);
                let mut out = String::new();
                self.render(&v, None, &mut out);
                out
            }
            Err(_) => format!("(not JSON) {:?}", String::from_utf8_lossy(body)),
        }
    }

    fn render(&mut self, v: &Value, field: Option<&str>, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut fields: Vec<_> = m
                    .iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "cluster_id" | "member_id" | "raft_term")
                    })
                    .collect();
                fields.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (k, v)) in fields.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&quote(k));
                    out.push(':');
                    self.render(v, Some(k), out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.render(v, field, out);
                }
                out.push(']');
            }
            _ => out.push_str(&self.scalar(v, field.unwrap_or(""))),
        }
    }

    fn scalar(&mut self, v: &Value, field: &str) -> String {
        if is_lease_field(field) {
            if let Some(id) = int64(v).filter(|id| *id != 0) {
                return quote(&format!("L{}", self.leases.number(id)));
            }
        }
        if is_revision_field(field) {
            if let Some(rev) = int64(v) {
                let base = *self.first_revision.get_or_insert(rev);
                let d = rev - base;
                return quote(&if d < 0 {
                    format!("R{d}")
                } else {
                    format!("R+{d}")
                });
            }
        }
        if is_bytes_field(field) {
            if let Some(s) = v.as_str() {
                return match STANDARD.decode(s) {
                    Ok(bytes) => match String::from_utf8(bytes) {
                        Ok(text) => quote(&self.leases.names_in(&text)),
                        Err(_) => quote(&format!("b64:{s}")),
                    },
                    Err(_) => quote(&format!("(bad base64) {s}")),
                };
            }
        }
        v.to_string()
    }
}

fn quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::super::model::EtcdModel;
    use super::*;

    const EXPECTED: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/snapshots/etcd_conformance.txt"
    );

    /// Runs the scenario on the model; time only passes in waits, with etcd's 500 ms expiry
    /// check at every multiple of 500 ms.
    fn replay_on_model() -> Result<String, String> {
        let mut model = EtcdModel::new();
        let mut runner = Runner::new();
        let mut now = 0u64;
        loop {
            match runner.next_action() {
                Action::Post { path, body } => {
                    let (status, answer) = model.handle(now, path, &body);
                    runner.answer(status, answer);
                }
                Action::Sleep(ms) => {
                    let until = now + ms;
                    let mut check = (now / 500 + 1) * 500;
                    while check <= until {
                        model.expire(check);
                        check += 500;
                    }
                    now = until;
                }
                Action::Finished(result) => return result,
            }
        }
    }

    /// The model gives, byte for byte, the transcript real etcd gave.
    #[test]
    fn model_replays_real_etcd() {
        let got = replay_on_model().expect("the scenario runs on the model");
        let expected = std::fs::read_to_string(EXPECTED).unwrap_or_else(|e| {
            panic!(
                "{EXPECTED}: {e}; it is written from real etcd by \
                 `ETCD_CONFORMANCE_WRITE=1 cargo test --test it etcd`"
            )
        });
        if got != expected {
            let diff: Vec<String> = got
                .lines()
                .zip(expected.lines())
                .enumerate()
                .filter(|(_, (g, e))| g != e)
                .take(5)
                .map(|(i, (g, e))| format!("line {}:\n  model: {g}\n  etcd:  {e}", i + 1))
                .collect();
            panic!(
                "the model differs from real etcd (fix the model, not the file):\n{}\n\
                 (model {} lines, etcd {} lines)",
                diff.join("\n"),
                got.lines().count(),
                expected.lines().count()
            );
        }
    }

    #[test]
    fn placeholders_and_text_fields() {
        let mut leases = Leases::default();
        leases.learn(br#"{"header":{"revision":"1"},"ID":"694","TTL":"5"}"#);
        let body = render(r#"{"key":"/k","value":"{L1:x}","lease":"{L1}"}"#, &leases).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["key"], "L2s=");
        assert_eq!(v["value"], STANDARD.encode("2b6"));
        assert_eq!(v["lease"], "694");
        assert!(render(r#"{"lease":"{L2}"}"#, &leases)
            .unwrap_err()
            .contains("before 2 leases"));
    }

    #[test]
    fn normalising_is_stable() {
        let x = |body: &str| Exchange {
            note: "n".into(),
            path: "/p".into(),
            request: "{ }".into(),
            status: 200,
            body: body.as_bytes().to_vec(),
        };
        let a = normalise(&[
            x(
                r#"{"header":{"cluster_id":"1","member_id":"2","revision":"7","raft_term":"3"},"ID":"99","TTL":"2"}"#,
            ),
            x(
                r#"{"kvs":[{"value":"NjM=","key":"L2s=","lease":"99","mod_revision":"9"}],"header":{"revision":"9"}}"#,
            ),
            x("Not Found\n"),
        ]);
        assert!(
            a.contains(r#"=> 200 {"ID":"L1","TTL":"2","header":{"revision":"R+0"}}"#),
            "{a}"
        );
        assert!(
            a.contains(r#"{"header":{"revision":"R+2"},"kvs":[{"key":"/k","lease":"L1","mod_revision":"R+2","value":"{L1:x}"}]}"#),
            "{a}"
        );
        assert!(a.contains(r#"=> 200 (not JSON) "Not Found\n""#), "{a}");
    }

    #[test]
    fn waits_bound_both_ways() {
        static EARLY: [Step; 1] = [Step::WaitUntil {
            note: "w",
            path: RANGE,
            body: r#"{"key":"k"}"#,
            until: Until::NoKeys,
            not_before_ms: 200,
            within_ms: 400,
        }];
        let mut r = Runner::with_steps(&EARLY);
        assert!(matches!(r.next_action(), Action::Post { .. }));
        r.answer(200, br#"{"header":{}}"#.to_vec());
        assert!(matches!(r.next_action(), Action::Finished(Err(e)) if e.contains("before 200 ms")));

        let mut r = Runner::with_steps(&EARLY);
        let mut slept = 0;
        loop {
            match r.next_action() {
                Action::Post { .. } => r.answer(200, br#"{"kvs":[{"key":"aw=="}]}"#.to_vec()),
                Action::Sleep(ms) => slept += ms,
                Action::Finished(res) => {
                    assert!(res.unwrap_err().contains("within 400 ms"));
                    break;
                }
            }
        }
        assert_eq!(slept, 400);
    }
}
