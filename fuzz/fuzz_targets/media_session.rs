//! One room's media-event session as the room actor and the simulation run it: `Session` with
//! the `TrackNegotiation` core, its plane commands applied to the `FakePlane`, and the plane's
//! reports fed back in, driven by a script of media events from four peers.
//!
//! Script lines (see `videoroom_fuzz::lines`):
//! - `<d><json>` with `d` in 0–3: peer `p<d>` sends the media event `<json>` (the string a
//!   client puts into `mediaEvent.data`; track ids of `p1` start with `p1:`)
//! - `-<d>`: peer `p<d>`'s channel died (`remove_peer`)
//! - `.`: the plane's next pending report reaches the session; `*`: all of them
//! - `f<d>`: the plane reports `p<d>`'s connection failed; `e<d> <track id>`: it reports that
//!   `p<d>`'s track ended (both can happen at any time in production)
//!
//! Pending plane reports are delivered at the end. The whole script runs twice in one process
//! and must give the same outputs (hash-map iteration order differs between two maps, so an
//! output that depends on it shows up here).
//!
//! Checked: no panic (the core's own assertions, e.g. `tracksTypes` never decreasing, included);
//! every media event out is a JSON object with a string `type`; it goes to a connected peer, or
//! is an `error` to the sender; an `error` message is at most 256 bytes and an ellipsis; every
//! active mid of an `sdpAnswer` is in its `midToTrackId`; `tracksRemoved` names only tracks an
//! `sdpAnswer` gave that peer (the client throws otherwise); the `tracksTypes` of successive
//! `offerData` to one connected peer never decrease; every plane offer lists exactly the
//! m-lines (mids, in order) of its SDP; and once every peer is gone the session and the
//! negotiation core hold no endpoint.
#![no_main]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use videoroom::engine::sdp::{Direction, Sdp};
use videoroom::engine::{
    FakePlane, MediaPlane, NegotiationConfig, Out, PlaneCommand, PlaneEvent, PlaneSink, Session,
    SessionConfig, TrackNegotiation, TurnServer,
};
use videoroom_fuzz::{lines, op};

const PEERS: [&str; 4] = ["p0", "p1", "p2", "p3"];

type Queue = Arc<Mutex<VecDeque<PlaneEvent>>>;

struct Room {
    session: Session<TrackNegotiation>,
    plane: FakePlane,
    queue: Queue,
    /// Last `tracksTypes` (audio, video) sent to each connected peer.
    tracks_types: BTreeMap<String, (u64, u64)>,
    /// Track ids some `sdpAnswer` to each connected peer mapped a mid to.
    answered: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Every output, for the determinism check.
    log: Vec<Out>,
}

impl Room {
    fn new() -> Self {
        let queue: Queue = Arc::default();
        let sink = {
            let queue = Arc::clone(&queue);
            PlaneSink::new(move |e| queue.lock().unwrap().push_back(e))
        };
        let negotiation = NegotiationConfig {
            turn_servers: vec![TurnServer {
                server_addr: "127.0.0.1".into(),
                server_port: 3478,
                transport: "udp".into(),
                username: "u".into(),
                password: "p".into(),
            }],
            max_published_tracks: 3,
            max_held_candidates: 4,
            ..NegotiationConfig::default()
        };
        let config = SessionConfig {
            max_endpoints: 3,
            ..SessionConfig::default()
        };
        Room {
            session: Session::with_negotiation(config, TrackNegotiation::new(negotiation)),
            plane: FakePlane::new(sink),
            queue,
            tracks_types: BTreeMap::new(),
            answered: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    /// Checks and executes what the session decided, as the room actor does.
    fn dispatch(&mut self, sender: Option<&str>, outs: Vec<Out>) {
        for out in outs {
            self.log.push(out.clone());
            match out {
                Out::To { peer, data } => self.check_event(sender, &peer, &data),
                Out::Plane(command) => {
                    if let PlaneCommand::Offer { offer, .. } = &command {
                        let sdp = Sdp::parse(&offer.sdp).expect("the core offers parsed SDP");
                        let mids: Vec<&str> = sdp.media.iter().map(|m| m.mid.as_str()).collect();
                        let lines: Vec<&str> =
                            offer.mlines.iter().map(|l| l.mid.as_str()).collect();
                        assert_eq!(mids, lines, "plane offer m-lines differ from its SDP");
                    }
                    self.plane.apply(command);
                }
            }
        }
        // A peer that left starts over with its next `connect`.
        let roster = self.session.roster();
        self.tracks_types.retain(|peer, _| roster.contains(peer));
        self.answered.retain(|peer, _| roster.contains(peer));
    }

    fn check_event(&mut self, sender: Option<&str>, peer: &str, data: &str) {
        let event: Value = serde_json::from_str(data).expect("media events out are JSON");
        let kind = event["type"]
            .as_str()
            .expect("media events have a string type");
        let connected = self.session.roster().contains(peer);
        assert!(
            connected || (kind == "error" && sender == Some(peer)),
            "{kind} to {peer}, which is not connected"
        );
        if kind == "error" {
            let message = event["data"]["message"]
                .as_str()
                .expect("errors have a message");
            assert!(
                message.len() <= 256 + '…'.len_utf8(),
                "{}-byte error",
                message.len()
            );
        }
        let offer_data = &event["data"]["data"];
        if kind == "custom" && event["data"]["type"] == "sdpAnswer" {
            let answer = &event["data"]["data"];
            let sdp = answer["sdp"].as_str().expect("answers carry SDP");
            let sdp = Sdp::parse(sdp).expect("the fake plane's answers parse");
            let known = self.answered.entry(peer.to_owned()).or_default();
            for t in answer["midToTrackId"].as_object().expect("a map").values() {
                known.insert(t.as_str().expect("track ids").to_owned());
            }
            for m in sdp
                .media
                .iter()
                .filter(|m| m.direction != Direction::Inactive)
            {
                assert!(
                    answer["midToTrackId"].get(&m.mid).is_some(),
                    "active mid {} of an answer to {peer} is not in midToTrackId",
                    m.mid
                );
            }
        }
        if kind == "tracksRemoved" {
            let known = self.answered.get(peer);
            for t in event["data"]["trackIds"].as_array().expect("track ids") {
                let t = t.as_str().expect("a track id");
                assert!(
                    known.is_some_and(|k| k.contains(t)),
                    "{peer} told to remove {t}, which no answer gave it"
                );
            }
        }
        if kind == "custom" && event["data"]["type"] == "offerData" {
            let now = (
                offer_data["tracksTypes"]["audio"]
                    .as_u64()
                    .expect("audio count"),
                offer_data["tracksTypes"]["video"]
                    .as_u64()
                    .expect("video count"),
            );
            if let Some(before) = self.tracks_types.insert(peer.to_owned(), now) {
                assert!(
                    now.0 >= before.0 && now.1 >= before.1,
                    "tracksTypes to {peer} went from {before:?} to {now:?}"
                );
            }
        }
    }

    fn deliver(&mut self, max: usize) {
        for _ in 0..max {
            let Some(event) = self.queue.lock().unwrap().pop_front() else {
                return;
            };
            let outs = self.session.handle_plane_event(event);
            self.dispatch(None, outs);
        }
    }

    fn run(&mut self, script: &[String]) {
        for line in script {
            let Some((code, rest)) = op(line) else {
                continue;
            };
            let peer = |c: char| c.to_digit(10).and_then(|d| PEERS.get(d as usize).copied());
            let target = rest.chars().next().and_then(peer);
            match code {
                c if peer(c).is_some() => {
                    let from = peer(c).expect("checked");
                    let outs = self.session.handle_event(from, rest);
                    self.dispatch(Some(from), outs);
                }
                '-' => {
                    if let Some(p) = target {
                        let outs = self.session.remove_peer(p);
                        self.dispatch(None, outs);
                    }
                }
                '.' => self.deliver(1),
                '*' => self.deliver(usize::MAX),
                'f' | 'e' => {
                    let Some(p) = target else { continue };
                    let event = if code == 'f' {
                        PlaneEvent::Failed {
                            peer: p.to_owned(),
                            reason: "fuzz".to_owned(),
                        }
                    } else {
                        let track = rest.get(1..).unwrap_or("").trim_start();
                        PlaneEvent::TrackEnded {
                            peer: p.to_owned(),
                            track_id: track.to_owned(),
                        }
                    };
                    self.queue.lock().unwrap().push_back(event);
                }
                _ => {}
            }
        }
        self.deliver(usize::MAX);
        for p in PEERS {
            let outs = self.session.remove_peer(p);
            self.dispatch(None, outs);
        }
        self.deliver(usize::MAX);
        assert_eq!(self.session.endpoints().count(), 0);
        assert_eq!(
            self.session.negotiation().peer_count(),
            0,
            "leaked engine peers"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let script = lines(data);
    let mut first = Room::new();
    first.run(&script);
    let mut second = Room::new();
    second.run(&script);
    assert!(
        first.log == second.log,
        "the same script gave different outputs"
    );
});
