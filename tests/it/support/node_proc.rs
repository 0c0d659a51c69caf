//! A real `videoroom` process (the binary cargo built for these tests), as an operator runs it:
//! spawned with its arguments, its address read from its own "listening on" log line, its log
//! kept in memory for waits and failure messages, killed with SIGKILL on demand and on drop.
//!
//! The log is printed to the test's stderr when the process is dropped during a panic, so a
//! failed test shows what each node said.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::http::{get_body, parse_metrics};

/// What the process wrote so far (stdout and stderr interleaved as they arrived), and a
/// condition variable signalled on each new chunk.
#[derive(Default)]
struct Log {
    text: Mutex<String>,
    grew: Condvar,
}

/// One running `videoroom` process.
pub struct NodeProc {
    label: String,
    child: Child,
    log: Arc<Log>,
    /// The HTTP address it listens on (from its "videoroom listening on" line).
    pub addr: SocketAddr,
    killed: bool,
}

/// The line the binary logs once its HTTP listener is bound.
const LISTENING: &str = "videoroom listening on http://";
/// The line a cluster node logs once its incarnation is registered in etcd and acting.
pub const ACTING: &str = "acting: registered in etcd";
/// The line a cluster node logs when it stops acting (its lease is not proven alive).
pub const FENCED: &str = "fenced: this node stops acting";

impl NodeProc {
    /// Starts `videoroom args...` (plain-text log, no colours, default filter) and waits up to
    /// `within` for its listening line. Panics with its log if it exits or stays silent.
    pub fn spawn(label: &str, args: &[&str], within: Duration) -> NodeProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_videoroom"));
        cmd.args(args)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("VIDEOROOM_JOIN_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl(2) is async-signal-safe; it only asks the kernel to SIGKILL the child
        // when the thread that spawned it dies, so a test binary killed mid-test (timeout,
        // Ctrl-C) leaves no node behind. Drop kills it first in every orderly case.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the videoroom binary: {e}"));
        let log = Arc::new(Log::default());
        for out in [
            Box::new(child.stdout.take().expect("piped stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("piped stderr")),
        ] {
            let log = log.clone();
            thread::spawn(move || pump(out, &log));
        }
        let mut node = NodeProc {
            label: label.to_owned(),
            child,
            log,
            addr: "0.0.0.0:0".parse().unwrap(),
            killed: false,
        };
        let line = node.wait_log(LISTENING, within);
        let rest = &line[line.find(LISTENING).unwrap() + LISTENING.len()..];
        let addr = rest.split_whitespace().next().unwrap_or_default();
        match addr.parse() {
            Ok(a) => node.addr = a,
            Err(_) => node.fail(&format!("no address in {line:?}")),
        }
        node
    }

    /// A cluster node with the fake media plane, on free ports: `--fake-media --port 0 --etcd
    /// <etcd> --node-name <name> --dist-listen 127.0.0.1:0 --lease-ttl <ttl>`. Returns once it
    /// logged that it registered in etcd and acts.
    pub fn cluster_node(etcd: &str, name: &str, ttl_secs: u64) -> NodeProc {
        let ttl = ttl_secs.to_string();
        let mut node = NodeProc::spawn(
            name,
            &[
                "--fake-media",
                "--port",
                "0",
                "--etcd",
                etcd,
                "--node-name",
                name,
                "--dist-listen",
                "127.0.0.1:0",
                "--lease-ttl",
                &ttl,
            ],
            Duration::from_secs(20),
        );
        node.wait_log(ACTING, Duration::from_secs(20));
        node
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The phoenix socket URL of this node.
    pub fn url(&self) -> String {
        format!("ws://{}/socket", self.addr)
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.log.text.lock().unwrap().clone()
    }

    /// Waits up to `within` for a log line containing `needle`; returns the first such line.
    #[track_caller]
    pub fn wait_log(&mut self, needle: &str, within: Duration) -> String {
        self.wait_log_nth(needle, 1, within)
    }

    /// Waits up to `within` until `n` log lines contain `needle`; returns the `n`th.
    #[track_caller]
    pub fn wait_log_nth(&mut self, needle: &str, n: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut text = self.log.text.lock().unwrap();
        loop {
            // Complete lines only: a line still being written may hold half an address.
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            if let Some(line) = complete.lines().filter(|l| l.contains(needle)).nth(n - 1) {
                return line.to_owned();
            }
            let now = Instant::now();
            let exited = self.child.try_wait().ok().flatten();
            if now >= deadline || exited.is_some() {
                drop(text);
                let why = match exited {
                    Some(st) => format!("exited ({st}) before logging {needle:?} (x{n})"),
                    None => format!("no log line {needle:?} (x{n}) within {within:?}"),
                };
                self.fail(&why);
            }
            // Woken by new output, or after a short while to notice an exit.
            let wait = (deadline - now).min(Duration::from_millis(100));
            text = self.log.grew.wait_timeout(text, wait).unwrap().0;
        }
    }

    /// `GET /healthz` answers 200 "ok".
    pub fn healthy(&self) -> bool {
        let (head, body) = get_body(self.addr, "/healthz");
        head.status == 200 && body.trim() == "ok"
    }

    /// The samples of `GET /metrics`.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let (head, body) = get_body(self.addr, "/metrics");
        assert_eq!(
            head.status, 200,
            "{}: GET /metrics: {}",
            self.label, head.text
        );
        parse_metrics(&body)
    }

    /// One sample of `GET /metrics` (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics().get(series).copied().unwrap_or(0.0)
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Sends `sig` (SIGSTOP freezes the node, as a long pause would; SIGCONT wakes it).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid, which is not reaped until we wait on it.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill({sig})");
    }

    /// `kill -9`, and reaps it.
    pub fn kill9(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        // SAFETY: kill(2) on our own child's pid, which is not reaped until we wait on it.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        assert!(
            rc == 0 || self.child.try_wait().ok().flatten().is_some(),
            "kill -9 {}",
            self.pid()
        );
        let _ = self.child.wait();
    }

    /// SIGTERM (what `systemctl stop` and Ctrl-C send), then waits up to `within` for the
    /// process to exit; returns its exit status.
    #[track_caller]
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid, which is not reaped until we wait on it.
        assert_eq!(
            unsafe { libc::kill(self.pid(), libc::SIGTERM) },
            0,
            "kill -TERM"
        );
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the node") {
                self.killed = true;
                return status;
            }
            if Instant::now() > deadline {
                self.fail(&format!("still running {within:?} after SIGTERM"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Panics; the log is printed when the process is dropped during the unwinding.
    #[track_caller]
    fn fail(&self, why: &str) -> ! {
        panic!("node {}: {why} (its log follows on stderr)", self.label);
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
        if thread::panicking() {
            eprintln!(
                "--- node {} ({}) log, last 60 lines ---\n{}",
                self.label,
                self.addr,
                self.tail(60)
            );
        }
    }
}

fn pump(mut out: Box<dyn Read + Send>, log: &Log) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = out.read(&mut buf) {
        if n == 0 {
            break;
        }
        log.text
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(&buf[..n]));
        log.grew.notify_all();
    }
}
