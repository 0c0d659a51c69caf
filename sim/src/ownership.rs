//! The cluster's ownership oracle (docs/cluster.md, G1): a room acts only while etcd holds its
//! claim. Checked at the instant of every act, against the world's etcd model, never against
//! what the product believes about its own lease.
//!
//! An act is the room handling what it took from its mailbox (a message, a DOWN) or a timer
//! (`RoomActing`, which the room emits once it has checked that its node may act for it). At
//! that instant the name's key must hold the room's own claim value, on the lease
//! the claim was made under, and that lease must not have lapsed in etcd's time (the model
//! drops lapsed keys on its own tick, so the lease's expiry is compared, not only the key's
//! presence). Holding the key is exclusive, so this also gives "at most one acting room per
//! name at any simulated instant"; and per name, the epochs claimed only grow and acts never go
//! back to an older epoch.
//!
//! Fencing is also checked for promptness: a node that cannot renew ends its rooms at its fence
//! deadline, a margin before etcd lets the lease lapse, so when etcd lets a lease lapse no room
//! claimed on it may still be alive. Exempt are rooms of a node that was frozen within the
//! last lease TTL (it could not run its fence; it ends them on waking, before any act, which the
//! act check holds it to) and rooms of a node that was killed (they are gone with it).
//!
//! The fence is also checked for its margin: a node that may act holds a deadline at least the
//! lease config's margin before etcd's own expiry of its lease (`fence_margin_broken`), since
//! etcd renews on a keepalive's arrival and the deadline counts from its send.
//!
//! Shared by both cluster worlds: the swarm on a cluster (fed by the product's probe events)
//! and the lease world (`leases`, whose rooms are the world's own workload).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::task::NodeId;
use videoroom::cluster::etcd::model::EtcdModel;
use videoroom::cluster::lease::LeaseConfig;
use videoroom::rt::time::{self, Instant};

use crate::etcd_node::Etcd;
use crate::swarm::Hush;
use videoroom::rt::probe::{Event, SysId};
use videoroom::rt::Pid;

/// Why an act at `now_ms` is illegitimate, or `None` if etcd still holds the claim: `key`
/// holds `value` on `lease`, and `lease` has not lapsed.
pub fn claim_broken(
    model: &EtcdModel,
    key: &[u8],
    value: &[u8],
    lease: i64,
    now_ms: u64,
) -> Option<String> {
    match model.get(key) {
        Some(kv) if kv.value == value && kv.lease == lease => {}
        Some(kv) => {
            return Some(format!(
                "etcd holds {} on lease {:x} there",
                String::from_utf8_lossy(kv.value),
                kv.lease
            ))
        }
        None => return Some("etcd dropped its key".into()),
    }
    match model.leases().find(|l| l.id == lease) {
        Some(l) if l.expiry_ms > now_ms => None,
        Some(l) => Some(format!(
            "at {now_ms} ms, on lease {lease:x}, which lapsed at {} ms",
            l.expiry_ms
        )),
        None => Some(format!("on lease {lease:x}, which etcd revoked")),
    }
}

/// Why a node acting on `lease` until `deadline` (on etcd's clock: time since it began) breaks
/// the fence's margin, or `None` if it keeps it (docs/cluster.md, "Leases and fencing"): the node
/// must stop at least the margin of the worlds' lease config before etcd may let the lease lapse.
/// etcd renews a lease when a keepalive reaches it, after it was sent, so a deadline counted from
/// the send keeps the whole margin; one counted from the answer's arrival spends the answer's
/// delay out of it, and the margin is there for clock drift and stalls, not for that. A lease etcd
/// no longer has is the act check's to judge (`claim_broken`).
pub fn fence_margin_broken(model: &EtcdModel, lease: i64, deadline: Duration) -> Option<String> {
    let margin = LeaseConfig::simulation().margin;
    let l = model.leases().find(|l| l.id == lease)?;
    let lapses = Duration::from_millis(l.expiry_ms);
    // etcd's clock reads whole milliseconds: a renewal in the millisecond its keepalive was sent
    // may read up to 1 ms before the send.
    (deadline + margin > lapses + Duration::from_millis(1)).then(|| {
        format!(
            "the fence deadline on lease {lease:x} is {} ms, {} ms before etcd may let the lease \
             lapse (at {} ms): less than the margin of {} ms",
            deadline.as_millis(),
            lapses.saturating_sub(deadline).as_millis(),
            l.expiry_ms,
            margin.as_millis()
        )
    })
}

/// What the fault injector did to server nodes that the oracle must know to judge fencing:
/// freezes (a frozen node runs no fence) and kills (its rooms are gone without exiting).
#[derive(Clone, Default)]
pub struct NodeLife(Arc<Mutex<LifeInner>>);

#[derive(Default)]
struct LifeInner {
    /// Per node: frozen now (`None`) or thawed at.
    frozen: BTreeMap<NodeId, Option<Instant>>,
    /// Nodes killed since the oracle last looked.
    killed: Vec<NodeId>,
}

impl NodeLife {
    pub fn freeze(&self, node: NodeId) {
        self.0.lock().unwrap().frozen.insert(node, None);
    }

    pub fn thaw(&self, node: NodeId) {
        self.0
            .lock()
            .unwrap()
            .frozen
            .insert(node, Some(time::now()));
    }

    pub fn killed(&self, node: NodeId) {
        self.0.lock().unwrap().killed.push(node);
    }

    /// Whether `node` is frozen or thawed within a lease TTL (and a second): it could not run
    /// its fence, and ends its rooms on waking, before any act (which the act check holds it
    /// to), so its rooms are not held to the fence deadline or the lapse.
    fn could_not_fence(&self, node: NodeId) -> bool {
        let window = LeaseConfig::simulation().ttl + Duration::from_secs(1);
        match self.0.lock().unwrap().frozen.get(&node) {
            Some(None) => true,
            Some(Some(thawed)) => time::now().saturating_duration_since(*thawed) < window,
            None => false,
        }
    }

    fn take_killed(&self) -> Vec<NodeId> {
        std::mem::take(&mut self.0.lock().unwrap().killed)
    }
}

/// A claimed room's claim.
struct Claim {
    name: String,
    epoch: i64,
    lease: i64,
    value: Vec<u8>,
    /// Already reported as outliving its node's fence deadline.
    late: bool,
}

/// How long after the latest possible fence deadline a room may still be seen alive: the fence
/// task wakes on the node's status watch and ends the rooms, which exit at their next poll.
const FENCE_SLACK: Duration = Duration::from_millis(300);

/// Per name: the highest epoch claimed, and the last act's epoch and room.
#[derive(Default)]
struct NameLog {
    max_claimed: i64,
    last_act: Option<(i64, (SysId, Pid))>,
}

/// Follows the claims of the product's rooms through its probe events and checks every act.
pub struct Ownership {
    keys: videoroom::cluster::claims::Keys,
    life: NodeLife,
    /// The server node each process table runs on.
    systems: BTreeMap<SysId, NodeId>,
    claims: BTreeMap<(SysId, Pid), Claim>,
    names: BTreeMap<String, NameLog>,
    violations: Vec<String>,
    acts: u64,
    /// The world's quiet spells, and per lease the process table whose rooms claimed on it,
    /// for the coverage of the lapse check (below).
    hush: Option<Hush>,
    lease_sys: BTreeMap<i64, SysId>,
    reached: BTreeMap<&'static str, u64>,
    /// etcd's time (ms) at which the fence check next has something to look at.
    fence_due_ms: u64,
}

/// Coverage: a lease that rooms were claimed on lapsed in a quiet spell, its node running: the
/// case where only the node's own fence, not a room's lease check, can end its rooms in time.
pub const IDLE_LAPSE: &str = "cluster: a lease with rooms lapsed in a quiet spell";
/// The same in or out of a quiet spell.
pub const LAPSE: &str = "cluster: a lease with rooms lapsed, its node running";

impl Ownership {
    pub fn new(keys: videoroom::cluster::claims::Keys, life: NodeLife, hush: Option<Hush>) -> Self {
        Ownership {
            keys,
            life,
            systems: BTreeMap::new(),
            claims: BTreeMap::new(),
            names: BTreeMap::new(),
            violations: Vec::new(),
            acts: 0,
            hush,
            lease_sys: BTreeMap::new(),
            reached: BTreeMap::new(),
            fence_due_ms: 0,
        }
    }

    /// Feeds one probe event, with etcd as it is at this instant.
    pub fn observe(&mut self, e: &Event<'_>, etcd: &Etcd) {
        self.forget_killed();
        self.check_lapsed(etcd);
        self.check_fence(etcd);
        let (sys, pid) = match *e {
            Event::SystemStarted { sys } => {
                // Emitted while the server node boots, so this is the node's context.
                self.systems.insert(sys, madsim::plugin::node());
                return;
            }
            Event::RoomClaimed {
                sys,
                pid,
                name,
                epoch,
                lease,
                value,
            } => {
                let log = self.names.entry(name.to_owned()).or_default();
                if epoch <= log.max_claimed {
                    let max = log.max_claimed;
                    self.violations.push(format!(
                        "room {name} claimed at epoch {epoch}, not above the last claimed epoch \
                         {max}"
                    ));
                }
                log.max_claimed = log.max_claimed.max(epoch);
                self.lease_sys.insert(lease, sys);
                self.claims.insert(
                    (sys, pid),
                    Claim {
                        name: name.to_owned(),
                        epoch,
                        lease,
                        value: value.to_vec(),
                        late: false,
                    },
                );
                self.fence_due_ms = 0;
                return;
            }
            Event::ProcessExited { sys, pid, .. } => {
                self.claims.remove(&(sys, pid));
                return;
            }
            Event::RoomActing { sys, pid } => (sys, pid),
            _ => return,
        };
        let Some(claim) = self.claims.get(&(sys, pid)) else {
            return;
        };
        self.acts += 1;
        // Only an act reads etcd: most events are not one, and the world sees millions.
        let model = etcd.model.lock().unwrap();
        let now_ms = etcd.now_ms();
        let key = self.keys.room(&claim.name);
        if let Some(why) = claim_broken(&model, &key, &claim.value, claim.lease, now_ms) {
            self.violations.push(format!(
                "room {} ({pid} of system {}, epoch {}) acted while not its owner: {why}",
                claim.name, sys.0, claim.epoch
            ));
        }
        let log = self.names.entry(claim.name.clone()).or_default();
        if let Some((e, by)) = log.last_act {
            if claim.epoch < e || (claim.epoch == e && by != (sys, pid)) {
                self.violations.push(format!(
                    "two owners of {}: {pid} of system {} acted at epoch {} after {} of system {} \
                     at epoch {e}",
                    claim.name, sys.0, claim.epoch, by.1, by.0 .0
                ));
            }
        }
        log.last_act = Some((claim.epoch, (sys, pid)));
    }

    /// Rooms of a killed node are gone with it, without an exit.
    fn forget_killed(&mut self) {
        let killed: BTreeSet<NodeId> = self.life.take_killed().into_iter().collect();
        if killed.is_empty() {
            return;
        }
        let dead: BTreeSet<SysId> = self
            .systems
            .iter()
            .filter(|(_, n)| killed.contains(n))
            .map(|(s, _)| *s)
            .collect();
        self.systems.retain(|s, _| !dead.contains(s));
        self.claims.retain(|(s, _), _| !dead.contains(s));
    }

    /// No room outlives its claim's lease: its node ended it at the fence deadline, before etcd
    /// let the lease lapse (unless the node was frozen and could not).
    fn check_lapsed(&mut self, etcd: &Etcd) {
        let lapsed = std::mem::take(&mut *etcd.lapsed.lock().unwrap());
        for (lease, at_ms) in lapsed {
            let node = self.lease_sys.get(&lease).and_then(|s| self.systems.get(s));
            if node.is_some_and(|n| !self.life.could_not_fence(*n)) {
                *self.reached.entry(LAPSE).or_default() += 1;
                if self.hush.is_some_and(|h| h.quiet(time::now())) {
                    *self.reached.entry(IDLE_LAPSE).or_default() += 1;
                }
            }
            for ((sys, pid), c) in &self.claims {
                // One report per room: the fence check may have made it already.
                if c.lease != lease || c.late {
                    continue;
                }
                let node = self.systems.get(sys).copied();
                if node.is_some_and(|n| self.life.could_not_fence(n)) {
                    continue;
                }
                self.violations.push(format!(
                    "room {} ({pid} of system {}, epoch {}) still runs when etcd let its lease \
                     {lease:x} lapse at {at_ms} ms: its node did not end it at its fence deadline",
                    c.name, sys.0, c.epoch
                ));
            }
        }
    }

    /// Fencing on time (G2): a node acts until `sent + TTL - margin`, `sent` being when it sent
    /// the keepalive its lease was last renewed by, and etcd's expiry counts from when it took
    /// that keepalive, later: so the node's deadline is at most `expiry - margin` on etcd's clock
    /// (earlier if the answer was lost, or etcd extended the lease on restarting). A room still
    /// alive `FENCE_SLACK` after that, on a node that was not frozen, was not ended by its fence.
    /// Checked whenever the earliest such instant has passed, so etcd is read rarely.
    fn check_fence(&mut self, etcd: &Etcd) {
        let now_ms = etcd.now_ms();
        if now_ms < self.fence_due_ms {
            return;
        }
        let expiry: BTreeMap<i64, u64> = {
            let model = etcd.model.lock().unwrap();
            model.leases().map(|l| (l.id, l.expiry_ms)).collect()
        };
        let cfg = LeaseConfig::simulation();
        let late_ms = |expiry: u64| {
            (expiry + FENCE_SLACK.as_millis() as u64).saturating_sub(cfg.margin.as_millis() as u64)
        };
        let mut due = u64::MAX;
        for ((sys, pid), c) in self.claims.iter_mut().filter(|(_, c)| !c.late) {
            // A lease gone from etcd lapsed (`check_lapsed`) or was revoked after a fence.
            let Some(&e) = expiry.get(&c.lease) else {
                continue;
            };
            if now_ms < late_ms(e) {
                due = due.min(late_ms(e));
                continue;
            }
            let node = self.systems.get(sys).copied();
            if node.is_none_or(|n| self.life.could_not_fence(n)) {
                // It could not run its fence; looked at again once it has thawed for long.
                due = due.min(now_ms + 100);
                continue;
            }
            c.late = true;
            self.violations.push(format!(
                "room {} ({pid} of system {}, epoch {}) still runs at {now_ms} ms on etcd's clock, \
                 past its node's fence deadline (at most {} ms: lease {:x} expires at {e} ms, \
                 margin {:?}): its node did not end it",
                c.name,
                sys.0,
                c.epoch,
                e.saturating_sub(cfg.margin.as_millis() as u64),
                c.lease,
                cfg.margin
            ));
        }
        self.fence_due_ms = due;
    }

    /// Broken ownership promises, in the order they happened.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Acts checked.
    pub fn acts(&self) -> u64 {
        self.acts
    }

    /// Coverage the oracle itself observes ([`IDLE_LAPSE`]).
    pub fn reached(&self) -> &BTreeMap<&'static str, u64> {
        &self.reached
    }
}
