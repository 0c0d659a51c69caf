//! The socket process: drives one connection's Phoenix `SocketCore` and its channel processes.
//!
//! Owns the mapping ChanId ↔ channel process, spawns channels when the core starts one,
//! monitors them (a channel's DOWN becomes `Exited`, hence `phx_error` or `phx_close`), and
//! moves frames between the core and the transport. The transport is two queues of frames, so
//! the same process runs behind axum's WebSocket in production and behind simulated sockets.
//!
//! Never waits on the client: if the outbound queue is full (in frames, or in bytes not yet
//! written) the client is too slow and the connection is dropped. Never starts a channel past
//! its client's per-source budget.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;

use tokio::sync::mpsc;

use crate::app::App;
use crate::channel;
use crate::messages::{ChannelMsg, ConnMsg};
use crate::metrics::{Process, SlowQueue};
use crate::per_source::ForSource;
use crate::phoenix::{ChanId, ChannelEvent, Output, SocketCore};
use crate::rt::{self, watch, Addr, Ctx, ExitReason, Pid, Received, SendError};

/// Close code for a server shutting down or restarting (clients reconnect).
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

/// What the transport delivers.
#[derive(Debug)]
pub enum WsIn {
    Text(String),
    Binary(Vec<u8>),
    /// The transport refused a frame over its size limit (it never buffers one).
    TooBig,
}

/// What the process asks the transport to write.
#[derive(Debug, PartialEq, Eq)]
pub enum WsOut {
    Text(String),
    /// Close with this code and reason, then stop writing.
    Close(u16, String),
}

/// The transport ends given to [`run`].
pub struct Transport {
    pub incoming: mpsc::Receiver<WsIn>,
    pub outgoing: mpsc::Sender<WsOut>,
    /// Bytes of the text frames in `outgoing` not yet written; the writer gives them back
    /// ([`QueuedBytes::written`]). A frame count alone let megabyte frames pile up.
    pub queued: Arc<QueuedBytes>,
    /// This client's slots for joined channels, counted per source address across its sockets
    /// (`None`: not counted, as in the simulation, which has no addresses).
    pub channel_slots: Option<ForSource>,
}

/// Bytes queued towards one client, against a bound.
#[derive(Debug)]
pub struct QueuedBytes {
    bytes: AtomicUsize,
    limit: usize,
}

impl QueuedBytes {
    pub fn new(limit: usize) -> Arc<QueuedBytes> {
        Arc::new(QueuedBytes {
            bytes: AtomicUsize::new(0),
            limit,
        })
    }

    /// Counts `n` more bytes queued, unless that goes over the bound (then nothing changes).
    fn take(&self, n: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b + n <= self.limit).then_some(b + n)
            })
            .is_ok()
    }

    /// `n` bytes left the queue (written, or never queued after all).
    pub fn written(&self, n: usize) {
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(n))
            });
    }

    pub fn queued(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

struct Chans {
    by_id: BTreeMap<ChanId, Addr<ChannelMsg>>,
    by_pid: BTreeMap<Pid, ChanId>,
}

/// The socket process's body. Ends when the client goes away, the core closes the
/// connection, or `shutdown` turns true.
pub async fn run(
    app: App,
    mut transport: Transport,
    mut shutdown: watch::Receiver<bool>,
    mut ctx: Ctx<ConnMsg>,
) -> ExitReason {
    app.metrics.track(ctx.system(), ctx.pid(), Process::Socket);
    let mut core = SocketCore::new(app.limits.socket.clone(), rt::time::now());
    let mut chans = Chans {
        by_id: BTreeMap::new(),
        by_pid: BTreeMap::new(),
    };
    let mut timer = rt::time::Timer::new();
    loop {
        if !drive(&app, &mut ctx, &mut core, &mut chans, &transport) || core.is_closed() {
            core.close();
            drive(&app, &mut ctx, &mut core, &mut chans, &transport);
            return ExitReason::Normal;
        }
        let deadline = core.poll_timeout();
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                let _ = transport.outgoing.try_send(WsOut::Close(CLOSE_SERVICE_RESTART, "server restart".into()));
                core.close();
                drive(&app, &mut ctx, &mut core, &mut chans, &transport);
                return ExitReason::Shutdown;
            }
            r = ctx.recv() => match r {
                Received::Msg(ConnMsg::Channel(ev)) => core.handle_channel(ev),
                Received::Down(d) => {
                    if let Some(chan) = chans.by_pid.remove(&d.pid) {
                        chans.by_id.remove(&chan);
                        let abnormal = d.reason.is_abnormal();
                        core.handle_channel(ChannelEvent::Exited { chan, abnormal });
                    }
                }
            },
            frame = transport.incoming.recv() => match frame {
                Some(WsIn::Text(t)) => core.handle_text(rt::time::now(), &t),
                Some(WsIn::Binary(b)) => core.handle_binary(rt::time::now(), &b),
                Some(WsIn::TooBig) => core.handle_oversized(),
                None => {
                    core.close();
                    drive(&app, &mut ctx, &mut core, &mut chans, &transport);
                    return ExitReason::Normal;
                }
            },
            _ = timer.until(deadline) => core.handle_timeout(rt::time::now()),
        }
    }
}

/// Executes the core's outputs; false if the client must be dropped (too slow).
fn drive(
    app: &App,
    ctx: &mut Ctx<ConnMsg>,
    core: &mut SocketCore,
    chans: &mut Chans,
    transport: &Transport,
) -> bool {
    let out = &transport.outgoing;
    let mut healthy = true;
    while let Some(o) = core.poll_output() {
        match o {
            Output::Send(text) => {
                if !healthy {
                    continue;
                }
                let n = text.len();
                let sent = if transport.queued.take(n) {
                    out.try_send(WsOut::Text(text))
                        .inspect_err(|_| transport.queued.written(n))
                } else {
                    Err(mpsc::error::TrySendError::Full(WsOut::Text(String::new())))
                };
                match sent {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(
                            queued_bytes = transport.queued.queued(),
                            "client too slow: outbound queue full, dropping connection"
                        );
                        app.metrics.slow_consumer_dropped(SlowQueue::Socket);
                        crate::rt::probe::emit(crate::rt::probe::Event::SlowConsumerDropped {
                            queue: crate::rt::probe::SlowQueue::Socket,
                        });
                        healthy = false;
                    }
                    // The transport is gone (the client left); the process ends with it.
                    Err(mpsc::error::TrySendError::Closed(_)) => healthy = false,
                }
            }
            Output::StartChannel {
                chan,
                topic,
                payload,
            } => {
                let slot = match &transport.channel_slots {
                    None => None,
                    Some(slots) => match slots.try_acquire() {
                        Some(slot) => Some(slot),
                        None => {
                            let reason = format!(
                                "too many rooms joined from your address (limit {})",
                                slots.limit()
                            );
                            let response = json!({ "reason": reason });
                            core.handle_channel(ChannelEvent::JoinError { chan, response });
                            continue;
                        }
                    },
                };
                let (app2, socket) = (app.clone(), ctx.addr());
                let addr = app
                    .sys
                    .spawn(app.limits.channel_mailbox, move |c| async move {
                        // The source's slot is held for as long as the channel runs.
                        let _slot = slot;
                        channel::run(app2, socket, chan, topic, payload, c).await
                    });
                app.sys.set_label(addr.pid(), channel::PROCESS_LABEL);
                ctx.monitor(addr.pid());
                chans.by_pid.insert(addr.pid(), chan);
                chans.by_id.insert(chan, addr);
            }
            Output::ToChannel {
                chan,
                event,
                msg_ref,
                payload,
            } => {
                if let Some(c) = chans.by_id.get(&chan) {
                    let msg = ChannelMsg::FromClient {
                        event,
                        msg_ref,
                        payload,
                    };
                    if let Err(SendError::Full(_)) = c.try_send(msg) {
                        // The client floods one channel faster than it can work: crash it
                        // (the client gets phx_error and may rejoin) rather than queue forever.
                        app.sys.kill(c.pid());
                    }
                }
            }
            Output::StopChannel { chan, .. } => {
                // The core has forgotten it; its DOWN will find no ChanId and be ignored.
                if let Some(c) = chans.by_id.remove(&chan) {
                    chans.by_pid.remove(&c.pid());
                    if c.try_send(ChannelMsg::Stop).is_err() {
                        app.sys.kill(c.pid());
                    }
                }
            }
            Output::Close { code, reason } => {
                let _ = out.try_send(WsOut::Close(code, reason));
            }
        }
    }
    healthy
}
