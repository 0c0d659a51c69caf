//! The negotiation core: which tracks exist in the room, who has been told about which, which
//! mid carries which track for each peer, and the `offerData` → `sdpOffer` → `sdpAnswer` cycle
//! of every peer (research §4–§5).
//!
//! It owns every decision a client can observe about tracks: `tracksAdded`/`tracksRemoved`/
//! `trackUpdated` and their order relative to `offerData`, `tracksTypes`, the pairing of
//! forwarded tracks with `recvonly` m-lines, `midToTrackId`, one stream id per publisher, and
//! when the media plane is asked for an answer or a keyframe.
//!
//! It must never: do IO or wait (the plane answers later, through
//! [`Negotiation::plane_event`]); let `tracksTypes` decrease for a peer; have two offers open
//! for one peer; send `tracksRemoved` for a track whose mid the peer never got in an
//! `sdpAnswer` (the client throws); announce more tracks to a peer than its connection can
//! have m-lines for (its next offer would be rejected and the client would disconnect);
//! give an m-line a new track before an answer made it inactive after the client learned its
//! old track was removed (the browser fires `ontrack` only on an inactive → sending change);
//! iterate a hash map on the way to an output; panic on client input.
//!
//! M-lines are recycled: the client never drops a `recvonly` transceiver, so a peer that stays
//! while others come and go would otherwise grow one m-line per track it was ever sent (SDP
//! size, connection memory, and a hard cap on m-lines). A retired slot takes the next
//! announced track of its kind instead, so a peer's m-lines track the most tracks it ever
//! received *at once*.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

use super::events::{
    CustomEvent, ErrorData, NegotiationEvent, OfferData, SdpAnswer, SdpOffer, ServerCandidate,
    ServerEvent, SimulcastConfig, TrackId, TrackInfo, TrackUpdated, TracksAdded, TracksRemoved,
    TracksTypes, TurnServer, VadNotification, VadStatus,
};
use super::negotiation::{Negotiation, Outbox};
use super::plane::{MLine, MLineRole, MediaKind, PlaneCommand, PlaneEvent, PlaneOffer};
use super::sdp::{self, is_token_char, Direction, Sdp, MAX_MLINES};
use super::session::{PeerId, Roster};
use crate::logsafe::Untrusted;

/// Mints the `integratedTurnServers` entries of one peer (TURN REST credentials naming it),
/// so a leaked or stale credential is good for one peer's allocations only and those can be
/// torn down when it leaves.
#[derive(Clone)]
pub struct TurnIssuer(Arc<IssueFn>);

type IssueFn = dyn Fn(&str) -> Vec<TurnServer> + Send + Sync;

impl TurnIssuer {
    pub fn new(issue: impl Fn(&str) -> Vec<TurnServer> + Send + Sync + 'static) -> Self {
        TurnIssuer(Arc::new(issue))
    }

    pub fn issue(&self, peer: &str) -> Vec<TurnServer> {
        (self.0)(peer)
    }
}

impl std::fmt::Debug for TurnIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnIssuer(..)")
    }
}

/// What the room configures.
#[derive(Debug, Clone)]
pub struct NegotiationConfig {
    /// Sent in every `offerData` when there is no [`TurnIssuer`]. The client builds its
    /// relay-only ICE configuration from the first one it receives, so production needs either
    /// this or `turn_issuer`.
    pub turn_servers: Vec<TurnServer>,
    /// Per-peer TURN entries, minted once when the peer connects and repeated in each of its
    /// `offerData` (the client only reads the first; re-minting would just churn credentials).
    /// Takes precedence over `turn_servers`.
    pub turn_issuer: Option<TurnIssuer>,
    /// Track metadata is copied to every subscriber, so its serialized size is capped.
    pub max_track_metadata_bytes: usize,
    /// Tracks one peer may publish at once; further `sendonly` m-lines are answered inactive.
    pub max_published_tracks: usize,
    /// Local candidates held back while an answer is outstanding.
    pub max_held_candidates: usize,
    /// M-lines one connection may be given, its own published lines included: tracks past it
    /// are not announced to that peer. At most [`MAX_MLINES`] (an offer with more is refused);
    /// a server that wants connections smaller can say so.
    pub max_mlines: usize,
}

impl Default for NegotiationConfig {
    fn default() -> Self {
        NegotiationConfig {
            turn_servers: Vec::new(),
            turn_issuer: None,
            // The web app sends `{type, active}`; each published track's metadata is copied
            // twice into every `connected` and once into every `tracksAdded`.
            max_track_metadata_bytes: 512,
            max_published_tracks: 8,
            max_held_candidates: 32,
            max_mlines: MAX_MLINES,
        }
    }
}

/// Where one peer's offer/answer cycle stands. At most one cycle is open per peer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    /// `offerData` sent, its `sdpOffer` not yet received.
    OfferDataSent,
    /// The plane is answering `negotiation`; `mid_to_track_id` goes into that answer.
    AwaitingAnswer {
        negotiation: u64,
        mid_to_track_id: BTreeMap<String, TrackId>,
        /// Slots of removed tracks this answer makes inactive: free once it is sent.
        retiring: Vec<String>,
        /// Slots whose m-line this offer gave the plane to forward on (an outbound role).
        forwarding: BTreeSet<String>,
    },
}

/// A track the peer publishes (or published) on one of its `sendonly` m-lines.
#[derive(Debug, Clone)]
struct Inbound {
    track_id: TrackId,
    kind: MediaKind,
    metadata: Value,
    active: bool,
    /// The plane last reported voice on it ([`PlaneEvent::VoiceActivity`]); subscribers
    /// announced later are told at once.
    speech: bool,
}

/// A slot: a track of another peer announced to this peer with `tracksAdded`, and the
/// `recvonly` m-line that carries it. Never dropped while the peer is connected, because
/// `tracksTypes` must keep counting the m-line; once retired it carries the next announced
/// track of its kind.
#[derive(Debug, Clone)]
struct Outbound {
    publisher: PeerId,
    track_id: TrackId,
    kind: MediaKind,
    /// The `recvonly` m-line paired with it, once an offer had one free.
    mid: Option<String>,
    /// An `sdpAnswer` sent to this peer mapped `mid` to the track: only now can the client
    /// handle `tracksRemoved` for it.
    carried: bool,
    /// The last answer had the plane forward the track on `mid` (a line the client receives
    /// on; not one it refused): only then is a keyframe worth asking the publisher for.
    forwarded: bool,
    /// The publisher stopped publishing it (or left).
    removed: bool,
    /// The peer needs no `tracksRemoved` for it any more (sent, or made moot by
    /// `endpointRemoved`).
    removal_settled: bool,
    /// An answer sent after the removal settled made the m-line inactive: the client holds
    /// nothing of the old track on it, so it can carry another one.
    retired: bool,
}

impl Outbound {
    fn new(publisher: &str, track_id: &TrackId, kind: MediaKind, mid: Option<String>) -> Self {
        Outbound {
            publisher: publisher.to_owned(),
            track_id: track_id.clone(),
            kind,
            mid,
            carried: false,
            forwarded: false,
            removed: false,
            removal_settled: false,
            retired: false,
        }
    }
}

#[derive(Debug)]
struct PeerState {
    phase: Phase,
    /// A renegotiation was asked for while a cycle was open.
    pending: bool,
    held_candidates: Vec<String>,
    /// An `sdpAnswer` reached the client: before that it has no remote description to add
    /// candidates to.
    answered: bool,
    /// By mid, every mid the peer ever published on.
    inbound: BTreeMap<String, Inbound>,
    /// Slots in announcement order (the order new m-lines are paired in).
    outbound: Vec<Outbound>,
    /// Counted in every `offerData`; kept to check monotonicity.
    last_tracks_types: TracksTypes,
    /// This peer's `integratedTurnServers`.
    turn_servers: Vec<TurnServer>,
    /// "Out of m-lines" was logged at warn level for this subscriber already.
    warned_out_of_mlines: bool,
}

impl PeerState {
    fn new(turn_servers: Vec<TurnServer>) -> Self {
        PeerState {
            turn_servers,
            phase: Phase::Idle,
            pending: false,
            held_candidates: Vec::new(),
            answered: false,
            inbound: BTreeMap::new(),
            outbound: Vec::new(),
            last_tracks_types: TracksTypes { audio: 0, video: 0 },
            warned_out_of_mlines: false,
        }
    }

    fn active_tracks(&self) -> BTreeMap<TrackId, TrackInfo> {
        self.inbound
            .values()
            .filter(|t| t.active)
            .map(|t| (t.track_id.clone(), track_info(&t.metadata)))
            .collect()
    }

    fn tracks_types(&self) -> TracksTypes {
        let count = |k| self.outbound.iter().filter(|o| o.kind == k).count();
        TracksTypes {
            audio: u32::try_from(count(MediaKind::Audio)).unwrap_or(u32::MAX),
            video: u32::try_from(count(MediaKind::Video)).unwrap_or(u32::MAX),
        }
    }
}

/// The stream id (`a=msid`) of every track `peer` publishes. Derived from the peer id (a
/// server-chosen UUID) so it is stable for the peer's lifetime and replays identically;
/// characters SDP cannot carry are replaced.
fn stream_id_for(peer: &str) -> String {
    peer.chars()
        .map(|c| if is_token_char(c) { c } else { '_' })
        .collect()
}

fn track_info(metadata: &Value) -> TrackInfo {
    TrackInfo {
        metadata: metadata.clone(),
        simulcast_config: SimulcastConfig::disabled(),
    }
}

/// A track being announced: id, kind, metadata.
type NewTrack = (TrackId, MediaKind, Value);

/// The SFU negotiation core; see the module documentation.
#[derive(Debug, Default)]
pub struct TrackNegotiation {
    config: NegotiationConfig,
    peers: BTreeMap<PeerId, PeerState>,
    /// Peers that lost carried tracks of a leaver: renegotiated after `endpointRemoved`.
    renegotiate_after_leave: Vec<PeerId>,
    /// Negotiation ids are unique in the room, not per peer: a peer that sends `disconnect`
    /// and `connect` again keeps its id but starts a new session, and the plane's answer to
    /// an offer of the old session may still be on its way; with a per-peer count it would
    /// carry the number the new session's first offer gets and be taken for its answer.
    next_negotiation: u64,
}

impl TrackNegotiation {
    pub fn new(config: NegotiationConfig) -> Self {
        TrackNegotiation {
            config,
            peers: BTreeMap::new(),
            renegotiate_after_leave: Vec::new(),
            next_negotiation: 1,
        }
    }

    /// Peers with negotiation state (connected ones; empty once everyone has left).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The `tracksTypes` the next `offerData` to `peer` will carry.
    pub fn tracks_types(&self, peer: &str) -> Option<TracksTypes> {
        self.peers.get(peer).map(PeerState::tracks_types)
    }

    /// True while `peer` has an `offerData` or an answer outstanding.
    #[cfg(test)]
    pub fn is_negotiating(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| p.phase != Phase::Idle)
    }

    fn request_renegotiation(&mut self, peer: &str, out: &mut Outbox) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        if state.phase == Phase::Idle {
            self.send_offer_data(peer, out);
        } else {
            state.pending = true;
        }
    }

    fn send_offer_data(&mut self, peer: &str, out: &mut Outbox) {
        let state = self.peers.get_mut(peer).expect("caller checked the peer");
        debug_assert_eq!(state.phase, Phase::Idle, "two negotiations open for {peer}");
        let tracks_types = state.tracks_types();
        assert!(
            tracks_types.audio >= state.last_tracks_types.audio
                && tracks_types.video >= state.last_tracks_types.video,
            "tracksTypes decreased for {peer}"
        );
        state.last_tracks_types = tracks_types;
        state.phase = Phase::OfferDataSent;
        state.pending = false;
        out.send(
            peer,
            &ServerEvent::Custom(CustomEvent::OfferData(OfferData {
                tracks_types,
                integrated_turn_servers: state.turn_servers.clone(),
            })),
        );
    }

    /// Closes `peer`'s cycle and opens the next one if it was asked for meanwhile.
    fn finish_cycle(&mut self, peer: &str, out: &mut Outbox) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        state.phase = Phase::Idle;
        if state.pending {
            self.send_offer_data(peer, out);
        }
    }

    /// How many more slots `subscriber`'s connection can be given. Every slot stays a
    /// `recvonly` m-line of it for good (the client never drops them), and an offer with more
    /// than [`MAX_MLINES`] m-lines is rejected; past that the client would be told `error` and
    /// disconnect. A server may set a smaller bound (`max_mlines`). Room for the peer's own
    /// publications is kept.
    fn track_budget(&self, subscriber: &PeerState) -> usize {
        self.config
            .max_mlines
            .min(MAX_MLINES)
            .saturating_sub(self.config.max_published_tracks)
            .saturating_sub(subscriber.inbound.len() + subscriber.outbound.len())
    }

    /// Announces `publisher`'s `tracks` to `subscriber` and records them as forwarded there,
    /// as many as its connection has m-lines left for (the rest are never announced to it).
    /// Returns whether anything was announced.
    fn announce(
        &mut self,
        publisher: &str,
        subscriber: &str,
        tracks: &[NewTrack],
        out: &mut Outbox,
    ) -> bool {
        let Some(sub) = self.peers.get(subscriber) else {
            return false;
        };
        let mut budget = self.track_budget(sub);
        let speaking: Vec<TrackId> = self.peers.get(publisher).map_or_else(Vec::new, |p| {
            p.inbound
                .values()
                .filter(|t| t.active && t.speech)
                .map(|t| t.track_id.clone())
                .collect()
        });
        let sub = self.peers.get_mut(subscriber).expect("checked above");
        let mut announced = Vec::new();
        for (id, kind, meta) in tracks {
            // The oldest retired slot of the kind, so recycling is deterministic.
            if let Some(slot) = sub
                .outbound
                .iter_mut()
                .find(|o| o.retired && o.kind == *kind)
            {
                *slot = Outbound::new(publisher, id, *kind, slot.mid.take());
            } else if budget > 0 {
                budget -= 1;
                sub.outbound.push(Outbound::new(publisher, id, *kind, None));
            } else {
                // Said once per subscriber at warn level: a client can make this happen
                // over and over by publishing and unpublishing.
                crate::rt::probe::emit(crate::rt::probe::Event::OutOfMlines);
                let first = !std::mem::replace(&mut sub.warned_out_of_mlines, true);
                if first {
                    tracing::warn!(
                        subscriber,
                        publisher,
                        track_id = %Untrusted(id),
                        "connection out of m-lines: track not forwarded to this peer"
                    );
                } else {
                    tracing::debug!(
                        subscriber,
                        publisher,
                        track_id = %Untrusted(id),
                        "connection out of m-lines: track not forwarded to this peer"
                    );
                }
                continue;
            }
            announced.push((id.clone(), track_info(meta)));
        }
        if announced.is_empty() {
            return false;
        }
        let speaking: Vec<TrackId> = announced
            .iter()
            .map(|(id, _)| id)
            .filter(|id| speaking.contains(id))
            .cloned()
            .collect();
        out.send(
            subscriber,
            &ServerEvent::TracksAdded(TracksAdded::new(publisher, announced.into_iter().collect())),
        );
        // Someone joining while a publisher talks sees it talking, not silent until it pauses.
        for track_id in speaking {
            send_vad(subscriber, track_id, true, out);
        }
        true
    }

    /// The plane heard `publisher`'s audio track `track_id` start or stop carrying voice: every
    /// peer that knows the track (told of it, not told of its removal) is told, in join order.
    fn voice_activity(
        &mut self,
        roster: &Roster,
        publisher: &str,
        track_id: TrackId,
        speech: bool,
        out: &mut Outbox,
    ) {
        let Some(track) = self.peers.get_mut(publisher).and_then(|p| {
            p.inbound
                .values_mut()
                .find(|t| t.active && t.track_id == track_id && t.kind == MediaKind::Audio)
        }) else {
            tracing::debug!(publisher, track_id = %Untrusted(&track_id), "voice activity of an unknown track dropped");
            crate::rt::probe::emit(crate::rt::probe::Event::VoiceActivityOfGoneTrack);
            return;
        };
        if std::mem::replace(&mut track.speech, speech) == speech {
            return;
        }
        for other in roster.ids().filter(|p| *p != publisher) {
            if self.knows_track(other, publisher, &track_id) {
                send_vad(other, track_id.clone(), speech, out);
            }
        }
    }

    /// `peer` was told of `publisher`'s track `track_id` (`tracksAdded`) and not (yet) of its
    /// removal: what it may be told about the track.
    fn knows_track(&self, peer: &str, publisher: &str, track_id: &TrackId) -> bool {
        self.peers.get(peer).is_some_and(|s| {
            s.outbound
                .iter()
                .any(|o| !o.removed && o.publisher == publisher && o.track_id == *track_id)
        })
    }

    /// Marks `publisher`'s `track_ids` removed for `subscriber`; sends `tracksRemoved` for the
    /// ones the subscriber can already handle. Returns whether it sent one.
    fn retract(
        &mut self,
        publisher: &str,
        subscriber: &str,
        track_ids: &[TrackId],
        out: &mut Outbox,
    ) -> bool {
        let Some(sub) = self.peers.get_mut(subscriber) else {
            return false;
        };
        let mut now = Vec::new();
        for o in sub
            .outbound
            .iter_mut()
            .filter(|o| !o.removed && o.publisher == publisher && track_ids.contains(&o.track_id))
        {
            o.removed = true;
            if o.carried {
                o.removal_settled = true;
                now.push(o.track_id.clone());
            }
        }
        if now.is_empty() {
            return false;
        }
        out.send(
            subscriber,
            &ServerEvent::TracksRemoved(TracksRemoved {
                endpoint_id: publisher.to_owned(),
                track_ids: now,
            }),
        );
        true
    }

    fn send_error(&self, peer: &str, message: String, out: &mut Outbox) {
        out.send(peer, &ServerEvent::Error(ErrorData { message }));
    }

    fn metadata_too_large(&self, metadata: &Value) -> bool {
        serde_json::to_string(metadata)
            .map_or(true, |s| s.len() > self.config.max_track_metadata_bytes)
    }

    fn offer(&mut self, roster: &Roster, peer: &str, offer: SdpOffer, out: &mut Outbox) {
        let Some(state) = self.peers.get(peer) else {
            return;
        };
        if matches!(state.phase, Phase::AwaitingAnswer { .. }) {
            // The client sends one offer per `offerData`; a second one would be answered
            // with SDP the client no longer expects.
            tracing::debug!(peer, "sdpOffer while an answer is outstanding dropped");
            crate::rt::probe::emit(crate::rt::probe::Event::SdpOfferWhileAnswerOutstanding);
            return;
        }
        if let Err(message) = self.check_offer(&offer) {
            self.send_error(peer, format!("invalid sdpOffer: {message}"), out);
            self.finish_cycle(peer, out);
            return;
        }
        let sdp = match Sdp::parse(&offer.sdp_offer.sdp) {
            Ok(sdp) => sdp,
            Err(e) => {
                self.send_error(peer, format!("invalid sdpOffer: {e}"), out);
                self.finish_cycle(peer, out);
                return;
            }
        };
        let max_published = self.config.max_published_tracks;
        let state = self.peers.get_mut(peer).expect("checked above");
        let prefix = format!("{peer}:");
        let mut mlines = Vec::with_capacity(sdp.media.len());
        let mut mid_to_track_id = BTreeMap::new();
        let mut published = Vec::new();
        let mut kept_inbound: Vec<String> = Vec::new();
        let mut retiring = Vec::new();
        let mut active_count = 0;
        for section in &sdp.media {
            let mid = &section.mid;
            let kind = match section.media.as_str() {
                "audio" => Some(MediaKind::Audio),
                "video" => Some(MediaKind::Video),
                _ => None,
            };
            let sends = matches!(section.direction, Direction::SendOnly | Direction::SendRecv);
            let receives = matches!(section.direction, Direction::RecvOnly | Direction::SendRecv);
            let offered_track = offer.mid_to_track_id.get(mid);
            let mut role = MLineRole::Inactive;
            if let Some(index) = state
                .outbound
                .iter()
                .position(|o| o.mid.as_ref() == Some(mid))
            {
                let o = &state.outbound[index];
                mid_to_track_id.insert(mid.clone(), o.track_id.clone());
                if receives && !section.is_rejected() {
                    if !o.removed {
                        role = outbound_role(o);
                    } else if o.removal_settled && !o.retired {
                        retiring.push(mid.clone());
                    }
                }
            } else if let Some(known) = state.inbound.get(mid) {
                mid_to_track_id.insert(mid.clone(), known.track_id.clone());
                if known.active
                    && sends
                    && !section.is_rejected()
                    && offered_track == Some(&known.track_id)
                {
                    role = MLineRole::Inbound {
                        kind: known.kind,
                        track_id: known.track_id.clone(),
                    };
                    kept_inbound.push(mid.clone());
                    active_count += 1;
                }
            } else if let (Some(kind), false) = (kind, section.is_rejected()) {
                match offered_track {
                    Some(track_id)
                        if sends
                            && track_id.starts_with(&prefix)
                            && track_id.len() <= 256
                            && !state.inbound.values().any(|t| &t.track_id == track_id)
                            && !published.iter().any(|(_, t, _, _)| t == track_id) =>
                    {
                        published.push((mid.clone(), track_id.clone(), kind, section));
                    }
                    None if receives => {
                        // Paired below, after every known mid has been seen.
                    }
                    _ => {}
                }
            }
            mlines.push(MLine {
                mid: mid.clone(),
                role,
            });
        }
        // New `recvonly` m-lines take the oldest unpaired announced tracks of their kind: the
        // client made exactly one per track counted in `tracksTypes`.
        for (line, section) in mlines.iter_mut().zip(&sdp.media) {
            let receives = matches!(section.direction, Direction::RecvOnly | Direction::SendRecv);
            let kind = match section.media.as_str() {
                "audio" => MediaKind::Audio,
                "video" => MediaKind::Video,
                _ => continue,
            };
            if !receives
                || section.is_rejected()
                || mid_to_track_id.contains_key(&line.mid)
                || offer.mid_to_track_id.contains_key(&line.mid)
            {
                continue;
            }
            let Some(o) = state
                .outbound
                .iter_mut()
                .find(|o| o.mid.is_none() && o.kind == kind)
            else {
                continue;
            };
            o.mid = Some(line.mid.clone());
            mid_to_track_id.insert(line.mid.clone(), o.track_id.clone());
            if !o.removed {
                line.role = outbound_role(o);
            }
        }
        // Tracks that stopped: their m-line went inactive, lost its track id, or vanished.
        let mut removed = Vec::new();
        for (mid, t) in state.inbound.iter_mut() {
            if t.active && !kept_inbound.contains(mid) {
                t.active = false;
                t.speech = false;
                removed.push(t.track_id.clone());
            }
        }
        let mut new_tracks = Vec::new();
        for (mid, track_id, kind, _) in published {
            if active_count >= max_published {
                tracing::debug!(peer, track_id = %Untrusted(&track_id), "published track over the limit answered inactive");
                continue;
            }
            active_count += 1;
            let metadata = offer
                .track_id_to_track_metadata
                .get(&track_id)
                .cloned()
                .unwrap_or_default();
            state.inbound.insert(
                mid.clone(),
                Inbound {
                    track_id: track_id.clone(),
                    kind,
                    metadata: metadata.clone(),
                    active: true,
                    speech: false,
                },
            );
            mid_to_track_id.insert(mid.clone(), track_id.clone());
            let line = mlines
                .iter_mut()
                .find(|l| l.mid == mid)
                .expect("every section has a line");
            line.role = MLineRole::Inbound {
                kind,
                track_id: track_id.clone(),
            };
            new_tracks.push((track_id, kind, metadata));
        }
        let negotiation = self.next_negotiation;
        self.next_negotiation += 1;
        let forwarding: BTreeSet<String> = mlines
            .iter()
            .filter(|l| matches!(l.role, MLineRole::Outbound { .. }))
            .map(|l| l.mid.clone())
            .collect();
        // The plane stops forwarding a line as soon as it has an offer without it; it starts
        // on a new one only with the answer (below).
        for o in &mut state.outbound {
            if !o.mid.as_ref().is_some_and(|m| forwarding.contains(m)) {
                o.forwarded = false;
            }
        }
        state.phase = Phase::AwaitingAnswer {
            negotiation,
            mid_to_track_id,
            retiring,
            forwarding,
        };
        out.plane(PlaneCommand::Offer {
            peer: peer.to_owned(),
            offer: PlaneOffer {
                negotiation,
                sdp: offer.sdp_offer.sdp,
                mlines,
            },
        });
        if removed.is_empty() && new_tracks.is_empty() {
            return;
        }
        // Each other peer hears of removals, then additions, and only then gets the
        // `offerData` whose counts include them.
        let others: Vec<PeerId> = roster
            .ids()
            .filter(|p| *p != peer)
            .map(str::to_owned)
            .collect();
        for other in others {
            let mut renegotiate = self.retract(peer, &other, &removed, out);
            if !new_tracks.is_empty() && self.announce(peer, &other, &new_tracks, out) {
                renegotiate = true;
            }
            if renegotiate {
                self.request_renegotiation(&other, out);
            }
        }
    }

    fn check_offer(&self, offer: &SdpOffer) -> Result<(), String> {
        if offer.sdp_offer.kind != "offer" {
            return Err(format!(
                "type must be \"offer\", not {:?}",
                offer.sdp_offer.kind.chars().take(16).collect::<String>()
            ));
        }
        if offer
            .track_id_to_track_metadata
            .values()
            .any(|m| self.metadata_too_large(m))
        {
            return Err(format!(
                "track metadata is larger than {} bytes",
                self.config.max_track_metadata_bytes
            ));
        }
        Ok(())
    }

    fn answer(
        &mut self,
        roster: &Roster,
        peer: &str,
        negotiation: u64,
        result: Result<String, String>,
        out: &mut Outbox,
    ) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        let (mid_to_track_id, retiring, forwarding) = match &state.phase {
            Phase::AwaitingAnswer {
                negotiation: n,
                mid_to_track_id,
                retiring,
                forwarding,
            } if *n == negotiation => (
                mid_to_track_id.clone(),
                retiring.clone(),
                forwarding.clone(),
            ),
            _ => {
                tracing::debug!(peer, negotiation, "stale answer dropped");
                crate::rt::probe::emit(crate::rt::probe::Event::StaleAnswerDropped);
                return;
            }
        };
        let sdp = match result {
            Ok(sdp) => sdp,
            Err(reason) => {
                // The plane logged why (within its per-peer budget); the client hears of it.
                tracing::debug!(peer, reason = %Untrusted(&reason), "media plane could not answer");
                state.held_candidates.clear();
                state.pending = false;
                state.phase = Phase::Idle;
                self.send_error(peer, "media negotiation failed".to_owned(), out);
                return;
            }
        };
        // A line offered for a track whose publisher left while the plane made this answer:
        // the client was told (`endpointRemoved`) and forgot the track, and membrane-webrtc-js
        // 0.5.3 throws in `ontrack` for a receiving line whose track it does not know. The
        // answer keeps the line, inactive.
        // (Its slot may even have been recycled for a newer track since.)
        let told_gone = |t: &TrackId| {
            state
                .outbound
                .iter()
                .find(|o| o.track_id == *t)
                .is_none_or(|o| o.removed && o.removal_settled && !o.carried)
        };
        let own = |t: &TrackId| state.inbound.values().any(|i| i.track_id == *t);
        let gone: BTreeSet<String> = mid_to_track_id
            .iter()
            .filter(|(_, t)| !own(t) && told_gone(t))
            .map(|(m, _)| m.clone())
            .collect();
        if !gone.is_empty() {
            crate::rt::probe::emit(crate::rt::probe::Event::AnswerSilencedGoneTracks);
        }
        let sdp = sdp::make_inactive(&sdp, &gone);
        out.send(
            peer,
            &ServerEvent::Custom(CustomEvent::SdpAnswer(SdpAnswer {
                kind: "answer".to_owned(),
                sdp,
                mid_to_track_id: mid_to_track_id.clone(),
            })),
        );
        state.answered = true;
        for o in &mut state.outbound {
            if o.mid.as_ref().is_some_and(|m| retiring.contains(m)) {
                o.retired = true;
            }
        }
        let mut keyframes = Vec::new();
        for o in &mut state.outbound {
            // The answer must name this very track: a slot recycled while the answer was being
            // made still maps its mid to the old track in it.
            let named = o
                .mid
                .as_ref()
                .and_then(|m| mid_to_track_id.get(m))
                .is_some_and(|t| *t == o.track_id);
            if !named {
                continue;
            }
            o.carried = true;
            let forwarded = !o.removed && o.mid.as_ref().is_some_and(|m| forwarding.contains(m));
            if forwarded && !o.forwarded {
                keyframes.push((o.publisher.clone(), o.track_id.clone()));
            }
            o.forwarded = forwarded;
        }
        if !state.held_candidates.is_empty() {
            crate::rt::probe::emit(crate::rt::probe::Event::HeldCandidatesFlushed {
                held: state.held_candidates.len(),
                max: self.config.max_held_candidates,
            });
        }
        for candidate in std::mem::take(&mut state.held_candidates) {
            send_candidate(peer, candidate, out);
        }
        for (publisher, track_id) in keyframes {
            out.plane(PlaneCommand::RequestKeyframe {
                publisher,
                track_id,
            });
        }
        // Tracks removed before this peer could handle their removal: now it can.
        let mut late: BTreeMap<PeerId, Vec<TrackId>> = BTreeMap::new();
        for o in &mut state.outbound {
            if o.removed && o.carried && !o.removal_settled {
                o.removal_settled = true;
                late.entry(o.publisher.clone())
                    .or_default()
                    .push(o.track_id.clone());
            }
        }
        // In join order, like every other multi-publisher output.
        let mut renegotiate = false;
        for publisher in roster.ids() {
            if let Some(track_ids) = late.remove(publisher) {
                out.send(
                    peer,
                    &ServerEvent::TracksRemoved(TracksRemoved {
                        endpoint_id: publisher.to_owned(),
                        track_ids,
                    }),
                );
                // 0.7.x locks its own renegotiation after `tracksRemoved` until the next answer.
                renegotiate = true;
            }
        }
        if renegotiate {
            state.pending = true;
        }
        self.finish_cycle(peer, out);
    }

    fn update_track_metadata(
        &mut self,
        roster: &Roster,
        peer: &str,
        track_id: TrackId,
        metadata: Value,
        out: &mut Outbox,
    ) {
        if self.metadata_too_large(&metadata) {
            let limit = self.config.max_track_metadata_bytes;
            self.send_error(
                peer,
                format!("track metadata is larger than {limit} bytes"),
                out,
            );
            return;
        }
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        let Some(track) = state
            .inbound
            .values_mut()
            .find(|t| t.active && t.track_id == track_id)
        else {
            tracing::debug!(peer, track_id = %Untrusted(&track_id), "metadata update for an unknown track ignored");
            return;
        };
        if track.metadata == metadata {
            return;
        }
        track.metadata = metadata.clone();
        let event = ServerEvent::TrackUpdated(TrackUpdated {
            endpoint_id: peer.to_owned(),
            track_id: track_id.clone(),
            metadata,
        });
        for other in roster.ids().filter(|p| *p != peer) {
            if self.knows_track(other, peer, &track_id) {
                out.send(other, &event);
            }
        }
    }

    fn keyframes_for_subscriber(&self, peer: &str, out: &mut Outbox) {
        let Some(state) = self.peers.get(peer) else {
            return;
        };
        for o in state.outbound.iter().filter(|o| o.forwarded && !o.removed) {
            out.plane(PlaneCommand::RequestKeyframe {
                publisher: o.publisher.clone(),
                track_id: o.track_id.clone(),
            });
        }
    }
}

fn outbound_role(o: &Outbound) -> MLineRole {
    MLineRole::Outbound {
        kind: o.kind,
        publisher: o.publisher.clone(),
        track_id: o.track_id.clone(),
        stream_id: stream_id_for(&o.publisher),
    }
}

fn send_vad(peer: &str, track_id: TrackId, speech: bool, out: &mut Outbox) {
    out.send(
        peer,
        &ServerEvent::Custom(CustomEvent::VadNotification(VadNotification {
            track_id,
            status: VadStatus::of(speech),
        })),
    );
}

fn send_candidate(peer: &str, candidate: String, out: &mut Outbox) {
    out.send(
        peer,
        &ServerEvent::Custom(CustomEvent::Candidate(ServerCandidate {
            candidate,
            sdp_m_line_index: 0,
            sdp_mid: None,
            username_fragment: None,
        })),
    );
}

impl Negotiation for TrackNegotiation {
    fn published_tracks(&self, peer: &str) -> BTreeMap<TrackId, TrackInfo> {
        self.peers
            .get(peer)
            .map(PeerState::active_tracks)
            .unwrap_or_default()
    }

    fn endpoint_connected(&mut self, roster: &Roster, peer: &str, out: &mut Outbox) {
        if self.peers.contains_key(peer) {
            return;
        }
        let turn_servers = match &self.config.turn_issuer {
            Some(issuer) => issuer.issue(peer),
            None => self.config.turn_servers.clone(),
        };
        self.peers
            .insert(peer.to_owned(), PeerState::new(turn_servers));
        out.plane(PlaneCommand::AddPeer {
            peer: peer.to_owned(),
        });
        let publishers: Vec<(PeerId, Vec<NewTrack>)> = roster
            .ids()
            .filter(|p| *p != peer)
            .filter_map(|p| {
                let state = self.peers.get(p)?;
                let tracks: Vec<_> = state
                    .inbound
                    .values()
                    .filter(|t| t.active)
                    .map(|t| (t.track_id.clone(), t.kind, t.metadata.clone()))
                    .collect();
                (!tracks.is_empty()).then(|| (p.to_owned(), tracks))
            })
            .collect();
        if publishers.is_empty() {
            // Nothing to receive: the client asks with `renegotiateTracks` when it publishes.
            return;
        }
        let mut announced = false;
        for (publisher, tracks) in &publishers {
            announced |= self.announce(publisher, peer, tracks, out);
        }
        if announced {
            self.request_renegotiation(peer, out);
        }
    }

    fn endpoint_removed(&mut self, roster: &Roster, peer: &str, out: &mut Outbox) {
        let Some(state) = self.peers.remove(peer) else {
            return;
        };
        out.plane(PlaneCommand::RemovePeer {
            peer: peer.to_owned(),
        });
        let track_ids: Vec<TrackId> = state.inbound.values().map(|t| t.track_id.clone()).collect();
        for other in roster.ids() {
            let Some(sub) = self.peers.get_mut(other) else {
                continue;
            };
            // Tracks the client cannot erase by mid yet are erased by `endpointRemoved`.
            for o in sub
                .outbound
                .iter_mut()
                .filter(|o| o.publisher == peer && !o.carried)
            {
                o.removed = true;
                o.removal_settled = true;
            }
            if self.retract(peer, other, &track_ids, out) {
                self.renegotiate_after_leave.push(other.to_owned());
            }
        }
    }

    fn after_endpoint_removed(&mut self, _roster: &Roster, _peer: &str, out: &mut Outbox) {
        for other in std::mem::take(&mut self.renegotiate_after_leave) {
            self.request_renegotiation(&other, out);
        }
    }

    fn handle(&mut self, roster: &Roster, peer: &str, event: NegotiationEvent, out: &mut Outbox) {
        match event {
            NegotiationEvent::RenegotiateTracks => self.request_renegotiation(peer, out),
            NegotiationEvent::SdpOffer(offer) => self.offer(roster, peer, offer, out),
            NegotiationEvent::Candidate(c) => {
                // Browsers signal end-of-candidates with an empty one; ICE needs nothing for it.
                if !c.candidate.is_empty() && self.peers.contains_key(peer) {
                    out.plane(PlaneCommand::RemoteCandidate {
                        peer: peer.to_owned(),
                        candidate: c.candidate,
                        sdp_m_line_index: c.sdp_m_line_index,
                    });
                }
            }
            NegotiationEvent::UpdateTrackMetadata { track_id, metadata } => {
                self.update_track_metadata(roster, peer, track_id, metadata, out)
            }
            // Simulcast and bitrate hints: no simulcast forwarding yet (research §9 item 9).
            NegotiationEvent::TrackVariantBitrates { .. }
            | NegotiationEvent::SetTargetTrackVariant { .. }
            | NegotiationEvent::EnableTrackEncoding { .. }
            | NegotiationEvent::DisableTrackEncoding { .. } => {
                tracing::trace!(peer, ?event, "simulcast hint ignored");
            }
        }
    }

    fn plane_event(&mut self, roster: &Roster, event: PlaneEvent, out: &mut Outbox) {
        if !self.peers.contains_key(event.peer()) {
            tracing::debug!(?event, "plane event for a peer that left dropped");
            return;
        }
        match event {
            PlaneEvent::Answer {
                peer,
                negotiation,
                result,
            } => self.answer(roster, &peer, negotiation, result, out),
            PlaneEvent::LocalCandidate { peer, candidate } => {
                let max = self.config.max_held_candidates;
                let state = self.peers.get_mut(&peer).expect("checked above");
                if matches!(state.phase, Phase::AwaitingAnswer { .. }) {
                    if state.held_candidates.len() < max {
                        state.held_candidates.push(candidate);
                    }
                } else if state.answered {
                    send_candidate(&peer, candidate, out);
                } else {
                    tracing::debug!(%peer, "candidate without an answer dropped");
                }
            }
            PlaneEvent::TrackStarted { peer, track_id } => {
                // Subscribers set up before media flowed asked for a keyframe nobody could
                // send; ask again now that the publisher is sending.
                let subscribed = self.peers.values().any(|s| {
                    s.outbound.iter().any(|o| {
                        o.forwarded && !o.removed && o.publisher == peer && o.track_id == track_id
                    })
                });
                if subscribed {
                    out.plane(PlaneCommand::RequestKeyframe {
                        publisher: peer,
                        track_id,
                    });
                }
            }
            PlaneEvent::TrackEnded { peer, track_id } => {
                tracing::debug!(%peer, track_id = %Untrusted(&track_id), "inbound track ended");
                crate::rt::probe::emit(crate::rt::probe::Event::InboundTrackEnded);
            }
            PlaneEvent::VoiceActivity {
                peer,
                track_id,
                speech,
            } => self.voice_activity(roster, &peer, track_id, speech, out),
            PlaneEvent::Connected { peer } => self.keyframes_for_subscriber(&peer, out),
            PlaneEvent::Failed { peer, reason } => {
                // The browser sees the same failure and reports `connectionError` itself.
                tracing::info!(%peer, %reason, "peer connection failed");
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
