//! The media plane through the real server: three synthetic webrtc-rs browsers join one room
//! over the Phoenix WebSocket, negotiate with the negotiation core (relay-only ICE through the
//! integrated TURN server named in their own `offerData`), and exchange generated RTP. Every
//! subscriber gets every other publisher's packets in order and without loss; a leaver is
//! retracted (`tracksRemoved`, then `endpointRemoved`) and the others renegotiate and keep
//! going; a subscriber's PLI reaches the publisher.
#![cfg(feature = "media-webrtc")]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use net_tokio::time::{timeout, Instant};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use videoroom::app::Limits;
use videoroom::server::Server;

use crate::support::sfu_peer::{
    start_media_server, Peer, PeerOptions, Signal, TAG_NUMBERED, TAG_PROBE,
};

const STEP: Duration = Duration::from_secs(10);
const PAYLOAD: usize = 200;

async fn start_server() -> Server {
    start_media_server(Limits::default()).await
}

async fn join(server: &Server, name: &str) -> Peer {
    join_with(
        server,
        PeerOptions {
            room: "media".into(),
            name: name.into(),
            audio: true,
            video: true,
        },
    )
    .await
}

async fn join_with(server: &Server, opts: PeerOptions) -> Peer {
    timeout(STEP, Peer::join(server.local_addr(), opts))
        .await
        .expect("join in time")
        .expect("join")
}

fn track_ids(peers: &[&Peer]) -> BTreeSet<String> {
    peers
        .iter()
        .flat_map(|p| p.locals.iter().map(|l| l.track_id.clone()))
        .collect()
}

/// Waits until `peer` has applied an answer carrying every track of `others`, checking on the
/// way that each `offerData` lists TURN credentials issued to `peer` itself.
async fn until_subscribed(peer: &mut Peer, others: &BTreeSet<String>) {
    let me = format!(":{}", peer.id);
    let id = peer.id.clone();
    let got = peer
        .wait_for(STEP, |s| match s {
            Signal::OfferData(d) => {
                let turn = &d["integratedTurnServers"];
                assert_eq!(turn.as_array().map(Vec::len), Some(1), "{d}");
                let user = turn[0]["username"].as_str().unwrap();
                assert!(user.ends_with(&me), "{id} got TURN user {user}");
                None
            }
            Signal::Answered(m) => {
                let carried: BTreeSet<String> = m.values().cloned().collect();
                others.is_subset(&carried).then_some(())
            }
            Signal::Error(e) => panic!("{id}: {e}"),
            _ => None,
        })
        .await;
    assert!(
        got.is_some(),
        "{} never got an answer carrying {others:?}",
        peer.id
    );
}

/// Probes on every track until each peer has media from every other peer's tracks (legs only
/// forward once bound, so earlier packets may legitimately be lost).
async fn sync(peers: &mut [Peer]) {
    let want: Vec<BTreeSet<u32>> = (0..peers.len())
        .map(|i| {
            peers
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, p)| p.locals.iter().map(|l| l.ssrc))
                .collect()
        })
        .collect();
    let mut seen: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); peers.len()];
    let deadline = Instant::now() + STEP;
    let mut tick = net_tokio::time::interval(Duration::from_millis(5));
    let mut probe = 0;
    while seen != want {
        assert!(
            Instant::now() < deadline,
            "sync: saw {seen:?}, want {want:?}"
        );
        tick.tick().await;
        probe += 1;
        for p in peers.iter() {
            for l in &p.locals {
                l.send(TAG_PROBE, probe, PAYLOAD).await;
            }
        }
        for (i, p) in peers.iter_mut().enumerate() {
            while let Ok(rtp) = p.media.try_recv() {
                seen[i].insert(rtp.publisher_ssrc);
            }
        }
    }
}

/// Each peer sends `n` numbered packets on each track; every peer must then receive all of
/// them from every other peer, in order, with sane timestamps. Returns the worst latency.
async fn exchange(peers: &mut [Peer], n: u32) -> Duration {
    // 200 packets/s per track, like a camera: the SFU drops rather than queues for a
    // subscriber that falls behind, so an unrealistically fast source on a busy test machine
    // would measure the machine, not the forwarding.
    let mut tick = net_tokio::time::interval(Duration::from_millis(5));
    for seq in 0..n {
        tick.tick().await;
        for p in peers.iter() {
            for l in &p.locals {
                assert!(l.send(TAG_NUMBERED, seq, PAYLOAD).await, "write_rtp failed");
            }
        }
    }
    let all: Vec<(String, u32)> = peers
        .iter()
        .flat_map(|p| p.locals.iter().map(|l| (p.id.clone(), l.ssrc)))
        .collect();
    let mut worst = Duration::ZERO;
    for p in peers.iter_mut() {
        let mut next: BTreeMap<u32, u32> = all
            .iter()
            .filter(|(owner, _)| *owner != p.id)
            .map(|(_, ssrc)| (*ssrc, 0))
            .collect();
        while next.values().any(|v| *v < n) {
            let rtp = timeout(STEP, p.media.recv())
                .await
                .unwrap_or_else(|_| panic!("{} stalled at {next:?}", p.id))
                .expect("media channel open");
            if rtp.tag != TAG_NUMBERED {
                continue;
            }
            let want = next
                .get_mut(&rtp.publisher_ssrc)
                .unwrap_or_else(|| panic!("{} got its own or an unknown ssrc", p.id));
            assert_eq!(rtp.seq, *want, "{}: loss or reorder", p.id);
            assert_eq!(rtp.len, PAYLOAD);
            assert!(rtp.recv_ns >= rtp.sent_ns, "received before sent: {rtp:?}");
            worst = worst.max(Duration::from_nanos(rtp.recv_ns - rtp.sent_ns));
            *want += 1;
        }
    }
    worst
}

/// `subscriber` asks for a keyframe of `publisher`'s video; `keyframes` (the publisher's video
/// keyframe requests) must then get one. Requests already received are drained first.
async fn assert_pli_relayed(
    subscriber: &Peer,
    publisher: &Peer,
    keyframes: &mut net_tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    while keyframes.try_recv().is_ok() {}
    let video = &publisher.local(RtpCodecKind::Video).unwrap().track_id;
    assert!(
        subscriber.request_keyframe(video).await,
        "{} has no leg for {video}",
        subscriber.id
    );
    timeout(STEP, keyframes.recv())
        .await
        .unwrap_or_else(|_| panic!("{} never got the relayed PLI", publisher.id))
        .unwrap();
}

#[net_tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_through_the_server_forward_leave_and_relay_pli() {
    let _exclusive = crate::support::MEDIA_EXCLUSIVE.lock().await;
    let started = Instant::now();
    let server = start_server().await;
    let mut a = join(&server, "a").await;
    until_subscribed(&mut a, &BTreeSet::new()).await;
    // Watching from A's first answer on: every keyframe request A's video gets is counted as
    // it arrives, so the ones the SFU sends while subscriptions start are consumed early.
    let mut a_keyframes = a.local(RtpCodecKind::Video).unwrap().keyframe_requests();
    let mut b = join(&server, "b").await;
    assert_eq!(b.others_at_join, [a.id.clone()]);
    let mut c = join(&server, "c").await;
    let all = track_ids(&[&a, &b, &c]);
    for p in [&mut a, &mut b, &mut c] {
        let mine = format!("{}:", p.id);
        let others: BTreeSet<String> = all
            .iter()
            .filter(|t| !t.starts_with(&mine))
            .cloned()
            .collect();
        until_subscribed(p, &others).await;
    }
    let mut peers = vec![a, b, c];
    sync(&mut peers).await;
    let worst = exchange(&mut peers, 200).await;
    assert!(worst < Duration::from_secs(1), "latency {worst:?}");

    // /metrics saw the call: every packet each peer received was counted as forwarded, with
    // its payload, and every peer holds a TURN allocation.
    let (_, body) = crate::support::http::get_body_async(server.local_addr(), "/metrics").await;
    let m = crate::support::http::parse_metrics(&body);
    let received: usize = peers
        .iter()
        .map(|p| p.locals.len() * (peers.len() - 1) * 200)
        .sum();
    let packets = m["videoroom_forwarded_packets_total"];
    assert!(
        packets >= received as f64,
        "{packets} forwarded, {received} received"
    );
    assert!(m["videoroom_forwarded_bytes_total"] >= (received * PAYLOAD) as f64);
    assert!(m["videoroom_turn_allocations"] >= 3.0, "{body}");
    assert_eq!(m["videoroom_peers"], 3.0);

    // PLI relay: B asks for a keyframe of A's video; A must be asked. Setup-time requests were
    // all sent before media was in sync, and have been counted already.
    assert_pli_relayed(&peers[1], &peers[0], &mut a_keyframes).await;

    // C leaves: A and B hear tracksRemoved, then endpointRemoved, then renegotiate without it.
    let c = peers.pop().unwrap();
    let c_id = c.id.clone();
    let c_tracks: BTreeSet<String> = c.locals.iter().map(|l| l.track_id.clone()).collect();
    c.leave().await;
    for p in peers.iter_mut() {
        let mut removed = BTreeSet::new();
        let order = p
            .wait_for(STEP, |s| match s {
                Signal::TracksRemoved { endpoint, tracks } if *endpoint == c_id => {
                    removed.extend(tracks.iter().cloned());
                    None
                }
                Signal::EndpointRemoved(id) if *id == c_id => Some(removed.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|| panic!("{} never saw C leave", p.id));
        assert_eq!(
            order, c_tracks,
            "{}: tracksRemoved before endpointRemoved",
            p.id
        );
        let id = p.id.clone();
        let renegotiated = p
            .wait_for(STEP, |s| match s {
                Signal::Answered(_) => Some(()),
                Signal::Error(e) => panic!("{id}: {e}"),
                _ => None,
            })
            .await;
        assert!(renegotiated.is_some(), "{} did not renegotiate", p.id);
    }
    sync(&mut peers).await;
    exchange(&mut peers, 100).await;

    for p in peers {
        p.leave().await;
    }
    server.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A resident peer next to visitors who come and go one at a time: each visitor's tracks are
/// carried on the m-lines the previous one's left behind (the resident's `tracksTypes` stays
/// at one audio and one video), media flows both ways in order every time, and the
/// resident's PLI on a recycled m-line reaches the current visitor.
#[net_tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_one_at_a_time_reuse_the_residents_m_lines() {
    let _exclusive = crate::support::MEDIA_EXCLUSIVE.lock().await;
    let server = start_server().await;
    let mut resident = join(&server, "resident").await;
    until_subscribed(&mut resident, &BTreeSet::new()).await;
    let mut mids_seen = BTreeSet::new();
    for k in 0..3 {
        let mut visitor = join(&server, &format!("visitor{k}")).await;
        let theirs = track_ids(&[&visitor]);
        let mine = track_ids(&[&resident]);
        until_subscribed(&mut visitor, &mine).await;
        let id = resident.id.clone();
        let carried = resident
            .wait_for(STEP, |s| match s {
                Signal::OfferData(d) => {
                    assert_eq!(
                        d["tracksTypes"],
                        serde_json::json!({"audio": 1, "video": 1}),
                        "visitor {k}: the resident's m-lines grew"
                    );
                    None
                }
                Signal::Answered(m) => {
                    let on: BTreeMap<String, String> = m
                        .iter()
                        .filter(|(_, t)| theirs.contains(*t))
                        .map(|(mid, t)| (mid.clone(), t.clone()))
                        .collect();
                    (on.len() == theirs.len()).then_some(on)
                }
                Signal::Error(e) => panic!("{id}: {e}"),
                _ => None,
            })
            .await
            .unwrap_or_else(|| panic!("visitor {k} never carried to the resident"));
        mids_seen.extend(carried.into_keys());
        let mut keyframes = visitor
            .local(RtpCodecKind::Video)
            .unwrap()
            .keyframe_requests();
        let mut peers = vec![resident, visitor];
        sync(&mut peers).await;
        exchange(&mut peers, 50).await;
        // PLI relay on the recycled m-line reaches this visitor, not an earlier one.
        assert_pli_relayed(&peers[0], &peers[1], &mut keyframes).await;
        let visitor = peers.pop().unwrap();
        resident = peers.pop().unwrap();
        let visitor_id = visitor.id.clone();
        visitor.leave().await;
        // The resident renegotiates after the leave; that answer makes the mids inactive
        // (still naming the leaver's tracks, which the client erases by mid).
        let id = resident.id.clone();
        let mut left = false;
        let settled = resident
            .wait_for(STEP, |s| match s {
                Signal::EndpointRemoved(v) if *v == visitor_id => {
                    left = true;
                    None
                }
                Signal::Answered(_) if left => Some(()),
                Signal::Error(e) => panic!("{id}: {e}"),
                _ => None,
            })
            .await;
        assert!(
            settled.is_some(),
            "the resident did not renegotiate after visitor {k} left"
        );
    }
    assert_eq!(
        mids_seen.len(),
        2,
        "visitors were not carried on the same mids: {mids_seen:?}"
    );
    resident.leave().await;
    server.shutdown().await;
}

/// Sends one audio packet every 20 ms (Opus's pace) on `local` until aborted, at whatever
/// level the test sets.
fn talk(local: std::sync::Arc<crate::support::sfu_peer::Local>) -> net_tokio::task::JoinHandle<()> {
    net_tokio::spawn(async move {
        let mut tick = net_tokio::time::interval(Duration::from_millis(20));
        for seq in 0.. {
            tick.tick().await;
            local.send(TAG_NUMBERED, seq, 60).await;
        }
    })
}

/// Waits for `peer`'s next `vadNotification`; the other signals are dropped.
async fn next_vad(peer: &mut Peer) -> (String, String) {
    let id = peer.id.clone();
    peer.wait_for(STEP, |s| match s {
        Signal::Vad { track, status } => Some((track.clone(), status.clone())),
        Signal::Error(e) => panic!("{id}: {e}"),
        _ => None,
    })
    .await
    .unwrap_or_else(|| panic!("{id} got no vadNotification"))
}

/// Voice activity comes from the server: a publisher's audio level (RFC 6464 header
/// extension) reaches each subscriber under the subscriber's own extension id, with a fresh
/// abs-send-time, and the server turns the levels into `vadNotification` for every peer that
/// knows the track (a joiner while someone talks included), with silence after a pause and
/// after the sender stops.
#[net_tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_activity_and_audio_levels_reach_subscribers() {
    let _exclusive = crate::support::MEDIA_EXCLUSIVE.lock().await;
    let server = start_server().await;
    let audio_only = |name: &str, audio: bool| PeerOptions {
        room: "vad".into(),
        name: name.into(),
        audio,
        video: false,
    };
    let mut a = join_with(&server, audio_only("a", true)).await;
    until_subscribed(&mut a, &BTreeSet::new()).await;
    let mut b = join_with(&server, audio_only("b", false)).await;
    let voice = a.local(RtpCodecKind::Audio).unwrap().clone();
    until_subscribed(&mut b, &BTreeSet::from([voice.track_id.clone()])).await;

    // Silence flows: B gets it with the level under its own id, and no notification.
    let talker = talk(voice.clone());
    let quiet = timeout(STEP, b.media.recv()).await.unwrap().unwrap();
    assert_eq!(quiet.audio_level, Some(127), "{quiet:?}");
    assert!(quiet.abs_send_time, "{quiet:?}");

    // A talks: B hears it is speech, then the packets say how loud.
    voice.set_level(12);
    let started = Instant::now();
    assert_eq!(
        next_vad(&mut b).await,
        (voice.track_id.clone(), "speech".into())
    );
    let onset = started.elapsed();
    let mut loud = None;
    while loud.is_none() {
        let rtp = timeout(STEP, b.media.recv()).await.unwrap().unwrap();
        loud = rtp.audio_level.filter(|l| *l == 12);
    }

    // C joins while A talks: told of the track, then at once that it is speech.
    let mut c = join_with(&server, audio_only("c", false)).await;
    let order = c
        .wait_for(STEP, |s| match s {
            Signal::TracksAdded { tracks, .. } => Some(format!("tracksAdded {tracks:?}")),
            Signal::Vad { track, status } => Some(format!("vad {track} {status}")),
            _ => None,
        })
        .await;
    assert_eq!(order, Some(format!("tracksAdded [{:?}]", voice.track_id)));
    assert_eq!(
        next_vad(&mut c).await,
        (voice.track_id.clone(), "speech".into())
    );

    // A pauses: both hear silence, after the hold.
    voice.set_level(127);
    let paused = Instant::now();
    for p in [&mut b, &mut c] {
        assert_eq!(
            next_vad(p).await,
            (voice.track_id.clone(), "silence".into())
        );
    }
    let release = paused.elapsed();
    // Talking again, then the sender stops while speaking: silence all the same.
    voice.set_level(20);
    assert_eq!(next_vad(&mut b).await.1, "speech");
    talker.abort();
    let stopped = Instant::now();
    assert_eq!(next_vad(&mut b).await.1, "silence");
    let idle = stopped.elapsed();
    eprintln!("voice activity: speech {onset:?} after the voice started, silence {release:?} after it paused, {idle:?} after the sender stopped");
    assert!(
        release >= Duration::from_millis(videoroom::engine::vad::HOLD_MS),
        "silence after {release:?}: the hold did not hold"
    );
    for p in [a, b, c] {
        p.leave().await;
    }
}
