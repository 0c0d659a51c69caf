//! One seed's world: a server node running the real App, client nodes speaking Phoenix V2,
//! a fault injector, and the oracles. Phases: chaos (workload + faults, safety checked
//! continuously), settle (faults off, network healed: every client must converge on the one
//! live room of its name, seeing all its peers), teardown (everyone leaves: no process may be
//! left on the server).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::Handle;
use videoroom::app::{App, Limits};
use videoroom::channel::ROOM_LIMIT_REASON;
use videoroom::cluster::lease::LeaseConfig;
use videoroom::join_token::JoinSecret;
use videoroom::rt::{time, watch};
use videoroom::server::ClusterConfig;

use crate::client::{Client, Phase, Views};
use crate::etcd_node::{self, Etcd, ETCD_IP};
use crate::faults::{Fault, Injector};
use crate::knobs::Overrides;
use crate::oracle::{Oracles, ProbeLog};
use crate::server::{self, CurrentApp};
use crate::streams::Stream;
use crate::swarm::{Action, Hush, Swarm};
use crate::trace::Trace;

/// How a run ended badly; each has its own exit code in the CLI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A process panicked (its crash boundary contained it, but every panic is a bug: injected
    /// faults never panic), or the world itself panicked. The text names the process and
    /// carries the panic message.
    Crash(String),
    Safety(Vec<String>),
    Liveness(String),
}

#[derive(Clone, Debug)]
pub struct Report {
    pub swarm: String,
    pub trace: Vec<String>,
    pub digest: u64,
    pub checks: u64,
    /// Server log events reached, by message (coverage of interesting branches).
    pub coverage: BTreeMap<String, u64>,
    pub faults: BTreeMap<&'static str, u64>,
    pub failure: Option<Failure>,
}

pub struct Options {
    pub chaos: Duration,
    pub settle_limit: Duration,
    pub teardown_limit: Duration,
    /// A fixed configuration instead of the seed's swarm draw (named scenarios).
    pub swarm: Option<Swarm>,
    /// Faults at fixed times of the chaos phase, on top of the swarm's random ones.
    pub script: Vec<(Duration, Fault)>,
    /// Knobs set on the command line, applied on top of the seed's draw (or the scenario).
    pub overrides: Overrides,
    /// Keep the trace's text (replays, failure files); otherwise only its digest.
    pub record: bool,
    /// Process lag (chance, max) instead of the seed's draw (named scenarios).
    pub lag: Option<(f64, Duration)>,
    /// Client downlinks instead of the seed's draw (named scenarios).
    pub links: Option<server::Links>,
    /// Candidates per plane trickle instead of the seed's draw (named scenarios).
    pub candidate_burst: Option<usize>,
    /// The cluster's lease world (`crate::leases`) instead of the swarm.
    pub leases: bool,
    /// The swarm on a cluster: [`CLUSTER_NODES`] server nodes and a simulated etcd, clients on
    /// random nodes, inter-node and etcd faults on top of the swarm's.
    pub cluster: bool,
    /// Where the world leaves its trace, so a world the runtime aborts still shows its lines.
    pub keep_trace: Option<crate::trace::TraceSlot>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chaos: Duration::from_secs(3),
            settle_limit: Duration::from_secs(30),
            teardown_limit: Duration::from_secs(60),
            swarm: None,
            script: Vec::new(),
            overrides: Overrides::default(),
            record: true,
            lag: None,
            links: None,
            candidate_burst: None,
            leases: false,
            cluster: false,
            keep_trace: None,
        }
    }
}

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// Server nodes of a cluster world.
pub const CLUSTER_NODES: usize = 3;
/// The dist listener's port on every server node of a cluster world.
const DIST_PORT: u16 = 7000;

/// The `idx`-th server node's address (the single node is the first).
pub(crate) fn server_ip(idx: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, idx as u8 + 1)
}

/// A cluster world's node `idx`: the simulation's lease timings, the production link.
fn cluster_config(idx: usize) -> ClusterConfig {
    let mut cfg = ClusterConfig::new(
        vec![Etcd::url()],
        format!("s{idx}"),
        SocketAddr::from(([0, 0, 0, 0], DIST_PORT)),
    );
    cfg.dist_advertise = Some(SocketAddr::new(IpAddr::V4(server_ip(idx)), DIST_PORT).to_string());
    cfg.lease = LeaseConfig::simulation();
    cfg.etcd_timeout = Duration::from_secs(1);
    cfg
}

/// Slow downlinks on three in ten connections.
const SLOW_LINKS: server::Links = server::Links {
    slow_share: 0.3,
    slow_bytes_per_sec: (2_000, 16_000),
};

fn current(app: &CurrentApp) -> Option<App> {
    app.lock().unwrap().clone()
}

/// Runs the world of `seed`; must be called inside a fresh madsim runtime seeded with `seed`.
pub async fn run(seed: u64, mut opts: Options) -> Report {
    if opts.leases {
        return crate::leases::run(seed, opts).await;
    }
    // The simulator's own choices come from sub-seeded streams (see `streams`).
    let mut swarm = opts
        .swarm
        .clone()
        .unwrap_or_else(|| Swarm::draw(&mut Stream::new(seed, "swarm")));
    if opts.cluster {
        swarm.cluster = true;
        // Its own stream: the swarm's draw stays the single node's.
        let mut draw = Stream::new(seed, "cluster");
        for f in Fault::ALL.iter().filter(|f| f.cluster_only()) {
            if draw.chance(0.7) {
                swarm.faults.push(*f);
            }
        }
        // Half the cluster worlds have quiet spells: idle rooms on a node losing its lease.
        if draw.chance(0.5) {
            swarm.hush = Some(Hush::draw(&mut draw, time::now()));
        }
    }
    opts.overrides.apply(&mut swarm, &mut opts.chaos);
    let workload = Stream::new(seed, "workload");
    let trace = Trace::kept(opts.record, opts.keep_trace.as_ref());
    let oracles = Oracles::traced(&trace);
    // Before the server exists: every probe event of this world, and only of this world.
    let probe = ProbeLog::default();
    let _probe = probe.install(&trace, time::now());
    trace.log(format_args!("swarm {swarm}"));
    if let Some(h) = swarm.hush {
        trace.log(format_args!(
            "quiet spells of {:?} every {:?}",
            h.length, h.every
        ));
    }
    // How long the rooms' media plane takes to answer an offer: a quarter of the worlds answer
    // at once, the others open negotiation windows (renegotiation or leave with an answer due).
    // Its own stream, so the draw does not shift the product's draws.
    let mut plane = Stream::new(seed, "plane");
    let plane_latency = if plane.chance(0.25) {
        Duration::ZERO
    } else {
        Duration::from_millis(1 + plane.below(150))
    };
    trace.log(format_args!("plane latency below {plane_latency:?}"));
    // A fifth of the worlds trickle candidates in bursts (a host with many interfaces), so the
    // plane's reports alone can fill a room's mailbox and its forwarder waits for a slot.
    let burst = if plane.chance(0.2) {
        2 + plane.below(40) as usize
    } else {
        1
    };
    let burst = opts.candidate_burst.unwrap_or(burst);
    if burst > 1 {
        trace.log(format_args!("plane trickles {burst} candidates at once"));
    }
    // Half the worlds' planes report voice activity, which the rooms pass on as
    // `vadNotification` to exactly the clients that know the track. Drawn last on the plane's
    // stream: the worlds without it run as they did before it existed.
    let voices = plane.chance(0.5);
    let voices = opts.overrides.voices.unwrap_or(voices);
    if voices {
        trace.log(format_args!("plane reports voice activity"));
    }
    // A quarter of the worlds bound connections to a few m-lines (the server's own eight plus
    // two to nine): busy rooms then run out, and tracks go unannounced to some peers. Drawn
    // after the voices, so the worlds without the bound are unchanged.
    let max_mlines = plane.chance(0.25).then(|| 10 + plane.below(8) as usize);
    let max_mlines = opts.overrides.max_mlines.map(|n| n as usize).or(max_mlines);
    if let Some(n) = max_mlines {
        trace.log(format_args!("connections bounded to {n} m-lines"));
    }
    swarm.recv_lines = crate::swarm::recv_lines(max_mlines);
    // Half the worlds' rooms mint TURN credentials per peer, as the production server does
    // (drawn last on the plane's stream, so the other draws are unchanged).
    swarm.turn = plane.chance(0.5);
    if swarm.turn {
        trace.log(format_args!("TURN credentials minted per peer"));
    }
    // An idle timeout a world reaches (the production 60 s never is): a socket that heartbeats
    // every 500 ms must never hit it, one whose link is clogged for longer must.
    let mut server_draw = Stream::new(seed, "server");
    swarm.idle_timeout = Duration::from_millis(1_000 + server_draw.below(2_000));
    trace.log(format_args!("idle timeout {:?}", swarm.idle_timeout));
    // Half the worlds have slow processes: mailboxes fill, joins are caught half-way.
    let (lag_chance, lag_max) = if server_draw.chance(0.5) {
        (
            0.05 + server_draw.below(45) as f64 / 100.0,
            Duration::from_micros(500 + server_draw.below(40_000)),
        )
    } else {
        (0.0, Duration::ZERO)
    };
    let (lag_chance, lag_max) = opts.lag.unwrap_or((lag_chance, lag_max));
    videoroom::rt::sim::set_lag(lag_chance, lag_max);
    // A third of the worlds have clients on slow downlinks (three in ten of their connections).
    let links = if server_draw.chance(0.33) {
        SLOW_LINKS
    } else {
        server::Links::default()
    };
    // A third of the worlds require join tokens: the clients mint theirs with the world's
    // secret, trespassers (the `trespass` action) come without, or with bad ones.
    if server_draw.chance(0.33) {
        let key = format!("the simulated join secret of seed {seed}");
        let secret = JoinSecret::new(key.as_bytes()).expect("a key longer than the minimum");
        swarm.join_secret = Some(Arc::new(secret));
        trace.log(format_args!("join secret: on"));
    }
    // Where rooms are small, half the worlds bound a client's outbound queue by bytes before
    // frames: padded metadata, a room that lets updates through in bursts, floods, slow
    // downlinks. Elsewhere the frame count always trips first and the byte bound is never met.
    let byte_bound = swarm.max_peers_per_room <= 3 && server_draw.chance(0.5);
    let links = if byte_bound {
        // Half of them exactly at the server's metadata limit (accepted), the others below.
        let limit = videoroom::engine::SessionConfig::default().max_metadata_bytes;
        let slack = server_draw.below(300) as usize;
        swarm.metadata_bytes = limit - if slack < 150 { 0 } else { slack };
        swarm.actions.entry(Action::Flood).or_insert(2);
        trace.log(format_args!(
            "byte-bound outbound queues, metadata padded to {} bytes",
            swarm.metadata_bytes
        ));
        SLOW_LINKS
    } else {
        links
    };
    let links = opts.links.unwrap_or(links);
    // A third of the worlds let a room nobody came to linger only briefly (the default, 30 s,
    // outlasts most worlds): such rooms then stop within the world's life, and a room with
    // peers in it must never stop for it (`RoomStoppedUnderPeer`).
    let linger = server_draw
        .chance(0.33)
        .then(|| Duration::from_millis(200 + server_draw.below(3_000)));
    if let Some(l) = linger {
        trace.log(format_args!("empty rooms linger {l:?}"));
    }
    // A frozen client's idle close waits behind what is queued for it; on a slow downlink that
    // can outlast the settle phase, so clients freeze only where downlinks are fast.
    swarm.slow_links = links.slow_share > 0.0;
    trace.log(format_args!("links: {links:?}"));
    trace.log(format_args!(
        "process lag: {lag_chance:.2} of receives, below {lag_max:?}"
    ));
    let handle = Handle::current();
    let limits = Limits {
        max_rooms: swarm.max_rooms.unwrap_or(Limits::default().max_rooms),
        ..Limits::for_peers(swarm.max_peers_per_room)
    };
    let limits = Limits {
        empty_room_linger: linger.unwrap_or(limits.empty_room_linger),
        ..limits
    };
    let limits = Limits {
        socket: videoroom::phoenix::SocketConfig {
            idle_timeout: swarm.idle_timeout,
            ..limits.socket
        },
        ..limits
    };
    let limits = match swarm.queue_cap {
        0 => limits,
        n => Limits {
            room_mailbox: n,
            channel_mailbox: n,
            socket_mailbox: n,
            outbound_frames: n,
            ..limits
        },
    };
    let limits = if byte_bound {
        Limits {
            outbound_frames: Limits::default().outbound_frames,
            outbound_bytes: Limits::min_outbound_bytes(swarm.max_peers_per_room),
            peer_update_burst: 200,
            peer_updates_per_sec: 100,
            ..limits
        }
    } else {
        limits
    };
    // The world must run a configuration the real server would accept.
    if let Err(e) = limits.validate() {
        panic!("the swarm drew limits the server refuses: {e}");
    }
    swarm.update_burst = limits.peer_update_burst;
    let etcd_data = opts.cluster.then(Etcd::new);
    let life = crate::ownership::NodeLife::default();
    if let Some(e) = &etcd_data {
        probe.watch_ownership(e.clone(), life.clone(), swarm.hush);
    }
    let etcd = etcd_data.clone().map(|e| {
        let node = handle
            .create_node()
            .name("etcd")
            .ip(IpAddr::V4(ETCD_IP))
            .init(move || etcd_node::serve(e.clone()))
            .build();
        trace.log(format_args!(
            "cluster: {CLUSTER_NODES} server nodes and etcd"
        ));
        node.id()
    });
    let voice_log = server::VoiceLog::default();
    let n_servers = if opts.cluster { CLUSTER_NODES } else { 1 };
    let apps: Vec<CurrentApp> = (0..n_servers).map(|_| Arc::new(Mutex::new(None))).collect();
    let drains: Vec<server::CurrentDrain> = (0..n_servers).map(|_| Arc::default()).collect();
    let servers: Vec<madsim::task::NodeId> = (0..n_servers)
        .map(|idx| {
            let node = server::Node {
                current: apps[idx].clone(),
                drain: drains[idx].clone(),
                limits: limits.clone(),
                plane_latency,
                candidate_burst: burst,
                voices,
                voice_log: voice_log.clone(),
                turn: swarm.turn,
                max_mlines,
                links,
                join_secret: swarm.join_secret.as_deref().cloned(),
                oracles: oracles.clone(),
                cluster: opts.cluster.then(|| cluster_config(idx)),
            };
            let name = if opts.cluster {
                format!("server-{idx}")
            } else {
                "server".to_owned()
            };
            handle
                .create_node()
                .name(name)
                .ip(IpAddr::V4(server_ip(idx)))
                .init(move || server::serve(node.clone()))
                .build()
                .id()
        })
        .collect();
    // Which node each client's socket goes to: its own stream, so single-node worlds draw
    // exactly what they always did.
    let mut placement = Stream::new(seed, "placement");
    let rooms: Vec<String> = (0..swarm.rooms).map(|i| format!("r{i}")).collect();
    let views: Views = Arc::default();
    let (phase_tx, phase_rx) = watch::channel(Phase::Chaos);
    let mut client_nodes = Vec::new();
    let mut done = Vec::new();
    for idx in 0..swarm.clients {
        let rooms = if swarm.burst && idx % 2 == 0 {
            rooms[..1].to_vec()
        } else {
            rooms.clone()
        };
        let at = match n_servers {
            1 => SERVER_IP,
            n => server_ip(placement.below(n as u64) as usize),
        };
        let c = Client::new(
            idx,
            SocketAddr::new(IpAddr::V4(at), server::PORT),
            rooms,
            swarm.for_client(&workload, idx),
            trace.clone(),
            oracles.clone(),
            views.clone(),
            phase_rx.clone(),
        );
        let node = handle
            .create_node()
            .name(format!("client-{idx}"))
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, idx as u8 + 1)))
            .build();
        client_nodes.push(node.id());
        done.push(node.spawn(c.run()));
    }

    // Chaos: faults start (and network episodes heal) while the safety oracles watch.
    let chaos_start = time::now();
    let chaos_end = chaos_start + opts.chaos;
    let mut script: Vec<(time::Instant, Fault)> = opts
        .script
        .iter()
        .map(|(at, f)| (chaos_start + *at, *f))
        .collect();
    let net = NetSim::current();
    let mut injector = Injector::new(
        &apps,
        &views,
        &oracles,
        &trace,
        &net,
        &servers,
        etcd,
        &client_nodes,
        Stream::new(seed, "faults"),
    );
    injector.life = life.clone();
    injector.drains = &drains;
    let mut next_fault = time::now() + swarm.fault_gap(&mut injector.rng);
    let mut audited: Audited = Vec::new();
    // The clock is read once a tick and again after each await (only an await lets simulated
    // time move): under madsim a read costs a lock and two reference counts.
    loop {
        let mut now = time::now();
        if now >= chaos_end {
            break;
        }
        check_servers(&apps, &oracles, &mut audited);
        check_fences(&apps, etcd_data.as_deref(), &oracles);
        injector.heal_due();
        let tick = now + Duration::from_millis(5);
        while let Some(&(at, f)) = script.first() {
            if now < at {
                break;
            }
            // A scripted fault waits for its target to exist (e.g. a room to crash).
            let injected = injector.inject(f).await;
            now = time::now();
            if !injected {
                break;
            }
            script.remove(0);
        }
        if now >= next_fault {
            next_fault = now + swarm.fault_gap(&mut injector.rng);
            if let Some(f) = swarm.pick_fault(&mut injector.rng) {
                injector.inject(f).await;
                now = time::now();
            }
        }
        // A scripted fault still pending (waiting for its target) is retried at the next tick;
        // never sleep until an instant already past, or simulated time would stand still.
        let next_script = script.first().map_or(tick, |(at, _)| (*at).max(tick));
        let next_heal = injector.next_heal().map_or(tick, |t| t.max(tick));
        time::sleep(
            tick.min(next_fault)
                .min(next_script)
                .min(next_heal)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        )
        .await;
    }

    // Settle: heal everything, then every client must converge.
    trace.log("settle: faults off, network healed");
    injector.heal_all();
    let faults = std::mem::take(&mut injector.applied);
    drop(injector);
    phase_tx.send_replace(Phase::Settle);
    let mut settle_end = time::now() + opts.settle_limit;
    let mut reason;
    loop {
        check_servers(&apps, &oracles, &mut audited);
        check_fences(&apps, etcd_data.as_deref(), &oracles);
        reason = converged(&apps, &views, max_mlines, &voice_log).await;
        settle_end = settle_end.max(squatters_due(&views));
        if reason.is_none() || time::now() >= settle_end {
            break;
        }
        time::sleep(Duration::from_millis(20)).await;
    }
    let mut failure = None;
    if let Some(r) = &reason {
        trace.log(format_args!("liveness: not converged: {r}"));
        failure = Some(Failure::Liveness(r.clone()));
    } else {
        trace.log("settled: every client in the one live room of its name, seeing all its peers");
        let views_now = views.lock().unwrap().clone();
        // Expected only for channels the client still held when the crash was injected (a
        // client publishes its view the moment it lets go of one), so the one excuse left is a
        // connection that ended: nothing could arrive on it. A channel the server closed is
        // never excused.
        // Channels in a room at once heard the same metadata updates.
        oracles.check_heard();
        let missing =
            oracles.missing_errors(|c, jr| views_now.get(&c).is_some_and(|v| v.lost.contains(jr)));
        for (c, jr) in missing {
            oracles.fail(format!(
                "c{c}: no phx_error for join_ref {jr} after its room crashed"
            ));
        }
    }

    // Teardown: everyone leaves; the server must end with no process alive.
    phase_tx.send_replace(Phase::Teardown);
    for d in done {
        let _ = d.await;
    }
    if failure.is_none() {
        let end = time::now() + opts.teardown_limit;
        loop {
            let now_apps: Vec<App> = apps.iter().filter_map(current).collect();
            let live: usize = now_apps.iter().map(|a| a.sys.live_count()).sum();
            let blocked: usize = now_apps.iter().map(|a| a.sys.blocked_sends()).sum();
            if live == 0 && blocked == 0 {
                trace.log("teardown: no process left");
                if let Some(e) = &etcd_data {
                    failure = rooms_released(e, &trace).await;
                }
                break;
            }
            if time::now() >= end {
                let left = now_apps
                    .iter()
                    .flat_map(|a| a.sys.live())
                    .map(|(pid, label)| format!("{pid} ({})", label.as_deref().unwrap_or("-")))
                    .collect::<Vec<String>>()
                    .join(", ");
                let r = match (live, blocked) {
                    (_, 0) => format!("{live} processes still alive after every client left: {left}"),
                    (0, _) => format!(
                        "{blocked} senders still waiting for room in a mailbox after every client left"
                    ),
                    _ => format!(
                        "{live} processes still alive after every client left: {left}; {blocked} senders waiting for room in a mailbox"
                    ),
                };
                trace.log(format_args!("liveness: {r}"));
                failure = Some(Failure::Liveness(r));
                break;
            }
            time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut violations = oracles.violations();
    violations.extend(promise_violations(&probe));
    if !violations.is_empty() {
        failure = Some(Failure::Safety(violations));
    }
    // A panic the boundary contained is still a bug: it outranks what it caused downstream.
    if let Some(crash) = crash_verdict(&probe) {
        failure = Some(Failure::Crash(crash));
    }
    let mut coverage: BTreeMap<String, u64> = probe
        .counts()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for (k, v) in oracles.reached_counts() {
        coverage.insert(k.to_string(), v);
    }
    Report {
        swarm: swarm.to_string(),
        digest: trace.digest(),
        trace: trace.lines(),
        checks: oracles.checks() + probe.ownership_checks(),
        coverage,
        faults,
        failure,
    }
}

/// Once every room has stopped, no claim is left in etcd: a clean stop releases its claim
/// before it exits, a crashed room's exit releases it, and a claim of a node that restarted
/// lapses with that incarnation's lease (or is revoked sooner) within a TTL.
async fn rooms_released(etcd: &Etcd, trace: &Trace) -> Option<Failure> {
    let keys = videoroom::cluster::claims::Keys::default();
    let end = time::now() + LeaseConfig::simulation().ttl + Duration::from_secs(2);
    loop {
        let left = etcd.room_keys(&keys);
        if left.is_empty() {
            trace.log("teardown: no room claim left in etcd");
            return None;
        }
        if time::now() >= end {
            let r =
                format!("room claims {left:?} still in etcd a lease TTL after every room stopped");
            trace.log(format_args!("liveness: {r}"));
            return Some(Failure::Liveness(r));
        }
        time::sleep(Duration::from_millis(100)).await;
    }
}

/// Most broken promises spelled out in a verdict; the trace has them all.
const VERDICT_VIOLATIONS: usize = 10;

/// The promises the runtime, registry and room broke, first ones first, as verdict lines.
fn promise_violations(probe: &ProbeLog) -> Vec<String> {
    let all: Vec<String> = probe
        .violations()
        .iter()
        .map(|v| format!("promise: {v}"))
        .chain(
            probe
                .ownership_violations()
                .into_iter()
                .map(|v| format!("ownership: {v}")),
        )
        .collect();
    let mut out: Vec<String> = all.iter().take(VERDICT_VIOLATIONS).cloned().collect();
    if all.len() > VERDICT_VIOLATIONS {
        out.push(format!(
            "and {} more broken promises (see the trace)",
            all.len() - VERDICT_VIOLATIONS
        ));
    }
    out
}

/// The crash verdict: every panic caught at a crash boundary, the first spelled out with its
/// process and simulated time.
fn crash_verdict(probe: &ProbeLog) -> Option<String> {
    let crashes = probe.crashes();
    let first = crashes.first()?;
    let mut v = format!("{} at {:.3}ms", first.panic, first.at.as_secs_f64() * 1e3);
    if crashes.len() > 1 {
        v.push_str(&format!(" (and {} more panics)", crashes.len() - 1));
    }
    Some(v)
}

/// The tables a [`check_server`] last audited, as (system, its changes, the names' changes):
/// unchanged tables need no second walk (a violation in them was reported the first time).
type Audited = Vec<Option<(videoroom::rt::probe::SysId, u64, u64)>>;

/// [`check_server`] on every node, and across nodes: a name is registered on one node at most
/// at any instant (a room gives up its local name before it releases its claim, and a fenced
/// node ends its rooms before its lease can lapse), counting only rooms that may act: a node
/// frozen past its lease wakes with its rooms still registered, and they end at their first
/// step (whether they act meanwhile is the ownership oracle's to judge, against etcd).
fn check_servers(apps: &[CurrentApp], oracles: &Oracles, audited: &mut Audited) {
    audited.resize(apps.len(), None);
    let mut changed = false;
    for (app, seen) in apps.iter().zip(audited.iter_mut()) {
        changed |= check_server(app, oracles, seen);
    }
    if apps.len() < 2 || !changed {
        return;
    }
    let mut owners: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (idx, app) in apps.iter().enumerate() {
        if let Some(app) = current(app) {
            let cluster = app.cluster.get();
            for (name, pid) in app.rooms.entries() {
                if cluster.is_none_or(|c| c.room_may_act(pid)) {
                    owners.entry(name).or_default().push(idx);
                }
            }
        }
    }
    for (name, nodes) in owners {
        oracles.check(nodes.len() <= 1, || {
            format!("room {name} runs on server nodes {nodes:?} at once")
        });
    }
}

/// Every cluster node that may act keeps its fence's whole margin to etcd's expiry of its lease
/// (`ownership::fence_margin_broken`), checked every tick, acts or not.
fn check_fences(apps: &[CurrentApp], etcd: Option<&Etcd>, oracles: &Oracles) {
    let Some(etcd) = etcd else {
        return;
    };
    for (idx, app) in apps.iter().enumerate() {
        let fence = current(app).and_then(|a| a.cluster.get().and_then(|c| c.fence_deadline()));
        let Some((lease, deadline)) = fence else {
            continue;
        };
        let since = etcd.since_start(deadline);
        let broken =
            crate::ownership::fence_margin_broken(&etcd.model.lock().unwrap(), lease, since);
        oracles.check(broken.is_none(), || {
            format!("server node {idx}: {}", broken.unwrap_or_default())
        });
    }
}

/// Server-side safety: at most one live room per name; no name on a dead process; never more
/// rooms than the limit.
/// True if the tables changed since the last look.
fn check_server(
    app: &CurrentApp,
    oracles: &Oracles,
    audited: &mut Option<(videoroom::rt::probe::SysId, u64, u64)>,
) -> bool {
    let now = {
        let guard = app.lock().unwrap();
        let Some(app) = guard.as_ref() else {
            return false;
        };
        Some((app.sys.id(), app.sys.changes(), app.rooms.changes()))
    };
    if *audited == now {
        return false;
    }
    *audited = now;
    let Some(app) = current(app) else {
        return false;
    };
    // The process table's own bookkeeping (monitors held on both ends, none on the dead).
    for bad in app.sys.audit() {
        oracles.fail(format!("process table: {bad}"));
    }
    for bad in app.rooms.audit() {
        oracles.fail(format!("room registry: {bad}"));
    }
    let entries = app.rooms.entries();
    oracles.check(entries.len() <= app.limits.max_rooms, || {
        format!(
            "{} rooms run, over the limit of {}",
            entries.len(),
            app.limits.max_rooms
        )
    });
    for (name, pid) in entries {
        oracles.check(app.sys.is_alive(pid), || {
            format!("room name {name} maps to dead {pid}")
        });
        let live = app.sys.labelled(&name);
        oracles.check(live.len() <= 1, || {
            format!("{} live rooms named {name}: {live:?}", live.len())
        });
    }
    true
}

/// None when converged, else why not (the first reason found). Views are compared by exact
/// peer id: each client sees exactly the endpoints of the other members of its room, under the
/// peer ids the server holds for them (no ghost of a client that rejoined under a new id, no
/// one missing), each with its own client's metadata, and its own peer id is a server peer.
/// When the world can be judged on the last squatter holding a slot: its join plus the grace,
/// plus a second for the drop to cross the room, the channel and the socket and for the
/// clients refused meanwhile to retry into the freed slot (they retry within 300 ms). A
/// squatter that got in late in the settle phase (it left before its grace, was refused while
/// the room was full, and got in when a slot freed) is not converged before then.
fn squatters_due(views: &Views) -> time::Instant {
    // The worlds run the default grace (as the client's own grace check assumes).
    let grace = Limits::default().connect_grace + Duration::from_secs(2);
    views
        .lock()
        .unwrap()
        .values()
        .filter(|v| v.squatter && v.joined && v.dropped.is_none())
        .filter_map(|v| v.joined_at.map(|t| t + grace))
        .max()
        .unwrap_or_else(time::now)
}

async fn converged(
    apps: &[CurrentApp],
    views: &Views,
    max_mlines: Option<usize>,
    voice_log: &server::VoiceLog,
) -> Option<String> {
    let mut up = Vec::new();
    for (idx, app) in apps.iter().enumerate() {
        match current(app) {
            Some(a) => up.push(a),
            None => return Some(format!("server node {idx} not up")),
        }
    }
    // The node that runs a room (exactly one, or none yet): a cluster's rooms are spread.
    let runs = |room: &str| up.iter().find(|a| a.rooms.whereis(room).is_some()).cloned();
    let app = &up[0];
    let views = views.lock().unwrap().clone();
    let mut by_room: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut full: BTreeMap<String, usize> = BTreeMap::new();
    let mut at_room_limit = 0;
    for (idx, v) in &views {
        if v.stranded {
            // The server closed its channel for good: already a safety violation; waiting
            // would only delay the verdict.
            continue;
        }
        if !v.connected {
            return Some(format!("c{idx} not connected"));
        }
        if v.tabs > 0 {
            // Settling, every tab leaves; a join or leave never answered keeps one open.
            return Some(format!(
                "c{idx} still has {} tabs open (a join or leave left unanswered)",
                v.tabs
            ));
        }
        if v.squatter {
            // Done once the server dropped it (or it never got a slot, or it got in late and
            // left for good).
            if v.dropped.is_none() && v.refused.is_none() && !v.gave_up {
                return Some(format!("squatter c{idx} still holds a slot in {}", v.room));
            }
            continue;
        }
        if v.refused.as_deref() == Some("room is full") {
            *full.entry(v.room.clone()).or_default() += 1;
            continue;
        }
        if v.refused.as_deref() == Some(ROOM_LIMIT_REASON) {
            at_room_limit += 1;
            continue;
        }
        if !v.joined || v.peer_id.is_none() {
            return Some(format!("c{idx} not joined to room {}", v.room));
        }
        if let Some(owed) = v.owed {
            return Some(format!("c{idx} still waits for {owed}"));
        }
        by_room.entry(v.room.clone()).or_default().insert(*idx);
    }
    // A client refused for the room limit is converged only if the server really is at it.
    let running: usize = up.iter().map(|a| a.rooms.len()).sum();
    if at_room_limit > 0 && running < app.limits.max_rooms {
        return Some(format!(
            "{at_room_limit} clients refused for the room limit, but {running} of {} rooms run",
            app.limits.max_rooms
        ));
    }
    // A client refused because its room is full is converged only if the room really is full.
    for (room, refused) in &full {
        let joined = by_room.get(room).map_or(0, |m| m.len());
        if joined < app.limits.max_peers_per_room {
            return Some(format!(
                "{refused} clients refused from {room}, which has {joined} of {} peers",
                app.limits.max_peers_per_room
            ));
        }
    }
    for (room, members) in &by_room {
        let Some(owner) = runs(room) else {
            return Some(format!("room {room} runs on no node"));
        };
        let info = owner.room_info(room).await.unwrap_or_default();
        let peers = info.peers;
        // No leaked engine peers: the media session counts exactly the room's peers.
        let endpoints: BTreeSet<&String> = info.endpoints.iter().collect();
        let peer_ids: BTreeSet<&String> = peers.iter().map(|(p, _)| p).collect();
        if endpoints != peer_ids {
            return Some(format!(
                "room {room}: engine endpoints {endpoints:?} but peers {peer_ids:?}"
            ));
        }
        // Nor leaked negotiation state: one per endpoint, dropped when it leaves.
        if info.negotiation_peers != endpoints.len() {
            return Some(format!(
                "room {room}: the negotiation holds {} peers for {} endpoints",
                info.negotiation_peers,
                endpoints.len()
            ));
        }
        // Every member's own peer id is a server peer, and they are all the server's peers.
        let mut member_of: BTreeMap<String, usize> = BTreeMap::new();
        for idx in members {
            let pid = views[idx].peer_id.clone().expect("joined");
            if !peer_ids.contains(&pid) {
                return Some(format!("c{idx}'s peer {pid} is not in room {room}"));
            }
            member_of.insert(pid, *idx);
        }
        if member_of.len() != peer_ids.len() {
            let ghosts: Vec<&&String> = peer_ids
                .iter()
                .filter(|p| !member_of.contains_key(p.as_str()))
                .collect();
            return Some(format!(
                "room {room} has {} peers on the server, {} clients in it (not a member's: {ghosts:?})",
                peers.len(),
                members.len()
            ));
        }
        for idx in members {
            let v = &views[idx];
            let own = v.peer_id.as_deref().expect("joined");
            let expected: BTreeMap<String, usize> = member_of
                .iter()
                .filter(|(p, _)| p.as_str() != own)
                .map(|(p, i)| (p.clone(), *i))
                .collect();
            if v.sees != expected {
                return Some(format!(
                    "c{idx} in {room} sees {:?}, expected {expected:?}",
                    v.sees
                ));
            }
            // And each with its current metadata, as the room holds it (a lost update leaves
            // a stale name or mute state on someone's screen for good).
            for (p, m) in &info.metadata {
                if p.as_str() == own {
                    continue;
                }
                let want = m["seq"].as_u64();
                let got = v.meta.get(p).copied();
                if got != want {
                    return Some(format!(
                        "c{idx} in {room} has metadata seq {got:?} for {p}, the room holds {want:?}"
                    ));
                }
            }
            // It receives exactly the others' published tracks, each with the metadata the
            // room holds (a lost trackUpdated leaves a wrong mute state on screen for good).
            let want: BTreeMap<&str, &serde_json::Value> = info
                .tracks
                .iter()
                .filter(|(e, _, _)| e.as_str() != own)
                .map(|(_, t, m)| (t.as_str(), m))
                .collect();
            let got: BTreeMap<&str, &serde_json::Value> =
                v.track_meta.iter().map(|(t, m)| (t.as_str(), m)).collect();
            // Where the world bounds connections, one that is full (counting the lines the
            // server keeps for its own publications) was not told of tracks published after
            // it filled: it holds some of them, each as the room holds it.
            let reserved = videoroom::engine::NegotiationConfig::default().max_published_tracks;
            let full = max_mlines.is_some_and(|n| v.mlines + reserved >= n);
            let held = if full {
                got.iter().all(|(t, m)| want.get(t) == Some(m))
            } else {
                got == want
            };
            if !held {
                let differ: BTreeSet<&&str> = want
                    .keys()
                    .chain(got.keys())
                    .filter(|t| want.get(*t) != got.get(*t))
                    .collect();
                let missing = differ.iter().filter(|t| !got.contains_key(**t)).count();
                return Some(format!(
                    "c{idx} in {room} holds other tracks or metadata than the room for {differ:.200?} \
                     ({missing} of them not held; its connection has {} m-lines{})",
                    v.mlines,
                    if full { ", full" } else { "" }
                ));
            }
            // Every track it knows shows the voice the plane last reported of it: the room passes
            // each change on to every peer that knows the track, and tells a peer that learns of a
            // speaking track so (a lost one leaves a speaking marker on, or off, for good).
            {
                let log = voice_log.lock().unwrap();
                if let Some((t, held)) = v
                    .voices
                    .iter()
                    .find(|(t, held)| log.get(*t).copied().unwrap_or(false) != **held)
                {
                    return Some(format!(
                        "c{idx} shows track {t:.80} {}, but the plane last reported it {}",
                        if *held { "speaking" } else { "silent" },
                        if *held { "silent" } else { "speaking" },
                    ));
                }
            }
        }
        // Every picture it receives has had a keyframe since it started (the server asks the
        // publisher when a subscriber starts receiving, connects, or the publisher starts
        // sending); otherwise it stays frozen until the browser's own PLI.
        if let Some((peer, track)) = info.keyframe_waits.first() {
            let who = member_of
                .get(peer)
                .map_or(peer.clone(), |i| format!("c{i}"));
            return Some(format!(
                "{who} in {room} never had a keyframe of {track} ({} such legs)",
                info.keyframe_waits.len()
            ));
        }
    }
    None
}
