//! Cluster mode's room registry: `whereis_or_start` across nodes, with rooms claimed in etcd,
//! placed on the least loaded node and reached over dist links through proxies.
//!
//! Owns the node's cluster-wide view of rooms: which local rooms are claimed (and the claims'
//! release), the proxies standing for remote rooms and channels ([`proxy`]), the consumer of
//! every dist link ([`dispatch`]), placement, and fencing (a node that may not act ends its
//! rooms). The promises are the local registry's (README "Semantics"), carried by etcd: the loser
//! of a start race never runs (the room's process is prepared, its pid written into the claim,
//! and started only if the claim wins), a room gives up its local name before its monitors see
//! DOWN and its claim in etcd as it exits (a joiner that finds the claim in between reaches a
//! dead epoch, is answered `noproc` and looks again), and a stale cleanup never removes a newer
//! owner (the release compares the claim's own value).
//!
//! It never holds a lock across an await, never decides membership of a room (the room does),
//! and never acts for a room after the node's lease is past its fence deadline: claims go through
//! [`Node::claim_settled`], and a fenced node ends every room it owns.

mod dispatch;
mod exports;
mod proxy;
pub mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use self::exports::{Exports, Inbox, LocalRoom};
use self::proxy::RoomProxy;
use self::wire::{ToNode, NODE_SERVICE};
use super::claims::{ClaimOutcome, Keys, Owner, RoomRecord};
use super::dist::{
    ConnectError, DistListener, DistNode, LinkConfig, LinkHandle, NodeId, RemoteRef,
};
use super::etcd::client::EtcdClient;
use super::lease::LeaseConfig;
use super::node::{Node, NodeConfig, NodeRecord, NodeStatus};
use crate::app::{App, ClusterHealth, ClusterRooms, Pending};
use crate::messages::RoomMsg;
use crate::registry::{JoinError, StartError};
use crate::room;
use crate::rt::time::{self, Instant};
use crate::rt::{self, Addr, ExitReason, Pid, System};

/// Rounds of lookup → place → start one join makes before it gives up (the client then
/// rejoins); each after the first waits a little longer, so a release in flight can land.
const LOOKUPS: u32 = 6;
/// Messages queued for a room proxy from its link before it counts as overloaded.
const PROXY_INBOX: usize = 1024;
/// The longest one join looks for its room in the cluster before it is refused (and the
/// client rejoins): under the clients' join timeouts (phoenix.js: 10 s; the simulated client
/// calls 5 s unanswered a failure).
const JOIN_PATIENCE: Duration = Duration::from_millis(2500);
/// Why a draining node starts no room (the joiner looks elsewhere).
const SHUTTING_DOWN: &str = "this node is shutting down";
/// How long a placement request waits for the chosen node's answer.
const START_PATIENCE: Duration = Duration::from_secs(1);
/// How often the node list for placement is read and this node's load published.
const NODES_EVERY: Duration = Duration::from_secs(2);

/// What cluster mode needs besides the single node's configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://host:port`).
    pub etcd: Vec<String>,
    /// This node's name: unique in the cluster, stable across restarts.
    pub node_name: String,
    /// Where the dist listener binds.
    pub dist_listen: SocketAddr,
    /// Where other nodes reach it (default: `dist_listen`, which then must not be a wildcard).
    pub dist_advertise: Option<String>,
    /// Key prefix in etcd (one per deployment).
    pub prefix: String,
    pub lease: LeaseConfig,
    pub link: LinkConfig,
    /// Bound on one etcd call.
    pub etcd_timeout: Duration,
}

impl ClusterConfig {
    /// The production timings for `node_name` at `dist_listen`, against `etcd`.
    pub fn new(etcd: Vec<String>, node_name: String, dist_listen: SocketAddr) -> Self {
        ClusterConfig {
            etcd,
            node_name,
            dist_listen,
            dist_advertise: None,
            prefix: Keys::DEFAULT_PREFIX.to_owned(),
            lease: LeaseConfig::production(),
            link: LinkConfig::default(),
            etcd_timeout: Duration::from_secs(2),
        }
    }

    /// The advertised dist address, or why there is none.
    fn advertised(&self, bound: SocketAddr) -> Result<String, String> {
        match &self.dist_advertise {
            Some(a) => Ok(a.clone()),
            None if bound.ip().is_unspecified() => Err(format!(
                "--dist-listen {} is a wildcard address: give --dist-advertise, the address \
                 other nodes reach this one at",
                self.dist_listen
            )),
            None => Ok(bound.to_string()),
        }
    }
}

/// Where a start ended.
enum Started {
    /// The room runs here.
    Here(Addr<RoomMsg>),
    /// It runs on another node, as this owner.
    There(Owner),
    /// Someone else's claim holds the name: look it up again.
    Taken,
    /// This node cannot start it; another might.
    NotHere(String),
    /// Final for this join.
    Refused(JoinError),
}

pub struct Inner {
    sys: System,
    node: Node,
    dist: DistNode,
    dist_addr: SocketAddr,
    exports: Exports,
    next_mref: AtomicU64,
    next_req: AtomicU64,
    /// Placement requests waiting for their answer: (peer node, request id) → answer.
    pending: Mutex<BTreeMap<(String, u64), oneshot::Sender<ToNode>>>,
    /// The node list as last read, for placement.
    nodes: Mutex<Vec<NodeRecord>>,
    /// The app, for starting rooms; taken at stop (it holds this cluster too).
    app: Mutex<Option<App>>,
}

/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Shared(Arc<Inner>);

impl Deref for Shared {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Shared {
    fn next_mref(&self) -> u64 {
        self.next_mref.fetch_add(1, Ordering::Relaxed)
    }

    fn app(&self) -> Option<App> {
        self.app.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn me(&self) -> &str {
        self.node.node_id()
    }

    /// The link to `node` at `addr` as exactly `incarnation`.
    async fn link_to(
        &self,
        node: &str,
        addr: &str,
        incarnation: u64,
    ) -> Result<LinkHandle, String> {
        for _ in 0..3 {
            if let Some(h) = self.dist.link(node) {
                let have = h.peer().incarnation;
                if have == incarnation {
                    return Ok(h);
                }
                if have > incarnation {
                    return Err(format!(
                        "{node} incarnation {incarnation} is gone (now {have})"
                    ));
                }
                // A link to an incarnation that has since been replaced: the new one is due.
                h.close();
            }
            let peer = NodeId {
                name: node.to_owned(),
                incarnation,
            };
            match self.dist.connect(addr.to_owned(), peer).await {
                Ok(h) if h.peer().incarnation == incarnation => return Ok(h),
                Ok(h) => {
                    return Err(format!(
                        "{node} answers as incarnation {}, not {incarnation}",
                        h.peer().incarnation
                    ))
                }
                Err(ConnectError::InProgress) => time::sleep(Duration::from_millis(20)).await,
                Err(e) => return Err(format!("cannot reach {node} at {addr}: {e}")),
            }
        }
        Err(format!("cannot reach {node} at {addr}: dials kept racing"))
    }

    /// A room proxy on this node for the remote room `owner` names.
    async fn proxy_to(&self, app: &App, owner: &Owner) -> Result<Addr<RoomMsg>, String> {
        let r = &owner.record;
        let link = self
            .link_to(&r.node_id, &r.dist_addr, r.incarnation)
            .await?;
        let (tx, inbox) = mpsc::channel(PROXY_INBOX);
        let p = self.sys.prepare::<RoomMsg>(app.limits.room_mailbox);
        let pid = p.pid();
        self.exports.add_proxy(pid.0, Inbox::Room(tx));
        self.on_exit(pid, link.clone());
        let args = RoomProxy {
            shared: self.clone(),
            link,
            room: RemoteRef {
                pid: r.token,
                epoch: owner.epoch as u64,
            },
            inbox,
        };
        let addr = p.addr();
        p.start(move |ctx| proxy::room_proxy(ctx, args));
        Ok(addr)
    }

    /// A proxy's exit forgets it and cancels the monitors it still holds across `link`.
    fn on_exit(&self, pid: Pid, link: LinkHandle) {
        let exports = self.exports.clone();
        let hook = Box::new(move |_: &ExitReason| {
            let mrefs = exports.remove_proxy(pid.0);
            if !mrefs.is_empty() {
                rt::spawn_task(async move {
                    for m in mrefs {
                        link.demonitor(m).await;
                    }
                });
            }
        });
        if self.sys.add_exit_hook(pid, hook).is_none() {
            self.exports.remove_proxy(pid.0);
        }
    }

    /// Claims `name` for a room of this node and starts it there.
    async fn start_here(&self, app: &App, name: &str) -> Started {
        if self.exports.draining() {
            return Started::NotHere(SHUTTING_DOWN.into());
        }
        if self.node.acting_now().is_none() {
            return Started::NotHere(super::node::NodeError::Fenced.to_string());
        }
        if let Some(addr) = app.rooms.whereis(name) {
            return Started::Here(addr);
        }
        if app.rooms.len() >= app.limits.max_rooms {
            return Started::NotHere(format!(
                "this node holds its limit of {} rooms",
                app.limits.max_rooms
            ));
        }
        let p = self.sys.prepare::<RoomMsg>(app.limits.room_mailbox);
        let pid = p.pid();
        let (epoch, lease) = match self.node.claim_settled(name, pid.0).await {
            Ok((ClaimOutcome::Won { epoch }, lease)) => (epoch, lease),
            // The prepared process ends unstarted: a loser never runs.
            Ok((ClaimOutcome::Taken(_), _)) => return Started::Taken,
            Ok((ClaimOutcome::Fenced, _)) => return Started::NotHere("fenced".into()),
            Err(e) => return Started::NotHere(e.to_string()),
        };
        let record = self.node.room_record(pid.0);
        let room = LocalRoom {
            name: name.to_owned(),
            epoch: epoch as u64,
            addr: p.addr(),
            record: record.clone(),
            lease,
        };
        if !self.exports.add_room(pid.0, room.clone()) {
            // The drain began while the claim was in flight: the room never runs (the prepared
            // process ends unstarted) and its name is given back.
            rt::probe::emit(rt::probe::Event::ClaimWonWhileDraining);
            self.release(&room).await;
            return Started::NotHere(SHUTTING_DOWN.into());
        }
        rt::probe::emit(rt::probe::Event::RoomClaimed {
            sys: self.sys.id(),
            pid,
            name,
            epoch,
            lease,
            value: &record.to_value(),
        });
        // However the room ends, its claim is released once it has exited: its local name is
        // gone by then, and a joiner that still finds the claim meanwhile reaches a dead epoch
        // (`noproc`) and looks again. Released in the exit, not before it, so the stop stays
        // one step: a second room of the name never runs beside a stopping one on this node.
        let me = self.clone();
        let hook = Box::new(move |_: &ExitReason| {
            if let Some(r) = me.exports.remove_room(pid.0) {
                let me = me.clone();
                rt::spawn_task(async move { me.release(&r).await });
            }
        });
        self.sys.add_exit_hook(pid, hook);
        let (app2, name2) = (app.clone(), name.to_owned());
        match app
            .rooms
            .start_prepared(name, p, move |c| room::run(app2, name2, c))
        {
            Ok(addr) => {
                tracing::info!(room = name, epoch, "room claimed and started on this node");
                Started::Here(addr)
            }
            Err(StartError::AlreadyStarted(winner)) => Started::Here(winner),
            Err(StartError::Full(max)) => Started::Refused(JoinError::Full {
                name: name.to_owned(),
                max,
            }),
            Err(StartError::Failed(reason)) => Started::Refused(JoinError::Failed {
                name: name.to_owned(),
                reason,
            }),
        }
    }

    /// [`Shared::start_here`] in a task of its own: the joiner may be killed while the claim
    /// is in flight, and a claim abandoned half-way would hold the name, with no room behind
    /// it, for as long as the lease lives (the cluster simulation's seed 30). Carried to its end
    /// here, a room started for a joiner that is gone stops by itself when nobody comes.
    async fn start_here_detached(&self, app: &App, name: &str) -> Started {
        let (tx, rx) = oneshot::channel();
        let (me, app, owned) = (self.clone(), app.clone(), name.to_owned());
        rt::spawn_task(async move {
            let _ = tx.send(me.start_here(&app, &owned).await);
        });
        rx.await
            .unwrap_or_else(|_| Started::NotHere("the start was dropped".into()))
    }

    async fn release(&self, r: &LocalRoom) {
        let released = self.node.release_settled(&r.name, &r.record, r.lease).await;
        tracing::debug!(room = %r.name, released, "room claim released");
    }

    /// Asks `target` to claim and start `name`.
    async fn start_there(&self, target: &NodeRecord, name: &str) -> Started {
        let link = match self
            .link_to(&target.node_id, &target.dist_addr, target.incarnation)
            .await
        {
            Ok(l) => l,
            Err(why) => return Started::NotHere(why),
        };
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let key = (target.node_id.clone(), req);
        let (tx, rx) = oneshot::channel();
        self.pending_lock().insert(key.clone(), tx);
        let ask = ToNode::Start {
            req,
            name: name.to_owned(),
        };
        let to = RemoteRef {
            pid: NODE_SERVICE,
            epoch: 0,
        };
        let answer = if link.send(to, wire::encode(&ask)).await.is_err() {
            None
        } else {
            // A node that takes longer is as good as unreachable: start here instead.
            time::timeout(START_PATIENCE, rx).await.and_then(Result::ok)
        };
        self.pending_lock().remove(&key);
        match answer {
            Some(ToNode::Started { pid, epoch, .. }) => Started::There(Owner {
                record: RoomRecord {
                    node_id: target.node_id.clone(),
                    dist_addr: target.dist_addr.clone(),
                    token: pid,
                    incarnation: target.incarnation,
                },
                epoch: epoch as i64,
            }),
            Some(ToNode::NotStarted { reason, .. }) => Started::NotHere(reason),
            _ => Started::NotHere(format!("{} did not answer", target.node_id)),
        }
    }

    fn pending_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<(String, u64), oneshot::Sender<ToNode>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node a new room `name` goes to (see [`pick`]); `None` for this node. The choice is
    /// counted on the chosen node at once, so a burst of new rooms spreads before the next
    /// published loads arrive.
    fn place(&self, name: &str) -> Option<NodeRecord> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let at = pick(&nodes, name)?;
        let best = &mut nodes[at];
        best.rooms += 1;
        (best.node_id != self.me()).then(|| best.clone())
    }

    /// The tutorial's join across the cluster (see [`Cluster::whereis_or_start`]).
    async fn whereis_or_start(&self, name: &str) -> Result<Addr<RoomMsg>, JoinError> {
        let failed = |reason: String| JoinError::Failed {
            name: name.to_owned(),
            reason,
        };
        let app = self
            .app()
            .ok_or_else(|| failed("the node is stopping".into()))?;
        let mut last = String::from("no attempt made");
        let mut placed_elsewhere_failed = false;
        for round in 0..LOOKUPS {
            if round > 0 {
                time::sleep(Duration::from_millis(25 << round.min(4))).await;
            }
            if let Some(addr) = app.rooms.whereis(name) {
                return Ok(addr);
            }
            let owner = match self.node.whereis(name).await {
                Ok(o) => o,
                Err(e) => return Err(failed(e.to_string())),
            };
            let started = match owner {
                Some(o) if o.record.node_id == self.me() => {
                    let current = self.node.acting_now().map(|(_, inc)| inc);
                    if current.is_some_and(|inc| inc != o.record.incarnation) {
                        // A claim of an earlier incarnation of this node: its room is gone
                        // with it; the compare makes sure only that claim is removed.
                        let _ = self.node.release(name, &o.record).await;
                    }
                    // Otherwise a room of ours that is ending: its release is in flight.
                    last = "the room's previous owner is still releasing it".into();
                    continue;
                }
                Some(o) => Started::There(o),
                None => match self.place(name) {
                    Some(target) if !placed_elsewhere_failed => {
                        let s = self.start_there(&target, name).await;
                        if matches!(s, Started::NotHere(_)) {
                            placed_elsewhere_failed = true;
                        }
                        s
                    }
                    _ => self.start_here_detached(&app, name).await,
                },
            };
            match started {
                Started::Here(addr) => return Ok(addr),
                Started::There(o) => match self.proxy_to(&app, &o).await {
                    Ok(addr) => return Ok(addr),
                    Err(why) => last = why,
                },
                Started::Taken => last = "lost a start race; looking again".into(),
                Started::NotHere(why) => last = why,
                Started::Refused(e) => return Err(e),
            }
            tracing::debug!(room = name, round, why = %last, "cluster join: trying again");
        }
        Err(failed(last))
    }
}

/// Which of the registered `nodes` a new room `name` goes to: the fewest rooms, ties broken by
/// a hash of room and node (so racing joiners agree). Every node, this one included, is judged
/// by the same figures: its load as last read from etcd plus the rooms placed on it since. (A
/// node's own live count against the others' older figures made it look emptiest whenever its
/// rooms were short-lived, and it kept nearly every new room.)
fn pick(nodes: &[NodeRecord], name: &str) -> Option<usize> {
    let score = |n: &NodeRecord| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (name, &n.node_id).hash(&mut h);
        (n.rooms, h.finish())
    };
    (0..nodes.len())
        .filter(|i| nodes[*i].incarnation != 0)
        .min_by_key(|i| score(&nodes[*i]))
}

/// The cluster mode of one node. Cheap to clone.
#[derive(Clone)]
pub struct Cluster(Shared);

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cluster({})", self.0.me())
    }
}

impl Cluster {
    /// Binds the dist listener, starts the node's lease driver and the tasks that serve links,
    /// read the node list and fence; then `app`'s joins go through this cluster. Returns once
    /// bound: registration in etcd proceeds in the background (joins are refused until then).
    pub async fn start(cfg: ClusterConfig, app: &App) -> Result<Cluster, String> {
        let client = EtcdClient::new(&cfg.etcd, cfg.etcd_timeout).map_err(|e| e.to_string())?;
        cfg.lease.checked().map_err(|e| e.to_string())?;
        let keys = Keys::new(&cfg.prefix)?;
        let me = NodeId {
            name: cfg.node_name.clone(),
            incarnation: 0,
        };
        let mut listener = DistListener::bind(cfg.dist_listen, me, cfg.link.clone())
            .await
            .map_err(|e| format!("cannot listen for other nodes on {}: {e}", cfg.dist_listen))?;
        let dist_addr = listener.local_addr();
        let advertised = cfg.advertised(dist_addr)?;
        tracing::info!(
            node = %cfg.node_name,
            dist_listen = %dist_addr,
            dist_advertise = %advertised,
            etcd = %cfg.etcd.join(","),
            "cluster mode: listening for other nodes"
        );
        let node = Node::start(
            client,
            NodeConfig {
                node_id: cfg.node_name.clone(),
                dist_addr: advertised,
                lease: cfg.lease,
                keys,
            },
        );
        let shared = Shared(Arc::new(Inner {
            sys: app.sys.clone(),
            node,
            dist: listener.node().clone(),
            dist_addr,
            exports: Exports::default(),
            next_mref: AtomicU64::new(1),
            next_req: AtomicU64::new(1),
            pending: Mutex::new(BTreeMap::new()),
            nodes: Mutex::new(Vec::new()),
            app: Mutex::new(Some(app.clone())),
        }));
        let s = shared.clone();
        rt::spawn_task(async move {
            while let Some(link) = listener.accept().await {
                rt::spawn_task(dispatch::consume(s.clone(), link));
            }
        });
        rt::spawn_task(fence(shared.clone()));
        rt::spawn_task(read_nodes(shared.clone()));
        let cluster = Cluster(shared);
        if app.cluster.set(Arc::new(cluster.clone())).is_err() {
            return Err("this app already runs in a cluster".into());
        }
        Ok(cluster)
    }

    /// The tutorial's join, cluster-wide: the local room of `name` if this node runs it; else
    /// the owner etcd names, through a room proxy; else the room is placed (least loaded node)
    /// and claimed there, and a loser of the claim race joins the winner's room. A failure
    /// after a few rounds is an error (the client's rejoin tries again).
    pub async fn whereis_or_start(&self, name: &str) -> Result<Addr<RoomMsg>, JoinError> {
        // A join is answered within the client's patience whatever etcd and the links do; a
        // start given up here goes on in its own task (see `start_here_detached`).
        time::timeout(JOIN_PATIENCE, self.0.whereis_or_start(name))
            .await
            .unwrap_or_else(|| {
                Err(JoinError::Failed {
                    name: name.to_owned(),
                    reason: format!("no room reachable within {JOIN_PATIENCE:?}"),
                })
            })
    }

    /// Where the dist listener is bound.
    pub fn dist_addr(&self) -> SocketAddr {
        self.0.dist_addr
    }

    pub fn node_id(&self) -> &str {
        self.0.me()
    }

    /// Whether the node may act now (registered, lease before its fence deadline).
    pub fn is_acting(&self) -> bool {
        self.0.node.acting_now().is_some()
    }

    /// Rooms this node owns now.
    pub fn room_count(&self) -> usize {
        self.0.exports.room_count()
    }

    /// Nodes in the placement list as last read from etcd (this one included once registered).
    pub fn known_nodes(&self) -> usize {
        self.0.nodes.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Entries in the node's export table: (rooms, proxies, monitors across links). All zero on
    /// an idle node, or something leaked.
    pub fn held(&self) -> (usize, usize, usize) {
        self.0.exports.sizes()
    }

    /// Drains: takes no new rooms, ends every room it owns (their clients get `phx_error` and
    /// rejoin elsewhere), waits for them to exit (each releases its claim), then revokes the
    /// lease. Idempotent.
    pub async fn stop(&self) {
        let s = &self.0;
        let rooms = s.exports.drain();
        for (pid, _) in &rooms {
            s.sys
                .exit(Pid(*pid), ExitReason::Error("node_stopping".into()));
        }
        for (pid, _) in &rooms {
            s.sys.wait_exit(Pid(*pid)).await;
        }
        // Their exit hooks have run (and started the releases); the revoke frees whatever
        // name a release has not reached yet.
        s.node.stop().await;
        s.app.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl ClusterRooms for Cluster {
    fn whereis_or_start<'a>(
        &'a self,
        name: &'a str,
    ) -> Pending<'a, Result<Addr<RoomMsg>, JoinError>> {
        Box::pin(Cluster::whereis_or_start(self, name))
    }

    fn health(&self) -> ClusterHealth {
        ClusterHealth {
            acting: self.is_acting(),
            draining: self.0.exports.draining(),
            rooms: self.room_count(),
            known_nodes: self.known_nodes(),
        }
    }

    fn room_may_act(&self, room: Pid) -> bool {
        let s = &self.0;
        match (s.exports.room_lease(room.0), s.node.acting_now()) {
            (Some(mine), Some((now, _))) => mine == now,
            _ => false,
        }
    }

    fn fence_deadline(&self) -> Option<(i64, crate::rt::time::Instant)> {
        self.0.node.fence_deadline()
    }
}

/// Ends every room of an incarnation that is fenced, and moves the dist identity on to each
/// new incarnation.
async fn fence(s: Shared) {
    let mut status = s.node.status();
    loop {
        let now = *status.borrow_and_update();
        match now {
            NodeStatus::Fenced { incarnation } => {
                let rooms = s.exports.rooms();
                if !rooms.is_empty() {
                    tracing::warn!(
                        incarnation,
                        rooms = rooms.len(),
                        "lease not proven alive: ending this node's rooms"
                    );
                }
                for (pid, _) in rooms {
                    s.sys.exit(Pid(pid), ExitReason::Error("lease_lost".into()));
                }
            }
            NodeStatus::Acting {
                incarnation, lease, ..
            } => {
                // Fenced and back as a new incarnation between two looks at the status: the
                // rooms claimed on the old lease end all the same.
                for (pid, room) in s.exports.rooms() {
                    if room.lease != lease {
                        s.sys.exit(Pid(pid), ExitReason::Error("lease_lost".into()));
                    }
                }
                s.dist.set_incarnation(incarnation)
            }
            NodeStatus::Starting => {}
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Reads the node list for placement and publishes this node's load.
async fn read_nodes(s: Shared) {
    loop {
        if s.app.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            return;
        }
        s.node.set_load(s.exports.room_count());
        if let Ok(nodes) = s.node.nodes().await {
            *s.nodes.lock().unwrap_or_else(|e| e.into_inner()) = nodes;
        }
        let next: Instant = time::now() + NODES_EVERY;
        time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod placement_tests {
    use super::*;

    fn node(name: &str, rooms: usize) -> NodeRecord {
        NodeRecord {
            node_id: name.to_owned(),
            rooms,
            incarnation: 1,
            dist_addr: String::new(),
        }
    }

    /// Places `n` rooms the way `Shared::place` does: each choice counted at once.
    fn place_all(nodes: &mut [NodeRecord], n: usize) -> Vec<usize> {
        let mut per_node = vec![0; nodes.len()];
        for i in 0..n {
            let at = pick(nodes, &format!("room-{i}")).expect("a node");
            nodes[at].rooms += 1;
            per_node[at] += 1;
        }
        per_node
    }

    #[test]
    fn a_burst_of_new_rooms_spreads_evenly() {
        let mut nodes = vec![node("a", 0), node("b", 0), node("c", 0)];
        assert_eq!(place_all(&mut nodes, 30), vec![10, 10, 10]);
    }

    #[test]
    fn new_rooms_fill_the_emptiest_node_first() {
        let mut nodes = vec![node("a", 6), node("b", 2), node("c", 4)];
        assert_eq!(place_all(&mut nodes, 6), vec![0, 4, 2]);
    }

    #[test]
    fn unregistered_nodes_get_nothing_and_racing_joiners_agree() {
        let mut nodes = vec![node("a", 3), node("b", 0), node("c", 3)];
        nodes[1].incarnation = 0;
        let first = pick(&nodes, "x");
        assert_ne!(first, Some(1));
        assert_eq!(pick(&nodes, "x"), first);
        assert_eq!(pick(&[], "x"), None);
    }
}
