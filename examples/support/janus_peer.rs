//! Synthetic webrtc-rs peers for Janus's VideoRoom plugin, driven over Janus's HTTP API: a
//! minimal HTTP/1.1 client, a Janus session with its long-poll, plugin handles, and the two
//! connections a peer holds (one publisher handle sending audio + video, one multistream
//! subscriber handle receiving every other feed of the room).
//!
//! The RTP payload is the one the SFU benchmark's peers send (`tests/it/support/sfu_peer.rs`):
//! `[tag u8][publisher ssrc u32][sequence u32][send time ns u64]`, big-endian, padded, with the
//! send time on a process-wide monotonic clock ([`now_ns`]), optionally after a fixed prefix
//! (room for a VP8 payload descriptor should Janus ever need one); the receiver skips it.
//!
//! Signalling is non-trickle on both sides: the client waits for its ICE gathering to complete
//! and sends `"trickle": false`; Janus (half-trickle) puts its candidates in its own SDP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use net_tokio::io::{AsyncReadExt, AsyncWriteExt};
use net_tokio::net::TcpStream;
use net_tokio::sync::{mpsc, watch};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde_json::{json, Value};
use videoroom::engine::webrtc::{codec, interceptors, media_engine};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};
use webrtc::runtime::TokioRuntime;

// The Janus peers only send numbered packets (no probes).
#[path = "../../tests/it/support/bench_header.rs"]
#[allow(dead_code)]
mod bench_header;
pub use bench_header::{now_ns, HEADER, TAG_NUMBERED};

/// Every signalling step (an HTTP exchange, a plugin's asynchronous answer, ICE gathering, the
/// connection coming up) must finish within this, so a stuck Janus fails the run clearly.
const STEP: Duration = Duration::from_secs(10);
/// Janus holds a long-poll for up to 30 s when it has no event.
const LONG_POLL: Duration = Duration::from_secs(40);

/// One received RTP packet's benchmark header.
#[derive(Debug, Clone, Copy)]
pub struct Rtp {
    pub tag: u8,
    pub publisher_ssrc: u32,
    pub seq: u32,
    pub sent_ns: u64,
    pub recv_ns: u64,
}

impl Rtp {
    fn parse(payload: &[u8], recv_ns: u64) -> Option<Rtp> {
        let (tag, publisher_ssrc, seq, sent_ns) = bench_header::read(payload)?;
        Some(Rtp {
            tag,
            publisher_ssrc,
            seq,
            sent_ns,
            recv_ns,
        })
    }
}

/// One HTTP/1.1 exchange with `Connection: close`, so the response is whatever arrives before
/// the server closes (Janus's libmicrohttpd sends its JSON chunked).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{method} {path}: malformed response {text:?}"))?;
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(format!(
            "{method} {path}: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| format!("{method} {path}: bad chunked body {body:?}"))?
    } else {
        body.to_owned()
    };
    serde_json::from_str(&body).map_err(|e| format!("{method} {path}: {e}: {body:?}"))
}

/// A chunked transfer-encoded body's content (`size CRLF data CRLF`..., then a 0-size chunk).
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// A Janus API request that must answer within [`STEP`].
async fn call(addr: SocketAddr, path: &str, body: &Value) -> Result<Value, String> {
    let r = net_tokio::time::timeout(STEP, http(addr, "POST", path, Some(body)))
        .await
        .map_err(|_| format!("POST {path}: no answer within {STEP:?}"))??;
    if r["janus"] == "error" {
        return Err(format!("POST {path}: {}", r["error"]));
    }
    Ok(r)
}

fn transaction() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// `GET /janus/info` answers: Janus's HTTP transport is up.
pub async fn info(addr: SocketAddr) -> Result<Value, String> {
    net_tokio::time::timeout(
        Duration::from_secs(1),
        http(addr, "GET", "/janus/info", None),
    )
    .await
    .map_err(|_| "no answer".to_owned())?
}

type Routes = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>>;

/// A Janus session (what one browser tab holds) and its long-poll, which hands each event to
/// the handle it names as `sender`.
pub struct Session {
    addr: SocketAddr,
    pub id: u64,
    routes: Routes,
    poller: net_tokio::task::JoinHandle<()>,
}

impl Session {
    pub async fn create(addr: SocketAddr) -> Result<Session, String> {
        let r = call(
            addr,
            "/janus",
            &json!({"janus": "create", "transaction": transaction()}),
        )
        .await?;
        let id = r["data"]["id"]
            .as_u64()
            .ok_or_else(|| format!("create: {r}"))?;
        let routes: Routes = Arc::default();
        let poller = net_tokio::spawn(poll(addr, id, Arc::clone(&routes)));
        Ok(Session {
            addr,
            id,
            routes,
            poller,
        })
    }

    /// A new handle on the VideoRoom plugin.
    pub async fn attach(&self) -> Result<Handle, String> {
        let body = json!({"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": transaction()});
        let r = call(self.addr, &format!("/janus/{}", self.id), &body).await?;
        let id = r["data"]["id"]
            .as_u64()
            .ok_or_else(|| format!("attach: {r}"))?;
        let (tx, events) = mpsc::unbounded_channel();
        self.routes.lock().expect("routes").insert(id, tx);
        Ok(Handle {
            addr: self.addr,
            path: format!("/janus/{}/{id}", self.id),
            events,
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

async fn poll(addr: SocketAddr, session: u64, routes: Routes) {
    let path = format!("/janus/{session}?maxev=10");
    loop {
        let events = match net_tokio::time::timeout(LONG_POLL, http(addr, "GET", &path, None)).await
        {
            Ok(Ok(Value::Array(a))) => a,
            Ok(Ok(v)) => vec![v],
            Ok(Err(_)) | Err(_) => {
                net_tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for ev in events {
            if let Some(sender) = ev["sender"].as_u64() {
                if let Some(tx) = routes.lock().expect("routes").get(&sender) {
                    let _ = tx.send(ev);
                }
            }
        }
    }
}

/// A VideoRoom plugin handle and the events Janus sent about it.
pub struct Handle {
    addr: SocketAddr,
    path: String,
    events: mpsc::UnboundedReceiver<Value>,
}

impl Handle {
    /// Waits for Janus's `kind` event about this handle (e.g. `webrtcup`), dropping others.
    async fn wait_for(&mut self, kind: &str) -> Result<(), String> {
        let deadline = net_tokio::time::Instant::now() + STEP;
        loop {
            let ev = net_tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| format!("no {kind} event from Janus within {STEP:?}"))?
                .ok_or("session closed")?;
            if ev["janus"] == kind {
                return Ok(());
            }
        }
    }

    /// Sends a plugin message (with a JSEP if given) and returns the plugin's answer and its
    /// JSEP: at once for synchronous requests, else the event carrying the same transaction.
    pub async fn request(
        &mut self,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<(Value, Option<Value>), String> {
        let tx = transaction();
        let mut msg = json!({"janus": "message", "transaction": tx, "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let what = format!("{}", msg["body"]["request"]);
        let r = call(self.addr, &self.path, &msg).await?;
        let ev = match r["janus"].as_str() {
            Some("success") => r,
            Some("ack") => loop {
                let ev = net_tokio::time::timeout(STEP, self.events.recv())
                    .await
                    .map_err(|_| format!("{what}: no event within {STEP:?}"))?
                    .ok_or("session closed")?;
                if ev["transaction"] == tx && ev["janus"] == "event" {
                    break ev;
                }
            },
            _ => return Err(format!("{what}: unexpected answer {r}")),
        };
        let data = ev["plugindata"]["data"].clone();
        if !data["error"].is_null() {
            return Err(format!("{what}: {}", data["error"]));
        }
        Ok((data, ev.get("jsep").cloned()))
    }
}

/// A published track.
pub struct Local {
    pub kind: RtpCodecKind,
    pub ssrc: u32,
    track: Arc<TrackLocalStaticRTP>,
    rtp_seq: AtomicU16,
    /// The payload type Janus's answer kept for this m-line.
    pt: AtomicU8,
    prefix: Vec<u8>,
}

impl Local {
    /// Sends one packet: the prefix, then the benchmark header, padded to `size` payload bytes.
    pub async fn send(&self, tag: u8, seq: u32, size: usize) -> bool {
        let mut payload = Vec::with_capacity(size.max(self.prefix.len() + HEADER));
        payload.extend_from_slice(&self.prefix);
        bench_header::write(&mut payload, tag, self.ssrc, seq, size);
        let rtp_seq = self.rtp_seq.fetch_add(1, Ordering::Relaxed);
        let clock = if self.kind == RtpCodecKind::Audio {
            960
        } else {
            3000
        };
        let pkt = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: self.pt.load(Ordering::Relaxed),
                sequence_number: rtp_seq,
                timestamp: u32::from(rtp_seq).wrapping_mul(clock),
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: payload.into(),
        };
        // The same packets as the SFU benchmark's peers: audio carries a (silent) audio level.
        if self.kind == RtpCodecKind::Audio {
            let level = AudioLevelExtension {
                level: 127,
                voice: false,
            };
            self.track
                .write_rtp_with_extensions(pkt, &[HeaderExtension::AudioLevel(level)])
                .await
                .is_ok()
        } else {
            self.track.write_rtp(pkt).await.is_ok()
        }
    }
}

struct Handler {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    /// Received media, for a subscriber's connection.
    media: Option<(mpsc::UnboundedSender<Rtp>, usize)>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some((tx, skip)) = self.media.clone() else {
            return;
        };
        net_tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                match ev {
                    TrackRemoteEvent::OnRtpPacket(p) => {
                        let Some(body) = p.payload.get(skip..) else {
                            continue;
                        };
                        if let Some(rtp) = Rtp::parse(body, now_ns()) {
                            if tx.send(rtp).is_err() {
                                break;
                            }
                        }
                    }
                    TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError => break,
                    _ => {}
                }
            }
        });
    }
}

/// A connection with a host candidate on `ip` only (Janus does no TURN and gathers on the
/// veth), the server's codecs and interceptor chain, and watches on its gathering and state.
struct Conn {
    pc: Arc<dyn PeerConnection>,
    gathered: watch::Receiver<bool>,
    state: watch::Receiver<RTCPeerConnectionState>,
}

impl Conn {
    async fn new(
        ip: std::net::IpAddr,
        media: Option<(mpsc::UnboundedSender<Rtp>, usize)>,
    ) -> Result<Conn, String> {
        let mut me = media_engine().map_err(|e| e.to_string())?;
        let registry = interceptors(&mut me).map_err(|e| e.to_string())?;
        let (gtx, gathered) = watch::channel(false);
        let (stx, state) = watch::channel(RTCPeerConnectionState::New);
        let handler = Arc::new(Handler {
            gathered: gtx,
            state: stx,
            media,
        });
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(me)
            .with_interceptor_registry(registry)
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                    .build(),
            )
            .with_handler(handler)
            .with_runtime(Arc::new(TokioRuntime))
            .with_udp_addrs(vec![SocketAddr::new(ip, 0)])
            .build()
            .await
            .map_err(|e| format!("pc: {e}"))?;
        Ok(Conn {
            pc: Arc::new(pc),
            gathered,
            state,
        })
    }

    /// The local description once every candidate is in it.
    async fn gathered_sdp(&mut self) -> Result<String, String> {
        net_tokio::time::timeout(STEP, self.gathered.wait_for(|g| *g))
            .await
            .map_err(|_| "ICE gathering did not complete".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(self
            .pc
            .local_description()
            .await
            .ok_or("no local description")?
            .sdp)
    }

    async fn connected(&mut self) -> Result<(), String> {
        let s = net_tokio::time::timeout(
            STEP,
            self.state.wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Connected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            }),
        )
        .await
        .map_err(|_| "connection to Janus not up (ICE/DTLS)".to_owned())?
        .map_err(|e| e.to_string())?;
        match *s {
            RTCPeerConnectionState::Connected => Ok(()),
            other => Err(format!("connection to Janus {other:?}")),
        }
    }
}

fn jsep_sdp(jsep: Option<Value>, want: &str) -> Result<String, String> {
    let j = jsep.ok_or_else(|| format!("no JSEP {want} from Janus"))?;
    if j["type"] != want {
        return Err(format!("expected a JSEP {want}, got {}", j["type"]));
    }
    j["sdp"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "JSEP without sdp".into())
}

/// The first payload type of each m-section of `kind` in an SDP.
fn payload_type(sdp: &str, kind: RtpCodecKind) -> Option<u8> {
    let want = if kind == RtpCodecKind::Audio {
        "m=audio "
    } else {
        "m=video "
    };
    let m = sdp.lines().find(|l| l.starts_with(want))?;
    m.split_whitespace().nth(3)?.parse().ok()
}

/// A peer's publisher handle and connection.
pub struct Publisher {
    /// Janus's id for this publisher (what subscribers name as `feed`).
    pub feed: u64,
    pub locals: Vec<Arc<Local>>,
    conn: Conn,
    _handle: Handle,
}

impl Publisher {
    /// Joins `room` as a publisher and publishes audio + video (offer from the client).
    pub async fn join(
        session: &Session,
        room: u64,
        name: &str,
        ip: std::net::IpAddr,
        prefix: &[u8],
    ) -> Result<Publisher, String> {
        let mut handle = session.attach().await?;
        let (joined, _) = handle
            .request(
                json!({"request": "join", "ptype": "publisher", "room": room, "display": name}),
                None,
            )
            .await?;
        let feed = joined["id"]
            .as_u64()
            .ok_or_else(|| format!("joined without id: {joined}"))?;
        let mut conn = Conn::new(ip, None).await?;
        let mut locals = Vec::new();
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            let label = if kind == RtpCodecKind::Audio {
                "audio"
            } else {
                "video"
            };
            let track_id = format!("{name}-{label}");
            let ssrc = rand::random::<u32>() | 1;
            let mut c = codec(kind).rtp_codec;
            c.rtcp_feedback.clear();
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                name.to_owned(),
                track_id.clone(),
                track_id,
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: c,
                    ..Default::default()
                }],
            )));
            conn.pc
                .add_transceiver_from_track(
                    Arc::clone(&track) as Arc<dyn TrackLocal>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        streams: vec![name.to_owned()],
                        send_encodings: Vec::new(),
                    }),
                )
                .await
                .map_err(|e| format!("add track: {e}"))?;
            locals.push(Arc::new(Local {
                kind,
                ssrc,
                track,
                rtp_seq: AtomicU16::new(rand::random()),
                pt: AtomicU8::new(0),
                prefix: prefix.to_vec(),
            }));
        }
        let offer = conn
            .pc
            .create_offer(None)
            .await
            .map_err(|e| format!("offer: {e}"))?;
        conn.pc
            .set_local_description(offer)
            .await
            .map_err(|e| format!("set offer: {e}"))?;
        let sdp = conn.gathered_sdp().await?;
        let (_, jsep) = handle
            .request(
                json!({"request": "publish", "audio": true, "video": true}),
                Some(json!({"type": "offer", "sdp": sdp, "trickle": false})),
            )
            .await?;
        let answer = jsep_sdp(jsep, "answer")?;
        for l in &locals {
            let pt = payload_type(&answer, l.kind).ok_or("Janus's answer lacks an m-line")?;
            l.pt.store(pt, Ordering::Relaxed);
        }
        let desc = RTCSessionDescription::answer(answer).map_err(|e| e.to_string())?;
        conn.pc
            .set_remote_description(desc)
            .await
            .map_err(|e| format!("set answer: {e}"))?;
        conn.connected().await?;
        // A feed can be subscribed to only once Janus has set up its media (DTLS done on
        // Janus's side), which it reports as `webrtcup`: the client may see its side
        // connected first, and an early subscribe then fails with "No such feed".
        handle.wait_for("webrtcup").await?;
        Ok(Publisher {
            feed,
            locals,
            conn,
            _handle: handle,
        })
    }

    pub fn local(&self, kind: RtpCodecKind) -> Option<&Arc<Local>> {
        self.locals.iter().find(|l| l.kind == kind)
    }

    pub async fn close(&self) {
        let _ = self.conn.pc.close().await;
    }
}

/// A peer's multistream subscriber handle: one connection receiving every feed it names.
pub struct Subscriber {
    conn: Conn,
    _handle: Handle,
}

impl Subscriber {
    /// Subscribes to `feeds` of `room` (Janus offers), answers and starts; received packets'
    /// headers (after `skip` prefix bytes) go to `media`.
    pub async fn join(
        session: &Session,
        room: u64,
        feeds: &[u64],
        ip: std::net::IpAddr,
        media: mpsc::UnboundedSender<Rtp>,
        skip: usize,
    ) -> Result<Subscriber, String> {
        let mut handle = session.attach().await?;
        let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
        let (_, jsep) = handle
            .request(
                json!({"request": "join", "ptype": "subscriber", "room": room, "streams": streams}),
                None,
            )
            .await?;
        let offer = jsep_sdp(jsep, "offer")?;
        let mut conn = Conn::new(ip, Some((media, skip))).await?;
        let desc = RTCSessionDescription::offer(offer).map_err(|e| e.to_string())?;
        conn.pc
            .set_remote_description(desc)
            .await
            .map_err(|e| format!("set offer: {e}"))?;
        let answer = conn
            .pc
            .create_answer(None)
            .await
            .map_err(|e| format!("answer: {e}"))?;
        conn.pc
            .set_local_description(answer)
            .await
            .map_err(|e| format!("set answer: {e}"))?;
        let sdp = conn.gathered_sdp().await?;
        handle
            .request(
                json!({"request": "start"}),
                Some(json!({"type": "answer", "sdp": sdp, "trickle": false})),
            )
            .await?;
        conn.connected().await?;
        Ok(Subscriber {
            conn,
            _handle: handle,
        })
    }

    pub async fn close(&self) {
        let _ = self.conn.pc.close().await;
    }
}
