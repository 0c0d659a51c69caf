//! SFU benchmark through the real server: N rooms × M synthetic webrtc-rs peers join over the
//! Phoenix WebSocket (signalling included), publish opaque RTP (video 100 pkt/s × 1100 B and
//! audio 50 pkt/s × 100 B each) and receive everyone else's, relay-only through the
//! integrated TURN server, all on loopback.
//!
//! The server runs on its own tokio runtime ("sfu-rt" threads, plus the sans-IO plane's
//! "media-worker" threads when `VIDEOROOM_MEDIA_WORKERS` selects it) and the peers on another
//! ("cli-rt"), so the server's CPU (SFU, TURN, signalling) is read per thread from
//! `/proc/self/task/*/schedstat`. Latency is receive time minus the send time carried in the
//! payload (same clock); the reference is a plain loopback UDP socket pair on the client
//! runtime sampled during the same window.
//!
//! Publishers tick on a shared schedule (`--phase`): by default their 10 ms ticks are spread
//! evenly over the period, as independent browsers' would be; `lockstep` makes every publisher
//! send at the same instant (the worst case for the server's queue). Left to the join timing,
//! the phases were an accident of how long each join took (BENCHMARKS.md, "Where forwarding
//! latency goes").
//!
//! `run`: one configuration, bounded by a watchdog (60 s). `soak`: K cycles (or S seconds) of a
//! peer joining, publishing and leaving next to a resident peer, with RSS and fd counts;
//! `--hostile` mixes in what an outsider throws at the server (`support/hostile.rs`), and
//! `--check` turns the report into a verdict (exit 1 unless everything came back).

#[path = "support/floor.rs"]
mod floor;
#[path = "support/hostile.rs"]
mod hostile;
#[path = "support/load.rs"]
mod load;
#[path = "../tests/it/support/sfu_peer.rs"]
mod sfu_peer;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use load::{
    ms, pct, runtime, thread_cpu_ns, Phase, Schedule, SendNumbered, Shared, Tally, AUDIO_BYTES,
    VIDEO_BYTES,
};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use sfu_peer::{now_ns, start_media_server, Peer, PeerOptions, Signal, TAG_NUMBERED, TAG_PROBE};
use videoroom::server::{Server, ServerLimits};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N rooms × M peers, measured over a window after warm-up.
    Run {
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        #[arg(long, default_value_t = 4)]
        peers: usize,
        /// Measurement window in seconds.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Joins per second (across rooms).
        #[arg(long, default_value_t = 20.0)]
        join_rate: f64,
        /// When in the 10 ms period each publisher sends.
        #[arg(long, value_enum, default_value_t = Phase::Spread)]
        phase: Phase,
    },
    /// K join/publish/leave cycles next to one resident peer.
    Soak {
        #[arg(long, default_value_t = 200)]
        cycles: usize,
        /// Replace the resident peer with a fresh one every N cycles (0: never), to separate
        /// what a long-lived connection accumulates from what departed peers leave.
        #[arg(long, default_value_t = 0)]
        rotate_anchor: usize,
        /// Print live-object gauges every N cycles (0: only at the end).
        #[arg(long, default_value_t = 0)]
        report_every: usize,
        /// Run for this many seconds instead of a number of cycles.
        #[arg(long)]
        secs: Option<u64>,
        /// Mix in hostile traffic: malformed frames and media events, squatters, TURN abuse,
        /// slow HTTP connections.
        #[arg(long)]
        hostile: bool,
        /// Exit 1 unless, once everyone left, every live-object gauge is back to zero, the
        /// descriptors are back to where they started, and memory grew less than a bound.
        #[arg(long)]
        check: bool,
    },
}

const WATCHDOG: Duration = Duration::from_secs(60);

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

async fn start_server() -> Server {
    start_media_server(ServerLimits::for_peers(64)).await
}

/// What one peer's receiver saw.
#[derive(Default)]
struct Recv {
    publishers: BTreeSet<u32>,
    /// First packet from every publisher present at join, since the socket was opened.
    all_media_at: Option<Duration>,
    packets: u64,
    tally: Tally,
}

impl SendNumbered for sfu_peer::Local {
    fn send_numbered(&self, tag: u8, seq: u32, size: usize) -> impl Future<Output = bool> + Send {
        self.send(tag, seq, size)
    }
}

/// `peer`'s video and audio on the common schedule (see [`load::spawn_sender`]).
fn spawn_sender(peer: &Peer, shared: Arc<Shared>, first: Instant) {
    let video = peer.local(RtpCodecKind::Video).cloned();
    let audio = peer.local(RtpCodecKind::Audio).cloned();
    load::spawn_sender(video, audio, TAG_NUMBERED, shared, first);
}

/// Drains `peer`'s media into `recv`; `present` publishers were in the room at join.
fn spawn_receiver(
    mut media: net_tokio::sync::mpsc::UnboundedReceiver<sfu_peer::Rtp>,
    opened_at: Instant,
    present: usize,
    recv: Arc<Mutex<Recv>>,
    shared: Arc<Shared>,
) {
    net_tokio::spawn(async move {
        while let Some(rtp) = media.recv().await {
            let mut r = recv.lock().expect("recv");
            r.packets += 1;
            if r.publishers.insert(rtp.publisher_ssrc)
                && r.all_media_at.is_none()
                && present > 0
                && r.publishers.len() >= 2 * present
            {
                r.all_media_at = Some(opened_at.elapsed());
            }
            if rtp.tag == TAG_NUMBERED {
                let (ssrc, seq, sent, recv) =
                    (rtp.publisher_ssrc, rtp.seq, rtp.sent_ns, rtp.recv_ns);
                r.tally.numbered(ssrc, seq, sent, recv, &shared);
            }
        }
    });
}

/// Loopback UDP one-way latency at `rate` pkt/s of `VIDEO_BYTES` on the client runtime, until
/// `stop`: the floor the SFU path's latency is compared with.
async fn udp_reference(shared: Arc<Shared>, rate: u64) -> Vec<u64> {
    let rx = net_tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap();
    let tx = net_tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap();
    tx.connect(rx.local_addr().unwrap()).await.unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&out);
    let stop = Arc::clone(&shared);
    let reader = net_tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok(n) = rx.recv(&mut buf).await {
            if n >= 8 {
                let sent = u64::from_be_bytes(buf[..8].try_into().unwrap());
                if stop.measuring.load(Ordering::Relaxed) {
                    sink.lock().unwrap().push(now_ns().saturating_sub(sent));
                }
            }
        }
    });
    let mut tick = net_tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut pkt = vec![0u8; VIDEO_BYTES];
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        pkt[..8].copy_from_slice(&now_ns().to_be_bytes());
        let _ = tx.send(&pkt).await;
    }
    reader.abort();
    let v = out.lock().unwrap().clone();
    v
}

/// CPU of every server thread: its runtime's and the media workers'.
fn server_cpu_ns() -> u64 {
    thread_cpu_ns("sfu-rt") + thread_cpu_ns("media-worker")
}

fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("watchdog: configuration exceeded {limit:?}, aborting");
        std::process::exit(2);
    });
}

fn run(rooms: usize, peers: usize, secs: u64, join_rate: f64, phase: Phase) {
    watchdog(WATCHDOG);
    let sfu = runtime("sfu-rt");
    let cli = runtime("cli-rt");
    let server = sfu.block_on(start_server());
    let addr = server.local_addr();
    let rss0 = rss_kib();
    let shared = Shared::new();
    let total = rooms * peers;
    let schedule = Schedule::new(phase, total);
    let report = cli.block_on(async {
        // Joins in round-robin over rooms at `join_rate`; each peer starts publishing at once.
        let mut all = Vec::new();
        let gap = Duration::from_secs_f64(1.0 / join_rate.max(0.1));
        let mut tick = net_tokio::time::interval(gap);
        for i in 0..peers {
            for r in 0..rooms {
                tick.tick().await;
                let opts = PeerOptions {
                    room: format!("bench{r}"),
                    name: format!("p{r}-{i}"),
                    audio: true,
                    video: true,
                };
                let mut peer = Peer::join(addr, opts).await.expect("join");
                let recv = Arc::new(Mutex::new(Recv::default()));
                let media = std::mem::replace(
                    &mut peer.media,
                    net_tokio::sync::mpsc::unbounded_channel().1,
                );
                spawn_receiver(
                    media,
                    peer.opened_at,
                    peer.others_at_join.len(),
                    Arc::clone(&recv),
                    Arc::clone(&shared),
                );
                spawn_sender(&peer, Arc::clone(&shared), schedule.first_tick(all.len()));
                all.push((peer, recv));
            }
        }
        let joined_at = Instant::now();
        // Everyone receives everyone else in their room before the clock starts.
        let want = 2 * (peers - 1);
        loop {
            let ready = all
                .iter()
                .filter(|(_, r)| r.lock().unwrap().publishers.len() >= want)
                .count();
            if ready == total {
                break;
            }
            if joined_at.elapsed() > Duration::from_secs(20) {
                eprintln!("only {ready}/{total} peers receive everyone; measuring anyway");
                break;
            }
            net_tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Signalling errors (an `error` event or a failed negotiation) make the run invalid.
        let mut errors = 0;
        for (p, _) in all.iter_mut() {
            while let Ok(s) = p.signals.try_recv() {
                if let Signal::Error(e) = s {
                    eprintln!("{}: {e}", p.id);
                    errors += 1;
                }
            }
        }
        net_tokio::time::sleep(Duration::from_secs(2)).await; // warm-up
        let reference = net_tokio::spawn(udp_reference(Arc::clone(&shared), 200));
        let rss1 = rss_kib();
        let sfu0 = server_cpu_ns();
        let cli0 = thread_cpu_ns("cli-rt");
        let pk0: u64 = all.iter().map(|(_, r)| r.lock().unwrap().packets).sum();
        let fab0 = server.fabric_stats().unwrap_or_default();
        let t0 = Instant::now();
        shared.measuring.store(true, Ordering::Relaxed);
        net_tokio::time::sleep(Duration::from_secs(secs)).await;
        shared.measuring.store(false, Ordering::Relaxed);
        let window = t0.elapsed();
        let sfu1 = server_cpu_ns();
        let cli1 = thread_cpu_ns("cli-rt");
        let pk1: u64 = all.iter().map(|(_, r)| r.lock().unwrap().packets).sum();
        let fab1 = server.fabric_stats().unwrap_or_default();
        shared.stop.store(true, Ordering::Relaxed);
        let reference = reference.await.unwrap();

        let mut lat = Vec::new();
        let (mut lost, mut reordered) = (0, 0);
        let mut join_connected = Vec::new();
        let mut join_media = Vec::new();
        for (p, r) in &all {
            let r = r.lock().unwrap();
            lat.extend_from_slice(&r.tally.latencies_ns);
            lost += r.tally.lost;
            reordered += r.tally.reordered;
            join_connected.push(p.join_time.as_nanos() as u64);
            if let Some(t) = r.all_media_at {
                join_media.push(t.as_nanos() as u64);
            }
        }
        lat.sort_unstable();
        join_connected.sort_unstable();
        join_media.sort_unstable();
        let mut reference = reference;
        reference.sort_unstable();
        let fwd = (pk1 - pk0) as f64 / window.as_secs_f64();
        let ideal = (rooms * peers * (peers - 1) * 150) as f64;
        let sfu_cpu = (sfu1 - sfu0) as f64;
        let cli_cpu = (cli1 - cli0) as f64;
        let per_pkt_us = sfu_cpu / 1e3 / (pk1 - pk0).max(1) as f64;
        let (l50, l99, l999) = (pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 0.999));
        let (u50, u99) = (pct(&reference, 0.5), pct(&reference, 0.99));
        let mut s = String::new();
        use std::fmt::Write as _;
        let _ = writeln!(s, "config: rooms={rooms} peers/room={peers} phase={phase:?} window={:.1}s", window.as_secs_f64());
        let _ = writeln!(s, "forwarded pkt/s (received by clients): {fwd:.0} (ideal {ideal:.0}); lost {lost} ({:.4} %), reordered {reordered}, signalling errors {errors}",
            100.0 * lost as f64 / (lat.len() as f64 + lost as f64).max(1.0));
        let _ = writeln!(s, "server CPU: {:.1} % of a core; {per_pkt_us:.2} µs per forwarded packet (client threads {:.1} %)",
            100.0 * sfu_cpu / window.as_nanos() as f64, 100.0 * cli_cpu / window.as_nanos() as f64);
        let _ = writeln!(s, "in-process TURN hand-off: {:.0} datagrams/s, {} dropped (inbox full)",
            (fab1.delivered - fab0.delivered) as f64 / window.as_secs_f64(), fab1.dropped - fab0.dropped);
        let _ = writeln!(s, "latency send→receive ms: p50 {} p99 {} p99.9 {} (n={})", ms(l50), ms(l99), ms(l999), lat.len());
        let _ = writeln!(s, "reference loopback UDP ms: p50 {} p99 {} (n={}); ratio p50 {:.1}x p99 {:.1}x",
            ms(u50), ms(u99), reference.len(), l50 / u50, l99 / u99);
        let _ = writeln!(s, "join socket-open→connected ms: p50 {} p99 {} (n={})",
            ms(pct(&join_connected, 0.5)), ms(pct(&join_connected, 0.99)), join_connected.len());
        let _ = writeln!(s, "join socket-open→media from every present publisher ms: p50 {} p99 {} (n={})",
            ms(pct(&join_media, 0.5)), ms(pct(&join_media, 0.99)), join_media.len());
        let _ = writeln!(s, "RSS: {} MiB before joins, {} MiB with {total} peers in media: {:.2} MiB per peer (server + client side, whole process)",
            rss0 / 1024, rss1 / 1024, (rss1.saturating_sub(rss0)) as f64 / 1024.0 / total as f64);
        for (p, _) in all {
            p.leave().await;
        }
        (s, per_pkt_us, fwd)
    });
    // With the peers gone, so the two do not share the cores.
    let (report, per_pkt_us, fwd) = report;
    let floor = floor::floor_us(fwd, (secs as f64).min(5.0));
    let report = format!(
        "{report}floor (SRTP-protect + sendmmsg on loopback, one thread, same rate): {floor:.2} µs per packet; server ÷ floor {:.1}x\n",
        per_pkt_us / floor
    );
    print!("{report}");
    sfu.block_on(server.shutdown());
    drop(cli);
    sfu.shutdown_timeout(Duration::from_secs(2));
}

/// glibc only: returns freed heap pages to the OS, so RSS after it is what is still allocated
/// (plus fragmentation), not what the allocator keeps for reuse.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim only walks glibc's own arenas.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// Live objects and process gauges at one point of the soak.
async fn gauges(server: &Server) -> String {
    let live = videoroom::engine::webrtc::live_objects();
    format!(
        "RSS {} KiB, fds {}, threads {}; plane peers {}, server connections {}, fanouts {}, \
         TURN allocations {}, fabric endpoints {}, client connections {}",
        rss_kib(),
        fd_count(),
        thread_count(),
        live.peers,
        live.connections,
        live.fanouts,
        server.turn_allocations().await,
        server.fabric_stats().map_or(0, |f| f.endpoints),
        sfu_peer::LIVE_CLIENT_CONNECTIONS.load(Ordering::Relaxed),
    )
}

#[derive(Clone, Copy)]
enum SoakLength {
    Cycles(usize),
    Secs(u64),
}

#[derive(Clone, Copy)]
struct SoakPlan {
    length: SoakLength,
    rotate_anchor: usize,
    report_every: usize,
    hostile: bool,
}

/// Live objects the server holds for peers, and the synthetic clients' connections (they
/// share the process's descriptors); back to their level before any peer once everyone left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Live {
    client_connections: usize,
    plane_peers: usize,
    connections: usize,
    fanouts: usize,
    turn_allocations: usize,
    fabric_endpoints: usize,
    http_connections: usize,
}

async fn live(server: &Server) -> Live {
    let l = videoroom::engine::webrtc::live_objects();
    Live {
        client_connections: sfu_peer::LIVE_CLIENT_CONNECTIONS.load(Ordering::Relaxed),
        plane_peers: l.peers,
        connections: l.connections,
        fanouts: l.fanouts,
        turn_allocations: server.turn_allocations().await,
        fabric_endpoints: server.fabric_stats().map_or(0, |f| f.endpoints),
        http_connections: server.open_connections(),
    }
}

/// A soak's memory may grow by at most this much per cycle after warm-up (a visitor measured
/// 4.7 KiB once m-lines were recycled), and the process's RSS once everyone left (after
/// `malloc_trim`) by at most this much over what it was before the first peer.
const SOAK_SLOPE_KIB: f64 = 16.0;
const SOAK_RSS_GROWTH_KIB: u64 = 48 * 1024;

/// Runs the soak; `Err` says what did not come back.
fn soak(plan: SoakPlan) -> Result<(), String> {
    // A cycle is about one join-to-media time (~1.2 s here); the watchdog scales with the plan.
    let budget = match plan.length {
        SoakLength::Cycles(c) => Duration::from_secs(3) * c as u32,
        SoakLength::Secs(s) => Duration::from_secs(s),
    };
    watchdog(Duration::from_secs(90) + budget + budget / 2);
    let sfu = runtime("sfu-rt");
    let cli = runtime("cli-rt");
    let server = sfu.block_on(start_server());
    let addr = server.local_addr();
    let opts = |name: String| PeerOptions {
        room: "soak".into(),
        name,
        audio: true,
        video: true,
    };
    let verdict = cli.block_on(async {
        let shared = Shared::new();
        trim_heap();
        let rss_before = rss_kib();
        let fds_before = fd_count();
        // What the server holds for no peer at all (the media workers' sockets): the level
        // everything must come back to.
        let idle = live(&server).await;
        println!("before any peer: {}", gauges(&server).await);
        let hostile = plan.hostile.then(|| {
            let turn = server.turn_addr().expect("the real media plane");
            hostile::spawn_all(addr, turn)
        });
        let mut anchor = Peer::join(addr, opts("anchor".into())).await.expect("join");
        let mut anchor_stop = Shared::new();
        spawn_sender(&anchor, Arc::clone(&anchor_stop), Instant::now());
        let start = (rss_kib(), fd_count(), thread_count());
        let t0 = Instant::now();
        let (warmup_cycles, warmup_time) = match plan.length {
            SoakLength::Cycles(c) => ((c / 10).clamp(5, c), Duration::MAX),
            // Allocator and runtime caches take a while to reach their working size; the slope
            // is read over the last two thirds.
            SoakLength::Secs(s) => (usize::MAX, Duration::from_secs(s) / 3),
        };
        let mut after_warmup: Option<((u64, usize, usize), usize)> = None;
        let mut k = 0usize;
        loop {
            let more = match plan.length {
                SoakLength::Cycles(c) => k < c,
                SoakLength::Secs(s) => t0.elapsed() < Duration::from_secs(s),
            };
            if !more {
                break;
            }
            if plan.rotate_anchor > 0 && k > 0 && k.is_multiple_of(plan.rotate_anchor) {
                anchor_stop.stop.store(true, Ordering::Relaxed);
                let old = std::mem::replace(
                    &mut anchor,
                    Peer::join(addr, opts(format!("anchor{k}")))
                        .await
                        .expect("join"),
                );
                old.leave().await;
                anchor_stop = Shared::new();
                spawn_sender(&anchor, Arc::clone(&anchor_stop), Instant::now());
            }
            let tc = Instant::now();
            let mut p = Peer::join(addr, opts(format!("c{k}"))).await.expect("join");
            // Publishing and receiving: the newcomer gets the anchor's media.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut seen = BTreeSet::new();
            let mut n = 0u32;
            while seen.len() < 2 {
                if Instant::now() >= deadline {
                    // What each side was told, for the post-mortem.
                    while let Ok(s) = anchor.signals.try_recv() {
                        eprintln!("cycle {k}: anchor signal {s:?}");
                    }
                    while let Ok(s) = p.signals.try_recv() {
                        eprintln!("cycle {k}: newcomer signal {s:?}");
                    }
                    eprintln!("cycle {k}: {}", gauges(&server).await);
                    panic!("cycle {k}: no media from the anchor");
                }
                for l in &p.locals {
                    l.send(TAG_PROBE, n, AUDIO_BYTES).await;
                }
                n += 1;
                if let Ok(Some(rtp)) =
                    net_tokio::time::timeout(Duration::from_millis(10), p.media.recv()).await
                {
                    seen.insert(rtp.publisher_ssrc);
                }
            }
            let id = p.id.clone();
            p.leave().await;
            anchor
                .wait_for(Duration::from_secs(10), |s| match s {
                    Signal::EndpointRemoved(e) if *e == id => Some(()),
                    Signal::Error(e) => {
                        eprintln!("cycle {k}: anchor got an error: {e}");
                        None
                    }
                    _ => None,
                })
                .await
                .unwrap_or_else(|| panic!("cycle {k}: anchor never saw the leave"));
            while anchor.media.try_recv().is_ok() {}
            k += 1;
            if after_warmup.is_none() && (k >= warmup_cycles || t0.elapsed() >= warmup_time) {
                after_warmup = Some(((rss_kib(), fd_count(), thread_count()), k));
            }
            if plan.report_every > 0 && k.is_multiple_of(plan.report_every) {
                println!(
                    "cycle {:>4} ({:>5} ms, {:>4.0} s): {}",
                    k,
                    tc.elapsed().as_millis(),
                    t0.elapsed().as_secs_f64(),
                    gauges(&server).await
                );
            }
        }
        let cycles = k;
        let end = (rss_kib(), fd_count(), thread_count());
        let (warm, warm_k) = after_warmup.unwrap_or((start, 0));
        let per = (end.0 as f64 - warm.0 as f64) / (cycles - warm_k).max(1) as f64;
        println!(
            "soak: {cycles} join/publish/leave cycles in {:.1}s{}",
            t0.elapsed().as_secs_f64(),
            if plan.hostile { ", with hostile traffic" } else { "" }
        );
        if let Some(h) = &hostile {
            println!("  {}", h.counts);
        }
        println!(
            "  start:         RSS {} KiB, fds {}, threads {}",
            start.0, start.1, start.2
        );
        println!(
            "  after {warm_k:>4}:    RSS {} KiB, fds {}, threads {}",
            warm.0, warm.1, warm.2
        );
        println!(
            "  end:           RSS {} KiB, fds {}, threads {}",
            end.0, end.1, end.2
        );
        println!("  RSS slope after warm-up: {per:.1} KiB per cycle");
        println!("  with the resident: {}", gauges(&server).await);
        shared.stop.store(true, Ordering::Relaxed);
        anchor_stop.stop.store(true, Ordering::Relaxed);
        if let Some(h) = hostile {
            h.stop().await;
        }
        anchor.leave().await;
        // Teardown is asynchronous (the media workers' queues, TURN revocation, the hostile
        // workers' last connections and the squatters' grace): wait for it, bounded.
        let settle = Instant::now() + Duration::from_secs(30);
        let mut gone = live(&server).await;
        while gone != idle && Instant::now() < settle {
            net_tokio::time::sleep(Duration::from_millis(100)).await;
            gone = live(&server).await;
        }
        println!("  everyone left:     {}", gauges(&server).await);
        trim_heap();
        let (rss_after, fds_after) = (rss_kib(), fd_count());
        println!(
            "  after malloc_trim: RSS {rss_after} KiB, fds {fds_after} (before any peer: {rss_before} KiB, {fds_before} fds)"
        );
        let mut problems = Vec::new();
        // Nothing the clients did may have made a process panic.
        use videoroom::metrics::Process;
        let panic = videoroom::rt::ExitReason::Crashed(String::new());
        for kind in [Process::Room, Process::Channel, Process::Socket] {
            let n = server.app().metrics.crashes(kind, &panic);
            if n > 0 {
                problems.push(format!("{n} {kind:?} processes panicked"));
            }
        }
        if gone != idle {
            problems.push(format!(
                "live objects remain after everyone left: {gone:?} (before any peer: {idle:?})"
            ));
        }
        if fds_after > fds_before {
            problems.push(format!(
                "descriptors: {fds_before} before any peer, {fds_after} after everyone left"
            ));
        }
        if per > SOAK_SLOPE_KIB {
            problems.push(format!(
                "RSS grew {per:.1} KiB per cycle after warm-up (bound {SOAK_SLOPE_KIB})"
            ));
        }
        if rss_after > rss_before + SOAK_RSS_GROWTH_KIB {
            problems.push(format!(
                "RSS after everyone left is {} KiB over the start (bound {SOAK_RSS_GROWTH_KIB})",
                rss_after - rss_before
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    });
    sfu.block_on(server.shutdown());
    drop(cli);
    sfu.shutdown_timeout(Duration::from_secs(2));
    verdict
}

fn main() {
    match Cli::parse().mode {
        Mode::Run {
            rooms,
            peers,
            secs,
            join_rate,
            phase,
        } => run(rooms, peers.max(2), secs, join_rate, phase),
        Mode::Soak {
            cycles,
            rotate_anchor,
            report_every,
            secs,
            hostile,
            check,
        } => {
            let plan = SoakPlan {
                length: match secs {
                    Some(s) => SoakLength::Secs(s.max(1)),
                    None => SoakLength::Cycles(cycles.max(1)),
                },
                rotate_anchor,
                report_every,
                hostile,
            };
            let verdict = soak(plan);
            if check {
                if let Err(why) = verdict {
                    eprintln!("soak check FAILED: {why}");
                    std::process::exit(1);
                }
                println!("soak check passed");
            }
        }
    }
}
