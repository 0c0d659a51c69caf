//! Random sequences of connects, renegotiation requests, offers (well-formed ones built by the
//! shared model of the 0.5.3 client, the one the simulation runs, and garbage), plane answers
//! and leaves, checked against what a client may receive: by that model, and by the checks
//! here that it does not make.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{json, Value};

use super::tests::{connect, offer_sdp, RENEGOTIATE};
use super::*;
use crate::engine::client_model::{Judge, Negotiator};
use crate::engine::fake_plane::{fake_answer, FAKE_CANDIDATE};
use crate::engine::session::{Out, Session, SessionConfig};

const PEERS: [&str; 4] = ["p0", "p1", "p2", "p3"];
const KINDS: [&str; 3] = ["audio", "video", "application"];
const DIRS: [&str; 4] = ["sendonly", "recvonly", "sendrecv", "inactive"];

#[derive(Debug, Clone)]
enum Op {
    Connect(usize),
    Renegotiate(usize),
    /// A well-formed offer: maybe publish a new track of a kind (audio or video), maybe stop
    /// the n-th published track.
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

/// What one client knows beyond the shared model of 0.5.3, which builds its offers and
/// applies what the server sends.
#[derive(Default)]
struct Client {
    model: Negotiator,
    endpoints: BTreeSet<String>,
    /// A garbage offer was processed: pairing guarantees no longer apply.
    tainted: bool,
    last_sent_well_formed: bool,
    awaiting_well_formed: bool,
    /// The client offers once per `offerData`, as 0.5.3 does.
    may_offer: bool,
}

/// Keeps the model's verdicts, so any breach fails the case in the model's own words.
#[derive(Default)]
struct Violations(RefCell<Vec<String>>);

impl Judge for Violations {
    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.borrow_mut().push(what());
        }
    }

    fn reached(&self, _: &'static str) {}
}

impl Violations {
    fn verdict(&self) -> Result<(), TestCaseError> {
        let v = std::mem::take(&mut *self.0.borrow_mut());
        if v.is_empty() {
            Ok(())
        } else {
            Err(TestCaseError::fail(v.join("; ")))
        }
    }
}

struct World {
    session: Session<TrackNegotiation>,
    clients: Vec<Client>,
    judge: Violations,
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
            let judge = &self.judge;
            match kind {
                "connected" => {
                    let others = d["otherEndpoints"].as_array().unwrap();
                    c.endpoints = others
                        .iter()
                        .map(|e| e["id"].as_str().unwrap().to_owned())
                        .collect();
                    for e in others {
                        c.model.on_tracks_announced(&e["tracks"]);
                    }
                }
                "endpointAdded" => {
                    c.endpoints.insert(d["id"].as_str().unwrap().to_owned());
                }
                "endpointRemoved" => {
                    let id = d["id"].as_str().unwrap();
                    prop_assert!(c.endpoints.remove(id));
                    c.model.on_endpoint_removed(id);
                }
                "tracksAdded" => {
                    let from = d["endpointId"].as_str().unwrap();
                    prop_assert!(from != peer && c.endpoints.contains(from), "{}", data);
                    c.model.on_tracks_announced(&d["tracks"]);
                }
                "tracksRemoved" => {
                    let from = d["endpointId"].as_str().unwrap();
                    prop_assert!(c.endpoints.contains(from), "{}", data);
                    prop_assert!(d["trackIds"].is_array(), "{}", data);
                    c.model.on_tracks_removed(&peer, d, judge);
                }
                "trackUpdated" => {
                    prop_assert!(c.endpoints.contains(d["endpointId"].as_str().unwrap()));
                }
                "offerData" => {
                    let t = &d["tracksTypes"];
                    prop_assert!(t["audio"].is_u64() && t["video"].is_u64(), "{}", data);
                    c.model.take_offer_data(&peer, d, judge);
                    c.may_offer = true;
                }
                "sdpAnswer" => {
                    let map: BTreeMap<String, String> =
                        serde_json::from_value(d["midToTrackId"].clone()).unwrap();
                    let sdp = Sdp::parse(d["sdp"].as_str().unwrap()).unwrap();
                    let mids: BTreeSet<&str> = sdp.media.iter().map(|m| m.mid.as_str()).collect();
                    for mid in map.keys() {
                        prop_assert!(mids.contains(mid.as_str()), "{} not in the answer", mid);
                    }
                    // The model asks this of active mids only; an answer to the client's own
                    // offer maps every mid.
                    if c.awaiting_well_formed && !c.tainted {
                        for m in &sdp.media {
                            prop_assert!(
                                map.contains_key(&m.mid),
                                "mid {} unmapped: {}",
                                m.mid,
                                data
                            );
                        }
                    }
                    c.model.on_answer(&peer, d, judge);
                }
                "candidate" => {
                    c.model.on_candidate(&peer, d, judge);
                    prop_assert_eq!(&d["sdpMLineIndex"], &json!(0));
                    prop_assert!(d["sdpMid"].is_null() && d["usernameFragment"].is_null());
                }
                "error" => {
                    // Every error this world can cause refuses an offer.
                    prop_assert!(
                        c.model.offer_open(),
                        "{} got {} with no offer open",
                        peer,
                        data
                    );
                    c.model.offer_refused();
                }
                other => prop_assert!(false, "unexpected {}", other),
            }
            self.judge.verdict()?;
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
                let published = |c: &Client| -> Vec<String> {
                    c.model
                        .tracks()
                        .filter(|(_, on)| *on)
                        .map(|(t, _)| t.to_owned())
                        .collect()
                };
                if let Some(n) = remove {
                    let own = published(c);
                    if !own.is_empty() {
                        c.model.stop_track(&own[n % own.len()]);
                    }
                }
                if let (Some(k), true) = (add, published(c).len() < 3) {
                    c.model
                        .add_track(PEERS[*p], [MediaKind::Audio, MediaKind::Video][*k]);
                }
                let offer = c.model.offer(&self.judge);
                c.last_sent_well_formed = true;
                self.session.handle_event(PEERS[*p], &offer.to_string())
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
                let c = &mut self.clients[*p];
                c.last_sent_well_formed = false;
                // Outside a session the server drops it; inside, it takes the owed offer's
                // place and is answered or refused.
                if self.session.roster().contains(PEERS[*p]) {
                    c.model.sent_foreign_offer();
                }
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
                // One of the client's tracks (published or stopped), else one it never had.
                let track = match self.clients[*p].model.tracks().nth(*t) {
                    Some((track, _)) => track.to_owned(),
                    None => format!("{}:t{t}", PEERS[*p]),
                };
                let ev = json!({"type":"updateTrackMetadata","data":{
                    "trackId":track,"trackMetadata":{"v":v}}});
                self.session.handle_event(PEERS[*p], &ev.to_string())
            }
            Op::Leave(p) => {
                let outs = self.session.remove_peer(PEERS[*p]);
                self.offers.remove(PEERS[*p]);
                // A client that comes back never reuses a track id (0.5.3 draws them at
                // random): with a fresh counter, its new track would share the id of one the
                // others still hold a slot for, and the count check would blame the server.
                let model = self.clients[*p].model.restart();
                self.clients[*p] = Client {
                    model,
                    ..Client::default()
                };
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
            judge: Violations::default(),
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
