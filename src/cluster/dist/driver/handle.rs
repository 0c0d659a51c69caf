//! Local code's side of a link: commands into the link's task, and what it says about the link.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use super::super::frame::{DownReason, RemoteRef, MAX_PAYLOAD_BYTES};
use super::super::link::{DownCause, LinkDown, NodeId, SendError};

pub(super) enum Command {
    Send {
        to: RemoteRef,
        msg: Vec<u8>,
    },
    Monitor {
        mref: u64,
        target: RemoteRef,
    },
    Demonitor {
        mref: u64,
    },
    LocalExited {
        pid: u64,
        reason: DownReason,
    },
    TargetGone {
        target: RemoteRef,
        reason: DownReason,
    },
}

#[derive(Debug)]
pub(super) struct HandleInner {
    pub(super) id: u64,
    pub(super) peer: NodeId,
    pub(super) cmds: mpsc::Sender<Command>,
    pub(super) down: AtomicBool,
    pub(super) cause: Mutex<Option<DownCause>>,
    /// Set by `close`, so a wake-up lost between two turns of the loop still closes it.
    pub(super) closing: AtomicBool,
    pub(super) close: Notify,
}

/// Local code's side of one link; cheap to clone. Every method returns at once once the link
/// is down.
#[derive(Clone, Debug)]
pub struct LinkHandle(pub(super) Arc<HandleInner>);

impl LinkHandle {
    /// The node at the other end.
    pub fn peer(&self) -> &NodeId {
        &self.0.peer
    }

    pub fn is_down(&self) -> bool {
        self.0.down.load(Ordering::Acquire)
    }

    pub fn down_cause(&self) -> Option<DownCause> {
        self.0.cause.lock().expect("cause lock").clone()
    }

    /// Queues a message for the peer's process `to`, after every message queued before it
    /// through any handle of this link. `Ok` is no promise of delivery: a link that goes down
    /// loses what it held, and its monitors say so with `Noconnection`.
    pub async fn send(&self, to: RemoteRef, msg: Vec<u8>) -> Result<(), SendError> {
        if msg.len() > MAX_PAYLOAD_BYTES {
            return Err(SendError::TooLarge);
        }
        self.command(Command::Send { to, msg })
            .await
            .map_err(|LinkDown| SendError::Down)
    }

    /// A local process monitors the peer's `target` under `mref` (never used before on this
    /// link). On `Ok`, exactly one `Event::Down` for `mref` comes on the event stream unless
    /// demonitored first; on `Err` none will, and the caller owes its watcher `Noconnection`.
    pub async fn monitor(&self, mref: u64, target: RemoteRef) -> Result<(), LinkDown> {
        self.command(Command::Monitor { mref, target }).await
    }

    /// Cancels `mref`. A `Down` already on the event stream still arrives; the consumer drops
    /// DOWNs for refs it demonitored, as Erlang's `demonitor(Ref, [flush])` does.
    pub async fn demonitor(&self, mref: u64) {
        let _ = self.command(Command::Demonitor { mref }).await;
    }

    /// The local `pid` exited: the peer's monitors on it get their `Down`, after every message
    /// queued on this link before this call.
    pub async fn local_exited(&self, pid: u64, reason: DownReason) {
        let _ = self.command(Command::LocalExited { pid, reason }).await;
    }

    /// The local `target` (pid at that epoch) is gone; see [`LinkCore::target_gone`].
    pub async fn target_gone(&self, target: RemoteRef, reason: DownReason) {
        let _ = self.command(Command::TargetGone { target, reason }).await;
    }

    /// Whether both handles are of the same link (the same connection, not just the same peer).
    pub fn same_link(&self, other: &LinkHandle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Takes the link down now (cause [`DownCause::Closed`]); its monitors end as on any cause.
    pub fn close(&self) {
        self.0.closing.store(true, Ordering::Release);
        self.0.close.notify_one();
    }

    async fn command(&self, cmd: Command) -> Result<(), LinkDown> {
        if self.is_down() {
            return Err(LinkDown);
        }
        // A send lands before the driver closes its receiver (it is then drained and answered)
        // or fails: a monitor that got Ok always gets its Down.
        self.0.cmds.send(cmd).await.map_err(|_| LinkDown)
    }
}
