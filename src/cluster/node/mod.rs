//! The node's presence in the cluster: one driver task that keeps the node's etcd lease, writes
//! the node's `alive/` and `nodes/` keys for each incarnation, and says whether the node may act;
//! plus the registry calls (claim, whereis, release) made under that lease.
//!
//! Owns: the [`LeaseCore`] and the single task that steps it (I/O only; the timing decisions are
//! the core's), the incarnation number, the status channel ([`NodeStatus`]), and the node's
//! published load. An incarnation is published [`NodeStatus::Acting`] only once both of its keys
//! are written, and [`NodeStatus::Fenced`] before anything else is done once the core fences it
//! (docs/cluster.md, "Leases and fencing").
//!
//! It never decides room membership (who owns or joins a room is the claim's and the room's
//! business; this module only carries the claim to etcd) and never touches a socket other than
//! through [`EtcdClient`]. It never acts on a status past its deadline: [`Node::acting_now`]
//! checks the clock, not the last published value.

mod driver;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use super::claims::{self, ClaimOutcome, Keys, Owner, RoomRecord};
use super::etcd::client::{EtcdClient, EtcdError};
use super::lease::{Change, LeaseConfig, LeaseCore};
use crate::rt::time::{self, Instant};
use crate::rt::{self, watch};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub node_id: String,
    /// Where other nodes reach this one's dist link (written into its records).
    pub dist_addr: String,
    /// Must pass [`LeaseConfig::checked`].
    pub lease: LeaseConfig,
    pub keys: Keys,
}

/// Whether the node may act, as the driver last published it.
///
/// An incarnation is numbered by the etcd revision of its first registration: unique and growing
/// cluster-wide, across restarts of the process too, so a peer can tell a node that came back
/// from the one that died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// No incarnation has been registered yet.
    Starting,
    /// `deadline` is the fence deadline when this was published; keepalives move it later
    /// without a new status, so decide with [`Node::acting_now`], never with this field.
    Acting {
        lease: i64,
        incarnation: u64,
        deadline: Instant,
    },
    /// Incarnation `incarnation` (the last registered; 0 if none was) must stop acting: end
    /// its rooms, take no new ones.
    Fenced { incarnation: u64 },
}

/// The value of `nodes/<node_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    pub dist_addr: String,
    /// 0 in the incarnation's first write: its number is the revision that write gets, and
    /// the next write (at once) carries it.
    pub incarnation: u64,
    /// Rooms this node runs (its load, for placement).
    pub rooms: usize,
}

impl NodeRecord {
    pub fn to_value(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a NodeRecord always serialises")
    }

    pub fn from_value(v: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(v)
            .map_err(|e| format!("a nodes/ value that is not a NodeRecord: {e}"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error(
        "this node is fenced: its etcd lease is not proven alive, so it takes no rooms until it \
         registers again (it does so as soon as etcd answers)"
    )]
    Fenced,
    #[error(
        "etcd unreachable at {endpoints}: {detail} (is etcd running, and do the etcd endpoints \
         name its client URLs?)"
    )]
    Unreachable { endpoints: String, detail: String },
    #[error(
        "etcd at {endpoints} did not answer in time, so whether the request took effect is \
         unknown: {detail} (retrying with the same token is safe)"
    )]
    Indeterminate { endpoints: String, detail: String },
    #[error("etcd refused the request: {0}")]
    Refused(String),
    #[error("etcd gave a malformed answer: {0} (is the endpoint an etcd >= 3.4 client URL?)")]
    Malformed(String),
}

impl NodeError {
    fn from_etcd(e: EtcdError, client: &EtcdClient) -> NodeError {
        let endpoints = || client.endpoints().join(",");
        match e {
            EtcdError::Unreachable(detail) => NodeError::Unreachable {
                endpoints: endpoints(),
                detail,
            },
            EtcdError::Indeterminate(detail) => NodeError::Indeterminate {
                endpoints: endpoints(),
                detail,
            },
            e @ EtcdError::Refused(_) if e.may_have_applied() => NodeError::Indeterminate {
                endpoints: endpoints(),
                detail: e.to_string(),
            },
            EtcdError::Refused(body) => NodeError::Refused(body.message),
            EtcdError::Malformed(m) => NodeError::Malformed(m),
        }
    }
}

/// What the driver and the handle share. Locks are held for a step, never across an await.
struct Shared {
    core: Mutex<LeaseCore>,
    load: AtomicUsize,
    /// Set when the node's keys should be written again at once (a claim found `alive/` wrong).
    republish: AtomicBool,
    /// Wakes the driver to look at `load` and `republish`; holds at most one permit, so
    /// set_load never queues.
    poke: Notify,
}

/// The handle the rest of the node uses. Dropping it ends the driver (the lease then lapses).
pub struct Node {
    shared: Arc<Shared>,
    client: Arc<EtcdClient>,
    node_id: String,
    dist_addr: String,
    keys: Keys,
    /// How long a settled claim or release waits before trying again.
    retry_after: std::time::Duration,
    status: watch::Receiver<NodeStatus>,
    /// Taken by the first [`Node::stop`].
    stop: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

impl Node {
    /// Spawns the driver (call it inside the runtime); the node is [`NodeStatus::Starting`]
    /// until its first registration.
    pub fn start(client: EtcdClient, cfg: NodeConfig) -> Node {
        debug_assert!(cfg.lease.checked().is_ok(), "unchecked {:?}", cfg.lease);
        let shared = Arc::new(Shared {
            core: Mutex::new(LeaseCore::new(cfg.lease, time::now())),
            load: AtomicUsize::new(0),
            republish: AtomicBool::new(false),
            poke: Notify::new(),
        });
        let client = Arc::new(client);
        let (status_tx, status) = watch::channel(NodeStatus::Starting);
        let (stop, stop_rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let driver = driver::Driver::new(
            client.clone(),
            shared.clone(),
            cfg.clone(),
            status_tx,
            stop_rx,
        );
        rt::spawn_task(async move {
            driver.run().await;
            let _ = done_tx.send(());
        });
        Node {
            shared,
            client,
            node_id: cfg.node_id,
            dist_addr: cfg.dist_addr,
            keys: cfg.keys,
            retry_after: cfg.lease.retry_after,
            status,
            stop: Mutex::new(Some((stop, done))),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A receiver of every status change.
    pub fn status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// `(lease, incarnation)` if the node may act at this instant: a registered incarnation
    /// whose lease is still before its fence deadline.
    pub fn acting_now(&self) -> Option<(i64, u64)> {
        let NodeStatus::Acting {
            lease, incarnation, ..
        } = *self.status.borrow()
        else {
            return None;
        };
        let core = self.shared.core.lock().expect("lease core lock");
        match core.acting(time::now()) {
            Some((id, _)) if id == lease => Some((lease, incarnation)),
            _ => None,
        }
    }

    /// The lease this node acts under and its fence deadline, while it may act. Read by the
    /// simulation, which holds the deadline to etcd's own expiry of the lease: the fence must
    /// keep its whole margin (docs/cluster.md, "Leases and fencing").
    pub fn fence_deadline(&self) -> Option<(i64, Instant)> {
        let core = self.shared.core.lock().expect("lease core lock");
        core.acting(time::now())
    }

    /// The value this node's claim with `token` writes: what [`Node::release`] needs later.
    pub fn room_record(&self, token: u64) -> RoomRecord {
        let incarnation = match *self.status.borrow() {
            NodeStatus::Starting => 0,
            NodeStatus::Acting { incarnation, .. } | NodeStatus::Fenced { incarnation } => {
                incarnation
            }
        };
        RoomRecord {
            node_id: self.node_id.clone(),
            dist_addr: self.dist_addr.clone(),
            token,
            incarnation,
        }
    }

    /// The nodes registered now (their `nodes/` records), in node-id order; records that do not
    /// parse are skipped (a newer version's, or damage) rather than failing placement.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, NodeError> {
        let (kvs, _) = self
            .client
            .get_prefix(&self.keys.nodes_prefix())
            .await
            .map_err(|e| self.err(e))?;
        Ok(kvs
            .iter()
            .filter_map(|kv| NodeRecord::from_value(&kv.value).ok())
            .collect())
    }

    /// Claims `room` under the current lease: `Won` (the room is this node's from `epoch`) or
    /// `Taken` by its owner; never `ClaimOutcome::Fenced`, which is `Err(NodeError::Fenced)`.
    /// `token` must be unique per claim attempt; after an error, retrying with the same token
    /// recognises a claim that landed late as this one.
    pub async fn claim(&self, room: &str, token: u64) -> Result<ClaimOutcome, NodeError> {
        let (lease, _) = self.acting_now().ok_or(NodeError::Fenced)?;
        let mine = self.room_record(token);
        let txn = claims::claim_txn(&self.keys, &self.node_id, lease, room, &mine);
        let outcome = match self.client.txn(&txn).await {
            Ok(resp) => claims::claim_outcome(&resp).map_err(NodeError::Malformed)?,
            Err(e) if e.may_have_applied() => match self.read_back(room, &mine).await {
                Some(outcome) => outcome,
                // The claim may still be applied later (or the read failed): only a retry with
                // this token can tell, so the caller hears "unknown", never "not sent".
                None => return Err(self.err(e)),
            },
            Err(e) => return Err(self.err(e)),
        };
        Ok(match outcome {
            ClaimOutcome::Taken(owner) if owner.record == mine => {
                ClaimOutcome::Won { epoch: owner.epoch }
            }
            ClaimOutcome::Fenced => {
                // The core may still believe the lease alive: if the alive key was overwritten
                // (a late write of an older incarnation), rewriting it heals the node; if the
                // lease is gone, the next keepalive fences it.
                self.request_republish();
                return Err(NodeError::Fenced);
            }
            other => other,
        })
    }

    /// After a claim whose answer was lost: `Won` if the name holds this very claim, `Taken` if
    /// another; `None` if nothing decides it.
    async fn read_back(&self, room: &str, mine: &RoomRecord) -> Option<ClaimOutcome> {
        let req = claims::whereis_request(&self.keys, room);
        let range = self.client.call(&req).await.ok()?;
        match claims::read_back(&range, mine).ok()? {
            Ok(epoch) => Some(ClaimOutcome::Won { epoch }),
            Err(Some(owner)) => Some(ClaimOutcome::Taken(owner)),
            Err(None) => None,
        }
    }

    pub async fn whereis(&self, room: &str) -> Result<Option<Owner>, NodeError> {
        let req = claims::whereis_request(&self.keys, room);
        let range = self.client.call(&req).await.map_err(|e| self.err(e))?;
        claims::whereis_outcome(&range).map_err(NodeError::Malformed)
    }

    /// Deletes `rooms/<room>` if it still holds `record`: `true` released, `false` it was gone
    /// or belongs to another claim (a stale record never removes a newer owner). Allowed while
    /// fenced: the compare keeps it safe.
    pub async fn release(&self, room: &str, record: &RoomRecord) -> Result<bool, NodeError> {
        let txn = claims::release_txn(&self.keys, room, record);
        let resp = self.client.txn(&txn).await.map_err(|e| self.err(e))?;
        Ok(resp.succeeded)
    }

    /// [`Node::claim`] carried to a decision, with the lease the claim is on: an unknown
    /// outcome is sent again with the same token (the claim may have landed, and only a retry
    /// learns it; left alone it would hold the name for as long as the lease lives), through
    /// later errors too, while the node holds that lease. A `Won` answered after the node lost
    /// the lease is released at once and reported as `Err(Fenced)`: the node may no longer act
    /// on it, and a later owner may already hold a newer epoch.
    pub async fn claim_settled(
        &self,
        room: &str,
        token: u64,
    ) -> Result<(ClaimOutcome, i64), NodeError> {
        let (lease, _) = self.acting_now().ok_or(NodeError::Fenced)?;
        let mut outcome = self.claim(room, token).await;
        let unknown = matches!(outcome, Err(NodeError::Indeterminate { .. }));
        while unknown && matches!(&outcome, Err(e) if *e != NodeError::Fenced) && self.holds(lease)
        {
            rt::probe::emit(rt::probe::Event::ClaimRetried);
            time::sleep(self.retry_after).await;
            outcome = self.claim(room, token).await;
        }
        match outcome? {
            ClaimOutcome::Won { .. } if !self.holds(lease) => {
                rt::probe::emit(rt::probe::Event::ClaimAnsweredTooLate);
                let _ = self.release(room, &self.room_record(token)).await;
                Err(NodeError::Fenced)
            }
            outcome => Ok((outcome, lease)),
        }
    }

    /// [`Node::release`] until it is done: a failure is tried again while `lease` (the one the
    /// claim is on) lives, since a key left on a lease the node keeps alive would hold the name
    /// for good; once the lease is gone the key lapses with it. `true` if this call deleted it.
    pub async fn release_settled(&self, room: &str, record: &RoomRecord, lease: i64) -> bool {
        loop {
            match self.release(room, record).await {
                Ok(released) => return released,
                Err(_) if self.holds(lease) => {
                    rt::probe::emit(rt::probe::Event::ReleaseRetried);
                    time::sleep(self.retry_after).await;
                }
                Err(_) => return false,
            }
        }
    }

    /// Whether the node acts under `lease` now.
    fn holds(&self, lease: i64) -> bool {
        self.acting_now().is_some_and(|(l, _)| l == lease)
    }

    /// The number of rooms to publish in the node record: written within a keepalive period of
    /// the last write (only the latest value is kept, so a busy node writes at that rate at most).
    pub fn set_load(&self, rooms: usize) {
        if self.shared.load.swap(rooms, Ordering::Relaxed) != rooms {
            self.shared.poke.notify_one();
        }
    }

    /// Publishes `Fenced`, revokes the lease (best effort: it lapses anyway) and ends the
    /// driver. Call it once this node's rooms have ended: the revoke frees their names at once.
    /// Later calls return at once.
    pub async fn stop(&self) {
        let taken = self.stop.lock().expect("node stop lock").take();
        if let Some((stop, done)) = taken {
            let _ = stop.send(());
            let _ = done.await;
        }
    }

    fn request_republish(&self) {
        self.shared.republish.store(true, Ordering::Relaxed);
        self.shared.poke.notify_one();
    }

    fn err(&self, e: EtcdError) -> NodeError {
        NodeError::from_etcd(e, &self.client)
    }
}

/// The status side of the driver, without I/O: which incarnation is current and what to publish
/// as the core's changes and the registrations' answers come in.
#[derive(Debug, Default)]
struct Phase {
    /// The last registered incarnation's number (0 before the first).
    incarnation: u64,
    /// The current incarnation's lease, and whether its keys are written.
    lease: Option<(i64, bool)>,
}

impl Phase {
    /// What to publish for a change of the core (a new lease publishes only once registered).
    fn on_change(&mut self, change: Change) -> Option<NodeStatus> {
        match change {
            Change::Acting { id, .. } => {
                self.lease = Some((id, false));
                None
            }
            Change::Fenced { .. } => {
                self.lease = None;
                Some(NodeStatus::Fenced {
                    incarnation: self.incarnation,
                })
            }
        }
    }

    /// The keys of `lease` were written at etcd `revision`; `acting` is the core's view at the
    /// answer.
    fn on_registered(
        &mut self,
        lease: i64,
        revision: i64,
        acting: Option<(i64, Instant)>,
    ) -> Option<NodeStatus> {
        match (self.lease, acting) {
            (Some((id, false)), Some((live, deadline))) if id == lease && live == lease => {
                self.lease = Some((id, true));
                // Revisions only grow; should etcd's ever go back (its data lost), this process
                // still never numbers two incarnations alike.
                self.incarnation = (revision.max(0) as u64).max(self.incarnation + 1);
                Some(NodeStatus::Acting {
                    lease,
                    incarnation: self.incarnation,
                    deadline,
                })
            }
            _ => None,
        }
    }
}

/// Leases of fenced incarnations that etcd may still hold, oldest first: their rooms stopped
/// acting, but their keys hold the names until the lease lapses, so each is revoked once a newer
/// incarnation acts (etcd answers again, and the revoke cannot take the lease the node acts on).
#[derive(Debug, Default)]
struct Stale {
    leases: std::collections::VecDeque<StaleLease>,
    /// A failed revoke waits for the next keepalive round.
    after: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StaleLease {
    id: i64,
    ttl: std::time::Duration,
    /// After this etcd surely no longer has it: nothing is left to revoke.
    lapsed_by: Instant,
}

/// How a revoke of a stale lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Revoked {
    Done,
    /// etcd no longer had it (it lapsed meanwhile).
    Gone,
    Failed,
}

impl Stale {
    /// Every lease lapses on its own within its TTL, so a few are enough; the oldest is dropped
    /// first, being the nearest to lapsing anyway.
    const KEPT: usize = 4;

    /// Lease `id` (granted with `ttl`) was fenced at `now` by its deadline. A lease etcd said is
    /// gone is never remembered.
    fn fenced(&mut self, id: i64, ttl: std::time::Duration, now: Instant) {
        if self.leases.len() == Self::KEPT {
            self.leases.pop_front();
        }
        self.leases.push_back(StaleLease {
            id,
            ttl,
            lapsed_by: now + ttl,
        });
    }

    /// etcd granted a new lease at `now`. A restarted etcd gives every lease its full TTL again
    /// when it comes back, which is before it answered this grant: the stale ones may live that
    /// long from here.
    fn granted(&mut self, now: Instant) {
        for l in &mut self.leases {
            l.lapsed_by = l.lapsed_by.max(now + l.ttl);
        }
    }

    /// The lease to revoke now, if any. `acting` is the lease of a registered incarnation that
    /// acts at `now`: without one, etcd has not answered since the fence (and the revoke would
    /// only fail).
    fn next(&mut self, now: Instant, acting: Option<i64>) -> Option<i64> {
        if self.after.is_some_and(|at| at <= now) {
            self.after = None;
        }
        let current = acting?;
        self.leases.retain(|l| now < l.lapsed_by && l.id != current);
        match self.after {
            Some(_) => None,
            None => self.leases.front().map(|l| l.id),
        }
    }

    /// When a failed revoke may be tried again; always after the last [`Stale::next`].
    fn due(&self) -> Option<Instant> {
        self.after.filter(|_| !self.leases.is_empty())
    }

    fn revoked(
        &mut self,
        id: i64,
        outcome: Revoked,
        now: Instant,
        retry_after: std::time::Duration,
    ) {
        match outcome {
            Revoked::Done | Revoked::Gone => {
                self.leases.retain(|l| l.id != id);
                self.after = None;
            }
            Revoked::Failed => self.after = Some(now + retry_after),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::etcd::gateway::ErrorBody;
    use crate::cluster::lease::FenceCause;
    use std::time::Duration;

    #[test]
    fn a_node_record_round_trips_through_json() {
        let r = NodeRecord {
            node_id: "n1".into(),
            dist_addr: "10.0.0.1:7000".into(),
            incarnation: 3,
            rooms: 12,
        };
        let v = r.to_value();
        assert_eq!(
            std::str::from_utf8(&v).unwrap(),
            r#"{"node_id":"n1","dist_addr":"10.0.0.1:7000","incarnation":3,"rooms":12}"#
        );
        assert_eq!(NodeRecord::from_value(&v), Ok(r));
        assert!(NodeRecord::from_value(b"{}").is_err());
    }

    #[test]
    fn an_incarnation_acts_only_once_registered_and_fencing_is_published_at_once() {
        let t = Instant::now() + Duration::from_secs(2);
        let mut p = Phase::default();
        assert_eq!(p.on_change(Change::Acting { id: 7, deadline: t }), None);
        // The core fenced before the write answered: the late answer publishes nothing.
        assert_eq!(p.on_registered(7, 40, None), None);
        assert_eq!(p.on_registered(7, 41, Some((7, t))).unwrap(), {
            NodeStatus::Acting {
                lease: 7,
                incarnation: 41,
                deadline: t,
            }
        });
        assert_eq!(p.on_registered(7, 42, Some((7, t))), None, "published once");
        let fenced = Change::Fenced {
            id: 7,
            cause: FenceCause::Deadline,
        };
        assert_eq!(
            p.on_change(fenced),
            Some(NodeStatus::Fenced { incarnation: 41 })
        );
        // A registration of the old lease answering after the fence publishes nothing.
        assert_eq!(p.on_registered(7, 43, Some((7, t))), None);
        p.on_change(Change::Acting { id: 9, deadline: t });
        assert_eq!(p.on_registered(7, 44, Some((9, t))), None, "not this lease");
        assert!(matches!(
            p.on_registered(9, 50, Some((9, t))),
            Some(NodeStatus::Acting {
                incarnation: 50,
                ..
            })
        ));
    }

    #[test]
    fn incarnations_only_grow_even_if_etcd_revisions_went_back() {
        let t = Instant::now() + Duration::from_secs(2);
        let mut p = Phase::default();
        assert_eq!(
            p.on_change(Change::Fenced {
                id: 1,
                cause: FenceCause::Deadline
            }),
            Some(NodeStatus::Fenced { incarnation: 0 }),
            "none registered yet"
        );
        p.on_change(Change::Acting { id: 7, deadline: t });
        p.on_registered(7, 100, Some((7, t)));
        p.on_change(Change::Fenced {
            id: 7,
            cause: FenceCause::LeaseGone,
        });
        p.on_change(Change::Acting { id: 9, deadline: t });
        // etcd lost its data and counts from the start again.
        assert!(matches!(
            p.on_registered(9, 3, Some((9, t))),
            Some(NodeStatus::Acting {
                incarnation: 101,
                ..
            })
        ));
    }

    #[test]
    fn a_fenced_lease_is_revoked_only_once_a_newer_incarnation_acts() {
        let t = Instant::now();
        let ttl = Duration::from_secs(4);
        let mut s = Stale::default();
        s.fenced(7, ttl, t);
        assert_eq!(
            s.next(t, None),
            None,
            "etcd has not answered since the fence"
        );
        assert_eq!(s.next(t, Some(7)), None, "never the lease the node acts on");
        s.fenced(8, ttl, t);
        assert_eq!(s.next(t, Some(9)), Some(8));
        // A failure waits for the next round, then the same lease is tried again.
        let retry = Duration::from_millis(800);
        s.revoked(8, Revoked::Failed, t, retry);
        assert_eq!(s.due(), Some(t + retry));
        assert_eq!(s.next(t + retry - Duration::from_millis(1), Some(9)), None);
        assert_eq!(s.next(t + retry, Some(9)), Some(8));
        assert_eq!(s.due(), None);
        s.revoked(8, Revoked::Done, t + retry, retry);
        assert_eq!(s.next(t + retry, Some(9)), None, "done");
        s.fenced(10, ttl, t);
        s.revoked(10, Revoked::Gone, t, retry);
        assert_eq!(s.next(t, Some(9)), None, "etcd no longer had it");
        assert_eq!(s.due(), None);
    }

    #[test]
    fn fenced_leases_are_kept_few_and_until_they_surely_lapsed() {
        let t = Instant::now();
        let ttl = Duration::from_secs(4);
        let mut s = Stale::default();
        for id in 1..=Stale::KEPT as i64 + 1 {
            s.fenced(id, ttl, t);
        }
        assert_eq!(s.next(t, Some(99)), Some(2), "the oldest was dropped");
        s.revoked(2, Revoked::Done, t, ttl);
        // A grant proves etcd is back; a restart then may have given the rest their TTL anew.
        s.granted(t + Duration::from_secs(1));
        assert_eq!(s.next(t + ttl, Some(99)), Some(3));
        assert_eq!(s.next(t + ttl + Duration::from_secs(1), Some(99)), None);
        assert_eq!(s.due(), None);
    }

    #[test]
    fn errors_name_what_to_check() {
        let c = EtcdClient::new(&["http://127.0.0.1:2379"], Duration::from_secs(1)).unwrap();
        let e = NodeError::from_etcd(EtcdError::Unreachable("refused".into()), &c);
        assert!(
            e.to_string()
                .starts_with("etcd unreachable at http://127.0.0.1:2379: refused"),
            "{e}"
        );
        let timed_out = EtcdError::Refused(ErrorBody {
            error: "etcdserver: request timed out".into(),
            message: "etcdserver: request timed out".into(),
            code: crate::cluster::etcd::gateway::code::UNAVAILABLE,
        });
        assert!(matches!(
            NodeError::from_etcd(timed_out, &c),
            NodeError::Indeterminate { .. }
        ));
        assert!(NodeError::Fenced.to_string().contains("fenced"));
    }
}
