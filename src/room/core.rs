//! The room's decisions, sans-IO: who may take a slot (the room-full refusal), who is dropped
//! for not connecting within the grace, which peer the media session's words go to, and when
//! the room stops (nobody came within the linger time, or its last peer is gone).
//!
//! The actor (`room::run`) feeds it joins, media and plane events, DOWNs and the time, and
//! executes the [`Step`]s it returns in order. It never touches a mailbox, a timer, a monitor
//! or the registry: the monitor of a new peer is made by the caller's closure, so this core can
//! be stepped in unit tests without a runtime. `C` is the handle of a peer's channel (its
//! mailbox address in the actor).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::engine::{Negotiation, Out, PlaneCommand, PlaneEvent, Session, TrackNegotiation};
use crate::messages::RoomInfo;
use crate::rt::probe::{self, Event};
use crate::rt::{MonitorRef, Pid};
use crate::shared_text::SharedText;

use super::grace::ConnectGrace;

/// The refusal a join gets when every slot is taken.
pub const ROOM_FULL: &str = "room is full";

/// What the actor must do, in order.
#[derive(Debug, PartialEq)]
pub enum Step<C> {
    /// Push a media event to a peer's channel. A channel whose mailbox is full is a slow
    /// consumer: kill it (its DOWN removes it).
    Push { to: C, data: SharedText },
    /// Apply a command to the room's media plane.
    Plane(PlaneCommand),
    /// Stop watching a peer the room let go of.
    Demonitor(MonitorRef),
    /// Tell a dropped peer's channel why (it closes); kill it if it cannot be told.
    Drop { to: C, reason: String },
}

struct Slot<C> {
    pid: Pid,
    channel: C,
    mref: MonitorRef,
}

pub struct RoomCore<C> {
    max_peers: usize,
    /// While nobody has joined yet: when the room gives up waiting.
    linger_until: Option<Instant>,
    peers: BTreeMap<String, Slot<C>>,
    by_pid: BTreeMap<Pid, String>,
    grace: ConnectGrace,
    session: Session<TrackNegotiation>,
    /// The session's clock (its update budgets) counts from here.
    started: Instant,
    stopped: bool,
}

impl<C: Clone> RoomCore<C> {
    pub fn new(
        max_peers: usize,
        linger: Duration,
        connect_grace: Duration,
        session: Session<TrackNegotiation>,
        now: Instant,
    ) -> Self {
        RoomCore {
            max_peers,
            linger_until: Some(now + linger),
            peers: BTreeMap::new(),
            by_pid: BTreeMap::new(),
            grace: ConnectGrace::new(connect_grace),
            session,
            started: now,
            stopped: false,
        }
    }

    /// Whether the room has stopped: it must give up its name and exit, taking nothing more.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// A channel asks to join as `peer_id`. Refused when every slot is taken; otherwise the
    /// room watches it (`monitor`) and it holds a slot from now, in the grace until it connects.
    pub fn add_peer(
        &mut self,
        peer_id: String,
        pid: Pid,
        channel: C,
        now: Instant,
        monitor: impl FnOnce() -> MonitorRef,
    ) -> Result<(), String> {
        if self.stopped {
            // The actor takes nothing once stopped; a join here would be lost with the room.
            return Err("room stopped".into());
        }
        if self.peers.len() >= self.max_peers {
            probe::emit(Event::RoomRefusedFull);
            return Err(ROOM_FULL.into());
        }
        let mref = monitor();
        self.linger_until = None;
        self.by_pid.insert(pid, peer_id.clone());
        self.grace.update(&peer_id, false, now);
        self.peers.insert(peer_id, Slot { pid, channel, mref });
        Ok(())
    }

    /// A media event from a peer's client (ignored from anyone who is not a peer).
    pub fn media_event(&mut self, peer_id: &str, data: &str, now: Instant) -> Vec<Step<C>> {
        if !self.peers.contains_key(peer_id) {
            return Vec::new();
        }
        self.session
            .set_clock(now.saturating_duration_since(self.started));
        let outs = self.session.handle_event(peer_id, data);
        let connected = self.session.roster().contains(peer_id);
        self.grace.update(peer_id, connected, now);
        self.steps(outs)
    }

    /// A report of the room's media plane.
    pub fn plane_event(&mut self, event: PlaneEvent) -> Vec<Step<C>> {
        let outs = self.session.handle_plane_event(event);
        self.steps(outs)
    }

    /// A monitored process went down. Only the current monitor of a peer's channel removes it
    /// (the others are told); the room stops when its last peer is gone.
    pub fn down(&mut self, pid: Pid, mref: MonitorRef) -> Vec<Step<C>> {
        let Some(peer_id) = self.by_pid.get(&pid).cloned() else {
            probe::emit(Event::RoomDownForUnknownPeer);
            return Vec::new();
        };
        // Another monitor of the same process leaves the peer (and its real DOWN) in place.
        if self.peers.get(&peer_id).is_none_or(|p| p.mref != mref) {
            return Vec::new();
        }
        self.by_pid.remove(&pid);
        self.peers.remove(&peer_id);
        self.grace.remove(&peer_id);
        probe::emit(Event::PeerLeft);
        let outs = self.session.remove_peer(&peer_id);
        let steps = self.steps(outs);
        if self.peers.is_empty() {
            self.stopped = true;
        }
        steps
    }

    /// When [`Self::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        self.linger_until.or_else(|| self.grace.poll_timeout())
    }

    /// The time is `now`: peers past their connect grace are dropped (told why, forgotten by
    /// the session, which tells nobody: they were never in it); a room nobody came to, or whose
    /// last peer was just dropped, stops.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Step<C>> {
        if self.linger_until.is_some_and(|t| now >= t) {
            self.stopped = true;
            return Vec::new();
        }
        let mut steps = Vec::new();
        if self.grace.poll_timeout().is_none_or(|d| d > now) {
            return steps;
        }
        let reason = self.grace.reason();
        let mut dropped = 0;
        for peer_id in self.grace.expired(now) {
            let Some(p) = self.peers.remove(&peer_id) else {
                continue;
            };
            dropped += 1;
            self.by_pid.remove(&p.pid);
            steps.push(Step::Demonitor(p.mref));
            probe::emit(Event::PeerDroppedNoConnect);
            let outs = self.session.remove_peer(&peer_id);
            steps.extend(self.steps(outs));
            steps.push(Step::Drop {
                to: p.channel,
                reason: reason.clone(),
            });
        }
        if dropped == 0 {
            // The grace said a peer was due and none of the room's is: it waits on a peer that
            // already left, or its clock is wrong and the room would wake again at once.
            probe::emit(Event::RoomWokeForNothing);
        }
        if self.peers.is_empty() {
            self.stopped = true;
        }
        steps
    }

    /// The peers, as (peer id, channel pid), in peer-id order.
    pub fn peers(&self) -> Vec<(String, Pid)> {
        self.peers
            .iter()
            .map(|(id, p)| (id.clone(), p.pid))
            .collect()
    }

    /// The room as observers see it.
    pub fn info(&self) -> RoomInfo {
        let s = &self.session;
        RoomInfo {
            peers: self.peers(),
            endpoints: s.endpoints().map(str::to_string).collect(),
            metadata: s
                .endpoints()
                .map(|id| {
                    let m = s.roster().metadata(id).cloned().unwrap_or_default();
                    (id.to_string(), m)
                })
                .collect(),
            negotiation_peers: s.negotiation().peer_count(),
            tracks: s
                .endpoints()
                .flat_map(|id| {
                    let published = s.negotiation().published_tracks(id);
                    published
                        .into_iter()
                        .map(move |(t, info)| (id.to_string(), t, info.metadata))
                })
                .collect(),
            keyframe_waits: Vec::new(),
        }
    }

    /// The session's outputs as steps: words to a peer that is no longer here are dropped.
    fn steps(&self, outs: Vec<Out>) -> Vec<Step<C>> {
        outs.into_iter()
            .filter_map(|out| match out {
                Out::Plane(c) => Some(Step::Plane(c)),
                Out::To { peer, data } => self.peers.get(&peer).map(|p| Step::Push {
                    to: p.channel.clone(),
                    data,
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
