//! Exact media-event sequences of the negotiation core, driven through the session with the
//! fake plane's answers fed back by hand (so each test decides when the plane answers).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::*;
use crate::engine::fake_plane::{fake_answer, FAKE_CANDIDATE};
use crate::engine::sdp::MAX_MLINES;
use crate::engine::session::{Out, Session, SessionConfig};

pub(super) struct Harness {
    pub session: Session<TrackNegotiation>,
    /// The latest offer the plane got per peer, not yet answered.
    pub offers: BTreeMap<PeerId, PlaneOffer>,
    answers: u64,
}

impl Harness {
    pub fn new() -> Self {
        Harness::with_config(NegotiationConfig {
            turn_servers: vec![TurnServer {
                server_addr: "10.0.0.1".into(),
                server_port: 3478,
                transport: "udp".into(),
                username: "u".into(),
                password: "p".into(),
            }],
            ..NegotiationConfig::default()
        })
    }

    pub fn with_config(config: NegotiationConfig) -> Self {
        Harness {
            session: Session::with_negotiation(
                SessionConfig::default(),
                TrackNegotiation::new(config),
            ),
            offers: BTreeMap::new(),
            answers: 0,
        }
    }

    pub fn send(&mut self, peer: &str, data: &str) -> Vec<String> {
        let outs = self.session.handle_event(peer, data);
        self.render(outs)
    }

    pub fn leave(&mut self, peer: &str) -> Vec<String> {
        let outs = self.session.remove_peer(peer);
        self.offers.remove(peer);
        self.render(outs)
    }

    pub fn plane(&mut self, event: PlaneEvent) -> Vec<String> {
        let outs = self.session.handle_plane_event(event);
        self.render(outs)
    }

    /// The plane answers `peer`'s outstanding offer as the fake plane would, then reports its
    /// candidate.
    pub fn answer(&mut self, peer: &str) -> Vec<String> {
        let offer = self.offers.remove(peer).expect("no offer outstanding");
        self.answers += 1;
        let mut lines = self.plane(PlaneEvent::Answer {
            peer: peer.into(),
            negotiation: offer.negotiation,
            result: fake_answer(&offer, self.answers),
        });
        lines.extend(self.plane(PlaneEvent::LocalCandidate {
            peer: peer.into(),
            candidate: FAKE_CANDIDATE.into(),
        }));
        lines
    }

    pub fn render(&mut self, outs: Vec<Out>) -> Vec<String> {
        outs.into_iter()
            .map(|o| match o {
                Out::To { peer, data } => format!("{peer} {}", elide_sdp(&data)),
                Out::Plane(c) => self.render_command(c),
            })
            .collect()
    }

    fn render_command(&mut self, c: PlaneCommand) -> String {
        match c {
            PlaneCommand::AddPeer { peer } => format!("plane add {peer}"),
            PlaneCommand::RemovePeer { peer } => format!("plane remove {peer}"),
            PlaneCommand::RemoteCandidate {
                peer, candidate, ..
            } => {
                format!("plane candidate {peer} {candidate}")
            }
            PlaneCommand::RequestKeyframe {
                publisher,
                track_id,
            } => format!("plane keyframe {publisher} {track_id}"),
            PlaneCommand::Offer { peer, offer } => {
                let lines: Vec<String> = offer
                    .mlines
                    .iter()
                    .map(|m| match &m.role {
                        MLineRole::Inbound { track_id, .. } => format!("{}=in {track_id}", m.mid),
                        MLineRole::Outbound {
                            track_id,
                            stream_id,
                            ..
                        } => format!("{}=out {track_id} msid {stream_id}", m.mid),
                        MLineRole::Inactive => format!("{}=inactive", m.mid),
                    })
                    .collect();
                let s = format!(
                    "plane offer {peer} #{} [{}]",
                    offer.negotiation,
                    lines.join(", ")
                );
                self.offers.insert(peer, offer);
                s
            }
        }
    }
}

/// The answer SDP is checked on its own; in sequences it is `<sdp>`.
fn elide_sdp(data: &str) -> String {
    let v: Value = serde_json::from_str(data).unwrap();
    match v["data"]["data"]["sdp"].as_str() {
        Some(sdp) if v["data"]["type"] == "sdpAnswer" => {
            data.replace(&json!(sdp).to_string(), r#""<sdp>""#)
        }
        _ => data.to_owned(),
    }
}

pub(super) fn connect(name: &str) -> String {
    format!(r#"{{"type":"connect","data":{{"metadata":{{"name":"{name}"}}}}}}"#)
}

pub(super) const RENEGOTIATE: &str = r#"{"type":"custom","data":{"type":"renegotiateTracks"}}"#;

/// A browser-like offer: `(mid, kind, direction)` per m-line.
pub(super) fn offer_sdp(lines: &[(&str, &str, &str)]) -> String {
    let mut s = String::from("v=0\r\no=- 4611 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    let mids: Vec<&str> = lines.iter().map(|l| l.0).collect();
    s.push_str(&format!("a=group:BUNDLE {}\r\n", mids.join(" ")));
    for (mid, kind, dir) in lines {
        let (pt, codec) = if *kind == "audio" {
            (111, "opus/48000/2")
        } else {
            (96, "VP8/90000")
        };
        s.push_str(&format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\n\
             a=ice-pwd:abcdefghijklmnopqrstuv\r\na=setup:actpass\r\na=mid:{mid}\r\na={dir}\r\n\
             a=rtcp-mux\r\na=rtpmap:{pt} {codec}\r\n"
        ));
    }
    s
}

pub(super) fn sdp_offer(
    lines: &[(&str, &str, &str)],
    mid_to_track: &[(&str, &str)],
    metadata: &[(&str, Value)],
) -> String {
    let mid_to_track: BTreeMap<_, _> = mid_to_track.iter().cloned().collect();
    let meta: BTreeMap<_, _> = metadata.iter().cloned().collect();
    json!({"type":"custom","data":{"type":"sdpOffer","data":{
        "sdpOffer":{"type":"offer","sdp":offer_sdp(lines)},
        "trackIdToTrackMetadata":meta,
        "trackIdToTrackBitrates":{},
        "midToTrackId":mid_to_track}}})
    .to_string()
}

const TURN: &str = r#""integratedTurnServers":[{"serverAddr":"10.0.0.1","serverPort":3478,"transport":"udp","username":"u","password":"p"}]"#;

fn offer_data(peer: &str, audio: u32, video: u32) -> String {
    format!(
        r#"{peer} {{"type":"custom","data":{{"type":"offerData","data":{{"tracksTypes":{{"audio":{audio},"video":{video}}},{TURN}}}}}}}"#
    )
}

fn answer(peer: &str, mids: &str) -> String {
    format!(
        r#"{peer} {{"type":"custom","data":{{"type":"sdpAnswer","data":{{"type":"answer","sdp":"<sdp>","midToTrackId":{{{mids}}}}}}}}}"#
    )
}

fn candidate(peer: &str) -> String {
    format!(
        r#"{peer} {{"type":"custom","data":{{"type":"candidate","data":{{"candidate":"{FAKE_CANDIDATE}","sdpMLineIndex":0,"sdpMid":null,"usernameFragment":null}}}}}}"#
    )
}

const A_TRACKS: &str = r#"{"endpointId":"A","trackIdToMetadata":{"A:a":{"type":"audio"},"A:v":{"type":"camera"}},"tracks":{"A:a":{"metadata":{"type":"audio"},"simulcastConfig":{"enabled":false,"activeEncodings":["h"]}},"A:v":{"metadata":{"type":"camera"},"simulcastConfig":{"enabled":false,"activeEncodings":["h"]}}}}"#;

fn a_publishes() -> String {
    sdp_offer(
        &[("0", "audio", "sendonly"), ("1", "video", "sendonly")],
        &[("0", "A:a"), ("1", "A:v")],
        &[
            ("A:a", json!({"type":"audio"})),
            ("A:v", json!({"type":"camera"})),
        ],
    )
}

fn b_receives_two() -> String {
    sdp_offer(
        &[("0", "audio", "recvonly"), ("1", "video", "recvonly")],
        &[],
        &[],
    )
}

/// A and B connected; A published audio+video and got its answer; B got `tracksAdded` and an
/// `offerData` it has not answered yet.
fn a_published() -> Harness {
    let mut h = Harness::new();
    h.send("A", &connect("A"));
    h.send("B", &connect("B"));
    h.send("A", RENEGOTIATE);
    h.send("A", &a_publishes());
    h.answer("A");
    h
}

/// As [`a_published`], and B has received both tracks in an answer.
fn b_subscribed() -> Harness {
    let mut h = a_published();
    h.send("B", &b_receives_two());
    h.answer("B");
    h
}

#[test]
fn publish_and_subscribe() {
    let mut h = Harness::new();
    assert_eq!(
        h.send("A", &connect("A")),
        [
            r#"A {"type":"connected","data":{"id":"A","otherEndpoints":[]}}"#,
            "plane add A"
        ]
    );
    assert_eq!(
        h.send("B", &connect("B")),
        [
            r#"B {"type":"connected","data":{"id":"B","otherEndpoints":[{"id":"A","type":"webrtc","metadata":{"name":"A"},"trackIdToMetadata":{},"tracks":{}}]}}"#,
            r#"A {"type":"endpointAdded","data":{"id":"B","type":"webrtc","metadata":{"name":"B"}}}"#,
            "plane add B",
        ]
    );
    assert_eq!(h.send("A", RENEGOTIATE), [offer_data("A", 0, 0)]);
    assert_eq!(
        h.send("A", &a_publishes()),
        [
            "plane offer A #1 [0=in A:a, 1=in A:v]".to_owned(),
            format!(r#"B {{"type":"tracksAdded","data":{A_TRACKS}}}"#),
            offer_data("B", 1, 1),
        ]
    );
    assert_eq!(
        h.answer("A"),
        [answer("A", r#""0":"A:a","1":"A:v""#), candidate("A")]
    );
    assert_eq!(
        h.send("B", &b_receives_two()),
        ["plane offer B #2 [0=out A:a msid A, 1=out A:v msid A]"]
    );
    let offer = h.offers["B"].clone();
    assert_eq!(
        h.answer("B"),
        [
            answer("B", r#""0":"A:a","1":"A:v""#),
            "plane keyframe A A:a".to_owned(),
            "plane keyframe A A:v".to_owned(),
            candidate("B"),
        ]
    );
    let sdp = fake_answer(&offer, 1).unwrap();
    assert!(
        sdp.contains("a=mid:0\r\na=sendonly\r\na=msid:A A:a\r\n"),
        "{sdp}"
    );
    assert!(
        sdp.contains("a=mid:1\r\na=sendonly\r\na=msid:A A:v\r\n"),
        "{sdp}"
    );
    assert!(!h.session.negotiation().is_negotiating("A"));
    assert!(!h.session.negotiation().is_negotiating("B"));
    // Connectivity (after each ICE restart too) asks for fresh keyframes.
    assert_eq!(
        h.plane(PlaneEvent::Connected { peer: "B".into() }),
        ["plane keyframe A A:a", "plane keyframe A A:v"]
    );
    assert_eq!(
        h.plane(PlaneEvent::TrackStarted {
            peer: "A".into(),
            track_id: "A:v".into()
        }),
        ["plane keyframe A A:v"]
    );
}

#[test]
fn late_joiner_gets_connected_then_tracks_added_then_offer_data() {
    let mut h = b_subscribed();
    assert_eq!(
        h.send("C", &connect("C")),
        [
            r#"C {"type":"connected","data":{"id":"C","otherEndpoints":[{"id":"A","type":"webrtc","metadata":{"name":"A"},"trackIdToMetadata":{"A:a":{"type":"audio"},"A:v":{"type":"camera"}},"tracks":{"A:a":{"metadata":{"type":"audio"},"simulcastConfig":{"enabled":false,"activeEncodings":["h"]}},"A:v":{"metadata":{"type":"camera"},"simulcastConfig":{"enabled":false,"activeEncodings":["h"]}}}},{"id":"B","type":"webrtc","metadata":{"name":"B"},"trackIdToMetadata":{},"tracks":{}}]}}"#.to_owned(),            r#"A {"type":"endpointAdded","data":{"id":"C","type":"webrtc","metadata":{"name":"C"}}}"#.to_owned(),
            r#"B {"type":"endpointAdded","data":{"id":"C","type":"webrtc","metadata":{"name":"C"}}}"#.to_owned(),
            "plane add C".to_owned(),
            format!(r#"C {{"type":"tracksAdded","data":{A_TRACKS}}}"#),
            offer_data("C", 1, 1),
        ]
    );
}

#[test]
fn renegotiation_requests_coalesce_while_one_is_open() {
    let mut h = Harness::new();
    h.send("A", &connect("A"));
    assert_eq!(h.send("A", RENEGOTIATE), [offer_data("A", 0, 0)]);
    assert_eq!(h.send("A", RENEGOTIATE), Vec::<String>::new());
    let offer = sdp_offer(&[("0", "audio", "sendonly")], &[("0", "A:a")], &[]);
    assert_eq!(h.send("A", &offer), ["plane offer A #1 [0=in A:a]"]);
    assert_eq!(h.send("A", RENEGOTIATE), Vec::<String>::new());
    // A second offer while the plane is answering is dropped, not answered twice.
    assert_eq!(h.send("A", &offer), Vec::<String>::new());
    assert_eq!(
        h.answer("A"),
        [
            answer("A", r#""0":"A:a""#),
            offer_data("A", 0, 0),
            candidate("A")
        ]
    );
    assert_eq!(h.send("A", &offer), ["plane offer A #2 [0=in A:a]"]);
    assert_eq!(h.answer("A"), [answer("A", r#""0":"A:a""#), candidate("A")]);
    assert_eq!(h.send("A", RENEGOTIATE), [offer_data("A", 0, 0)]);
}

#[test]
fn removed_track_keeps_its_m_line_until_an_inactive_answer_then_the_slot_is_recycled() {
    let mut h = b_subscribed();
    h.send("A", RENEGOTIATE);
    // The 0.5.3 client after removeTrack: the m-line is inactive and gone from midToTrackId.
    let removed = sdp_offer(
        &[("0", "audio", "sendonly"), ("1", "video", "inactive")],
        &[("0", "A:a")],
        &[("A:a", json!({"type":"audio"}))],
    );
    assert_eq!(
        h.send("A", &removed),
        [
            "plane offer A #3 [0=in A:a, 1=inactive]".to_owned(),
            r#"B {"type":"tracksRemoved","data":{"endpointId":"A","trackIds":["A:v"]}}"#.to_owned(),
            offer_data("B", 1, 1),
        ]
    );
    assert_eq!(
        h.answer("A"),
        [answer("A", r#""0":"A:a","1":"A:v""#), candidate("A")]
    );
    // A publishes a new camera while B's answer making mid 1 inactive is still being made:
    // the slot is not free yet, so the new track needs a new m-line.
    assert_eq!(
        h.send("B", &b_receives_two()),
        ["plane offer B #4 [0=out A:a msid A, 1=inactive]"]
    );
    h.send("A", RENEGOTIATE);
    let again = sdp_offer(
        &[
            ("0", "audio", "sendonly"),
            ("1", "video", "inactive"),
            ("2", "video", "sendonly"),
        ],
        &[("0", "A:a"), ("2", "A:v2")],
        &[],
    );
    let lines = h.send("A", &again);
    assert_eq!(
        lines[0],
        "plane offer A #5 [0=in A:a, 1=inactive, 2=in A:v2]"
    );
    assert_eq!(
        h.session.negotiation().tracks_types("B"),
        Some(TracksTypes { audio: 1, video: 2 })
    );
    // Mid 1 is retired by this answer; the old track still names it for the client.
    let lines = h.answer("B");
    assert_eq!(lines[0], answer("B", r#""0":"A:a","1":"A:v""#));
    assert!(lines.contains(&offer_data("B", 1, 2)), "{lines:#?}");
    h.answer("A");
    // A swaps cameras again: the retired mid 1 carries the newest track, the count stays.
    h.send("A", RENEGOTIATE);
    let third = sdp_offer(
        &[
            ("0", "audio", "sendonly"),
            ("1", "video", "inactive"),
            ("2", "video", "inactive"),
            ("3", "video", "sendonly"),
        ],
        &[("0", "A:a"), ("3", "A:v3")],
        &[],
    );
    let lines = h.send("A", &third);
    assert_eq!(
        lines[1..],
        [
            r#"B {"type":"tracksAdded","data":{"endpointId":"A","trackIdToMetadata":{"A:v3":null},"tracks":{"A:v3":{"metadata":null,"simulcastConfig":{"enabled":false,"activeEncodings":["h"]}}}}}"#.to_owned(),
        ]
    );
    assert_eq!(
        h.session.negotiation().tracks_types("B"),
        Some(TracksTypes { audio: 1, video: 2 })
    );
}

/// A retired slot recycled while the subscriber's answer is still being made: that answer maps
/// the mid to the OLD track, so the new track is not carried yet and its removal must wait for
/// an answer that names it (the simulation found this once the plane answered with latency).
#[test]
fn a_slot_recycled_while_an_answer_is_outstanding_is_not_carried_by_that_answer() {
    let mut h = b_subscribed();
    h.send("A", RENEGOTIATE);
    let removed = sdp_offer(
        &[("0", "audio", "sendonly"), ("1", "video", "inactive")],
        &[("0", "A:a")],
        &[],
    );
    h.send("A", &removed);
    h.answer("A");
    // B's answer makes mid 1 inactive after tracksRemoved: the slot is retired.
    h.send("B", &b_receives_two());
    h.answer("B");
    // B answers its next offerData; its answer is outstanding while A publishes a new camera.
    h.send("B", &b_receives_two());
    assert!(h.offers.contains_key("B"));
    h.send("A", RENEGOTIATE);
    let camera = sdp_offer(
        &[
            ("0", "audio", "sendonly"),
            ("1", "video", "inactive"),
            ("2", "video", "sendonly"),
        ],
        &[("0", "A:a"), ("2", "A:v2")],
        &[],
    );
    let lines = h.send("A", &camera);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""tracksAdded""#) && l.contains("A:v2")),
        "{lines:#?}"
    );
    // The outstanding answer still maps mid 1 to the old track.
    let lines = h.answer("B");
    assert_eq!(lines[0], answer("B", r#""0":"A:a","1":"A:v""#));
    h.answer("A");
    // A stops the new camera before any answer gave it to B: no tracksRemoved for it yet.
    h.send("A", RENEGOTIATE);
    let stop = sdp_offer(
        &[
            ("0", "audio", "sendonly"),
            ("1", "video", "inactive"),
            ("2", "video", "inactive"),
        ],
        &[("0", "A:a")],
        &[],
    );
    let lines = h.send("A", &stop);
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("B ") && l.contains("tracksRemoved")),
        "B told to remove A:v2, which no answer gave it: {lines:#?}"
    );
}

#[test]
fn leave_sends_tracks_removed_then_endpoint_removed_then_offer_data() {
    let mut h = b_subscribed();
    assert_eq!(
        h.leave("A"),
        [
            "plane remove A",
            r#"B {"type":"tracksRemoved","data":{"endpointId":"A","trackIds":["A:a","A:v"]}}"#,
            r#"B {"type":"endpointRemoved","data":{"id":"A"}}"#,
            &offer_data("B", 1, 1),
        ]
    );
    assert_eq!(
        h.send("B", &b_receives_two()),
        ["plane offer B #3 [0=inactive, 1=inactive]"]
    );
    h.answer("B");
    assert_eq!(h.leave("B"), ["plane remove B"]);
    assert_eq!(h.session.negotiation().peer_count(), 0);
}

#[test]
fn no_tracks_removed_for_a_track_never_in_an_answer() {
    // B was told about A's tracks but has not answered its offerData yet.
    let mut h = a_published();
    h.send("A", RENEGOTIATE);
    let removed = sdp_offer(
        &[("0", "audio", "sendonly"), ("1", "video", "inactive")],
        &[("0", "A:a")],
        &[],
    );
    assert_eq!(
        h.send("A", &removed),
        ["plane offer A #2 [0=in A:a, 1=inactive]"]
    );
    h.answer("A");
    // B's offer still has a recvonly m-line for the removed video: it is paired, inactive.
    assert_eq!(
        h.send("B", &b_receives_two()),
        ["plane offer B #3 [0=out A:a msid A, 1=inactive]"]
    );
    // Only once an answer gave the client the mid can it erase the track.
    assert_eq!(
        h.answer("B"),
        [
            answer("B", r#""0":"A:a","1":"A:v""#),
            "plane keyframe A A:a".to_owned(),
            r#"B {"type":"tracksRemoved","data":{"endpointId":"A","trackIds":["A:v"]}}"#.to_owned(),
            offer_data("B", 1, 1),
            candidate("B"),
        ]
    );

    // A leaver whose tracks never reached B in an answer: `endpointRemoved` alone.
    let mut h = a_published();
    assert_eq!(
        h.leave("A"),
        [
            "plane remove A",
            r#"B {"type":"endpointRemoved","data":{"id":"A"}}"#
        ]
    );
    assert_eq!(
        h.send("B", &b_receives_two()),
        ["plane offer B #2 [0=inactive, 1=inactive]"]
    );
    assert_eq!(
        h.answer("B"),
        [answer("B", r#""0":"A:a","1":"A:v""#), candidate("B")]
    );
}

#[test]
fn track_metadata_update_goes_to_subscribers() {
    let mut h = b_subscribed();
    h.send("C", &connect("C"));
    let update = r#"{"type":"updateTrackMetadata","data":{"trackId":"A:v","trackMetadata":{"type":"camera","active":false}}}"#;
    assert_eq!(
        h.send("A", update),
        [
            r#"B {"type":"trackUpdated","data":{"endpointId":"A","trackId":"A:v","metadata":{"active":false,"type":"camera"}}}"#,
            r#"C {"type":"trackUpdated","data":{"endpointId":"A","trackId":"A:v","metadata":{"active":false,"type":"camera"}}}"#,
        ]
    );
    assert_eq!(h.send("A", update), Vec::<String>::new());
    // Nobody else's track, and unknown tracks, change nothing.
    assert_eq!(h.send("B", update), Vec::<String>::new());
    let big = format!(
        r#"{{"type":"updateTrackMetadata","data":{{"trackId":"A:v","trackMetadata":"{}"}}}}"#,
        "x".repeat(5000)
    );
    assert_eq!(
        h.send("A", &big),
        [r#"A {"type":"error","data":{"message":"track metadata is larger than 512 bytes"}}"#]
    );
    // A late joiner sees the current metadata.
    assert_eq!(
        h.session.negotiation().published_tracks("A")["A:v"].metadata,
        json!({"type":"camera","active":false})
    );
}

#[test]
fn malformed_offer_is_an_error_and_the_cycle_closes() {
    let mut h = Harness::new();
    h.send("A", &connect("A"));
    h.send("A", RENEGOTIATE);
    let bad = json!({"type":"custom","data":{"type":"sdpOffer","data":{
        "sdpOffer":{"type":"offer","sdp":"v=0\r\nm=audio 9 RTP 111\r\n"},
        "trackIdToTrackMetadata":{},"midToTrackId":{}}}})
    .to_string();
    assert_eq!(
        h.send("A", &bad),
        [r#"A {"type":"error","data":{"message":"invalid sdpOffer: SDP m-line 0 has no a=mid"}}"#]
    );
    let not_offer = json!({"type":"custom","data":{"type":"sdpOffer","data":{
        "sdpOffer":{"type":"answer","sdp":"v=0\r\n"},
        "trackIdToTrackMetadata":{},"midToTrackId":{}}}})
    .to_string();
    assert_eq!(
        h.send("A", &not_offer),
        [
            r#"A {"type":"error","data":{"message":"invalid sdpOffer: type must be \"offer\", not \"answer\""}}"#
        ]
    );
    assert_eq!(h.send("A", RENEGOTIATE), [offer_data("A", 0, 0)]);
    // Foreign track ids and unknown media are answered inactive and not published.
    let odd = sdp_offer(
        &[("0", "audio", "sendonly"), ("1", "application", "sendrecv")],
        &[("0", "B:x"), ("1", "A:d")],
        &[],
    );
    assert_eq!(
        h.send("A", &odd),
        ["plane offer A #1 [0=inactive, 1=inactive]"]
    );
    assert_eq!(
        h.plane(PlaneEvent::Answer {
            peer: "A".into(),
            negotiation: 1,
            result: Err("boom".into())
        }),
        [r#"A {"type":"error","data":{"message":"media negotiation failed"}}"#]
    );
    assert!(h.session.negotiation().published_tracks("A").is_empty());
}

#[test]
fn candidates_both_ways() {
    let mut h = Harness::new();
    h.send("A", &connect("A"));
    let c = r#"{"type":"custom","data":{"type":"candidate","data":{"candidate":"candidate:1 1 udp 1 10.0.0.5 1 typ relay","sdpMLineIndex":0}}}"#;
    assert_eq!(
        h.send("A", c),
        ["plane candidate A candidate:1 1 udp 1 10.0.0.5 1 typ relay"]
    );
    let empty = r#"{"type":"custom","data":{"type":"candidate","data":{"candidate":"","sdpMLineIndex":0}}}"#;
    assert_eq!(h.send("A", empty), Vec::<String>::new());
    h.send("A", RENEGOTIATE);
    h.send(
        "A",
        &sdp_offer(&[("0", "audio", "sendonly")], &[("0", "A:a")], &[]),
    );
    // Held while the answer is outstanding: the browser rejects candidates before it.
    let local = PlaneEvent::LocalCandidate {
        peer: "A".into(),
        candidate: FAKE_CANDIDATE.into(),
    };
    assert_eq!(h.plane(local.clone()), Vec::<String>::new());
    assert_eq!(
        h.plane(PlaneEvent::Answer {
            peer: "A".into(),
            negotiation: 1,
            result: Ok("v=0\r\n".into())
        }),
        [answer("A", r#""0":"A:a""#), candidate("A")]
    );
    assert_eq!(h.plane(local), [candidate("A")]);
    // Stale: a superseded negotiation, a peer that left.
    assert_eq!(
        h.plane(PlaneEvent::Answer {
            peer: "A".into(),
            negotiation: 1,
            result: Ok("v=0\r\n".into())
        }),
        Vec::<String>::new()
    );
    h.leave("A");
    assert_eq!(
        h.plane(PlaneEvent::Connected { peer: "A".into() }),
        Vec::<String>::new()
    );
}

#[test]
fn each_peer_gets_its_own_turn_credentials_minted_once() {
    let minted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = std::sync::Arc::clone(&minted);
    let mut h = Harness::with_config(NegotiationConfig {
        turn_issuer: Some(TurnIssuer::new(move |peer| {
            log.lock().unwrap().push(peer.to_owned());
            vec![TurnServer {
                server_addr: "10.0.0.1".into(),
                server_port: 3478,
                transport: "udp".into(),
                username: format!("99:{peer}"),
                password: format!("pw-{peer}"),
            }]
        })),
        ..NegotiationConfig::default()
    });
    // The `integratedTurnServers` of every offerData among rendered lines.
    let turn_of = |lines: Vec<String>| -> Vec<(String, Value)> {
        lines
            .iter()
            .filter_map(|l| {
                let (peer, data) = l.split_once(' ')?;
                let v: Value = serde_json::from_str(data).ok()?;
                (v["data"]["type"] == "offerData").then(|| {
                    (
                        peer.to_owned(),
                        v["data"]["data"]["integratedTurnServers"].clone(),
                    )
                })
            })
            .collect()
    };
    h.send("A", &connect("A"));
    h.send("B", &connect("B"));
    let a = json!([{"serverAddr":"10.0.0.1","serverPort":3478,"transport":"udp","username":"99:A","password":"pw-A"}]);
    assert_eq!(
        turn_of(h.send("A", RENEGOTIATE)),
        [("A".to_owned(), a.clone())]
    );
    let b = turn_of(h.send("B", RENEGOTIATE));
    assert_eq!(b[0].1[0]["username"], "99:B");
    assert_eq!(b[0].1[0]["password"], "pw-B");
    // A's next offerData (queued behind its open cycle) repeats A's credentials.
    h.send(
        "A",
        &sdp_offer(&[("0", "audio", "sendonly")], &[("0", "A:a")], &[]),
    );
    h.send("A", RENEGOTIATE);
    assert_eq!(turn_of(h.answer("A")), [("A".to_owned(), a)]);
    assert_eq!(*minted.lock().unwrap(), ["A", "B"]);
}

/// A resident peer's connection used to keep one `recvonly` m-line per track ever announced to
/// it: the SFU join/leave soak found the resident losing its media at the 128th visitor (past
/// [`MAX_MLINES`] its offer was refused). With recycling, a resident next to one visitor at a
/// time keeps two m-lines however many come and go, and sees every one of them, each time on
/// the same mids.
#[test]
fn resident_peer_keeps_two_m_lines_for_any_number_of_one_at_a_time_visitors() {
    let mut h = Harness::new();
    h.send("R", &connect("R"));
    // R answers every `offerData` as the 0.5.3 client does: one `recvonly` m-line per counted
    // track, audio and video in pairs, mids stable across offers.
    let respond = |h: &mut Harness, lines: &[String]| -> Vec<String> {
        let mut out = Vec::new();
        if !lines
            .iter()
            .any(|l| l.starts_with(r#"R {"type":"custom","data":{"type":"offerData""#))
        {
            return out;
        }
        let tt = h.session.negotiation().tracks_types("R").unwrap();
        assert_eq!(tt.audio, tt.video);
        let mids: Vec<String> = (0..2 * tt.audio).map(|i| i.to_string()).collect();
        let sections: Vec<(&str, &str, &str)> = mids
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let kind = if i % 2 == 0 { "audio" } else { "video" };
                (m.as_str(), kind, "recvonly")
            })
            .collect();
        out.extend(h.send("R", &sdp_offer(&sections, &[], &[])));
        if let Some(e) = out.iter().find(|l| l.starts_with(r#"R {"type":"error""#)) {
            panic!("R's offer with {} m-lines refused: {e}", sections.len());
        }
        out.extend(h.answer("R"));
        out
    };
    for k in 0..2 * MAX_MLINES {
        let n = format!("N{k}");
        let mut lines = h.send(&n, &connect(&n));
        lines.extend(h.send(&n, RENEGOTIATE));
        let (a, v) = (format!("{n}:a"), format!("{n}:v"));
        lines.extend(h.send(
            &n,
            &sdp_offer(
                &[("0", "audio", "sendonly"), ("1", "video", "sendonly")],
                &[("0", a.as_str()), ("1", v.as_str())],
                &[
                    (a.as_str(), json!({"type":"audio"})),
                    (v.as_str(), json!({"type":"camera"})),
                ],
            ),
        ));
        lines.extend(h.answer(&n));
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(r#"R {"type":"tracksAdded""#)),
            "visitor {k} not announced to R"
        );
        lines.extend(respond(&mut h, &lines));
        let expected = format!(r#""0":"{a}","1":"{v}""#);
        assert!(
            lines.contains(&answer("R", &expected)),
            "visitor {k} not carried on mids 0 and 1: {lines:#?}"
        );
        let mut left = h.leave(&n);
        left.extend(respond(&mut h, &left));
        lines.extend(left);
        for l in &lines {
            assert!(!l.starts_with(r#"R {"type":"error""#), "visitor {k}: {l}");
        }
        assert_eq!(
            h.session.negotiation().tracks_types("R"),
            Some(TracksTypes { audio: 1, video: 1 }),
            "visitor {k}"
        );
    }
}

/// Without recycling (every slot busy), the m-line budget still holds: tracks that no longer
/// fit are not announced, and the peer's offers stay valid.
#[test]
fn a_peer_is_never_offered_more_simultaneous_tracks_than_its_connection_can_carry() {
    let mut h = Harness::new();
    h.send("R", &connect("R"));
    let per_visitor = NegotiationConfig::default().max_published_tracks;
    let budget = MAX_MLINES - per_visitor;
    let mut last_announced = true;
    for k in 0..budget / per_visitor + 2 {
        let n = format!("N{k}");
        h.send(&n, &connect(&n));
        h.send(&n, RENEGOTIATE);
        let ids: Vec<(String, String)> = (0..per_visitor)
            .map(|i| (i.to_string(), format!("{n}:{i}")))
            .collect();
        let sections: Vec<(&str, &str, &str)> = ids
            .iter()
            .map(|(mid, _)| (mid.as_str(), "video", "sendonly"))
            .collect();
        let mids: Vec<(&str, &str)> = ids.iter().map(|(m, t)| (m.as_str(), t.as_str())).collect();
        let lines = h.send(&n, &sdp_offer(&sections, &mids, &[]));
        last_announced = lines
            .iter()
            .any(|l| l.starts_with(r#"R {"type":"tracksAdded""#));
        h.answer(&n);
        let tt = h.session.negotiation().tracks_types("R").unwrap();
        assert!(tt.video as usize <= budget, "visitor {k}");
    }
    assert!(!last_announced, "tracks past the budget were announced");
    let tt = h.session.negotiation().tracks_types("R").unwrap();
    assert_eq!(tt.video as usize, budget);
}

/// A peer that sends `disconnect` and then `connect` again keeps its id but starts a new
/// session: the plane's answer to an offer of the old session, still on its way, must not be
/// taken for the answer to the new session's first offer.
#[test]
fn an_answer_from_before_a_disconnect_is_not_taken_for_the_new_session() {
    let mut h = Harness::new();
    let publish = sdp_offer(&[("0", "audio", "sendonly")], &[("0", "A:a")], &[]);
    h.send("A", &connect("A"));
    h.send("A", RENEGOTIATE);
    h.send("A", &publish);
    let old = h.offers.remove("A").expect("the plane got the offer");
    h.send("A", r#"{"type":"disconnect"}"#);
    h.send("A", &connect("A"));
    h.send("A", RENEGOTIATE);
    h.send("A", &publish);
    let late = PlaneEvent::Answer {
        peer: "A".into(),
        negotiation: old.negotiation,
        result: fake_answer(&old, 1),
    };
    assert_eq!(h.plane(late), Vec::<String>::new(), "the old answer");
    let lines = h.answer("A");
    assert!(
        lines[0].starts_with(r#"A {"type":"custom","data":{"type":"sdpAnswer""#),
        "{lines:?}"
    );
}

fn vad(track_id: &str, status: &str) -> String {
    format!(
        r#"{{"type":"custom","data":{{"type":"vadNotification","data":{{"trackId":"{track_id}","status":"{status}"}}}}}}"#
    )
}

fn voice(peer: &str, track_id: &str, speech: bool) -> PlaneEvent {
    PlaneEvent::VoiceActivity {
        peer: peer.into(),
        track_id: track_id.into(),
        speech,
    }
}

#[test]
fn voice_activity_reaches_exactly_the_peers_that_know_the_track() {
    // B was told of A's tracks (not yet in an answer: the client knows them all the same).
    let mut h = a_published();
    assert_eq!(
        h.plane(voice("A", "A:a", true)),
        [format!("B {}", vad("A:a", "speech"))]
    );
    // Repeats, video tracks, unknown tracks and peers say nothing.
    assert!(h.plane(voice("A", "A:a", true)).is_empty());
    assert!(h.plane(voice("A", "A:v", false)).is_empty());
    assert!(h.plane(voice("A", "A:v", true)).is_empty());
    assert!(h.plane(voice("A", "A:x", true)).is_empty());
    assert!(h.plane(voice("Z", "Z:a", true)).is_empty());
    // Someone joining while A talks hears so right after the track is announced.
    let joined = h.send("C", &connect("C"));
    let added = joined
        .iter()
        .position(|l| l.starts_with("C {\"type\":\"tracksAdded\""))
        .expect("C is told of A's tracks");
    assert_eq!(joined[added + 1], format!("C {}", vad("A:a", "speech")));
    assert_eq!(
        h.plane(voice("A", "A:a", false)),
        [
            format!("B {}", vad("A:a", "silence")),
            format!("C {}", vad("A:a", "silence"))
        ]
    );
    // Nobody is told after the track is gone: A stops publishing audio.
    h.plane(voice("A", "A:a", true));
    h.send("A", RENEGOTIATE);
    let audio_gone = sdp_offer(
        &[("0", "audio", "inactive"), ("1", "video", "sendonly")],
        &[("1", "A:v")],
        &[],
    );
    h.send("A", &audio_gone);
    h.answer("A");
    assert!(h.plane(voice("A", "A:a", false)).is_empty());
    assert!(h.plane(voice("A", "A:a", true)).is_empty());
    // And a joiner after the removal hears nothing of the old track.
    let joined = h.send("D", &connect("D"));
    assert!(
        !joined.iter().any(|l| l.contains("vadNotification")),
        "{joined:?}"
    );
}

#[test]
fn a_peer_that_left_gets_no_voice_activity() {
    let mut h = b_subscribed();
    h.leave("B");
    assert!(h.plane(voice("A", "A:a", true)).is_empty());
    h.leave("A");
    assert!(h.plane(voice("A", "A:a", false)).is_empty());
}

#[test]
fn a_track_past_a_small_m_line_bound_is_neither_announced_nor_voiced() {
    // Room for the own 8 publications and 3 more lines: C gets A's two tracks and one of B's,
    // A (publishing two itself) one of B's.
    let mut h = Harness::with_config(NegotiationConfig {
        max_mlines: 11,
        ..NegotiationConfig::default()
    });
    for p in ["A", "B", "C"] {
        h.send(p, &connect(p));
    }
    h.send("A", RENEGOTIATE);
    h.send("A", &a_publishes());
    h.answer("A");
    h.send("B", RENEGOTIATE);
    let b_publishes = sdp_offer(
        &[("0", "audio", "sendonly"), ("1", "audio", "sendonly")],
        &[("0", "B:a"), ("1", "B:b")],
        &[],
    );
    let lines = h.send("B", &b_publishes);
    let to_c: Vec<&String> = lines.iter().filter(|l| l.starts_with("C ")).collect();
    assert!(
        to_c[0].contains(r#""tracks":{"B:a""#) && !to_c[0].contains("B:b"),
        "{to_c:?}"
    );
    h.answer("B");
    assert_eq!(h.session.negotiation().tracks_types("C").unwrap().audio, 2);
    // B's second track talks: nobody was told of it, nobody hears of it.
    assert!(h.plane(voice("B", "B:b", true)).is_empty());
    assert_eq!(
        h.plane(voice("B", "B:a", true)),
        [
            format!("A {}", vad("B:a", "speech")),
            format!("C {}", vad("B:a", "speech"))
        ]
    );
}
