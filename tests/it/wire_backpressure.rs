//! Bounded queues end to end: a client that stops reading while its room is busy is
//! disconnected (its outbound queue fills), and the room and the other peers carry on.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use videoroom::app::Limits;
use videoroom::metrics::SlowQueue;

use crate::support::server::TestServer;

fn frame(join_ref: &str, r: &str, topic: &str, event: &str, payload: Value) -> Message {
    Message::Text(
        json!([join_ref, r, topic, event, payload])
            .to_string()
            .into(),
    )
}

fn media(r: &str, data: Value) -> Message {
    frame(
        "1",
        r,
        "room:busy",
        "mediaEvent",
        json!({ "data": data.to_string() }),
    )
}

/// The media event inside a `mediaEvent` push, if the message is one.
fn media_of(m: &Message) -> Option<Value> {
    let Message::Text(t) = m else { return None };
    let f: Value = serde_json::from_str(t).ok()?;
    (f[3] == "mediaEvent").then(|| serde_json::from_str(f[4]["data"].as_str()?).ok())?
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Joins `room:busy` and connects to the media session; returns the socket and the peer id.
async fn join(url: &str, name: &str) -> (Ws, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    ws.send(frame("1", "1", "room:busy", "phx_join", json!({})))
        .await
        .unwrap();
    ws.send(media(
        "2",
        json!({"type": "connect", "data": {"metadata": {"name": name}}}),
    ))
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("connected within 10 s")
            .expect("socket open")
            .expect("frame");
        if let Some(ev) = media_of(&m) {
            if ev["type"] == "connected" {
                let id = ev["data"]["id"].as_str().unwrap().to_string();
                return (ws, id);
            }
        }
    }
}

#[test]
fn a_slow_consumer_is_dropped_and_the_room_carries_on() {
    slow_consumer_is_dropped(Limits {
        max_peers_per_room: 3,
        outbound_frames: 64,
        socket_mailbox: 32,
        channel_mailbox: 32,
        // The flood is of metadata updates: their per-peer budget is not under test.
        peer_update_burst: 1_000_000,
        ..Limits::default()
    });
}

/// The same with a frame bound the flood never reaches: the bytes queued are what count.
#[test]
fn a_slow_consumer_is_dropped_by_the_bytes_it_lets_pile_up() {
    slow_consumer_is_dropped(Limits {
        max_peers_per_room: 3,
        outbound_frames: 1_000_000,
        outbound_bytes: Limits::min_outbound_bytes(3),
        socket_mailbox: 32,
        channel_mailbox: 32,
        peer_update_burst: 1_000_000,
        ..Limits::default()
    });
}

fn slow_consumer_is_dropped(limits: Limits) {
    let srv = TestServer::start_with(|c| c.limits = limits);
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", srv.addr());
    srv.block_on(async {
        let (mut slow, slow_id) = join(&url, "slow").await;
        // A peer that keeps reading everything must not be mistaken for a slow one.
        let (mut reader, reader_id) = join(&url, "reader").await;
        let reading = tokio::spawn(async move {
            let mut frames = 0u64;
            while let Some(Ok(_)) = reader.next().await {
                frames += 1;
            }
            frames
        });
        let (fast, _) = join(&url, "fast").await;
        let (mut tx, mut rx) = fast.split();
        // From here the slow client reads nothing while the fast one floods the room with
        // metadata updates, each of which the room pushes to the slow client.
        // Near the endpoint metadata limit (1 KiB), so each update is a sizeable frame.
        let big = "x".repeat(900);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut sent = 0u64;
        let mut got = 0u64;
        // Paced like a real client: a burst of updates, then a heartbeat whose reply shows the
        // socket has read them (an unpaced flood would trip the channel's own inbound bound).
        let removed = 'flood: loop {
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
            for _ in 0..8 {
                let update = json!({"type": "updateEndpointMetadata",
                    "data": {"metadata": {"name": "fast", "seq": sent, "pad": big}}});
                tx.send(media(&format!("u{sent}"), update))
                    .await
                    .expect("fast client can send");
                sent += 1;
            }
            let hb = format!("hb{sent}");
            tx.send(frame("", &hb, "phoenix", "heartbeat", json!({})))
                .await
                .unwrap();
            loop {
                let m = tokio::time::timeout_at(deadline, rx.next()).await;
                let Ok(Some(Ok(m))) = m else {
                    break 'flood false;
                };
                got += 1;
                if let Some(ev) = media_of(&m) {
                    assert_ne!(ev["type"], "error", "{ev}");
                    if ev["type"] == "endpointRemoved" {
                        assert_eq!(
                            ev["data"]["id"],
                            slow_id.as_str(),
                            "only the slow peer goes"
                        );
                        break 'flood true;
                    }
                }
                if let Message::Text(t) = &m {
                    let f: Value = serde_json::from_str(t).unwrap();
                    assert_ne!(f[3], "phx_error", "the fast client's channel must survive");
                    if f[1] == hb.as_str() {
                        break;
                    }
                }
            }
        };
        assert!(
            removed,
            "the slow client was never dropped ({sent} updates sent, {got} frames received)"
        );
        println!("slow client dropped after {sent} updates");
        let m = &srv.app().metrics;
        let counted = m.slow_consumers(SlowQueue::Socket) + m.slow_consumers(SlowQueue::Channel);
        assert!(counted >= 1, "the drop is counted for /metrics");

        // The fast client is untouched: its heartbeat is answered on the same socket.
        tx.send(frame("", "hb", "phoenix", "heartbeat", json!({})))
            .await
            .unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(m)) = rx.next().await {
                if let Message::Text(t) = &m {
                    let f: Value = serde_json::from_str(t).unwrap();
                    if f[1] == "hb" && f[3] == "phx_reply" {
                        return true;
                    }
                }
            }
            false
        })
        .await;
        assert_eq!(
            answered,
            Ok(true),
            "heartbeat after the slow client was dropped"
        );

        // The slow client's connection was closed by the server (after what it had buffered).
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match slow.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert_eq!(
            closed,
            Ok(true),
            "the server closes the slow client's connection"
        );
        let peers: Vec<String> = srv
            .app()
            .room_peers("busy")
            .await
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(
            peers.len(),
            2,
            "the reader and the fast peer remain: {peers:?}"
        );
        assert!(peers.contains(&reader_id));
        assert!(
            !reading.is_finished(),
            "the reading peer's connection is still open"
        );
        reading.abort();
    });
}
