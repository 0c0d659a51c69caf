//! The Room process: one per room name, registered in the room registry.
//!
//! Owns the room's peer map (peer id → channel), monitors every channel, and drives the
//! media-event session (`engine::Session`), dispatching its outputs to one peer's channel.
//! A channel that dies is removed and the others are told. When the last peer has gone (or
//! nobody came within the linger time) the room gives up its name first and then exits, so a
//! join racing the stop either reached it before (and keeps it alive) or gets a dropped ack and
//! retries into a fresh room: never lost.
//!
//! It also owns the room's media plane and executes the plane commands the session decides; the
//! plane's reports come back as [`RoomMsg::Plane`] and go straight into the session.
//!
//! A peer holds one of the room's `max_peers_per_room` slots from its join, but the others only
//! see it once it is in the media session; one that stays outside longer than
//! `connect_grace` (see `grace.rs`) is dropped: its channel is told why and closes.
//!
//! Never blocks on a peer: a channel whose mailbox is full is a slow consumer and is killed.

mod grace;

use std::collections::BTreeMap;

use tokio::sync::mpsc;

use crate::app::App;
use crate::engine::{MediaPlane, Out, PlaneSink, Session, TrackNegotiation};
use crate::messages::{ChannelMsg, RoomInfo, RoomMsg};
use crate::metrics::{Metrics, Process, SlowQueue};
use crate::rt::probe::{self, Event};
use crate::rt::{self, Addr, Ctx, ExitReason, MonitorRef, Pid, Received, SendError};
use grace::ConnectGrace;

struct Peer {
    channel: Addr<ChannelMsg>,
    mref: MonitorRef,
}

/// The room's body, to be started under its name by `Registry::start`.
pub async fn run(app: App, name: String, mut ctx: Ctx<RoomMsg>) -> ExitReason {
    app.metrics.track(ctx.system(), ctx.pid(), Process::Room);
    // The session's clock (its update budgets) counts from here.
    let started = rt::time::now();
    let mut session = Session::with_negotiation(
        app.session_config(),
        TrackNegotiation::new((*app.negotiation).clone()),
    );
    let mut plane = app.plane_factory.build(&name, plane_sink(ctx.addr()));
    let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
    let mut by_pid: BTreeMap<Pid, String> = BTreeMap::new();
    let mut grace = ConnectGrace::new(app.limits.connect_grace);
    tracing::debug!(room = %name, pid = %ctx.pid(), "room started");
    let (sys, me) = (ctx.system().id(), ctx.pid());
    probe::emit(Event::RoomStarted { sys, pid: me });
    loop {
        // Checked before waiting, so a busy mailbox cannot put the drop off.
        if grace.poll_timeout().is_some_and(|d| d <= rt::time::now()) {
            let reason = grace.reason();
            for peer_id in grace.expired(rt::time::now()) {
                let Some(p) = peers.remove(&peer_id) else {
                    continue;
                };
                by_pid.remove(&p.channel.pid());
                ctx.demonitor(p.mref);
                tracing::debug!(room = %name, peer = %peer_id, "peer dropped: no connect within the grace");
                probe::emit(Event::PeerDroppedNoConnect);
                // It is outside the session, so this tells nobody; it only forgets the peer.
                let outs = session.remove_peer(&peer_id);
                dispatch(&ctx, &peers, plane.as_mut(), outs, &app.metrics);
                if p.channel
                    .try_send(ChannelMsg::Dropped(reason.clone()))
                    .is_err()
                {
                    ctx.system().kill(p.channel.pid());
                }
            }
            if peers.is_empty() {
                break;
            }
        }
        let received = if peers.is_empty() {
            match rt::time::timeout(app.limits.empty_room_linger, ctx.recv()).await {
                Some(r) => r,
                None => break,
            }
        } else if let Some(deadline) = grace.poll_timeout() {
            let wait = deadline.saturating_duration_since(rt::time::now());
            match rt::time::timeout(wait, ctx.recv()).await {
                Some(r) => r,
                None => continue,
            }
        } else {
            ctx.recv().await
        };
        match received {
            Received::Msg(RoomMsg::AddPeerChannel {
                peer_id,
                channel,
                ack,
            }) => {
                if peers.len() >= app.limits.max_peers_per_room {
                    probe::emit(Event::RoomRefusedFull);
                    let _ = ack.send(Err("room is full".into()));
                    continue;
                }
                let mref = ctx.monitor(channel.pid());
                by_pid.insert(channel.pid(), peer_id.clone());
                grace.update(&peer_id, false, rt::time::now());
                peers.insert(peer_id, Peer { channel, mref });
                let _ = ack.send(Ok(()));
            }
            Received::Msg(RoomMsg::MediaEvent { peer_id, data }) => {
                if peers.contains_key(&peer_id) {
                    session.set_clock(rt::time::now().saturating_duration_since(started));
                    let outs = session.handle_event(&peer_id, &data);
                    let connected = session.roster().contains(&peer_id);
                    grace.update(&peer_id, connected, rt::time::now());
                    dispatch(&ctx, &peers, plane.as_mut(), outs, &app.metrics);
                }
            }
            Received::Msg(RoomMsg::Peers(tx)) => {
                let list = peers
                    .iter()
                    .map(|(id, p)| (id.clone(), p.channel.pid()))
                    .collect();
                let _ = tx.send(list);
            }
            Received::Msg(RoomMsg::Info(tx)) => {
                let _ = tx.send(RoomInfo {
                    peers: peers
                        .iter()
                        .map(|(id, p)| (id.clone(), p.channel.pid()))
                        .collect(),
                    endpoints: session.endpoints().map(str::to_string).collect(),
                    metadata: session
                        .endpoints()
                        .map(|id| {
                            let m = session.roster().metadata(id).cloned().unwrap_or_default();
                            (id.to_string(), m)
                        })
                        .collect(),
                });
            }
            Received::Msg(RoomMsg::Plane(event)) => {
                let outs = session.handle_plane_event(event);
                dispatch(&ctx, &peers, plane.as_mut(), outs, &app.metrics);
            }
            Received::Down(d) => {
                let Some(peer_id) = by_pid.remove(&d.pid) else {
                    probe::emit(Event::RoomDownForUnknownPeer);
                    continue;
                };
                if peers.get(&peer_id).is_some_and(|p| p.mref == d.mref) {
                    peers.remove(&peer_id);
                    grace.remove(&peer_id);
                    tracing::debug!(room = %name, peer = %peer_id, reason = %d.reason, "peer left");
                    probe::emit(Event::PeerLeft);
                    let outs = session.remove_peer(&peer_id);
                    dispatch(&ctx, &peers, plane.as_mut(), outs, &app.metrics);
                    if peers.is_empty() {
                        break;
                    }
                }
            }
        }
    }
    probe::emit(Event::RoomStopping { sys, pid: me });
    // Closes every media connection before the name is free for a fresh room.
    drop(plane);
    // Give up the name before exiting: from here on new joins start a fresh room; joins already
    // queued here get their ack dropped and retry.
    app.rooms.unregister_own(&name, ctx.pid());
    while ctx.try_recv().is_some() {}
    tracing::debug!(room = %name, "room stopped: empty");
    probe::emit(Event::RoomStoppedEmpty { sys, pid: me });
    ExitReason::Normal
}

/// The sink the room gives its plane. Plane events must neither be lost (a lost answer stalls a
/// peer's negotiation for good) nor block the plane's tasks, so they queue here and one forwarder
/// task feeds them, in order, into the bounded mailbox, waiting for room when it is full. The
/// queue is bounded in practice by the plane's work, which the room's own inputs bound.
fn plane_sink(room: Addr<RoomMsg>) -> PlaneSink {
    let (tx, mut rx) = mpsc::unbounded_channel();
    rt::spawn_task(async move {
        while let Some(event) = rx.recv().await {
            if room.send(RoomMsg::Plane(event)).await.is_err() {
                break;
            }
        }
    });
    PlaneSink::new(move |event| {
        // Fails only once the forwarder has stopped with the room: nothing left to tell.
        let _ = tx.send(event);
    })
}

fn dispatch(
    ctx: &Ctx<RoomMsg>,
    peers: &BTreeMap<String, Peer>,
    plane: &mut dyn MediaPlane,
    outs: Vec<Out>,
    metrics: &Metrics,
) {
    for out in outs {
        let (peer, data) = match out {
            Out::To { peer, data } => (peer, data),
            Out::Plane(command) => {
                plane.apply(command);
                continue;
            }
        };
        let Some(p) = peers.get(&peer) else { continue };
        match p.channel.try_send(ChannelMsg::MediaEvent(data)) {
            Ok(()) => {}
            Err(SendError::Full(_)) => {
                // A slow consumer must not hold the room back: drop it; its DOWN removes it.
                tracing::warn!(peer = %peer, "peer channel backlog full: disconnecting it");
                metrics.slow_consumer_dropped(SlowQueue::Channel);
                probe::emit(Event::SlowConsumerDropped {
                    queue: probe::SlowQueue::Channel,
                });
                ctx.system().kill(p.channel.pid());
            }
            // Already gone: its DOWN is on the way.
            Err(SendError::Dead(_)) => probe::emit(Event::RoomSendToGonePeer),
        }
    }
}
