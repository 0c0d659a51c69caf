//! Hostile traffic for the soak (`sfu_bench soak --hostile`): what an outsider throws at the
//! server while real peers come and go. Every kind the adversarial pass used: malformed and
//! oversized Phoenix frames, bad media events (SDP with control bytes, junk candidates), room
//! squatters, TURN garbage, unauthenticated and forbidden TURN requests, and slow or silent HTTP
//! connections. Each worker loops until `stop`, bounded in rate, and counts what it sent.
//!
//! None of it may crash the server, leak a descriptor or a process, or stop the real peers'
//! media: the soak's verdict checks that.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use net_tokio::io::AsyncWriteExt;
use net_tokio::net::{TcpStream, UdpSocket};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

// Shared with the TURN policy tests; the soak uses part of it.
#[allow(dead_code)]
#[path = "../../tests/it/support/turn_client.rs"]
mod turn_client;

/// What the hostile workers did, for the report.
#[derive(Default)]
pub struct Counts {
    pub sockets: AtomicU64,
    pub frames: AtomicU64,
    pub turn_datagrams: AtomicU64,
    pub slow_connections: AtomicU64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hostile: {} sockets, {} bad frames, {} TURN datagrams, {} slow HTTP connections",
            self.sockets.load(Ordering::Relaxed),
            self.frames.load(Ordering::Relaxed),
            self.turn_datagrams.load(Ordering::Relaxed),
            self.slow_connections.load(Ordering::Relaxed),
        )
    }
}

/// The running workers.
pub struct Hostile {
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    tasks: Vec<net_tokio::task::JoinHandle<()>>,
}

impl Hostile {
    /// Stops every worker and waits until each has let go of its sockets (bounded).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            if net_tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .is_err()
            {
                eprintln!("a hostile worker did not stop within 30 s");
            }
        }
    }
}

/// Starts every worker on the current runtime.
pub fn spawn_all(server: SocketAddr, turn: SocketAddr) -> Hostile {
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let c = || Arc::clone(&counts);
    let s = || Arc::clone(&stop);
    let tasks = vec![
        net_tokio::spawn(bad_frames(server, s(), c())),
        net_tokio::spawn(bad_media(server, s(), c())),
        net_tokio::spawn(squatters(server, s(), c())),
        net_tokio::spawn(turn_noise(server, turn, s(), c())),
        net_tokio::spawn(slow_http(server, s(), c())),
    ];
    Hostile {
        counts,
        stop,
        tasks,
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn open(server: SocketAddr) -> Option<Ws> {
    let url = format!("ws://{server}/socket/websocket?vsn=2.0.0");
    tokio_tungstenite::connect_async(url)
        .await
        .ok()
        .map(|(ws, _)| ws)
}

fn frame(refn: u64, topic: &str, event: &str, payload: Value) -> Message {
    Message::text(json!(["1", refn.to_string(), topic, event, payload]).to_string())
}

/// Reads and discards until the server closes or goes quiet for a moment.
async fn drain(ws: &mut Ws) {
    while let Ok(Some(Ok(_))) =
        net_tokio::time::timeout(Duration::from_millis(200), ws.next()).await
    {}
}

const PAUSE: Duration = Duration::from_millis(50);

/// Frames that are not Phoenix V2, or are but say nothing sensible. Each socket sends a few and
/// is closed by the server (1011 for garbage) or by us.
async fn bad_frames(server: SocketAddr, stop: Arc<AtomicBool>, n: Arc<Counts>) {
    let deep = "[".repeat(10_000);
    let garbage: Vec<Message> = vec![
        Message::text("not json"),
        Message::text("[]"),
        Message::text("[null,null,null,null,null]"),
        Message::text(deep),
        Message::text(r#"["1","1","room:\u202egnitae\u202c","phx_join",{}]"#),
        Message::text(format!(
            r#"["1","1","room:{}","phx_join",{{}}]"#,
            "x".repeat(300)
        )),
        Message::text(r#"["1","1","room:zero\u200bwidth","phx_join",{}]"#),
        Message::text(r#"["1","1","other:topic","phx_join",{}]"#),
        Message::text(r#"["1","2","room:soak-x","mediaEvent",{"data":7}]"#),
        Message::text("\u{1b}[31m\r\n\0"),
        Message::binary(vec![0xff; 64]),
        Message::text(r#"["1","1e999","room:a","phx_join",{}]"#),
    ];
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if let Some(mut ws) = open(server).await {
            n.sockets.fetch_add(1, Ordering::Relaxed);
            for m in garbage.iter().cycle().skip(i % garbage.len()).take(3) {
                if ws.send(m.clone()).await.is_err() {
                    break;
                }
                n.frames.fetch_add(1, Ordering::Relaxed);
            }
            // 101 joins on one socket: the channel limit refuses the last ones.
            if i.is_multiple_of(10) {
                for k in 0..101u64 {
                    let topic = format!("room:soak-many-{}", k % 3);
                    if ws
                        .send(frame(k + 10, &topic, "phx_join", json!({})))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
            drain(&mut ws).await;
            let _ = ws.close(None).await;
        }
        i += 1;
        net_tokio::time::sleep(PAUSE).await;
    }
}

/// Joins, connects, then sends media events a browser never would: SDP full of control bytes
/// and escape sequences (log injection), junk candidates, unknown types, huge payloads.
async fn bad_media(server: SocketAddr, stop: Arc<AtomicBool>, n: Arc<Counts>) {
    let topic = "room:soak-bad";
    let nasty_sdp = format!(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n\u{1b}[2J\u{1b}[31mFAKE LOG LINE\r\n\0\u{202e}{}",
        "a=x\r\n".repeat(2000)
    );
    let events = [
        json!({"type": "custom", "data": {"type": "sdpOffer", "data": {"sdpOffer": {"type": "offer", "sdp": nasty_sdp}, "trackIdToTrackMetadata": {}, "midToTrackId": {}}}}),
        json!({"type": "custom", "data": {"type": "candidate", "data": {"candidate": "candidate:\u{1b}[0m 1 UDP x y z", "sdpMLineIndex": -1}}}),
        json!({"type": "custom", "data": {"type": "candidate", "data": {"candidate": "candidate:1 1 UDP 2130706431 10.0.0.1 9 typ host", "sdpMLineIndex": 0}}}),
        json!({"type": "custom", "data": {"type": "renegotiateTracks", "data": null}}),
        json!({"type": "updateTrackMetadata", "data": {"trackId": "\u{0}", "trackMetadata": "x".repeat(10_000)}}),
        json!({"type": "nonsense"}),
        json!("not even an object"),
    ];
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Some(mut ws) = open(server).await {
            n.sockets.fetch_add(1, Ordering::Relaxed);
            let _ = ws.send(frame(1, topic, "phx_join", json!({}))).await;
            let connect = json!({"type": "connect", "data": {"metadata": {"displayName": "\u{1b}[31mmallory\r\n"}}});
            let _ = ws
                .send(frame(
                    2,
                    topic,
                    "mediaEvent",
                    json!({"data": connect.to_string()}),
                ))
                .await;
            for (k, ev) in events.iter().enumerate() {
                let data = json!({"data": ev.to_string()});
                if ws
                    .send(frame(3 + k as u64, topic, "mediaEvent", data))
                    .await
                    .is_err()
                {
                    break;
                }
                n.frames.fetch_add(1, Ordering::Relaxed);
            }
            // Invalid JSON inside the data string.
            let _ = ws
                .send(frame(
                    20,
                    topic,
                    "mediaEvent",
                    json!({"data": "{\"type\":"}),
                ))
                .await;
            drain(&mut ws).await;
            let _ = ws.close(None).await;
        }
        i += 1;
        net_tokio::time::sleep(PAUSE * if i.is_multiple_of(2) { 1 } else { 3 }).await;
    }
}

/// Joins that never `connect`: the room drops them after its grace, with a reason.
async fn squatters(server: SocketAddr, stop: Arc<AtomicBool>, n: Arc<Counts>) {
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut held = Vec::new();
        for _ in 0..4 {
            if let Some(mut ws) = open(server).await {
                n.sockets.fetch_add(1, Ordering::Relaxed);
                let topic = format!("room:soak-squat-{}", k % 2);
                let _ = ws.send(frame(1, &topic, "phx_join", json!({}))).await;
                held.push(ws);
                k += 1;
            }
        }
        // Hold them past a short while, answering nothing, then drop them on our side.
        for _ in 0..20 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            net_tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for mut ws in held {
            let _ = ws.close(None).await;
        }
    }
}

/// Junk datagrams, unauthenticated Allocates from many ports, and a joined peer's stolen
/// credentials used for forbidden permissions and a quota flood.
async fn turn_noise(server: SocketAddr, turn: SocketAddr, stop: Arc<AtomicBool>, n: Arc<Counts>) {
    use videoroom::turn::stun::{attr, method, Class, Writer};
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0; 19],
        vec![0x40, 0x00, 0xff, 0xff, 1, 2, 3],
        vec![0xff; 1200],
        {
            let mut b = Vec::new();
            Writer::new(&mut b, method::ALLOCATE, Class::Request, &[1; 12])
                .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b
        },
        {
            let mut b = Vec::new();
            Writer::new(&mut b, method::SEND, Class::Indication, &[2; 12])
                .xor_address(attr::XOR_PEER_ADDRESS, "127.0.0.1:22".parse().unwrap())
                .attr(attr::DATA, b"probe");
            b
        },
    ];
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await {
            for d in &junk {
                let _ = sock.send_to(d, turn).await;
                n.turn_datagrams.fetch_add(1, Ordering::Relaxed);
            }
        }
        if round.is_multiple_of(20) {
            stolen_credentials(server, &n).await;
        }
        round += 1;
        net_tokio::time::sleep(PAUSE).await;
    }
}

async fn stolen_credentials(server: SocketAddr, n: &Counts) {
    let room = "soak-turn";
    let Ok(Ok((creds, ws))) = net_tokio::time::timeout(
        Duration::from_secs(5),
        net_tokio::spawn(async move { turn_client::credentials_of_a_new_peer(server, room).await }),
    )
    .await
    else {
        return;
    };
    n.sockets.fetch_add(1, Ordering::Relaxed);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = turn_client::TurnClient::new(&creds).await;
        let _ = net_tokio::time::timeout(Duration::from_secs(2), c.allocate()).await;
        for target in ["169.254.169.254:80", "10.0.0.1:53", "127.0.0.1:22"] {
            let _ =
                net_tokio::time::timeout(Duration::from_secs(2), c.permit(target.parse().unwrap()))
                    .await;
            n.turn_datagrams.fetch_add(1, Ordering::Relaxed);
        }
        clients.push(c);
    }
    // The peer leaves with its allocations open: the server must close them.
    drop(ws);
    drop(clients);
}

/// Connections that send their request head a byte at a time, or nothing at all.
async fn slow_http(server: SocketAddr, stop: Arc<AtomicBool>, n: Arc<Counts>) {
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";
    while !stop.load(Ordering::Relaxed) {
        let mut conns = Vec::new();
        for _ in 0..8 {
            if let Ok(c) = TcpStream::connect(server).await {
                n.slow_connections.fetch_add(1, Ordering::Relaxed);
                conns.push(c);
            }
        }
        for i in 0..head.len().min(20) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for (k, c) in conns.iter_mut().enumerate() {
                // Half drip, half stay silent.
                if k % 2 == 0 {
                    let _ = c.write_all(&head[i..i + 1]).await;
                }
            }
            net_tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
