//! Coverage from the typed events the product emits (`videoroom::rt::probe`): each event is
//! counted under its stable name, so a campaign shows which interesting branches it reached (a
//! lost registration race, a join racing a room's stop, a slow consumer dropped...) without
//! reading log text. Counting is a map increment: no formatting on the probe path.

use std::collections::BTreeMap;

use videoroom::rt::probe::Event;

/// Races and branches the fixed campaign must reach ("sometimes" assertions): a campaign that
/// never reaches one proves nothing about it. Names are [`Event::name`]s or client-side
/// `reached` names.
pub const SOMETIMES: &[&str] = &[
    // Start-and-register lost the registration race (`AlreadyStarted`): the loser never runs.
    "StartLostRace",
    // A join queued in a room that stopped empty: the ack is dropped, the join retried.
    "JoinRetriedAfterRoomStop",
    // A room's send to a channel that had just died (its DOWN still on the way).
    "RoomSendToGonePeer",
    // A demonitor (a join given up, a peer dropped for the grace).
    "Demonitored",
    "ChannelRoomDown",
    "RoomStoppedEmpty",
    "RoomRefusedFull",
    "UndecodableFrame",
    "BroadcastOverBudget",
    "InboundTrackEnded",
    // The plane's candidates filled the buffer held for an outstanding answer.
    "HeldCandidatesAtTheBound",
    // A frame on a join_ref the connection let go of, dropped by the socket core.
    "StaleFrameIgnored",
    "client: sent on a stale join_ref",
    // Publish/unpublish/leave churn while the client's offer waits for its answer.
    "client: burst while an offer is open",
    "client: sdpAnswer applied",
    "client: tracksRemoved",
    // The plane's candidates trickle in any phase of a negotiation; they reach the client.
    "client: server candidate applied",
    // The media `disconnect` on a live channel, and `connect` again on it.
    "client: media disconnect on a live channel",
    "client: connected again on the same channel",
    // Frames behind a pending join, held by the socket until the reply.
    "client: pipelined frames behind a join",
    // A socket at its channel limit refuses one more.
    "client: tab refused at the channel limit",
    // Joins refused before any room is asked: bad names, unrouted topics, bad tokens.
    "client: trespasser refused",
    // An offer refusing a line the client receives on, or reviving a stopped track's line.
    "client: misused m-line answered",
    "client: revived a stopped track's line",
    // A binary message, refused with 1003 before anything after it is answered.
    "client: closed for a binary frame",
    // A frozen tab's silent socket, closed by the server's idle timeout.
    "client: frozen socket closed as idle",
    // A media event the server cannot parse, answered with an error cut to its limit.
    "client: malformed media event refused",
    // A malformed event's error exactly as long as the limit: it arrives whole, not cut.
    "client: a media error of exactly the limit arrives whole",
    // A push the live channel cannot take (`data` not a string, an unknown event), refused
    // with its own reason while the channel stays.
    "client: a push the channel cannot take refused",
    // Endpoint metadata one byte over the limit, answered with a media error, passed on to no one.
    "client: metadata over the limit refused",
    // A slow client's outbound queue bounded by its bytes, not its frame count.
    "server: outbound bytes past half the budget",
    // A publisher left while a subscriber's answer was being made: its lines go inactive.
    "AnswerSilencedGoneTracks",
    // A metadata update equal to what the room holds, which the room must not pass on.
    "client: unchanged metadata sent again",
    // A browser's end-of-candidates, which the server must keep from its plane.
    "client: end-of-candidates sent",
    // Voice activity reaching a client that knows the track.
    "client: voice activity heard",
    // The plane's voice report of a track that had stopped (or whose publisher left) by the
    // time the room read it: dropped, never sent to anyone.
    "VoiceActivityOfGoneTrack",
    // A connection out of m-lines: a track not announced to one peer (voice activity then
    // must not reach it either).
    "OutOfMlines",
    // Track metadata of exactly the server's limit, which it must take and pass on.
    "client: track metadata of exactly the limit passed on",
    // A metadata update sent within the peer's update burst, checked as heard by a peer that
    // heard updates of it before and after (the budget may drop only what exceeds the burst).
    "oracle: update within the budget heard between two others",
    // A frame behind a pending join that fills the socket's held-byte bound exactly.
    "client: pipelined a frame of exactly the held-byte bound",
    // A retired m-line (its track gone, an inactive answer since) carrying the next track of
    // its kind: connections stay as small as what they receive at once.
    "client: recycled m-line carries a new track",
    // A client that shares more than the server takes: its newest tracks past the limit of
    // published tracks answered inactive, the ones it held kept.
    "client: a track over the publishing limit left inactive",
    // A track's metadata update (a mute) reaching a subscriber.
    "client: trackUpdated",
    // Frames over the size limit (1009), and a join with more frames held behind it than
    // the socket keeps (1008).
    "client: closed for an oversized frame",
    "client: closed for too many held frames",
    // Slow consumers dropped, by the channel's queue and by the socket's.
    "SlowConsumerDropped.channel",
    "SlowConsumerDropped.socket",
    // Candidates held for an outstanding answer, sent once it went out.
    "HeldCandidatesFlushed",
    // A graceful restart's 1012 close reaching a client before the node goes down.
    "client: closed 1012 by a graceful restart",
];

/// Event counts of one world, by event name. Keyed by the name's address (names are static
/// strings, one per event kind), so counting is an integer lookup, not string comparisons.
#[derive(Clone, Default)]
pub struct Counts(BTreeMap<usize, (&'static str, u64)>);

impl Counts {
    pub fn count(&mut self, e: &Event<'_>) {
        let name = e.name();
        self.0.entry(name.as_ptr() as usize).or_insert((name, 0)).1 += 1;
    }

    pub fn get(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for (name, n) in self.0.values() {
            *out.entry(*name).or_default() += n;
        }
        out
    }
}
