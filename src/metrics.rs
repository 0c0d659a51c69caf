//! Operational counters, and their Prometheus text exposition (`GET /metrics`).
//!
//! Owns one [`Metrics`] per server (held by `App`): plain atomics that actors bump with a
//! single call at the place where the fact happens, and the rendering of all of them as
//! Prometheus text format 0.0.4. Gauges of live processes are tied to the process itself
//! ([`Metrics::track`]): they go up when its body starts and down in its exit hook, with the
//! exit reason classed for the crash counters, so no exit path can forget them.
//!
//! Must never lock, allocate or await on a hot path (the forwarding loop counts here), spawn
//! anything (the simulation runs this code and must schedule the same with or without it), or
//! decide anything: it only counts. Cluster fences are not counted: there is no cluster yet.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::rt::{ExitReason, Pid, System};

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Raises the gauge until the returned guard is dropped (e.g. with an actor's body).
    pub fn hold(&self) -> GaugeGuard<'_> {
        self.inc();
        GaugeGuard(self)
    }
}

/// Lowers its gauge when dropped.
#[must_use = "the gauge goes down again when this is dropped"]
pub struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A value that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the join-latency histogram's buckets; `+Inf` is implied. The
/// target is a join p99 under 20 ms, so the buckets are finest there.
pub const JOIN_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket counts (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; JOIN_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = JOIN_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(JOIN_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The kinds of actor process whose lives are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    Room = 0,
    Channel = 1,
    Socket = 2,
}

const PROCESSES: [(Process, &str); 3] = [
    (Process::Room, "room"),
    (Process::Channel, "channel"),
    (Process::Socket, "socket"),
];

/// How an abnormal exit happened (the class of its [`ExitReason`]).
const CRASH_CLASSES: [&str; 3] = ["crashed", "killed", "error"];

fn crash_class(reason: &ExitReason) -> Option<usize> {
    match reason {
        ExitReason::Normal | ExitReason::Shutdown | ExitReason::Noproc => None,
        ExitReason::Crashed(_) => Some(0),
        ExitReason::Killed => Some(1),
        ExitReason::Error(_) => Some(2),
    }
}

/// Where a client was found too slow and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowQueue {
    /// The socket's outbound frame queue (the WebSocket client stopped reading).
    Socket = 0,
    /// A channel's mailbox, as its room saw it.
    Channel = 1,
}

/// Why the HTTP edge turned a connection or upgrade away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// At the connection cap: closed, or answered 503 from the `/healthz` headroom.
    ConnectionLimit = 0,
    /// Too many WebSockets from one source address (HTTP 429).
    SocketsPerSource = 1,
    /// An Origin that is neither the server's own nor allowed (HTTP 403).
    Origin = 2,
    /// Too many connections of any kind from one source address (closed at accept).
    ConnectionsPerSource = 3,
}

const REFUSALS: [&str; 4] = [
    "connection_limit",
    "sockets_per_source",
    "origin",
    "connections_per_source",
];

/// Where the HTTP edge closed a connection for taking too long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeTimeout {
    /// The TLS handshake did not finish within the header read timeout.
    TlsHandshake = 0,
    /// A request head did not arrive within the header read timeout.
    Header = 1,
    /// No byte moved on a connection not upgraded to a WebSocket.
    Idle = 2,
}

const EDGE_TIMEOUTS: [&str; 3] = ["tls_handshake", "header", "idle"];

/// Every counter of one server. Shared as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Live processes by [`Process`].
    live: [Gauge; 3],
    /// Abnormal exits by [`Process`] and class.
    crashes: [[Counter; 3]; 3],
    /// Channels joined to a room.
    pub peers: Gauge,
    /// RTP packets the SFU wrote to subscriber legs, and their payload bytes.
    pub forwarded_packets: Counter,
    pub forwarded_bytes: Counter,
    /// A channel's start (the socket got `phx_join`) to its join reply being queued, for joins
    /// that succeeded.
    pub join_latency: Histogram,
    slow_consumers: [Counter; 2],
    /// Open TCP (or TLS) connections of the edge, upgraded ones included.
    pub http_connections: Gauge,
    refusals: [Counter; 4],
    edge_timeouts: [Counter; 3],
}

impl Metrics {
    /// Counts `pid` as a live process of `kind` until it exits, then classes its exit reason.
    /// Call it first thing in the process's body. Nothing is counted if it already exited.
    pub fn track(self: &std::sync::Arc<Self>, sys: &System, pid: Pid, kind: Process) {
        let me = std::sync::Arc::clone(self);
        let hook = Box::new(move |reason: &ExitReason| {
            me.live[kind as usize].dec();
            if let Some(class) = crash_class(reason) {
                me.crashes[kind as usize][class].inc();
            }
        });
        // Raised before the hook can run, so the gauge never dips below zero.
        self.live[kind as usize].inc();
        if sys.add_exit_hook(pid, hook).is_none() {
            self.live[kind as usize].dec();
        }
    }

    pub fn live(&self, kind: Process) -> i64 {
        self.live[kind as usize].get()
    }

    pub fn crashes(&self, kind: Process, reason: &ExitReason) -> u64 {
        crash_class(reason).map_or(0, |c| self.crashes[kind as usize][c].get())
    }

    pub fn slow_consumer_dropped(&self, queue: SlowQueue) {
        self.slow_consumers[queue as usize].inc();
    }

    pub fn slow_consumers(&self, queue: SlowQueue) -> u64 {
        self.slow_consumers[queue as usize].get()
    }

    pub fn refused(&self, why: Refusal) {
        self.refusals[why as usize].inc();
    }

    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refusals[why as usize].get()
    }

    pub fn timed_out(&self, what: EdgeTimeout) {
        self.edge_timeouts[what as usize].inc();
    }

    pub fn timeouts(&self, what: EdgeTimeout) -> u64 {
        self.edge_timeouts[what as usize].get()
    }

    /// One packet of `payload_bytes` went out to one subscriber.
    pub fn forwarded(&self, payload_bytes: usize) {
        self.forwarded_packets.inc();
        self.forwarded_bytes.add(payload_bytes as u64);
    }

    /// The Prometheus text exposition (format 0.0.4) of every counter, plus the values only
    /// the caller knows (`extra`: gauges read at scrape time, e.g. TURN allocations).
    pub fn render(&self, extra: &[(&str, &str, i64)]) -> String {
        let mut out = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "videoroom_rooms",
            "Rooms running.",
            self.live(Process::Room),
        );
        gauge(
            "videoroom_peers",
            "Channels joined to a room.",
            self.peers.get(),
        );
        gauge(
            "videoroom_channels",
            "Channel processes (joined or joining).",
            self.live(Process::Channel),
        );
        gauge(
            "videoroom_sockets",
            "Phoenix socket processes (one per open WebSocket).",
            self.live(Process::Socket),
        );
        gauge(
            "videoroom_http_connections",
            "Open HTTP connections, WebSockets included.",
            self.http_connections.get(),
        );
        for (name, help, v) in extra {
            gauge(name, help, *v);
        }
        counter(
            &mut out,
            "videoroom_forwarded_packets_total",
            "RTP packets forwarded to subscribers.",
            &[("", self.forwarded_packets.get())],
        );
        counter(
            &mut out,
            "videoroom_forwarded_bytes_total",
            "RTP payload bytes forwarded to subscribers.",
            &[("", self.forwarded_bytes.get())],
        );
        counter(
            &mut out,
            "videoroom_slow_consumers_dropped_total",
            "Clients dropped because a queue towards them was full.",
            &[
                ("queue=\"socket\"", self.slow_consumers[0].get()),
                ("queue=\"channel\"", self.slow_consumers[1].get()),
            ],
        );
        let crashes: Vec<(String, u64)> = PROCESSES
            .iter()
            .flat_map(|(p, pname)| {
                CRASH_CLASSES.iter().enumerate().map(move |(c, cname)| {
                    (
                        format!("process=\"{pname}\",reason=\"{cname}\""),
                        self.crashes[*p as usize][c].get(),
                    )
                })
            })
            .collect();
        let crashes: Vec<(&str, u64)> = crashes.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            &mut out,
            "videoroom_process_crashes_total",
            "Abnormal exits of room, channel and socket processes, by reason class.",
            &crashes,
        );
        let refusals: Vec<(String, u64)> = REFUSALS
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("reason=\"{r}\""), self.refusals[i].get()))
            .collect();
        let refusals: Vec<(&str, u64)> = refusals.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            &mut out,
            "videoroom_http_refused_total",
            "Connections and WebSocket upgrades the HTTP edge refused.",
            &refusals,
        );
        let timeouts: Vec<(String, u64)> = EDGE_TIMEOUTS
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("phase=\"{t}\""), self.edge_timeouts[i].get()))
            .collect();
        let timeouts: Vec<(&str, u64)> = timeouts.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            &mut out,
            "videoroom_http_timeouts_total",
            "Connections the HTTP edge closed for taking too long.",
            &timeouts,
        );
        self.render_join_latency(&mut out);
        out
    }

    fn render_join_latency(&self, out: &mut String) {
        let name = "videoroom_join_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Channel join (phx_join reached the socket) to the join reply, for successful joins.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, le) in JOIN_BUCKETS.iter().enumerate() {
            cumulative += self.join_latency.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.join_latency.buckets[JOIN_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.join_latency.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        // The count is the +Inf bucket, so the two agree within one scrape even while joins land.
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The integrated TURN server's counters and the relay policy's, read at scrape time (all zero
/// without the real media plane).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnReport {
    pub allocations: u64,
    /// 403: a permission or channel for anything but the SFU's sockets.
    pub refused_forbidden: u64,
    /// 486 or 508: the per-peer quota or the server's capacity.
    pub refused_quota: u64,
    /// 401, 438, 441: no valid credential (a departed peer's, a forged one, a stale nonce).
    pub refused_auth: u64,
    /// Idle allocations replaced by a newer one of the same peer at its quota.
    pub evicted: u64,
    /// Datagrams the TURN server dropped (no allocation, permission or channel; a refused peer).
    pub dropped: u64,
    /// Datagrams an SFU or relay socket tried to send outside the policy.
    pub policy_refused: u64,
}

impl TurnReport {
    /// Appends the counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        counter(
            out,
            "videoroom_turn_refused_total",
            "TURN requests refused, by reason.",
            &[
                ("reason=\"forbidden\"", self.refused_forbidden),
                ("reason=\"quota\"", self.refused_quota),
                ("reason=\"auth\"", self.refused_auth),
            ],
        );
        counter(
            out,
            "videoroom_turn_evicted_total",
            "Idle TURN allocations replaced at their peer's quota.",
            &[("", self.evicted)],
        );
        counter(
            out,
            "videoroom_turn_dropped_total",
            "Datagrams the TURN server dropped.",
            &[("", self.dropped)],
        );
        counter(
            out,
            "videoroom_relay_policy_refused_total",
            "Datagrams an SFU or relay socket tried to send outside the relay policy.",
            &[("", self.policy_refused)],
        );
    }
}

fn counter(out: &mut String, name: &str, help: &str, series: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, v) in series {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The value of the series `series` (name with labels) in a rendered exposition.
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let m = Metrics::default();
        for ms in [0, 3, 3, 15, 7000] {
            m.join_latency.observe(Duration::from_millis(ms));
        }
        let t = m.render(&[]);
        let b = |le: &str| {
            value(
                &t,
                &format!("videoroom_join_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("0.001"), 1.0);
        assert_eq!(b("0.0025"), 1.0);
        assert_eq!(b("0.005"), 3.0);
        assert_eq!(b("0.02"), 4.0);
        assert_eq!(b("5"), 4.0);
        assert_eq!(b("+Inf"), 5.0);
        assert_eq!(value(&t, "videoroom_join_duration_seconds_count"), 5.0);
        assert_eq!(value(&t, "videoroom_join_duration_seconds_sum"), 7.021);
    }

    #[test]
    fn every_series_has_help_and_type_and_parses() {
        let m = Metrics::default();
        m.forwarded(100);
        m.refused(Refusal::Origin);
        m.slow_consumer_dropped(SlowQueue::Channel);
        let t = m.render(&[("videoroom_turn_allocations", "TURN allocations.", 3)]);
        let mut typed = std::collections::BTreeSet::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, v) = line.rsplit_once(' ').expect("name value");
            v.parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| typed.contains(*f))
                .unwrap_or(name);
            assert!(typed.contains(family), "{name} has no # TYPE before it");
        }
        assert_eq!(value(&t, "videoroom_turn_allocations"), 3.0);
        assert_eq!(value(&t, "videoroom_forwarded_packets_total"), 1.0);
        assert_eq!(value(&t, "videoroom_forwarded_bytes_total"), 100.0);
        assert_eq!(
            value(&t, "videoroom_http_refused_total{reason=\"origin\"}"),
            1.0
        );
        assert_eq!(
            value(
                &t,
                "videoroom_slow_consumers_dropped_total{queue=\"channel\"}"
            ),
            1.0
        );
    }

    /// A tracked process is live from `track` to its exit; only abnormal exits count as
    /// crashes, by class.
    #[tokio::test]
    async fn tracked_processes_count_while_alive_and_class_their_exit() {
        {
            let sys = System::new();
            let m = Arc::new(Metrics::default());
            let (go_tx, go_rx) = tokio::sync::oneshot::channel::<ExitReason>();
            let m2 = Arc::clone(&m);
            let a = sys.spawn::<(), _, _>(4, move |ctx| async move {
                m2.track(ctx.system(), ctx.pid(), Process::Channel);
                go_rx.await.unwrap()
            });
            while m.live(Process::Channel) == 0 {
                tokio::task::yield_now().await;
            }
            go_tx.send(ExitReason::Error("room down".into())).unwrap();
            sys.wait_exit(a.pid()).await;
            assert_eq!(m.live(Process::Channel), 0);
            assert_eq!(
                m.crashes(Process::Channel, &ExitReason::Error(String::new())),
                1
            );

            let m3 = Arc::clone(&m);
            let b = sys.spawn::<(), _, _>(4, move |ctx| async move {
                m3.track(ctx.system(), ctx.pid(), Process::Room);
                std::future::pending::<ExitReason>().await
            });
            while m.live(Process::Room) == 0 {
                tokio::task::yield_now().await;
            }
            sys.kill(b.pid());
            sys.wait_exit(b.pid()).await;
            assert_eq!(m.live(Process::Room), 0);
            assert_eq!(m.crashes(Process::Room, &ExitReason::Killed), 1);

            let m4 = Arc::clone(&m);
            let c = sys.spawn::<(), _, _>(4, move |ctx| async move {
                m4.track(ctx.system(), ctx.pid(), Process::Socket);
                ExitReason::Normal
            });
            sys.wait_exit(c.pid()).await;
            assert_eq!(m.live(Process::Socket), 0);
            let t = m.render(&[]);
            assert_eq!(
                value(
                    &t,
                    "videoroom_process_crashes_total{process=\"socket\",reason=\"killed\"}"
                ),
                0.0
            );
            assert_eq!(
                value(
                    &t,
                    "videoroom_process_crashes_total{process=\"room\",reason=\"killed\"}"
                ),
                1.0
            );
        }
    }

    #[test]
    fn a_held_gauge_goes_back_down() {
        let m = Metrics::default();
        {
            let _a = m.peers.hold();
            let _b = m.peers.hold();
            assert_eq!(m.peers.get(), 2);
        }
        assert_eq!(m.peers.get(), 0);
    }
}
