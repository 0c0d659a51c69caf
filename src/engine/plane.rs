//! The media plane seam: the asynchronous side of the SFU (ICE, DTLS, SRTP, RTP forwarding)
//! behind a synchronous interface the room drives.
//!
//! The negotiation core decides everything a client can observe (which mid carries which track,
//! which stream id, which direction); the plane executes those decisions and reports what only
//! the network can tell (the answer SDP text, local candidates, connectivity, media flow).
//!
//! This module owns the vocabulary between the two: [`PlaneCommand`] (core → plane),
//! [`PlaneEvent`] (plane → core, through a [`PlaneSink`]) and the [`MediaPlane`] trait. It must
//! never name a webrtc crate type: the simulation implements the trait with plain data
//! ([`FakePlane`](super::FakePlane)), and the production implementation is compiled only where
//! real networking exists.

use std::fmt;
use std::sync::Arc;

use super::events::TrackId;
use super::session::PeerId;

/// The media kinds the client negotiates (0.5.3 never opens a data channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    /// The SDP `m=` media token.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

/// What the answer does with one m-line of the client's offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MLineRole {
    /// The peer publishes `track_id` on this m-line (the offer says `sendonly`). The answer says
    /// `recvonly`; the plane receives the track and makes it available to
    /// [`MLineRole::Outbound`] m-lines of other peers under (`peer`, `track_id`).
    Inbound { kind: MediaKind, track_id: TrackId },
    /// The plane forwards `publisher`'s track `track_id` to this peer on this m-line (the offer
    /// says `recvonly`). The answer says `sendonly` with `a=msid:<stream_id> <track_id>` and one
    /// `a=ssrc:<ssrc> cname:<…>` line. `stream_id` is the same for every track of one
    /// publisher, so the browser groups a publisher's audio and video into one `MediaStream`.
    ///
    /// The source track may not be flowing yet (its publisher's answer can still be in flight,
    /// or media has not started): the plane sets the sender up anyway and starts forwarding
    /// when packets arrive. If the source ends, the sender stays silent until a later offer
    /// marks this m-line inactive.
    Outbound {
        kind: MediaKind,
        publisher: PeerId,
        track_id: TrackId,
        stream_id: String,
    },
    /// The answer says `inactive` (a removed track, a slot with nothing to send, or a media
    /// kind the server does not handle). A port-0 (rejected) m-line stays port 0.
    Inactive,
}

/// One m-line of an offer with the core's decision for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MLine {
    pub mid: String,
    pub role: MLineRole,
}

/// A client's SDP offer with everything the plane must not decide itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneOffer {
    /// Per-peer, increasing; echoed in [`PlaneEvent::Answer`] so a late answer to a superseded
    /// negotiation is recognized and dropped.
    pub negotiation: u64,
    /// The offer SDP exactly as the browser produced it.
    pub sdp: String,
    /// One entry per m-line of `sdp`, in SDP order.
    pub mlines: Vec<MLine>,
}

/// What the core asks of the plane. The room applies them in order with
/// [`MediaPlane::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaneCommand {
    AddPeer {
        peer: PeerId,
    },
    RemovePeer {
        peer: PeerId,
    },
    Offer {
        peer: PeerId,
        offer: PlaneOffer,
    },
    RemoteCandidate {
        peer: PeerId,
        candidate: String,
        sdp_m_line_index: Option<u32>,
    },
    RequestKeyframe {
        publisher: PeerId,
        track_id: TrackId,
    },
}

/// What the plane reports, asynchronously, through its [`PlaneSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaneEvent {
    /// The answer to `PlaneOffer { negotiation, .. }` of `peer`: the SDP text, or why none could
    /// be produced.
    Answer {
        peer: PeerId,
        negotiation: u64,
        result: Result<String, String>,
    },
    /// A local ICE candidate of `peer`'s connection, as the SDP attribute value
    /// (`candidate:…`, without `a=`). The client is told `sdpMLineIndex: 0` (everything is
    /// bundled on the first m-line).
    LocalCandidate { peer: PeerId, candidate: String },
    /// RTP of `peer`'s published track `track_id` started arriving.
    TrackStarted { peer: PeerId, track_id: TrackId },
    /// `peer`'s published track `track_id` stopped (its m-line went inactive, or the peer's
    /// connection closed).
    TrackEnded { peer: PeerId, track_id: TrackId },
    /// `peer`'s published audio track `track_id` started (`speech`) or stopped carrying voice,
    /// judged from the audio levels its packets carry (see [`super::vad`]). Only tracks whose
    /// publisher negotiated the audio-level header extension report it; a track starts silent.
    VoiceActivity {
        peer: PeerId,
        track_id: TrackId,
        speech: bool,
    },
    /// `peer`'s connection reached connected (ICE and DTLS), after its first answer or after an
    /// ICE restart.
    Connected { peer: PeerId },
    /// `peer`'s connection failed for good (ICE or DTLS failure).
    Failed { peer: PeerId, reason: String },
}

impl PlaneEvent {
    /// The peer the event is about (for a track event: its publisher).
    pub fn peer(&self) -> &str {
        match self {
            PlaneEvent::Answer { peer, .. }
            | PlaneEvent::LocalCandidate { peer, .. }
            | PlaneEvent::TrackStarted { peer, .. }
            | PlaneEvent::TrackEnded { peer, .. }
            | PlaneEvent::VoiceActivity { peer, .. }
            | PlaneEvent::Connected { peer }
            | PlaneEvent::Failed { peer, .. } => peer,
        }
    }
}

/// Where a plane delivers its events; given to it by the room when the plane is built.
///
/// Callable from any thread or task, never blocks, and may be called after the room has stopped
/// (the event is then dropped). The room turns each event into a mailbox message without
/// reordering, so events of one plane reach the core in the order the plane sent them.
#[derive(Clone)]
pub struct PlaneSink(Arc<dyn Fn(PlaneEvent) + Send + Sync>);

impl PlaneSink {
    pub fn new(f: impl Fn(PlaneEvent) + Send + Sync + 'static) -> Self {
        PlaneSink(Arc::new(f))
    }

    pub fn send(&self, event: PlaneEvent) {
        (self.0)(event)
    }
}

impl fmt::Debug for PlaneSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlaneSink")
    }
}

/// Builds the plane of each room from its name and the sink the room gives it. One per
/// server, kept in [`App`](crate::app::App).
#[derive(Clone)]
pub struct PlaneFactory(Arc<BuildPlane>);

type BuildPlane = dyn Fn(&str, PlaneSink) -> Box<dyn MediaPlane> + Send + Sync;

impl PlaneFactory {
    pub fn new(f: impl Fn(&str, PlaneSink) -> Box<dyn MediaPlane> + Send + Sync + 'static) -> Self {
        PlaneFactory(Arc::new(f))
    }

    /// The network-free plane: what tests and the simulation run.
    pub fn fake() -> Self {
        PlaneFactory::new(|_room, sink| Box::new(super::FakePlane::new(sink)))
    }

    /// The network-free plane answering after a seeded delay below `max` (see
    /// [`FakePlane::with_latency`](super::FakePlane::with_latency)): what the simulation runs.
    pub fn fake_with_latency(max: std::time::Duration) -> Self {
        Self::fake_trickling(max, 1)
    }

    /// Fake planes answering within `max` whose trickles report `burst` candidates each.
    pub fn fake_trickling(max: std::time::Duration, burst: usize) -> Self {
        Self::fake_simulated(max, burst, false)
    }

    /// As [`Self::fake_trickling`], reporting voice activity too where `voices` (see
    /// [`FakePlane::voicing`](super::FakePlane::voicing)).
    pub fn fake_simulated(max: std::time::Duration, burst: usize, voices: bool) -> Self {
        PlaneFactory::new(move |_room, sink| {
            Box::new(
                super::FakePlane::with_latency(sink, max)
                    .trickling(burst)
                    .voicing(voices),
            )
        })
    }

    pub fn build(&self, room: &str, sink: PlaneSink) -> Box<dyn MediaPlane> {
        (self.0)(room, sink)
    }
}

impl fmt::Debug for PlaneFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlaneFactory")
    }
}

/// The media side of one room.
///
/// Every method returns at once: slow work (gathering, handshakes, answering) runs on the
/// plane's own tasks and reports through the sink. Methods are called from the room actor only,
/// in the order the core decided them. A method about a peer that was never added or already
/// removed is ignored. Dropping the plane closes every connection; it reports nothing more
/// after that.
///
/// Ordering the core relies on:
/// - For one peer, an [`PlaneEvent::Answer`] comes before any [`PlaneEvent::LocalCandidate`]
///   gathered for that negotiation (the core holds candidates back while an answer is
///   outstanding anyway, because a browser rejects candidates before its remote description).
/// - Exactly one `Answer` per `offer` call unless the peer is removed first.
pub trait MediaPlane: Send {
    /// A peer joined the room. No connection exists until its first offer.
    fn add_peer(&mut self, peer: &str);

    /// A peer left: close its connection, stop forwarding its tracks to everyone and stop
    /// every sender that forwarded to it. Sends no event about the peer afterwards (a late
    /// one is harmless: the core drops events for unknown peers).
    fn remove_peer(&mut self, peer: &str);

    /// Answer `peer`'s offer.
    ///
    /// The first offer creates the peer's connection; every later one is a renegotiation that
    /// carries new ICE credentials (the client calls `restartIce()` on every `offerData` after
    /// the first), so the plane must accept it as an ICE restart and answer with fresh
    /// credentials of its own.
    ///
    /// The answer SDP must contain every m-line of the offer, in order, with the same mids, all
    /// in one BUNDLE group, and per m-line the direction of its [`MLine::role`]: `recvonly` for
    /// `Inbound`, `sendonly` with `a=msid:<stream_id> <track_id>` for `Outbound`, `inactive`
    /// for `Inactive`. Codecs are chosen from those the offer lists on that m-line (payload
    /// types are the offerer's, so forwarding rewrites them per subscriber). `a=setup:passive`,
    /// `a=rtcp-mux`.
    ///
    /// Inbound tracks that were in an earlier offer and are not `Inbound` in this one have ended;
    /// outbound senders whose m-line is now `Inactive` stop.
    fn offer(&mut self, peer: &str, offer: PlaneOffer);

    /// A candidate the browser gathered (`candidate:…`). Candidates that arrive before the
    /// peer's first offer, or that do not parse, are dropped.
    fn remote_candidate(&mut self, peer: &str, candidate: &str, sdp_m_line_index: Option<u32>);

    /// Ask `publisher` for a keyframe on `track_id` (PLI, or FIR where PLI was not
    /// negotiated): a subscriber just got the track and shows nothing until one arrives.
    /// Subscribers' own PLIs are relayed by the plane without the core.
    fn request_keyframe(&mut self, publisher: &str, track_id: &str);

    /// Subscribers that receive a video track whose publisher sends, over a connected
    /// transport, and have had no keyframe of it since they started receiving it: a frozen
    /// picture. Only the fake plane tracks this (for the simulation's oracles); a real plane
    /// answers empty.
    fn keyframe_waits(&self) -> Vec<(PeerId, TrackId)> {
        Vec::new()
    }

    /// Applies one command of the core.
    fn apply(&mut self, command: PlaneCommand) {
        match command {
            PlaneCommand::AddPeer { peer } => self.add_peer(&peer),
            PlaneCommand::RemovePeer { peer } => self.remove_peer(&peer),
            PlaneCommand::Offer { peer, offer } => self.offer(&peer, offer),
            PlaneCommand::RemoteCandidate {
                peer,
                candidate,
                sdp_m_line_index,
            } => self.remote_candidate(&peer, &candidate, sdp_m_line_index),
            PlaneCommand::RequestKeyframe {
                publisher,
                track_id,
            } => self.request_keyframe(&publisher, &track_id),
        }
    }
}
