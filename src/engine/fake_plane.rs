//! A deterministic [`MediaPlane`] without a network, for unit tests and the simulation.
//!
//! It answers every offer at once with a synthetic but structurally valid SDP derived from the
//! offer (same m-lines and mids, directions from the core's decisions, fixed fake ICE
//! credentials and fingerprint, the offer's own codecs), then reports one fake host candidate,
//! the start or end of inbound tracks, and `Connected` after the first answer.
//!
//! Built with [`FakePlane::with_latency`] (the simulation does), each offer's events are held
//! back for a seeded random delay, as a real plane's ICE gathering and handshakes are, so the
//! negotiation windows open: a renegotiation while an answer is outstanding, a leave or a room
//! crash while it is in flight. Candidates then also trickle as a real agent's do: sometimes one
//! as soon as the peer is added (gathering starts before any offer, so it can land in any phase
//! of the first negotiation) and sometimes one more some time after an answer. Delays never
//! reorder: one plane's events go out in the order of the calls that caused them, and none
//! after the plane is dropped.
//!
//! Built [`FakePlane::voicing`], it also reports voice activity: at every offer in the room,
//! each published audio track starts or stops speaking at random, or repeats its status as a
//! restarted reader does (on the media lane, after its start), and a track that ended while
//! speaking reports its silence after its end, as a real plane's reader can.
//!
//! It must never touch a socket; without latency it never reads a clock or draws randomness,
//! and for one sequence of calls it reports the same events byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::rt;
use crate::rt::probe::{self, Event};

use super::events::TrackId;
use super::plane::{MLineRole, MediaKind, MediaPlane, PlaneEvent, PlaneOffer, PlaneSink};
use super::sdp::Sdp;
use super::session::PeerId;

/// The one candidate the fake plane reports per answer.
pub const FAKE_CANDIDATE: &str = "candidate:1 1 UDP 2130706431 127.0.0.1 9 typ host";
const FAKE_FINGERPRINT: &str = "sha-256 \
    00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";

#[derive(Debug, Default)]
struct FakePeer {
    answers: u64,
    inbound: BTreeSet<TrackId>,
    /// When each inbound track's media starts flowing (its `TrackStarted` is delivered); `None`
    /// without latency: at once.
    started: BTreeMap<TrackId, Option<rt::time::Instant>>,
    /// When ICE connects (the first `Connected` is delivered); unset before the first answer.
    connected: Option<Option<rt::time::Instant>>,
    /// What the peer receives, by track: the legs of its last offer.
    legs: BTreeMap<TrackId, Leg>,
    /// Its published audio tracks (of its last answered offer), and those speaking now.
    audio: BTreeSet<TrackId>,
    speaking: BTreeSet<TrackId>,
}

/// A track forwarded to a subscriber. A subscriber shows no picture until a keyframe reaches
/// it, and a keyframe asked for before both ends flow is lost (the real plane's PLI goes to a
/// publisher that sends nothing yet, or its keyframe to a transport not connected yet).
#[derive(Debug)]
struct Leg {
    publisher: PeerId,
    video: bool,
    keyframe: bool,
}

/// Where an offer's events go: straight to the sink, or through the delaying tasks.
#[derive(Debug)]
enum Outbox {
    Now(PlaneSink),
    Later {
        /// Answers, candidates, connectivity: in the order of the calls that caused them.
        signalling: Lane,
        /// Media starting to flow: after its answer, but not in order with other peers'
        /// signalling (a subscriber's answer may come before a publisher's first packet).
        media: Lane,
        max: Duration,
    },
}

/// One ordered stream of delayed deliveries, with its task.
#[derive(Debug)]
struct Lane {
    tx: mpsc::UnboundedSender<(rt::time::Instant, Vec<PlaneEvent>)>,
    /// The delivery instant of the last batch: later batches never go out before it.
    last: Option<rt::time::Instant>,
    /// Dropped with the plane: the task then discards what is still waiting.
    _alive: oneshot::Sender<()>,
}

impl Lane {
    fn spawn(sink: PlaneSink) -> Lane {
        let (tx, mut rx) = mpsc::unbounded_channel::<(rt::time::Instant, Vec<PlaneEvent>)>();
        let (alive, mut gone) = oneshot::channel::<()>();
        rt::spawn_task(async move {
            while let Some((at, events)) = rx.recv().await {
                tokio::select! {
                    biased;
                    _ = &mut gone => return,
                    _ = rt::time::sleep_until(at) => {}
                }
                for e in events {
                    sink.send(e);
                }
            }
        });
        Lane {
            tx,
            last: None,
            _alive: alive,
        }
    }

    /// Queues `events` for a random delay below `max` after `after`, never before the last.
    fn push(
        &mut self,
        events: Vec<PlaneEvent>,
        after: rt::time::Instant,
        max: Duration,
    ) -> rt::time::Instant {
        let delay = Duration::from_micros(rt::rand::below(max.as_micros() as u64));
        let at = after + delay;
        let at = self.last.map_or(at, |l| l.max(at));
        self.last = Some(at);
        // The task only ends when this sender is dropped.
        let _ = self.tx.send((at, events));
        at
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct FakePlane {
    out: Outbox,
    peers: BTreeMap<PeerId, FakePeer>,
    keyframe_requests: u64,
    /// Candidates reported by one trickle (see [`Self::trickling`]).
    burst: usize,
    /// Reports voice activity (see [`Self::voicing`]).
    voices: bool,
}

impl FakePlane {
    pub fn new(sink: PlaneSink) -> Self {
        FakePlane {
            out: Outbox::Now(sink),
            peers: BTreeMap::new(),
            keyframe_requests: 0,
            burst: 1,
            voices: false,
        }
    }

    /// Reports voice activity of published audio tracks (see the module documentation).
    pub fn voicing(mut self, on: bool) -> Self {
        self.voices = on;
        self
    }

    /// Each trickle reports `n` candidates at once (a host with many interfaces), so the
    /// room's mailbox can fill with the plane's reports alone.
    pub fn trickling(mut self, n: usize) -> Self {
        self.burst = n.max(1);
        self
    }

    /// A plane whose answers (and the events that follow them) arrive after a delay drawn
    /// uniformly below `max` from `rt::rand` (seeded under simulation). Spawns the delivering
    /// tasks, so it must be called inside the runtime. `max` zero is [`Self::new`].
    pub fn with_latency(sink: PlaneSink, max: Duration) -> Self {
        if max.is_zero() {
            return Self::new(sink);
        }
        FakePlane {
            out: Outbox::Later {
                signalling: Lane::spawn(sink.clone()),
                media: Lane::spawn(sink),
                max,
            },
            peers: BTreeMap::new(),
            keyframe_requests: 0,
            burst: 1,
            voices: false,
        }
    }

    /// Keyframe requests received so far (they have no other observable effect here).
    pub fn keyframe_requests(&self) -> u64 {
        self.keyframe_requests
    }
}

impl MediaPlane for FakePlane {
    fn add_peer(&mut self, peer: &str) {
        self.peers.entry(peer.to_owned()).or_default();
        if self.trickles() {
            self.deliver(vec![candidate(peer); self.burst]);
        }
    }

    fn remove_peer(&mut self, peer: &str) {
        self.peers.remove(peer);
    }

    fn offer(&mut self, peer: &str, offer: PlaneOffer) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        let events = answer_events(state, peer, &offer);
        let answered = matches!(
            events.first(),
            Some(PlaneEvent::Answer { result: Ok(_), .. })
        );
        if answered {
            attach_legs(state, &offer);
        }
        let started: Vec<TrackId> = events
            .iter()
            .filter_map(|e| match e {
                PlaneEvent::TrackStarted { track_id, .. } => Some(track_id.clone()),
                _ => None,
            })
            .collect();
        let first_connect = answered && state.connected.is_none();
        let later = matches!(self.out, Outbox::Later { .. });
        let (media, mut events): (Vec<_>, Vec<_>) = events
            .into_iter()
            .partition(|e| later && matches!(e, PlaneEvent::TrackStarted { .. }));
        // ICE connects some time after the first answer, not with it: what is asked of the
        // subscriber's transport before then is lost.
        let held = (first_connect && later).then(|| events.pop()).flatten();
        let at = self.deliver(events);
        let connected_at = match held {
            Some(connected) => Some(self.deliver(vec![connected])),
            None => first_connect.then_some(at),
        };
        // The first packet of a new inbound track comes after the answer and connectivity.
        let media_at = match &mut self.out {
            Outbox::Later {
                media: lane, max, ..
            } if !media.is_empty() => {
                let after = connected_at.flatten().or(at).unwrap_or_else(rt::time::now);
                Some(lane.push(media, after, *max))
            }
            _ => at,
        };
        let state = self.peers.get_mut(peer).expect("looked up above");
        state.started.retain(|t, _| state.inbound.contains(t));
        for t in started {
            state.started.insert(t, media_at);
        }
        if let Some(c) = connected_at {
            state.connected = Some(c);
        }
        if answered && self.trickles() {
            self.deliver(vec![candidate(peer); self.burst]);
        }
        if self.voices {
            let audio = if answered {
                published_audio(&offer)
            } else {
                state_audio(self.peers.get(peer))
            };
            let voices = self.voice_changes(peer, audio);
            self.deliver_media(voices);
        }
    }

    fn remote_candidate(&mut self, peer: &str, candidate: &str, _index: Option<u32>) {
        // A real plane would fail on either (or add an empty candidate to a live agent).
        if candidate.is_empty() || !self.peers.contains_key(peer) {
            probe::emit(Event::PlaneGotUnwantedCandidate);
        }
    }

    fn request_keyframe(&mut self, publisher: &str, track_id: &str) {
        self.keyframe_requests += 1;
        // A keyframe costs the publisher a burst of bandwidth: the core asks only for a track
        // some connection forwards (the plane was given that leg with the subscriber's offer).
        let forwarded = self.peers.values().any(|s| {
            s.legs
                .get(track_id)
                .is_some_and(|leg| leg.publisher == publisher)
        });
        if !forwarded {
            probe::emit(Event::PlaneGotUnwantedKeyframeRequest);
        }
        let sending = self
            .peers
            .get(publisher)
            .and_then(|p| p.started.get(track_id))
            .is_some_and(|at| passed(*at));
        if !sending {
            return;
        }
        for state in self.peers.values_mut() {
            let connected = state.connected.is_some_and(passed);
            match state.legs.get_mut(track_id) {
                Some(leg) if connected && leg.publisher == publisher => leg.keyframe = true,
                _ => {}
            }
        }
    }

    fn keyframe_waits(&self) -> Vec<(PeerId, TrackId)> {
        let mut waits = Vec::new();
        for (peer, state) in &self.peers {
            if !state.connected.is_some_and(passed) {
                continue;
            }
            for (track_id, leg) in &state.legs {
                let sending = self
                    .peers
                    .get(&leg.publisher)
                    .and_then(|p| p.started.get(track_id))
                    .is_some_and(|at| passed(*at));
                if leg.video && !leg.keyframe && sending {
                    waits.push((peer.clone(), track_id.clone()));
                }
            }
        }
        waits
    }
}

/// Whether a delivery time has come (`None`: delivered at once, no clock read).
fn passed(at: Option<rt::time::Instant>) -> bool {
    at.is_none_or(|t| t <= rt::time::now())
}

/// The legs of an answered offer: a track the peer already received keeps its keyframe state;
/// a new one (or one moved to another publisher) waits for a keyframe.
fn attach_legs(state: &mut FakePeer, offer: &PlaneOffer) {
    let mut legs = BTreeMap::new();
    for m in &offer.mlines {
        if let MLineRole::Outbound {
            kind,
            publisher,
            track_id,
            ..
        } = &m.role
        {
            let leg = match state.legs.remove(track_id) {
                Some(leg) if leg.publisher == *publisher => leg,
                _ => Leg {
                    publisher: publisher.clone(),
                    video: *kind == MediaKind::Video,
                    keyframe: false,
                },
            };
            legs.insert(track_id.clone(), leg);
        }
    }
    state.legs = legs;
}

/// The audio tracks `offer` publishes.
fn published_audio(offer: &PlaneOffer) -> BTreeSet<TrackId> {
    offer
        .mlines
        .iter()
        .filter_map(|m| match &m.role {
            MLineRole::Inbound {
                kind: MediaKind::Audio,
                track_id,
            } => Some(track_id.clone()),
            _ => None,
        })
        .collect()
}

fn state_audio(state: Option<&FakePeer>) -> BTreeSet<TrackId> {
    state.map(|s| s.audio.clone()).unwrap_or_default()
}

impl FakePlane {
    /// `peer` now publishes the audio tracks `audio`: those of its that ended while speaking
    /// report silence (after their end), and every published audio track in the room, in
    /// peer order, starts or stops speaking with even odds, or now and then reports its status
    /// again (with latency; without, each one flips).
    fn voice_changes(&mut self, peer: &str, audio: BTreeSet<TrackId>) -> Vec<PlaneEvent> {
        let mut out = Vec::new();
        if let Some(state) = self.peers.get_mut(peer) {
            let ended: Vec<TrackId> = state.speaking.difference(&audio).cloned().collect();
            for track_id in ended {
                state.speaking.remove(&track_id);
                out.push(voice(peer, track_id, false));
            }
            state.audio = audio;
        }
        // Without latency the plane draws nothing: every track flips.
        let drawn = matches!(self.out, Outbox::Later { .. });
        for (p, state) in self.peers.iter_mut() {
            for track_id in &state.audio {
                let speaking = state.speaking.contains(track_id);
                let speech = match drawn.then(|| rt::rand::below(8)) {
                    None | Some(0..=3) => !speaking,
                    // A reader restarted (a renegotiation, an ICE restart) reports what it
                    // hears afresh, which may be what the room holds already.
                    Some(4) => speaking,
                    Some(_) => continue,
                };
                if speech {
                    state.speaking.insert(track_id.clone());
                } else {
                    state.speaking.remove(track_id);
                }
                out.push(voice(p, track_id.clone(), speech));
            }
        }
        out
    }

    /// Sends `events` on the media lane (after the media already on it), or now.
    fn deliver_media(&mut self, events: Vec<PlaneEvent>) {
        if events.is_empty() {
            return;
        }
        match &mut self.out {
            Outbox::Now(sink) => events.into_iter().for_each(|e| sink.send(e)),
            Outbox::Later { media, max, .. } => {
                media.push(events, rt::time::now(), *max);
            }
        }
    }

    /// Whether to report one more candidate on its own (with latency only, half the time).
    fn trickles(&self) -> bool {
        matches!(self.out, Outbox::Later { .. }) && rt::rand::chance(0.5)
    }

    /// Sends `events` on; returns when they are delivered (`None`: now, without latency).
    fn deliver(&mut self, events: Vec<PlaneEvent>) -> Option<rt::time::Instant> {
        match &mut self.out {
            Outbox::Now(sink) => {
                events.into_iter().for_each(|e| sink.send(e));
                None
            }
            Outbox::Later {
                signalling, max, ..
            } => Some(signalling.push(events, rt::time::now(), *max)),
        }
    }
}

fn voice(peer: &str, track_id: TrackId, speech: bool) -> PlaneEvent {
    PlaneEvent::VoiceActivity {
        peer: peer.to_owned(),
        track_id,
        speech,
    }
}

fn candidate(peer: &str) -> PlaneEvent {
    PlaneEvent::LocalCandidate {
        peer: peer.to_owned(),
        candidate: FAKE_CANDIDATE.to_owned(),
    }
}

/// What the plane reports for one offer of `peer`, updating what it knows of the peer.
fn answer_events(state: &mut FakePeer, peer: &str, offer: &PlaneOffer) -> Vec<PlaneEvent> {
    let mut out = Vec::new();
    state.answers += 1;
    let result = fake_answer(offer, state.answers);
    let ok = result.is_ok();
    out.push(PlaneEvent::Answer {
        peer: peer.to_owned(),
        negotiation: offer.negotiation,
        result,
    });
    if !ok {
        return out;
    }
    out.push(candidate(peer));
    let inbound: BTreeSet<TrackId> = offer
        .mlines
        .iter()
        .filter_map(|m| match &m.role {
            MLineRole::Inbound { track_id, .. } => Some(track_id.clone()),
            _ => None,
        })
        .collect();
    for track_id in state.inbound.difference(&inbound) {
        out.push(PlaneEvent::TrackEnded {
            peer: peer.to_owned(),
            track_id: track_id.clone(),
        });
    }
    for track_id in inbound.difference(&state.inbound) {
        out.push(PlaneEvent::TrackStarted {
            peer: peer.to_owned(),
            track_id: track_id.clone(),
        });
    }
    state.inbound = inbound;
    // ICE connects once; a renegotiation (even with an ICE restart) keeps the connection's
    // state, as a real plane's does, so nothing may lean on a `Connected` per answer.
    if state.connected.is_none() {
        out.push(PlaneEvent::Connected {
            peer: peer.to_owned(),
        });
    }
    out
}

/// The answer the fake plane gives to `offer`; `version` distinguishes successive answers to
/// one peer (it goes into the origin line and the ICE credentials, as an ICE restart needs).
pub fn fake_answer(offer: &PlaneOffer, version: u64) -> Result<String, String> {
    let sdp = Sdp::parse(&offer.sdp).map_err(|e| e.to_string())?;
    if sdp.media.len() != offer.mlines.len()
        || sdp
            .media
            .iter()
            .zip(&offer.mlines)
            .any(|(s, m)| s.mid != m.mid)
    {
        return Err("the m-line decisions do not match the offer".to_owned());
    }
    let mut out = String::new();
    let bundle: Vec<&str> = sdp
        .media
        .iter()
        .filter(|s| !s.is_rejected())
        .map(|s| s.mid.as_str())
        .collect();
    // `write!` into a String cannot fail.
    let _ = write!(
        out,
        "v=0\r\no=- 0 {version} IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    );
    if !bundle.is_empty() {
        let _ = write!(out, "a=group:BUNDLE {}\r\n", bundle.join(" "));
    }
    out.push_str("a=extmap-allow-mixed\r\na=msid-semantic: WMS *\r\na=ice-lite\r\n");
    for (section, mline) in sdp.media.iter().zip(&offer.mlines) {
        let port = if section.is_rejected() { 0 } else { 9 };
        let _ = write!(
            out,
            "m={} {port} {} {}\r\nc=IN IP4 0.0.0.0\r\n",
            section.media,
            section.proto,
            section.formats.join(" ")
        );
        let _ = write!(
            out,
            "a=ice-ufrag:fake{version}\r\na=ice-pwd:fakepasswordfakepassword{version}\r\n\
             a=fingerprint:{FAKE_FINGERPRINT}\r\na=setup:passive\r\na=mid:{}\r\n",
            section.mid
        );
        let direction = match &mline.role {
            MLineRole::Inbound { .. } => "recvonly",
            MLineRole::Outbound { .. } => "sendonly",
            MLineRole::Inactive => "inactive",
        };
        let _ = write!(out, "a={direction}\r\n");
        if let MLineRole::Outbound {
            track_id,
            stream_id,
            ..
        } = &mline.role
        {
            let _ = write!(out, "a=msid:{stream_id} {track_id}\r\n");
        }
        out.push_str("a=rtcp-mux\r\n");
        for attr in &section.attributes {
            if ["rtpmap:", "fmtp:", "rtcp-fb:"]
                .iter()
                .any(|p| attr.starts_with(p))
            {
                let _ = write!(out, "a={attr}\r\n");
            }
        }
        if let MLineRole::Outbound { stream_id, .. } = &mline.role {
            let _ = write!(
                out,
                "a=ssrc:{} cname:{stream_id}\r\n",
                fake_ssrc(&section.mid)
            );
        }
    }
    Ok(out)
}

/// A stable SSRC per mid (FNV-1a), so answers do not depend on call order.
fn fake_ssrc(mid: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in mid.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plane::{MLine, MediaKind};
    use crate::engine::sdp::Direction;
    use std::sync::{Arc, Mutex};

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n\
        a=rtcp-fb:96 nack pli\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=inactive\r\n";

    fn offer() -> PlaneOffer {
        PlaneOffer {
            negotiation: 7,
            sdp: OFFER.to_owned(),
            mlines: vec![
                MLine {
                    mid: "0".into(),
                    role: MLineRole::Inbound {
                        kind: MediaKind::Audio,
                        track_id: "p:a".into(),
                    },
                },
                MLine {
                    mid: "1".into(),
                    role: MLineRole::Outbound {
                        kind: MediaKind::Video,
                        publisher: "q".into(),
                        track_id: "q:v".into(),
                        stream_id: "sq".into(),
                    },
                },
                MLine {
                    mid: "2".into(),
                    role: MLineRole::Inactive,
                },
            ],
        }
    }

    #[test]
    fn answer_mirrors_the_offer() {
        let answer = fake_answer(&offer(), 3).unwrap();
        let parsed = Sdp::parse(&answer).unwrap();
        let shape: Vec<_> = parsed
            .media
            .iter()
            .map(|m| (m.media.as_str(), m.port, m.mid.as_str(), m.direction))
            .collect();
        assert_eq!(
            shape,
            [
                ("audio", 9, "0", Direction::RecvOnly),
                ("video", 9, "1", Direction::SendOnly),
                ("video", 0, "2", Direction::Inactive),
            ]
        );
        assert!(answer.contains("a=group:BUNDLE 0 1\r\n"));
        assert!(answer.contains("a=msid:sq q:v\r\n"));
        assert!(answer.contains("a=ice-ufrag:fake3\r\n"));
        assert!(answer.contains("a=rtcp-fb:96 nack pli\r\n"));
        assert_eq!(fake_answer(&offer(), 3).unwrap(), answer);
        let mut wrong = offer();
        wrong.mlines.pop();
        assert!(fake_answer(&wrong, 1).is_err());
    }

    #[test]
    fn reports_answer_candidate_tracks_connected() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let events = events.clone();
            PlaneSink::new(move |e| events.lock().unwrap().push(e))
        };
        let mut plane = FakePlane::new(sink);
        plane.offer("p", offer()); // unknown peer: ignored
        plane.add_peer("p");
        plane.offer("p", offer());
        let mut second = offer();
        second.negotiation = 8;
        second.mlines[0].role = MLineRole::Inactive;
        plane.offer("p", second);
        plane.request_keyframe("p", "p:a");
        assert_eq!(plane.keyframe_requests(), 1);
        let got: Vec<String> = events
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                PlaneEvent::Answer {
                    negotiation,
                    result,
                    ..
                } => format!("answer {negotiation} {}", result.is_ok()),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                "answer 7 true",
                r#"LocalCandidate { peer: "p", candidate: "candidate:1 1 UDP 2130706431 127.0.0.1 9 typ host" }"#,
                r#"TrackStarted { peer: "p", track_id: "p:a" }"#,
                r#"Connected { peer: "p" }"#,
                "answer 8 true",
                r#"LocalCandidate { peer: "p", candidate: "candidate:1 1 UDP 2130706431 127.0.0.1 9 typ host" }"#,
                r#"TrackEnded { peer: "p", track_id: "p:a" }"#,
            ]
        );
    }

    /// With latency the same events arrive, in offer order, once the delays have passed; a
    /// dropped plane reports nothing more.
    #[tokio::test]
    async fn latency_delays_without_reordering_and_stops_when_dropped() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = PlaneSink::new(move |e| {
            let _ = tx.send(e);
        });
        let mut plane = FakePlane::with_latency(sink.clone(), Duration::from_millis(5));
        plane.add_peer("p");
        let negotiations: Vec<u64> = (1..=20).collect();
        for n in &negotiations {
            let mut o = offer();
            o.negotiation = *n;
            plane.offer("p", o);
        }
        let mut answered = Vec::new();
        while answered.len() < negotiations.len() {
            if let Some(PlaneEvent::Answer { negotiation, .. }) = rx.recv().await {
                answered.push(negotiation);
            }
        }
        assert_eq!(answered, negotiations);

        let mut dropped = FakePlane::with_latency(sink, Duration::from_secs(3600));
        dropped.add_peer("q");
        dropped.offer("q", offer());
        drop(dropped);
        drop(plane);
        // Every sender is gone once both delivering tasks have ended; a batch still waiting
        // would be a message here.
        while let Some(e) = rx.recv().await {
            assert!(!matches!(e, PlaneEvent::Answer { .. }), "late {e:?}");
        }
    }
}
