//! The one task that does the lease core's I/O and writes the node's keys. At most one lease
//! call, one key write and one revoke of a fenced incarnation's lease are in flight; all are
//! raced against the core's next deadline, so a call that hangs (etcd stopped) never delays the
//! fence.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{NodeConfig, NodeRecord, NodeStatus, Phase, Revoked, Shared, Stale};
use crate::cluster::claims::lease_hex;
use crate::cluster::etcd::client::{EtcdClient, EtcdError};
use crate::cluster::etcd::gateway::{PutRequest, RequestOp, TxnRequest};
use crate::cluster::lease::{Call, Change, FenceCause};
use crate::rt::time::{self, Duration, Instant};
use crate::rt::{probe, watch};

/// Placement tells a live node by a record written within the last few seconds
/// (docs/cluster.md), so the record is rewritten at least this often even when nothing changed.
const REFRESH: Duration = Duration::from_secs(2);

type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

enum Answer {
    Granted(Result<(i64, i64), EtcdError>),
    KeptAlive(Result<Option<i64>, EtcdError>),
}

/// A write of the node's keys for `lease`, carrying the load it wrote; the revision it got.
type Written = (i64, usize, Result<i64, EtcdError>);

/// A revoke of a fenced incarnation's lease.
type Revoke = (i64, Result<i64, EtcdError>);

pub(super) struct Driver {
    client: Arc<EtcdClient>,
    shared: Arc<Shared>,
    cfg: NodeConfig,
    status: watch::Sender<NodeStatus>,
    stop: oneshot::Receiver<()>,
    phase: Phase,
    call: Option<Pending<Answer>>,
    write: Option<Pending<Written>>,
    /// The load last written for the current incarnation, and when.
    written: Option<(usize, Instant)>,
    /// A failed write waits this long before the next.
    write_after: Instant,
    stale: Stale,
    revoke: Option<Pending<Revoke>>,
    /// The TTL etcd granted the last lease (it may exceed the one asked for).
    granted: Option<(i64, Duration)>,
}

impl Driver {
    pub(super) fn new(
        client: Arc<EtcdClient>,
        shared: Arc<Shared>,
        cfg: NodeConfig,
        status: watch::Sender<NodeStatus>,
        stop: oneshot::Receiver<()>,
    ) -> Driver {
        Driver {
            client,
            shared,
            cfg,
            status,
            stop,
            phase: Phase::default(),
            call: None,
            write: None,
            written: None,
            write_after: time::now(),
            stale: Stale::default(),
            revoke: None,
            granted: None,
        }
    }

    pub(super) async fn run(mut self) {
        let mut timer = time::Timer::new();
        let stopped = loop {
            let now = time::now();
            self.step(now);
            let wake = self.next_wake(now);
            tokio::select! {
                biased;
                stop = &mut self.stop => break stop.is_ok(),
                answer = in_flight(&mut self.call) => {
                    self.call = None;
                    self.on_answer(answer);
                }
                written = in_flight(&mut self.write) => {
                    self.write = None;
                    self.on_written(written);
                }
                revoked = in_flight(&mut self.revoke) => {
                    self.revoke = None;
                    self.on_revoked(revoked);
                }
                _ = self.shared.poke.notified() => {}
                _ = timer.until(wake) => {}
            }
        };
        // Whoever still watches must stop acting before the lease can go.
        self.status.send_replace(NodeStatus::Fenced {
            incarnation: self.phase.incarnation,
        });
        // Only an explicit stop revokes: a dropped handle may mean rooms still running, whose
        // names must stay taken until the lease lapses on its own.
        if let (true, Some((lease, _))) = (stopped, self.phase.lease) {
            if let Err(e) = self.client.revoke(lease).await {
                tracing::debug!(node = %self.cfg.node_id, "lease revoke at stop failed: {e}");
            }
        }
    }

    /// Feeds the clock to the core and acts on what it says: publish a fence before anything
    /// else, then start the call and the write that are due.
    fn step(&mut self, now: Instant) {
        let (changes, call) = {
            let mut core = self.shared.core.lock().expect("lease core lock");
            core.handle_timeout(now);
            let call = if self.call.is_none() {
                core.poll_call(now)
            } else {
                None
            };
            let changes: Vec<Change> = std::iter::from_fn(|| core.poll_change()).collect();
            (changes, call)
        };
        for change in changes {
            // A write for the previous lease is no longer wanted, whatever it would answer.
            self.write = None;
            self.written = None;
            self.write_after = now;
            match change {
                Change::Fenced { id, cause } => {
                    tracing::warn!(
                        node = %self.cfg.node_id, lease = id, ?cause,
                        "fenced: this node stops acting until etcd grants a new lease"
                    );
                    if cause == FenceCause::Deadline {
                        self.stale.fenced(id, self.ttl_of(id), now);
                    }
                }
                Change::Acting { id, .. } => {
                    tracing::debug!(node = %self.cfg.node_id, lease = id, "lease granted");
                    self.stale.granted(now);
                }
            }
            if let Some(status) = self.phase.on_change(change) {
                self.status.send_replace(status);
            }
        }
        if let Some(call) = call {
            self.call = Some(self.perform(call));
        }
        self.start_write(now);
        self.start_revoke(now);
    }

    fn ttl_of(&self, lease: i64) -> Duration {
        match self.granted {
            Some((id, ttl)) if id == lease => ttl.max(self.cfg.lease.ttl),
            _ => self.cfg.lease.ttl,
        }
    }

    /// Revokes a fenced incarnation's lease once a newer incarnation acts: its rooms stopped at
    /// the fence, and only its keys still hold their names.
    fn start_revoke(&mut self, now: Instant) {
        if self.revoke.is_some() {
            return;
        }
        let acting = match self.phase.lease {
            Some((lease, true)) => self
                .shared
                .core
                .lock()
                .expect("lease core lock")
                .acting(now)
                .map(|(id, _)| id)
                .filter(|id| *id == lease),
            _ => None,
        };
        let Some(stale) = self.stale.next(now, acting) else {
            return;
        };
        let client = self.client.clone();
        self.revoke = Some(Box::pin(async move { (stale, client.revoke(stale).await) }));
    }

    fn start_write(&mut self, now: Instant) {
        let Some((lease, registered)) = self.phase.lease else {
            return;
        };
        if self.write.is_some() || now < self.write_after {
            return;
        }
        let rooms = self.shared.load.load(Ordering::Relaxed);
        let asked = self.shared.republish.swap(false, Ordering::Relaxed);
        if registered && !asked && self.write_due(rooms).is_some_and(|at| now < at) {
            return;
        }
        let record = NodeRecord {
            node_id: self.cfg.node_id.clone(),
            dist_addr: self.cfg.dist_addr.clone(),
            // Not known before the first write's answer (its revision).
            incarnation: if registered {
                self.phase.incarnation
            } else {
                0
            },
            rooms,
        };
        // Both keys in one txn: the incarnation is registered entirely or not at all, and a
        // rewrite of `alive/` heals it if a late write of an older incarnation replaced it.
        let put =
            |key: Vec<u8>, value: Vec<u8>| RequestOp::RequestPut(PutRequest { key, value, lease });
        let txn = TxnRequest {
            compare: vec![],
            success: vec![
                put(
                    self.cfg.keys.alive(&self.cfg.node_id),
                    lease_hex(lease).into_bytes(),
                ),
                put(self.cfg.keys.node(&self.cfg.node_id), record.to_value()),
            ],
            failure: vec![],
        };
        let client = self.client.clone();
        self.write = Some(Box::pin(async move {
            (
                lease,
                rooms,
                client.txn(&txn).await.map(|r| r.header.revision),
            )
        }));
    }

    /// When the registered incarnation's record is next due: a load change waits for the next
    /// keepalive period, so a busy node writes at that rate at most.
    fn write_due(&self, rooms: usize) -> Option<Instant> {
        let (last, at) = self.written?;
        Some(if last != rooms {
            at + self.cfg.lease.keepalive_every
        } else {
            at + REFRESH
        })
    }

    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let core = self
            .shared
            .core
            .lock()
            .expect("lease core lock")
            .poll_timeout();
        let write = match self.phase.lease {
            Some((_, registered)) if self.write.is_none() => {
                let due = if registered {
                    self.write_due(self.shared.load.load(Ordering::Relaxed))
                } else {
                    None
                };
                Some(due.unwrap_or(now).max(self.write_after))
            }
            _ => None,
        };
        let revoke = self.revoke.is_none().then(|| self.stale.due()).flatten();
        [core, write, revoke].into_iter().flatten().min()
    }

    fn perform(&self, call: Call) -> Pending<Answer> {
        let client = self.client.clone();
        Box::pin(async move {
            match call {
                Call::Grant { ttl_secs } => Answer::Granted(client.grant(ttl_secs).await),
                Call::KeepAlive { id } => Answer::KeptAlive(client.keepalive(id).await),
            }
        })
    }

    fn on_answer(&mut self, answer: Answer) {
        let now = time::now();
        let mut core = self.shared.core.lock().expect("lease core lock");
        match answer {
            Answer::Granted(Ok((id, ttl))) => {
                self.granted = Some((id, Duration::from_secs(ttl.max(0) as u64)));
                core.on_granted(now, id, ttl)
            }
            Answer::KeptAlive(Ok(ttl)) => core.on_keepalive(now, ttl),
            Answer::KeptAlive(Err(e)) if e.is_lease_not_found() => core.on_keepalive(now, None),
            Answer::Granted(Err(e)) | Answer::KeptAlive(Err(e)) => {
                tracing::debug!(node = %self.cfg.node_id, "lease call failed: {e}");
                core.on_failed(now);
            }
        }
    }

    fn on_written(&mut self, (lease, rooms, result): Written) {
        let now = time::now();
        match result {
            Ok(revision) => {
                self.written = Some((rooms, now));
                let acting = self
                    .shared
                    .core
                    .lock()
                    .expect("lease core lock")
                    .acting(now);
                if let Some(status) = self.phase.on_registered(lease, revision, acting) {
                    tracing::info!(
                        node = %self.cfg.node_id, lease, incarnation = revision,
                        "acting: registered in etcd"
                    );
                    self.status.send_replace(status);
                    // The record just written could not carry the number: write it again now.
                    self.written = None;
                }
            }
            Err(e) => {
                // A lease etcd no longer has is the next keepalive's to report.
                tracing::debug!(node = %self.cfg.node_id, lease, "writing the node's keys failed: {e}");
                self.write_after = now + self.cfg.lease.retry_after;
            }
        }
    }

    fn on_revoked(&mut self, (lease, result): Revoke) {
        let now = time::now();
        let outcome = match result {
            Ok(_) => {
                tracing::info!(node = %self.cfg.node_id, lease, "revoked a fenced incarnation's lease");
                probe::emit(probe::Event::FencedLeaseRevoked);
                // If a write of the old incarnation landed late, it put the node's keys back on
                // that lease and the revoke just deleted them: write them again now rather than
                // at the next refresh.
                self.shared.republish.store(true, Ordering::Relaxed);
                Revoked::Done
            }
            Err(e) if e.is_lease_not_found() => Revoked::Gone,
            Err(e) => {
                tracing::debug!(node = %self.cfg.node_id, lease, "revoking a fenced lease failed: {e}");
                Revoked::Failed
            }
        };
        self.stale
            .revoked(lease, outcome, now, self.cfg.lease.keepalive_every);
    }
}

/// The output of the future in `slot`; never ready while the slot is empty.
async fn in_flight<T>(slot: &mut Option<Pending<T>>) -> T {
    match slot {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}
