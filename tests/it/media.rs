//! The media plane (sans-IO workers) against synthetic webrtc-rs clients on loopback, through the
//! integrated TURN server with relay-only ICE (as the browser client does): forwarding with
//! payload-type rewriting, in order and without loss; renegotiation as peers come and go; PLI
//! relay; teardown on leave.
#![cfg(feature = "media-webrtc")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use net_tokio::sync::mpsc;
use net_tokio::time::timeout;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use videoroom::engine::webrtc::worker::Workers;
use videoroom::engine::webrtc::{media_engine, PlaneConfig};
use videoroom::engine::{
    MLine, MLineRole, MediaKind, MediaPlane, PlaneEvent, PlaneOffer, PlaneSink,
};
use videoroom::fabric::Fabric;
use videoroom::turn::{TurnConfig, TurnServer};

use crate::support::sfu_peer::relay_only_connection;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceServer,
    RTCPeerConnectionIceEvent, RTCSessionDescription,
};

const STEP: Duration = Duration::from_secs(10);

/// What a synthetic client observed.
#[derive(Debug)]
enum ClientEvent {
    /// (publisher index, sequence number, kind byte)
    Rtp(u8, u32, u8),
    Candidate(RTCIceCandidateInit),
}

struct ClientHandler {
    tx: mpsc::UnboundedSender<ClientEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for ClientHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.tx.send(ClientEvent::Candidate(init));
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let tx = self.tx.clone();
        net_tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                match ev {
                    TrackRemoteEvent::OnRtpPacket(p) if p.payload.len() >= 6 => {
                        let seq = u32::from_be_bytes(p.payload[2..6].try_into().unwrap());
                        let _ = tx.send(ClientEvent::Rtp(p.payload[1], seq, p.payload[0]));
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

/// A browser stand-in: publishes one video track with its own VP8 payload type and receives
/// on recvonly transceivers, relay-only through the plane's TURN server.
struct Client {
    id: String,
    index: u8,
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    recvonly: usize,
    /// RTP sequence numbers only move forward (SRTP replay protection drops the rest), across
    /// probes and numbered packets alike.
    rtp_seq: std::sync::atomic::AtomicU16,
}

impl Client {
    async fn new(index: u8, vp8_pt: u8, turn: &TurnServer) -> Client {
        let id = format!("peer{index}");
        let creds = turn.credentials(&id);
        let mut me = media_engine().unwrap();
        if vp8_pt != 96 {
            // A browser may number VP8 differently; the SFU must rewrite per leg.
            me = webrtc::peer_connection::MediaEngine::default();
            let mut vp8 = videoroom_vp8();
            vp8.payload_type = vp8_pt;
            me.register_codec(vp8, RtpCodecKind::Video).unwrap();
        }
        let (tx, events) = mpsc::unbounded_channel();
        let pc = relay_only_connection(
            me,
            vec![RTCIceServer {
                urls: vec![format!(
                    "turn:{}:{}?transport=udp",
                    creds.server_addr, creds.server_port
                )],
                username: creds.username.clone(),
                credential: creds.password.clone(),
            }],
            Arc::new(ClientHandler { tx }),
        )
        .await
        .unwrap();
        let ssrc = 1000 + index as u32;
        let mut codec = videoroom_vp8().rtp_codec;
        codec.rtcp_feedback.clear();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            id.clone(),
            format!("{id}:video"),
            format!("{id}:video"),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        )));
        pc.add_transceiver_from_track(
            Arc::clone(&track) as Arc<dyn TrackLocal>,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![id.clone()],
                send_encodings: Vec::new(),
            }),
        )
        .await
        .unwrap();
        Client {
            id,
            index,
            pc,
            track,
            ssrc,
            events,
            recvonly: 0,
            rtp_seq: Default::default(),
        }
    }

    fn track_id(&self) -> String {
        format!("{}:video", self.id)
    }

    /// Adds recvonly transceivers up to `n` (the client never removes m-lines, like 0.5.3) and
    /// offers, restarting ICE after the first offer as the browser client does.
    async fn offer(&mut self, n: usize) -> String {
        while self.recvonly < n {
            self.pc
                .add_transceiver_from_kind(
                    RtpCodecKind::Video,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        ..Default::default()
                    }),
                )
                .await
                .unwrap();
            self.recvonly += 1;
        }
        if self.pc.local_description().await.is_some() {
            self.pc.restart_ice().await.unwrap();
        }
        let offer = self.pc.create_offer(None).await.unwrap();
        self.pc.set_local_description(offer).await.unwrap();
        self.pc.local_description().await.unwrap().sdp
    }

    async fn send(&self, kind: u8, seq: u32) {
        let mut payload = vec![kind, self.index];
        payload.extend_from_slice(&seq.to_be_bytes());
        payload.resize(200, 0xAB);
        let rtp_seq = self
            .rtp_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pkt = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: 0, // the negotiated one, set in `write`
                sequence_number: rtp_seq,
                timestamp: u32::from(rtp_seq).wrapping_mul(3000),
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: payload.into(),
        };
        let _ = self.write(pkt).await;
    }

    async fn write(&self, mut pkt: rtp::Packet) -> webrtc::error::Result<()> {
        pkt.header.payload_type = self.pt().await;
        self.track.write_rtp(pkt).await
    }

    async fn pt(&self) -> u8 {
        let sdp = self.pc.local_description().await.unwrap().sdp;
        sdp.lines()
            .find_map(|l| l.strip_prefix("m=video "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|p| p.parse().ok())
            .unwrap()
    }
}

fn videoroom_vp8() -> rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters {
    videoroom::engine::webrtc::codec(RtpCodecKind::Video)
}

/// Drives the plane's events: answers go to their client, candidates both ways.
struct Harness {
    plane: Box<dyn MediaPlane>,
    events: mpsc::UnboundedReceiver<PlaneEvent>,
    negotiation: u64,
    /// Candidates for clients that were not at hand when they arrived.
    pending: Vec<(String, String)>,
}

impl Harness {
    /// Negotiates `client` with the plane: `subscriptions` are (mid, publisher client) pairs in
    /// recvonly m-line order; the client's own track is on mid "0".
    async fn negotiate(&mut self, client: &mut Client, subscriptions: &[(&Client, bool)]) {
        let sdp = client.offer(subscriptions.len()).await;
        let mut mlines = vec![MLine {
            mid: "0".into(),
            role: MLineRole::Inbound {
                kind: MediaKind::Video,
                track_id: client.track_id(),
            },
        }];
        for (i, (publisher, live)) in subscriptions.iter().enumerate() {
            mlines.push(MLine {
                mid: (i + 1).to_string(),
                role: if *live {
                    MLineRole::Outbound {
                        kind: MediaKind::Video,
                        publisher: publisher.id.clone(),
                        track_id: publisher.track_id(),
                        stream_id: publisher.id.clone(),
                    }
                } else {
                    MLineRole::Inactive
                },
            });
        }
        self.negotiation += 1;
        let n = self.negotiation;
        self.plane.offer(
            &client.id,
            PlaneOffer {
                negotiation: n,
                sdp,
                mlines,
            },
        );
        // The answer first, then (trickled) candidates both ways until the client connects.
        let answer = loop {
            match timeout(STEP, self.events.recv())
                .await
                .expect("answer")
                .unwrap()
            {
                PlaneEvent::Answer {
                    peer,
                    negotiation,
                    result,
                } if peer == client.id && negotiation == n => break result.expect("answer sdp"),
                other => self.route(other, std::slice::from_mut(client)).await,
            }
        };
        client
            .pc
            .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
            .await
            .unwrap();
    }

    async fn route(&mut self, ev: PlaneEvent, clients: &mut [Client]) {
        if let PlaneEvent::LocalCandidate { peer, candidate } = ev {
            let Some(c) = clients.iter().find(|c| c.id == peer) else {
                self.pending.push((peer, candidate));
                return;
            };
            {
                let _ =
                    c.pc.add_ice_candidate(RTCIceCandidateInit {
                        candidate,
                        sdp_mline_index: Some(0),
                        ..Default::default()
                    })
                    .await;
            }
        }
    }

    /// Pumps candidates both ways until every client has seen a probe from every publisher in
    /// `expect` (client index → publisher indices).
    async fn sync(&mut self, clients: &mut [Client], expect: &BTreeMap<u8, Vec<u8>>) {
        let deadline = Instant::now() + STEP;
        let mut seen: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        let mut tick = net_tokio::time::interval(Duration::from_millis(5));
        let mut probe = 0u32;
        for (peer, candidate) in std::mem::take(&mut self.pending) {
            self.route(PlaneEvent::LocalCandidate { peer, candidate }, clients)
                .await;
        }
        loop {
            if expect.iter().all(|(c, pubs)| {
                pubs.iter()
                    .all(|p| seen.get(c).is_some_and(|s| s.contains(p)))
            }) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sync timed out: saw {seen:?}, want {expect:?}"
            );
            net_tokio::select! {
                Some(ev) = self.events.recv() => self.route(ev, clients).await,
                _ = tick.tick() => {
                    probe += 1;
                    for c in clients.iter() {
                        c.send(0, probe).await;
                    }
                    for c in clients.iter_mut() {
                        while let Ok(ev) = c.events.try_recv() {
                            match ev {
                                ClientEvent::Candidate(init) => {
                                    self.plane.remote_candidate(&c.id, &init.candidate, Some(0));
                                }
                                ClientEvent::Rtp(p, _, _) => {
                                    let s = seen.entry(c.index).or_default();
                                    if !s.contains(&p) {
                                        s.push(p);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Every client sends `n` numbered packets; every client must get all of them from every
/// publisher in `expect`, in order.
async fn exchange(clients: &mut [Client], expect: &BTreeMap<u8, Vec<u8>>, n: u32) {
    // Camera-like pacing (see media_server.rs): the SFU drops for a subscriber that falls behind.
    let mut tick = net_tokio::time::interval(Duration::from_millis(5));
    for seq in 0..n {
        tick.tick().await;
        for c in clients.iter() {
            c.send(1, seq).await;
        }
    }
    for c in clients.iter_mut() {
        let pubs = &expect[&c.index];
        let mut next: BTreeMap<u8, u32> = pubs.iter().map(|p| (*p, 0)).collect();
        while next.values().any(|v| *v < n) {
            let ev = timeout(STEP, c.events.recv())
                .await
                .unwrap_or_else(|_| panic!("client {} stalled at {next:?}", c.index))
                .unwrap();
            if let ClientEvent::Rtp(p, seq, 1) = ev {
                let Some(want) = next.get_mut(&p) else {
                    panic!("client {} got media from {p}, not subscribed", c.index)
                };
                assert_eq!(seq, *want, "client {} from {p}: loss or reorder", c.index);
                *want += 1;
            }
        }
    }
}

#[net_tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_in_order_through_turn_renegotiates_relays_pli_and_cleans_up() {
    forwarding_renegotiation_pli_and_cleanup(1).await;
}

/// The same with the room on the second of two workers: the first reads the TURN socket, so
/// every published packet crosses to the room's worker through the fabric.
#[net_tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_the_second_worker_forwards_renegotiates_relays_pli_and_cleans_up() {
    forwarding_renegotiation_pli_and_cleanup(2).await;
}

/// On `workers` workers; with more than one, the test's room is placed on the last.
async fn forwarding_renegotiation_pli_and_cleanup(workers: usize) {
    let _exclusive = crate::support::MEDIA_EXCLUSIVE.lock().await;
    // The relay sockets and the SFU's sockets share a fabric: relayed media skips the kernel.
    let fabric = Arc::new(Fabric::new(videoroom::fabric::DEFAULT_INBOX_CAPACITY));
    let turn = Arc::new(
        TurnServer::start(TurnConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..TurnConfig::new(Arc::clone(&fabric))
        })
        .await
        .unwrap(),
    );
    let (tx, events) = mpsc::unbounded_channel();
    let cfg = PlaneConfig {
        turn: Some(Arc::clone(&turn)),
        fabric: Arc::clone(&fabric),
        ..PlaneConfig::default()
    };
    let sink = PlaneSink::new(move |ev| {
        let _ = tx.send(ev);
    });
    let pool = Workers::start(cfg, workers).unwrap();
    // Rooms go to the worker with the fewest: fill the others first.
    let fillers: Vec<_> = (1..workers)
        .map(|_| pool.plane(PlaneSink::new(|_| {})))
        .collect();
    let plane: Box<dyn MediaPlane> = Box::new(pool.plane(sink));
    let stats = move || pool.stats();
    let mut h = Harness {
        plane,
        events,
        negotiation: 0,
        pending: Vec::new(),
    };
    // Three publishers; peer 1 numbers VP8 as 100, the others as 96.
    let mut a = Client::new(0, 96, &turn).await;
    let mut b = Client::new(1, 100, &turn).await;
    let mut c = Client::new(2, 96, &turn).await;
    for cl in [&a, &b, &c] {
        h.plane.add_peer(&cl.id);
    }
    // A alone, then B (A renegotiates to receive B), then C (both renegotiate).
    h.negotiate(&mut a, &[]).await;
    h.negotiate(&mut b, &[(&a, true)]).await;
    h.negotiate(&mut a, &[(&b, true)]).await;
    h.negotiate(&mut c, &[(&a, true), (&b, true)]).await;
    h.negotiate(&mut a, &[(&b, true), (&c, true)]).await;
    h.negotiate(&mut b, &[(&a, true), (&c, true)]).await;

    let all: BTreeMap<u8, Vec<u8>> = [(0, vec![1, 2]), (1, vec![0, 2]), (2, vec![0, 1])].into();
    let mut clients = vec![a, b, c];
    h.sync(&mut clients, &all).await;
    exchange(&mut clients, &all, 300).await;
    let s = stats();
    assert!(s.forwarded >= 6 * 300, "{s:?}");
    // The middle hop of every packet stayed in the process: 3 × 300 published (client →
    // SFU) and 6 × 300 forwarded (SFU → client), each stepped through the TURN core by a
    // worker. On the first worker nothing of the media crosses the fabric; on the second,
    // what its clients publish does (the first worker reads the TURN socket).
    let f = turn.fabric_stats();
    let via_fabric = if workers == 1 { 0 } else { 3 * 300 };
    assert!(f.delivered >= via_fabric, "{f:?}");
    let t = turn.stats();
    assert!(t.relayed_out >= 3 * 300 && t.relayed_in >= 6 * 300, "{t:?}");
    // One PLI per track when its media starts (its subscribers were already waiting).
    assert!(s.keyframe_requests_sent >= 3, "{s:?}");

    // PLI relay: subscriber B asks for a keyframe of A's track; A's client must receive a PLI.
    let relayed_before = s.keyframe_requests_relayed;
    let [a, b, _] = &mut clients[..] else {
        unreachable!()
    };
    let (pli_tx, mut pli_rx) = mpsc::unbounded_channel();
    let a_track = Arc::clone(&a.track);
    let watcher = net_tokio::spawn(async move {
        while let Some(ev) = a_track.poll().await {
            if let TrackLocalEvent::OnRtcpPacket(p) = ev {
                let _ = pli_tx.send(p.len());
            }
        }
    });
    // B's receivers are A's and C's legs (and its own sendonly m-line's idle receiver, in no
    // fixed order): ask on every leg that carries media, so A's is among them.
    for receiver in b.pc.get_receivers().await {
        let Some(media_ssrc) = receiver.track().ssrcs().await.first().copied() else {
            continue;
        };
        receiver
            .track()
            .write_rtcp(vec![Box::new(PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            })])
            .await
            .unwrap();
    }
    // A's queue may still hold the PLIs sent when media started; the relay counts before it
    // sends, so the relayed one is the first A receives once the count has moved.
    loop {
        timeout(STEP, pli_rx.recv())
            .await
            .expect("A never got the relayed PLI")
            .unwrap();
        if stats().keyframe_requests_relayed > relayed_before {
            break;
        }
    }
    watcher.abort();

    // C leaves: the others renegotiate with C's m-line inactive and keep exchanging media.
    let c = clients.pop().unwrap();
    h.plane.remove_peer(&c.id);
    c.pc.close().await.unwrap();
    let [a, b] = &mut clients[..] else {
        unreachable!()
    };
    h.negotiate(a, &[(b, true), (&c, false)]).await;
    h.negotiate(b, &[(a, true), (&c, false)]).await;
    let two: BTreeMap<u8, Vec<u8>> = [(0, vec![1]), (1, vec![0])].into();
    h.sync(&mut clients, &two).await;
    exchange(&mut clients, &two, 100).await;
    let s = stats();
    assert_eq!(
        (s.peers, s.fanouts),
        (2, 2),
        "C's fanout and legs are gone: {s:?}"
    );

    for c in &clients {
        h.plane.remove_peer(&c.id);
        c.pc.close().await.unwrap();
    }
    drop(h);
    // The workers' peer count moves once the removal reached them.
    let deadline = Instant::now() + STEP;
    while stats().peers != 0 {
        assert!(Instant::now() < deadline, "peers left: {:?}", stats());
        net_tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The last plane handle and the pool gone, the workers end and close their sockets.
    drop(fillers);
    drop(stats);
    // Every SFU socket and relay socket left the fabric once its connection or allocation
    // closed (both happen in the background after removal).
    let deadline = Instant::now() + STEP;
    while fabric.stats().endpoints != 0 {
        assert!(Instant::now() < deadline, "leaked: {:?}", fabric.stats());
        net_tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
