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
use tokio::sync::watch;
use videoroom::app::{App, Limits};
use videoroom::channel::ROOM_LIMIT_REASON;
use videoroom::rt::{self, time, ExitReason};

use crate::client::{Client, Phase, Views};
use crate::oracle::Oracles;
use crate::server::{self, CurrentApp};
use crate::swarm::Swarm;
use crate::trace::{digest, Trace};

/// How a run ended badly; each has its own exit code in the CLI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The world panicked (a bug that crashed the simulation itself).
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
    pub script: Vec<(Duration, &'static str)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chaos: Duration::from_secs(3),
            settle_limit: Duration::from_secs(30),
            teardown_limit: Duration::from_secs(60),
            swarm: None,
            script: Vec::new(),
        }
    }
}

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn current(app: &CurrentApp) -> Option<App> {
    app.lock().unwrap().clone()
}

/// Runs the world; must be called inside a fresh madsim runtime.
pub async fn run(opts: Options) -> Report {
    let counts = crate::coverage::Counts::default();
    let _counting = crate::coverage::install(&counts);
    let swarm = opts.swarm.clone().unwrap_or_else(Swarm::draw);
    let trace = Trace::new();
    let oracles = Oracles::default();
    trace.log(format!("swarm {swarm}"));
    // How long the rooms' media plane takes to answer an offer: a quarter of the worlds answer
    // at once, the others open negotiation windows (renegotiation or leave with an answer due).
    let plane_latency = if rt::rand::chance(0.25) {
        Duration::ZERO
    } else {
        Duration::from_millis(1 + rt::rand::below(150))
    };
    trace.log(format!("plane latency below {plane_latency:?}"));
    let handle = Handle::current();
    let limits = Limits {
        max_rooms: swarm.max_rooms.unwrap_or(Limits::default().max_rooms),
        ..Limits::for_peers(swarm.max_peers_per_room)
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
    // The world must run a configuration the real server would accept.
    if let Err(e) = limits.validate() {
        panic!("the swarm drew limits the server refuses: {e}");
    }
    let app: CurrentApp = Arc::new(Mutex::new(None));
    let server = {
        let (app, limits) = (app.clone(), limits.clone());
        handle
            .create_node()
            .name("server")
            .ip(IpAddr::V4(SERVER_IP))
            .init(move || server::serve(app.clone(), limits.clone(), plane_latency))
            .build()
    };
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
        let c = Client::new(
            idx,
            SocketAddr::new(IpAddr::V4(SERVER_IP), server::PORT),
            rooms,
            swarm.clone(),
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

    // Chaos: faults while the safety oracles watch.
    let mut faults = BTreeMap::new();
    let chaos_start = time::now();
    let chaos_end = chaos_start + opts.chaos;
    let mut script: Vec<(time::Instant, &'static str)> = opts
        .script
        .iter()
        .map(|(at, f)| (chaos_start + *at, *f))
        .collect();
    let mut next_fault = time::now() + swarm.fault_gap();
    let net = NetSim::current();
    let injector = Injector {
        app: &app,
        views: &views,
        oracles: &oracles,
        trace: &trace,
        net: &net,
        server: server.id(),
        clients: &client_nodes,
    };
    while time::now() < chaos_end {
        check_server(&app, &oracles);
        let tick = time::now() + Duration::from_millis(5);
        while let Some(&(at, f)) = script.first() {
            if time::now() < at {
                break;
            }
            // A scripted fault waits for its target to exist (e.g. a room to crash).
            if !inject(f, &injector, &mut faults).await {
                break;
            }
            script.remove(0);
        }
        if time::now() >= next_fault {
            next_fault = time::now() + swarm.fault_gap();
            if let Some(f) = swarm.pick_fault() {
                inject(f, &injector, &mut faults).await;
            }
        }
        // A scripted fault still pending (waiting for its target) is retried at the next tick;
        // never sleep until an instant already past, or simulated time would stand still.
        let next_script = script.first().map_or(tick, |(at, _)| (*at).max(tick));
        time::sleep(
            tick.min(next_fault)
                .min(next_script)
                .saturating_duration_since(time::now())
                .max(Duration::from_millis(1)),
        )
        .await;
    }

    // Settle: heal everything, then every client must converge.
    trace.log("settle: faults off, network healed");
    heal(&net, server.id(), &client_nodes);
    phase_tx.send_replace(Phase::Settle);
    let settle_end = time::now() + opts.settle_limit;
    let mut reason;
    loop {
        check_server(&app, &oracles);
        reason = converged(&app, &views).await;
        if reason.is_none() || time::now() >= settle_end {
            break;
        }
        time::sleep(Duration::from_millis(20)).await;
    }
    let mut failure = None;
    if let Some(r) = &reason {
        trace.log(format!("liveness: not converged: {r}"));
        failure = Some(Failure::Liveness(r.clone()));
    } else {
        trace.log("settled: every client in the one live room of its name, seeing all its peers");
        let views_now = views.lock().unwrap().clone();
        // Expected only for channels the client still held when the crash was injected (a
        // client publishes its view the moment it lets go of one), so the one excuse left is a
        // connection that ended: nothing could arrive on it. A channel the server closed is
        // never excused.
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
            let live = current(&app).map_or(0, |a| a.sys.live_count());
            if live == 0 {
                trace.log("teardown: no process left");
                break;
            }
            if time::now() >= end {
                let r = format!("{live} processes still alive after every client left");
                trace.log(format!("liveness: {r}"));
                failure = Some(Failure::Liveness(r));
                break;
            }
            time::sleep(Duration::from_millis(100)).await;
        }
    }
    let violations = oracles.violations();
    if !violations.is_empty() {
        failure = Some(Failure::Safety(violations));
    }
    let lines = trace.lines();
    let mut coverage = counts.0.lock().unwrap().clone();
    for (k, v) in oracles.reached_counts() {
        coverage.insert(k.to_string(), v);
    }
    Report {
        swarm: swarm.to_string(),
        digest: digest(&lines),
        trace: lines,
        checks: oracles.checks(),
        coverage,
        faults,
        failure,
    }
}

/// Server-side safety: at most one live room per name; no name on a dead process; never more
/// rooms than the limit.
fn check_server(app: &CurrentApp, oracles: &Oracles) {
    let Some(app) = current(app) else { return };
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
}

/// None when converged, else why not (the first reason found). Views are compared by exact
/// peer id: each client sees exactly the endpoints of the other members of its room, under the
/// peer ids the server holds for them (no ghost of a client that rejoined under a new id, no
/// one missing), each with its own client's metadata, and its own peer id is a server peer.
async fn converged(app: &CurrentApp, views: &Views) -> Option<String> {
    let Some(app) = current(app) else {
        return Some("server not up".into());
    };
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
        if v.squatter {
            // Done once the server dropped it (or it never got a slot).
            if v.dropped.is_none() && v.refused.is_none() {
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
    let running = app.rooms.len();
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
        let info = app.room_info(room).await.unwrap_or_default();
        let peers = info.peers;
        // No leaked engine peers: the media session counts exactly the room's peers.
        let endpoints: BTreeSet<&String> = info.endpoints.iter().collect();
        let peer_ids: BTreeSet<&String> = peers.iter().map(|(p, _)| p).collect();
        if endpoints != peer_ids {
            return Some(format!(
                "room {room}: engine endpoints {endpoints:?} but peers {peer_ids:?}"
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
        }
    }
    None
}

fn heal(net: &NetSim, server: madsim::task::NodeId, clients: &[madsim::task::NodeId]) {
    net.update_config(|c| {
        c.packet_loss_rate = 0.0;
        c.send_latency = Duration::from_millis(1)..Duration::from_millis(10);
    });
    net.unclog_node(server);
    for c in clients {
        net.unclog_node(*c);
        net.unclog_link(*c, server);
        net.unclog_link(server, *c);
    }
}

/// What the fault injector reaches into.
struct Injector<'a> {
    app: &'a CurrentApp,
    views: &'a Views,
    oracles: &'a Oracles,
    trace: &'a Trace,
    net: &'a NetSim,
    server: madsim::task::NodeId,
    clients: &'a [madsim::task::NodeId],
}

/// Applies `fault` and counts it in `applied`; false if it had no target (e.g. no room yet).
async fn inject(
    fault: &'static str,
    ctx: &Injector<'_>,
    applied: &mut BTreeMap<&'static str, u64>,
) -> bool {
    let done = apply(fault, ctx).await;
    if done {
        *applied.entry(fault).or_default() += 1;
    }
    done
}

async fn apply(fault: &'static str, ctx: &Injector<'_>) -> bool {
    let Injector {
        app,
        views,
        oracles,
        trace,
        net,
        server,
        clients,
    } = *ctx;
    let pick = |n: usize| rt::rand::below(n as u64) as usize;
    match fault {
        "room_crash" | "engine_crash" => {
            let Some(app) = current(app) else {
                return false;
            };
            let rooms = app.rooms.entries();
            if rooms.is_empty() {
                return false;
            }
            let (name, pid) = rooms[pick(rooms.len())].clone();
            // Every channel joined to it must get exactly one phx_error.
            let peers: BTreeSet<String> = app
                .room_peers(&name)
                .await
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            for (idx, v) in views.lock().unwrap().iter() {
                if let (Some(p), Some(jr)) = (&v.peer_id, &v.join_ref) {
                    if peers.contains(p) {
                        oracles.expect_error(*idx, jr.clone());
                    }
                }
            }
            let reason = if fault == "room_crash" {
                ExitReason::Killed
            } else {
                ExitReason::Crashed("engine crashed (injected)".into())
            };
            trace.log(format!(
                "fault {fault}: {name} {pid} with {} peers",
                peers.len()
            ));
            app.sys.exit(pid, reason)
        }
        "channel_crash" => {
            let Some(app) = current(app) else {
                return false;
            };
            let rooms = app.rooms.entries();
            if rooms.is_empty() {
                return false;
            }
            let (name, _) = &rooms[pick(rooms.len())];
            let peers = app.room_peers(name).await;
            if peers.is_empty() {
                return false;
            }
            let (peer, pid) = &peers[pick(peers.len())];
            trace.log(format!("fault channel_crash: peer {peer} {pid}"));
            app.sys.kill(*pid)
        }
        "socket_drop" => {
            let Some(app) = current(app) else {
                return false;
            };
            let sockets = app.sys.labelled(server::SOCKET_LABEL);
            if sockets.is_empty() {
                return false;
            }
            let pid = sockets[pick(sockets.len())];
            trace.log(format!("fault socket_drop: {pid}"));
            app.sys.kill(pid)
        }
        "latency" => {
            let hi = 2 + rt::rand::below(200);
            trace.log(format!("fault latency: 1..{hi}ms"));
            net.update_config(|c| {
                c.send_latency = Duration::from_millis(1)..Duration::from_millis(hi)
            });
            true
        }
        "loss" => {
            let p = rt::rand::below(30) as f64 / 100.0;
            trace.log(format!("fault loss: {p}"));
            net.update_config(|c| c.packet_loss_rate = p);
            true
        }
        "clog" => {
            let c = clients[pick(clients.len())];
            if rt::rand::chance(0.5) {
                trace.log(format!("fault clog: node {c}"));
                net.clog_node(c);
            } else {
                trace.log(format!("fault unclog: node {c}"));
                net.unclog_node(c);
            }
            true
        }
        "partition" => {
            let c = clients[pick(clients.len())];
            trace.log(format!("fault partition: node {c} from server"));
            net.clog_link(c, server);
            net.clog_link(server, c);
            true
        }
        "server_restart" => {
            trace.log("fault server_restart");
            *app.lock().unwrap() = None;
            // `restart` alone keeps the old incarnation's sockets bound (madsim resets a node's
            // network only on `kill`), so the new listener could never bind.
            Handle::current().kill(server);
            Handle::current().restart(server);
            true
        }
        _ => false,
    }
}
