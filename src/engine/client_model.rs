//! A model of how `membrane-webrtc-js` 0.5.3 negotiates media, for the engine's tests and the
//! simulated client: publish and unpublish tracks, answer every `offerData` with an offer whose
//! recvonly m-lines match `tracksTypes`, and apply answers. One model serves both, so the
//! negotiation core's proptest and the simulation hold the server to the same client.
//!
//! It owns the client's side of the cycle (its m-lines, its track ids, what it was told) and the
//! negotiation oracles, checked as events arrive: `tracksTypes` never decreases, no `offerData`
//! while an offer is open or still owed, an `offerData` never counts tracks the client was not
//! told about (`tracksAdded` comes first), every active mid of an answer is in its
//! `midToTrackId`, `tracksRemoved` only names tracks an answer gave this client, a server
//! candidate only comes after an answer, and a recycled mid carries a new track only after an
//! answer made it inactive once the client knew its old track was gone. What the server still
//! owes ([`Negotiator::owed`]: an answer to the open offer, an `offerData` after a
//! `renegotiateTracks`) must be nothing once the world has settled. Its verdicts go to a
//! [`Judge`]: the simulation's oracles, or a test's list of violations.
//!
//! It must never: do IO, read a clock, or draw randomness of its own. Every choice (when to
//! publish, which track to stop, when to send the offer) is the caller's, so a seed or a
//! proptest case replays it exactly.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::plane::MediaKind;
use super::sdp::{Direction, Sdp};

/// Where the model's verdicts go.
pub trait Judge {
    /// A promise of the server was kept (`ok`) or broken; `what` says which, and is only built
    /// for a breach.
    fn check(&self, ok: bool, what: impl FnOnce() -> String);
    /// A client-side branch was reached (coverage the server's events cannot show).
    fn reached(&self, what: &'static str);
    fn fail(&self, what: String) {
        self.check(false, || what);
    }
}

struct MLine {
    mid: String,
    kind: &'static str,
    dir: &'static str,
    /// The published track on a sendonly m-line.
    track: Option<String>,
    /// Hostile: offered `inactive` although it carries a track to this client (see
    /// [`Negotiator::misuse`]); the server must not send on it.
    refused: bool,
    /// Hostile: a stopped track's line offered `sendonly` again with its old track; the server
    /// must keep it inactive (a stopped track is never revived).
    revived: bool,
    /// An answer mapped this line to its published track: the server knows the track on it
    /// (a forged second line for the same track is never mapped).
    mapped: bool,
    /// Added by [`Negotiator::forge`]: a track this client may not publish.
    forged: bool,
    /// The direction the last offer gave it.
    offered: &'static str,
    /// Its track was stopped and an answer to an offer that said so made it inactive: the
    /// server knows the track ended.
    stop_answered: bool,
    /// It carried a published track when an offer this model did not build went out: that
    /// offer left the track out, which the server may have taken for its end (a stopped
    /// track is never revived), so whether a later offer's line is taken is not known.
    foreign_gap: bool,
}

impl MLine {
    /// A line as the client adds it: nothing offered or answered on it yet.
    fn new(mid: String, kind: &'static str, dir: &'static str, track: Option<String>) -> Self {
        MLine {
            mid,
            kind,
            dir,
            track,
            refused: false,
            revived: false,
            mapped: false,
            forged: false,
            offered: "",
            stop_answered: false,
            foreign_gap: false,
        }
    }
}

#[derive(Default)]
pub struct Negotiator {
    mlines: Vec<MLine>,
    next_track: u64,
    /// Metadata updates sent for its own tracks (each carries the next number).
    track_updates: u64,
    last_types: (u64, u64),
    /// An offer was sent and its answer has not come yet.
    offer_open: bool,
    /// An `offerData` came and the offer for it has not gone out yet (the browser builds it
    /// asynchronously, so the client's tracks may change meanwhile).
    offer_due: bool,
    /// `renegotiateTracks` was sent and no `offerData` has come since.
    asked: bool,
    /// Tracks other endpoints were announced with (connected + tracksAdded), ever.
    announced: BTreeSet<String>,
    /// Tracks some answer mapped to one of this client's m-lines.
    answered: BTreeSet<String>,
    /// Tracks the client was told are gone (`tracksRemoved`, or their endpoint removed).
    gone: BTreeSet<String>,
    /// The client's `midToTrackId`: the last answer's, less the tracks `tracksRemoved` erased
    /// since. membrane-webrtc-js 0.5.3 erases a removed track by finding it here and throws
    /// (`eraseTrack` destructures the `find`) when it is not: a repeated removal, or one of a
    /// track no answer since the last one maps, breaks the page.
    mid_map: BTreeMap<String, String>,
    /// The client once sent an offer this model did not build: which answer then went with
    /// which offer, and so what its `midToTrackId` holds, is not 0.5.3's any more, so removals
    /// are no longer checked against it.
    foreign_offer_sent: bool,
    /// Per mid the server sent on: its track, and whether an answer has since made the mid
    /// inactive with that track already gone (only then may the mid carry another track).
    carried: BTreeMap<String, (String, bool)>,
    pub negotiations: u64,
    /// Answers applied: a local candidate of the server needs a remote description to go to.
    answers: u64,
    /// Media `error`s the server owes: one per broken offer and per track update over the
    /// metadata limit.
    error_due: u32,
    /// Broken offers whose media `error` has not come: the server owes each one (a track
    /// update over the limit may be dropped by the update budget, an offer never is).
    refusals_owed: u32,
    /// What [`gone`](Self::gone) held when the open offer was made.
    gone_at_offer: BTreeSet<String>,
    /// Tracks an answer mapped to a line of this client but made inactive before the client
    /// was told they are gone: their removal is owed.
    silenced: BTreeSet<String>,
    /// The open offer is not one [`offer`](Self::offer) built: its lines' directions are not
    /// the model's.
    foreign_offer: bool,
    /// Per `a=msid` stream id the server sent on: the endpoint whose tracks it groups. The
    /// browser builds one MediaStream per stream id and the page shows one stream per endpoint,
    /// so a stream id that groups two endpoints' tracks shows one person's video in another's
    /// tile.
    stream_of: BTreeMap<String, String>,
}

/// How the server's media `error` for an offer it cannot take begins.
const OFFER_REFUSED: &str = "invalid sdpOffer";

/// Adds a `pad` string that makes `metadata`'s JSON exactly `bytes` long (no shorter than it is
/// with an empty pad).
fn pad_to(metadata: &mut Value, bytes: usize) {
    metadata["pad"] = json!("");
    let len = metadata.to_string().len();
    metadata["pad"] = json!("p".repeat(bytes.saturating_sub(len)));
}

fn custom(kind: &str, data: Value) -> Value {
    json!({"type": "custom", "data": {"type": kind, "data": data}})
}

impl Negotiator {
    fn published(&self) -> impl Iterator<Item = &MLine> {
        self.mlines
            .iter()
            .filter(|m| m.track.is_some() && m.dir == "sendonly")
    }

    /// A fresh negotiation (a new peer connection after a media `disconnect`) whose tracks
    /// keep getting new ids, as the browser's do: a track id is never reused.
    pub fn restart(&self) -> Negotiator {
        Negotiator {
            next_track: self.next_track,
            ..Negotiator::default()
        }
    }

    /// The m-lines of its connection (never fewer: transceivers are never removed).
    pub fn mline_count(&self) -> usize {
        self.mlines.len()
    }

    pub fn is_publishing(&self) -> bool {
        self.published().next().is_some()
    }

    pub fn offer_open(&self) -> bool {
        self.offer_open
    }

    /// What the server still owes this client's negotiation, if anything.
    pub fn owed(&self) -> Option<&'static str> {
        if self.silenced.iter().any(|t| !self.gone.contains(t)) {
            Some("the removal of a track whose line an answer made inactive")
        } else if self
            .carried
            .values()
            .any(|(t, freed)| !freed && self.gone.contains(t))
        {
            // The server renegotiates every connection that carried a track it removed, so
            // the line goes inactive and its slot can be given to the next track.
            Some("a renegotiation that frees a line whose track is gone")
        } else if self.refusals_owed > 0 {
            Some("a media error for its broken sdpOffer")
        } else if self.offer_open {
            Some("an sdpAnswer to its sdpOffer")
        } else if self.asked {
            Some("an offerData after its renegotiateTracks")
        } else {
            None
        }
    }

    /// Turns the offer just built by [`on_offer_data`](Self::on_offer_data) into one the server
    /// must refuse (a broken or malicious client), and asks for a negotiation again at once, as
    /// a client that wants its tracks would. The server must answer the bad offer with one
    /// media `error` and close that cycle, so the new request gets its `offerData` (owed).
    /// `unparsable`: an offer whose SDP does not parse; else one that is not an offer at all.
    pub fn break_offer(&mut self, unparsable: bool) -> Vec<Value> {
        self.offer_open = false;
        self.error_due += 1;
        self.refusals_owed += 1;
        self.asked = true;
        let offer = if unparsable {
            json!({"type": "offer", "sdp": "v=0\r\nm=audio\r\n"})
        } else {
            json!({"type": "pranswer", "sdp": "v=0\r\n"})
        };
        vec![
            custom(
                "sdpOffer",
                json!({
                    "sdpOffer": offer,
                    "trackIdToTrackMetadata": {},
                    "trackIdToTrackBitrates": {},
                    "midToTrackId": {},
                }),
            ),
            custom("renegotiateTracks", json!({})),
        ]
    }

    /// An offer this model did not build went out (a test's malformed or random one) in place
    /// of the one owed: the server answers it, or refuses it with a media `error`
    /// ([`offer_refused`](Self::offer_refused)).
    pub fn sent_foreign_offer(&mut self) {
        self.offer_due = false;
        self.offer_open = true;
        self.foreign_offer = true;
        self.foreign_offer_sent = true;
        for l in self.mlines.iter_mut().filter(|l| l.track.is_some()) {
            l.foreign_gap = true;
        }
    }

    /// A media `error` took the place of the answer to the open offer (the server refused it,
    /// or could not answer it): that cycle is over.
    pub fn offer_refused(&mut self) {
        self.offer_open = false;
    }

    /// A media `error` arrived: true if it answers a broken offer or a track update over the
    /// limit of this client.
    pub fn take_error(&mut self, message: &str) -> bool {
        if message.starts_with(OFFER_REFUSED) {
            self.refusals_owed = self.refusals_owed.saturating_sub(1);
        }
        let due = self.error_due > 0;
        self.error_due = self.error_due.saturating_sub(1);
        due
    }

    /// Adds an audio and a video track; returns the event asking for a negotiation.
    pub fn publish(&mut self, peer_id: &str) -> Value {
        self.publish_kinds(peer_id, [MediaKind::Audio, MediaKind::Video])
    }

    /// Publishes `n` more tracks at once (screens and cameras), audio and video in turn, and
    /// asks to renegotiate. Past the server's limit of published tracks the answer leaves the
    /// newest inactive (see [`on_answer`](Self::on_answer)).
    pub fn publish_more(&mut self, peer_id: &str, n: usize) -> Value {
        let kinds = [MediaKind::Video, MediaKind::Audio].into_iter().cycle();
        self.publish_kinds(peer_id, kinds.take(n))
    }

    /// Adds a track of each kind and asks to renegotiate.
    fn publish_kinds(
        &mut self,
        peer_id: &str,
        kinds: impl IntoIterator<Item = MediaKind>,
    ) -> Value {
        for kind in kinds {
            self.add_track(peer_id, kind);
        }
        self.asked = true;
        custom("renegotiateTracks", json!({}))
    }

    /// Lines of this client that carry a track, whatever their state (a line is never
    /// removed).
    pub fn own_lines(&self) -> usize {
        self.mlines.iter().filter(|m| m.track.is_some()).count()
    }

    /// Stops the published tracks (their m-lines become inactive, never reused).
    pub fn unpublish(&mut self) -> Value {
        for m in self.mlines.iter_mut().filter(|m| m.track.is_some()) {
            m.dir = "inactive";
        }
        self.asked = true;
        custom("renegotiateTracks", json!({}))
    }

    /// Adds one track on a new sendonly m-line and returns its id. Nothing is asked of the
    /// server: the track goes out with the next offer, whoever asks for it.
    pub fn add_track(&mut self, peer_id: &str, kind: MediaKind) -> String {
        self.next_track += 1;
        let kind = kind.as_str();
        let track = format!("{peer_id}:{kind}{}", self.next_track);
        let mid = self.mlines.len().to_string();
        self.mlines
            .push(MLine::new(mid, kind, "sendonly", Some(track.clone())));
        track
    }

    /// A metadata update of one of its published tracks that an answer carried (a mute
    /// toggle): `updateTrackMetadata` with `{type, active, track, seq}`, so receivers can tell
    /// whose metadata they hold and in what order it came. None while nothing is published.
    pub fn track_update(&mut self) -> Option<Value> {
        let m = self.mlines.iter().find(|m| {
            m.dir == "sendonly" && m.track.as_ref().is_some_and(|t| self.answered.contains(t))
        })?;
        let (kind, track) = (m.kind, m.track.clone()?);
        self.track_updates += 1;
        let n = self.track_updates;
        let mut metadata =
            json!({"type": kind, "active": n.is_multiple_of(2), "track": track, "seq": n});
        // The server's limit is inclusive: one update in four is exactly that long and must be
        // taken; one in eight a byte longer and must be refused with an error.
        let limit = super::NegotiationConfig::default().max_track_metadata_bytes;
        match n % 8 {
            1 | 5 => pad_to(&mut metadata, limit),
            3 => {
                pad_to(&mut metadata, limit + 1);
                self.error_due += 1;
            }
            _ => {}
        }
        Some(json!({"type": "updateTrackMetadata", "data": {
            "trackId": track,
            "trackMetadata": metadata,
        }}))
    }

    /// Adds a sendonly m-line claiming a track this client may not publish (a malicious
    /// client): another endpoint's stream (`how` 0), an id past the length limit (1), a track
    /// another endpoint published and this client was told of (2), or a second m-line for a
    /// track it already publishes (3); a choice that does not apply falls back to 0. The server
    /// must leave the line inactive and tell nobody; the line stays (a transceiver is never
    /// removed) and is offered again. Returns what was forged.
    pub fn forge(&mut self, peer_id: &str, how: u64) -> String {
        self.next_track += 1;
        let n = self.next_track;
        let own = self
            .mlines
            .iter()
            .find(|m| {
                m.dir == "sendonly" && m.track.as_deref().is_some_and(|t| t.starts_with(peer_id))
            })
            .and_then(|m| m.track.clone());
        let (track, what) = match how {
            1 => (
                format!("{peer_id}:{}", "x".repeat(300)),
                "an overlong track id",
            ),
            2 if !self.announced.is_empty() => (
                self.announced.iter().next().cloned().unwrap_or_default(),
                "another endpoint's track",
            ),
            3 if own.is_some() => (own.unwrap_or_default(), "its own track on a second m-line"),
            _ => (format!("intruder:video{n}"), "a track of another stream"),
        };
        let mid = self.mlines.len().to_string();
        self.mlines.push(MLine {
            forged: true,
            ..MLine::new(mid, "video", "sendonly", Some(track))
        });
        what.to_string()
    }

    /// A hostile offer that misuses the client's m-lines (trespassers): `refuse` offers a line
    /// that carries a track to it as `inactive`, else a stopped track's line is offered
    /// `sendonly` again with its old track. Only lines an answer already mapped are picked, so
    /// the server knows the mid. The server must answer each of them inactive, in this offer
    /// and every later one ([`on_answer`](Self::on_answer) checks). Returns what was done, or
    /// `None` when no line qualifies.
    pub fn misuse(&mut self, refuse: bool) -> Option<&'static str> {
        let carried = &self.carried;
        let line = self.mlines.iter_mut().find(|m| {
            if refuse {
                m.dir == "recvonly" && !m.refused && carried.contains_key(&m.mid)
            } else {
                m.dir == "inactive" && !m.revived && m.stop_answered
            }
        })?;
        if refuse {
            line.refused = true;
            Some("offers a line it receives on as inactive")
        } else {
            line.revived = true;
            Some("offers a stopped track's line as sendonly again")
        }
    }

    /// Stops one published track (its m-line becomes inactive, never reused); false if it is
    /// not published. Like [`add_track`](Self::add_track), it waits for the next offer.
    pub fn stop_track(&mut self, track: &str) -> bool {
        let Some(m) = self
            .mlines
            .iter_mut()
            .find(|m| m.dir == "sendonly" && m.track.as_deref() == Some(track))
        else {
            return false;
        };
        m.dir = "inactive";
        true
    }

    /// This client's own tracks in the order they were added, each with whether it is still
    /// published.
    pub fn tracks(&self) -> impl Iterator<Item = (&str, bool)> {
        self.mlines
            .iter()
            .filter_map(|m| Some((m.track.as_deref()?, m.dir == "sendonly")))
    }

    pub fn on_tracks_announced(&mut self, tracks: &Value) {
        for id in tracks.as_object().into_iter().flatten().map(|(k, _)| k) {
            self.announced.insert(id.clone());
        }
    }

    pub fn on_tracks_removed(&mut self, who: &str, data: &Value, judge: &impl Judge) {
        judge.reached("client: tracksRemoved");
        for id in data["trackIds"].as_array().into_iter().flatten() {
            let id = id.as_str().unwrap_or("");
            judge.check(self.answered.contains(id), || {
                format!("{who}: tracksRemoved for {id}, which no answer gave it")
            });
            let mid = self
                .mid_map
                .iter()
                .find(|(_, t)| t.as_str() == id)
                .map(|(m, _)| m.clone());
            match mid {
                Some(mid) => {
                    self.mid_map.remove(&mid);
                }
                None if self.foreign_offer_sent => {}
                None => judge.fail(format!(
                    "{who}: tracksRemoved for {id}, which its midToTrackId no longer maps \
                     (removed before, or not in the last answer): membrane-webrtc-js throws in eraseTrack"
                )),
            }
            self.gone.insert(id.to_string());
        }
    }

    /// Every track of the endpoint is gone for the client, also one announced whose answer is
    /// still on its way (the server promises track ids start with `<endpoint id>:`).
    pub fn on_endpoint_removed(&mut self, endpoint: &str) {
        let prefix = format!("{endpoint}:");
        let gone: Vec<String> = self
            .carried
            .values()
            .map(|(t, _)| t)
            .chain(&self.announced)
            .filter(|t| t.starts_with(&prefix))
            .cloned()
            .collect();
        self.gone.extend(gone);
    }

    /// `offerData`: checks it, then returns the `sdpOffer` to send.
    pub fn on_offer_data(&mut self, who: &str, data: &Value, judge: &impl Judge) -> Value {
        self.take_offer_data(who, data, judge);
        self.offer(judge)
    }

    /// `offerData` whose offer goes out later ([`offer`](Self::offer)): checks it and adds the
    /// recvonly m-lines its `tracksTypes` asks for, which the client does before building the
    /// offer.
    pub fn take_offer_data(&mut self, who: &str, data: &Value, judge: &impl Judge) {
        let types = &data["tracksTypes"];
        let (a, v) = (
            types["audio"].as_u64().unwrap_or(0),
            types["video"].as_u64().unwrap_or(0),
        );
        let (la, lv) = self.last_types;
        judge.check(a >= la && v >= lv, || {
            format!("{who}: tracksTypes went from {la}/{lv} to {a}/{v}")
        });
        let open = self.offer_open;
        judge.check(!open && !self.offer_due, || {
            if open {
                format!("{who}: offerData while its previous offer is still open")
            } else {
                format!("{who}: offerData while the offer for the previous one is still owed")
            }
        });
        judge.check(a + v <= self.announced.len() as u64, || {
            format!(
                "{who}: offerData counts {} tracks, only {} were announced",
                a + v,
                self.announced.len()
            )
        });
        self.last_types = (a.max(la), v.max(lv));
        // As the client does: add recvonly m-lines until there are as many as tracksTypes.
        for (kind, want) in [("audio", self.last_types.0), ("video", self.last_types.1)] {
            let have = self
                .mlines
                .iter()
                .filter(|m| m.kind == kind && m.track.is_none())
                .count() as u64;
            for _ in have..want {
                let mid = self.mlines.len().to_string();
                self.mlines.push(MLine::new(mid, kind, "recvonly", None));
            }
        }
        self.asked = false;
        self.offer_due = true;
    }

    /// The `sdpOffer` for the last `offerData`: every m-line as it is now, its published
    /// tracks mapped and described.
    pub fn offer(&mut self, judge: &impl Judge) -> Value {
        self.offer_due = false;
        self.offer_open = true;
        self.foreign_offer = false;
        self.gone_at_offer.clone_from(&self.gone);
        self.negotiations += 1;
        judge.reached("client: offerData answered with an offer");
        let mut sdp = String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
        let mut mid_to_track = serde_json::Map::new();
        let mut metadata = serde_json::Map::new();
        for m in &mut self.mlines {
            let pt = if m.kind == "audio" { 111 } else { 96 };
            let dir = match m.dir {
                "recvonly" if m.refused => "inactive",
                "inactive" if m.revived => "sendonly",
                dir => dir,
            };
            m.offered = dir;
            sdp.push_str(&format!(
                "m={} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=mid:{}\r\na={dir}\r\na=rtpmap:{pt} {}\r\n",
                m.kind,
                m.mid,
                if m.kind == "audio" { "opus/48000/2" } else { "VP8/90000" }
            ));
            if let (Some(t), "sendonly") = (&m.track, dir) {
                mid_to_track.insert(m.mid.clone(), json!(t));
                metadata.insert(t.clone(), json!({"type": m.kind, "active": true}));
            }
        }
        custom(
            "sdpOffer",
            json!({
                "sdpOffer": {"type": "offer", "sdp": sdp},
                "trackIdToTrackMetadata": metadata,
                "trackIdToTrackBitrates": {},
                "midToTrackId": mid_to_track,
            }),
        )
    }

    pub fn on_answer(&mut self, who: &str, data: &Value, judge: &impl Judge) {
        judge.check(self.offer_open, || {
            format!("{who}: sdpAnswer with no offer open")
        });
        self.offer_open = false;
        let map = data["midToTrackId"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        match Sdp::parse(data["sdp"].as_str().unwrap_or("")) {
            Ok(sdp) => {
                // The tracks of this client the server takes (README "Semantics": at most
                // `max_published_tracks` per peer, the ones it already holds first).
                let limit = super::NegotiationConfig::default().max_published_tracks;
                let taken = sdp
                    .media
                    .iter()
                    .filter(|m| m.direction == Direction::RecvOnly)
                    .count();
                judge.check(taken <= limit, || {
                    format!(
                        "{who}: the answer takes {taken} of its tracks, over the limit of {limit}"
                    )
                });
                for m in &sdp.media {
                    let mapped = map.get(&m.mid).and_then(Value::as_str);
                    let line = self.mlines.iter_mut().find(|l| l.mid == m.mid);
                    let misused = line.as_ref().is_some_and(|l| l.refused || l.revived);
                    if let Some(l) = line.as_ref().filter(|_| !self.foreign_offer) {
                        // RFC 3264 6.1: an answer line is inactive where the offer's was, and
                        // sends only where the offer's receives (and the other way round).
                        let fits = match l.offered {
                            "inactive" => m.direction == Direction::Inactive,
                            "sendonly" => {
                                matches!(m.direction, Direction::RecvOnly | Direction::Inactive)
                            }
                            "recvonly" => {
                                matches!(m.direction, Direction::SendOnly | Direction::Inactive)
                            }
                            _ => true,
                        };
                        judge.check(fits, || {
                            format!(
                                "{who}: answer makes mid {} {:?}, offered {}",
                                m.mid, m.direction, l.offered
                            )
                        });
                        // Its own track: the server takes it (publishing is what a room is
                        // for), unless it is new and the tracks the server takes of this client
                        // already fill the limit; one taken before keeps its place.
                        if l.offered == "sendonly" && !l.forged && !l.revived && !l.foreign_gap {
                            let took = m.direction == Direction::RecvOnly
                                && mapped.is_some()
                                && mapped == l.track.as_deref();
                            let over_limit = !l.mapped
                                && m.direction == Direction::Inactive
                                && mapped.is_none()
                                && taken >= limit;
                            if over_limit {
                                judge.reached(
                                    "client: a track over the publishing limit left inactive",
                                );
                            }
                            judge.check(took || over_limit, || {
                                format!(
                                    "{who}: its track {:?} on mid {} answered {:?}, mapped to {mapped:?} \
                                     ({taken} of its tracks taken, limit {limit})",
                                    l.track, m.mid, m.direction
                                )
                            });
                        }
                        // A line never carries a track the client knew was gone when it made
                        // the offer (the server told it first, so it knew when it answered; a
                        // track removed while the answer was being made is answered as it
                        // stood).
                        if let Some(t) = mapped.filter(|_| m.direction == Direction::SendOnly) {
                            judge.check(!self.gone_at_offer.contains(t), || {
                                format!("{who}: mid {} carries {t}, gone before the offer", m.mid)
                            });
                        }
                        // A line the server gave a track carries it, unless the track is
                        // gone: the server may tell that only after this answer (the client
                        // erases a removed track by its mid), so it owes the removal then.
                        if let Some(t) = mapped.filter(|t| !self.gone.contains(*t)) {
                            if l.offered == "recvonly" && m.direction == Direction::Inactive {
                                self.silenced.insert(t.to_string());
                            }
                        }
                    }
                    if let Some(l) = line {
                        l.mapped |= l.track.is_some() && mapped == l.track.as_deref();
                        l.stop_answered |= l.dir == "inactive"
                            && l.offered == "inactive"
                            && l.mapped
                            && m.direction == Direction::Inactive;
                    }
                    if misused {
                        judge.reached("client: misused m-line answered");
                        judge.check(m.direction == Direction::Inactive, || {
                            format!(
                                "{who}: answer makes mid {} {:?}, which the client offered as \
                                 unusable (refused, or a stopped track revived)",
                                m.mid, m.direction
                            )
                        });
                    }
                    if m.direction != Direction::Inactive {
                        judge.check(map.contains_key(&m.mid), || {
                            format!("{who}: answer mid {} missing from midToTrackId", m.mid)
                        });
                    }
                    let Some(track) = map.get(&m.mid).and_then(Value::as_str) else {
                        continue;
                    };
                    match m.direction {
                        Direction::SendOnly => {
                            self.check_stream(who, m, track, judge);
                            // A line that starts receiving fires `ontrack`, where 0.5.3 looks the
                            // track up among those it knows and throws if it forgot it
                            // (`tracksRemoved` and `endpointRemoved` erase it).
                            let starts =
                                self.carried.get(&m.mid).is_none_or(|(old, _)| old != track);
                            if starts {
                                judge.check(!self.gone.contains(track), || {
                                    format!(
                                        "{who}: mid {} starts receiving {track}, which the client was told is gone \
                                         (membrane-webrtc-js throws in ontrack)",
                                        m.mid
                                    )
                                });
                            }
                            if let Some((old, freed)) = self.carried.get(&m.mid) {
                                if old != track {
                                    judge.reached("client: recycled m-line carries a new track");
                                }
                                judge.check(old == track || *freed, || {
                                    format!(
                                        "{who}: mid {} went from {old} to {track} without an \
                                         inactive answer after the removal",
                                        m.mid
                                    )
                                });
                            }
                            self.carried
                                .insert(m.mid.clone(), (track.to_string(), false));
                        }
                        Direction::Inactive => {
                            if let Some((old, freed)) = self.carried.get_mut(&m.mid) {
                                *freed |= self.gone.contains(old.as_str());
                            }
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => judge.fail(format!("{who}: unparsable answer: {e}")),
        }
        for t in map.values().filter_map(Value::as_str) {
            self.answered.insert(t.to_string());
        }
        self.mid_map = map
            .iter()
            .filter_map(|(m, t)| Some((m.clone(), t.as_str()?.to_string())))
            .collect();
        self.answers += 1;
        judge.reached("client: sdpAnswer applied");
    }

    /// A line sending `track` names its stream (`a=msid:<stream> <track>`, RFC 8830): the
    /// browser's `ontrack` gets the track's MediaStream from it, and the stream id groups the
    /// tracks of the endpoint that publishes it (track ids start with `<endpoint id>:`) and no
    /// other endpoint's.
    fn check_stream(
        &mut self,
        who: &str,
        m: &super::sdp::MediaSection,
        track: &str,
        judge: &impl Judge,
    ) {
        let endpoint = track.split_once(':').map_or(track, |(e, _)| e);
        let msid = m.attributes.iter().find_map(|a| a.strip_prefix("msid:"));
        let Some(stream) = msid
            .and_then(|v| v.split(' ').next())
            .filter(|s| !s.is_empty())
        else {
            judge.fail(format!(
                "{who}: mid {} sends {track} without an `a=msid:<stream> <track>` (ontrack gets no stream)",
                m.mid
            ));
            return;
        };
        let owner = self
            .stream_of
            .entry(stream.to_string())
            .or_insert_with(|| endpoint.to_string());
        judge.check(owner == endpoint, || {
            format!(
                "{who}: mid {} puts {track} in stream {stream}, which groups {owner}'s tracks: \
                 the page would show two endpoints' tracks as one MediaStream",
                m.mid
            )
        });
    }

    /// A server ICE candidate: the browser adds it to its remote description, which only an
    /// answer sets (`addIceCandidate` before one fails and ICE may never connect).
    pub fn on_candidate(&mut self, who: &str, data: &Value, judge: &impl Judge) {
        judge.reached("client: server candidate applied");
        judge.check(self.answers > 0, || {
            format!("{who}: server candidate {data} before any sdpAnswer")
        });
    }
}
