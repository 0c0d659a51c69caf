//! Cluster benchmark (issue 11): what the cross-node hop costs and how long a failover takes,
//! on Debian's real etcd with real nodes, in one run.
//!
//! One etcd (`/usr/bin/etcd`, free loopback ports, a temporary data directory) and `--nodes`
//! in-process nodes, each a `videoroom::server::Server` in cluster mode on its own tokio runtime
//! (`--workers` threads each, so the nodes do not share a scheduler), with the default fake
//! media plane. The clients are plain Phoenix V2 WebSockets (tokio-tungstenite) on a runtime of
//! their own, driven by the main thread; every time is taken on that one clock.
//!
//! 1. **Joins.** Per repetition a fresh room: a creator joins on node `i % nodes` (first join =
//!    room creation, split by where placement put the room), `room_pid` tells which node runs
//!    it, then one joiner on the room's node and one on another node (in alternating order, each
//!    leaving before the other joins) join the existing room: `phx_join` → ok, `connect` →
//!    `connected`, and `phx_join` → `connected`.
//! 2. **Media-event round trip.** Three rooms with two peers each: both on the room's node,
//!    one on each side, both on the other node. A sends `updateEndpointMetadata` (a new `seq`),
//!    B gets `endpointUpdated` and answers likewise, A gets B's: round trip and one way,
//!    interleaved over the three layouts. The per-peer metadata budget is raised on the
//!    in-process nodes for this (`Limits::peer_update_burst`/`peer_updates_per_sec`).
//! 3. **Failover.** A node in a child process (`--owner-bin`: the real `videoroom` binary with
//!    `--fake-media`; by default this program re-executed in node mode) owns a room with two
//!    clients on the in-process nodes; it is killed with SIGKILL. One client rejoins as
//!    phoenix.js does by default (rejoin after 1 s, 2 s, 5 s, then every 10 s; the web app uses
//!    these defaults), the other every `--fast-retry-ms`; each time from the kill to
//!    `phx_error`, to the rejoin's ok and to `connected`, next to the time the dead owner's
//!    `rooms/<name>` key lapsed in etcd (polled every 10 ms).
//!
//! ```text
//! cargo build --release --bin videoroom
//! cargo run --release --example cluster_bench -- --owner-bin target/release/videoroom
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use net_tokio::runtime::{Builder, Runtime};
use net_tokio::sync::mpsc;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use videoroom::cluster::etcd::client::EtcdClient;
use videoroom::cluster::lease::LeaseConfig;
use videoroom::server::{ClusterConfig, Server, ServerConfig, ServerLimits};

#[derive(Parser)]
#[command(about = "Cross-node join, media-event round trip and failover on real etcd")]
struct Cli {
    #[command(subcommand)]
    node: Option<NodeMode>,
    /// In-process nodes (2 or 3).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Tokio worker threads per in-process node.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Repetitions of the join measurement (each: one new room, two joins into it).
    #[arg(long, default_value_t = 200)]
    reps: usize,
    /// Round trips per layout.
    #[arg(long, default_value_t = 200)]
    rtt_reps: usize,
    /// Owner crashes.
    #[arg(long, default_value_t = 5)]
    failovers: usize,
    /// Lease TTL of every node, in seconds.
    #[arg(long, default_value_t = 3)]
    lease_ttl: u64,
    /// Rejoin interval of the fast-retry client.
    #[arg(long, default_value_t = 100)]
    fast_retry_ms: u64,
    /// The etcd server binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// The node binary for the failover owners (`videoroom`, run with --fake-media); without
    /// it this program runs them itself in node mode.
    #[arg(long)]
    owner_bin: Option<PathBuf>,
    /// The whole run is abandoned (children killed, exit 2) after this many seconds.
    #[arg(long, default_value_t = 170)]
    watchdog_secs: u64,
}

#[derive(Subcommand)]
enum NodeMode {
    /// Internal: run one cluster node with the fake media plane until killed (what `videoroom
    /// --fake-media --port 0 --etcd URL --node-name NAME --dist-listen 127.0.0.1:0` does).
    #[command(hide = true)]
    Node {
        #[arg(long)]
        etcd: String,
        #[arg(long)]
        node_name: String,
        #[arg(long, default_value_t = 3)]
        lease_ttl: u64,
    },
}

/// Child processes to kill if the run is abandoned.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn register_child(pid: u32) {
    CHILDREN.lock().unwrap().push(pid);
}

fn forget_child(pid: u32) {
    CHILDREN.lock().unwrap().retain(|p| *p != pid);
}

fn kill_children() {
    for pid in CHILDREN.lock().unwrap().drain(..) {
        // SAFETY: kill(2) on a child of ours that has not been reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Children die with this process even when it is killed (PR_SET_PDEATHSIG).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn main() {
    let mut cli = Cli::parse();
    // The nodes' own logs, only when asked for (RUST_LOG=videoroom::cluster=debug, say).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if let Some(NodeMode::Node {
        etcd,
        node_name,
        lease_ttl,
    }) = cli.node.take()
    {
        serve_node(etcd, node_name, lease_ttl);
        return;
    }
    assert!(
        (2..=3).contains(&cli.nodes),
        "--nodes must be 2 or 3 (got {})",
        cli.nodes
    );
    let watchdog = cli.watchdog_secs;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(watchdog));
        eprintln!("cluster_bench: watchdog: still running after {watchdog} s, giving up");
        kill_children();
        std::process::exit(2);
    });
    let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&cli))) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("cluster_bench: {e}");
            1
        }
        Err(_) => 1,
    };
    kill_children();
    std::process::exit(code);
}

/// Node mode: one node as the binary would run it with `--fake-media`, until killed.
fn serve_node(etcd: String, name: String, ttl: u64) {
    let rt = Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let mut cfg = ClusterConfig::new(vec![etcd], name, "127.0.0.1:0".parse().unwrap());
        cfg.lease = LeaseConfig::with_ttl(ttl).checked().expect("--lease-ttl");
        let server = Server::start(ServerConfig {
            port: 0,
            cluster: Some(cfg),
            ..ServerConfig::default()
        })
        .await
        .expect("node starts");
        println!("videoroom listening on http://{}", server.local_addr());
        std::future::pending::<()>().await;
    });
}

// ---------------------------------------------------------------------------------------------
// etcd

struct Etcd {
    child: Child,
    dir: PathBuf,
    url: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Etcd {
    fn start(bin: &Path, client_rt: &Runtime) -> Result<Etcd, String> {
        if !bin.exists() {
            return Err(format!(
                "{} is missing: run scripts/setup-etcd.sh",
                bin.display()
            ));
        }
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "videoroom-cluster-bench-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut last = String::new();
        for _ in 0..3 {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| format!("temp dir: {e}"))?;
            let (client_port, peer_port) = (free_port(), free_port());
            let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| e.to_string())?;
            let url = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let mut cmd = Command::new(bin);
            cmd.args(["--name", "bench", "--data-dir"])
                .arg(dir.join("data"))
                .args(["--listen-client-urls", &url])
                .args(["--advertise-client-urls", &url])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("bench={peer}")])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log);
            die_with_parent(&mut cmd);
            let child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            register_child(child.id());
            let mut etcd = Etcd {
                child,
                dir: dir.clone(),
                url,
            };
            match etcd.wait_ready(client_rt) {
                Ok(()) => return Ok(etcd),
                Err(e) => last = e,
            }
        }
        Err(format!("etcd did not start: {last}"))
    }

    fn wait_ready(&mut self, rt: &Runtime) -> Result<(), String> {
        let client = EtcdClient::new(std::slice::from_ref(&self.url), Duration::from_millis(500))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("etcd exited ({status})"));
            }
            if rt.block_on(client.get(b"/ready")).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("no answer within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        forget_child(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// In-process nodes

struct Node {
    name: String,
    server: Option<Server>,
    addr: SocketAddr,
    rt: Option<Runtime>,
}

impl Node {
    fn start(name: &str, etcd: &str, ttl: u64, workers: usize) -> Result<Node, String> {
        let mut cfg = ClusterConfig::new(
            vec![etcd.to_owned()],
            name.to_owned(),
            "127.0.0.1:0".parse().unwrap(),
        );
        cfg.lease = LeaseConfig::with_ttl(ttl)
            .checked()
            .map_err(|e| format!("--lease-ttl: {e}"))?;
        let limits = ServerLimits {
            // The round-trip phase sends hundreds of metadata updates per peer.
            peer_update_burst: 1_000_000,
            peer_updates_per_sec: 1_000_000,
            ..ServerLimits::default()
        };
        let rt = Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(format!("{name}-rt"))
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let server = rt
            .block_on(Server::start(ServerConfig {
                port: 0,
                limits,
                cluster: Some(cfg),
                ..ServerConfig::default()
            }))
            .map_err(|e| format!("node {name}: {e}"))?;
        let addr = server.local_addr();
        Ok(Node {
            name: name.to_owned(),
            server: Some(server),
            addr,
            rt: Some(rt),
        })
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    fn acting(&self) -> bool {
        self.server().cluster().is_some_and(|c| c.is_acting())
    }

    fn known_nodes(&self) -> usize {
        self.server().cluster().map_or(0, |c| c.known_nodes())
    }

    fn runs(&self, room: &str) -> bool {
        self.server().app().room_pid(room).is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            {
                let _guard = rt.enter();
                drop(self.server.take());
            }
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Which in-process node runs `room`, if one does (never more than one).
fn owner_of(nodes: &[Node], room: &str) -> Result<Option<usize>, String> {
    let running: Vec<usize> = (0..nodes.len()).filter(|i| nodes[*i].runs(room)).collect();
    match running.len() {
        0 => Ok(None),
        1 => Ok(Some(running[0])),
        _ => Err(format!("{room} runs on several nodes: {running:?}")),
    }
}

async fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("not within {within:?}: {what}"));
        }
        net_tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A Phoenix V2 client

/// One frame from the server, stamped when the reader task took it off the socket.
struct In {
    refn: Option<String>,
    topic: String,
    event: String,
    payload: Value,
    at: Instant,
}

impl In {
    /// The media event a `mediaEvent` push carries (`payload.data` is a JSON string).
    fn media(&self) -> Option<Value> {
        if self.event != "mediaEvent" {
            return None;
        }
        serde_json::from_str(self.payload["data"].as_str()?).ok()
    }

    fn is_reply(&self, topic: &str, refn: &str) -> bool {
        self.event == "phx_reply" && self.topic == topic && self.refn.as_deref() == Some(refn)
    }

    fn status(&self) -> String {
        match self.payload["status"].as_str() {
            Some("ok") => "ok".into(),
            Some(s) => format!("{s}: {}", self.payload["response"]["reason"]),
            None => format!("? {}", self.payload),
        }
    }
}

struct Sock {
    label: String,
    out: mpsc::UnboundedSender<Message>,
    inbox: mpsc::UnboundedReceiver<In>,
    next_ref: u64,
    /// topic → join_ref of the current join.
    joined: HashMap<String, String>,
}

impl Sock {
    async fn open(label: &str, addr: SocketAddr) -> Result<Sock, String> {
        let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| format!("{label}: websocket to {addr}: {e}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (in_tx, inbox) = mpsc::unbounded_channel::<In>();
        net_tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        net_tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let at = Instant::now();
                let Message::Text(t) = m else { continue };
                let Ok(Value::Array(a)) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if a.len() != 5 {
                    continue;
                }
                let s = |v: &Value| v.as_str().map(str::to_owned);
                let frame = In {
                    refn: s(&a[1]),
                    topic: s(&a[2]).unwrap_or_default(),
                    event: s(&a[3]).unwrap_or_default(),
                    payload: a[4].clone(),
                    at,
                };
                if in_tx.send(frame).is_err() {
                    return;
                }
            }
        });
        // phoenix.js heartbeats every 30 s; the server closes a socket silent for 60 s.
        let hb = out.downgrade();
        net_tokio::spawn(async move {
            for n in 0u64.. {
                net_tokio::time::sleep(Duration::from_secs(20)).await;
                let Some(out) = hb.upgrade() else { return };
                let frame = json!([null, format!("hb{n}"), "phoenix", "heartbeat", {}]);
                if out.send(Message::text(frame.to_string())).is_err() {
                    return;
                }
            }
        });
        Ok(Sock {
            label: label.to_owned(),
            out,
            inbox,
            next_ref: 0,
            joined: HashMap::new(),
        })
    }

    fn new_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// Sends a frame; returns the send time.
    fn send(
        &mut self,
        join_ref: Option<&str>,
        refn: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Instant {
        let frame = json!([join_ref, refn, topic, event, payload]).to_string();
        let at = Instant::now();
        let _ = self.out.send(Message::text(frame));
        at
    }

    /// The next frame that `pred` accepts (others are dropped).
    async fn expect(
        &mut self,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&In) -> bool,
    ) -> Result<In, String> {
        let deadline = net_tokio::time::Instant::now() + within;
        loop {
            let m = net_tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .map_err(|_| format!("{}: no {what} within {within:?}", self.label))?
                .ok_or_else(|| format!("{}: socket closed waiting for {what}", self.label))?;
            if pred(&m) {
                return Ok(m);
            }
        }
    }

    /// Sends `phx_join` and waits for its reply: (sent at, reply).
    async fn join(&mut self, topic: &str, within: Duration) -> Result<(Instant, In), String> {
        let jr = self.new_ref();
        let sent = self.send(Some(&jr), &jr, topic, "phx_join", json!({}));
        let reply = self
            .expect(within, &format!("join reply on {topic}"), |m| {
                m.is_reply(topic, &jr)
            })
            .await?;
        if reply.payload["status"] == "ok" {
            self.joined.insert(topic.to_owned(), jr);
        }
        Ok((sent, reply))
    }

    async fn join_ok(&mut self, topic: &str) -> Result<(Instant, Instant), String> {
        let (sent, reply) = self.join(topic, Duration::from_secs(10)).await?;
        if reply.payload["status"] != "ok" {
            return Err(format!(
                "{}: join {topic} refused: {}",
                self.label,
                reply.status()
            ));
        }
        Ok((sent, reply.at))
    }

    async fn leave(&mut self, topic: &str) -> Result<(), String> {
        let Some(jr) = self.joined.remove(topic) else {
            return Ok(());
        };
        let r = self.new_ref();
        self.send(Some(&jr), &r, topic, "phx_leave", json!({}));
        self.expect(Duration::from_secs(5), "leave reply", |m| {
            m.is_reply(topic, &r)
        })
        .await
        .map(drop)
    }

    /// Pushes a media event on `topic`; returns the send time.
    fn push_media(&mut self, topic: &str, event: Value) -> Instant {
        let jr = self.joined.get(topic).cloned();
        let r = self.new_ref();
        self.send(
            jr.as_deref(),
            &r,
            topic,
            "mediaEvent",
            json!({"data": event.to_string()}),
        )
    }

    /// The next media event of type `kind` on `topic` whose `data` `pred` accepts.
    async fn expect_media(
        &mut self,
        topic: &str,
        kind: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<(Instant, Value), String> {
        let m = self
            .expect(within, &format!("{kind} on {topic}"), |m| {
                m.topic == topic
                    && m.media()
                        .is_some_and(|e| e["type"] == kind && pred(&e["data"]))
            })
            .await?;
        let data = m.media().expect("checked")["data"].clone();
        Ok((m.at, data))
    }

    /// `connect` → `connected`: (sent at, connected at, own endpoint id).
    async fn connect(&mut self, topic: &str) -> Result<(Instant, Instant, String), String> {
        let label = self.label.clone();
        let sent = self.push_media(
            topic,
            json!({"type": "connect", "data": {"metadata": {"displayName": label}}}),
        );
        let (at, data) = self
            .expect_media(topic, "connected", Duration::from_secs(10), |_| true)
            .await?;
        let id = data["id"]
            .as_str()
            .ok_or_else(|| format!("connected without an id: {data}"))?
            .to_owned();
        Ok((sent, at, id))
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let k = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[k - 1]
}

#[derive(Default, Clone)]
struct Series(Vec<f64>);

impl Series {
    fn push(&mut self, x: f64) {
        self.0.push(x);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    fn p(&self, q: f64) -> f64 {
        pct(&self.sorted(), q)
    }

    fn row(&self, label: &str) -> String {
        let v = self.sorted();
        if v.is_empty() {
            return format!("  {label:<34} {:>4}", 0);
        }
        format!(
            "  {label:<34} {:>4} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            v.len(),
            v[0],
            pct(&v, 0.5),
            pct(&v, 0.9),
            pct(&v, 0.99),
            v[v.len() - 1]
        )
    }
}

const HEADER: &str =
    "                                        n      min      p50      p90      p99      max";

fn ratio_row(label: &str, cross: &Series, same: &Series) -> String {
    format!(
        "  {label:<34}      {:>8} {:>8.2} {:>8.2} {:>8.2}",
        "",
        cross.p(0.5) / same.p(0.5),
        cross.p(0.9) / same.p(0.9),
        cross.p(0.99) / same.p(0.99),
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------------------------
// The run

fn run(cli: &Cli) -> Result<(), String> {
    let started = Instant::now();
    let client_rt = Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let load_before = loadavg();
    let etcd = Etcd::start(&cli.etcd_bin, &client_rt)?;
    let names = ["a", "b", "c"];
    let nodes: Vec<Node> = (0..cli.nodes)
        .map(|i| Node::start(names[i], &etcd.url, cli.lease_ttl, cli.workers))
        .collect::<Result<_, _>>()?;
    client_rt.block_on(async {
        until(
            "every node acts and knows the others",
            Duration::from_secs(15),
            || {
                nodes
                    .iter()
                    .all(|n| n.acting() && n.known_nodes() == nodes.len())
            },
        )
        .await
    })?;
    eprintln!(
        "cluster_bench: etcd at {} and {} nodes ready in {:.1} s",
        etcd.url,
        nodes.len(),
        started.elapsed().as_secs_f64()
    );
    let joins = client_rt.block_on(join_phase(cli, &nodes, &etcd))?;
    eprintln!(
        "cluster_bench: joins done at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let rtts = client_rt.block_on(rtt_phase(cli, &nodes))?;
    eprintln!(
        "cluster_bench: round trips done at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let failovers = client_rt.block_on(failover_phase(cli, &nodes, &etcd))?;
    let total = started.elapsed();
    let load_after = loadavg();

    let etcd_version = Command::new(&cli.etcd_bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default();
    println!(
        "cluster_bench: {} in-process nodes ({} worker thread(s) each, fake media plane), {etcd_version}, \
         lease TTL {} s",
        nodes.len(),
        cli.workers,
        cli.lease_ttl
    );
    println!(
        "failover owners: {}",
        match &cli.owner_bin {
            Some(p) => format!("{} --fake-media (child process, SIGKILL)", p.display()),
            None => "this program in node mode (child process, SIGKILL)".into(),
        }
    );
    println!(
        "load average before {load_before}, after {load_after}; whole run {:.1} s",
        total.as_secs_f64()
    );
    println!();
    joins.print(cli);
    println!();
    rtts.print(cli);
    println!();
    failovers.print(cli);
    drop(nodes);
    drop(etcd);
    Ok(())
}

// --- 1. joins --------------------------------------------------------------------------------

#[derive(Default)]
struct JoinFigures {
    /// Room creation, by where placement put the room.
    create_local: [Series; 3],
    create_remote: [Series; 3],
    /// Joining an existing room: [join, connect, join → connected].
    same: [Series; 3],
    cross: [Series; 3],
    /// References in the same loop, from the client runtime with the nodes' own etcd client
    /// (one HTTP connection per call): a range read and a put (a write etcd syncs to disk).
    etcd_get: Series,
    etcd_put: Series,
}

impl JoinFigures {
    fn print(&self, cli: &Cli) {
        println!(
            "1. Joins, {} repetitions (fresh room each; ms): join = phx_join → ok reply, \
             connect = connect → connected, total = phx_join sent → connected",
            cli.reps
        );
        println!("{HEADER}");
        let parts = ["join", "connect", "total"];
        println!(" existing room, socket on the room's node:");
        for (i, p) in parts.iter().enumerate() {
            println!("{}", self.same[i].row(&format!("same node   {p}")));
        }
        println!(" existing room, socket on another node:");
        for (i, p) in parts.iter().enumerate() {
            println!("{}", self.cross[i].row(&format!("cross node  {p}")));
        }
        println!(" ratio cross / same                              p50      p90      p99");
        for (i, p) in parts.iter().enumerate() {
            println!("{}", ratio_row(p, &self.cross[i], &self.same[i]));
        }
        println!(" first join (creates the room):");
        for (i, p) in parts.iter().enumerate() {
            println!(
                "{}",
                self.create_local[i].row(&format!("placed on joiner's node  {p}"))
            );
        }
        for (i, p) in parts.iter().enumerate() {
            println!(
                "{}",
                self.create_remote[i].row(&format!("placed on another node  {p}"))
            );
        }
        let (local, remote) = (self.create_local[0].0.len(), self.create_remote[0].0.len());
        println!(
            " placement put {local} of {} new rooms on the joiner's node",
            local + remote
        );
        println!(" reference, same loop: one etcd call through the nodes' etcd client");
        println!("{}", self.etcd_get.row("etcd range (read)"));
        println!("{}", self.etcd_put.row("etcd put (write)"));
    }
}

/// Joins `topic` on `sock` and connects: [join, connect, total] in ms, and the endpoint id.
async fn timed_join(sock: &mut Sock, topic: &str) -> Result<([f64; 3], String), String> {
    let (sent, ok) = sock.join_ok(topic).await?;
    let (csent, connected, id) = sock.connect(topic).await?;
    Ok((
        [ms(ok - sent), ms(connected - csent), ms(connected - sent)],
        id,
    ))
}

async fn join_phase(cli: &Cli, nodes: &[Node], etcd: &Etcd) -> Result<JoinFigures, String> {
    let n = nodes.len();
    let mut creators = Vec::new();
    let mut joiners = Vec::new();
    for node in nodes {
        creators.push(Sock::open(&format!("creator@{}", node.name), node.addr).await?);
        joiners.push(Sock::open(&format!("joiner@{}", node.name), node.addr).await?);
    }
    let mut f = JoinFigures::default();
    let tag = std::process::id();
    let client = EtcdClient::new(std::slice::from_ref(&etcd.url), Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    let ref_key = format!("/cluster-bench/{tag}").into_bytes();
    // A few unrecorded rounds first: links, connections to etcd, allocator.
    let warmup = 10;
    for i in 0..warmup + cli.reps {
        let record = i >= warmup;
        let name = format!("j{i}-{tag}");
        let topic = format!("room:{name}");
        let x = i % n;
        let (t, _creator_id) = timed_join(&mut creators[x], &topic).await?;
        let owner =
            owner_of(nodes, &name)?.ok_or_else(|| format!("{name}: no in-process node runs it"))?;
        if record {
            let into = if owner == x {
                &mut f.create_local
            } else {
                &mut f.create_remote
            };
            for (s, x) in into.iter_mut().zip(t) {
                s.push(x);
            }
        }
        let other = (owner + 1 + (i / 2) % (n - 1)) % n;
        let order = if i % 2 == 0 {
            [owner, other]
        } else {
            [other, owner]
        };
        for j in order {
            let (t, id) = timed_join(&mut joiners[j], &topic).await?;
            if record {
                let into = if j == owner {
                    &mut f.same
                } else {
                    &mut f.cross
                };
                for (s, x) in into.iter_mut().zip(t) {
                    s.push(x);
                }
            }
            joiners[j].leave(&topic).await?;
            creators[x]
                .expect_media(&topic, "endpointRemoved", Duration::from_secs(5), |d| {
                    d["id"] == id.as_str()
                })
                .await?;
        }
        creators[x].leave(&topic).await?;
        let t0 = Instant::now();
        client.get(&ref_key).await.map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        client
            .put(&ref_key, i.to_string().as_bytes(), 0)
            .await
            .map_err(|e| e.to_string())?;
        let t2 = Instant::now();
        if record {
            f.etcd_get.push(ms(t1 - t0));
            f.etcd_put.push(ms(t2 - t1));
        }
    }
    Ok(f)
}

// --- 2. media-event round trips --------------------------------------------------------------

struct RttFigures {
    layouts: Vec<(&'static str, Series, Series)>,
}

impl RttFigures {
    fn print(&self, cli: &Cli) {
        println!(
            "2. Media-event round trip, {} per layout, interleaved (ms): A updateEndpointMetadata → \
             B endpointUpdated → B updateEndpointMetadata → A endpointUpdated",
            cli.rtt_reps
        );
        println!("{HEADER}");
        for (label, rtt, _) in &self.layouts {
            println!("{}", rtt.row(&format!("round trip, {label}")));
        }
        for (label, _, one) in &self.layouts {
            println!("{}", one.row(&format!("one way A→B, {label}")));
        }
        println!(" ratio to both on the room's node                p50      p90      p99");
        let (_, same, same_one) = &self.layouts[0];
        for (label, rtt, one) in &self.layouts[1..] {
            println!("{}", ratio_row(&format!("round trip, {label}"), rtt, same));
            println!("{}", ratio_row(&format!("one way, {label}"), one, same_one));
        }
    }
}

struct Pair {
    topic: String,
    a: Sock,
    b: Sock,
    a_id: String,
    b_id: String,
}

async fn rtt_phase(cli: &Cli, nodes: &[Node]) -> Result<RttFigures, String> {
    let n = nodes.len();
    let tag = std::process::id();
    let layouts: [&'static str; 3] = [
        "both on the room's node",
        "one on each node",
        "both on another node",
    ];
    let mut pairs = Vec::new();
    for (l, label) in layouts.iter().enumerate() {
        let name = format!("rtt{l}-{tag}");
        let topic = format!("room:{name}");
        let mut holder = Sock::open("holder", nodes[l % n].addr).await?;
        holder.join_ok(&topic).await?;
        let owner =
            owner_of(nodes, &name)?.ok_or_else(|| format!("{name}: no in-process node runs it"))?;
        let other = (owner + 1) % n;
        let (na, nb) = match l {
            0 => (owner, owner),
            1 => (owner, other),
            _ => (other, other),
        };
        let mut a = Sock::open(&format!("A@{}", nodes[na].name), nodes[na].addr).await?;
        let mut b = Sock::open(&format!("B@{}", nodes[nb].name), nodes[nb].addr).await?;
        a.join_ok(&topic).await?;
        let (_, _, a_id) = a.connect(&topic).await?;
        b.join_ok(&topic).await?;
        let (_, _, b_id) = b.connect(&topic).await?;
        holder.leave(&topic).await?;
        if owner_of(nodes, &name)? != Some(owner) {
            return Err(format!("{name} moved while setting up ({label})"));
        }
        pairs.push(Pair {
            topic,
            a,
            b,
            a_id,
            b_id,
        });
    }
    let mut rtt = vec![Series::default(); 3];
    let mut one = vec![Series::default(); 3];
    let warmup = 10;
    for k in 0..warmup + cli.rtt_reps {
        for (l, p) in pairs.iter_mut().enumerate() {
            let update = json!({"type": "updateEndpointMetadata",
                                "data": {"metadata": {"displayName": "A", "seq": k}}});
            let sent = p.a.push_media(&p.topic, update);
            let seq_is = |d: &Value, id: &str| d["id"] == id && d["metadata"]["seq"] == k;
            let a_id = p.a_id.clone();
            let (at_b, _) =
                p.b.expect_media(&p.topic, "endpointUpdated", Duration::from_secs(5), |d| {
                    seq_is(d, &a_id)
                })
                .await?;
            let answer = json!({"type": "updateEndpointMetadata",
                                "data": {"metadata": {"displayName": "B", "seq": k}}});
            p.b.push_media(&p.topic, answer);
            let b_id = p.b_id.clone();
            let (at_a, _) =
                p.a.expect_media(&p.topic, "endpointUpdated", Duration::from_secs(5), |d| {
                    seq_is(d, &b_id)
                })
                .await?;
            if k >= warmup {
                rtt[l].push(ms(at_a - sent));
                one[l].push(ms(at_b - sent));
            }
        }
    }
    for p in &mut pairs {
        p.a.leave(&p.topic).await?;
        p.b.leave(&p.topic).await?;
    }
    let mut rtt = rtt.into_iter();
    let mut one = one.into_iter();
    Ok(RttFigures {
        layouts: layouts
            .iter()
            .map(|l| (*l, rtt.next().unwrap(), one.next().unwrap()))
            .collect(),
    })
}

// --- 3. failover -----------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Policy {
    /// phoenix.js's default `rejoinAfterMs`: 1 s, 2 s, 5 s, then 10 s.
    Phoenix,
    /// A fixed interval.
    Fixed(Duration),
}

impl Policy {
    fn delay(self, tries: u32) -> Duration {
        match self {
            Policy::Phoenix => Duration::from_millis(match tries {
                1 => 1000,
                2 => 2000,
                3 => 5000,
                _ => 10_000,
            }),
            Policy::Fixed(d) => d,
        }
    }
}

/// One client's failover, in ms after the kill.
#[derive(Default, Clone)]
struct Rejoin {
    phx_error: f64,
    ok: f64,
    connected: f64,
    /// Join attempts made, and how each was answered.
    attempts: Vec<(f64, f64, String)>,
}

impl Rejoin {
    fn refused(&self) -> usize {
        self.attempts.iter().filter(|a| a.2 != "ok").count()
    }
}

struct FailoverRow {
    lapse: f64,
    fast: Rejoin,
    phoenix: Rejoin,
}

struct FailoverFigures {
    rows: Vec<FailoverRow>,
}

impl FailoverFigures {
    fn print(&self, cli: &Cli) {
        let ttl = cli.lease_ttl as f64 * 1e3;
        println!(
            "3. Failover: the owner (child process) is SIGKILLed; two clients on surviving nodes \
             rejoin (ms after the kill; lease TTL {} s)",
            cli.lease_ttl
        );
        println!(
            "   fast = rejoin every {} ms; phoenix = phoenix.js default rejoinAfterMs (1 s, 2 s, 5 s, 10 s)",
            cli.fast_retry_ms
        );
        println!(
            "   run  phx_error* key lapsed | fast: ok  connected  refused | phoenix: ok  connected  refused   (*later of the two)"
        );
        for (i, r) in self.rows.iter().enumerate() {
            println!(
                "   {:>3}  {:>9.1}  {:>10.1} | {:>8.1}  {:>9.1}  {:>7} | {:>11.1}  {:>9.1}  {:>7}",
                i + 1,
                r.fast.phx_error.max(r.phoenix.phx_error),
                r.lapse,
                r.fast.ok,
                r.fast.connected,
                r.fast.refused(),
                r.phoenix.ok,
                r.phoenix.connected,
                r.phoenix.refused(),
            );
        }
        let col = |f: fn(&FailoverRow) -> f64| {
            let mut s = Series::default();
            for r in &self.rows {
                s.push(f(r));
            }
            s
        };
        let show = |label: &str, s: Series| {
            let v = s.sorted();
            if v.is_empty() {
                return;
            }
            println!(
                "   {label:<40} min {:>7.1}  p50 {:>7.1}  max {:>7.1} ms   = {:.2} / {:.2} / {:.2} × TTL",
                v[0],
                pct(&v, 0.5),
                v[v.len() - 1],
                v[0] / ttl,
                pct(&v, 0.5) / ttl,
                v[v.len() - 1] / ttl
            );
        };
        show("kill → phx_error (both clients)", {
            let mut s = col(|r| r.fast.phx_error);
            for r in &self.rows {
                s.push(r.phoenix.phx_error);
            }
            s
        });
        show("kill → rooms/<name> key lapsed", col(|r| r.lapse));
        show("fast: kill → rejoined (ok)", col(|r| r.fast.ok));
        show("fast: kill → connected", col(|r| r.fast.connected));
        show(
            "fast: key lapsed → connected",
            col(|r| r.fast.connected - r.lapse),
        );
        show("phoenix: kill → rejoined (ok)", col(|r| r.phoenix.ok));
        show("phoenix: kill → connected", col(|r| r.phoenix.connected));
        let refused = self.rows.iter().filter(|r| r.phoenix.refused() > 0).count();
        println!(
            "   phoenix client: a rejoin answered with an error in {refused} of {} failovers \
             (the web app keeps rejoining on \"room temporarily unavailable\" and ends the session \
             on any other join error: web/src/session.js onJoinRefused)",
            self.rows.len()
        );
        println!("   join attempts (sent → answered, ms after the kill):");
        for (i, r) in self.rows.iter().enumerate() {
            for (who, rj) in [("fast", &r.fast), ("phoenix", &r.phoenix)] {
                let list: Vec<String> = rj
                    .attempts
                    .iter()
                    .map(|(s, a, st)| {
                        let st = if st.len() > 60 { &st[..60] } else { st };
                        format!("{s:.0}→{a:.0} {st}")
                    })
                    .collect();
                let list = if who == "fast" && list.len() > 4 {
                    format!(
                        "{} … {} ({} attempts)",
                        list[0],
                        list[list.len() - 1],
                        list.len()
                    )
                } else {
                    list.join("; ")
                };
                println!("   {:>3} {who:<8} {list}", i + 1);
            }
        }
    }
}

/// A failover owner: a child process in cluster mode.
struct Owner {
    child: Child,
    name: String,
}

impl Owner {
    fn spawn(cli: &Cli, etcd: &str, name: &str) -> Result<Owner, String> {
        let mut cmd = match &cli.owner_bin {
            Some(bin) => {
                let mut c = Command::new(bin);
                c.args(["--fake-media", "--port", "0", "--log-format", "json"])
                    .args(["--etcd", etcd, "--node-name", name])
                    .args(["--dist-listen", "127.0.0.1:0"])
                    .args(["--lease-ttl", &cli.lease_ttl.to_string()]);
                c
            }
            None => {
                let me = std::env::current_exe().map_err(|e| e.to_string())?;
                let mut c = Command::new(me);
                c.args(["node", "--etcd", etcd, "--node-name", name])
                    .args(["--lease-ttl", &cli.lease_ttl.to_string()]);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env("RUST_LOG", "info");
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| format!("owner {name}: {e}"))?;
        register_child(child.id());
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(i) = line.find("listening on http://") {
                    if let Some(tx) = tx.take() {
                        let rest = &line[i + "listening on http://".len()..];
                        let addr: String = rest
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\u{1b}')
                            .collect();
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let mut owner = Owner {
            child,
            name: name.to_owned(),
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(_addr) => Ok(owner),
            Err(_) => {
                owner.kill();
                Err(format!("owner {name} did not say it was listening"))
            }
        }
    }

    fn kill(&mut self) {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.wait();
        forget_child(self.child.id());
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// Waits for `phx_error` on `topic`, then rejoins by `policy` until a join is ok and
/// `connect` answered.
async fn rejoin(
    mut sock: Sock,
    topic: String,
    policy: Policy,
    killed: Instant,
) -> Result<(Rejoin, Sock), String> {
    let after = |t: Instant| ms(t.saturating_duration_since(killed));
    let err = sock
        .expect(Duration::from_secs(20), "phx_error", |m| {
            m.topic == topic && m.event == "phx_error"
        })
        .await?;
    let mut r = Rejoin {
        phx_error: after(err.at),
        ..Rejoin::default()
    };
    for tries in 1.. {
        net_tokio::time::sleep(policy.delay(tries)).await;
        if killed.elapsed() > Duration::from_secs(40) {
            return Err(format!("{}: not rejoined 40 s after the kill", sock.label));
        }
        // phoenix.js's join timeout is 10 s; a timeout counts as a failed attempt.
        match sock.join(&topic, Duration::from_secs(10)).await {
            Ok((sent, reply)) => {
                let status = reply.status();
                r.attempts
                    .push((after(sent), after(reply.at), status.clone()));
                if status == "ok" {
                    r.ok = after(reply.at);
                    break;
                }
            }
            Err(e) => r
                .attempts
                .push((f64::NAN, f64::NAN, format!("timeout: {e}"))),
        }
    }
    let (_, connected, _) = sock.connect(&topic).await?;
    r.connected = after(connected);
    Ok((r, sock))
}

async fn failover_phase(cli: &Cli, nodes: &[Node], etcd: &Etcd) -> Result<FailoverFigures, String> {
    let n = nodes.len();
    let tag = std::process::id();
    let client = EtcdClient::new(std::slice::from_ref(&etcd.url), Duration::from_millis(500))
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for k in 0..cli.failovers {
        until(
            "the previous owner is gone from every node's list",
            Duration::from_secs(15),
            || nodes.iter().all(|x| x.known_nodes() == n),
        )
        .await?;
        let t0 = Instant::now();
        let mut owner = Owner::spawn(cli, &etcd.url, &format!("fo{k}"))?;
        until(
            "every node sees the new owner",
            Duration::from_secs(15),
            || nodes.iter().all(|x| x.known_nodes() == n + 1),
        )
        .await?;
        eprintln!(
            "cluster_bench: failover {}: owner {} up and known in {:.2} s",
            k + 1,
            owner.name,
            t0.elapsed().as_secs_f64()
        );
        let mut p = Sock::open("phoenix", nodes[0].addr).await?;
        let mut f = Sock::open("fast", nodes[1 % n].addr).await?;
        // A room that lands on the owner: placement goes to the least loaded node (all are
        // empty here), ties by a hash of the name, so try names until one does.
        let mut found = None;
        for j in 0..40 {
            let name = format!("fo{k}-{j}-{tag}");
            let topic = format!("room:{name}");
            p.join_ok(&topic).await?;
            if owner_of(nodes, &name)?.is_none() {
                found = Some((name, topic));
                break;
            }
            p.leave(&topic).await?;
        }
        let (name, topic) = found.ok_or("no room name landed on the owner in 40 tries")?;
        p.connect(&topic).await?;
        f.join_ok(&topic).await?;
        f.connect(&topic).await?;
        let key = format!("/videoroom/v1/rooms/{name}").into_bytes();
        match client.get(&key).await {
            Ok((Some(_), _)) => {}
            other => {
                return Err(format!(
                    "{name}: no claim in etcd before the kill: {other:?}"
                ))
            }
        }
        net_tokio::time::sleep(Duration::from_millis(200)).await;

        let killed = Instant::now();
        owner.kill();
        let fast = net_tokio::spawn(rejoin(
            f,
            topic.clone(),
            Policy::Fixed(Duration::from_millis(cli.fast_retry_ms)),
            killed,
        ));
        let phoenix = net_tokio::spawn(rejoin(p, topic.clone(), Policy::Phoenix, killed));
        let lapse = loop {
            match client.get(&key).await {
                Ok((None, _)) => break ms(killed.elapsed()),
                _ if killed.elapsed() > Duration::from_secs(30) => {
                    return Err(format!("{name}: the claim did not lapse within 30 s"))
                }
                _ => net_tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let (fast, mut fs) = fast.await.map_err(|e| e.to_string())??;
        let (phoenix, mut ps) = phoenix.await.map_err(|e| e.to_string())??;
        eprintln!(
            "cluster_bench: failover {}: key lapsed {:.0} ms, fast connected {:.0} ms, phoenix connected {:.0} ms after the kill",
            k + 1,
            lapse,
            fast.connected,
            phoenix.connected
        );
        fs.leave(&topic).await?;
        ps.leave(&topic).await?;
        rows.push(FailoverRow {
            lapse,
            fast,
            phoenix,
        });
    }
    Ok(FailoverFigures { rows })
}
