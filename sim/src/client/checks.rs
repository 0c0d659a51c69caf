//! The client's promise checks on what the server closed, refused or let pass: each judged
//! from what this client itself saw and sent, never from the world's configuration alone where
//! the client can know better. Only observes and records violations; never sends.

use std::time::Duration;

use videoroom::phoenix::Frame;
use videoroom::rt::time;

use super::Client;
use crate::swarm::Action;
use crate::tabs::{Refusal, TOO_MANY_CHANNELS};

impl Client {
    /// The server closed the connection as idle (1001; the simulated server never shuts down
    /// otherwise). It saw this client's answered heartbeat no earlier than it was sent, so the
    /// idle timeout cannot have run out before that send time plus the timeout.
    pub(super) fn check_idle_close(&mut self) {
        let idx = self.idx;
        let idle = self.swarm.idle_timeout;
        self.oracles.reached("client: socket closed as idle");
        if let Some(t) = self.alive_at {
            let quiet = time::now().saturating_duration_since(t);
            self.oracles.check(quiet >= idle, || {
                format!("c{idx}: closed as idle {quiet:?} after a heartbeat the server answered (idle timeout {idle:?})")
            });
        }
    }

    /// A 1012 close (service restart) comes only from a graceful restart of the client's
    /// server begun after its connection was opened.
    pub(super) fn check_restart_close(&mut self) {
        let idx = self.idx;
        self.oracles
            .reached("client: closed 1012 by a graceful restart");
        let now = self.oracles.graceful_restarts(self.server.ip());
        self.oracles.check(now > self.restarts_before, || {
            format!("c{idx}: closed 1012 (server restart) though its server began no graceful restart since the connection opened")
        });
    }

    /// A squatter's slot is dropped at the connect grace after its join, whatever it sends
    /// meanwhile (only `connect` stops the clock). The socket answers frames in order, so a
    /// heartbeat it answered that went out well after the grace had passed comes after the
    /// `dropped` push.
    pub(super) fn check_grace_kept(&mut self, heartbeat_sent: time::Instant) {
        let (Some(joined), None) = (self.joined_at, &self.dropped) else {
            return;
        };
        // A squatter that sent `connect` may have got in (then the grace no longer runs).
        if !self.squatter || self.late_connected || !self.chan.as_ref().is_some_and(|c| c.joined) {
            return;
        }
        let grace = videoroom::app::Limits::default().connect_grace;
        let held = heartbeat_sent.saturating_duration_since(joined);
        let idx = self.idx;
        self.oracles
            // The drop crosses the room, the channel and the socket, each of which may lag.
            .check(held <= grace + Duration::from_millis(250), || {
                format!("c{idx} still holds its slot {held:?} after its join without ever connecting (grace {grace:?})")
            });
    }

    /// The server closed the connection for too many frames held for pending joins (1008): it
    /// holds at most `MAX_HELD_FRAMES`, and at most the frame size limit in bytes, and gives
    /// them back as it answers each join, so the client must have sent more than that while
    /// some join of its was unanswered.
    pub(super) fn check_held_close(&mut self) {
        let (idx, peak, bytes) = (self.idx, self.held_peak, self.held_bytes_peak);
        let max = videoroom::phoenix::MAX_HELD_FRAMES;
        let max_bytes = videoroom::phoenix::SocketConfig::default().max_frame_bytes;
        self.oracles
            .reached("client: closed for too many held frames");
        self.oracles.check(peak > max || bytes > max_bytes, || {
            format!("c{idx}: closed for too many frames held for a pending join, but it never sent more than {peak} frames ({bytes} bytes) while a join was pending (the socket holds {max}, {max_bytes} bytes)")
        });
    }

    /// A server `phx_close` is allowed only where the server promises one: the reply to the
    /// client's own `phx_leave` (S11), the old channel of its duplicate join (S15), a channel
    /// the room dropped after telling why (`dropped`, a squatter past the connect grace).
    pub(super) fn check_close_allowed(&mut self, jr: &str, topic: &str) {
        let idx = self.idx;
        let allowed =
            self.left.contains(jr) || self.replaced.contains(jr) || self.dropped_on.contains(jr);
        self.oracles.check(allowed, || {
            format!("server closed c{idx}'s channel jr {jr} on {topic} without an allowed reason")
        });
    }

    /// A refusal only for a reason the server may give in this world (README: a full room, the
    /// room limit, a join that crashed or could not start its room under faults).
    pub(super) fn check_refusal(&mut self, reason: &str) {
        let idx = self.idx;
        let sw = &self.swarm;
        let has = |f: &str| sw.faults.iter().any(|x| x.name() == f);
        // Slots held by peers whose client already moved on: a connection the server has not
        // yet seen die (network faults, a dropped socket), or the old channel of a duplicate
        // join whose exit the room has not yet processed.
        let ghosts = ["clog", "partition", "loss", "latency", "socket_drop"]
            .iter()
            .any(|f| has(f))
            || self.weight(Action::Disconnect) > 0
            || self.weight(Action::Duplicate) > 0
            || self.weight(Action::Burst) > 0
            || self.weight(Action::Stale) > 0
            // A channel killed as a slow consumer (or whose room's queue was full) holds its
            // slot until the room has its DOWN; its client may already be rejoining.
            || sw.queue_cap > 0;
        let max_rooms = sw
            .max_rooms
            .unwrap_or(videoroom::app::Limits::default().max_rooms);
        let cluster_faults = sw.cluster
            && [
                "server_restart",
                "node_split",
                "etcd_cut",
                "node_pause",
                "etcd_restart",
                "latency",
                "loss",
            ]
            .iter()
            .any(|f| has(f));
        let allowed = match reason {
            "room is full" => sw.clients > sw.max_peers_per_room || ghosts,
            r if r == videoroom::channel::ROOM_LIMIT_REASON => max_rooms < sw.rooms,
            // Its other tabs hold the socket's channels.
            TOO_MANY_CHANNELS => self.weight(Action::Tabs) > 0 || self.weight(Action::Trespass) > 0,
            // The channel died before answering: killed by a fault, or its socket's mailbox
            // was full when it answered.
            "join crashed" => has("channel_crash") || sw.queue_cap > 0,
            // The room kept dying under the join, or its mailbox stayed full.
            // In a cluster also: the room's claim outlives its room for a moment (its release
            // follows its exit), so joins that reach the dead epoch can run out of attempts.
            "failed to start room" => {
                has("room_crash") || has("engine_crash") || sw.queue_cap > 0 || cluster_faults
            }
            // etcd or the room's owner node unreachable for a while.
            r if r == videoroom::channel::UNAVAILABLE_REASON => cluster_faults,
            _ => false,
        };
        self.oracles.reached("client: join refused");
        self.oracles.check(allowed, || {
            format!("c{idx}: join refused for {reason:?}, which this world cannot justify")
        });
    }

    /// A tab's refused join: a trespasser only for the reason it had to be refused with (or
    /// the socket's channel limit, counted first, or a crash the world can justify); any other
    /// tab as the client's own channel.
    pub(super) fn check_tab_refusal(&mut self, topic: &str, r: Refusal) {
        let Some(expected) = r.expected else {
            if r.reason != TOO_MANY_CHANNELS {
                self.check_refusal(&r.reason);
            }
            return;
        };
        if r.reason == expected {
            self.oracles.reached("client: trespasser refused");
        } else if r.reason == "join crashed" || r.reason == TOO_MANY_CHANNELS {
            self.check_refusal(&r.reason);
        } else {
            let idx = self.idx;
            self.oracles.fail(format!(
                "c{idx}: join of {topic:?} refused for {:?}, where the reason is {expected:?}",
                r.reason
            ));
        }
    }

    /// A push carries a join_ref this connection joined with. Once the current channel has
    /// joined, nothing may arrive on an older channel of this connection but the `phx_close` of
    /// the one a duplicate join replaced (S15): the server forgot the older ones before it
    /// answered the join.
    pub(super) fn check_not_stale(&mut self, f: &Frame, current: bool) {
        let Some(jr) = &f.join_ref else { return };
        if !self.on_conn.contains(jr) {
            let idx = self.idx;
            self.oracles.fail(format!(
                "c{idx}: {} on {} with join_ref {jr}, which this connection never joined with",
                f.event, f.topic
            ));
            return;
        }
        let Some(c) = self.chan.as_ref().filter(|c| c.joined) else {
            return;
        };
        if current || (f.event == "phx_close" && self.replaced.contains(jr)) {
            return;
        }
        let idx = self.idx;
        let (event, topic, cur) = (&f.event, &f.topic, &c.join_ref);
        self.oracles.fail(format!(
            "c{idx}: {event} on {topic} with older join_ref {jr} after channel {cur} joined"
        ));
    }
}

/// Tracks announced for `endpoint` (README: a client publishes only its own tracks): each id is
/// in the endpoint's own stream (`<endpoint>:`) and within the id length limit, and no id is
/// announced for two endpoints.
pub(super) fn track_owners(
    oracles: &crate::oracle::Oracles,
    who: &str,
    owners: &mut std::collections::BTreeMap<String, String>,
    endpoint: &str,
    tracks: &serde_json::Value,
) {
    for id in tracks.as_object().into_iter().flatten().map(|(k, _)| k) {
        let own = id
            .strip_prefix(endpoint)
            .is_some_and(|r| r.starts_with(':'));
        oracles.check(own && id.len() <= endpoint.len() + 1 + 256, || {
            format!("{who}: track {id:.80} announced for endpoint {endpoint}, not of its stream or too long")
        });
        let meta = &tracks[id]["metadata"];
        check_track_metadata(oracles, who, id, meta);
        if let Some(first) = owners.insert(id.clone(), endpoint.to_owned()) {
            oracles.check(first == endpoint, || {
                format!(
                    "{who}: track {id:.80} announced for {endpoint}, already announced for {first}"
                )
            });
        }
    }
}

/// A track's metadata names the track it was sent for, when its publisher put one in (only
/// updates do): the server keeps each track's metadata with that track, and passes on none
/// longer than its limit (README "Limits"; the publisher pads some to exactly it, and one byte
/// over).
fn check_track_metadata(
    oracles: &crate::oracle::Oracles,
    who: &str,
    id: &str,
    meta: &serde_json::Value,
) {
    if let Some(named) = meta["track"].as_str() {
        oracles.check(named == id, || {
            format!("{who}: track {id:.80} carries the metadata of track {named:.80}")
        });
    }
    if let Some(pad) = meta["pad"].as_str() {
        let (len, limit) = (
            meta.to_string().len(),
            videoroom::engine::NegotiationConfig::default().max_track_metadata_bytes,
        );
        oracles.check(len <= limit, || {
            format!("{who}: track {id:.80} metadata of {len} bytes passed on (limit {limit})")
        });
        if len == limit && !pad.is_empty() {
            oracles.reached("client: track metadata of exactly the limit passed on");
        }
    }
}

/// `trackUpdated`: only for a track announced for that endpoint this session, with its own
/// metadata, in the order its publisher sent the updates.
pub(super) fn track_updated(
    oracles: &crate::oracle::Oracles,
    who: &str,
    owners: &std::collections::BTreeMap<String, String>,
    track_seq: &mut std::collections::BTreeMap<String, u64>,
    data: &serde_json::Value,
) {
    let (endpoint, id) = (
        data["endpointId"].as_str().unwrap_or(""),
        data["trackId"].as_str().unwrap_or(""),
    );
    oracles.reached("client: trackUpdated");
    oracles.check(owners.get(id).is_some_and(|e| e == endpoint), || {
        format!(
            "{who}: trackUpdated for track {id:.80} of {endpoint}, which was not announced for it"
        )
    });
    let meta = &data["metadata"];
    check_track_metadata(oracles, who, id, meta);
    if let Some(seq) = meta["seq"].as_u64() {
        let last = track_seq.insert(id.to_owned(), seq).unwrap_or(0);
        oracles.check(seq > last, || {
            format!("{who}: track {id:.80} metadata {seq} after {last}")
        });
    }
}

/// Every media `error`: the server echoes at most its limit of a message, plus the `…` that
/// marks a cut (README "Limits").
pub(super) fn error_message(oracles: &crate::oracle::Oracles, who: &str, message: &str) {
    let limit = videoroom::engine::MAX_ERROR_MESSAGE_BYTES + '…'.len_utf8();
    oracles.check(message.len() <= limit, || {
        format!(
            "{who}: media error of {} bytes, over the limit of {limit}: {message:.80}…",
            message.len()
        )
    });
}

/// The error for a malformed event, against the whole error (`whole`) the product's parser
/// words for it: whole up to the limit; past it cut, as late as a character boundary allows (at
/// most three bytes before the limit), and ending with `…`.
pub(super) fn malformed_error(
    oracles: &crate::oracle::Oracles,
    who: &str,
    whole: &str,
    message: &str,
) {
    let max = videoroom::engine::MAX_ERROR_MESSAGE_BYTES;
    if whole.len() <= max {
        if whole.len() == max {
            oracles.reached("client: a media error of exactly the limit arrives whole");
        }
        oracles.check(message == whole, || {
            format!(
                "{who}: a media error of {} bytes (the limit is {max}) must arrive whole, got {} bytes: {message:.80}",
                whole.len(),
                message.len()
            )
        });
        return;
    }
    let kept = message.strip_suffix('…');
    oracles.check(
        kept.is_some_and(|k| k.len() <= max && k.len() + 3 >= max && whole.starts_with(k)),
        || {
            format!(
                "{who}: a media error of {} bytes must be cut to {max} bytes or just below and end with …, got {} bytes: {message:.80}",
                whole.len(),
                message.len()
            )
        },
    );
}

/// A `vadNotification`: membrane-webrtc-js 0.5.3 throws for a track it does not know (told by
/// `tracksAdded`, not yet by `tracksRemoved` or `endpointRemoved`) and warns about a status
/// other than `speech` or `silence`; the server says only what changed, so a status never
/// repeats the last one the client holds for the track (a track starts silent).
pub(super) fn voice_activity(
    oracles: &crate::oracle::Oracles,
    who: &str,
    voices: &mut std::collections::BTreeMap<String, bool>,
    data: &serde_json::Value,
) {
    let id = data["trackId"].as_str().unwrap_or("");
    let speech = match data["status"].as_str() {
        Some("speech") => true,
        Some("silence") => false,
        _ => {
            oracles.fail(format!("{who}: vadNotification with status {data:.120}"));
            return;
        }
    };
    let Some(held) = voices.get_mut(id) else {
        oracles.fail(format!(
            "{who}: vadNotification for track {id:.80}, which the client does not know \
             (membrane-webrtc-js 0.5.3 throws)"
        ));
        return;
    };
    oracles.reached("client: voice activity heard");
    oracles.check(*held != speech, || {
        format!("{who}: vadNotification repeats {speech} for track {id:.80}")
    });
    *held = speech;
}
