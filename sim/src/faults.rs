//! The fault injector: what it can break (`Fault`), and the atlas of running episodes. Crashes
//! are instantaneous; network faults (latency, loss, clog, partition) are episodes that start
//! and heal during chaos after a drawn time, so the world also recovers from them under
//! load, not only once settle heals everything. Every choice here (targets, parameters,
//! durations) comes from the world's "faults" stream, never from the product's RNG. It must
//! never decide a verdict: it only breaks things and tells the oracles what to expect.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::task::NodeId;
use videoroom::app::App;
use videoroom::cluster::rooms::Cluster;
use videoroom::rt::{time, ExitReason};

use crate::client::Views;
use crate::named_enum;
use crate::oracle::Oracles;
use crate::ownership::NodeLife;
use crate::server::{self, CurrentApp, CurrentDrain};
use crate::streams::Stream;
use crate::trace::Trace;

named_enum! {
    /// Faults the injector can apply.
    pub enum Fault ("fault") {
        RoomCrash = "room_crash",
        ChannelCrash = "channel_crash",
        EngineCrash = "engine_crash",
        SocketDrop = "socket_drop",
        Latency = "latency",
        Loss = "loss",
        Clog = "clog",
        Partition = "partition",
        ServerRestart = "server_restart",
        GracefulRestart = "graceful_restart",
        NodeSplit = "node_split",
        EtcdCut = "etcd_cut",
        NodePause = "node_pause",
        EtcdRestart = "etcd_restart",
    }
}

impl Fault {
    /// Faults that only a cluster world has targets for.
    pub fn cluster_only(self) -> bool {
        matches!(
            self,
            Fault::NodeSplit | Fault::EtcdCut | Fault::NodePause | Fault::EtcdRestart
        )
    }

    /// The fault this one is drawn as a variant of (a swarm never draws it on its own).
    pub fn variant_of(self) -> Option<Fault> {
        (self == Fault::GracefulRestart).then_some(Fault::ServerRestart)
    }
}

/// How long a graceful restart waits for the node's sockets to close before it kills the node
/// anyway: the production default of `--shutdown-grace`.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The network's latency when no latency episode runs.
const BASE_LATENCY: std::ops::Range<Duration> = Duration::from_millis(1)..Duration::from_millis(10);

/// A network fault in force until `until`.
#[derive(Clone, Debug, PartialEq)]
enum Episode {
    Latency(u64),
    Loss(f64),
    Clog(NodeId),
    Partition(NodeId),
    /// Two server nodes cannot reach each other (cluster worlds).
    Split(NodeId, NodeId),
    /// A server node cannot reach etcd (cluster worlds).
    EtcdCut(NodeId, NodeId),
    /// A server node is frozen (a stop-the-world pause, a VM migration), its clock running on:
    /// past the lease TTL it wakes as the stale owner (cluster worlds).
    Pause(NodeId),
}

/// How long a node pause or an etcd cut lasts: short ones, and ones past the simulation's lease
/// TTL (4 s), so the node wakes (or hears from etcd again) after etcd let its lease lapse and
/// other nodes may own its rooms' names.
const SHORT_OUTAGE_MS: std::ops::Range<u64> = 100..2_000;
const LONG_OUTAGE_MS: std::ops::Range<u64> = 4_500..7_000;

/// What the injector reaches into, its stream, and the episodes in force.
pub struct Injector<'a> {
    /// One per server node (one in a single-node world).
    pub apps: &'a [CurrentApp],
    pub views: &'a Views,
    pub oracles: &'a Oracles,
    pub trace: &'a Trace,
    pub net: &'a NetSim,
    pub servers: &'a [NodeId],
    /// The etcd node of a cluster world.
    pub etcd: Option<NodeId>,
    pub clients: &'a [NodeId],
    pub rng: Stream,
    /// Faults applied, by name.
    pub applied: BTreeMap<&'static str, u64>,
    /// Freezes and kills of server nodes, told to the ownership oracle.
    pub life: NodeLife,
    /// Each server node's shutdown flag (graceful restarts only: empty, none run).
    pub drains: &'a [CurrentDrain],
    running: Vec<(time::Instant, Episode)>,
}

fn current(app: &CurrentApp) -> Option<App> {
    app.lock().unwrap().clone()
}

impl<'a> Injector<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        apps: &'a [CurrentApp],
        views: &'a Views,
        oracles: &'a Oracles,
        trace: &'a Trace,
        net: &'a NetSim,
        servers: &'a [NodeId],
        etcd: Option<NodeId>,
        clients: &'a [NodeId],
        rng: Stream,
    ) -> Self {
        Injector {
            apps,
            views,
            oracles,
            trace,
            net,
            servers,
            etcd,
            clients,
            rng,
            applied: BTreeMap::new(),
            life: NodeLife::default(),
            drains: &[],
            running: Vec::new(),
        }
    }

    /// Applies `fault` and counts it; false if it had no target (e.g. no room yet).
    pub async fn inject(&mut self, fault: Fault) -> bool {
        let done = self.apply(fault).await;
        if done {
            *self.applied.entry(fault.name()).or_default() += 1;
        }
        done
    }

    /// When the next running episode ends, if any.
    pub fn next_heal(&self) -> Option<time::Instant> {
        self.running.iter().map(|(t, _)| *t).min()
    }

    /// Ends the episodes whose time is up.
    pub fn heal_due(&mut self) {
        let now = time::now();
        while let Some(i) = self.running.iter().position(|(t, _)| *t <= now) {
            let (_, ep) = self.running.remove(i);
            self.end(&ep);
        }
    }

    /// Ends every episode and restores the healthy network (the start of settle).
    pub fn heal_all(&mut self) {
        for (_, ep) in std::mem::take(&mut self.running) {
            if let Episode::Pause(n) = ep {
                self.trace.log(format_args!("heal pause: node {n}"));
                Handle::current().resume(n);
                self.life.thaw(n);
            }
        }
        let net = self.net;
        net.update_config(|c| {
            c.packet_loss_rate = 0.0;
            c.send_latency = BASE_LATENCY;
        });
        let mut nodes: Vec<NodeId> = self.servers.to_vec();
        nodes.extend(self.etcd);
        for s in &nodes {
            net.unclog_node(*s);
            for t in &nodes {
                net.unclog_link(*s, *t);
            }
        }
        for c in self.clients {
            net.unclog_node(*c);
            for s in self.servers {
                net.unclog_link(*c, *s);
                net.unclog_link(*s, *c);
            }
        }
    }

    fn pick(&mut self, n: usize) -> usize {
        self.rng.below(n as u64) as usize
    }

    /// A server node's index: drawn only where there is a choice, so a single-node world
    /// draws exactly what it always did.
    fn pick_server(&mut self) -> usize {
        match self.servers.len() {
            1 => 0,
            n => self.pick(n),
        }
    }

    fn both_ways(&self, a: NodeId, b: NodeId, clog: bool) {
        if clog {
            self.net.clog_link(a, b);
            self.net.clog_link(b, a);
        } else {
            self.net.unclog_link(a, b);
            self.net.unclog_link(b, a);
        }
    }

    /// How long a node pause or an etcd cut lasts: short, or past the lease TTL.
    fn outage(&mut self) -> Duration {
        let range = if self.rng.chance(0.5) {
            LONG_OUTAGE_MS
        } else {
            SHORT_OUTAGE_MS
        };
        Duration::from_millis(range.start + self.rng.below(range.end - range.start))
    }

    fn start(&mut self, ep: Episode) -> Duration {
        let d = Duration::from_millis(50 + self.rng.below(2_500));
        self.running.push((time::now() + d, ep));
        d
    }

    /// Ends one episode; overlapping ones of the same kind keep their effect.
    fn end(&mut self, ep: &Episode) {
        let net = self.net;
        match ep {
            Episode::Latency(_) => {
                let hi = self
                    .running
                    .iter()
                    .filter_map(|(_, e)| match e {
                        Episode::Latency(hi) => Some(*hi),
                        _ => None,
                    })
                    .max();
                self.trace.log(format_args!(
                    "heal latency: {}",
                    hi.map_or("base".to_string(), |h| format!("1..{h}ms"))
                ));
                net.update_config(|c| {
                    c.send_latency = hi.map_or(BASE_LATENCY, |h| {
                        Duration::from_millis(1)..Duration::from_millis(h)
                    })
                });
            }
            Episode::Loss(_) => {
                let p = self
                    .running
                    .iter()
                    .filter_map(|(_, e)| match e {
                        Episode::Loss(p) => Some(*p),
                        _ => None,
                    })
                    .fold(0.0, f64::max);
                self.trace.log(format_args!("heal loss: {p}"));
                net.update_config(|c| c.packet_loss_rate = p);
            }
            Episode::Clog(n) => {
                if !self.running.iter().any(|(_, e)| e == ep) {
                    self.trace.log(format_args!("heal clog: node {n}"));
                    net.unclog_node(*n);
                }
            }
            Episode::Partition(n) => {
                if !self.running.iter().any(|(_, e)| e == ep) {
                    self.trace.log(format_args!("heal partition: node {n}"));
                    for s in self.servers {
                        self.both_ways(*n, *s, false);
                    }
                }
            }
            Episode::Split(a, b) | Episode::EtcdCut(a, b) => {
                if !self.running.iter().any(|(_, e)| e == ep) {
                    self.trace.log(format_args!("heal {ep:?}"));
                    self.both_ways(*a, *b, false);
                }
            }
            Episode::Pause(n) => {
                self.trace.log(format_args!("heal pause: node {n}"));
                Handle::current().resume(*n);
                self.life.thaw(*n);
            }
        }
    }

    async fn apply(&mut self, fault: Fault) -> bool {
        let (trace, net) = (self.trace, self.net);
        let target = self.pick_server();
        let (app, server) = (&self.apps[target], self.servers[target]);
        // A frozen node runs none of its processes: asking its rooms anything (a crash first
        // reads the room's peers) would wait for the thaw, which only this injector brings.
        let frozen = self
            .running
            .iter()
            .any(|(_, e)| *e == Episode::Pause(server));
        let touches_node = matches!(
            fault,
            Fault::RoomCrash
                | Fault::EngineCrash
                | Fault::ChannelCrash
                | Fault::SocketDrop
                | Fault::ServerRestart
                | Fault::GracefulRestart
                | Fault::NodePause
        );
        if frozen && touches_node {
            return false;
        }
        match fault {
            Fault::RoomCrash | Fault::EngineCrash => {
                let Some(app) = current(app) else {
                    return false;
                };
                let rooms = app.rooms.entries();
                if rooms.is_empty() {
                    return false;
                }
                let (name, pid) = rooms[self.pick(rooms.len())].clone();
                let peers = self.expect_errors(&app, &name).await;
                let reason = if fault == Fault::RoomCrash {
                    ExitReason::Killed
                } else {
                    ExitReason::Crashed("engine crashed (injected)".into())
                };
                trace.log(format_args!(
                    "fault {fault}: {name} {pid} with {peers} peers"
                ));
                app.sys.exit(pid, reason)
            }
            Fault::ChannelCrash => {
                let Some(app) = current(app) else {
                    return false;
                };
                // Any channel: joined to its room, or still joining (with lagging processes a
                // join takes long enough to be caught half-way).
                let channels = app.sys.labelled(videoroom::channel::PROCESS_LABEL);
                if channels.is_empty() {
                    return false;
                }
                let pid = channels[self.pick(channels.len())];
                trace.log(format_args!("fault channel_crash: {pid}"));
                app.sys.kill(pid)
            }
            Fault::SocketDrop => {
                let Some(app) = current(app) else {
                    return false;
                };
                let sockets = app.sys.labelled(server::SOCKET_LABEL);
                if sockets.is_empty() {
                    return false;
                }
                let pid = sockets[self.pick(sockets.len())];
                trace.log(format_args!("fault socket_drop: {pid}"));
                app.sys.kill(pid)
            }
            Fault::Latency => {
                let hi = 2 + self.rng.below(200);
                let d = self.start(Episode::Latency(hi));
                trace.log(format_args!("fault latency: 1..{hi}ms for {d:?}"));
                net.update_config(|c| {
                    c.send_latency = Duration::from_millis(1)..Duration::from_millis(hi)
                });
                true
            }
            Fault::Loss => {
                let p = self.rng.below(30) as f64 / 100.0;
                let d = self.start(Episode::Loss(p));
                trace.log(format_args!("fault loss: {p} for {d:?}"));
                net.update_config(|c| c.packet_loss_rate = p);
                true
            }
            Fault::Clog => {
                let c = self.clients[self.pick(self.clients.len())];
                let d = self.start(Episode::Clog(c));
                trace.log(format_args!("fault clog: node {c} for {d:?}"));
                net.clog_node(c);
                true
            }
            Fault::Partition => {
                let c = self.clients[self.pick(self.clients.len())];
                let d = self.start(Episode::Partition(c));
                trace.log(format_args!(
                    "fault partition: node {c} from server for {d:?}"
                ));
                for s in self.servers {
                    self.both_ways(c, *s, true);
                }
                true
            }
            Fault::NodeSplit => {
                if self.servers.len() < 2 {
                    return false;
                }
                let other = (target + 1 + self.pick(self.servers.len() - 1)) % self.servers.len();
                let (a, b) = (server, self.servers[other]);
                let d = self.start(Episode::Split(a, b));
                trace.log(format_args!("fault node_split: {a} from {b} for {d:?}"));
                self.both_ways(a, b, true);
                true
            }
            Fault::EtcdCut => {
                let Some(etcd) = self.etcd else {
                    return false;
                };
                // One node cut off, or etcd unreachable for every node; half the cuts outlast
                // the lease TTL, so the cut nodes fence and etcd lets their leases lapse.
                let cut: Vec<NodeId> = if self.rng.chance(0.3) {
                    self.servers.to_vec()
                } else {
                    vec![server]
                };
                let d = self.outage();
                for n in &cut {
                    self.running
                        .push((time::now() + d, Episode::EtcdCut(*n, etcd)));
                    self.both_ways(*n, etcd, true);
                }
                trace.log(format_args!("fault etcd_cut: {cut:?} for {d:?}"));
                true
            }
            Fault::NodePause => {
                let d = self.outage();
                self.running.push((time::now() + d, Episode::Pause(server)));
                trace.log(format_args!("fault node_pause: {server} for {d:?}"));
                Handle::current().pause(server);
                self.life.freeze(server);
                true
            }
            Fault::EtcdRestart => {
                let Some(etcd) = self.etcd else {
                    return false;
                };
                // Its data outlives the process (`etcd_node::Etcd`): a restart with disks kept.
                trace.log("fault etcd_restart");
                Handle::current().kill(etcd);
                Handle::current().restart(etcd);
                true
            }
            Fault::ServerRestart => {
                trace.log("fault server_restart");
                self.restart(target);
                true
            }
            Fault::GracefulRestart => {
                let drain = self
                    .drains
                    .get(target)
                    .and_then(|d| d.lock().unwrap().clone());
                let (Some(drain), Some(app)) = (drain, current(app)) else {
                    return false;
                };
                self.drain(target, &app, &drain).await;
                self.restart(target);
                true
            }
        }
    }

    /// Every channel joined to room `name` of `app` must get exactly one phx_error (the room is
    /// about to end abnormally); returns how many peers it has.
    async fn expect_errors(&self, app: &App, name: &str) -> usize {
        let peers: BTreeSet<String> = app
            .room_peers(name)
            .await
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        for (idx, v) in self.views.lock().unwrap().iter() {
            if let (Some(p), Some(jr)) = (&v.peer_id, &v.join_ref) {
                if peers.contains(p) {
                    self.oracles.expect_error(*idx, jr.clone());
                }
            }
        }
        peers.len()
    }

    /// What `Server::shutdown` does to node `target`. In a cluster the node drains first: it
    /// ends every room it owns (each of their channels, on any node, owed one phx_error) and
    /// revokes its lease, within the grace (rooms end at once; the revoke is bounded by the
    /// etcd timeout). Then it raises the flag and waits (up to the grace) for every socket
    /// process to let go of it and every connection to write its last frame. Each socket
    /// process must close its socket with 1012 and stop; one still watching the flag after the
    /// grace is a server that does not drain.
    async fn drain(&mut self, target: usize, app: &App, drain: &server::Drain) {
        if let Some(cluster) = &drain.cluster {
            self.arrivals(target, cluster).await;
            let rooms = app.rooms.entries();
            let mut peers = 0;
            for (name, _) in &rooms {
                peers += self.expect_errors(app, name).await;
            }
            self.trace.log(format_args!(
                "fault graceful_restart: cluster drain of {} rooms with {peers} peers",
                rooms.len()
            ));
            let stopped = time::timeout(DRAIN_GRACE, cluster.stop()).await.is_some();
            self.oracles.check(stopped, || {
                format!("graceful restart: the cluster drain (rooms ended, lease revoked) took longer than {DRAIN_GRACE:?}")
            });
            // `Cluster::stop` returns once the node's rooms have exited and it takes no new one.
            let left = app.rooms.entries();
            self.oracles.check(!stopped || left.is_empty(), || {
                format!("graceful restart: the cluster drain returned with rooms still registered on the node: {left:?}")
            });
        }
        let watching = drain.flag.receiver_count();
        self.oracles.check(watching >= 1, || {
            "graceful restart: the shutdown flag counts no watcher, though the listener watches it"
                .into()
        });
        let sockets = watching.saturating_sub(1);
        self.trace.log(format_args!(
            "fault graceful_restart: {sockets} sockets, {} connections",
            drain.open()
        ));
        self.oracles
            .graceful_restart_begun(crate::world::server_ip(target).into());
        // The node's listener always watches the flag, so someone is there to be told.
        if drain.flag.send(true).is_err() {
            self.oracles.fail(
                "graceful restart: the shutdown flag had no watcher, though the listener watches it"
                    .into(),
            );
        }
        let deadline = time::now() + DRAIN_GRACE;
        while (drain.flag.receiver_count() > 0 || drain.open() > 0) && time::now() < deadline {
            time::sleep(Duration::from_millis(1)).await;
        }
        let left = drain.flag.receiver_count();
        self.oracles.check(left == 0, || {
            format!("graceful restart: {left} socket processes still watch the shutdown flag {DRAIN_GRACE:?} after it was raised (each must close its socket with 1012 and stop)")
        });
        self.trace.log(format_args!(
            "graceful_restart drained: {} connections still open",
            drain.open()
        ));
    }

    /// A deploy does not wait for a quiet moment: joins for rooms nobody holds yet reach node
    /// `target` just before its drain begins, so some are placed on it and have their claims in
    /// flight (an etcd round trip) while `Cluster::stop` runs. A room they start there must end
    /// with the drain (checked once it returns), or not start. The joins run on the node as a
    /// channel's join would; a room they start elsewhere lingers empty and stops on its own.
    async fn arrivals(&mut self, target: usize, cluster: &Cluster) {
        // Its own stream, forked per drain, so the injector's later draws stay as they were.
        let drains = self.applied.get("graceful_restart").copied().unwrap_or(0);
        let mut rng = self.rng.fork(drains);
        let joins = 2 + rng.below(5);
        let Some(node) = Handle::current().get_node(self.servers[target]) else {
            return;
        };
        for k in 0..joins {
            let (cluster, name) = (cluster.clone(), format!("deploy-{target}-{drains}-{k}"));
            node.spawn(async move {
                let _ = cluster.whereis_or_start(&name).await;
            });
        }
        let lead = Duration::from_micros(rng.below(30_000));
        self.trace.log(format_args!(
            "fault graceful_restart: {joins} joins of new rooms arrive {lead:?} before the drain"
        ));
        time::sleep(lead).await;
    }

    /// Kills node `target` and starts a new incarnation of it.
    fn restart(&mut self, target: usize) {
        let server = self.servers[target];
        *self.apps[target].lock().unwrap() = None;
        // `restart` alone keeps the old incarnation's sockets bound (madsim resets a
        // node's network only on `kill`), so the new listener could never bind.
        Handle::current().kill(server);
        self.life.killed(server);
        Handle::current().restart(server);
    }
}
