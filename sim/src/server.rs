//! The server node: the real `App` (registry, rooms, channels, socket processes) behind a
//! simulated listener. Each connection gets the same socket process production runs behind
//! axum; only the frame pumps differ.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use madsim::net::TcpListener;
use tokio::sync::mpsc;
use videoroom::app::{App, Limits};
use videoroom::cluster::rooms::{Cluster, ClusterConfig};
use videoroom::conn::{self, Transport, WsIn, WsOut};
use videoroom::engine::{FakePlane, PlaneEvent, PlaneFactory, PlaneSink, TurnIssuer, TurnServer};
use videoroom::join_token::JoinSecret;
use videoroom::rt::watch;

use crate::oracle::Oracles;
use crate::wire::{self, WireFrame};

pub const PORT: u16 = 4000;
/// Label of socket processes, so faults can find them.
pub const SOCKET_LABEL: &str = "socket";

/// The current incarnation's App (replaced when the node restarts), for the oracles.
pub type CurrentApp = Arc<Mutex<Option<App>>>;

/// A node's graceful shutdown, as `Server::shutdown` does it: the node's cluster membership
/// (drained first), the flag every socket process watches (raising it closes each socket with
/// 1012), and the connections still open (each counted until its last frame is written).
#[derive(Clone)]
pub struct Drain {
    pub flag: Arc<watch::Sender<bool>>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    pub cluster: Option<Cluster>,
}

impl Drain {
    /// Connections whose frame pumps still run.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One open connection, counted in [`Drain::open`] while it lives.
struct Open(Arc<std::sync::atomic::AtomicUsize>);

impl Open {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Open {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The current incarnation's [`Drain`], for the fault injector's graceful restart.
pub type CurrentDrain = Arc<Mutex<Option<Drain>>>;

/// The clients' downlinks, as the server's writes see them: some connections drain slowly (a
/// phone on a weak network, a tab the browser throttles), so the server's outbound queue for
/// them fills as a real socket's send buffer does, and the slow-consumer path runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Links {
    /// Share of connections whose downlink is slow (0: none).
    pub slow_share: f64,
    /// A slow downlink's rate, bytes per second, drawn per connection in this range.
    pub slow_bytes_per_sec: (u64, u64),
}

impl Links {
    /// This connection's downlink rate, if it is slow.
    fn draw(&self) -> Option<u64> {
        let (lo, hi) = self.slow_bytes_per_sec;
        (self.slow_share > 0.0 && videoroom::rt::rand::chance(self.slow_share))
            .then(|| lo + videoroom::rt::rand::below(hi.saturating_sub(lo).max(1)))
    }
}

/// What a server node is started with (again at each restart).
#[derive(Clone)]
pub struct Node {
    /// Where the running incarnation's App is published for the oracles.
    pub current: CurrentApp,
    /// Where the running incarnation's shutdown flag is published for the injector.
    pub drain: CurrentDrain,
    pub limits: Limits,
    /// The most a room's fake media plane takes to answer an offer (0: at once).
    pub plane_latency: std::time::Duration,
    /// Candidates per plane trickle.
    pub candidate_burst: usize,
    /// The planes report voice activity.
    pub voices: bool,
    /// What the planes last reported of each track's voice (shared by the world's nodes).
    pub voice_log: VoiceLog,
    /// Rooms mint each peer's TURN credentials ([`turn_server`]).
    pub turn: bool,
    /// M-lines per connection, where smaller than the default.
    pub max_mlines: Option<usize>,
    pub links: Links,
    pub join_secret: Option<JoinSecret>,
    pub oracles: Oracles,
    /// Cluster worlds: the node joins the cluster before it serves (a new incarnation at each
    /// restart).
    pub cluster: Option<ClusterConfig>,
}

/// The TURN server entry a room of a world with TURN mints for `peer`: a TURN REST username
/// naming the peer, as the production issuer's does.
pub fn turn_server(peer: &str) -> TurnServer {
    TurnServer {
        server_addr: "127.0.0.1".to_owned(),
        server_port: 3478,
        transport: "udp".to_owned(),
        username: format!("86400:{peer}"),
        password: format!("secret of {peer}"),
    }
}

/// Track id -> whether the plane's last report of it was speech.
pub type VoiceLog = Arc<Mutex<BTreeMap<String, bool>>>;

pub async fn serve(node: Node) {
    let app = App::new(node.limits).with_join_secret(node.join_secret);
    let mut negotiation = (*app.negotiation).clone();
    if let Some(n) = node.max_mlines {
        negotiation.max_mlines = n;
    }
    if node.turn {
        negotiation.turn_issuer = Some(TurnIssuer::new(|peer| vec![turn_server(peer)]));
    }
    let (latency, burst, voices) = (node.plane_latency, node.candidate_burst, node.voices);
    let log = node.voice_log.clone();
    // The simulated plane, whose voice reports are also written down as they reach the room:
    // what the room must pass on to every peer that knows the track.
    let planes = PlaneFactory::new(move |_room, sink| {
        let log = log.clone();
        let sink = PlaneSink::new(move |e| {
            if let PlaneEvent::VoiceActivity {
                track_id, speech, ..
            } = &e
            {
                log.lock().unwrap().insert(track_id.clone(), *speech);
            }
            sink.send(e);
        });
        Box::new(
            FakePlane::with_latency(sink, latency)
                .trickling(burst)
                .voicing(voices),
        )
    });
    let app = app.with_media(negotiation, planes);
    let mut joined = None;
    if let Some(cfg) = node.cluster.clone() {
        // The dist port is freed by the kill before a restart; retry while it is torn down.
        let cluster = loop {
            match Cluster::start(cfg.clone(), &app).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        e.contains("cannot listen"),
                        "the world's cluster config is refused: {e}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        };
        // Serves once registered: a join before could only be refused.
        while !cluster.is_acting() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        joined = Some(cluster);
    }
    // Raised only by the injector's graceful restart; its other restarts kill the node.
    let (flag, mut shutdown) = watch::channel(false);
    let drain = Drain {
        flag: Arc::new(flag),
        open: Arc::default(),
        cluster: joined,
    };
    *node.drain.lock().unwrap() = Some(drain.clone());
    *node.current.lock().unwrap() = Some(app.clone());
    // The world kills the node before restarting it, which frees its ports; retry anyway in
    // case a previous incarnation's listener is still being torn down.
    let listener = loop {
        match TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], PORT))).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
        }
    };
    loop {
        // Once the flag is raised the node takes no new connection (as axum's graceful
        // shutdown stops accepting), and lets go of the flag.
        let stream = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let (app, shutdown, oracles) = (app.clone(), shutdown.clone(), node.oracles.clone());
        let downlink = node.links.draw();
        let open = Open::new(&drain.open);
        tokio::spawn(async move {
            connection(app, stream, shutdown, downlink, oracles).await;
            drop(open);
        });
    }
}

/// `downlink`: the client's rate in bytes per second when its link is slow.
async fn connection(
    app: App,
    stream: madsim::net::TcpStream,
    shutdown: watch::Receiver<bool>,
    downlink: Option<u64>,
    oracles: Oracles,
) {
    let (mut reader, mut writer) = wire::split(stream);
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, mut out_rx) = mpsc::channel(app.limits.outbound_frames);
    let queued = conn::QueuedBytes::new(app.limits.outbound_bytes);
    let transport = Transport {
        incoming: in_rx,
        outgoing: out_tx,
        queued: std::sync::Arc::clone(&queued),
        channel_slots: None,
    };
    let app2 = app.clone();
    let socket = app.sys.spawn(app.limits.socket_mailbox, move |ctx| {
        conn::run(app2, transport, shutdown, ctx)
    });
    app.sys.set_label(socket.pid(), SOCKET_LABEL);
    let budget = app.limits.outbound_bytes;
    let write = async move {
        while let Some(out) = out_rx.recv().await {
            let (f, n) = match out {
                WsOut::Text(t) => {
                    let n = t.len();
                    check_budget(&oracles, queued.queued(), n, budget);
                    (WireFrame::Text(t), n)
                }
                WsOut::Close(code, _) => (WireFrame::Close(code), 0),
            };
            let close = matches!(f, WireFrame::Close(_));
            let sent = writer.send(&f).await;
            if let Some(rate) = downlink.filter(|_| n > 0) {
                // The next write waits until this frame has drained.
                let micros = n as u64 * 1_000_000 / rate.max(1);
                videoroom::rt::time::sleep(std::time::Duration::from_micros(micros)).await;
            }
            queued.written(n);
            // Counting and queueing happen in one step of the socket process (no await between
            // them), so whenever this task looks, the count is the bytes of the frames queued:
            // with none queued, zero. A count that only grows drops a reader as slow once it
            // has read a budget's worth, which no world's end state shows.
            if out_rx.is_empty() {
                check_drained(&oracles, queued.queued());
            }
            if !sent || close {
                break;
            }
        }
    };
    // As the production transport does, a frame over the limit is refused, not passed on.
    let max_frame = app.limits.socket.max_frame_bytes;
    let read = async move {
        while let Some(f) = reader.next().await {
            let input = match f {
                WireFrame::Text(t) if t.len() > max_frame => WsIn::TooBig,
                WireFrame::Text(t) => WsIn::Text(t),
                // Refused on its header, as tungstenite does: the body is never read.
                WireFrame::Oversized(n) if n as usize > max_frame => WsIn::TooBig,
                WireFrame::Oversized(n) => WsIn::Text("x".repeat(n as usize)),
                WireFrame::Binary(b) if b.len() > max_frame => WsIn::TooBig,
                WireFrame::Binary(b) => WsIn::Binary(b),
                WireFrame::Close(_) => break,
            };
            if in_tx.send(input).await.is_err() {
                break;
            }
        }
    };
    // Either side ending ends the connection: dropping the frame queue stops the process,
    // dropping the stream halves closes the client's end.
    tokio::select! {
        biased;
        _ = write => {}
        _ = read => {}
    }
}

/// Every queued byte is given back once written: an empty queue counts nothing.
fn check_drained(oracles: &Oracles, queued: usize) {
    oracles.check(queued == 0, || {
        format!("outbound queue is empty but counts {queued} bytes: the count is not given back")
    });
}

/// The outbound byte bound (README "Limits"): a text frame's bytes are counted from when it
/// is queued until it is written, so a frame taken off the queue is among the bytes counted,
/// and the count never passes the budget.
fn check_budget(oracles: &Oracles, queued: usize, frame: usize, budget: usize) {
    oracles.check(queued >= frame && queued <= budget, || {
        format!(
            "outbound queue counts {queued} bytes while a frame of {frame} bytes is in it (budget {budget})"
        )
    });
    if queued > budget / 2 {
        oracles.reached("server: outbound bytes past half the budget");
    }
}
