//! Bounded mailboxes with one FIFO for messages and DOWN signals.
//!
//! Messages and DOWNs share one queue so that what a process sent before dying arrives before
//! its DOWN (Erlang's per-pair ordering). Only messages count against the bound: a DOWN is
//! produced at most once per monitor and must never be lost or block the dying process's
//! cleanup. The bound is a semaphore whose permits the receiver returns as it takes messages.

use std::fmt;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use super::process::{Down, Pid};

pub(crate) enum Envelope<M> {
    Msg(M, Stamp),
    Down(Down, Stamp),
}

/// The order an envelope was enqueued in, checked on the way out (one FIFO for messages and
/// DOWNs is what keeps a dead process's last messages ahead of its DOWN). Observed builds only;
/// in production it is empty and costs nothing.
#[cfg(any(madsim, test))]
#[derive(Clone, Copy)]
pub(crate) struct Stamp(u64);
#[cfg(not(any(madsim, test)))]
#[derive(Clone, Copy)]
pub(crate) struct Stamp;

/// Hands out stamps in enqueue order and counts the messages (not DOWNs) queued; shared by
/// every sender of one mailbox and its inbox. Observed builds only: the inbox checks that free
/// slots and queued messages always add up to the capacity (see [`Inbox::check_bound`]).
#[cfg(any(madsim, test))]
#[derive(Clone, Default)]
struct Stamper(Arc<Ledger>);
#[cfg(any(madsim, test))]
#[derive(Default)]
struct Ledger {
    next: std::sync::atomic::AtomicU64,
    queued: std::sync::atomic::AtomicUsize,
    /// Senders waiting for a slot: the semaphore hands a returned slot straight to one of
    /// them, which queues its message only when it next runs.
    waiting: std::sync::atomic::AtomicUsize,
}
#[cfg(not(any(madsim, test)))]
#[derive(Clone)]
struct Stamper;

impl Stamper {
    fn new() -> Self {
        #[cfg(any(madsim, test))]
        {
            Stamper(Arc::default())
        }
        #[cfg(not(any(madsim, test)))]
        {
            Stamper
        }
    }

    #[inline(always)]
    fn next(&self) -> Stamp {
        #[cfg(any(madsim, test))]
        {
            Stamp(
                self.0
                    .next
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            )
        }
        #[cfg(not(any(madsim, test)))]
        {
            Stamp
        }
    }

    /// One more (`true`) or one fewer message in the queue.
    #[inline(always)]
    fn count(&self, more: bool) {
        #[cfg(any(madsim, test))]
        {
            use std::sync::atomic::Ordering::Relaxed;
            if more {
                self.0.queued.fetch_add(1, Relaxed);
            } else {
                self.0.queued.fetch_sub(1, Relaxed);
            }
        }
        #[cfg(not(any(madsim, test)))]
        let _ = more;
    }

    #[cfg(any(madsim, test))]
    fn queued(&self) -> usize {
        self.0.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(any(madsim, test))]
    fn waiting(&self) -> usize {
        self.0.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one sender waiting for a slot until dropped (also when its `send` is dropped).
    fn wait(&self) -> WaitGuard<'_> {
        #[cfg(any(madsim, test))]
        self.0
            .waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WaitGuard(self)
    }
}

struct WaitGuard<'a>(#[allow(dead_code)] &'a Stamper);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        #[cfg(any(madsim, test))]
        self.0
             .0
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a process takes out of its mailbox.
#[derive(Debug)]
pub enum Received<M> {
    Msg(M),
    Down(Down),
}

/// Why a message was not delivered; the message is handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError<M> {
    /// The mailbox holds its maximum of undelivered messages (the receiver is slow).
    Full(M),
    /// The process has exited.
    Dead(M),
}

impl<M> SendError<M> {
    pub fn into_inner(self) -> M {
        match self {
            SendError::Full(m) | SendError::Dead(m) => m,
        }
    }
}

impl<M> fmt::Display for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full(_) => f.write_str("mailbox full"),
            SendError::Dead(_) => f.write_str("process is dead"),
        }
    }
}

/// The address of a process that accepts messages of type `M`. Cheap to clone.
pub struct Addr<M> {
    pid: Pid,
    tx: mpsc::UnboundedSender<Envelope<M>>,
    permits: Arc<Semaphore>,
    stamps: Stamper,
    /// Senders of the whole System waiting for room in some mailbox (see [`Blocked`]).
    blocked: Blocked,
}

/// How many `send`s of one System are waiting for room in a full mailbox. A sender still
/// waiting after every process has exited waits forever (a mailbox that went away without
/// waking it): an oracle for leaked tasks.
#[derive(Clone, Default)]
pub(crate) struct Blocked(Arc<std::sync::atomic::AtomicUsize>);

impl Blocked {
    pub(crate) fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn enter(&self) -> BlockedGuard<'_> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        BlockedGuard(self)
    }
}

/// Counts one waiting sender until dropped (also when its `send` future is dropped).
struct BlockedGuard<'a>(&'a Blocked);

impl Drop for BlockedGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<M> Clone for Addr<M> {
    fn clone(&self) -> Self {
        Addr {
            pid: self.pid,
            tx: self.tx.clone(),
            permits: self.permits.clone(),
            stamps: self.stamps.clone(),
            blocked: self.blocked.clone(),
        }
    }
}

impl<M> fmt::Debug for Addr<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Addr({})", self.pid)
    }
}

impl<M> PartialEq for Addr<M> {
    fn eq(&self, other: &Self) -> bool {
        self.pid == other.pid
    }
}
impl<M> Eq for Addr<M> {}

impl<M> Addr<M> {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Delivers `msg` unless the mailbox is full or the process is gone; never waits.
    pub fn try_send(&self, msg: M) -> Result<(), SendError<M>> {
        match self.permits.try_acquire() {
            Ok(p) => p.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(SendError::Full(msg)),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(SendError::Dead(msg)),
        }
        self.enqueue(msg)
    }

    fn enqueue(&self, msg: M) -> Result<(), SendError<M>> {
        let stamp = self.stamps.next();
        match self.tx.send(Envelope::Msg(msg, stamp)) {
            Ok(()) => {
                self.stamps.count(true);
                Ok(())
            }
            Err(e) => match e.0 {
                Envelope::Msg(m, _) => Err(SendError::Dead(m)),
                Envelope::Down(..) => unreachable!("sent a message"),
            },
        }
    }

    /// Delivers `msg`, waiting while the mailbox is full; fails only if the process is gone.
    pub async fn send(&self, msg: M) -> Result<(), SendError<M>> {
        match self.permits.try_acquire() {
            Ok(p) => p.forget(),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(SendError::Dead(msg)),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let _waiting = (self.blocked.enter(), self.stamps.wait());
                super::probe::emit(super::probe::Event::SendWaited);
                match self.permits.acquire().await {
                    Ok(p) => p.forget(),
                    Err(_) => return Err(SendError::Dead(msg)),
                }
            }
        }
        self.enqueue(msg)
    }

    /// True once the process's mailbox is gone (it exited).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub(crate) fn down_sink(&self) -> DownSink
    where
        M: Send + 'static,
    {
        let (tx, stamps) = (self.tx.clone(), self.stamps.clone());
        Box::new(move |d| {
            // A watcher that has exited has no mailbox; its DOWN has nowhere to go (M7).
            let _ = tx.send(Envelope::Down(d, stamps.next()));
        })
    }
}

pub(crate) type DownSink = Box<dyn Fn(Down) + Send + Sync>;

/// The receiving half, owned by the process's [`Ctx`](super::Ctx).
pub(crate) struct Inbox<M> {
    rx: mpsc::UnboundedReceiver<Envelope<M>>,
    permits: Arc<Semaphore>,
    pid: Pid,
    /// The stamp the next envelope must carry.
    #[cfg(any(madsim, test))]
    expect: u64,
    /// The senders' ledger (queued messages) and the bound it was made with.
    #[cfg(any(madsim, test))]
    ledger: Stamper,
    #[cfg(any(madsim, test))]
    capacity: usize,
}

impl<M> Inbox<M> {
    pub(crate) async fn recv(&mut self) -> Received<M> {
        // The process holds its own address, so the queue never reports closed.
        let env = self
            .rx
            .recv()
            .await
            .expect("a process holds its own sender");
        self.unwrap(env)
    }

    pub(crate) fn try_recv(&mut self) -> Option<Received<M>> {
        self.rx.try_recv().ok().map(|env| self.unwrap(env))
    }

    fn unwrap(&mut self, env: Envelope<M>) -> Received<M> {
        let (r, stamp) = match env {
            Envelope::Msg(m, s) => {
                self.permits.add_permits(1);
                (Received::Msg(m), s)
            }
            Envelope::Down(d, s) => (Received::Down(d), s),
        };
        self.check(stamp);
        if matches!(r, Received::Msg(_)) {
            self.count_taken();
        }
        self.check_bound();
        r
    }

    #[inline(always)]
    fn count_taken(&self) {
        #[cfg(any(madsim, test))]
        self.ledger.count(false);
    }

    /// Only messages count against the bound, each holding one slot from `send` until it is
    /// taken: free slots plus queued messages are the capacity, less the slots handed to
    /// waiting senders that have not queued yet; otherwise the bound has drifted for good (a
    /// DOWN handing back a slot it never took, a slot lost). Checked where the receiver hands
    /// slots back; senders on other threads could be mid-send (slot taken, not yet queued), so
    /// it only means something where one thread runs the world, which is where the probe
    /// listens.
    #[inline(always)]
    fn check_bound(&self) {
        #[cfg(any(madsim, test))]
        {
            let (free, queued) = (self.permits.available_permits(), self.ledger.queued());
            let waiting = self.ledger.waiting();
            if free + queued > self.capacity || free + queued + waiting < self.capacity {
                super::probe::emit(super::probe::Event::MailboxBoundBroken {
                    pid: self.pid,
                    capacity: self.capacity,
                    free,
                    queued,
                });
            }
        }
    }

    #[inline(always)]
    fn check(&mut self, stamp: Stamp) {
        #[cfg(any(madsim, test))]
        {
            if stamp.0 != self.expect {
                super::probe::emit(super::probe::Event::MailboxOutOfOrder {
                    pid: self.pid,
                    expected: self.expect,
                    got: stamp.0,
                });
            }
            self.expect = stamp.0 + 1;
        }
        #[cfg(not(any(madsim, test)))]
        let _ = (stamp, &self.pid);
    }
}

impl<M> Drop for Inbox<M> {
    fn drop(&mut self) {
        // Wakes senders blocked on a full mailbox: they get `Dead` instead of waiting forever.
        self.permits.close();
        self.rx.close();
    }
}

pub(crate) fn mailbox<M>(pid: Pid, capacity: usize, blocked: Blocked) -> (Addr<M>, Inbox<M>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let capacity = capacity.max(1);
    let permits = Arc::new(Semaphore::new(capacity));
    let stamps = Stamper::new();
    (
        Addr {
            pid,
            tx,
            permits: permits.clone(),
            stamps: stamps.clone(),
            blocked,
        },
        Inbox {
            rx,
            permits,
            pid,
            #[cfg(any(madsim, test))]
            expect: 0,
            #[cfg(any(madsim, test))]
            ledger: stamps,
            #[cfg(any(madsim, test))]
            capacity,
        },
    )
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::rt::probe;

    /// The probe events this thread emits from now on, as text, until the guard drops.
    fn listen() -> (Rc<RefCell<Vec<String>>>, probe::SinkGuard) {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let s = seen.clone();
        let g = probe::install(move |e| s.borrow_mut().push(e.to_string()));
        (seen, g)
    }

    #[test]
    fn envelopes_leave_in_the_order_they_were_enqueued_or_it_is_reported() {
        let (seen, _g) = listen();
        let (addr, mut inbox) = mailbox::<u32>(Pid(7), 4, Blocked::default());
        addr.try_send(1).unwrap();
        (addr.down_sink())(Down {
            mref: crate::rt::MonitorRef(1),
            pid: Pid(8),
            reason: crate::rt::ExitReason::Normal,
        });
        addr.try_send(2).unwrap();
        assert!(matches!(inbox.try_recv(), Some(Received::Msg(1))));
        assert!(matches!(inbox.try_recv(), Some(Received::Down(_))));
        assert!(matches!(inbox.try_recv(), Some(Received::Msg(2))));
        assert!(seen.borrow().is_empty(), "{:?}", seen.borrow());
        // A test double of a queue that let an envelope overtake another: stamp 5 comes first.
        inbox.check(Stamp(5));
        inbox.check(Stamp(4));
        assert_eq!(
            *seen.borrow(),
            vec![
                "MailboxOutOfOrder { pid: Pid(7), expected: 3, got: 5 }".to_string(),
                "MailboxOutOfOrder { pid: Pid(7), expected: 6, got: 4 }".to_string(),
            ]
        );
    }

    #[test]
    fn free_slots_and_queued_messages_add_up_to_the_capacity_or_it_is_reported() {
        let (seen, _g) = listen();
        let (addr, mut inbox) = mailbox::<u32>(Pid(3), 2, Blocked::default());
        addr.try_send(1).unwrap();
        addr.try_send(2).unwrap();
        assert!(matches!(addr.try_send(3), Err(SendError::Full(3))));
        (addr.down_sink())(Down {
            mref: crate::rt::MonitorRef(1),
            pid: Pid(4),
            reason: crate::rt::ExitReason::Normal,
        });
        for _ in 0..3 {
            assert!(inbox.try_recv().is_some());
        }
        assert!(seen.borrow().is_empty(), "{:?}", seen.borrow());
        // A test double of a slot handed back twice: the bound has grown by one.
        inbox.permits.add_permits(1);
        addr.try_send(5).unwrap();
        assert!(matches!(inbox.try_recv(), Some(Received::Msg(5))));
        assert_eq!(
            *seen.borrow(),
            vec!["MailboxBoundBroken { pid: Pid(3), capacity: 2, free: 3, queued: 0 }".to_string()]
        );
    }

    /// A slot the receiver hands back goes straight to a waiting sender, which queues only
    /// when it next runs: not a drift.
    #[tokio::test]
    async fn a_slot_handed_to_a_waiting_sender_is_not_a_drift() {
        let (seen, _g) = listen();
        let (addr, mut inbox) = mailbox::<u32>(Pid(5), 1, Blocked::default());
        addr.try_send(1).unwrap();
        let sender = addr.clone();
        let mut waiting = Box::pin(sender.send(2));
        assert!(futures::poll!(&mut waiting).is_pending());
        assert!(matches!(inbox.try_recv(), Some(Received::Msg(1))));
        assert!(futures::poll!(&mut waiting).is_ready());
        assert!(matches!(inbox.try_recv(), Some(Received::Msg(2))));
        assert_eq!(*seen.borrow(), ["SendWaited"]);
    }
}
