//! The socket process: drives one connection's Phoenix `SocketCore` and its channel processes.
//!
//! Owns the mapping ChanId ↔ channel process, spawns channels when the core starts one,
//! monitors them (a channel's DOWN becomes `Exited`, hence `phx_error` or `phx_close`), and
//! moves frames between the core and the transport. The transport is two queues of frames, so
//! the same process runs behind axum's WebSocket in production and behind simulated sockets.
//!
//! Never waits on the client: if the outbound queue is full the client is too slow and the
//! connection is dropped.

use std::collections::BTreeMap;

use tokio::sync::{mpsc, watch};

use crate::app::App;
use crate::channel::{self, ChannelMsg};
use crate::metrics::{Process, SlowQueue};
use crate::phoenix::{ChanId, ChannelEvent, Output, SocketCore};
use crate::rt::{self, Addr, Ctx, ExitReason, Pid, Received, SendError};

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

/// What a socket process accepts from its channels.
#[derive(Debug)]
pub enum ConnMsg {
    Channel(ChannelEvent),
}

/// The transport ends given to [`run`].
pub struct Transport {
    pub incoming: mpsc::Receiver<WsIn>,
    pub outgoing: mpsc::Sender<WsOut>,
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
    loop {
        if !drive(&app, &mut ctx, &mut core, &mut chans, &transport.outgoing) || core.is_closed() {
            core.close();
            drive(&app, &mut ctx, &mut core, &mut chans, &transport.outgoing);
            return ExitReason::Normal;
        }
        let deadline = core.poll_timeout();
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                let _ = transport.outgoing.try_send(WsOut::Close(CLOSE_SERVICE_RESTART, "server restart".into()));
                core.close();
                drive(&app, &mut ctx, &mut core, &mut chans, &transport.outgoing);
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
                    drive(&app, &mut ctx, &mut core, &mut chans, &transport.outgoing);
                    return ExitReason::Normal;
                }
            },
            _ = sleep_until(deadline) => core.handle_timeout(rt::time::now()),
        }
    }
}

async fn sleep_until(deadline: Option<rt::time::Instant>) {
    match deadline {
        Some(d) => rt::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Executes the core's outputs; false if the client must be dropped (too slow).
fn drive(
    app: &App,
    ctx: &mut Ctx<ConnMsg>,
    core: &mut SocketCore,
    chans: &mut Chans,
    out: &mpsc::Sender<WsOut>,
) -> bool {
    let mut healthy = true;
    while let Some(o) = core.poll_output() {
        match o {
            Output::Send(text) => {
                if !healthy {
                    continue;
                }
                match out.try_send(WsOut::Text(text)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!("client too slow: outbound queue full, dropping connection");
                        app.metrics.slow_consumer_dropped(SlowQueue::Socket);
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
                let (app2, socket) = (app.clone(), ctx.addr());
                let addr = app.sys.spawn(app.limits.channel_mailbox, move |c| {
                    channel::run(app2, socket, chan, topic, payload, c)
                });
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
