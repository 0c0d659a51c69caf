//! Typed probe events: what the product tells an observer about branches and promises, at the
//! moment they happen.
//!
//! Production code calls [`emit`] at the points worth observing (a name released, a DOWN sent,
//! a join retried after its room stopped, a branch that must never run). In a production build
//! `emit` is an empty inline function and every event is built from borrowed or `Copy` data, so
//! a call compiles to nothing. Under the simulation (and in this crate's unit tests) the event
//! is handed synchronously to the sink the current world installed with [`install`], inside the
//! step that produced it: an observer sees the exact order of events within one synchronous
//! step, which no scheduling can interleave.
//!
//! A sink must never await, draw randomness, or call back into the runtime that emitted the
//! event (it may run under the process table's lock): it only records and checks. It never
//! formats text unless it records a violation.

use std::fmt;

use super::process::{ExitReason, MonitorRef, Pid};

/// Which process table (one per server incarnation) an event is about. Allocated per world
/// (restarting from 1 in each), so an observer can key state by it across server restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SysId(pub u32);

/// Which registry an event is about (per world, like [`SysId`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RegId(pub u32);

/// How a registered name was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseBy {
    /// Its process exited (the registry's exit hook).
    Exit,
    /// Its process gave it up (`unregister_own`).
    Owner,
    /// A registration that found its process already dead was undone.
    Undo,
}

/// Which bounded queue a slow consumer overflowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowQueue {
    Channel,
    Socket,
}

/// What the product reports. Borrowed fields keep construction free when nobody listens.
#[derive(Debug)]
pub enum Event<'a> {
    // --- processes (src/rt) ---
    /// A process table came up.
    SystemStarted {
        sys: SysId,
    },
    /// A process exists (has a pid) but has not run yet.
    ProcessPrepared {
        sys: SysId,
        pid: Pid,
    },
    /// A process's body is about to run for the first time.
    ProcessStarted {
        sys: SysId,
        pid: Pid,
    },
    /// A process was tagged for observers (a room: its name).
    ProcessLabelled {
        sys: SysId,
        pid: Pid,
        label: &'a str,
    },
    /// A panic inside a process was caught by its crash boundary.
    ProcessPanicked {
        sys: SysId,
        pid: Pid,
        message: &'a str,
    },
    /// A process is gone: exit hooks ran and its DOWNs were sent.
    ProcessExited {
        sys: SysId,
        pid: Pid,
        reason: &'a ExitReason,
    },
    /// A process took a message out of its mailbox.
    MessageReceived {
        sys: SysId,
        pid: Pid,
    },
    /// `watcher` now monitors `target`.
    MonitorSet {
        sys: SysId,
        mref: MonitorRef,
        watcher: Pid,
        target: Pid,
    },
    /// `watcher` cancelled `mref`; `active` if the target had not exited yet.
    Demonitored {
        sys: SysId,
        mref: MonitorRef,
        watcher: Pid,
        active: bool,
    },
    /// A DOWN for `pid` was enqueued to `watcher`'s mailbox.
    DownSent {
        sys: SysId,
        mref: MonitorRef,
        watcher: Pid,
        pid: Pid,
    },
    /// `watcher` took the DOWN for `mref` out of its mailbox.
    DownReceived {
        sys: SysId,
        mref: MonitorRef,
        watcher: Pid,
    },
    /// Never: an envelope left a mailbox out of the order it was enqueued in (lost or
    /// overtaken), breaking the one FIFO for messages and DOWNs.
    MailboxOutOfOrder {
        pid: Pid,
        expected: u64,
        got: u64,
    },
    /// A `send` found the mailbox full and waits for a slot (or for the process to die).
    SendWaited,
    /// Never: a mailbox's free slots and queued messages no longer add up to its capacity
    /// (a permit returned twice or lost: the bound grows or shrinks for good).
    MailboxBoundBroken {
        pid: Pid,
        capacity: usize,
        free: usize,
        queued: usize,
    },
    /// Never: a DOWN reached a process that holds no such monitor (not pending, not flushed).
    DownForUnknownMonitor {
        sys: SysId,
        mref: MonitorRef,
        watcher: Pid,
    },

    // --- registry ---
    /// `name` granted to `pid` with generation `gen`.
    NameRegistered {
        sys: SysId,
        reg: RegId,
        name: &'a str,
        pid: Pid,
        gen: u64,
    },
    /// A release of `name` asked for by the grant `(pid, gen)`; `removed` is the grant it
    /// actually removed, if any.
    NameReleased {
        sys: SysId,
        reg: RegId,
        name: &'a str,
        pid: Pid,
        gen: u64,
        removed: Option<(Pid, u64)>,
        by: ReleaseBy,
    },
    /// `name` removed whoever held it (`unregister`).
    NameUnregistered {
        sys: SysId,
        reg: RegId,
        name: &'a str,
        removed: Option<(Pid, u64)>,
    },
    /// `Registry::start` lost the race: `loser` must never run.
    StartLostRace {
        sys: SysId,
        loser: Pid,
        winner: Pid,
    },

    // --- room ---
    RoomStarted {
        sys: SysId,
        pid: Pid,
    },
    /// The room decided to stop (its last peer is gone or nobody came); from here it must give
    /// up its name before it takes another message, so no join lands in a room that will not
    /// serve it.
    RoomStopping {
        sys: SysId,
        pid: Pid,
    },
    /// The room gave up its name and is about to exit (last peer gone or nobody came).
    RoomStoppedEmpty {
        sys: SysId,
        pid: Pid,
    },
    /// A room is about to handle what it took (a message, a DOWN) or a timer: an act of the
    /// name's owner. In a cluster it comes after the room checked that its node may still act
    /// for it.
    RoomActing {
        sys: SysId,
        pid: Pid,
    },
    RoomRefusedFull,
    PeerLeft,
    PeerDroppedNoConnect,
    SlowConsumerDropped {
        queue: SlowQueue,
    },
    /// A room's send to a peer's channel found it dead: its DOWN is on the way (a DOWN racing
    /// a send).
    RoomSendToGonePeer,
    /// Never: a DOWN for a channel the room does not hold (it flushes the refs it drops).
    RoomDownForUnknownPeer,

    // --- channel ---
    ChannelJoined,
    ChannelRoomDown,
    /// A joined channel's send to its room failed (full or dead): the channel fails.
    ChannelRoomUnreachable,
    JoinRefusedRoomLimit,
    /// Never: starting a room failed for a reason other than the race or the limit.
    RoomStartFailed,
    JoinRoomUnreachable,
    JoinRefusedByRoom,
    /// The room stopped with this join queued (its ack dropped): retried into a fresh room.
    JoinRetriedAfterRoomStop,
    JoinRetriedAfterRoomDown,
    /// A join's attempts together outlasted `channel::core::JOIN_BUDGET`: refused, so that it
    /// is answered within the client's patience.
    JoinOutOfTime,
    /// Never: a channel got a message other than `Stop` before it joined.
    ChannelMessageBeforeJoin,
    /// Never: a channel got the DOWN of a monitor it no longer holds (neither its socket's nor
    /// its current room's: a monitor it should have dropped).
    ChannelDownForUnknownMonitor,

    // --- socket (phoenix core and conn driver) ---
    UndecodableFrame,
    StaleFrameIgnored,
    PushFromUnjoinedChannel,
    ReplyFromUnjoinedChannel,
    /// Never: a channel pushed a payload that is not a JSON object.
    PushNotObject,
    JoinOutcomeOfForgottenChannel,
    /// Never: a channel answered one join twice.
    SecondJoinOutcome,

    // --- media session ---
    BroadcastOverBudget,
    SdpOfferWhileAnswerOutstanding,
    /// An answer kept lines of tracks whose publisher left while it was made, inactive.
    AnswerSilencedGoneTracks,
    StaleAnswerDropped,
    InboundTrackEnded,
    /// The plane reported voice activity of a track its publisher no longer publishes: a race
    /// with the track's end, dropped by the negotiation core.
    VoiceActivityOfGoneTrack,
    /// A subscriber's connection had no m-line left for a track: it was not announced there.
    OutOfMlines,
    MediaEventBeforeConnect,
    /// Never: a room's connect-grace timer fired with none of its peers past their grace.
    RoomWokeForNothing,
    /// Never: a channel in a room saw the room end normally (a room stops normally only once
    /// it has no peer left: the last one left, or the room dropped it first).
    RoomStoppedUnderPeer,
    /// Never: the media plane was handed a client's ICE candidate that is empty (a browser's
    /// end-of-candidates, which ICE needs nothing for) or for a peer it does not hold (one that
    /// never connected, or left): the negotiation core keeps both from it.
    PlaneGotUnwantedCandidate,
    /// Never: the plane was asked for a keyframe of a track no connection forwards.
    PlaneGotUnwantedKeyframeRequest,
    // --- cluster (src/cluster) ---
    /// A join found no room it could reach or start in the cluster (etcd unreachable, the node
    /// fenced, the owner's node unreachable): refused, and the client's rejoin tries again.
    ClusterJoinFailed,
    /// A room's claim won in etcd: the process `pid` (not started yet) owns `name` from
    /// `epoch`, as long as etcd holds `value` at the name's key on `lease`. Every act of the room
    /// (a message or DOWN it takes) must happen while that is still so.
    RoomClaimed {
        sys: SysId,
        pid: Pid,
        name: &'a str,
        epoch: i64,
        lease: i64,
        value: &'a [u8],
    },
    /// A channel joined a room on another node, through a room proxy.
    RemoteJoined,
    /// A proxy ended because its link went down (`noconnection`).
    ProxyNoconnection,
    /// A proxy ended with the DOWN of its far side's process, carried across a link.
    ProxyRemoteDown,
    /// A claim whose fate was unknown was sent again with its token.
    ClaimRetried,
    /// A lease of a fenced incarnation was revoked once a newer one acted: its rooms' names
    /// are free a TTL sooner.
    FencedLeaseRevoked,
    /// A claim was won after the node lost the lease it was made under: released unused.
    ClaimAnsweredTooLate,
    /// A room's release failed while its lease lived, and was tried again.
    ReleaseRetried,
    /// A claim was won after the node began to drain: the room never started, the claim was
    /// released.
    ClaimWonWhileDraining,

    /// Candidates the plane reported while the peer's answer was outstanding, sent after it:
    /// `held` of them, of at most `max` kept (the rest were dropped).
    HeldCandidatesFlushed {
        held: usize,
        max: usize,
    },
    /// The socket holds a frame for a pending join: `frames` and `bytes` held now, across its
    /// joining channels, against its bounds.
    FrameHeld {
        frames: usize,
        max_frames: usize,
        bytes: usize,
        max_bytes: usize,
    },
}

impl Event<'_> {
    /// A stable name, the key coverage counts it under.
    pub fn name(&self) -> &'static str {
        match self {
            Event::SystemStarted { .. } => "SystemStarted",
            Event::ProcessPrepared { .. } => "ProcessPrepared",
            Event::ProcessStarted { .. } => "ProcessStarted",
            Event::ProcessLabelled { .. } => "ProcessLabelled",
            Event::ProcessPanicked { .. } => "ProcessPanicked",
            Event::ProcessExited { .. } => "ProcessExited",
            Event::MessageReceived { .. } => "MessageReceived",
            Event::MonitorSet { .. } => "MonitorSet",
            Event::Demonitored { .. } => "Demonitored",
            Event::DownSent { .. } => "DownSent",
            Event::DownReceived { .. } => "DownReceived",
            Event::DownForUnknownMonitor { .. } => "DownForUnknownMonitor",
            Event::MailboxOutOfOrder { .. } => "MailboxOutOfOrder",
            Event::MailboxBoundBroken { .. } => "MailboxBoundBroken",
            Event::SendWaited => "SendWaited",
            Event::NameRegistered { .. } => "NameRegistered",
            Event::NameReleased { .. } => "NameReleased",
            Event::NameUnregistered { .. } => "NameUnregistered",
            Event::StartLostRace { .. } => "StartLostRace",
            Event::RoomStarted { .. } => "RoomStarted",
            Event::RoomStopping { .. } => "RoomStopping",
            Event::RoomStoppedEmpty { .. } => "RoomStoppedEmpty",
            Event::RoomActing { .. } => "RoomActing",
            Event::RoomRefusedFull => "RoomRefusedFull",
            Event::PeerLeft => "PeerLeft",
            Event::PeerDroppedNoConnect => "PeerDroppedNoConnect",
            Event::SlowConsumerDropped {
                queue: SlowQueue::Channel,
            } => "SlowConsumerDropped.channel",
            Event::SlowConsumerDropped {
                queue: SlowQueue::Socket,
            } => "SlowConsumerDropped.socket",
            Event::RoomDownForUnknownPeer => "RoomDownForUnknownPeer",
            Event::RoomSendToGonePeer => "RoomSendToGonePeer",
            Event::ChannelRoomUnreachable => "ChannelRoomUnreachable",
            Event::ChannelJoined => "ChannelJoined",
            Event::ChannelRoomDown => "ChannelRoomDown",
            Event::JoinRefusedRoomLimit => "JoinRefusedRoomLimit",
            Event::RoomStartFailed => "RoomStartFailed",
            Event::JoinRoomUnreachable => "JoinRoomUnreachable",
            Event::JoinRefusedByRoom => "JoinRefusedByRoom",
            Event::JoinRetriedAfterRoomStop => "JoinRetriedAfterRoomStop",
            Event::JoinRetriedAfterRoomDown => "JoinRetriedAfterRoomDown",
            Event::JoinOutOfTime => "JoinOutOfTime",
            Event::ChannelMessageBeforeJoin => "ChannelMessageBeforeJoin",
            Event::ChannelDownForUnknownMonitor => "ChannelDownForUnknownMonitor",
            Event::UndecodableFrame => "UndecodableFrame",
            Event::StaleFrameIgnored => "StaleFrameIgnored",
            Event::PushFromUnjoinedChannel => "PushFromUnjoinedChannel",
            Event::ReplyFromUnjoinedChannel => "ReplyFromUnjoinedChannel",
            Event::PushNotObject => "PushNotObject",
            Event::JoinOutcomeOfForgottenChannel => "JoinOutcomeOfForgottenChannel",
            Event::SecondJoinOutcome => "SecondJoinOutcome",
            Event::BroadcastOverBudget => "BroadcastOverBudget",
            Event::SdpOfferWhileAnswerOutstanding => "SdpOfferWhileAnswerOutstanding",
            Event::StaleAnswerDropped => "StaleAnswerDropped",
            Event::AnswerSilencedGoneTracks => "AnswerSilencedGoneTracks",
            Event::RoomWokeForNothing => "RoomWokeForNothing",
            Event::RoomStoppedUnderPeer => "RoomStoppedUnderPeer",
            Event::PlaneGotUnwantedCandidate => "PlaneGotUnwantedCandidate",
            Event::PlaneGotUnwantedKeyframeRequest => "PlaneGotUnwantedKeyframeRequest",
            Event::HeldCandidatesFlushed { held, max } if held >= max => "HeldCandidatesAtTheBound",
            Event::HeldCandidatesFlushed { .. } => "HeldCandidatesFlushed",
            Event::FrameHeld {
                frames, max_frames, ..
            } if frames >= max_frames => "FramesHeldAtTheBound",
            Event::FrameHeld { .. } => "FrameHeld",
            Event::InboundTrackEnded => "InboundTrackEnded",
            Event::VoiceActivityOfGoneTrack => "VoiceActivityOfGoneTrack",
            Event::OutOfMlines => "OutOfMlines",
            Event::ClusterJoinFailed => "ClusterJoinFailed",
            Event::RoomClaimed { .. } => "RoomClaimed",
            Event::RemoteJoined => "RemoteJoined",
            Event::ProxyNoconnection => "ProxyNoconnection",
            Event::ProxyRemoteDown => "ProxyRemoteDown",
            Event::ClaimRetried => "ClaimRetried",
            Event::FencedLeaseRevoked => "FencedLeaseRevoked",
            Event::ClaimAnsweredTooLate => "ClaimAnsweredTooLate",
            Event::ReleaseRetried => "ReleaseRetried",
            Event::ClaimWonWhileDraining => "ClaimWonWhileDraining",
            Event::MediaEventBeforeConnect => "MediaEventBeforeConnect",
        }
    }

    /// A branch that must not run in a healthy system: reaching it is a bug, whatever else
    /// happened (a "never" assertion).
    pub fn is_never(&self) -> bool {
        matches!(
            self,
            Event::DownForUnknownMonitor { .. }
                | Event::MailboxOutOfOrder { .. }
                | Event::MailboxBoundBroken { .. }
                | Event::RoomDownForUnknownPeer
                | Event::RoomStartFailed
                | Event::ChannelMessageBeforeJoin
                | Event::ChannelDownForUnknownMonitor
                | Event::PushNotObject
                | Event::SecondJoinOutcome
                | Event::RoomWokeForNothing
                | Event::RoomStoppedUnderPeer
                | Event::PlaneGotUnwantedCandidate
                | Event::PlaneGotUnwantedKeyframeRequest
        )
    }
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Hands `event` to the world's sink. Free in production: the body is empty there.
#[inline(always)]
pub fn emit(event: Event<'_>) {
    #[cfg(any(madsim, test))]
    sink::deliver(&event);
    #[cfg(not(any(madsim, test)))]
    let _ = event;
}

/// Allocates the id of a new process table (per world; 0 when nobody listens).
pub(crate) fn next_sys() -> SysId {
    #[cfg(any(madsim, test))]
    {
        SysId(sink::next_id())
    }
    #[cfg(not(any(madsim, test)))]
    {
        SysId(0)
    }
}

/// Allocates the id of a new registry (per world; 0 when nobody listens).
pub(crate) fn next_reg() -> RegId {
    #[cfg(any(madsim, test))]
    {
        RegId(sink::next_id())
    }
    #[cfg(not(any(madsim, test)))]
    {
        RegId(0)
    }
}

#[cfg(any(madsim, test))]
pub use sink::{install, SinkGuard};

#[cfg(any(madsim, test))]
mod sink {
    use std::cell::{Cell, RefCell};

    use super::Event;

    type Sink = Box<dyn FnMut(&Event<'_>)>;

    thread_local! {
        // A world runs on one thread; `install` resets both for each world, so nothing leaks
        // from one world to the next even when worlds share a thread.
        static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
        static NEXT_ID: Cell<u32> = const { Cell::new(0) };
    }

    /// Installs the current world's sink on this thread until the guard drops; ids restart.
    /// Events emitted while the sink itself runs (none should be) are not delivered.
    pub fn install(sink: impl FnMut(&Event<'_>) + 'static) -> SinkGuard {
        NEXT_ID.with(|n| n.set(0));
        SINK.with(|s| *s.borrow_mut() = Some(Box::new(sink)));
        SinkGuard(())
    }

    /// Removes the sink (and resets the ids) when dropped.
    pub struct SinkGuard(());

    impl Drop for SinkGuard {
        fn drop(&mut self) {
            // Take it out first: dropping the sink may drop state whose Drop emits.
            let old = SINK.with(|s| s.borrow_mut().take());
            drop(old);
            NEXT_ID.with(|n| n.set(0));
        }
    }

    pub(super) fn deliver(event: &Event<'_>) {
        // `try_with`: a process finished while the thread shuts down has nobody to tell.
        let _ = SINK.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if let Some(sink) = s.as_mut() {
                    sink(event);
                }
            }
        });
    }

    pub(super) fn next_id() -> u32 {
        // No world listening (production tests, a table built outside any world): no ids.
        let listening = SINK
            .try_with(|s| s.try_borrow().map_or(true, |s| s.is_some()))
            .unwrap_or(false);
        if !listening {
            return 0;
        }
        NEXT_ID
            .try_with(|n| {
                let id = n.get() + 1;
                n.set(id);
                id
            })
            .unwrap_or(0)
    }
}
