//! The two proxy processes that let a channel on one node join a room on another.
//!
//! On the channel's node a **room proxy** stands for the room: the channel holds its address,
//! monitors it and sends it what it would send the room; it turns that into frames for the
//! room's pid and epoch, and turns the room's answers back into the channel's messages. On the
//! room's node a **channel proxy** stands for the channel: the room holds its address and
//! monitors it like any channel; it turns the room's pushes into frames for the room proxy.
//!
//! Each proxy is one ordinary local process, so the runtime's promises carry over: it exits
//! exactly once and its watchers get exactly one DOWN, with the remote reason (the link's DOWN
//! for the far side's process) or `noconnection` (the link went down). Each watches the far
//! side across the link and its near side locally, and exits when either is gone, with one
//! exception: a joined room proxy outlives its room's *normal* DOWN and takes its reason from
//! the channel proxy instead. A room stops normally only once it holds no peer, so a peer that
//! was in it was let go first (dropped, or its channel proxy ended), and the channel must hear
//! that, not "the room stopped under me"; but the room's DOWN and the channel proxy's frames and
//! DOWN leave the room's node from different processes, so the room's can arrive first.
//!
//! A proxy never blocks on its near side (a full mailbox ends it, as a room ends a slow
//! channel) and never decides anything about the room: taking, refusing and dropping a peer
//! stay the room's, joining again stays the channel's.

use tokio::sync::{mpsc, oneshot};

use super::exports::Inbound;
use super::wire::{self, ToProxy, ToRoom};
use super::Shared;
use crate::channel::UNAVAILABLE_REASON;
use crate::cluster::dist::frame::{DownReason, RemoteRef};
use crate::cluster::dist::LinkHandle;
use crate::messages::{ChannelMsg, RoomMsg};
use crate::rt::time::{self, Duration};
use crate::rt::{Addr, Ctx, ExitReason, Received};
use crate::shared_text::SharedText;

/// How a DOWN that came across a link ends the local proxy (and so what its watchers see).
pub fn exit_reason(reason: DownReason) -> ExitReason {
    match reason {
        DownReason::Normal => ExitReason::Normal,
        DownReason::Shutdown => ExitReason::Shutdown,
        DownReason::Noproc => ExitReason::Noproc,
        // Not a crash of this node's code: the injector-free crash oracle must not count it.
        DownReason::Crashed(m) => ExitReason::Error(format!("remote crash: {m}")),
        DownReason::Noconnection => ExitReason::Error(NOCONNECTION.into()),
        DownReason::Other(m) => ExitReason::Error(m),
    }
}

/// How a local exit is told across a link.
pub fn down_reason(reason: &ExitReason) -> DownReason {
    match reason {
        ExitReason::Normal => DownReason::Normal,
        ExitReason::Shutdown => DownReason::Shutdown,
        ExitReason::Noproc => DownReason::Noproc,
        ExitReason::Killed => DownReason::other("killed"),
        ExitReason::Crashed(m) => DownReason::crashed(m),
        ExitReason::Error(m) if m == NOCONNECTION => DownReason::Noconnection,
        ExitReason::Error(m) => DownReason::other(m),
    }
}

pub const NOCONNECTION: &str = "noconnection";

/// How long a room proxy waits for the room's node to answer a join before it refuses it as
/// unavailable (the client rejoins): with the cluster registry's own bound, a join is answered
/// within the clients' patience.
const ANSWER_PATIENCE: Duration = Duration::from_millis(1500);

fn noconnection() -> ExitReason {
    ExitReason::Error(NOCONNECTION.into())
}

/// Sets a monitor across `link` on `target` for the local process `me`, recorded so the link's
/// DOWN finds `me`; its ref. `None` if the link is down (the caller owes its watchers
/// `noconnection`).
async fn monitor_remote(
    shared: &Shared,
    link: &LinkHandle,
    me: u64,
    target: RemoteRef,
) -> Option<u64> {
    let mref = shared.next_mref();
    shared.exports.add_monitor(mref, me);
    if link.monitor(mref, target).await.is_err() {
        shared.exports.take_monitor(mref);
        return None;
    }
    Some(mref)
}

pub struct RoomProxy {
    pub shared: Shared,
    pub link: LinkHandle,
    pub room: RemoteRef,
    pub inbox: mpsc::Receiver<Inbound<ToProxy>>,
}

/// The room proxy's body: the room as the channel on this node sees it.
pub async fn room_proxy(mut ctx: Ctx<RoomMsg>, mut p: RoomProxy) -> ExitReason {
    let me = ctx.pid().0;
    let Some(room_mref) = monitor_remote(&p.shared, &p.link, me, p.room).await else {
        return noconnection();
    };
    let mut channel: Option<Addr<ChannelMsg>> = None;
    let mut ack: Option<oneshot::Sender<Result<(), String>>> = None;
    // Once joined, the channel proxy in the room: media goes through it, in order.
    let mut far: Option<RemoteRef> = None;
    // When a join sent to the room must have been answered: a link that went silent is only
    // declared down after its silence bound, longer than a client waits for its join.
    let mut answer_due: Option<time::Instant> = None;
    let mut timer = time::Timer::new();
    loop {
        tokio::select! {
            // Fixed order: an unbiased select draws from tokio's thread RNG, seeded from a
            // process-wide counter, and a world would replay differently in-process than in a
            // fresh process. The deadline goes last: an answer already here is taken.
            biased;
            r = ctx.recv() => {
                let out = match r {
                    Received::Msg(RoomMsg::AddPeerChannel { peer_id, channel: c, ack: a }) => {
                        if channel.is_some() {
                            let _ = a.send(Err("one peer per room proxy".into()));
                            continue;
                        }
                        ctx.monitor(c.pid());
                        channel = Some(c);
                        ack = Some(a);
                        answer_due = Some(time::now() + ANSWER_PATIENCE);
                        let join = ToRoom::Join { peer_id, reply: me };
                        if p.link.send(p.room, wire::encode(&join)).await.is_err() {
                            return noconnection();
                        }
                        continue;
                    }
                    Received::Msg(RoomMsg::MediaEvent { peer_id, data }) => {
                        // A channel sends media only once joined, so `far` is known.
                        let Some(to) = far else { continue };
                        (to, ToRoom::Media { peer_id, data })
                    }
                    // The room's own view lives on its node; nothing here asks a proxy for it.
                    Received::Msg(RoomMsg::Peers(tx)) => {
                        let _ = tx.send(Vec::new());
                        continue;
                    }
                    Received::Msg(RoomMsg::Info(_) | RoomMsg::Plane(_)) => continue,
                    // The channel is gone: so is this peer's presence in the room.
                    Received::Down(_) => return ExitReason::Normal,
                };
                let (to, out) = out;
                if p.link.send(to, wire::encode(&out)).await.is_err() {
                    return noconnection();
                }
            }
            m = p.inbox.recv() => {
                let m = match m {
                    Some(Inbound::Msg(m)) => m,
                    Some(Inbound::Down { mref, reason }) => {
                        // A room stops normally only once it holds no peer: if this one was
                        // in it, the room let it go first (dropped it, or ended its channel
                        // proxy), and that is what the channel must hear. It comes from the
                        // channel proxy, another process on the room's node, whose frames and
                        // DOWN the room's own DOWN can overtake on the link (the cluster
                        // simulation's seeds 139 and 315: a channel proxy killed as a slow
                        // consumer, then the room's stop); and it does come, since the channel
                        // proxy watches the room and ends with it, or the link's noconnection.
                        if mref == room_mref && reason == DownReason::Normal && far.is_some() {
                            continue;
                        }
                        return exit_reason(reason);
                    }
                    None => return ExitReason::Normal,
                };
                let Some(c) = &channel else { continue };
                let delivered = match m {
                    ToProxy::Joined { channel_proxy } => {
                        let to = RemoteRef { pid: channel_proxy, epoch: 0 };
                        if monitor_remote(&p.shared, &p.link, me, to).await.is_none() {
                            return noconnection();
                        }
                        far = Some(to);
                        answer_due = None;
                        if let Some(a) = ack.take() {
                            crate::rt::probe::emit(crate::rt::probe::Event::RemoteJoined);
                            let _ = a.send(Ok(()));
                        }
                        true
                    }
                    ToProxy::Refused { reason } => {
                        if let Some(a) = ack.take() {
                            let _ = a.send(Err(reason));
                        }
                        return ExitReason::Normal;
                    }
                    // Dropping the ack is the room's "stopped with the join queued".
                    ToProxy::Lost => return ExitReason::Normal,
                    ToProxy::Media { text } => {
                        c.try_send(ChannelMsg::MediaEvent(SharedText::new(text))).is_ok()
                    }
                    ToProxy::Dropped { reason } => c.try_send(ChannelMsg::Dropped(reason)).is_ok(),
                };
                if !delivered {
                    // As a room ends a channel it cannot push to: the client rejoins.
                    return ExitReason::Error("channel backlog full".into());
                }
            }
            _ = timer.until(answer_due) => {
                if let Some(a) = ack.take() {
                    let _ = a.send(Err(UNAVAILABLE_REASON.into()));
                }
                return ExitReason::Normal;
            }
        }
    }
}

pub struct ChannelProxy {
    pub shared: Shared,
    pub link: LinkHandle,
    /// The room proxy on the channel's node.
    pub peer: RemoteRef,
    pub room: Addr<RoomMsg>,
    pub peer_id: String,
    /// Media from the remote client, for the room.
    pub inbox: mpsc::Receiver<Inbound<ToRoom>>,
}

/// The channel proxy's body: the channel as the room on this node sees it.
pub async fn channel_proxy(mut ctx: Ctx<ChannelMsg>, mut p: ChannelProxy) -> ExitReason {
    let me = ctx.pid().0;
    let send = |m: ToProxy| {
        let (link, to) = (p.link.clone(), p.peer);
        async move { link.send(to, wire::encode(&m)).await.is_ok() }
    };
    if monitor_remote(&p.shared, &p.link, me, p.peer)
        .await
        .is_none()
    {
        return noconnection();
    }
    let room_ref = ctx.monitor(p.room.pid());
    let (ack_tx, mut ack_rx) = oneshot::channel();
    let add = RoomMsg::AddPeerChannel {
        peer_id: p.peer_id.clone(),
        channel: ctx.addr(),
        ack: ack_tx,
    };
    if p.room.try_send(add).is_err() {
        send(ToProxy::Lost).await;
        return ExitReason::Normal;
    }
    loop {
        tokio::select! {
            // The room answers before it pushes anything to a new peer: the ack goes first.
            biased;
            a = &mut ack_rx => {
                let answer = match a {
                    Ok(Ok(())) => ToProxy::Joined { channel_proxy: me },
                    Ok(Err(reason)) => ToProxy::Refused { reason },
                    Err(_) => ToProxy::Lost,
                };
                let joined = matches!(answer, ToProxy::Joined { .. });
                if !send(answer).await {
                    return noconnection();
                }
                if !joined {
                    return ExitReason::Normal;
                }
                break;
            }
            r = ctx.recv() => match r {
                Received::Down(d) if d.mref == room_ref => {
                    send(ToProxy::Lost).await;
                    return ExitReason::Normal;
                }
                _ => continue,
            },
            m = p.inbox.recv() => match m {
                Some(Inbound::Down { reason, .. }) => return exit_reason(reason),
                // Media comes only once joined; nothing else is sent here.
                Some(Inbound::Msg(_)) => continue,
                None => return ExitReason::Normal,
            },
        }
    }
    loop {
        let out = tokio::select! {
            // Fixed order (see the room proxy's loop): the channel's side, then the room's.
            biased;
            r = ctx.recv() => match r {
                Received::Msg(ChannelMsg::MediaEvent(t)) => ToProxy::Media {
                    text: t.as_str().to_owned(),
                },
                Received::Msg(ChannelMsg::Dropped(reason)) => ToProxy::Dropped { reason },
                Received::Msg(ChannelMsg::Stop | ChannelMsg::FromClient { .. }) => continue,
                // The room is gone: the same reason as the room proxy's own monitor of the
                // room carries (which, if normal, waits for this one: see the module docs).
                Received::Down(d) => return d.reason,
            },
            m = p.inbox.recv() => {
                let m = match m {
                    Some(Inbound::Msg(m)) => m,
                    // The channel's side is gone: so is the peer, for the room.
                    Some(Inbound::Down { reason, .. }) => return exit_reason(reason),
                    None => return ExitReason::Normal,
                };
                let ToRoom::Media { peer_id, data } = m else { continue };
                if p.room.try_send(RoomMsg::MediaEvent { peer_id, data }).is_err() {
                    // As a channel whose room cannot take its pushes: the client rejoins.
                    return ExitReason::Error("room unreachable".into());
                }
                continue;
            }
        };
        if !send(out).await {
            return noconnection();
        }
    }
}
