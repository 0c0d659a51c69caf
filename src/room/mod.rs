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
//!
//! The decisions (full, grace, linger and stop, who hears what) are the sans-IO `RoomCore`
//! (`core.rs`); this actor only feeds it and carries out its steps.

mod core;
mod grace;

use tokio::sync::mpsc;

use self::core::{RoomCore, Step};
use crate::app::App;
use crate::engine::{MediaPlane, PlaneSink, Session, TrackNegotiation};
use crate::messages::{ChannelMsg, RoomMsg};
use crate::metrics::{Metrics, Process, SlowQueue};
use crate::rt::probe::{self, Event};
use crate::rt::{self, Addr, Ctx, ExitReason, Received, SendError};

/// The room's body, to be started under its name by `Registry::start`.
pub async fn run(app: App, name: String, mut ctx: Ctx<RoomMsg>) -> ExitReason {
    app.metrics.track(ctx.system(), ctx.pid(), Process::Room);
    let session = Session::with_negotiation(
        app.session_config(),
        TrackNegotiation::new((*app.negotiation).clone()),
    );
    let mut core = RoomCore::new(
        app.limits.max_peers_per_room,
        app.limits.empty_room_linger,
        app.limits.connect_grace,
        session,
        rt::time::now(),
    );
    let mut plane = app.plane_factory.build(&name, plane_sink(ctx.addr()));
    tracing::info!(room = %name, pid = %ctx.pid(), "room started");
    let (sys, me) = (ctx.system().id(), ctx.pid());
    probe::emit(Event::RoomStarted { sys, pid: me });
    let mut timer = rt::time::Timer::new();
    loop {
        // Checked before waiting, so a busy mailbox cannot put a drop or the stop off.
        let now = rt::time::now();
        if core.poll_timeout().is_some_and(|d| d <= now) {
            // A timer's work (dropping a peer, telling the others) is an act like a message's.
            if !may_act(&app, me) {
                return lease_lost(&name);
            }
            probe::emit(Event::RoomActing { sys, pid: me });
            let steps = core.handle_timeout(now);
            execute(&mut ctx, plane.as_mut(), steps, &app.metrics);
        }
        if core.is_stopped() {
            break;
        }
        let received = tokio::select! {
            biased;
            r = ctx.recv() => r,
            _ = timer.until(core.poll_timeout()) => continue,
        };
        // The wait may have outlasted the node's lease (a frozen node wakes with its mailbox
        // full): nothing taken after that is handled.
        if !may_act(&app, me) {
            return lease_lost(&name);
        }
        probe::emit(Event::RoomActing { sys, pid: me });
        let steps = match received {
            Received::Msg(RoomMsg::AddPeerChannel {
                peer_id,
                channel,
                ack,
            }) => {
                let pid = channel.pid();
                let now = rt::time::now();
                let added = core.add_peer(peer_id, pid, channel, now, || ctx.monitor(pid));
                let _ = ack.send(added);
                continue;
            }
            Received::Msg(RoomMsg::MediaEvent { peer_id, data }) => {
                core.media_event(&peer_id, &data, rt::time::now())
            }
            Received::Msg(RoomMsg::Peers(tx)) => {
                let _ = tx.send(core.peers());
                continue;
            }
            Received::Msg(RoomMsg::Info(tx)) => {
                let mut info = core.info();
                info.keyframe_waits = plane.keyframe_waits();
                let _ = tx.send(info);
                continue;
            }
            Received::Msg(RoomMsg::Plane(event)) => core.plane_event(event),
            Received::Down(d) => {
                tracing::debug!(room = %name, pid = %d.pid, reason = %d.reason, "down");
                core.down(d.pid, d.mref)
            }
        };
        execute(&mut ctx, plane.as_mut(), steps, &app.metrics);
    }
    probe::emit(Event::RoomStopping { sys, pid: me });
    // Closes every media connection before the name is free for a fresh room.
    drop(plane);
    // Give up the name before exiting: from here on new joins start a fresh room; joins already
    // queued here get their ack dropped and retry.
    app.rooms.unregister_own(&name, ctx.pid());
    while ctx.try_recv().is_some() {}
    tracing::info!(room = %name, "room stopped: empty");
    probe::emit(Event::RoomStoppedEmpty { sys, pid: me });
    ExitReason::Normal
}

/// Whether this room may act now: always on a single node; in a cluster, only while its claim's
/// lease is the node's and before its fence deadline (`ClusterRooms::room_may_act`).
fn may_act(app: &App, me: rt::Pid) -> bool {
    app.cluster.get().is_none_or(|c| c.room_may_act(me))
}

/// Ends a room whose node may no longer act for it: its peers' channels see it crash (not stop
/// normally), answer `phx_error`, and their clients rejoin on a node that may act.
fn lease_lost(name: &str) -> ExitReason {
    tracing::warn!(room = %name, "room ended: its node's lease is past its fence deadline");
    ExitReason::Error("lease_lost".into())
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

/// Carries out the core's steps. Never blocks on a peer: a channel whose mailbox is full is a
/// slow consumer and is killed.
fn execute(
    ctx: &mut Ctx<RoomMsg>,
    plane: &mut dyn MediaPlane,
    steps: Vec<Step<Addr<ChannelMsg>>>,
    metrics: &Metrics,
) {
    for step in steps {
        match step {
            Step::Plane(command) => plane.apply(command),
            Step::Demonitor(mref) => {
                ctx.demonitor(mref);
            }
            Step::Drop { to, reason } => {
                tracing::debug!(pid = %to.pid(), "peer dropped: no connect within the grace");
                if to.try_send(ChannelMsg::Dropped(reason)).is_err() {
                    ctx.system().kill(to.pid());
                }
            }
            Step::Push { to, data } => match to.try_send(ChannelMsg::MediaEvent(data)) {
                Ok(()) => {}
                Err(SendError::Full(_)) => {
                    // A slow consumer must not hold the room back: drop it; its DOWN removes it.
                    tracing::warn!(pid = %to.pid(), "peer channel backlog full: disconnecting it");
                    metrics.slow_consumer_dropped(SlowQueue::Channel);
                    probe::emit(Event::SlowConsumerDropped {
                        queue: probe::SlowQueue::Channel,
                    });
                    ctx.system().kill(to.pid());
                }
                // Already gone: its DOWN is on the way.
                Err(SendError::Dead(_)) => probe::emit(Event::RoomSendToGonePeer),
            },
        }
    }
}
