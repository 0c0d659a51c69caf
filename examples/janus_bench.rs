//! The SFU benchmark's load (`examples/sfu_bench.rs`) against Janus's VideoRoom plugin, so
//! Janus's CPU per forwarded packet, loss and latency can be set next to our server's.
//!
//! What this example owns: a private network namespace, entered with `unshare(2)` before any
//! thread starts (Janus's ICE, libnice, skips loopback interfaces, so Janus gathers on a veth
//! pair `jv0` 10.213.0.1 / `jv1` 10.213.0.2 that exists only inside it: nothing leaves the
//! namespace), a temporary Janus configuration (only the VideoRoom plugin and the HTTP
//! transport, on 127.0.0.1, no session timeout, rooms 1..=R configured in the plugin's file)
//! and the Janus process it starts from Debian's package (`scripts/setup-janus.sh`).
//!
//! The load is the SFU benchmark's: R rooms × M peers, each publishing video (100 pkt/s ×
//! 1100 B, VP8 payload type) and audio (50 pkt/s × 100 B, Opus) of opaque RTP carrying
//! `[tag][publisher ssrc][sequence][send time]`, on publisher ticks spread over the 10 ms
//! period, and receiving everyone else in its room through one multistream subscriber
//! connection. Unlike the SFU benchmark, where each newcomer joins and the server renegotiates,
//! every peer publishes first and then subscribes once to all the others: the steady state
//! measured is the same, join times are not measured. Janus forwards the opaque "VP8" payloads
//! as they are (1.1.2 needs no valid VP8 payload descriptor for this), so `--prefix` is empty
//! by default. The synthetic peers run on one tokio worker ("cli-rt") in this process; Janus's
//! CPU is the sum of its threads' `/proc/<pid>/task/*/schedstat` over the window. A watchdog
//! bounds the run (120 s); Janus dies with this process (`PR_SET_PDEATHSIG`).
//!
//! `cargo run --release --example janus_bench -- --rooms 1 --peers 8 --secs 10` (as root).
//! Debugging: `--keep` keeps Janus's directory (janus.log, janus.out), `--janus-debug 7` makes
//! it verbose, `JANUS_BENCH_JANUS_ARGS="-l"` adds Janus flags (`-l`: libnice's debugging, in
//! janus.out) and `RUST_LOG=rtc_ice=trace` shows the client side's ICE.

#[path = "support/janus_peer.rs"]
mod janus_peer;
#[path = "support/load.rs"]
mod load;

use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use janus_peer::{Publisher, Session, Subscriber, TAG_NUMBERED};
use load::{ms, pct, runtime, thread_cpu_ns, Phase, Schedule, SendNumbered, Shared, Tally};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

#[derive(Parser)]
#[command(about = "The SFU benchmark's synthetic load against Janus's VideoRoom plugin")]
struct Cli {
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    #[arg(long, default_value_t = 4)]
    peers: usize,
    /// Measurement window in seconds.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// When in the 10 ms period each publisher sends.
    #[arg(long, value_enum, default_value_t = Phase::Spread)]
    phase: Phase,
    /// Janus `event_loops` (0: Janus's default, one loop thread per handle).
    #[arg(long, default_value_t = 0)]
    event_loops: usize,
    /// Janus's log level (`-d`); 4 is its default, higher levels are for debugging only.
    #[arg(long, default_value_t = 4)]
    janus_debug: u8,
    /// Bytes before the benchmark header in every payload (hex, e.g. `10` for a one-byte VP8
    /// payload descriptor with the start-of-partition bit); none by default.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Keep the temporary Janus directory (configuration and log).
    #[arg(long)]
    keep: bool,
}

const WATCHDOG: Duration = Duration::from_secs(120);
const JANUS_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
const HTTP_PORT: u16 = 8088;

/// Janus's pid, for the watchdog and the exit paths (0: not running).
static JANUS_PID: AtomicI32 = AtomicI32::new(0);

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("janus_bench: {msg}");
    kill_janus();
    std::process::exit(1);
}

fn kill_janus() {
    let pid = JANUS_PID.swap(0, Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) on the pid of the child this process spawned and has not reaped.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("janus_bench: watchdog: the run exceeded {limit:?}, aborting");
        kill_janus();
        std::process::exit(2);
    });
}

/// Moves this (still single-threaded) process into a new network namespace of its own.
fn enter_namespace() {
    // SAFETY: unshare(2) with a flag only; called before any thread exists (required for
    // CLONE_NEWNET to apply to the whole process).
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        fail(format!(
            "cannot create a network namespace ({e}): run as root (CAP_SYS_ADMIN); Janus needs a \
             non-loopback interface, which the benchmark makes inside a private namespace"
        ));
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| fail(format!("cannot run `ip` (iproute2): {e}")));
    if !out.status.success() {
        fail(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
}

/// `lo` up (Janus's HTTP transport), and the veth pair Janus's ICE gathers on.
fn setup_network() {
    ip(&["link", "set", "lo", "up"]);
    ip(&["link", "add", "jv0", "type", "veth", "peer", "name", "jv1"]);
    ip(&["addr", "add", &format!("{JANUS_IP}/24"), "dev", "jv0"]);
    ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "jv1"]);
    ip(&["link", "set", "jv0", "up"]);
    ip(&["link", "set", "jv1", "up"]);
    // Janus (libnice) sends through jv0 itself rather than the local route (jv1's receive
    // counter carries the forwarded media), so its packets arrive on jv1 from an address of
    // this same namespace, which the kernel drops as martian unless the interfaces accept
    // local sources: without this, ICE fails. These sysctls belong to the namespace.
    for conf in ["all", "default", "jv0", "jv1"] {
        for (key, value) in [("accept_local", "1"), ("rp_filter", "0")] {
            let path = format!("/proc/sys/net/ipv4/conf/{conf}/{key}");
            if let Err(e) = std::fs::write(&path, value) {
                fail(format!("writing {path}: {e}"));
            }
        }
    }
}

/// Deletes the veth pair (it would vanish with the namespace anyway).
fn teardown_network() {
    let _ = Command::new("ip").args(["link", "del", "jv0"]).output();
}

/// Debian's Janus library directory (multiarch), holding plugins/ and transports/.
fn janus_lib_dir() -> Option<PathBuf> {
    let mut dirs = vec![PathBuf::from("/usr/lib/janus")];
    if let Ok(rd) = std::fs::read_dir("/usr/lib") {
        dirs.extend(rd.flatten().map(|e| e.path().join("janus")));
    }
    dirs.into_iter().find(|d| {
        d.join("plugins/libjanus_videoroom.so").exists()
            && d.join("transports/libjanus_http.so").exists()
    })
}

/// Writes Janus's configuration into `dir`: the folders Janus loads modules from hold only the
/// VideoRoom plugin and the HTTP transport (symlinks), so nothing else runs or costs CPU.
fn write_config(dir: &Path, lib: &Path, cli: &Cli) -> std::io::Result<()> {
    for sub in ["plugins", "transports", "none"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::os::unix::fs::symlink(
        lib.join("plugins/libjanus_videoroom.so"),
        dir.join("plugins/libjanus_videoroom.so"),
    )?;
    std::os::unix::fs::symlink(
        lib.join("transports/libjanus_http.so"),
        dir.join("transports/libjanus_http.so"),
    )?;
    let d = dir.display();
    let loops = if cli.event_loops > 0 {
        format!("\tevent_loops = {}\n", cli.event_loops)
    } else {
        String::new()
    };
    // `interface` is the address Janus writes into its SDP; session_timeout = 0 spares the
    // keepalives (the long-poll does not count as activity for every handle).
    std::fs::write(
        dir.join("janus.jcfg"),
        format!(
            "general: {{\n\tconfigs_folder = \"{d}\"\n\tplugins_folder = \"{d}/plugins\"\n\
             \ttransports_folder = \"{d}/transports\"\n\tevents_folder = \"{d}/none\"\n\
             \tloggers_folder = \"{d}/none\"\n\tinterface = \"{JANUS_IP}\"\n\
             \tsession_timeout = 0\n{loops}}}\n\
             media: {{\n}}\n\
             nat: {{\n\tice_enforce_list = \"jv0\"\n}}\n"
        ),
    )?;
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            "general: {{\n\tjson = \"plain\"\n\tbase_path = \"/janus\"\n\thttp = true\n\
             \tport = {HTTP_PORT}\n\tip = \"127.0.0.1\"\n\thttps = false\n}}\n\
             admin: {{\n\tadmin_http = false\n\tadmin_https = false\n}}\n"
        ),
    )?;
    // Rooms 1..=R: room for M publishers, no bitrate cap (REMB), no periodic keyframe requests,
    // the codecs the synthetic peers send.
    let mut rooms = String::from("general: {\n}\n");
    for r in 1..=cli.rooms {
        let _ = write!(
            rooms,
            "room-{r}: {{\n\tdescription = \"bench {r}\"\n\tpublishers = {}\n\tbitrate = 0\n\
             \tfir_freq = 0\n\taudiocodec = \"opus\"\n\tvideocodec = \"vp8\"\n}}\n",
            cli.peers
        );
    }
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), rooms)
}

fn start_janus(dir: &Path, debug: u8) -> Child {
    let log = dir.join("janus.log");
    // What Janus prints besides its log (libnice's debugging, with -l) goes to janus.out.
    let out = std::fs::File::create(dir.join("janus.out"))
        .unwrap_or_else(|e| fail(format!("creating janus.out: {e}")));
    let mut cmd = Command::new("janus");
    cmd.arg("-F")
        .arg(dir)
        .arg("-C")
        .arg(dir.join("janus.jcfg"))
        .arg("-L")
        .arg(&log)
        .args(["-N", "-o", "-d", &debug.to_string()])
        .args(
            std::env::var("JANUS_BENCH_JANUS_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap_or_else(|e| fail(e)))
        .stderr(out);
    // SAFETY: prctl only, async-signal-safe, between fork and exec: Janus gets SIGKILL when the
    // thread that spawned it (this main thread) dies, so no run leaves a Janus behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap_or_else(|e| {
        fail(format!(
            "cannot start janus ({e}): run scripts/setup-janus.sh"
        ))
    });
    JANUS_PID.store(child.id() as i32, Ordering::SeqCst);
    child
}

fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("janus.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// CPU nanoseconds consumed so far by every thread of `pid` (threads that exited are lost, so
/// read it over windows where the set is stable).
fn task_cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// utime + stime of `pid` in nanoseconds (clock-tick resolution): a cross-check.
fn stat_cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    f.get(11)
        .zip(f.get(12))
        .map_or(0, |(u, s)| (u + s) * 1_000_000_000 / hz)
}

fn proc_field_kib(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.is_ascii() || !s.len().is_multiple_of(2) {
        return Err(format!(
            "--prefix {s:?}: expected an even number of hex digits"
        ));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("--prefix {s:?}: {e}")))
        .collect()
}

/// What one peer's receiver saw.
#[derive(Default)]
struct Recv {
    packets: u64,
    tally: Tally,
}

impl SendNumbered for janus_peer::Local {
    fn send_numbered(&self, tag: u8, seq: u32, size: usize) -> impl Future<Output = bool> + Send {
        self.send(tag, seq, size)
    }
}

fn spawn_receiver(
    mut media: net_tokio::sync::mpsc::UnboundedReceiver<janus_peer::Rtp>,
    recv: Arc<Mutex<Recv>>,
    shared: Arc<Shared>,
) {
    net_tokio::spawn(async move {
        while let Some(rtp) = media.recv().await {
            let mut r = recv.lock().expect("recv");
            r.packets += 1;
            if rtp.tag == TAG_NUMBERED {
                let (ssrc, seq, sent, recv) =
                    (rtp.publisher_ssrc, rtp.seq, rtp.sent_ns, rtp.recv_ns);
                r.tally.numbered(ssrc, seq, sent, recv, &shared);
            }
        }
    });
}

/// `p`'s video and audio on the common schedule (see [`load::spawn_sender`]).
fn spawn_sender(p: &Publisher, shared: Arc<Shared>, first: Instant) {
    let video = p.local(RtpCodecKind::Video).cloned();
    let audio = p.local(RtpCodecKind::Audio).cloned();
    load::spawn_sender(video, audio, TAG_NUMBERED, shared, first);
}

/// One peer: its session, publisher and subscriber.
struct PeerState {
    session: Session,
    publisher: Publisher,
    subscriber: Option<Subscriber>,
    recv: Arc<Mutex<Recv>>,
}

async fn bench(cli: &Cli, janus_pid: u32, prefix: Vec<u8>) -> Result<String, String> {
    let api = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), HTTP_PORT);
    let client_ip = IpAddr::V4(CLIENT_IP);
    let shared = Shared::new();
    let total = cli.rooms * cli.peers;
    let schedule = Schedule::new(cli.phase, total);
    let rss0 = proc_field_kib(&format!("/proc/{janus_pid}/status"), "VmRSS:");
    // Every peer publishes first (each starts sending at once on its slot of the schedule)...
    let t_join = Instant::now();
    let mut rooms: Vec<Vec<PeerState>> = Vec::new();
    for r in 0..cli.rooms {
        let mut peers = Vec::new();
        for i in 0..cli.peers {
            let session = Session::create(api).await?;
            let name = format!("p{r}-{i}");
            let publisher = Publisher::join(&session, r as u64 + 1, &name, client_ip, &prefix)
                .await
                .map_err(|e| format!("{name} publish: {e}"))?;
            let n = rooms.len() * cli.peers + peers.len();
            spawn_sender(&publisher, Arc::clone(&shared), schedule.first_tick(n));
            peers.push(PeerState {
                session,
                publisher,
                subscriber: None,
                recv: Arc::default(),
            });
        }
        rooms.push(peers);
    }
    // ...then subscribes to every other feed of its room on one connection.
    for (r, peers) in rooms.iter_mut().enumerate() {
        let feeds: Vec<u64> = peers.iter().map(|p| p.publisher.feed).collect();
        for p in peers.iter_mut() {
            let others: Vec<u64> = feeds
                .iter()
                .copied()
                .filter(|f| *f != p.publisher.feed)
                .collect();
            let (tx, rx) = net_tokio::sync::mpsc::unbounded_channel();
            spawn_receiver(rx, Arc::clone(&p.recv), Arc::clone(&shared));
            let skip = prefix.len();
            let sub = Subscriber::join(&p.session, r as u64 + 1, &others, client_ip, tx, skip)
                .await
                .map_err(|e| format!("subscribe in room {}: {e}", r + 1))?;
            p.subscriber = Some(sub);
        }
    }
    let join_secs = t_join.elapsed().as_secs_f64();
    let all: Vec<&PeerState> = rooms.iter().flatten().collect();
    // Everyone receives from every other publisher of its room (audio and video) before the
    // clock starts.
    let want = cli.peers - 1;
    let waited = Instant::now();
    loop {
        let ready = all
            .iter()
            .filter(|p| p.recv.lock().unwrap().tally.publishers() >= 2 * want)
            .count();
        if ready == total {
            break;
        }
        if waited.elapsed() > Duration::from_secs(20) {
            let got: u64 = all.iter().map(|p| p.recv.lock().unwrap().packets).sum();
            if got == 0 {
                return Err(
                    "no media reached any subscriber within 20 s (see the Janus log)".into(),
                );
            }
            eprintln!("only {ready}/{total} peers receive everyone; measuring anyway");
            break;
        }
        net_tokio::time::sleep(Duration::from_millis(50)).await;
    }
    net_tokio::time::sleep(Duration::from_secs(2)).await; // warm-up
    let load0 = loadavg();
    let rss1 = proc_field_kib(&format!("/proc/{janus_pid}/status"), "VmRSS:");
    let threads = std::fs::read_dir(format!("/proc/{janus_pid}/task")).map_or(0, |d| d.count());
    let (j0, s0, c0) = (
        task_cpu_ns(janus_pid),
        stat_cpu_ns(janus_pid),
        thread_cpu_ns("cli-rt"),
    );
    let pk0: u64 = all.iter().map(|p| p.recv.lock().unwrap().packets).sum();
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    net_tokio::time::sleep(Duration::from_secs(cli.secs)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let window = t0.elapsed();
    let (j1, s1, c1) = (
        task_cpu_ns(janus_pid),
        stat_cpu_ns(janus_pid),
        thread_cpu_ns("cli-rt"),
    );
    let pk1: u64 = all.iter().map(|p| p.recv.lock().unwrap().packets).sum();
    let load1 = loadavg();
    shared.stop.store(true, Ordering::Relaxed);

    let mut lat = Vec::new();
    let (mut lost, mut reordered) = (0, 0);
    for p in &all {
        let r = p.recv.lock().unwrap();
        lat.extend_from_slice(&r.tally.latencies_ns);
        lost += r.tally.lost;
        reordered += r.tally.reordered;
    }
    lat.sort_unstable();
    let secs = window.as_secs_f64();
    let fwd = (pk1 - pk0) as f64 / secs;
    let ideal = (cli.rooms * cli.peers * (cli.peers - 1) * 150) as f64;
    let janus_cpu = (j1 - j0) as f64;
    let per_pkt_us = janus_cpu / 1e3 / (pk1 - pk0).max(1) as f64;
    let cpu_pct = 100.0 * janus_cpu / window.as_nanos() as f64;
    let stat_pct = 100.0 * (s1 - s0) as f64 / window.as_nanos() as f64;
    let loss_pct = 100.0 * lost as f64 / (lat.len() as f64 + lost as f64).max(1.0);
    let (l50, l99, l999) = (pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 0.999));
    let mut s = String::new();
    let _ = writeln!(s, "config: Janus VideoRoom, rooms={} peers/room={} phase={:?} window={secs:.1}s event_loops={} prefix={:?}",
        cli.rooms, cli.peers, cli.phase, if cli.event_loops == 0 { "per-handle".to_owned() } else { cli.event_loops.to_string() }, cli.prefix);
    let _ = writeln!(
        s,
        "joins: {total} publishers + {total} subscribers in {join_secs:.1}s"
    );
    let _ = writeln!(s, "forwarded pkt/s (received by clients): {fwd:.0} (ideal {ideal:.0}); lost {lost} ({loss_pct:.4} %), reordered {reordered}");
    let _ = writeln!(s, "Janus CPU: {cpu_pct:.1} % of a core (schedstat, {threads} threads; utime+stime {stat_pct:.1} %); {per_pkt_us:.2} µs per forwarded packet (client threads {:.1} %)",
        100.0 * (c1 - c0) as f64 / window.as_nanos() as f64);
    let _ = writeln!(
        s,
        "latency send→receive ms: p50 {} p99 {} p99.9 {} (n={})",
        ms(l50),
        ms(l99),
        ms(l999),
        lat.len()
    );
    let _ = writeln!(
        s,
        "Janus RSS: {} MiB before joins, {} MiB with {total} peers in media",
        rss0 / 1024,
        rss1 / 1024
    );
    let _ = writeln!(s, "loadavg: {load0} (window start), {load1} (window end)");
    let _ = writeln!(s, "| server | rooms×peers | fwd pkt/s (ideal) | loss | server CPU | µs/fwd pkt | latency p50 / p99 / p99.9 ms | server RSS |");
    let _ = writeln!(s, "| Janus 1.1.2 VideoRoom | {}×{} | {fwd:.0} ({ideal:.0}) | {loss_pct:.3} % | {cpu_pct:.1} % | {per_pkt_us:.2} | {} / {} / {} | {} MiB |",
        cli.rooms, cli.peers, ms(l50), ms(l99), ms(l999), rss1 / 1024);
    for p in &all {
        if let Some(sub) = &p.subscriber {
            sub.close().await;
        }
        p.publisher.close().await;
    }
    Ok(s)
}

fn main() {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let prefix = parse_hex(&cli.prefix).unwrap_or_else(|e| fail(e));
    if cli.peers < 2 || cli.rooms < 1 {
        fail("needs --rooms ≥ 1 and --peers ≥ 2");
    }
    let Some(lib) = janus_lib_dir() else {
        fail("janus not installed (no janus/plugins/libjanus_videoroom.so under /usr/lib): run scripts/setup-janus.sh");
    };
    // Before any thread exists: unshare(CLONE_NEWNET) applies to the calling thread only.
    enter_namespace();
    watchdog(WATCHDOG);
    let cmdline = std::env::args().collect::<Vec<_>>().join(" ");
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("{cmdline}");
    println!(
        "started {} UTC; nproc {nproc}; loadavg {}",
        utc_now(),
        loadavg()
    );
    setup_network();
    let dir = std::env::temp_dir().join(format!("janus-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_config(&dir, &lib, &cli)
        .unwrap_or_else(|e| fail(format!("writing {}: {e}", dir.display())));
    let mut janus = start_janus(&dir, cli.janus_debug);
    let cli_rt = runtime("cli-rt");
    let api = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), HTTP_PORT);
    // Janus is up once its HTTP transport answers.
    let up = cli_rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(v) = janus_peer::info(api).await {
                return Some(v);
            }
            if Instant::now() > deadline || janus.try_wait().ok().flatten().is_some() {
                return None;
            }
            net_tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let Some(info) = up else {
        fail(format!(
            "Janus did not come up; its log:\n{}",
            log_tail(&dir)
        ));
    };
    println!(
        "janus {} ({}), plugins {}",
        info["version_string"].as_str().unwrap_or("?"),
        lib.display(),
        info["plugins"].as_object().map_or(String::new(), |p| p
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(","))
    );
    let result = cli_rt.block_on(bench(&cli, janus.id(), prefix));
    match result {
        Ok(report) => print!("{report}"),
        Err(e) => {
            let tail = log_tail(&dir);
            fail(format!(
                "{e}\nJanus log ({}):\n{tail}",
                dir.join("janus.log").display()
            ));
        }
    }
    kill_janus();
    let _ = janus.wait();
    drop(cli_rt);
    teardown_network();
    if cli.keep {
        println!("Janus directory kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("finished {} UTC; loadavg {}", utc_now(), loadavg());
}
