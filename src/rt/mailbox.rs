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
    Msg(M),
    Down(Down),
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
}

impl<M> Clone for Addr<M> {
    fn clone(&self) -> Self {
        Addr {
            pid: self.pid,
            tx: self.tx.clone(),
            permits: self.permits.clone(),
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
        self.tx.send(Envelope::Msg(msg)).map_err(|e| match e.0 {
            Envelope::Msg(m) => SendError::Dead(m),
            Envelope::Down(_) => unreachable!("sent a message"),
        })
    }

    /// Delivers `msg`, waiting while the mailbox is full; fails only if the process is gone.
    pub async fn send(&self, msg: M) -> Result<(), SendError<M>> {
        match self.permits.acquire().await {
            Ok(p) => p.forget(),
            Err(_) => return Err(SendError::Dead(msg)),
        }
        self.tx.send(Envelope::Msg(msg)).map_err(|e| match e.0 {
            Envelope::Msg(m) => SendError::Dead(m),
            Envelope::Down(_) => unreachable!("sent a message"),
        })
    }

    /// True once the process's mailbox is gone (it exited).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub(crate) fn down_sink(&self) -> DownSink
    where
        M: Send + 'static,
    {
        let tx = self.tx.clone();
        Box::new(move |d| {
            // A watcher that has exited has no mailbox; its DOWN has nowhere to go (M7).
            let _ = tx.send(Envelope::Down(d));
        })
    }
}

pub(crate) type DownSink = Box<dyn Fn(Down) + Send + Sync>;

/// The receiving half, owned by the process's [`Ctx`](super::Ctx).
pub(crate) struct Inbox<M> {
    rx: mpsc::UnboundedReceiver<Envelope<M>>,
    permits: Arc<Semaphore>,
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

    fn unwrap(&self, env: Envelope<M>) -> Received<M> {
        match env {
            Envelope::Msg(m) => {
                self.permits.add_permits(1);
                Received::Msg(m)
            }
            Envelope::Down(d) => Received::Down(d),
        }
    }
}

impl<M> Drop for Inbox<M> {
    fn drop(&mut self) {
        // Wakes senders blocked on a full mailbox: they get `Dead` instead of waiting forever.
        self.permits.close();
        self.rx.close();
    }
}

pub(crate) fn mailbox<M>(pid: Pid, capacity: usize) -> (Addr<M>, Inbox<M>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(capacity.max(1)));
    (
        Addr {
            pid,
            tx,
            permits: permits.clone(),
        },
        Inbox { rx, permits },
    )
}
