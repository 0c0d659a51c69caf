//! A minimal TURN client over a real UDP socket, for probing the integrated TURN server as an
//! outsider would: it answers the 401 challenge like any client and reports each response's
//! error code. (Interoperability with real clients is what the Chromium and webrtc-rs tests
//! show; this one only needs to ask the questions they never ask.)

use std::net::SocketAddr;
use std::time::Duration;

use net_tokio::net::UdpSocket;
use serde_json::{json, Value};
use videoroom::turn::auth::long_term_key;
use videoroom::turn::stun::{attr, method, Class, Message, Writer};

const STEP: Duration = Duration::from_secs(5);

/// TURN credentials as `offerData.integratedTurnServers[0]` carries them.
#[derive(Clone, Debug)]
pub struct Creds {
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
}

/// A response: its class, error code if any, and the raw bytes.
#[derive(Debug)]
pub struct Response {
    pub class: Class,
    pub code: Option<u16>,
    pub raw: Vec<u8>,
}

impl Response {
    pub fn ok(&self) -> bool {
        self.class == Class::Success
    }
    pub fn msg(&self) -> Message<'_> {
        Message::decode(&self.raw).unwrap()
    }
}

pub struct TurnClient {
    pub sock: UdpSocket,
    creds: Creds,
    realm: String,
    nonce: String,
    txid: u32,
}

impl TurnClient {
    pub async fn new(creds: &Creds) -> TurnClient {
        TurnClient {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            creds: creds.clone(),
            realm: String::new(),
            nonce: String::new(),
            txid: 0,
        }
    }

    fn next_txid(&mut self) -> [u8; 12] {
        self.txid += 1;
        let mut id = [7u8; 12];
        id[8..].copy_from_slice(&self.txid.to_be_bytes());
        id
    }

    /// Sends raw bytes to the server.
    pub async fn send_raw(&self, data: &[u8]) {
        self.sock.send_to(data, self.creds.server).await.unwrap();
    }

    /// The next datagram from the server, if one comes within `wait`.
    pub async fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_536];
        let (n, _) = net_tokio::time::timeout(wait, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        buf.truncate(n);
        Some(buf)
    }

    /// The response to transaction `txid`, skipping anything else.
    async fn response(&self, txid: [u8; 12]) -> Response {
        loop {
            let raw = self.recv(STEP).await.expect("the TURN server answers");
            let Ok(m) = Message::decode(&raw) else {
                continue;
            };
            if m.transaction_id() != txid || !matches!(m.class, Class::Success | Class::Error) {
                continue;
            }
            let code = m
                .get(attr::ERROR_CODE)
                .map(|v| u16::from(v[2]) * 100 + u16::from(v[3]));
            return Response {
                class: m.class,
                code,
                raw,
            };
        }
    }

    /// One authenticated request: learns realm and nonce from a 401 or 438 and retries once.
    pub async fn request(&mut self, method: u16, attrs: impl Fn(&mut Writer<'_>)) -> Response {
        for _ in 0..3 {
            let txid = self.next_txid();
            let mut buf = Vec::new();
            {
                let mut w = Writer::new(&mut buf, method, Class::Request, &txid);
                attrs(&mut w);
                if !self.nonce.is_empty() {
                    let key =
                        long_term_key(&self.creds.username, &self.realm, &self.creds.password);
                    w.attr(attr::USERNAME, self.creds.username.as_bytes())
                        .attr(attr::REALM, self.realm.as_bytes())
                        .attr(attr::NONCE, self.nonce.as_bytes())
                        .integrity(&key)
                        .fingerprint();
                }
            }
            self.send_raw(&buf).await;
            let r = self.response(txid).await;
            let challenged = matches!(r.code, Some(401 | 438));
            let fresh_nonce = r.msg().text(attr::NONCE).map(str::to_owned);
            if challenged && fresh_nonce.as_deref().is_some_and(|n| n != self.nonce) {
                self.realm = r.msg().text(attr::REALM).unwrap_or_default().to_owned();
                self.nonce = fresh_nonce.unwrap();
                continue;
            }
            return r;
        }
        panic!("the TURN server kept challenging");
    }

    pub async fn allocate(&mut self) -> Response {
        self.request(method::ALLOCATE, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        })
        .await
    }

    pub async fn permit(&mut self, peer: SocketAddr) -> Response {
        self.request(method::CREATE_PERMISSION, |w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .await
    }

    pub async fn bind_channel(&mut self, ch: u16, peer: SocketAddr) -> Response {
        self.request(method::CHANNEL_BIND, |w| {
            w.attr(attr::CHANNEL_NUMBER, &[(ch >> 8) as u8, ch as u8, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .await
    }

    /// A Send indication (never answered).
    pub async fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let txid = self.next_txid();
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::SEND, Class::Indication, &txid)
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, data);
        self.send_raw(&buf).await;
    }

    /// A Binding round trip. The server handles its socket's datagrams in order, so once this
    /// returns every datagram sent before it has been dealt with.
    pub async fn barrier(&mut self) {
        let txid = self.next_txid();
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::BINDING, Class::Request, &txid);
        self.send_raw(&buf).await;
        assert!(self.response(txid).await.ok());
    }
}

/// Joins `room` over the Phoenix socket, connects, asks for a negotiation and returns the TURN
/// credentials of its `offerData`, with the socket (closing it makes the peer leave).
pub async fn credentials_of_a_new_peer(
    server: SocketAddr,
    room: &str,
) -> (
    Creds,
    tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<net_tokio::net::TcpStream>,
    >,
) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let url = format!("ws://{server}/socket/websocket?vsn=2.0.0");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let topic = format!("room:{room}");
    let send = |refn: u32, event: &str, payload: Value| {
        Ws::text(json!(["1", refn.to_string(), topic, event, payload]).to_string())
    };
    let media = |refn: u32, ev: Value| send(refn, "mediaEvent", json!({"data": ev.to_string()}));
    ws.send(send(1, "phx_join", json!({}))).await.unwrap();
    ws.send(media(
        2,
        json!({"type": "connect", "data": {"metadata": {}}}),
    ))
    .await
    .unwrap();
    ws.send(media(
        3,
        json!({"type": "custom", "data": {"type": "renegotiateTracks", "data": null}}),
    ))
    .await
    .unwrap();
    loop {
        let msg = net_tokio::time::timeout(STEP, ws.next())
            .await
            .expect("offerData in time")
            .unwrap()
            .unwrap();
        let Ws::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v[3] != "mediaEvent" {
            continue;
        }
        let ev: Value = serde_json::from_str(v[4]["data"].as_str().unwrap()).unwrap();
        if ev["data"]["type"] == "offerData" {
            let t = &ev["data"]["data"]["integratedTurnServers"][0];
            let server = SocketAddr::new(
                t["serverAddr"].as_str().unwrap().parse().unwrap(),
                t["serverPort"].as_u64().unwrap() as u16,
            );
            let creds = Creds {
                server,
                username: t["username"].as_str().unwrap().to_owned(),
                password: t["password"].as_str().unwrap().to_owned(),
            };
            return (creds, ws);
        }
    }
}
