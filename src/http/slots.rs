//! Connection slots: the cap's pool, the `/healthz` headroom with its eviction of the oldest
//! holder, and the slot a connection carries until its socket closes.
//!
//! Owns the counting only; never touches a socket (the holder of an evicted slot closes its own
//! connection when told).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// How long the accept loop waits for an evicted headroom connection to give its slot back
/// (its task only has to wake and drop the socket).
const EVICTION_WAIT: Duration = Duration::from_millis(100);

/// A semaphore and its size, to wait for every permit to come back.
#[derive(Clone)]
pub(super) struct Pool {
    pub(super) sem: Arc<Semaphore>,
    size: u32,
}

impl Pool {
    pub(super) fn new(size: usize) -> Pool {
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        Pool {
            sem: Arc::new(Semaphore::new(size as usize)),
            size,
        }
    }

    pub(super) fn in_use(&self) -> usize {
        self.size as usize - self.sem.available_permits()
    }

    pub(super) async fn all_returned(&self) {
        let _ = self.sem.acquire_many(self.size).await;
    }
}

/// Headroom holders, oldest first: an id and the way to tell the holder to make way.
type Holders = Arc<Mutex<VecDeque<(u64, oneshot::Sender<()>)>>>;

/// The `/healthz` headroom: its slots, and who holds them (oldest first), so a newcomer can
/// make the oldest holder give its slot up.
#[derive(Clone)]
pub(super) struct Headroom {
    pub(super) pool: Pool,
    holders: Holders,
    next_id: Arc<AtomicU64>,
}

/// A headroom slot's hold: resolves [`Eviction::evicted`] when a newer connection took the
/// slot; leaves the holders' list when dropped.
pub(super) struct Eviction {
    id: u64,
    notice: oneshot::Receiver<()>,
    holders: Holders,
}

impl Headroom {
    pub(super) fn new(size: usize) -> Headroom {
        Headroom {
            pool: Pool::new(size),
            holders: Arc::default(),
            next_id: Arc::default(),
        }
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, oneshot::Sender<()>)>> {
        self.holders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A headroom slot: a free one, or the oldest holder's once it has let go.
    pub(super) async fn acquire(&self) -> Option<(OwnedSemaphorePermit, Eviction)> {
        let permit = match self.pool.sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // A holder whose task already ended cannot be told; the next one can.
                while let Some((_, tx)) = self.holders().pop_front() {
                    if tx.send(()).is_ok() {
                        break;
                    }
                }
                let freed = self.pool.sem.clone().acquire_owned();
                net_tokio::time::timeout(EVICTION_WAIT, freed)
                    .await
                    .ok()?
                    .ok()?
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, notice) = oneshot::channel();
        self.holders().push_back((id, tx));
        Some((
            permit,
            Eviction {
                id,
                notice,
                holders: Arc::clone(&self.holders),
            },
        ))
    }
}

impl Eviction {
    async fn evicted(&mut self) {
        let _ = (&mut self.notice).await;
    }
}

impl Drop for Eviction {
    fn drop(&mut self) {
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        holders.retain(|(id, _)| *id != self.id);
    }
}

/// Resolves when `eviction` (if any) is served; never for an ordinary connection.
pub(super) async fn evicted(eviction: &mut Option<Eviction>) {
    match eviction {
        Some(e) => e.evicted().await,
        None => std::future::pending().await,
    }
}

/// One connection's place under the cap, and in the open-connections gauge.
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    /// The connection's place in its source's count.
    _source: crate::per_source::SourceSlot,
    metrics: Arc<Metrics>,
}

impl Slot {
    pub(super) fn new(
        permit: OwnedSemaphorePermit,
        source: crate::per_source::SourceSlot,
        metrics: Arc<Metrics>,
    ) -> Slot {
        metrics.http_connections.inc();
        Slot {
            _permit: permit,
            _source: source,
            metrics,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.http_connections.dec();
    }
}
