//! The task of one established link: the loop that steps its core with the socket, the clock,
//! the handles' commands and the consumer's room, and the hand-over once it is down.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::super::frame::DownReason;
use super::super::link::{DownCause, Event, LinkCore};
use super::handle::{Command, LinkHandle};
use super::{Shared, COMMAND_BATCH, READ_CHUNK};
use crate::rt::time::{self, Instant, Timer};

/// What [`Io`] finished: a read (bytes in `buf`) or a write (bytes of `out` taken).
enum Done {
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
}

/// One read or one write on the link's socket, whichever is ready first, with the side
/// polled first alternating per turn so neither direction can starve the other.
struct Io<'a> {
    rd: &'a mut ReadHalf<TcpStream>,
    wr: &'a mut WriteHalf<TcpStream>,
    buf: &'a mut [u8],
    out: &'a [u8],
    can_read: bool,
    read_first: bool,
}

impl Future for Io<'_> {
    type Output = Done;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        let io = self.get_mut();
        for read_turn in [io.read_first, !io.read_first] {
            if read_turn && io.can_read {
                let mut rb = ReadBuf::new(io.buf);
                if let Poll::Ready(r) = Pin::new(&mut *io.rd).poll_read(cx, &mut rb) {
                    return Poll::Ready(Done::Read(r.map(|()| rb.filled().len())));
                }
            }
            if !read_turn && !io.out.is_empty() {
                if let Poll::Ready(r) = Pin::new(&mut *io.wr).poll_write(cx, io.out) {
                    return Poll::Ready(Done::Wrote(r));
                }
            }
        }
        Poll::Pending
    }
}

/// The task of one established link.
pub(super) struct Driver {
    pub(super) core: LinkCore,
    pub(super) rd: ReadHalf<TcpStream>,
    pub(super) wr: WriteHalf<TcpStream>,
    pub(super) cmds: mpsc::Receiver<Command>,
    pub(super) events: mpsc::Sender<Event>,
    /// The one event taken from the core that the full channel did not take yet.
    pub(super) held: Option<Event>,
    /// When the event channel was found full; reading stops until it has room.
    pub(super) blocked_since: Option<Instant>,
    /// The chunk taken from the core and not yet fully written.
    pub(super) out: Vec<u8>,
    pub(super) written: usize,
    pub(super) handle: LinkHandle,
    pub(super) shared: Arc<Shared>,
}

impl Driver {
    pub(super) async fn run(mut self) {
        let mut timer = Timer::new();
        let mut buf = vec![0; READ_CHUNK];
        let mut read_first = false;
        loop {
            if self.handle.0.closing.load(Ordering::Acquire) {
                self.core.close(DownCause::Closed);
            }
            self.take_commands();
            // Due deadlines are handled every turn, not only when the timer branch wins: a
            // socket that is always ready would otherwise starve the tick the peer waits for.
            self.on_time(time::now());
            self.pump();
            if self.core.is_down() {
                break;
            }
            let deadline = match (self.core.poll_timeout(), self.overload_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let blocked = self.held.is_some();
            // Reads pause while an event waits for room: the consumer's lag reaches the peer
            // as TCP backpressure, and the core holds at most one read's worth of events.
            let can_read = !blocked;
            read_first = !read_first;
            let io = Io {
                rd: &mut self.rd,
                wr: &mut self.wr,
                buf: &mut buf,
                out: &self.out[self.written..],
                can_read,
                read_first,
            };
            // Biased, so a simulation replays; fairness comes from the alternation inside `io`,
            // the command batch above and the per-turn deadline check.
            tokio::select! {
                biased;
                () = self.handle.0.close.notified() => self.core.close(DownCause::Closed),
                done = io => match done {
                    Done::Read(Ok(n)) if n > 0 => self.core.handle_bytes(time::now(), &buf[..n]),
                    Done::Wrote(Ok(n)) if n > 0 => {
                        self.written += n;
                        if self.written == self.out.len() {
                            self.out.clear();
                            self.written = 0;
                        }
                        // A no-op on a real socket; the simulator sends on flush.
                        if self.wr.flush().await.is_err() {
                            self.core.transport_closed();
                        }
                    }
                    // EOF, a zero write or an error: the transport is gone either way.
                    Done::Read(_) | Done::Wrote(_) => self.core.transport_closed(),
                },
                cmd = self.cmds.recv() => match cmd {
                    Some(cmd) => self.apply(cmd),
                    // Unreachable while the table holds a handle; nobody could use the link.
                    None => self.core.close(DownCause::Closed),
                },
                // The permit is dropped at once (it borrows the sender); the driver is the only
                // sender, so the room it saw is still there.
                room = async { self.events.reserve().await.is_ok() }, if blocked => {
                    let held = self.held.take().expect("blocked");
                    match self.events.try_send(held) {
                        Ok(()) => self.blocked_since = None,
                        Err(mpsc::error::TrySendError::Full(held)) if room => {
                            self.held = Some(held);
                        }
                        // Nobody takes the events: nothing delivered could be acted on.
                        Err(_) => self.core.close(DownCause::Closed),
                    }
                },
                () = timer.until(deadline) => {}
            }
        }
        self.finish().await;
    }

    fn on_time(&mut self, now: Instant) {
        if self.overload_deadline().is_some_and(|d| now >= d) {
            self.core.close(DownCause::Overloaded);
        }
        if self.core.poll_timeout().is_some_and(|d| now >= d) {
            self.core.handle_timeout(now);
        }
    }

    /// A consumer that leaves the channel full for a tick is lagging, not just slow to be
    /// scheduled; the deadline falls before the core's silence one (reads stopped when the
    /// channel filled), so the cause reported is the true one.
    fn overload_deadline(&self) -> Option<Instant> {
        self.blocked_since.map(|t| t + self.shared.config.tick)
    }

    fn take_commands(&mut self) {
        for _ in 0..COMMAND_BATCH {
            if self.core.is_down() {
                return;
            }
            match self.cmds.try_recv() {
                Ok(cmd) => self.apply(cmd),
                Err(_) => return,
            }
        }
    }

    /// Applies a command to a core that is up: the loop stops taking commands once it is
    /// down, and `finish` answers the rest.
    fn apply(&mut self, cmd: Command) {
        let core = &mut self.core;
        match cmd {
            // An error here is the core going down (overload), which the loop then handles.
            Command::Send { to, msg } => drop(core.send(to, msg)),
            Command::Monitor { mref, target } => {
                let up = core.monitor(mref, target);
                debug_assert!(up.is_ok(), "commands reach only a core that is up");
            }
            Command::Demonitor { mref } => {
                core.demonitor(mref);
            }
            Command::LocalExited { pid, reason } => core.local_exited(pid, reason),
            Command::TargetGone { target, reason } => core.target_gone(target, reason),
        }
    }

    /// Hands the socket what the core has to write and the consumer what the core emitted.
    fn pump(&mut self) {
        if self.out.is_empty() {
            if let Some(bytes) = self.core.poll_transmit(time::now()) {
                self.out = bytes;
            }
        }
        while self.held.is_none() {
            let Some(event) = self.core.poll_event() else {
                break;
            };
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.held = Some(event);
                    self.blocked_since = Some(time::now());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    // Nobody takes the events: nothing delivered or ended could be acted on.
                    self.core.close(DownCause::Closed);
                }
            }
        }
    }

    /// The link is down: close the socket, answer the commands that made it in, hand over
    /// every remaining event, then end the stream.
    async fn finish(mut self) {
        let cause = self.core.down_cause().cloned().unwrap_or(DownCause::Closed);
        tracing::debug!(peer = ?self.handle.peer(), %cause, "dist: link down");
        *self.handle.0.cause.lock().expect("cause lock") = Some(cause);
        self.handle.0.down.store(true, Ordering::Release);
        self.shared
            .forget(&self.handle.peer().name, self.handle.0.id);
        drop(self.rd);
        let _ = self.wr.shutdown().await;
        drop(self.wr);

        let mut tail: VecDeque<Event> = self.held.take().into_iter().collect();
        tail.extend(std::iter::from_fn(|| self.core.poll_event()));
        self.cmds.close();
        while let Some(cmd) = self.cmds.recv().await {
            match cmd {
                Command::Monitor { mref, .. } => tail.push_back(Event::Down {
                    mref,
                    reason: DownReason::Noconnection,
                }),
                Command::Demonitor { mref } => {
                    tail.retain(|e| !matches!(e, Event::Down { mref: m, .. } if *m == mref));
                }
                _ => {}
            }
        }
        for event in tail {
            if self.events.send(event).await.is_err() {
                return;
            }
        }
    }
}
