//! Safety oracles and coverage counters shared by the world's tasks. A violation is recorded
//! (not panicked) so the run can finish its trace and report every broken promise with the
//! seed that replays it.
//!
//! The product's probe events arrive synchronously in the world's [`ProbeLog`]: they are
//! counted (coverage), fed to the runtime's promise model (`rt::promises`, checked at the moment
//! of emission), and panics caught at a process's crash boundary are kept with their simulated
//! time, since every such panic is a bug (injected faults never panic).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use videoroom::engine::client_model::Judge;
use videoroom::rt::probe::{self, Event, SinkGuard};
use videoroom::rt::promises::{Panicked, Promises, Violation};
use videoroom::rt::time;

use crate::coverage::Counts;
use crate::etcd_node::Etcd;
use crate::ownership::{NodeLife, Ownership};
use crate::swarm::Hush;
use crate::trace::Trace;

/// A panic caught at a crash boundary, when it happened.
#[derive(Clone, Debug)]
pub struct Crash {
    pub at: time::Duration,
    pub panic: Panicked,
}

/// A channel's topic, and the metadata seqs it heard per peer.
type Heard = (String, BTreeMap<String, Vec<u64>>);

/// Violations kept word for word; later ones are counted.
const MAX_VIOLATIONS: usize = 10;

#[derive(Default)]
struct Inner {
    violations: Vec<String>,
    /// Breaches past the first [`MAX_VIOLATIONS`] distinct ones (a lasting one counts each time).
    more: u64,
    checks: u64,
    /// (client, join_ref) that must get exactly one phx_error (their room crashed).
    expected_errors: BTreeMap<(usize, String), bool>,
    /// Client-side branches reached (coverage the server's events cannot see).
    reached: BTreeMap<&'static str, u64>,
    /// Where violations are also written, at the moment they happen (see [`Oracles::traced`]).
    trace: Option<Trace>,
    /// Per (client, join_ref): its topic, and the metadata seqs heard per peer, in
    /// `endpointUpdated` order.
    heard: BTreeMap<(usize, String), Heard>,
    /// Client index of each peer heard from (from its metadata).
    peer_client: BTreeMap<String, usize>,
    /// (client, seq) of metadata updates sent within the client's update burst on a live,
    /// connected channel: the room must pass each on.
    in_budget: BTreeSet<(usize, u64)>,
    /// Graceful restarts begun, by server address: a 1012 close is owed only by one of them.
    graceful_restarts: BTreeMap<std::net::IpAddr, u64>,
}

#[derive(Clone, Default)]
pub struct Oracles(Arc<Mutex<Inner>>);

impl Oracles {
    /// Oracles that also write each violation into `trace` when it happens, so a replay shows
    /// it among the events that led to it.
    pub fn traced(trace: &Trace) -> Oracles {
        let o = Oracles::default();
        o.0.lock().unwrap().trace = Some(trace.clone());
        o
    }

    pub fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        let mut i = self.0.lock().unwrap();
        i.checks += 1;
        if !ok {
            // A state checked on every tick reports a lasting breach once, not once per tick.
            let v = what();
            if !i.violations.contains(&v) {
                if let Some(t) = &i.trace {
                    t.log(format_args!("VIOLATION {v}"));
                }
                // The first ones tell the story; the rest (often the same breach at every
                // frame) are counted, so a failure line stays readable.
                if i.violations.len() < MAX_VIOLATIONS {
                    i.violations.push(v);
                } else {
                    i.more += 1;
                }
            }
        }
    }

    /// Counts a client-side branch reached (an Antithesis-style "sometimes" assertion).
    pub fn reached(&self, what: &'static str) {
        *self.0.lock().unwrap().reached.entry(what).or_default() += 1;
    }

    pub fn reached_counts(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap().reached.clone()
    }

    /// A graceful restart of the server at `ip` began (its sockets may be closed with 1012).
    pub fn graceful_restart_begun(&self, ip: std::net::IpAddr) {
        *self
            .0
            .lock()
            .unwrap()
            .graceful_restarts
            .entry(ip)
            .or_default() += 1;
    }

    /// Graceful restarts of the server at `ip` begun so far.
    pub fn graceful_restarts(&self, ip: std::net::IpAddr) -> u64 {
        let i = self.0.lock().unwrap();
        i.graceful_restarts.get(&ip).copied().unwrap_or(0)
    }

    pub fn fail(&self, what: String) {
        self.check(false, || what);
    }

    pub fn expect_error(&self, client: usize, join_ref: String) {
        self.0
            .lock()
            .unwrap()
            .expected_errors
            .insert((client, join_ref), false);
    }

    pub fn errored(&self, client: usize, join_ref: &str) {
        if let Some(seen) = self
            .0
            .lock()
            .unwrap()
            .expected_errors
            .get_mut(&(client, join_ref.to_string()))
        {
            *seen = true;
        }
    }

    /// Expected errors not seen, excluding channels the client let go of meanwhile.
    pub fn missing_errors(&self, excused: impl Fn(usize, &str) -> bool) -> Vec<(usize, String)> {
        let i = self.0.lock().unwrap();
        i.expected_errors
            .iter()
            .filter(|((c, jr), seen)| !**seen && !excused(*c, jr))
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn violations(&self) -> Vec<String> {
        let i = self.0.lock().unwrap();
        let mut v = i.violations.clone();
        if i.more > 0 {
            v.push(format!("and {} more breaches (see the trace)", i.more));
        }
        v
    }

    /// Client `client`'s channel `join_ref` on `topic` heard `peer`'s (client `from`'s)
    /// metadata update `seq`.
    pub fn heard(
        &self,
        client: usize,
        join_ref: &str,
        topic: &str,
        peer: &str,
        from: Option<usize>,
        seq: u64,
    ) {
        let mut i = self.0.lock().unwrap();
        if let Some(k) = from {
            if !i.peer_client.contains_key(peer) {
                i.peer_client.insert(peer.to_owned(), k);
            }
        }
        let (_, by_peer) = i
            .heard
            .entry((client, join_ref.to_owned()))
            .or_insert_with(|| (topic.to_owned(), BTreeMap::new()));
        match by_peer.get_mut(peer) {
            Some(v) => v.push(seq),
            None => {
                by_peer.insert(peer.to_owned(), vec![seq]);
            }
        }
    }

    /// Client `client` sent its metadata update `seq` within its update burst.
    pub fn sent_in_budget(&self, client: usize, seq: u64) {
        self.0.lock().unwrap().in_budget.insert((client, seq));
    }

    /// The channel left the media session (its roster is gone): what it heard no longer
    /// compares with the others'.
    pub fn forget_heard(&self, client: usize, join_ref: &str) {
        self.0
            .lock()
            .unwrap()
            .heard
            .remove(&(client, join_ref.to_owned()));
    }

    /// Every accepted metadata update is copied to every other peer of the room: two channels
    /// that were in the room at once heard the same updates of each peer while both did. Each
    /// pair of channels of one topic is compared from the later of their first updates of a
    /// peer to the earlier of their last (a channel that ended, or one still waiting for a
    /// later update, heard nothing past its last). Channels never in the room together share no
    /// such stretch; a room that crashed and restarted has new peer ids.
    pub fn check_heard(&self) {
        let mut bad = Vec::new();
        {
            let i = self.0.lock().unwrap();
            let all: Vec<(&(usize, String), &Heard)> = i.heard.iter().collect();
            for (n, (a, (topic, ha))) in all.iter().enumerate() {
                for (b, (topic_b, hb)) in &all[n + 1..] {
                    if topic != topic_b {
                        continue;
                    }
                    for (peer, sa) in ha {
                        let Some(sb) = hb.get(peer) else { continue };
                        let (Some(fa), Some(fb), Some(la), Some(lb)) =
                            (sa.first(), sb.first(), sa.last(), sb.last())
                        else {
                            continue;
                        };
                        let (lo, hi) = (*fa.max(fb), *la.min(lb));
                        if lo > hi {
                            continue;
                        }
                        let cut = |v: &Vec<u64>| -> Vec<u64> {
                            v.iter()
                                .copied()
                                .filter(|s| (lo..=hi).contains(s))
                                .collect()
                        };
                        let (ca, cb) = (cut(sa), cut(sb));
                        if ca != cb {
                            let only_a: Vec<u64> =
                                ca.iter().filter(|s| !cb.contains(s)).copied().collect();
                            let only_b: Vec<u64> =
                                cb.iter().filter(|s| !ca.contains(s)).copied().collect();
                            bad.push(format!(
                                "on {topic}, c{} (jr {}) and c{} (jr {}) heard different updates of peer {peer} between seq {lo} and {hi}: only c{} got {only_a:?}, only c{} got {only_b:?}",
                                a.0, a.1, b.0, b.1, a.0, b.0
                            ));
                        }
                    }
                }
            }
        }
        let spotted = self.missed_in_budget(&mut bad);
        if spotted > 0 {
            *self
                .0
                .lock()
                .unwrap()
                .reached
                .entry("oracle: update within the budget heard between two others")
                .or_default() += spotted;
        }
        for v in bad {
            self.fail(v);
        }
    }

    /// The update budget drops only what a peer sends past its burst: an update sent within
    /// it reaches every peer of the room. A channel that heard a peer's updates `a` and `b`
    /// was in the room, connected, all the while between (FIFO): it must have heard every
    /// update of that peer sent within the budget in between. Returns how many such updates
    /// were checked.
    fn missed_in_budget(&self, bad: &mut Vec<String>) -> u64 {
        let i = self.0.lock().unwrap();
        let mut checked = 0;
        for ((c, jr), (topic, by_peer)) in &i.heard {
            for (peer, seqs) in by_peer {
                let (Some(k), Some(&first), Some(&last)) =
                    (i.peer_client.get(peer), seqs.first(), seqs.last())
                else {
                    continue;
                };
                if last <= first + 1 {
                    continue;
                }
                for &(_, s) in i.in_budget.range((*k, first + 1)..(*k, last)) {
                    checked += 1;
                    if !seqs.contains(&s) {
                        bad.push(format!(
                            "on {topic}, c{c} (jr {jr}) heard peer {peer} (c{k})'s updates {first} and {last} but not {s}, which c{k} sent within its update burst"
                        ));
                    }
                }
            }
        }
        checked
    }

    pub fn checks(&self) -> u64 {
        self.0.lock().unwrap().checks
    }
}

/// The client model's verdicts count and read like the simulated client's own.
impl Judge for Oracles {
    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        Oracles::check(self, ok, what);
    }

    fn reached(&self, what: &'static str) {
        Oracles::reached(self, what);
    }
}

#[derive(Default)]
struct ProbeInner {
    events: Counts,
    promises: Promises,
    crashes: Vec<Crash>,
    /// Cluster worlds: the claims of the product's rooms, checked against etcd at every act.
    ownership: Option<(Ownership, Arc<Etcd>)>,
}

/// One world's probe events: counts, the promise model and the crashes. Lives on the world's
/// thread (the sink is called synchronously there), so no lock is taken per event.
#[derive(Clone, Default)]
pub struct ProbeLog(Rc<RefCell<ProbeInner>>);

impl ProbeLog {
    /// Routes this thread's probe events here until the guard drops. `started` is the world's
    /// time origin (crash times are relative to it); broken promises and panics are also
    /// written to the trace, with the time they happened.
    pub fn install(&self, trace: &Trace, started: time::Instant) -> SinkGuard {
        let (me, trace) = (self.clone(), trace.clone());
        probe::install(move |e| me.observe(e, &trace, started))
    }

    /// From now on, checks every act of a claimed room against `etcd` (cluster worlds).
    pub fn watch_ownership(&self, etcd: Arc<Etcd>, life: NodeLife, hush: Option<Hush>) {
        let own = Ownership::new(videoroom::cluster::claims::Keys::default(), life, hush);
        self.0.borrow_mut().ownership = Some((own, etcd));
    }

    fn observe(&self, e: &Event<'_>, trace: &Trace, started: time::Instant) {
        let mut i = self.0.borrow_mut();
        i.events.count(e);
        if let Some((own, etcd)) = i.ownership.as_mut() {
            let n = own.violations().len();
            own.observe(e, etcd);
            for v in &own.violations()[n..] {
                trace.log(format!("broken promise: {v}"));
            }
        }
        let (v0, p0) = (i.promises.violations().len(), i.promises.panics().len());
        i.promises.observe(e);
        if i.promises.violations().len() == v0 && i.promises.panics().len() == p0 {
            return;
        }
        let at = time::now().saturating_duration_since(started);
        for v in &i.promises.violations()[v0..] {
            trace.log(format!("broken promise: {v}"));
        }
        let new_p: Vec<Panicked> = i.promises.panics()[p0..].to_vec();
        for panic in new_p {
            trace.log(format!("crash boundary: {panic}"));
            i.crashes.push(Crash { at, panic });
        }
    }

    /// Probe events counted, by event name.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        let i = self.0.borrow();
        let mut counts = i.events.get();
        if let Some((own, _)) = &i.ownership {
            counts.extend(own.reached());
        }
        counts
    }

    /// Broken runtime/registry promises and never-events reached, in the order they happened.
    pub fn violations(&self) -> Vec<Violation> {
        self.0.borrow().promises.violations().to_vec()
    }

    /// Broken ownership promises (cluster worlds), in the order they happened.
    pub fn ownership_violations(&self) -> Vec<String> {
        let i = self.0.borrow();
        i.ownership
            .as_ref()
            .map_or_else(Vec::new, |(o, _)| o.violations().to_vec())
    }

    /// Acts of claimed rooms checked against etcd (cluster worlds).
    pub fn ownership_checks(&self) -> u64 {
        let i = self.0.borrow();
        i.ownership.as_ref().map_or(0, |(o, _)| o.acts())
    }

    /// Panics caught at crash boundaries, in the order they happened.
    pub fn crashes(&self) -> Vec<Crash> {
        self.0.borrow().crashes.clone()
    }
}
