//! A synthetic browser for the real server: a Phoenix V2 WebSocket client speaking the
//! Membrane media-event protocol as `membrane-webrtc-js` 0.5.3 does (join, `connect`,
//! `renegotiateTracks`, an offer per `offerData` with recvonly transceivers up to
//! `tracksTypes`, ICE restart on every re-offer, trickled candidates), over one webrtc-rs
//! connection with relay-only ICE through the TURN server named in the first `offerData`.
//!
//! Published RTP carries a fixed payload header so receivers can check order, loss and
//! latency: `[tag u8][publisher ssrc u32][sequence u32][send time ns u64]`, big-endian, the send
//! time on a process-wide monotonic clock ([`now_ns`]).
//!
//! Shared by the integration tests and the SFU benchmark example (included there by path), so
//! each uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use net_tokio::sync::mpsc;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use videoroom::app::Limits;
use videoroom::engine::webrtc::{interceptors, media_engine, ABS_SEND_TIME_URI, AUDIO_LEVEL_URI};
use videoroom::server::{EdgeConfig, MediaConfig, Server, ServerConfig};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};
use webrtc::runtime::TokioRuntime;

#[path = "bench_header.rs"]
mod bench_header;
pub use bench_header::{now_ns, HEADER, TAG_NUMBERED, TAG_PROBE};

#[derive(Clone, Debug)]
pub struct PeerOptions {
    pub room: String,
    pub name: String,
    pub audio: bool,
    pub video: bool,
}

/// What the server told the peer, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    EndpointAdded(String),
    EndpointRemoved(String),
    TracksAdded {
        endpoint: String,
        tracks: Vec<String>,
    },
    TracksRemoved {
        endpoint: String,
        tracks: Vec<String>,
    },
    OfferData(Value),
    /// An `sdpAnswer` was applied.
    Answered(BTreeMap<String, String>),
    PcState(RTCPeerConnectionState),
    Error(String),
    /// `vadNotification`: a subscribed audio track's voice activity.
    Vad {
        track: String,
        status: String,
    },
    /// The socket closed.
    Closed,
}

/// A browser stand-in's connection: `me`'s codecs with the SFU's interceptor chain, relay-only
/// ICE through `ice_servers` (as the JS client's), a loopback host socket, events to `handler`.
pub async fn relay_only_connection(
    mut me: MediaEngine,
    ice_servers: Vec<RTCIceServer>,
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> Result<Arc<dyn PeerConnection>, webrtc::error::Error> {
    let registry = interceptors(&mut me)?;
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(ice_servers)
        .with_ice_transport_policy(RTCIceTransportPolicy::Relay)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config)
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_include_loopback_candidate(true)
                // webrtc-rs waits 2 s before nominating a relay pair when controlling;
                // browsers nominate as soon as a check succeeds, and every pair here is a
                // relay pair (BENCHMARKS.md: join time).
                .with_relay_acceptance_min_wait(Some(Duration::ZERO))
                .build(),
        )
        .with_handler(handler)
        .with_runtime(Arc::new(TokioRuntime))
        .with_udp_addrs(vec!["127.0.0.1:0"])
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// One received RTP packet.
#[derive(Debug, Clone, Copy)]
pub struct Rtp {
    pub tag: u8,
    pub publisher_ssrc: u32,
    pub seq: u32,
    pub sent_ns: u64,
    pub recv_ns: u64,
    pub len: usize,
    /// The audio level the packet carried under the id this peer negotiated for it.
    pub audio_level: Option<u8>,
    /// It carried abs-send-time under this peer's id for it.
    pub abs_send_time: bool,
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
            len: payload.len(),
            audio_level: None,
            abs_send_time: false,
        })
    }
}

/// The header extension ids this peer offered (and the server's answer repeats), 0 unknown.
#[derive(Default)]
struct ExtIds {
    audio_level: AtomicU8,
    abs_send_time: AtomicU8,
}

/// A published track.
pub struct Local {
    pub kind: RtpCodecKind,
    pub ssrc: u32,
    pub track_id: String,
    track: Arc<TrackLocalStaticRTP>,
    rtp_seq: AtomicU16,
    /// The payload type this leg negotiated (0 until the first offer is made).
    pt: AtomicU8,
    /// The audio level (RFC 6464, 0 loudest, 127 silence) an audio track's packets carry.
    level: AtomicU8,
}

impl Local {
    /// Sends one packet whose payload is the header above padded to `size` bytes.
    pub async fn send(&self, tag: u8, seq: u32, size: usize) -> bool {
        let mut payload = Vec::with_capacity(size.max(HEADER));
        bench_header::write(&mut payload, tag, self.ssrc, seq, size);
        // RTP sequence numbers only move forward across probes and numbered packets: SRTP
        // replay protection drops the rest.
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
        let ok = if self.kind == RtpCodecKind::Audio {
            let level = AudioLevelExtension {
                level: self.level.load(Ordering::Relaxed),
                voice: false,
            };
            self.track
                .write_rtp_with_extensions(pkt, &[HeaderExtension::AudioLevel(level)])
                .await
                .is_ok()
        } else {
            self.track.write_rtp(pkt).await.is_ok()
        };
        // webrtc 0.21's driver hands a relayed packet to its TURN client in one loop pass and
        // sends what the TURN client queued only at the start of the next one, and nothing
        // schedules that next pass: the packet waits for whatever wakes the connection next
        // (an incoming datagram, a timer), up to several ms on a quiet one. An empty RTCP
        // write is a driver event that puts nothing on the wire; the pass it causes flushes
        // the packet. Browsers have no such delay, so without this the benchmark's latency
        // would be the synthetic publisher's (BENCHMARKS.md, "Where forwarding latency goes").
        let _ = self.track.write_rtcp(Vec::new()).await;
        ok
    }

    /// What the next packets of this audio track say about its loudness.
    pub fn set_level(&self, level: u8) {
        self.level.store(level, Ordering::Relaxed);
    }

    /// Keyframe requests (PLI/FIR) the SFU sends about this track, one `()` per RTCP packet
    /// that carries any.
    pub fn keyframe_requests(&self) -> mpsc::UnboundedReceiver<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        let track = Arc::clone(&self.track);
        net_tokio::spawn(async move {
            loop {
                match track.poll().await {
                    Some(TrackLocalEvent::OnRtcpPacket(_)) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Some(_) => {}
                    // Not bound to a sender yet (or unbound by a renegotiation): events queue
                    // from the next bind on, so nothing is lost by looking again shortly.
                    None if tx.is_closed() => return,
                    None => net_tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        rx
    }
}

enum Internal {
    Candidate(RTCIceCandidateInit),
    State(RTCPeerConnectionState),
}

struct Handler {
    internal: mpsc::UnboundedSender<Internal>,
    media: mpsc::UnboundedSender<Rtp>,
    ext: Arc<ExtIds>,
}

/// Client connections still in memory in this process: webrtc drops a connection's handler
/// only when the connection itself is freed.
pub static LIVE_CLIENT_CONNECTIONS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

impl Drop for Handler {
    fn drop(&mut self) {
        LIVE_CLIENT_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.internal.send(Internal::Candidate(init));
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.internal.send(Internal::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let tx = self.media.clone();
        let ext = Arc::clone(&self.ext);
        net_tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                match ev {
                    TrackRemoteEvent::OnRtpPacket(p) => {
                        if let Some(mut rtp) = Rtp::parse(&p.payload, now_ns()) {
                            let get = |id: &AtomicU8| match id.load(Ordering::Relaxed) {
                                0 => None,
                                id => p.header.get_extension(id),
                            };
                            rtp.audio_level = get(&ext.audio_level)
                                .and_then(|b| b.first().copied())
                                .map(|b| b & 0x7f);
                            rtp.abs_send_time = get(&ext.abs_send_time).is_some();
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

/// A connected peer. Dropping it closes the socket and the connection.
pub struct Peer {
    /// The endpoint id the server assigned (`connected.id`).
    pub id: String,
    pub others_at_join: Vec<String>,
    pub signals: mpsc::UnboundedReceiver<Signal>,
    pub media: mpsc::UnboundedReceiver<Rtp>,
    /// Socket open requested → `connected` received.
    pub join_time: Duration,
    pub opened_at: Instant,
    pub locals: Vec<Arc<Local>>,
    pc: Arc<Mutex<Option<Arc<dyn PeerConnection>>>>,
    /// The last applied `midToTrackId`.
    mids: Arc<Mutex<BTreeMap<String, String>>>,
    ws: mpsc::UnboundedSender<Message>,
    topic: String,
    driver: net_tokio::task::JoinHandle<()>,
}

fn frame(topic: &str, event: &str, payload: Value, refn: u64) -> Message {
    Message::text(json!(["1", refn.to_string(), topic, event, payload]).to_string())
}

fn media_event(topic: &str, event: Value, refn: u64) -> Message {
    frame(
        topic,
        "mediaEvent",
        json!({ "data": event.to_string() }),
        refn,
    )
}

fn custom(kind: &str, data: Value) -> Value {
    json!({"type": "custom", "data": {"type": kind, "data": data}})
}

impl Peer {
    /// Opens the socket, joins `room:<room>`, sends `connect` and returns once `connected`
    /// arrived; publishing (if any) starts with a `renegotiateTracks` right after.
    pub async fn join(addr: SocketAddr, opts: PeerOptions) -> Result<Peer, String> {
        let opened_at = Instant::now();
        let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| format!("websocket: {e}"))?;
        let (mut sink, mut stream) = ws.split();
        let (ws_tx, mut ws_rx) = mpsc::unbounded_channel::<Message>();
        net_tokio::spawn(async move {
            while let Some(m) = ws_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let topic = format!("room:{}", opts.room);
        ws_tx
            .send(frame(&topic, "phx_join", json!({}), 1))
            .map_err(|_| "socket closed")?;
        // The join reply, then `connected`.
        let mut refn = 2;
        loop {
            let msg = stream
                .next()
                .await
                .ok_or("socket closed before join")?
                .map_err(|e| format!("websocket: {e}"))?;
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
            if v[3] == "phx_reply" && v[1] == "1" {
                if v[4]["status"] != "ok" {
                    return Err(format!("join refused: {}", v[4]));
                }
                break;
            }
        }
        ws_tx
            .send(media_event(
                &topic,
                json!({"type": "connect", "data": {"metadata": {"displayName": opts.name}}}),
                refn,
            ))
            .map_err(|_| "socket closed")?;
        refn += 1;
        let (id, others) = loop {
            let msg = stream
                .next()
                .await
                .ok_or("socket closed before connected")?
                .map_err(|e| format!("websocket: {e}"))?;
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
            if v[3] != "mediaEvent" {
                continue;
            }
            let ev: Value = serde_json::from_str(v[4]["data"].as_str().unwrap_or("null"))
                .map_err(|e| e.to_string())?;
            if ev["type"] == "connected" {
                let id = ev["data"]["id"].as_str().ok_or("connected without id")?;
                let others = ev["data"]["otherEndpoints"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|e| e["id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                break (id.to_owned(), others);
            }
            if ev["type"] == "error" {
                return Err(format!("server error: {}", ev["data"]));
            }
        };
        let join_time = opened_at.elapsed();

        let mut locals = Vec::new();
        for (kind, on) in [
            (RtpCodecKind::Audio, opts.audio),
            (RtpCodecKind::Video, opts.video),
        ] {
            if !on {
                continue;
            }
            let name = if kind == RtpCodecKind::Audio {
                "audio"
            } else {
                "video"
            };
            let track_id = format!("{id}:{name}");
            let ssrc: u32 = rand::random::<u32>() | 1;
            let mut codec = videoroom::engine::webrtc::codec(kind).rtp_codec;
            codec.rtcp_feedback.clear();
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                id.clone(),
                track_id.clone(),
                track_id.clone(),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            )));
            locals.push(Arc::new(Local {
                kind,
                ssrc,
                track_id,
                track,
                rtp_seq: AtomicU16::new(rand::random()),
                pt: AtomicU8::new(0),
                level: AtomicU8::new(127),
            }));
        }
        if !locals.is_empty() {
            ws_tx
                .send(media_event(
                    &topic,
                    custom("renegotiateTracks", Value::Null),
                    refn,
                ))
                .map_err(|_| "socket closed")?;
            refn += 1;
        }

        let (signals_tx, signals) = mpsc::unbounded_channel();
        let (media_tx, media) = mpsc::unbounded_channel();
        let pc = Arc::new(Mutex::new(None));
        let mids = Arc::new(Mutex::new(BTreeMap::new()));
        let driver = Driver {
            topic: topic.clone(),
            refn,
            ws: ws_tx.clone(),
            signals: signals_tx,
            media: media_tx,
            locals: locals.clone(),
            pc: Arc::clone(&pc),
            mids: Arc::clone(&mids),
            recvonly: BTreeMap::new(),
            ext: Arc::default(),
        };
        let driver = net_tokio::spawn(driver.run(stream));
        Ok(Peer {
            id,
            others_at_join: others,
            signals,
            media,
            join_time,
            opened_at,
            locals,
            pc,
            mids,
            ws: ws_tx,
            topic,
            driver,
        })
    }

    /// Sends a media event of the caller's making, as a misbehaving client would.
    pub fn send_media_event(&self, event: Value) {
        // Client pushes of media events are not answered, so the ref only has to be unique.
        let _ = self.ws.send(media_event(&self.topic, event, u64::MAX));
    }

    pub fn local(&self, kind: RtpCodecKind) -> Option<&Arc<Local>> {
        self.locals.iter().find(|l| l.kind == kind)
    }

    /// Waits for the first signal `pick` accepts, dropping the others; `None` on timeout or
    /// when the socket closed.
    pub async fn wait_for<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&Signal) -> Option<T>,
    ) -> Option<T> {
        let deadline = net_tokio::time::Instant::now() + within;
        loop {
            let s = net_tokio::time::timeout_at(deadline, self.signals.recv())
                .await
                .ok()??;
            if let Some(t) = pick(&s) {
                return Some(t);
            }
            if s == Signal::Closed {
                return None;
            }
        }
    }

    /// The last `midToTrackId` applied.
    pub fn mid_to_track_id(&self) -> BTreeMap<String, String> {
        self.mids.lock().expect("mids").clone()
    }

    /// Sends a PLI on the receiver of `track_id` (a track this peer subscribes to), as a
    /// browser does when it needs a keyframe. False if no receiver carries it yet.
    pub async fn request_keyframe(&self, track_id: &str) -> bool {
        let Some(pc) = self.pc.lock().expect("pc").clone() else {
            return false;
        };
        let Some(mid) = self
            .mid_to_track_id()
            .into_iter()
            .find_map(|(m, t)| (t == track_id).then_some(m))
        else {
            return false;
        };
        for t in pc.get_transceivers().await {
            if t.mid().await.ok().flatten().as_deref() != Some(mid.as_str()) {
                continue;
            }
            let Ok(Some(rx)) = t.receiver().await else {
                return false;
            };
            let Some(media_ssrc) = rx.track().ssrcs().await.first().copied() else {
                return false;
            };
            return rx
                .track()
                .write_rtcp(vec![Box::new(PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                })])
                .await
                .is_ok();
        }
        false
    }

    /// Leaves like the browser client: closes the connection and the socket.
    pub async fn leave(self) {
        let pc = self.pc.lock().expect("pc").take();
        if let Some(pc) = pc {
            let _ = pc.close().await;
        }
        let _ = self.ws.send(Message::Close(None));
        self.driver.abort();
    }
}

struct Driver {
    topic: String,
    refn: u64,
    ws: mpsc::UnboundedSender<Message>,
    signals: mpsc::UnboundedSender<Signal>,
    media: mpsc::UnboundedSender<Rtp>,
    locals: Vec<Arc<Local>>,
    pc: Arc<Mutex<Option<Arc<dyn PeerConnection>>>>,
    mids: Arc<Mutex<BTreeMap<String, String>>>,
    /// Recvonly transceivers added per kind (never removed, like the browser client).
    recvonly: BTreeMap<&'static str, u64>,
    ext: Arc<ExtIds>,
}

impl Driver {
    async fn run<S>(mut self, mut stream: S)
    where
        S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    {
        let (internal_tx, mut internal) = mpsc::unbounded_channel();
        // The server closes idle sockets after a minute; phoenix.js beats every 30 s.
        let mut heartbeat = net_tokio::time::interval(Duration::from_secs(20));
        heartbeat.tick().await;
        loop {
            net_tokio::select! {
                msg = stream.next() => {
                    let Some(Ok(msg)) = msg else { break };
                    let Message::Text(t) = msg else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                    if v[3] != "mediaEvent" {
                        continue;
                    }
                    let Some(data) = v[4]["data"].as_str() else { continue };
                    let Ok(ev) = serde_json::from_str::<Value>(data) else { continue };
                    if let Err(e) = self.on_event(ev, &internal_tx).await {
                        let _ = self.signals.send(Signal::Error(e));
                    }
                }
                Some(i) = internal.recv() => match i {
                    Internal::Candidate(c) => {
                        let ev = custom("candidate", json!({
                            "candidate": c.candidate,
                            "sdpMLineIndex": c.sdp_mline_index.unwrap_or(0),
                            "sdpMid": c.sdp_mid,
                            "usernameFragment": c.username_fragment,
                        }));
                        self.send(ev);
                    }
                    Internal::State(s) => {
                        let _ = self.signals.send(Signal::PcState(s));
                    }
                },
                _ = heartbeat.tick() => {
                    self.refn += 1;
                    let _ = self.ws.send(Message::text(
                        json!([null, self.refn.to_string(), "phoenix", "heartbeat", {}]).to_string(),
                    ));
                }
            }
        }
        let _ = self.signals.send(Signal::Closed);
    }

    fn send(&mut self, ev: Value) {
        self.refn += 1;
        let _ = self.ws.send(media_event(&self.topic, ev, self.refn));
    }

    async fn on_event(
        &mut self,
        ev: Value,
        internal: &mpsc::UnboundedSender<Internal>,
    ) -> Result<(), String> {
        let data = &ev["data"];
        let ids = |v: &Value| -> Vec<String> {
            match v {
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect(),
                Value::Object(o) => o.keys().cloned().collect(),
                _ => Vec::new(),
            }
        };
        let str_of = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        match ev["type"].as_str().unwrap_or_default() {
            "endpointAdded" => {
                let _ = self
                    .signals
                    .send(Signal::EndpointAdded(str_of(&data["id"])));
            }
            "endpointRemoved" => {
                let _ = self
                    .signals
                    .send(Signal::EndpointRemoved(str_of(&data["id"])));
            }
            "tracksAdded" => {
                let _ = self.signals.send(Signal::TracksAdded {
                    endpoint: str_of(&data["endpointId"]),
                    tracks: ids(&data["tracks"]),
                });
            }
            "tracksRemoved" => {
                let _ = self.signals.send(Signal::TracksRemoved {
                    endpoint: str_of(&data["endpointId"]),
                    tracks: ids(&data["trackIds"]),
                });
            }
            "error" => {
                let _ = self.signals.send(Signal::Error(data.to_string()));
            }
            "custom" => {
                let inner = &data["data"];
                match data["type"].as_str().unwrap_or_default() {
                    "offerData" => {
                        let _ = self.signals.send(Signal::OfferData(inner.clone()));
                        self.offer(inner, internal).await?;
                    }
                    "sdpAnswer" => {
                        let pc = self.pc.lock().expect("pc").clone().ok_or("answer, no pc")?;
                        let answer = RTCSessionDescription::answer(str_of(&inner["sdp"]))
                            .map_err(|e| e.to_string())?;
                        pc.set_remote_description(answer)
                            .await
                            .map_err(|e| format!("set answer: {e}"))?;
                        let map: BTreeMap<String, String> = inner["midToTrackId"]
                            .as_object()
                            .map(|o| o.iter().map(|(k, v)| (k.clone(), str_of(v))).collect())
                            .unwrap_or_default();
                        *self.mids.lock().expect("mids") = map.clone();
                        let _ = self.signals.send(Signal::Answered(map));
                    }
                    "vadNotification" => {
                        let _ = self.signals.send(Signal::Vad {
                            track: str_of(&inner["trackId"]),
                            status: str_of(&inner["status"]),
                        });
                    }
                    "candidate" => {
                        let pc = self.pc.lock().expect("pc").clone();
                        if let Some(pc) = pc {
                            let _ = pc
                                .add_ice_candidate(RTCIceCandidateInit {
                                    candidate: str_of(&inner["candidate"]),
                                    sdp_mline_index: Some(0),
                                    ..Default::default()
                                })
                                .await;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn build_pc(
        &self,
        turn: &Value,
        internal: &mpsc::UnboundedSender<Internal>,
    ) -> Result<Arc<dyn PeerConnection>, String> {
        let servers = turn
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| RTCIceServer {
                        urls: vec![format!(
                            "turn:{}:{}?transport={}",
                            t["serverAddr"].as_str().unwrap_or_default(),
                            t["serverPort"],
                            t["transport"].as_str().unwrap_or("udp")
                        )],
                        username: t["username"].as_str().unwrap_or_default().to_owned(),
                        credential: t["password"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if servers.is_empty() {
            return Err("offerData without integratedTurnServers".into());
        }
        let me = media_engine().map_err(|e| e.to_string())?;
        LIVE_CLIENT_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let handler = Arc::new(Handler {
            internal: internal.clone(),
            media: self.media.clone(),
            ext: Arc::clone(&self.ext),
        });
        let pc = relay_only_connection(me, servers, handler)
            .await
            .map_err(|e| format!("pc: {e}"))?;
        for l in &self.locals {
            pc.add_transceiver_from_track(
                Arc::clone(&l.track) as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![l.track_id.split(':').next().unwrap_or("").to_owned()],
                    send_encodings: Vec::new(),
                }),
            )
            .await
            .map_err(|e| format!("add track: {e}"))?;
        }
        Ok(pc)
    }

    /// Answers `offerData` with an offer, as the browser client does.
    async fn offer(
        &mut self,
        offer_data: &Value,
        internal: &mpsc::UnboundedSender<Internal>,
    ) -> Result<(), String> {
        let existing = self.pc.lock().expect("pc").clone();
        let pc = match existing {
            Some(pc) => pc,
            None => {
                let pc = self
                    .build_pc(&offer_data["integratedTurnServers"], internal)
                    .await?;
                *self.pc.lock().expect("pc") = Some(Arc::clone(&pc));
                pc
            }
        };
        for (name, kind) in [
            ("audio", RtpCodecKind::Audio),
            ("video", RtpCodecKind::Video),
        ] {
            let want = offer_data["tracksTypes"][name].as_u64().unwrap_or(0);
            let have = self.recvonly.entry(name).or_insert(0);
            while *have < want {
                pc.add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|e| format!("recvonly: {e}"))?;
                *have += 1;
            }
        }
        if pc.local_description().await.is_some() {
            pc.restart_ice()
                .await
                .map_err(|e| format!("restart: {e}"))?;
        }
        let offer = pc.create_offer(None).await.map_err(|e| e.to_string())?;
        pc.set_local_description(offer)
            .await
            .map_err(|e| format!("set offer: {e}"))?;
        let sdp = pc.local_description().await.ok_or("no local sdp")?.sdp;
        // webrtc-rs offers one id per URI for the whole connection.
        for line in sdp.lines() {
            let Some(ext) = line.strip_prefix("a=extmap:") else {
                continue;
            };
            let mut f = ext.split_whitespace();
            let id = f.next().and_then(|i| i.split('/').next()?.parse().ok());
            let slot = match f.next() {
                Some(AUDIO_LEVEL_URI) => &self.ext.audio_level,
                Some(ABS_SEND_TIME_URI) => &self.ext.abs_send_time,
                _ => continue,
            };
            slot.store(id.unwrap_or(0), Ordering::Relaxed);
        }
        let mut mid_to_track = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for section in sections(&sdp) {
            if section.direction != "sendonly" {
                continue;
            }
            if let Some(l) = self.locals.iter().find(|l| l.kind == section.kind) {
                mid_to_track.insert(section.mid.clone(), l.track_id.clone());
                let label = if l.kind == RtpCodecKind::Audio {
                    "audio"
                } else {
                    "camera"
                };
                metadata.insert(l.track_id.clone(), json!({"type": label, "active": true}));
                l.pt.store(section.pt, Ordering::Relaxed);
            }
        }
        self.send(custom(
            "sdpOffer",
            json!({
                "sdpOffer": {"type": "offer", "sdp": sdp},
                "trackIdToTrackMetadata": metadata,
                "trackIdToTrackBitrates": {},
                "midToTrackId": mid_to_track,
            }),
        ));
        Ok(())
    }
}

struct Section {
    kind: RtpCodecKind,
    mid: String,
    direction: String,
    pt: u8,
}

/// The m-sections of an SDP: kind, mid, direction and first payload type.
fn sections(sdp: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            let mut f = m.split_whitespace();
            let kind = match f.next() {
                Some("audio") => RtpCodecKind::Audio,
                _ => RtpCodecKind::Video,
            };
            let pt = f.nth(2).and_then(|p| p.parse().ok()).unwrap_or(0);
            out.push(Section {
                kind,
                mid: String::new(),
                direction: "sendrecv".into(),
                pt,
            });
        } else if let Some(s) = out.last_mut() {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                s.mid = mid.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("a=") {
                if matches!(d.trim(), "sendonly" | "recvonly" | "sendrecv" | "inactive") {
                    s.direction = d.trim().to_owned();
                }
            }
        }
    }
    out
}

/// How many media workers the media tests' servers run: `VIDEOROOM_MEDIA_WORKERS` as the
/// server reads it, else the server's default, so the suite can check several.
pub fn test_media_workers() -> usize {
    std::env::var("VIDEOROOM_MEDIA_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(videoroom::server::default_media_workers)
}

/// The real server on 127.0.0.1 port 0, with the media plane and the integrated TURN server on
/// an ephemeral port: what the synthetic peers run against. Every peer connects from
/// 127.0.0.1, so the per-source WebSocket limit is lifted.
pub async fn start_media_server(limits: Limits) -> Server {
    Server::start(ServerConfig {
        port: 0,
        limits,
        edge: EdgeConfig {
            max_sockets_per_source: 100_000,
            max_connections_per_source: 100_000,
            max_peers_per_source: 100_000,
            ..EdgeConfig::default()
        },
        media: MediaConfig {
            real: true,
            turn_bind: SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0),
            media_workers: test_media_workers(),
            ..MediaConfig::default()
        },
        ..ServerConfig::default()
    })
    .await
    .expect("server starts")
}
