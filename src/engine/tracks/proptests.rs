//! Random sequences of connects, renegotiation requests, offers (well-formed ones built by a
//! model of the 0.5.3 client, and garbage), plane answers and leaves, checked against what a
//! client may receive.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{json, Value};

use super::tests::{connect, offer_sdp, RENEGOTIATE};
use super::*;
use crate::engine::fake_plane::{fake_answer, FAKE_CANDIDATE};
use crate::engine::session::{Out, Session, SessionConfig};

const PEERS: [&str; 4] = ["p0", "p1", "p2", "p3"];
const KINDS: [&str; 3] = ["audio", "video", "application"];
const DIRS: [&str; 4] = ["sendonly", "recvonly", "sendrecv", "inactive"];

#[derive(Debug, Clone)]
enum Op {
    Connect(usize),
    Renegotiate(usize),
    /// A well-formed offer: maybe publish a new track of a kind, maybe stop the n-th own track.
    Offer(usize, Option<usize>, Option<usize>),
    /// m-lines as (mid, kind, direction) indices, and midToTrackId as (mid, owner) indices.
    Garbage(usize, Vec<(u8, usize, usize)>, Vec<(u8, usize)>),
    Answer(usize, bool),
    UpdateMetadata(usize, usize, u8),
    Leave(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PEERS.len();
    prop_oneof![
        3 => p.clone().prop_map(Op::Connect),
        3 => p.clone().prop_map(Op::Renegotiate),
        6 => (p.clone(), prop::option::of(0..2usize), prop::option::of(0..4usize))
            .prop_map(|(p, a, r)| Op::Offer(p, a, r)),
        1 => (
            p.clone(),
            prop::collection::vec((0..5u8, 0..3usize, 0..4usize), 0..5),
            prop::collection::vec((0..5u8, 0..PEERS.len()), 0..4)
        )
            .prop_map(|(p, l, m)| Op::Garbage(p, l, m)),
        6 => (p.clone(), prop::bool::weighted(0.9)).prop_map(|(p, ok)| Op::Answer(p, ok)),
        1 => (p.clone(), 0..4usize, 0..3u8).prop_map(|(p, t, v)| Op::UpdateMetadata(p, t, v)),
        2 => p.prop_map(Op::Leave),
    ]
}

/// What one client has and knows.
#[derive(Debug, Default)]
struct Client {
    /// (mid, kind, direction, own track id).
    mlines: Vec<(String, &'static str, &'static str, Option<String>)>,
    next_mid: u32,
    next_track: u32,
    tracks_types: Option<TracksTypes>,
    outstanding_offer_data: bool,
    /// Track ids some answer mapped a mid to.
    answered: BTreeSet<TrackId>,
    /// Tracks the client was told are gone (`tracksRemoved`, or their endpoint removed).
    gone: BTreeSet<TrackId>,
    /// For each mid the server sent on: its track, and whether an answer made the mid
    /// inactive after the client knew that track was gone (only then may it carry another).
    carried: BTreeMap<String, (TrackId, bool)>,
    endpoints: BTreeSet<String>,
    answers: u32,
    /// A garbage offer was processed: pairing guarantees no longer apply.
    tainted: bool,
    last_sent_well_formed: bool,
    awaiting_well_formed: bool,
    /// The client offers once per `offerData`, as 0.5.3 does.
    may_offer: bool,
}

impl Client {
    fn own_tracks(&self) -> Vec<(String, String)> {
        self.mlines
            .iter()
            .filter_map(|(mid, _, _, t)| t.clone().map(|t| (mid.clone(), t)))
            .collect()
    }

    fn well_formed_offer(&mut self, me: &str, add: Option<usize>, remove: Option<usize>) -> String {
        if let Some(n) = remove {
            let own: Vec<usize> = (0..self.mlines.len())
                .filter(|i| self.mlines[*i].3.is_some())
                .collect();
            if !own.is_empty() {
                let i = own[n % own.len()];
                self.mlines[i].2 = "inactive";
                self.mlines[i].3 = None;
            }
        }
        if let (Some(k), true) = (add, self.own_tracks().len() < 3) {
            let track = format!("{me}:t{}", self.next_track);
            self.next_track += 1;
            let mid = self.next_mid.to_string();
            self.next_mid += 1;
            self.mlines.push((mid, KINDS[k], "sendonly", Some(track)));
        }
        let types = self
            .tracks_types
            .unwrap_or(TracksTypes { audio: 0, video: 0 });
        for (kind, want) in [("audio", types.audio), ("video", types.video)] {
            let have = self
                .mlines
                .iter()
                .filter(|m| m.1 == kind && m.2 == "recvonly")
                .count() as u32;
            // The client throws a RangeError when the count shrinks (research §5.1).
            assert!(
                want >= have,
                "tracksTypes below existing {kind} transceivers"
            );
            for _ in have..want {
                let mid = self.next_mid.to_string();
                self.next_mid += 1;
                self.mlines.push((mid, kind, "recvonly", None));
            }
        }
        let lines: Vec<(&str, &str, &str)> = self
            .mlines
            .iter()
            .map(|(m, k, d, _)| (m.as_str(), *k, *d))
            .collect();
        let own = self.own_tracks();
        let mid_to_track: BTreeMap<_, _> = own.iter().cloned().collect();
        let meta: BTreeMap<_, _> = own
            .iter()
            .map(|(_, t)| (t.clone(), json!({"type":"x"})))
            .collect();
        json!({"type":"custom","data":{"type":"sdpOffer","data":{
            "sdpOffer":{"type":"offer","sdp":offer_sdp(&lines)},
            "trackIdToTrackMetadata":meta,
            "midToTrackId":mid_to_track}}})
        .to_string()
    }
}

struct World {
    session: Session<TrackNegotiation>,
    clients: Vec<Client>,
    offers: BTreeMap<PeerId, PlaneOffer>,
    answer_version: u64,
}

impl World {
    fn index(peer: &str) -> usize {
        PEERS.iter().position(|p| *p == peer).expect("known peer")
    }

    fn deliver(&mut self, outs: Vec<Out>) -> Result<(), TestCaseError> {
        for out in outs {
            let (peer, data) = match out {
                Out::Plane(PlaneCommand::Offer { peer, offer }) => {
                    let c = &mut self.clients[Self::index(&peer)];
                    c.awaiting_well_formed = c.last_sent_well_formed;
                    if !c.last_sent_well_formed {
                        c.tainted = true;
                    }
                    self.offers.insert(peer, offer);
                    continue;
                }
                Out::Plane(_) => continue,
                Out::To { peer, data } => (peer, data),
            };
            prop_assert!(
                self.session.roster().contains(&peer),
                "{} not connected",
                peer
            );
            let c = &mut self.clients[Self::index(&peer)];
            let ev: Value = serde_json::from_str(&data).unwrap();
            let (kind, d) = if ev["type"] == "custom" {
                (ev["data"]["type"].as_str().unwrap(), &ev["data"]["data"])
            } else {
                (ev["type"].as_str().unwrap(), &ev["data"])
            };
            match kind {
                "connected" => {
                    c.endpoints = d["otherEndpoints"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["id"].as_str().unwrap().to_owned())
                        .collect();
                }
                "endpointAdded" => {
                    c.endpoints.insert(d["id"].as_str().unwrap().to_owned());
                }
                "endpointRemoved" => {
                    let id = d["id"].as_str().unwrap();
                    prop_assert!(c.endpoints.remove(id));
                    let prefix = format!("{id}:");
                    let gone: Vec<TrackId> = c
                        .carried
                        .values()
                        .map(|(t, _)| t.clone())
                        .filter(|t| t.starts_with(&prefix))
                        .collect();
                    c.gone.extend(gone);
                }
                "tracksAdded" => {
                    let from = d["endpointId"].as_str().unwrap();
                    prop_assert!(from != peer && c.endpoints.contains(from), "{}", data);
                }
                "tracksRemoved" => {
                    let from = d["endpointId"].as_str().unwrap();
                    prop_assert!(c.endpoints.contains(from), "{}", data);
                    for t in d["trackIds"].as_array().unwrap() {
                        prop_assert!(
                            c.answered.contains(t.as_str().unwrap()),
                            "{} told to remove {} it never got in an answer",
                            peer,
                            t
                        );
                        c.gone.insert(t.as_str().unwrap().to_owned());
                    }
                }
                "trackUpdated" => {
                    prop_assert!(c.endpoints.contains(d["endpointId"].as_str().unwrap()));
                }
                "offerData" => {
                    prop_assert!(!c.outstanding_offer_data, "second offerData to {}", peer);
                    c.outstanding_offer_data = true;
                    c.may_offer = true;
                    let t = TracksTypes {
                        audio: d["tracksTypes"]["audio"].as_u64().unwrap() as u32,
                        video: d["tracksTypes"]["video"].as_u64().unwrap() as u32,
                    };
                    if let Some(prev) = c.tracks_types {
                        prop_assert!(t.audio >= prev.audio && t.video >= prev.video);
                    }
                    c.tracks_types = Some(t);
                }
                "sdpAnswer" => {
                    c.outstanding_offer_data = false;
                    c.answers += 1;
                    let map: BTreeMap<String, String> =
                        serde_json::from_value(d["midToTrackId"].clone()).unwrap();
                    let sdp = Sdp::parse(d["sdp"].as_str().unwrap()).unwrap();
                    let mids: BTreeSet<&str> = sdp.media.iter().map(|m| m.mid.as_str()).collect();
                    for mid in map.keys() {
                        prop_assert!(mids.contains(mid.as_str()), "{} not in the answer", mid);
                    }
                    for m in &sdp.media {
                        if (c.awaiting_well_formed && !c.tainted)
                            || m.direction != Direction::Inactive
                        {
                            prop_assert!(
                                map.contains_key(&m.mid),
                                "mid {} unmapped: {}",
                                m.mid,
                                data
                            );
                        }
                    }
                    // A recycled mid: the browser only reports the new track if the mid went
                    // inactive in between, and the client must have dropped the old one.
                    for m in &sdp.media {
                        let Some(track) = map.get(&m.mid) else {
                            continue;
                        };
                        match m.direction {
                            Direction::SendOnly => {
                                if let Some((old, freed)) = c.carried.get(&m.mid) {
                                    prop_assert!(
                                        old == track || *freed,
                                        "{} mid {} went from {} to {} without an inactive answer \
                                         after the removal",
                                        peer,
                                        m.mid,
                                        old,
                                        track
                                    );
                                }
                                c.carried.insert(m.mid.clone(), (track.clone(), false));
                            }
                            Direction::Inactive => {
                                if let Some((old, freed)) = c.carried.get_mut(&m.mid) {
                                    *freed |= c.gone.contains(old.as_str());
                                }
                            }
                            _ => {}
                        }
                    }
                    c.answered.extend(map.into_values());
                }
                "candidate" => {
                    prop_assert!(c.answers > 0, "candidate before any answer");
                    prop_assert_eq!(&d["sdpMLineIndex"], &json!(0));
                    prop_assert!(d["sdpMid"].is_null() && d["usernameFragment"].is_null());
                }
                "error" => c.outstanding_offer_data = false,
                other => prop_assert!(false, "unexpected {}", other),
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let outs = match op {
            Op::Connect(p) => self.session.handle_event(PEERS[*p], &connect(PEERS[*p])),
            Op::Renegotiate(p) => self.session.handle_event(PEERS[*p], RENEGOTIATE),
            Op::Offer(p, add, remove) => {
                let c = &mut self.clients[*p];
                if !c.may_offer {
                    return Ok(());
                }
                c.may_offer = false;
                let offer = c.well_formed_offer(PEERS[*p], *add, *remove);
                c.last_sent_well_formed = true;
                self.session.handle_event(PEERS[*p], &offer)
            }
            Op::Garbage(p, lines, map) => {
                let lines: Vec<(String, &str, &str)> = lines
                    .iter()
                    .map(|(m, k, d)| (format!("g{m}"), KINDS[*k], DIRS[*d]))
                    .collect();
                let lines: Vec<(&str, &str, &str)> =
                    lines.iter().map(|(m, k, d)| (m.as_str(), *k, *d)).collect();
                let map: BTreeMap<String, String> = map
                    .iter()
                    .map(|(m, o)| (format!("g{m}"), format!("{}:g{m}", PEERS[*o])))
                    .collect();
                self.clients[*p].last_sent_well_formed = false;
                let offer = json!({"type":"custom","data":{"type":"sdpOffer","data":{
                    "sdpOffer":{"type":"offer","sdp":offer_sdp(&lines)},
                    "trackIdToTrackMetadata":{},"midToTrackId":map}}});
                self.session.handle_event(PEERS[*p], &offer.to_string())
            }
            Op::Answer(p, ok) => {
                let Some(offer) = self.offers.remove(PEERS[*p]) else {
                    return Ok(());
                };
                self.answer_version += 1;
                let result = if *ok {
                    fake_answer(&offer, self.answer_version)
                } else {
                    Err("refused".to_owned())
                };
                let mut outs = self.session.handle_plane_event(PlaneEvent::Answer {
                    peer: PEERS[*p].to_owned(),
                    negotiation: offer.negotiation,
                    result,
                });
                outs.extend(self.session.handle_plane_event(PlaneEvent::LocalCandidate {
                    peer: PEERS[*p].to_owned(),
                    candidate: FAKE_CANDIDATE.to_owned(),
                }));
                outs
            }
            Op::UpdateMetadata(p, t, v) => {
                let ev = json!({"type":"updateTrackMetadata","data":{
                    "trackId":format!("{}:t{t}", PEERS[*p]),"trackMetadata":{"v":v}}});
                self.session.handle_event(PEERS[*p], &ev.to_string())
            }
            Op::Leave(p) => {
                let outs = self.session.remove_peer(PEERS[*p]);
                self.offers.remove(PEERS[*p]);
                self.clients[*p] = Client::default();
                outs
            }
        };
        self.deliver(outs)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn negotiation_invariants(ops in prop::collection::vec(op(), 0..80)) {
        let mut w = World {
            session: Session::with_negotiation(
                SessionConfig::default(),
                TrackNegotiation::new(NegotiationConfig::default()),
            ),
            clients: PEERS.iter().map(|_| Client::default()).collect(),
            offers: BTreeMap::new(),
            answer_version: 0,
        };
        for op in &ops {
            w.apply(op)?;
            for p in PEERS {
                let n = w.session.negotiation();
                prop_assert_eq!(n.peers.contains_key(p), w.session.roster().contains(p));
            }
        }
        for p in 0..PEERS.len() {
            w.apply(&Op::Leave(p))?;
        }
        let n = w.session.negotiation();
        prop_assert_eq!(n.peer_count(), 0);
        prop_assert!(n.renegotiate_after_leave.is_empty());
    }
}
