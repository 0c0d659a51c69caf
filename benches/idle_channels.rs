//! Benchmark (not a test): what joined, idle Phoenix channels cost the server.
//!
//! Starts the real `videoroom` binary as a child process (fake media plane, so no TURN or
//! ICE sockets; `--real-media` runs the media workers and TURN instead, so each room also has
//! its plane: the difference between the two is what an idle room costs the media plane),
//! opens S WebSockets, then joins C channels on each (Phoenix multiplexes up to
//! 100 channels per socket, so 20 000 channels fit in the 20 000 file descriptors a process may
//! have here), spread over rooms of P peers. Sockets heartbeat as phoenix.js does. It reports
//! the server's RSS before any socket, with the sockets open, and with every channel joined,
//! so the cost per channel is measured against the same process's socket-only baseline in the
//! same run, plus join-reply latency and join throughput. Then it closes every socket and
//! reports the RSS once the server has stopped the rooms. With `--rounds R` it does it all R
//! times with fresh room names under a room limit that fits exactly one round's rooms, so a
//! round only succeeds if every room of the previous one stopped, and its RSS shows whether the
//! memory they held was reused (it came back) or added to (it leaked).
//!
//! The channels never send a media `connect`, so the server runs with a connect grace longer
//! than the benchmark (they would be dropped after 10 s otherwise).
//!
//! `cargo bench --bench idle_channels -- [--sockets S] [--channels-per-socket C] [--per-room P]
//! [--rounds R] [--real-media]` (defaults: 200 × 100 = 20 000 channels in rooms of 10, one round). Bounded:
//! gives up after 120 s per round.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const DEADLINE: Duration = Duration::from_secs(120);
const HEARTBEAT: Duration = Duration::from_secs(20);

struct Args {
    sockets: usize,
    per_socket: usize,
    per_room: usize,
    rounds: usize,
    real_media: bool,
}

fn args() -> Args {
    let mut a = Args {
        sockets: 200,
        per_socket: 100,
        per_room: 10,
        rounds: 1,
        real_media: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || -> usize {
            argv.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", argv[i]))
        };
        match argv[i].as_str() {
            "--sockets" => a.sockets = value(),
            "--channels-per-socket" => a.per_socket = value(),
            "--per-room" => a.per_room = value(),
            "--rounds" => a.rounds = value().max(1),
            "--real-media" => {
                a.real_media = true;
                i += 1;
                continue;
            }
            // `cargo bench` passes `--bench`; anything else is a mistake worth reporting.
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    assert!(
        (1..=100).contains(&a.per_socket),
        "a Phoenix socket carries at most 100 channels"
    );
    assert!(
        a.sockets >= a.per_room,
        "--sockets must be at least --per-room (one socket never joins a room twice)"
    );
    a
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// The server, stopped when dropped.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(
    real_media: bool,
    per_room: usize,
    rooms: usize,
    sockets: usize,
    per_socket: usize,
) -> (ServerProcess, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let media: &[&str] = if real_media {
        // Its own TURN port, so a server already on 3478 does not stop the run.
        &["--turn-bind", "127.0.0.1:0"]
    } else {
        &["--fake-media"]
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_videoroom"))
        .args(["--port", &port.to_string()])
        .args(media)
        .args(["--max-peers-per-room", &per_room.to_string()])
        .args(["--max-rooms", &rooms.max(1).to_string()])
        .args(["--connect-grace", "86400"])
        // Every socket comes from 127.0.0.1, and the cap must not be what is measured.
        .args(["--max-sockets-per-source", &sockets.to_string()])
        .args(["--max-connections-per-source", &(sockets + 16).to_string()])
        .args(["--max-channels-per-socket", &per_socket.to_string()])
        .args([
            "--max-peers-per-source",
            &(sockets * per_socket).max(1).to_string(),
        ])
        .args(["--max-connections", &(sockets + 16).to_string()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the videoroom binary");
    // Wait for the listening line on either stream.
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
    }
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the server did not report listening within 30 s");
    (ServerProcess(child), format!("127.0.0.1:{port}"))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[net_tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    let channels = a.sockets * a.per_socket;
    let rooms = channels.div_ceil(a.per_room);
    let started = Instant::now();
    let (server, addr) = start_server(a.real_media, a.per_room, rooms, a.sockets, a.per_socket);
    let pid = server.0.id();
    net_tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib(pid);

    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    for round in 1..=a.rounds {
        if a.rounds > 1 {
            println!("-- round {round} of {}", a.rounds);
        }
        run_round(&a, round, &url, pid, rss_idle).await;
    }
    drop(server);
    assert!(
        started.elapsed() < DEADLINE * 2 * a.rounds as u32,
        "took too long"
    );
}

/// One round: open the sockets, join every channel (rooms named for the round, so a round only
/// fits under the room limit if the previous round's rooms all stopped), measure, close all.
async fn run_round(a: &Args, round: usize, url: &str, pid: u32, rss_idle: u64) {
    let channels = a.sockets * a.per_socket;
    let rooms = channels.div_ceil(a.per_room);
    let mut sockets = Vec::with_capacity(a.sockets);
    for s in 0..a.sockets {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("socket {s}: {e}"));
        sockets.push(ws);
    }
    net_tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_sockets = rss_kib(pid);
    println!(
        "{} sockets open: server RSS {} KiB → {} KiB",
        a.sockets, rss_idle, rss_sockets
    );

    // Each socket joins its channels in one burst and reads the replies; all sockets at once.
    let join_started = Instant::now();
    let mut tasks = Vec::new();
    for (s, ws) in sockets.into_iter().enumerate() {
        let (per_socket, sockets_n, per_room) = (a.per_socket, a.sockets, a.per_room);
        tasks.push(net_tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let mut sent_at = Vec::with_capacity(per_socket);
            for c in 0..per_socket {
                // Consecutive channels of one socket land in different rooms.
                let room = (c * sockets_n + s) / per_room;
                let r = (c + 1).to_string();
                let frame = json!([r, r, format!("room:idle-{round}-{room}"), "phx_join", {}]);
                sent_at.push(Instant::now());
                tx.send(Message::text(frame.to_string()))
                    .await
                    .expect("send join");
            }
            let mut latencies = Vec::with_capacity(per_socket);
            while latencies.len() < per_socket {
                let msg = rx
                    .next()
                    .await
                    .expect("socket open")
                    .expect("socket readable");
                let Message::Text(t) = msg else { continue };
                let v: Value = serde_json::from_str(&t).expect("json frame");
                if v[3] != "phx_reply" {
                    continue;
                }
                assert_eq!(v[4]["status"], "ok", "join refused: {v}");
                let r: usize = v[1].as_str().and_then(|r| r.parse().ok()).expect("ref");
                latencies.push(sent_at[r - 1].elapsed());
            }
            // Idle from here on: heartbeats only, as phoenix.js sends them.
            let keep = net_tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    net_tokio::time::sleep(HEARTBEAT).await;
                    n += 1;
                    let hb = json!([null, format!("hb{n}"), "phoenix", "heartbeat", {}]);
                    if tx.send(Message::text(hb.to_string())).await.is_err() {
                        return;
                    }
                }
            });
            (latencies, rx, keep)
        }));
    }
    let mut latencies = Vec::with_capacity(channels);
    let mut keep = Vec::new();
    for t in tasks {
        let (l, rx, k) = net_tokio::time::timeout(DEADLINE, t)
            .await
            .expect("joins finished in time")
            .expect("join task");
        latencies.extend(l);
        keep.push((rx, k));
    }
    let join_secs = join_started.elapsed().as_secs_f64();
    net_tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_joined = rss_kib(pid);
    latencies.sort();
    let per_channel = (rss_joined.saturating_sub(rss_sockets)) as f64 / channels as f64;
    println!(
        "{channels} channels joined ({} sockets × {} channels, {rooms} rooms of {}) in {join_secs:.2} s: {:.0} joins/s",
        a.sockets,
        a.per_socket,
        a.per_room,
        channels as f64 / join_secs
    );
    println!(
        "join reply latency ms (all sent at once): p50 {:.1} p99 {:.1} max {:.1}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!(
        "server RSS: {rss_idle} KiB idle, {rss_sockets} KiB with the sockets, {rss_joined} KiB with every channel joined"
    );
    println!(
        "per joined channel (rooms included): {per_channel:.2} KiB; per socket: {:.1} KiB",
        (rss_sockets.saturating_sub(rss_idle)) as f64 / a.sockets as f64
    );
    for (_, k) in &keep {
        k.abort();
    }
    // Closing a socket drops its read half here and its write half with the aborted task.
    drop(keep);
    net_tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_closed = rss_kib(pid);
    println!(
        "every socket closed: server RSS {rss_closed} KiB ({:+} KiB against the socket-free start; the allocator keeps some of what it was given)",
        rss_closed as i64 - rss_idle as i64
    );
}
