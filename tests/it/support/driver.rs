//! A Node driver child process (`tests/node/phx_driver.js` or `membrane_driver.js`): commands go
//! to its stdin as JSON lines, events come back on stdout as JSON lines (protocol:
//! `tests/node/README.md`).
//!
//! Every event the driver printed is kept, in arrival order. [`Driver::expect`] returns the first
//! event not yet taken by an earlier `expect` that matches a [`Pat`], waiting for it up to a
//! deadline; on timeout it panics with every event seen so far (taken ones marked) and the
//! driver's stderr. Events are never dropped, so an `expect` for one event cannot lose another
//! that arrived before it; order between events is checked with [`Seen::index`].

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long an `expect` waits unless told otherwise. Every awaited event happens within
/// milliseconds on a working server; this bound only decides how fast a broken one fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Client timers for tests: fast heartbeats, near-immediate rejoin and reconnect, and a 2 s
/// join/push timeout so a missing reply shows up as `join_timeout` well inside [`DEFAULT_TIMEOUT`].
pub fn fast_opts() -> Value {
    json!({
        "heartbeatIntervalMs": 500,
        "rejoinAfterMs": 50,
        "reconnectAfterMs": 50,
        "timeout": 2000,
    })
}

/// [`fast_opts`] plus `trace` (every frame reported as `frame_out` / `frame_in`).
pub fn traced_opts() -> Value {
    let mut o = fast_opts();
    o["trace"] = json!(true);
    o
}

/// One event as received: its position in the driver's event list and its JSON.
#[derive(Clone, Debug)]
pub struct Seen {
    pub index: usize,
    pub value: Value,
}

impl std::ops::Index<&str> for Seen {
    type Output = Value;
    fn index(&self, key: &str) -> &Value {
        &self.value[key]
    }
}

/// What an awaited event must look like: its `ev`, exact values at JSON pointers, and optional
/// predicates. Its description is used in failure messages.
pub struct Pat {
    ev: Option<String>,
    fields: Vec<(String, Value)>,
    preds: Vec<(String, Predicate)>,
}

type Predicate = Box<dyn Fn(&Value) -> bool>;

/// An event named `name` (`{"ev": name, ...}`).
pub fn ev(name: &str) -> Pat {
    Pat {
        ev: Some(name.to_owned()),
        fields: Vec::new(),
        preds: Vec::new(),
    }
}

/// Any event (narrow it with [`Pat::with`] / [`Pat::when`]).
pub fn any() -> Pat {
    Pat {
        ev: None,
        fields: Vec::new(),
        preds: Vec::new(),
    }
}

/// A `msg` event (a frame phoenix delivered to a joined channel) with this `event`.
pub fn msg(topic: &str, event: &str) -> Pat {
    ev("msg").with("topic", topic).with("event", event)
}

/// A `frame_in` (server → client frame, needs `trace`) whose decoded array satisfies `f`.
pub fn frame_in(desc: &str, f: impl Fn(&[Value]) -> bool + 'static) -> Pat {
    ev("frame_in").when(desc, move |v| decode_frame(v).is_some_and(|fr| f(&fr)))
}

/// A `frame_out` (client → server frame, needs `trace`) whose decoded array satisfies `f`.
pub fn frame_out(desc: &str, f: impl Fn(&[Value]) -> bool + 'static) -> Pat {
    ev("frame_out").when(desc, move |v| decode_frame(v).is_some_and(|fr| f(&fr)))
}

/// A `mediaEvent` push received on a phx driver channel whose decoded `data` has this `type`.
pub fn media_in(topic: &str, kind: &str) -> Pat {
    let kind = kind.to_owned();
    msg(topic, "mediaEvent").when(&format!("data.type={kind:?}"), move |v| {
        media_data(v).is_some_and(|d| d["type"] == kind.as_str())
    })
}

/// The decoded V2 frame array of a `frame_in` / `frame_out` event.
pub fn decode_frame(v: &Value) -> Option<Vec<Value>> {
    match serde_json::from_str(v["data"].as_str()?).ok()? {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

/// The decoded media event inside a `msg` event's `payload.data` string.
pub fn media_data(v: &Value) -> Option<Value> {
    serde_json::from_str(v["payload"]["data"].as_str()?).ok()
}

impl Pat {
    /// Requires the value at `key` (a JSON pointer, or a top-level key without `/`) to equal `val`.
    pub fn with(mut self, key: &str, val: impl Into<Value>) -> Self {
        let ptr = if key.starts_with('/') {
            key.to_owned()
        } else {
            format!("/{key}")
        };
        self.fields.push((ptr, val.into()));
        self
    }

    /// Requires `f(event)` to hold; `desc` names the condition in failure messages.
    pub fn when(mut self, desc: &str, f: impl Fn(&Value) -> bool + 'static) -> Self {
        self.preds.push((desc.to_owned(), Box::new(f)));
        self
    }

    pub fn matches(&self, v: &Value) -> bool {
        self.ev.as_ref().is_none_or(|e| v["ev"] == e.as_str())
            && self
                .fields
                .iter()
                .all(|(p, want)| v.pointer(p) == Some(want))
            && self.preds.iter().all(|(_, f)| f(v))
    }

    pub fn describe(&self) -> String {
        let mut s = match &self.ev {
            Some(e) => format!("ev={e:?}"),
            None => "any event".to_owned(),
        };
        for (p, v) in &self.fields {
            let _ = write!(s, " {p}={v}");
        }
        for (d, _) in &self.preds {
            let _ = write!(s, " [{d}]");
        }
        s
    }
}

enum Line {
    Event(Value),
    /// A stdout line that is not JSON (the driver promises there are none).
    Garbage(String),
    Eof,
}

/// A running driver process. Killed (and reaped) on drop.
pub struct Driver {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Line>,
    events: Vec<Value>,
    taken: Vec<bool>,
    eof: bool,
    stderr: Arc<Mutex<String>>,
    next_id: u64,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Driver {
    /// Starts `tests/node/phx_driver.js` (the `phoenix` client). `label` names it in messages.
    pub fn phx(label: &str) -> Driver {
        Driver::spawn(label, "phx_driver.js")
    }

    /// Starts `tests/node/membrane_driver.js` (`membrane-webrtc-js` over a phoenix channel).
    pub fn membrane(label: &str) -> Driver {
        Driver::spawn(label, "membrane_driver.js")
    }

    fn spawn(label: &str, script: &str) -> Driver {
        let root = repo_root();
        let node_dir = root.join("tests/node");
        check_node_setup(&node_dir);
        let mut child = Command::new("node")
            .arg(node_dir.join(script))
            .current_dir(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `node {script}`: {e}. Install Node.js >= 18 (20 LTS) on PATH and \
                     run scripts/setup-node.sh"
                )
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let stdin = child.stdin.take();

        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                let msg = match serde_json::from_str::<Value>(&line) {
                    Ok(v) => Line::Event(v),
                    Err(_) => Line::Garbage(line),
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
            let _ = tx.send(Line::Eof);
        });
        let err_buf = Arc::new(Mutex::new(String::new()));
        let err_sink = err_buf.clone();
        thread::spawn(move || {
            let mut stderr = stderr;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err_sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });

        let mut d = Driver {
            label: label.to_owned(),
            child,
            stdin,
            rx,
            events: Vec::new(),
            taken: Vec::new(),
            eof: false,
            stderr: err_buf,
            next_id: 0,
        };
        d.expect(ev("ready"));
        d
    }

    /// Sends one command (a JSON object with `cmd`). Adds an `id` and waits for its `ack`, so a
    /// rejected command fails here with the driver's `error` message.
    pub fn cmd(&mut self, mut cmd: Value) -> Seen {
        self.next_id += 1;
        let id = format!("{}-{}", self.label, self.next_id);
        cmd["id"] = json!(id);
        let line = serde_json::to_string(&cmd).expect("command is JSON");
        let stdin = self.stdin.as_mut().expect("driver stdin is open");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|_| stdin.flush()) {
            self.fail(&format!("cannot write command {line}: {e}"));
        }
        let want = id.clone();
        let ack = self.expect(
            any().when(&format!("ack or error for id {id:?}"), move |v| {
                v["id"] == want.as_str() && (v["ev"] == "ack" || v["ev"] == "error")
            }),
        );
        if ack["ev"] == "error" {
            self.fail(&format!(
                "driver refused command {line}: {}",
                ack["message"]
            ));
        }
        ack
    }

    /// `connect` (phx driver) to `url` with `opts`.
    pub fn connect(&mut self, url: &str, opts: Value) {
        self.cmd(json!({"cmd": "connect", "url": url, "opts": opts}));
    }

    /// `join` (phx driver) `topic` with an empty payload.
    pub fn join(&mut self, topic: &str) {
        self.cmd(json!({"cmd": "join", "topic": topic, "payload": {}}));
    }

    /// `join` (phx driver) `topic` with `payload` (e.g. `{"token": ...}`).
    pub fn join_with(&mut self, topic: &str, payload: Value) {
        self.cmd(json!({"cmd": "join", "topic": topic, "payload": payload}));
    }

    /// `join` and wait for `join_ok`; returns it.
    pub fn join_ok(&mut self, topic: &str) -> Seen {
        self.join(topic);
        self.expect(ev("join_ok").with("topic", topic))
    }

    /// Pushes `event` with `payload` on the joined `topic` (phx driver).
    pub fn push(&mut self, topic: &str, event: &str, payload: Value) {
        self.cmd(json!({"cmd": "push", "topic": topic, "event": event, "payload": payload}));
    }

    /// Pushes a `mediaEvent` whose `data` is `media` serialized to a string, as the web client does.
    pub fn push_media(&mut self, topic: &str, media: Value) {
        self.push(topic, "mediaEvent", json!({"data": media.to_string()}));
    }

    /// Sends a text frame as is on the WebSocket (phx driver).
    pub fn raw(&mut self, frame: &str) {
        self.cmd(json!({"cmd": "raw", "frame": frame}));
    }

    /// Sends a V2 frame given as a JSON array on the WebSocket (phx driver).
    pub fn raw_frame(&mut self, frame: Value) {
        self.raw(&frame.to_string());
    }

    /// Number of events received so far (after reading what is already waiting); pass it to
    /// [`Driver::expect_after`] to only consider later events.
    pub fn mark(&mut self) -> usize {
        while self.pump(Instant::now()) {}
        self.events.len()
    }

    /// Waits up to [`DEFAULT_TIMEOUT`] for the first untaken event matching `pat`, takes it and
    /// returns it.
    #[track_caller]
    pub fn expect(&mut self, pat: Pat) -> Seen {
        self.expect_within(pat, DEFAULT_TIMEOUT, 0)
    }

    /// Like [`Driver::expect`], but only events at index `from` or later are considered.
    #[track_caller]
    pub fn expect_after(&mut self, from: usize, pat: Pat) -> Seen {
        self.expect_within(pat, DEFAULT_TIMEOUT, from)
    }

    #[track_caller]
    pub fn expect_within(&mut self, pat: Pat, timeout: Duration, from: usize) -> Seen {
        let deadline = Instant::now() + timeout;
        let mut scanned = from;
        loop {
            while scanned < self.events.len() {
                if !self.taken[scanned] && pat.matches(&self.events[scanned]) {
                    self.taken[scanned] = true;
                    return Seen {
                        index: scanned,
                        value: self.events[scanned].clone(),
                    };
                }
                scanned += 1;
            }
            if self.eof {
                self.fail(&format!(
                    "driver exited while waiting for {} (events from #{from})",
                    pat.describe()
                ));
            }
            if !self.pump(deadline) {
                self.fail(&format!(
                    "timed out after {timeout:?} waiting for {} (events from #{from})",
                    pat.describe()
                ));
            }
        }
    }

    /// Every event seen so far (after reading what is already waiting) that matches `pat`, taken
    /// or not. Used for "this never happened" checks after a later event proved progress.
    pub fn all(&mut self, pat: &Pat) -> Vec<Seen> {
        self.mark();
        self.events
            .iter()
            .enumerate()
            .filter(|(_, v)| pat.matches(v))
            .map(|(index, v)| Seen {
                index,
                value: v.clone(),
            })
            .collect()
    }

    /// Panics (listing the events) if any event seen so far matches `pat`.
    #[track_caller]
    pub fn refute(&mut self, pat: Pat) {
        let hits = self.all(&pat);
        if let Some(hit) = hits.first() {
            self.fail(&format!(
                "unexpected event #{} matching {}: {}",
                hit.index,
                pat.describe(),
                hit.value
            ));
        }
    }

    /// Every event received so far.
    pub fn events(&mut self) -> &[Value] {
        self.mark();
        &self.events
    }

    /// Receives at most one line, waiting until `deadline`. False when nothing came in time.
    fn pump(&mut self, deadline: Instant) -> bool {
        if self.eof {
            return false;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(wait) {
            Ok(Line::Event(v)) => {
                self.events.push(v);
                self.taken.push(false);
                true
            }
            Ok(Line::Garbage(s)) => {
                self.fail(&format!("driver printed a non-JSON line on stdout: {s:?}"));
            }
            Ok(Line::Eof) | Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
        }
    }

    #[track_caller]
    fn fail(&mut self, why: &str) -> ! {
        let mut s = format!(
            "driver {}: {why}\n--- events ({} seen; * = taken) ---\n",
            self.label,
            self.events.len()
        );
        for (i, v) in self.events.iter().enumerate() {
            let mark = if self.taken[i] { '*' } else { ' ' };
            let _ = writeln!(s, "{mark}#{i:<3} {v}");
        }
        if self.eof {
            s.push_str("--- (driver stdout closed) ---\n");
        }
        let err = self.stderr.lock().unwrap().clone();
        if !err.trim().is_empty() {
            let _ = write!(s, "--- driver stderr ---\n{err}");
        }
        panic!("{s}");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails with the setup instruction when `node` or the driver's npm packages are missing.
fn check_node_setup(node_dir: &Path) {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| check_node_setup_once(node_dir));
}

fn check_node_setup_once(node_dir: &Path) {
    match Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(st) if st.success() => {}
        Ok(st) => panic!(
            "`node --version` failed ({st}); install Node.js >= 18 and run scripts/setup-node.sh"
        ),
        Err(e) => panic!(
            "`node` is not runnable ({e}); install Node.js >= 18 (20 LTS) on PATH and run \
             scripts/setup-node.sh"
        ),
    }
    for pkg in ["phoenix", "ws", "@jellyfish-dev/membrane-webrtc-js"] {
        let p = node_dir.join("node_modules").join(pkg).join("package.json");
        assert!(
            p.is_file(),
            "{} is missing: run scripts/setup-node.sh (npm ci of the Node test drivers)",
            p.display()
        );
    }
}
