//! PeerChannel: the process behind one joined `room:<name>` topic of one socket.
//!
//! Owns the tutorial's join (room-name rules, the join token when the server has a secret,
//! registry lookup, start, `AlreadyStarted` race, monitor of the room, `AddPeerChannel` with a
//! fresh UUIDv4 peer id) and the forwarding of `mediaEvent`s both ways. It answers the socket's
//! join exactly once, a refusal always with a `reason` a person can read. When its room dies it
//! exits abnormally, so its client gets `phx_error` and rejoins into a fresh room; when its
//! socket dies it stops; when its room drops it (no `connect` within the grace) it pushes
//! `dropped {reason}` and closes, so the client is told why and does not rejoin.
//!
//! Never blocks on its socket or room: a full mailbox on either side ends the channel.
//!
//! Its decisions (what a push becomes, how a DOWN ends it, how a join retries) are the sans-IO
//! `core.rs`; this actor asks the registry, sends, waits, and does what the core says.

use serde_json::{json, Value};
use tokio::sync::oneshot;

use self::core::{
    client_push, joined_down, Attempt, Attempts, Next, Push, FAILED_TO_START, JOIN_BUDGET,
};
use crate::app::App;
use crate::messages::{ChannelMsg, ConnMsg, RoomMsg};
use crate::metrics::Process;
use crate::phoenix::{ChanId, ChannelEvent};
use crate::registry::JoinError;
use crate::room;
use crate::rt::probe::{self, Event};
use crate::rt::{self, Addr, Ctx, ExitReason, MonitorRef, Received};

mod core;
pub mod room_name;
#[cfg(test)]
mod tests;

/// The label of channel processes in the process table (what a leak report or a fault names).
pub const PROCESS_LABEL: &str = "channel";

/// The join error's reason when starting the room would pass `max_rooms`.
pub const ROOM_LIMIT_REASON: &str = "server is at its room limit";
/// A cluster join found no room it could reach or start for now (its owner's node died and its
/// lease has not lapsed yet, etcd is unreachable, this node is fenced). The client's automatic
/// rejoin is the remedy: the web app keeps retrying on this reason instead of leaving.
pub const UNAVAILABLE_REASON: &str = "room temporarily unavailable";
/// The event that tells a client why its channel was dropped (`{"reason": ...}`).
pub const DROPPED_EVENT: &str = "dropped";

struct Joined {
    room: Addr<RoomMsg>,
    mref: MonitorRef,
    peer_id: String,
}

enum JoinOutcome {
    Joined(Joined),
    Refused(String),
    Stopped,
}

/// The channel's body. `topic` is `room:<name>`; `payload` is the client's join payload.
pub async fn run(
    app: App,
    socket: Addr<ConnMsg>,
    chan: ChanId,
    topic: String,
    payload: Value,
    mut ctx: Ctx<ChannelMsg>,
) -> ExitReason {
    app.metrics.track(ctx.system(), ctx.pid(), Process::Channel);
    let joining = rt::time::now();
    let socket_ref = ctx.monitor(socket.pid());
    let name = topic.strip_prefix("room:").unwrap_or(&topic).to_string();
    let admitted = admit(&app, &name, &payload);
    // Names are case-insensitive: `Team-Standup` and `team-standup` read as one room to the
    // people typing them, so they are one (the registry, the logs and the room use the folded
    // name; the client keeps its topic as it wrote it).
    let name = name.to_ascii_lowercase();
    let joined = match admitted {
        Err(reason) => JoinOutcome::Refused(reason),
        // Cancel-safe: what a join holds (monitors, a peer queued in a room) belongs to this
        // channel, which ends with the refusal; a cluster start in flight runs in its own task.
        Ok(()) => rt::time::timeout(JOIN_BUDGET, join(&app, &name, socket_ref, &mut ctx))
            .await
            .unwrap_or_else(|| {
                tracing::warn!(room = %name, "join refused: not settled within {JOIN_BUDGET:?}");
                probe::emit(Event::JoinOutOfTime);
                let reason = match app.cluster.get() {
                    Some(_) => UNAVAILABLE_REASON,
                    None => FAILED_TO_START,
                };
                JoinOutcome::Refused(reason.into())
            }),
    };
    let Joined {
        room,
        mref: room_ref,
        peer_id,
    } = match joined {
        JoinOutcome::Joined(j) => j,
        JoinOutcome::Refused(reason) => {
            let response = json!({ "reason": reason });
            let _ = socket.try_send(ConnMsg::Channel(ChannelEvent::JoinError { chan, response }));
            return ExitReason::Shutdown;
        }
        JoinOutcome::Stopped => return ExitReason::Shutdown,
    };
    let ok = ChannelEvent::JoinOk {
        chan,
        response: json!({}),
    };
    if socket.try_send(ConnMsg::Channel(ok)).is_err() {
        return ExitReason::Shutdown;
    }
    app.metrics.join_latency.observe(joining.elapsed());
    let _peer = app.metrics.peers.hold();
    // Joins and leaves at the default level: what an operator asks of a room's log first.
    tracing::info!(room = %name, peer = %peer_id, "peer joined");
    probe::emit(Event::ChannelJoined);
    // `return` in this block ends the membership; the leave is logged below, once.
    let exit = async {
        loop {
            match ctx.recv().await {
                Received::Msg(ChannelMsg::FromClient {
                    event,
                    msg_ref,
                    payload,
                }) => {
                    let reason = match client_push(&event, &payload) {
                        Push::ToRoom(data) => {
                            let msg = RoomMsg::MediaEvent {
                                peer_id: peer_id.clone(),
                                data: data.to_string(),
                            };
                            if room.try_send(msg).is_err() {
                                probe::emit(Event::ChannelRoomUnreachable);
                                // Full: the room is overwhelmed; dead: its DOWN follows. Either way
                                // this peer's view is broken, so fail and let the client rejoin.
                                return ExitReason::Error("room unreachable".into());
                            }
                            continue;
                        }
                        Push::Refuse(reason) => reason,
                    };
                    let reply = ChannelEvent::Reply {
                        chan,
                        msg_ref,
                        status: "error".into(),
                        response: json!({ "reason": reason }),
                    };
                    if socket.try_send(ConnMsg::Channel(reply)).is_err() {
                        return ExitReason::Error("socket backlog full".into());
                    }
                }
                Received::Msg(ChannelMsg::MediaEvent(data)) => {
                    let push = ChannelEvent::PushShared {
                        chan,
                        event: "mediaEvent",
                        field: "data",
                        value: data,
                    };
                    if socket.try_send(ConnMsg::Channel(push)).is_err() {
                        return ExitReason::Error("socket backlog full".into());
                    }
                }
                Received::Msg(ChannelMsg::Stop) => return ExitReason::Shutdown,
                Received::Msg(ChannelMsg::Dropped(reason)) => {
                    tracing::info!(room = %name, peer = %peer_id, %reason, "peer dropped by the room");
                    let push = ChannelEvent::Push {
                        chan,
                        event: DROPPED_EVENT.into(),
                        payload: json!({ "reason": reason }),
                    };
                    let _ = socket.try_send(ConnMsg::Channel(push));
                    // A graceful exit: the client gets `phx_close`, so it stays out.
                    return ExitReason::Shutdown;
                }
                Received::Down(d) => match joined_down(d.mref, room_ref, socket_ref, &d.reason) {
                    Some(exit @ ExitReason::Error(_)) => {
                        tracing::debug!(%topic, reason = %d.reason, "room down");
                        if d.reason == ExitReason::Normal {
                            probe::emit(Event::RoomStoppedUnderPeer);
                        }
                        probe::emit(Event::ChannelRoomDown);
                        return exit;
                    }
                    Some(exit) => return exit,
                    // A monitor this channel should have dropped (e.g. on a room it retried away from).
                    None => probe::emit(Event::ChannelDownForUnknownMonitor),
                },
            }
        }
    }
    .await;
    tracing::info!(room = %name, peer = %peer_id, reason = %exit, "peer left");
    exit
}

/// What is decided before the registry is asked: the name's rules, then the token.
fn admit(app: &App, name: &str, payload: &Value) -> Result<(), String> {
    room_name::check(name, app.limits.max_room_name_bytes).map_err(|e| e.to_string())?;
    if let Some(secret) = &app.join_secret {
        secret
            .check(payload.get("token"), name, rt::time::wall_clock())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The seed's join, made robust: a room that stops or dies before it took us is retried.
async fn join(
    app: &App,
    name: &str,
    socket_ref: MonitorRef,
    ctx: &mut Ctx<ChannelMsg>,
) -> JoinOutcome {
    let mut attempts = Attempts::default();
    loop {
        attempts.start();
        let started = match app.cluster.get() {
            Some(cluster) => cluster.whereis_or_start(name).await,
            None => {
                app.rooms
                    .whereis_or_start(name, || {
                        let (app2, name2) = (app.clone(), name.to_string());
                        app.rooms.start(name, app.limits.room_mailbox, move |c| {
                            room::run(app2, name2, c)
                        })
                    })
                    .await
            }
        };
        let room = match started {
            Ok(room) => room,
            Err(JoinError::Full { max, .. }) => {
                tracing::debug!(room = %name, max, "join refused: at the room limit");
                probe::emit(Event::JoinRefusedRoomLimit);
                return JoinOutcome::Refused(ROOM_LIMIT_REASON.into());
            }
            Err(e) if app.cluster.get().is_some() => {
                tracing::warn!(room = %name, error = %e, "join: no room reachable in the cluster");
                probe::emit(Event::ClusterJoinFailed);
                return JoinOutcome::Refused(UNAVAILABLE_REASON.into());
            }
            Err(e) => {
                tracing::error!(room = %name, error = %e, "failed to start room");
                probe::emit(Event::RoomStartFailed);
                return JoinOutcome::Refused(FAILED_TO_START.into());
            }
        };
        let tried = try_room(room, name, socket_ref, ctx).await;
        let a = match tried {
            Tried::Joined(j) => return JoinOutcome::Joined(j),
            Tried::Stopped => return JoinOutcome::Stopped,
            Tried::Ended(a) => a,
        };
        match attempts.outcome(a) {
            Next::Retry => continue,
            Next::Refused(reason) => return JoinOutcome::Refused(reason),
        }
    }
}

enum Tried {
    Joined(Joined),
    Ended(Attempt),
    /// The socket went away or stopped the channel meanwhile.
    Stopped,
}

/// One attempt: ask `room` to take a fresh peer and wait for its answer, watching it die.
async fn try_room(
    room: Addr<RoomMsg>,
    name: &str,
    socket_ref: MonitorRef,
    ctx: &mut Ctx<ChannelMsg>,
) -> Tried {
    let mref = ctx.monitor(room.pid());
    let peer_id = rt::rand::uuid_v4().to_string();
    let (ack_tx, mut ack_rx) = oneshot::channel();
    let add = RoomMsg::AddPeerChannel {
        peer_id: peer_id.clone(),
        channel: ctx.addr(),
        ack: ack_tx,
    };
    if room.try_send(add).is_err() {
        tracing::debug!(room = %name, "join: room unreachable, retrying");
        probe::emit(Event::JoinRoomUnreachable);
        ctx.demonitor(mref);
        return Tried::Ended(Attempt::Lost);
    }
    loop {
        tokio::select! {
            biased;
            ack = &mut ack_rx => match ack {
                Ok(Ok(())) => return Tried::Joined(Joined { room, mref, peer_id }),
                Ok(Err(reason)) => {
                    tracing::debug!(room = %name, %reason, "join: refused by the room");
                    probe::emit(Event::JoinRefusedByRoom);
                    ctx.demonitor(mref);
                    return Tried::Ended(Attempt::Refused(reason));
                }
                // The room stopped with our request queued: try again.
                Err(_) => {
                    tracing::debug!(room = %name, "join: room stopped with the join queued, retrying");
                    probe::emit(Event::JoinRetriedAfterRoomStop);
                    ctx.demonitor(mref);
                    return Tried::Ended(Attempt::Lost);
                }
            },
            r = ctx.recv() => match r {
                Received::Down(d) if d.mref == mref => {
                    tracing::debug!(room = %name, reason = %d.reason, "join: room down before taking the join, retrying");
                    probe::emit(Event::JoinRetriedAfterRoomDown);
                    return Tried::Ended(Attempt::Lost);
                }
                Received::Down(d) if d.mref == socket_ref => return Tried::Stopped,
                Received::Msg(ChannelMsg::Stop) => return Tried::Stopped,
                Received::Down(_) => probe::emit(Event::ChannelDownForUnknownMonitor),
                // Nothing else is sent to a channel before it has joined.
                Received::Msg(_) => probe::emit(Event::ChannelMessageBeforeJoin),
            },
        }
    }
}
