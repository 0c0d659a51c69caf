//! The cluster's lease world (scenario `cluster-leases`): a simulated etcd (the gateway model,
//! served over madsim's TCP by the same HTTP code the client speaks) and three server nodes,
//! each running the production node driver (`videoroom::cluster::node`) and a workload of rooms
//! that claim names, act while they own them, and release them. Faults pause nodes past their
//! lease TTL (the stale owner), cut etcd off from everyone or from one node, pause and restart
//! etcd with its data kept, and kill and restart nodes; episodes start and heal during chaos.
//!
//! Oracles, checked at the instant they are promised (docs/cluster.md, G1/G2):
//! - every act of a room happens while etcd still holds its claim: the name's key is the room's
//!   own record, on a lease etcd has not let lapse (a node fenced late acts after etcd may have
//!   given the name away);
//! - at every act, the node keeps its fence's whole margin: its deadline plus the margin never
//!   passes etcd's expiry of the lease (a deadline counted from a keepalive's answer would);
//! - per name, acts never go back in epoch and two nodes never act on one epoch: at most one
//!   acting owner at any simulated instant;
//! - the epochs of the wins a node can act on only grow per name;
//! - liveness: after heal every node acts again and every name is won again;
//! - teardown: once the nodes are gone and their leases lapse, etcd holds no key and no lease.
//!
//! It must never reach into the product's state: rooms use only the `Node` API a cluster
//! registry would use; the oracles read the etcd model, which is the world's, not the product's,
//! and the fence deadline the node reports through that API (`Node::fence_deadline`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::task::NodeId;
use tokio::net::TcpListener;
use videoroom::cluster::claims::{ClaimOutcome, Keys, RoomRecord};
use videoroom::cluster::etcd::client::EtcdClient;
use videoroom::cluster::etcd::http;
use videoroom::cluster::etcd::model::EtcdModel;
use videoroom::cluster::lease::LeaseConfig;
use videoroom::cluster::node::{Node, NodeConfig, NodeError};
use videoroom::rt::{self, time};

use crate::oracle::ProbeLog;
use crate::ownership::{claim_broken, fence_margin_broken};
use crate::streams::Stream;
use crate::trace::Trace;
use crate::world::{Failure, Options, Report};

const ETCD_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 1);
const ETCD_PORT: u16 = 2379;
const NODES: usize = 3;
const ROOMS: u64 = 4;
const PREFIX: &str = "/videoroom/v1/";

const CHAOS: u8 = 0;
const SETTLE: u8 = 1;
const TEARDOWN: u8 = 2;

fn node_ip(idx: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 8, idx as u8 + 1)
}

/// What a name has seen: the last act (epoch, node), the highest epoch won, and whether it was
/// won since the heal.
#[derive(Default)]
struct NameState {
    last_act: Option<(i64, usize)>,
    max_won: i64,
    won_since_heal: bool,
}

/// The world's state, shared by the etcd node, the server nodes and the oracles.
struct World {
    model: Mutex<EtcdModel>,
    start: time::Instant,
    trace: Trace,
    keys: Keys,
    phase: AtomicU8,
    tokens: AtomicU64,
    checks: AtomicU64,
    violations: Mutex<Vec<String>>,
    names: Mutex<BTreeMap<String, NameState>>,
    coverage: Mutex<BTreeMap<String, u64>>,
    /// Each node's current incarnation of the driver (replaced when the node restarts).
    nodes: Mutex<Vec<Option<Arc<Node>>>>,
    /// Rooms each node's workload holds (emptied by a restart: the process is gone).
    held: Mutex<Vec<BTreeSet<String>>>,
}

impl World {
    fn now_ms(&self) -> u64 {
        time::now()
            .saturating_duration_since(self.start)
            .as_millis() as u64
    }

    fn phase(&self) -> u8 {
        self.phase.load(Ordering::SeqCst)
    }

    fn reached(&self, what: &str) {
        *self
            .coverage
            .lock()
            .unwrap()
            .entry(what.to_owned())
            .or_default() += 1;
    }

    fn violation(&self, v: String) {
        self.trace.log(format_args!("VIOLATION {v}"));
        self.violations.lock().unwrap().push(v);
    }

    /// A room of node `idx` acts on `name` as the owner from `epoch`, under `lease`.
    fn act(&self, idx: usize, name: &str, epoch: i64, lease: i64, record: &RoomRecord) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let broken = claim_broken(
            &self.model.lock().unwrap(),
            &self.keys.room(name),
            &record.to_value(),
            lease,
            now,
        );
        if let Some(why) = broken {
            self.violation(format!("n{idx} acted on {name} (epoch {epoch}): {why}"));
        }
        // The node acting now keeps its fence's whole margin to etcd's expiry of the lease.
        let node = self.nodes.lock().unwrap()[idx].clone();
        if let Some((l, deadline)) = node.and_then(|n| n.fence_deadline()) {
            let since = deadline.saturating_duration_since(self.start);
            if let Some(why) = fence_margin_broken(&self.model.lock().unwrap(), l, since) {
                self.violation(format!("n{idx} acting on {name}: {why}"));
            }
        }
        let mut names = self.names.lock().unwrap();
        let st = names.entry(name.to_owned()).or_default();
        if let Some((e, n)) = st.last_act {
            if epoch < e || (epoch == e && n != idx) {
                drop(names);
                self.violation(format!(
                    "two owners of {name}: n{idx} acted at epoch {epoch} after n{n} at epoch {e}"
                ));
                return;
            }
            if epoch > e && n != idx {
                self.reached("owner moved to another node");
            }
        }
        st.last_act = Some((epoch, idx));
    }

    fn won(&self, idx: usize, name: &str, epoch: i64) {
        let mut names = self.names.lock().unwrap();
        let st = names.entry(name.to_owned()).or_default();
        if epoch <= st.max_won {
            let max = st.max_won;
            drop(names);
            self.violation(format!(
                "n{idx} won {name} at epoch {epoch}, not above the last won epoch {max}"
            ));
            return;
        }
        st.max_won = epoch;
        if self.phase() == SETTLE {
            st.won_since_heal = true;
        }
    }
}

/// Runs one world of the `cluster-leases` scenario.
pub async fn run(seed: u64, opts: Options) -> Report {
    let trace = Trace::kept(opts.record, opts.keep_trace.as_ref());
    // The product's typed probe events (the node's retries among them) count as coverage; its
    // never-events and broken promises fail the seed.
    let probe = ProbeLog::default();
    let _probe = probe.install(&trace, time::now());
    let world = Arc::new(World {
        model: Mutex::new(EtcdModel::new()),
        start: time::now(),
        trace: trace.clone(),
        keys: Keys::new(PREFIX).expect("a valid prefix"),
        phase: AtomicU8::new(CHAOS),
        tokens: AtomicU64::new(0),
        checks: AtomicU64::new(0),
        violations: Mutex::default(),
        names: Mutex::default(),
        coverage: Mutex::default(),
        nodes: Mutex::new(vec![None; NODES]),
        held: Mutex::new(vec![BTreeSet::new(); NODES]),
    });
    let handle = Handle::current();
    let etcd = {
        let w = world.clone();
        handle
            .create_node()
            .name("etcd")
            .ip(IpAddr::V4(ETCD_IP))
            .init(move || etcd_serve(w.clone()))
            .build()
            .id()
    };
    let mut servers = Vec::new();
    for idx in 0..NODES {
        let w = world.clone();
        let node = handle
            .create_node()
            .name(format!("node-{idx}"))
            .ip(IpAddr::V4(node_ip(idx)))
            .init(move || node_main(w.clone(), idx))
            .build();
        servers.push(node.id());
    }
    let swarm = format!(
        "cluster-leases: {NODES} nodes, {ROOMS} room names, chaos {:?}",
        opts.chaos
    );
    trace.log(&swarm);

    let mut faults = BTreeMap::new();
    let mut injector = Injector {
        stream: Stream::new(seed, "cluster-faults"),
        net: NetSim::current(),
        handle: handle.clone(),
        etcd,
        servers: servers.clone(),
        heals: Vec::new(),
        world: world.clone(),
    };
    let chaos_end = time::now() + opts.chaos;
    let mut next_fault = time::now() + Duration::from_millis(500);
    loop {
        let next_heal = injector.heals.iter().map(|(t, _)| *t).min();
        let wake = [Some(next_fault), next_heal, Some(chaos_end)]
            .into_iter()
            .flatten()
            .min()
            .expect("three candidates");
        time::sleep_until(wake).await;
        let now = time::now();
        injector.heal_due(now);
        if now >= chaos_end {
            break;
        }
        if now >= next_fault {
            let kind = injector.inject();
            *faults.entry(kind).or_default() += 1;
            next_fault = now + Duration::from_millis(300 + injector.stream.below(2500));
        }
    }
    injector.heal_all();
    world.phase.store(SETTLE, Ordering::SeqCst);
    trace.log("settle");

    let failure = settle(&world, opts.settle_limit.min(Duration::from_secs(30))).await;
    let failure = match failure {
        Some(f) => Some(f),
        None => teardown(&world, &handle, &servers).await,
    };
    let mut violations = world.violations.lock().unwrap().clone();
    violations.extend(probe.violations().iter().map(|v| v.to_string()));
    if let Some(c) = probe.crashes().first() {
        violations.push(format!("a process panicked: {}", c.panic));
    }
    let failure = if violations.is_empty() {
        failure
    } else {
        Some(Failure::Safety(violations))
    };
    for idx in 0..NODES {
        world.nodes.lock().unwrap()[idx] = None;
    }
    let mut coverage = world.coverage.lock().unwrap().clone();
    for (name, n) in probe.counts() {
        *coverage.entry(name.to_owned()).or_default() += n;
    }
    Report {
        swarm,
        trace: trace.lines(),
        digest: trace.digest(),
        checks: world.checks.load(Ordering::Relaxed),
        coverage,
        faults,
        failure,
    }
}

/// After the heal: every node acts again and every name is won again.
async fn settle(world: &World, limit: Duration) -> Option<Failure> {
    let deadline = time::now() + limit;
    loop {
        let idle: Vec<usize> = (0..NODES)
            .filter(|i| {
                let nodes = world.nodes.lock().unwrap();
                nodes[*i].as_ref().and_then(|n| n.acting_now()).is_none()
            })
            .collect();
        let unwon: Vec<String> = (0..ROOMS)
            .map(|r| format!("r{r}"))
            .filter(|n| {
                let names = world.names.lock().unwrap();
                !names.get(n).is_some_and(|s| s.won_since_heal)
            })
            .collect();
        if idle.is_empty() && unwon.is_empty() {
            world.trace.log("settled");
            return None;
        }
        if time::now() >= deadline {
            return Some(Failure::Liveness(format!(
                "{limit:?} after the heal: nodes not acting {idle:?}, names not won again {unwon:?}"
            )));
        }
        time::sleep(Duration::from_millis(100)).await;
    }
}

/// The workloads stop and release; the nodes go away; their leases lapse: nothing is left.
async fn teardown(world: &World, handle: &Handle, servers: &[NodeId]) -> Option<Failure> {
    world.phase.store(TEARDOWN, Ordering::SeqCst);
    let deadline = time::now() + Duration::from_secs(10);
    while world.held.lock().unwrap().iter().any(|h| !h.is_empty()) {
        if time::now() >= deadline {
            return Some(Failure::Liveness(format!(
                "rooms never released after teardown began: {:?}",
                world.held.lock().unwrap()
            )));
        }
        time::sleep(Duration::from_millis(50)).await;
    }
    // The rooms released their names while acting: what is left is on the nodes' leases.
    let rooms: Vec<String> = {
        let model = world.model.lock().unwrap();
        let prefix = world.keys.rooms_prefix();
        model
            .keys()
            .filter(|k| k.key.starts_with(&prefix))
            .map(|k| String::from_utf8_lossy(k.key).into_owned())
            .collect()
    };
    if !rooms.is_empty() {
        world
            .trace
            .log(format_args!("left by fenced rooms: {rooms:?}"));
    }
    for id in servers {
        handle.kill(*id);
    }
    let ttl = LeaseConfig::simulation().ttl;
    let deadline = time::now() + ttl + Duration::from_secs(3);
    loop {
        let (keys, leases) = {
            let model = world.model.lock().unwrap();
            let keys: Vec<String> = model
                .keys()
                .map(|k| String::from_utf8_lossy(k.key).into_owned())
                .collect();
            (keys, model.leases().count())
        };
        if keys.is_empty() && leases == 0 {
            return None;
        }
        if time::now() >= deadline {
            return Some(Failure::Liveness(format!(
                "TTL + 3 s after the nodes died etcd still holds keys {keys:?} and {leases} leases"
            )));
        }
        time::sleep(Duration::from_millis(100)).await;
    }
}

/// The etcd node: the model behind the gateway, and its lease expiry. A restart keeps the data
/// (the model lives in the world) and extends every lease by its TTL, as etcd does.
async fn etcd_serve(world: Arc<World>) {
    let now = world.now_ms();
    world.model.lock().unwrap().restart(now);
    let listener = loop {
        match TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], ETCD_PORT))).await {
            Ok(l) => break l,
            Err(_) => time::sleep(Duration::from_millis(1)).await,
        }
    };
    let w = world.clone();
    tokio::spawn(async move {
        loop {
            time::sleep(Duration::from_millis(50)).await;
            let now = w.now_ms();
            let revoked = w.model.lock().unwrap().expire(now);
            for id in revoked {
                w.trace.log(format_args!("etcd: lease {id:x} lapsed"));
                w.reached("etcd let a lease lapse");
            }
        }
    });
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let w = world.clone();
        tokio::spawn(async move {
            let Ok(req) = http::read_request(&mut stream, http::MAX_REQUEST).await else {
                return;
            };
            let now = w.now_ms();
            let (status, body) = w.model.lock().unwrap().handle(now, &req.path, &req.body);
            let _ = http::write_response(&mut stream, status, "application/json", &body).await;
        });
    }
}

/// A server node: its driver and a workload of rooms.
async fn node_main(world: Arc<World>, idx: usize) {
    let client = EtcdClient::new(
        &[format!("http://{ETCD_IP}:{ETCD_PORT}")],
        Duration::from_secs(1),
    )
    .expect("a valid endpoint");
    let cfg = NodeConfig {
        node_id: format!("n{idx}"),
        dist_addr: format!("{}:4370", node_ip(idx)),
        lease: LeaseConfig::simulation(),
        keys: world.keys.clone(),
    };
    let node = Arc::new(Node::start(client, cfg));
    world.nodes.lock().unwrap()[idx] = Some(node.clone());
    world.held.lock().unwrap()[idx].clear();
    world.trace.log(format_args!("n{idx} started"));
    while world.phase() != TEARDOWN {
        time::sleep(Duration::from_millis(50 + rt::rand::below(350))).await;
        let name = format!("r{}", rt::rand::below(ROOMS));
        if world.held.lock().unwrap()[idx].contains(&name) {
            continue;
        }
        let token = world.tokens.fetch_add(1, Ordering::Relaxed);
        // The product's rules for a claim whose fate is unknown and for a win answered after
        // the lease was lost are in `claim_settled` (seeds 626 and 2 of the first runs).
        match node.claim_settled(&name, token).await {
            Ok((ClaimOutcome::Won { epoch }, lease)) => {
                world
                    .trace
                    .log(format_args!("n{idx} won {name} at epoch {epoch}"));
                world.won(idx, &name, epoch);
                world.held.lock().unwrap()[idx].insert(name.clone());
                node.set_load(world.held.lock().unwrap()[idx].len());
                let record = node.room_record(token);
                tokio::spawn(room(
                    world.clone(),
                    node.clone(),
                    idx,
                    name,
                    epoch,
                    lease,
                    record,
                ));
            }
            Ok((ClaimOutcome::Taken(owner), _)) => {
                world.reached("claim found the name taken");
                world.trace.log(format_args!(
                    "n{idx}: {name} taken by {} at epoch {}",
                    owner.record.node_id, owner.epoch
                ));
            }
            Ok((ClaimOutcome::Fenced, _)) | Err(NodeError::Fenced) => {
                world.reached("claim refused: fenced")
            }
            Err(e) => {
                world.reached("claim failed: etcd");
                world
                    .trace
                    .log(format_args!("n{idx}: claim of {name} failed: {e}"));
            }
        }
    }
    // madsim ends a node whose init task returns: the driver and the rooms live on until the
    // world kills the node.
    std::future::pending::<()>().await;
}

/// One room: acts while its node holds the lease its claim is on, then releases its name.
async fn room(
    world: Arc<World>,
    node: Arc<Node>,
    idx: usize,
    name: String,
    epoch: i64,
    lease: i64,
    record: RoomRecord,
) {
    let until = time::now() + Duration::from_millis(300 + rt::rand::below(4000));
    let mut fenced = false;
    while time::now() < until && world.phase() != TEARDOWN {
        time::sleep(Duration::from_millis(20 + rt::rand::below(130))).await;
        match node.acting_now() {
            Some((l, _)) if l == lease => world.act(idx, &name, epoch, lease, &record),
            _ => {
                fenced = true;
                break;
            }
        }
    }
    if fenced {
        world.reached("room ended: its node was fenced");
        world
            .trace
            .log(format_args!("n{idx}: {name} (epoch {epoch}) ended: fenced"));
    } else {
        // A failed release is retried while the lease lives (`release_settled`): a key left on
        // a lease the node keeps alive would hold the name forever (seed 1 of the first run).
        match node.release_settled(&name, &record, lease).await {
            true => world.trace.log(format_args!("n{idx} released {name}")),
            false => world.reached("release found the name no longer ours, or the lease gone"),
        }
    }
    world.held.lock().unwrap()[idx].remove(&name);
}

/// Starts and heals the cluster's faults.
struct Injector {
    stream: Stream,
    net: Arc<NetSim>,
    handle: Handle,
    etcd: NodeId,
    servers: Vec<NodeId>,
    heals: Vec<(time::Instant, Heal)>,
    world: Arc<World>,
}

#[derive(Clone, Copy, Debug)]
enum Heal {
    Resume(NodeId),
    Unclog(NodeId),
    Reconnect(NodeId, NodeId),
}

impl Injector {
    fn pick_server(&mut self) -> (usize, NodeId) {
        let i = self.stream.below(NODES as u64) as usize;
        (i, self.servers[i])
    }

    fn later(&mut self, min_ms: u64, max_ms: u64, heal: Heal) -> Duration {
        let d = Duration::from_millis(min_ms + self.stream.below(max_ms - min_ms));
        self.heals.push((time::now() + d, heal));
        d
    }

    /// One fault, drawn; returns its kind.
    fn inject(&mut self) -> &'static str {
        let ttl_ms = LeaseConfig::simulation().ttl.as_millis() as u64;
        let trace = self.world.trace.clone();
        match self.stream.below(7) {
            0 => {
                let (i, id) = self.pick_server();
                let d = self.later(200, 2000, Heal::Resume(id));
                trace.log(format_args!("fault: pause n{i} for {d:?}"));
                self.handle.pause(id);
                "node_pause"
            }
            1 => {
                // Past the TTL: etcd lets the lease lapse and another node may take its rooms
                // while this one is stopped mid-act.
                let (i, id) = self.pick_server();
                let d = self.later(ttl_ms + 500, 2 * ttl_ms + 2000, Heal::Resume(id));
                trace.log(format_args!("fault: pause n{i} past its TTL, for {d:?}"));
                self.handle.pause(id);
                "node_pause_past_ttl"
            }
            2 => {
                let d = self.later(300, 2 * ttl_ms, Heal::Unclog(self.etcd));
                trace.log(format_args!("fault: etcd unreachable for {d:?}"));
                self.net.clog_node(self.etcd);
                "etcd_unreachable"
            }
            3 => {
                let (i, id) = self.pick_server();
                let d = self.later(300, 2 * ttl_ms, Heal::Reconnect(id, self.etcd));
                trace.log(format_args!("fault: n{i} cut from etcd for {d:?}"));
                self.net.clog_link(id, self.etcd);
                self.net.clog_link(self.etcd, id);
                "node_cut_from_etcd"
            }
            4 => {
                let (i, id) = self.pick_server();
                trace.log(format_args!("fault: n{i} killed and restarted"));
                self.handle.kill(id);
                self.handle.restart(id);
                "node_restart"
            }
            5 => {
                trace.log("fault: etcd restarted with its data");
                self.handle.kill(self.etcd);
                self.handle.restart(self.etcd);
                "etcd_restart"
            }
            _ => {
                let d = self.later(200, ttl_ms + 1000, Heal::Resume(self.etcd));
                trace.log(format_args!("fault: etcd paused for {d:?}"));
                self.handle.pause(self.etcd);
                "etcd_pause"
            }
        }
    }

    fn apply(&self, heal: Heal) {
        self.world.trace.log(format_args!("heal: {heal:?}"));
        match heal {
            Heal::Resume(id) => self.handle.resume(id),
            Heal::Unclog(id) => self.net.unclog_node(id),
            Heal::Reconnect(a, b) => {
                self.net.unclog_link(a, b);
                self.net.unclog_link(b, a);
            }
        }
    }

    fn heal_due(&mut self, now: time::Instant) {
        let (due, rest): (Vec<_>, Vec<_>) = self.heals.drain(..).partition(|(t, _)| *t <= now);
        self.heals = rest;
        for (_, h) in due {
            self.apply(h);
        }
    }

    fn heal_all(&mut self) {
        for (_, h) in std::mem::take(&mut self.heals) {
            self.apply(h);
        }
    }
}
