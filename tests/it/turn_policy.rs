//! The integrated TURN server attacked as an outsider with a joined peer's credentials would:
//! it must be a door into the SFU only, hold a bounded number of allocations per credential,
//! and forget a credential when its peer leaves. The SFU itself must send to no one but the
//! TURN relays, whatever candidates a client hands it.
#![cfg(feature = "media-webrtc")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::SinkExt;
use net_tokio::net::UdpSocket;
use serde_json::json;
use videoroom::app::Limits;
use videoroom::server::Server;
use videoroom::turn::stun::{attr, channel_data, write_channel_data};

use crate::support::sfu_peer::start_media_server;
use crate::support::turn_client::{credentials_of_a_new_peer, TurnClient};

const STEP: Duration = Duration::from_secs(5);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Waits until `cond` holds, failing after [`STEP`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        net_tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn allocations(server: &Server) -> usize {
    server.turn_allocations().await
}

#[net_tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reaches_nothing_but_the_sfu() {
    let server = start_media_server(Limits::default()).await;
    let (creds, _ws) = credentials_of_a_new_peer(server.local_addr(), "policy").await;
    let mut c = TurnClient::new(&creds).await;
    let alloc = c.allocate().await;
    assert!(alloc.ok(), "{alloc:?}");
    let relayed = alloc.msg().xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();

    // A UDP service on the server's host, and the TURN port itself.
    let victim = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let victim_addr = victim.local_addr().unwrap();
    let turn_addr = server.turn_addr().unwrap();

    for forbidden in [
        "169.254.169.254:80",
        "10.0.0.1:53",
        "192.168.1.1:53",
        "0.0.0.0:9",
        "255.255.255.255:9",
        "[::1]:9",
    ] {
        let r = c.permit(addr(forbidden)).await;
        assert_eq!(r.code, Some(403), "CreatePermission {forbidden}: {r:?}");
    }
    // Loopback is the SFU's address, so the permission is granted (permissions are per IP),
    // but neither a channel nor a Send indication reaches any other loopback port.
    assert!(c.permit(victim_addr).await.ok());
    for target in [victim_addr, turn_addr, relayed] {
        let r = c.bind_channel(0x4000, target).await;
        assert_eq!(r.code, Some(403), "ChannelBind {target}: {r:?}");
        c.send_indication(target, b"probe").await;
    }
    c.barrier().await;
    let mut buf = [0u8; 64];
    assert!(
        victim.try_recv_from(&mut buf).is_err(),
        "a probe reached a loopback service through the relay"
    );

    // The other way: a loopback service writing to the relay reaches no client.
    let dropped = server.turn_stats().unwrap().dropped;
    victim.send_to(b"reply", relayed).await.unwrap();
    until("the relay handled the outsider's datagram", || {
        server.turn_stats().unwrap().dropped > dropped
    })
    .await;
    assert_eq!(c.recv(Duration::ZERO).await, None);
    let stats = server.turn_stats().unwrap();
    assert!(stats.forbidden >= 9, "{stats:?}");
    assert_eq!(stats.relayed_out, 0, "{stats:?}");
    assert_eq!(stats.relayed_in, 0, "{stats:?}");
    // What the operator sees.
    let (_, body) = crate::support::http::get_body_async(server.local_addr(), "/metrics").await;
    let m = crate::support::http::parse_metrics(&body);
    let forbidden = m["videoroom_turn_refused_total{reason=\"forbidden\"}"];
    assert_eq!(forbidden, stats.forbidden as f64, "{body}");
    assert_eq!(m["videoroom_turn_allocations"], 1.0, "{body}");
}

#[net_tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_has_a_quota_and_dies_with_its_peer() {
    let server = start_media_server(Limits::default()).await;
    // The sans-IO plane's worker sockets are the server's for its whole life.
    let idle_endpoints = server.fabric_stats().unwrap().endpoints;
    let (creds, mut ws) = credentials_of_a_new_peer(server.local_addr(), "quota").await;
    // One credential, many client sockets (each allocation is a server socket). All are in
    // use (just made), so the quota holds rather than replacing an idle one.
    let quota = videoroom::turn::TurnLimits::default().max_allocations_per_peer;
    let mut clients = Vec::new();
    for i in 0..quota {
        let mut c = TurnClient::new(&creds).await;
        let r = c.allocate().await;
        assert!(r.ok(), "allocation {i}: {r:?}");
        clients.push(c);
    }
    let mut one_more = TurnClient::new(&creds).await;
    let r = one_more.allocate().await;
    assert_eq!(r.code, Some(486), "{r:?}");
    assert_eq!(allocations(&server).await, quota);

    // The peer leaves: its allocations close at once and the credential stops working.
    ws.send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await
        .unwrap();
    drop(ws);
    let deadline = Instant::now() + STEP;
    while allocations(&server).await != 0 {
        assert!(Instant::now() < deadline, "allocations outlived their peer");
        net_tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fresh = server.turn_stats().unwrap();
    assert_eq!(fresh.live_peers, 0, "{fresh:?}");
    let r = one_more.allocate().await;
    assert_eq!(
        r.code,
        Some(401),
        "a dead peer's credential made an allocation: {r:?}"
    );
    let r = clients[0]
        .request(videoroom::turn::stun::method::REFRESH, |w| {
            w.u32(attr::LIFETIME, 600);
        })
        .await;
    assert_eq!(r.code, Some(401), "{r:?}");
    // Nothing leaked on the relay side either.
    let f = server.fabric_stats().unwrap();
    assert_eq!(f.endpoints, idle_endpoints, "{f:?}");
}

#[net_tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_cost_the_server_nothing() {
    let server = start_media_server(Limits::default()).await;
    let turn_addr = server.turn_addr().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = Vec::new();
    let mut reply = vec![0u8; 2048];
    for i in 0..2_000u32 {
        buf.clear();
        let mut txid = [0u8; 12];
        txid[8..].copy_from_slice(&i.to_be_bytes());
        videoroom::turn::stun::Writer::new(
            &mut buf,
            videoroom::turn::stun::method::ALLOCATE,
            videoroom::turn::stun::Class::Request,
            &txid,
        )
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        sock.send_to(&buf, turn_addr).await.unwrap();
        let (n, _) = net_tokio::time::timeout(STEP, sock.recv_from(&mut reply))
            .await
            .unwrap()
            .unwrap();
        let m = videoroom::turn::stun::Message::decode(&reply[..n]).unwrap();
        assert_eq!(m.get(attr::ERROR_CODE).map(|v| v[3]), Some(1), "a 401");
    }
    let s = server.turn_stats().unwrap();
    assert_eq!((s.allocations, s.live_peers), (0, 0), "{s:?}");
    assert_eq!(s.auth_refused, 2_000);
    // ChannelData from a stranger is dropped, not answered.
    let mut cd = Vec::new();
    write_channel_data(&mut cd, 0x4000, b"x");
    sock.send_to(&cd, turn_addr).await.unwrap();
    assert!(channel_data(&cd).is_some());
}

/// A client hands the SFU a host candidate pointing at a service on the server's host: the
/// SFU's ICE agent tries it, and the fabric refuses every datagram.
#[net_tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sfu_sends_nothing_to_a_clients_host_candidates() {
    let _exclusive = crate::support::MEDIA_EXCLUSIVE.lock().await;
    use crate::support::sfu_peer::{Peer, PeerOptions, Signal};
    let server = start_media_server(Limits::default()).await;
    let victim = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = victim.local_addr().unwrap().port();
    let mut peer = Peer::join(
        server.local_addr(),
        PeerOptions {
            room: "candidates".into(),
            name: "mallory".into(),
            audio: true,
            video: false,
        },
    )
    .await
    .unwrap();
    // The SFU's connection exists once it has answered.
    let answered = peer
        .wait_for(STEP, |s| matches!(s, Signal::Answered(_)).then_some(()))
        .await;
    assert!(answered.is_some(), "no answer");
    peer.send_media_event(json!({
        "type": "custom",
        "data": {"type": "candidate", "data": {
            "candidate": format!("candidate:1 1 UDP 2130706431 127.0.0.1 {port} typ host"),
            "sdpMLineIndex": 0, "sdpMid": "0", "usernameFragment": null
        }}
    }));
    let refused = server.fabric_stats().unwrap().refused;
    until("the SFU tried the candidate and was refused", || {
        server.fabric_stats().unwrap().refused > refused
    })
    .await;
    let mut buf = [0u8; 256];
    assert!(
        victim.try_recv_from(&mut buf).is_err(),
        "the SFU reached a host candidate"
    );
    peer.leave().await;
}
