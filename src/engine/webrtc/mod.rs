//! The real media plane: an SFU on webrtc-rs 0.21 (compiled only with the `media-webrtc`
//! feature; the simulation runs the fake plane instead).
//!
//! It owns one `PeerConnection` per peer (the browser always offers, this side always answers),
//! one forwarding loop per published track, and one `TrackLocalStaticRTP` (sender, SSRC) per
//! subscriber m-line, kept for the connection's life while the core recycles the mid for
//! successive tracks. A forwarded packet gets the subscriber leg's SSRC and negotiated payload
//! type, sequence numbers and timestamps continuous across those tracks, and its audio level
//! and a fresh abs-send-time under the leg's own extension ids (nothing else), because webrtc
//! 0.21 *rejects* rather than rewrites packets that do not match the leg (research:
//! sfu_perf.md §2). Subscriber PLI/FIR is relayed to the publisher, and every new subscription
//! asks the publisher for a keyframe. Each published audio track's levels feed a
//! [`VoiceActivity`], whose changes go to the core as [`PlaneEvent::VoiceActivity`].
//!
//! It must never: decide anything about negotiation (which mid carries what, stream ids, when
//! to offer: the negotiation core decides, this only executes a [`PlaneOffer`]); block the
//! caller (every call enqueues to the peer's own task and returns); let one slow subscriber
//! stall a publisher's other subscribers (a leg whose queue is full loses the packet, which
//! NACK/PLI then repair); keep anything of a peer after [`WebRtcPlane::remove_peer`] has run
//! (connection, sockets, tasks, legs, TURN allocations).

mod forward;
mod rtcp;
mod sdp;
pub mod worker;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use net_tokio::runtime::Handle;
use net_tokio::sync::{mpsc, oneshot};
use net_tokio::task::JoinHandle;
use rtc::interceptor::Slot;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::{RtpSender, RtpTransceiver};

use crate::engine::plane::{
    MLineRole, MediaPlane, PlaneEvent, PlaneFactory, PlaneOffer, PlaneSink,
};
use crate::fabric::sfu::FabricRuntime;
use crate::fabric::Fabric;
use crate::logsafe::{Untrusted, WarnBudget};
use crate::turn::TurnServer;

pub use forward::{
    abs_send_time, rewrite, Carried, Continuity, ExtIds, Fanout, Leg, ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI, NO_PAYLOAD_TYPE,
};

use crate::engine::vad::VoiceActivity;
use rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability;

/// Process-wide gauges of live plane objects, for soak tests and leak hunting: after every
/// peer has been removed and its teardown ran, all of them are back to where they were.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveObjects {
    /// Peer tasks (one per added peer, until its teardown finished).
    pub peer_tasks: usize,
    /// Connection event handlers: webrtc drops a connection's handler only when the
    /// connection itself is freed, so this counts connections still in memory.
    pub connections: usize,
    pub fanouts: usize,
}

static LIVE_PEER_TASKS: AtomicUsize = AtomicUsize::new(0);
static LIVE_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static LIVE_FANOUTS: AtomicUsize = AtomicUsize::new(0);

/// The gauges over every plane in this process.
pub fn live_objects() -> LiveObjects {
    LiveObjects {
        peer_tasks: LIVE_PEER_TASKS.load(Ordering::Relaxed),
        connections: LIVE_CONNECTIONS.load(Ordering::Relaxed),
        fanouts: LIVE_FANOUTS.load(Ordering::Relaxed),
    }
}

/// Commands queued to one peer's task; bounded so a runaway producer surfaces as a failure.
const PEER_QUEUE: usize = 1024;

pub const VP8: &str = "video/VP8";
pub const OPUS: &str = "audio/opus";
const VP8_PT: u8 = 96;
const OPUS_PT: u8 = 111;

/// How the plane binds ICE and which TURN server it hands out.
#[derive(Clone)]
pub struct PlaneConfig {
    /// Each peer connection binds one UDP socket per address (port chosen by the OS). Browsers
    /// are relay-only, so only the integrated TURN server (on this host) must reach them;
    /// that is why there is no external-address setting here (webrtc 0.21.1 also ignores
    /// `with_nat_1to1_ips`: nothing reads the value it stores).
    pub ice_ips: Vec<IpAddr>,
    /// Where the plane's tasks and every connection's driver run; `None` uses the runtime of
    /// the caller of [`WebRtcPlane::new`]. A dedicated runtime makes SFU CPU measurable.
    pub runtime: Option<Handle>,
    /// The integrated TURN server: a removed peer's allocations on it are closed.
    pub turn: Option<Arc<TurnServer>>,
    /// Registers every connection's sockets here. They send to the TURN server's relay
    /// sockets in the same fabric only, handed over in-process (see [`crate::fabric`]); a
    /// fabric without a TURN server in it leaves the SFU talking to no one.
    pub fabric: Arc<Fabric>,
    /// The server's counters (forwarded packets and bytes are added there too).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Default for PlaneConfig {
    fn default() -> Self {
        PlaneConfig {
            ice_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            runtime: None,
            turn: None,
            fabric: Arc::new(Fabric::new(crate::fabric::DEFAULT_INBOX_CAPACITY)),
            metrics: Arc::default(),
        }
    }
}

impl std::fmt::Debug for PlaneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaneConfig")
            .field("ice_ips", &self.ice_ips)
            .field("turn", &self.turn.as_ref().map(|t| t.local_addr()))
            .field("fabric", &self.fabric)
            .finish_non_exhaustive()
    }
}

/// Counters over the plane's lifetime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlaneStats {
    pub peers: usize,
    pub fanouts: usize,
    pub forwarded: u64,
    /// Packets a leg could not take (its queue was full or it was not bound yet).
    pub dropped: u64,
    /// PLI/FIR from subscribers relayed to publishers.
    pub keyframe_requests_relayed: u64,
    /// PLIs sent to publishers because someone subscribed or the core asked.
    pub keyframe_requests_sent: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) forwarded: AtomicU64,
    pub(crate) dropped: AtomicU64,
    relayed: AtomicU64,
    sent: AtomicU64,
    pub(crate) server: Arc<crate::metrics::Metrics>,
}

/// One room's SFU. Dropping it tears every peer down (the [`MediaPlane`] contract).
pub struct WebRtcPlane {
    inner: Arc<Inner>,
}

/// A cheap handle on a plane's counters, usable after the plane is boxed.
#[derive(Clone)]
pub struct PlaneStatsHandle {
    inner: Arc<Inner>,
}

impl PlaneStatsHandle {
    pub fn stats(&self) -> PlaneStats {
        self.inner.stats()
    }
}

struct Inner {
    cfg: PlaneConfig,
    rt: Handle,
    sink: PlaneSink,
    peers: Mutex<HashMap<String, PeerEntry>>,
    /// Keyed by published track id. A fanout exists while its track is published or someone
    /// still has a leg on it.
    fanouts: Mutex<HashMap<String, Arc<Fanout>>>,
    counters: Arc<Counters>,
}

struct PeerEntry {
    tx: mpsc::Sender<Cmd>,
    /// Dropped on removal, which stops the peer's task.
    _stop: oneshot::Sender<()>,
}

enum Cmd {
    Offer(PlaneOffer),
    RemoteCandidate(RTCIceCandidateInit),
    LocalCandidate(RTCIceCandidateInit),
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
    InboundEnded(String),
}

impl WebRtcPlane {
    /// Must be called inside a tokio runtime unless `cfg.runtime` is set.
    pub fn new(cfg: PlaneConfig, sink: PlaneSink) -> Self {
        let rt = cfg.runtime.clone().unwrap_or_else(Handle::current);
        WebRtcPlane {
            inner: Arc::new(Inner {
                rt,
                sink,
                peers: Mutex::new(HashMap::new()),
                fanouts: Mutex::new(HashMap::new()),
                counters: Arc::new(Counters {
                    server: Arc::clone(&cfg.metrics),
                    ..Counters::default()
                }),
                cfg,
            }),
        }
    }

    /// Starts `peer`'s task. Its connection is built when its first offer arrives. Adding a
    /// peer that exists is a no-op.
    pub fn add_peer(&self, peer: &str) {
        let mut peers = self.inner.peers.lock().expect("plane lock");
        if peers.contains_key(peer) {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let (stop_tx, stop_rx) = oneshot::channel();
        peers.insert(
            peer.to_owned(),
            PeerEntry {
                tx: tx.clone(),
                _stop: stop_tx,
            },
        );
        let task = PeerTask::new(Arc::clone(&self.inner), peer.to_owned(), tx);
        self.inner.rt.spawn(task.run(rx, stop_rx));
    }

    /// Tears `peer` down: its connection is closed, its legs leave every fanout, its published
    /// tracks stop being forwarded, its TURN allocations are closed. Idempotent.
    pub fn remove_peer(&self, peer: &str) {
        let entry = self.inner.peers.lock().expect("plane lock").remove(peer);
        if let Some(entry) = entry {
            // Dropping the entry drops its stop signal: the task tears the peer down.
            drop(entry.tx);
            if let Some(turn) = &self.inner.cfg.turn {
                turn.revoke_peer(peer);
            }
        }
    }

    /// Asks the publisher of `track_id` for a keyframe (a PLI), if its media is flowing.
    fn keyframe(&self, track_id: &str) {
        let fanout = self
            .inner
            .fanouts
            .lock()
            .expect("plane lock")
            .get(track_id)
            .cloned();
        if let Some(f) = fanout {
            let counters = Arc::clone(&self.inner.counters);
            self.inner.rt.spawn(async move {
                if send_pli(&f).await {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }

    pub fn stats(&self) -> PlaneStats {
        self.inner.stats()
    }

    pub fn stats_handle(&self) -> PlaneStatsHandle {
        PlaneStatsHandle {
            inner: Arc::clone(&self.inner),
        }
    }

    fn send(&self, peer: &str, cmd: Cmd) {
        let tx = self
            .inner
            .peers
            .lock()
            .expect("plane lock")
            .get(peer)
            .map(|e| e.tx.clone());
        match tx {
            Some(tx) => {
                if tx.try_send(cmd).is_err() {
                    self.inner.sink.send(PlaneEvent::Failed {
                        peer: peer.to_owned(),
                        reason: "media plane queue full".to_owned(),
                    });
                }
            }
            None => tracing::debug!(peer, "media plane: command for an unknown peer dropped"),
        }
    }
}

/// A [`PlaneFactory`] building one webrtc plane per room.
pub fn factory(cfg: PlaneConfig) -> PlaneFactory {
    PlaneFactory::new(move |_room, sink| Box::new(WebRtcPlane::new(cfg.clone(), sink)))
}

impl MediaPlane for WebRtcPlane {
    fn add_peer(&mut self, peer: &str) {
        WebRtcPlane::add_peer(self, peer)
    }

    fn remove_peer(&mut self, peer: &str) {
        WebRtcPlane::remove_peer(self, peer)
    }

    fn offer(&mut self, peer: &str, offer: PlaneOffer) {
        self.send(peer, Cmd::Offer(offer));
    }

    fn remote_candidate(&mut self, peer: &str, candidate: &str, sdp_m_line_index: Option<u32>) {
        let candidate = candidate.strip_prefix("a=").unwrap_or(candidate);
        if candidate.is_empty() {
            return; // end-of-candidates marker
        }
        self.send(
            peer,
            Cmd::RemoteCandidate(RTCIceCandidateInit {
                candidate: candidate.to_owned(),
                sdp_mid: None,
                sdp_mline_index: sdp_m_line_index.and_then(|i| u16::try_from(i).ok()),
                username_fragment: None,
                ..Default::default()
            }),
        );
    }

    fn request_keyframe(&mut self, _publisher: &str, track_id: &str) {
        self.keyframe(track_id);
    }
}

impl Drop for WebRtcPlane {
    fn drop(&mut self) {
        let peers: Vec<String> = self
            .inner
            .peers
            .lock()
            .expect("plane lock")
            .keys()
            .cloned()
            .collect();
        for peer in peers {
            self.remove_peer(&peer);
        }
    }
}

impl Inner {
    fn stats(&self) -> PlaneStats {
        let c = &self.counters;
        PlaneStats {
            peers: self.peers.lock().expect("plane lock").len(),
            fanouts: self.fanouts.lock().expect("plane lock").len(),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            keyframe_requests_relayed: c.relayed.load(Ordering::Relaxed),
            keyframe_requests_sent: c.sent.load(Ordering::Relaxed),
        }
    }

    fn fanout(&self, track_id: &str) -> Arc<Fanout> {
        Arc::clone(
            self.fanouts
                .lock()
                .expect("plane lock")
                .entry(track_id.to_owned())
                .or_insert_with(|| Arc::new(Fanout::new(track_id.to_owned()))),
        )
    }

    /// Takes `live` off its fanout and stops relaying its feedback.
    fn release_leg(&self, live: LiveLeg) {
        if let Some(f) = self.fanouts.lock().expect("plane lock").get(&live.track_id) {
            f.detach(&live.leg);
        }
        self.release_fanout(&live.track_id);
        live.rtcp_task.abort();
    }

    /// Drops the fanout of `track_id` if nothing uses it any more.
    fn release_fanout(&self, track_id: &str) {
        let mut fanouts = self.fanouts.lock().expect("plane lock");
        if fanouts.get(track_id).is_some_and(|f| f.is_unused()) {
            fanouts.remove(track_id);
        }
    }
}

async fn send_pli(fanout: &Fanout) -> bool {
    let Some((remote, media_ssrc)) = fanout.source() else {
        return false;
    };
    remote
        .write_rtcp(vec![Box::new(PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        })])
        .await
        .is_ok()
}

/// The plane's reading of a [`PlaneOffer`]: which mids publish and which forward.
struct OfferPlan {
    sdp: String,
    inbound: Vec<InboundMid>,
    outbound: Vec<OutboundMid>,
}

struct InboundMid {
    mid: String,
    track_id: String,
}

#[derive(Clone)]
struct OutboundMid {
    mid: String,
    track_id: String,
    stream_id: String,
}

impl From<PlaneOffer> for OfferPlan {
    fn from(offer: PlaneOffer) -> Self {
        let mut plan = OfferPlan {
            sdp: offer.sdp,
            inbound: Vec::new(),
            outbound: Vec::new(),
        };
        for m in offer.mlines {
            match m.role {
                MLineRole::Inbound { track_id, .. } => plan.inbound.push(InboundMid {
                    mid: m.mid,
                    track_id,
                }),
                MLineRole::Outbound {
                    track_id,
                    stream_id,
                    ..
                } => plan.outbound.push(OutboundMid {
                    mid: m.mid,
                    track_id,
                    stream_id,
                }),
                MLineRole::Inactive => {}
            }
        }
        plan
    }
}

/// One of this peer's `recvonly` mids the plane sends on. The sender, its local track and SSRC
/// live as long as the connection, because the core recycles the mid for later tracks; only
/// the source changes.
struct OutSlot {
    transceiver: Arc<dyn RtpTransceiver>,
    sender: Arc<dyn RtpSender>,
    /// Bound to the sender for good. Its track id keys the connection's feedback routing and
    /// its encoding holds the SSRC, so both outlive a source switch.
    local: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    continuity: Arc<Continuity>,
    /// What is forwarded on it now; `None` while the mid is inactive.
    live: Option<LiveLeg>,
}

struct LiveLeg {
    track_id: String,
    leg: Arc<Leg>,
    rtcp_task: JoinHandle<()>,
}

/// One peer: its connection and what flows through it. Runs as one task; everything about the
/// peer happens in order inside it.
struct PeerTask {
    inner: Arc<Inner>,
    peer: String,
    tx: mpsc::Sender<Cmd>,
    pc: Option<Arc<dyn PeerConnection>>,
    /// mid → published track id, from the latest applied offer.
    inbound: BTreeMap<String, String>,
    /// mid → kind and header extension ids, from the latest answer (an answer repeats the
    /// offer's ids, so for a published track they are the ids its packets carry).
    answered: BTreeMap<String, (RtpCodecKind, ExtIds)>,
    /// Published tracks whose media has started: track id → forwarding loop.
    ingress: BTreeMap<String, JoinHandle<()>>,
    /// By mid.
    outbound: BTreeMap<String, OutSlot>,
    /// Warnings this peer's client can cause.
    warnings: WarnBudget,
}

impl PeerTask {
    fn new(inner: Arc<Inner>, peer: String, tx: mpsc::Sender<Cmd>) -> Self {
        LIVE_PEER_TASKS.fetch_add(1, Ordering::Relaxed);
        PeerTask {
            inner,
            peer,
            tx,
            pc: None,
            inbound: BTreeMap::new(),
            answered: BTreeMap::new(),
            ingress: BTreeMap::new(),
            outbound: BTreeMap::new(),
            warnings: WarnBudget::per_peer(),
        }
    }

    fn emit(&self, event: PlaneEvent) {
        self.inner.sink.send(event);
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, mut stop: oneshot::Receiver<()>) {
        loop {
            // `rx` never closes on its own (the connection's handler holds a sender), so
            // removal is a separate signal: the plane dropping this peer's entry.
            let cmd = net_tokio::select! {
                biased;
                _ = &mut stop => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => break,
                },
            };
            match cmd {
                Cmd::Offer(offer) => {
                    let negotiation = offer.negotiation;
                    let result = self.apply_offer(offer).await;
                    if let Err(reason) = &result {
                        // A client can send offers webrtc refuses as fast as it likes.
                        if let Some(suppressed) = self.warnings.admit(std::time::Instant::now()) {
                            tracing::warn!(peer = %self.peer, reason = %Untrusted(reason), suppressed, "offer not applied");
                        }
                    }
                    self.emit(PlaneEvent::Answer {
                        peer: self.peer.clone(),
                        negotiation,
                        result,
                    });
                }
                Cmd::RemoteCandidate(init) => {
                    if let Some(pc) = &self.pc {
                        if let Err(e) = pc.add_ice_candidate(init).await {
                            tracing::debug!(peer = %self.peer, error = %Untrusted(&e), "remote candidate rejected");
                        }
                    }
                }
                // Candidates gathered while answering were queued behind the offer, so they
                // reach the sink after the answer, as the seam requires.
                Cmd::LocalCandidate(init) => self.emit(PlaneEvent::LocalCandidate {
                    peer: self.peer.clone(),
                    candidate: init.candidate,
                }),
                Cmd::State(state) => match state {
                    RTCPeerConnectionState::Connected => self.emit(PlaneEvent::Connected {
                        peer: self.peer.clone(),
                    }),
                    RTCPeerConnectionState::Failed => self.emit(PlaneEvent::Failed {
                        peer: self.peer.clone(),
                        reason: "ICE/DTLS failed".to_owned(),
                    }),
                    _ => {}
                },
                Cmd::Track(remote) => self.start_ingress(remote).await,
                Cmd::InboundEnded(track_id) => self.end_ingress(&track_id),
            }
        }
        let suppressed = self.warnings.take_suppressed();
        if suppressed > 0 {
            tracing::warn!(peer = %self.peer, suppressed, "warnings suppressed for this peer");
        }
        self.teardown().await;
    }

    async fn connection(&mut self) -> Result<Arc<dyn PeerConnection>, String> {
        if let Some(pc) = &self.pc {
            return Ok(Arc::clone(pc));
        }
        let pc = build_connection(&self.inner.cfg, &self.peer, self.tx.clone())
            .await
            .map_err(|e| format!("cannot create the peer connection: {e}"))?;
        self.pc = Some(Arc::clone(&pc));
        Ok(pc)
    }

    async fn apply_offer(&mut self, offer: PlaneOffer) -> Result<String, String> {
        let pc = self.connection().await?;
        let plan = OfferPlan::from(offer);
        let m_lines = sdp::media_sections(&plan.sdp);
        let kind_of = |mid: &str| m_lines.iter().find(|m| m.mid == mid).map(|m| m.kind);

        // Sources that are no longer wanted stop first, so their mids answer inactive (or
        // switch, if the core gave the mid another track).
        let wanted: BTreeMap<&str, &OutboundMid> =
            plan.outbound.iter().map(|o| (o.mid.as_str(), o)).collect();
        let stale: Vec<String> = self
            .outbound
            .iter()
            .filter(|(mid, slot)| {
                slot.live.as_ref().is_some_and(|live| {
                    wanted
                        .get(mid.as_str())
                        .is_none_or(|o| o.track_id != live.track_id)
                })
            })
            .map(|(mid, _)| mid.clone())
            .collect();
        for mid in stale {
            self.stop_slot(&mid).await;
        }

        // Idle slots the core recycled take their new source's stream id and send again; new
        // mids become transceivers before the offer is applied: webrtc pairs a remote recvonly
        // m-line with the first mid-less local sendonly transceiver of its kind, so adding them
        // in m-line order puts each on exactly the mid the core chose.
        // Slots whose (new) source goes live once the answer fixes the payload type.
        let mut starting: Vec<OutboundMid> = Vec::new();
        let mut new: Vec<(&OutboundMid, RtpCodecKind)> = Vec::new();
        for o in &plan.outbound {
            match self.outbound.get(&o.mid) {
                Some(slot) if slot.live.is_none() => {
                    restart_slot(slot, o)
                        .await
                        .map_err(|e| format!("recycle mid {}: {e}", o.mid))?;
                    starting.push(o.clone());
                }
                Some(_) => {}
                None => {
                    let kind = kind_of(&o.mid)
                        .ok_or_else(|| format!("mid {} is not an m-line of the offer", o.mid))?;
                    new.push((o, kind));
                }
            }
        }
        new.sort_by_key(|(o, _)| m_lines.iter().position(|m| m.mid == o.mid));
        let mut pending = Vec::new();
        for (o, kind) in new {
            let ssrc = rand::random::<u32>();
            let local = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                o.stream_id.clone(),
                o.track_id.clone(),
                o.track_id.clone(),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: codec(kind).rtp_codec,
                    ..Default::default()
                }],
            )));
            let transceiver = pc
                .add_transceiver_from_track(
                    Arc::clone(&local) as Arc<dyn TrackLocal>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        streams: vec![o.stream_id.clone()],
                        send_encodings: Vec::new(),
                    }),
                )
                .await
                .map_err(|e| format!("add transceiver for mid {}: {e}", o.mid))?;
            let clock_rate = codec(kind).rtp_codec.clock_rate;
            pending.push((o.clone(), local, ssrc, clock_rate, transceiver));
        }

        let offer = RTCSessionDescription::offer(plan.sdp.clone())
            .map_err(|e| format!("bad offer: {e}"))?;
        pc.set_remote_description(offer)
            .await
            .map_err(|e| format!("set_remote_description: {e}"))?;
        for (o, local, ssrc, clock_rate, transceiver) in pending {
            let mid = transceiver.mid().await.ok().flatten();
            if mid.as_deref() != Some(o.mid.as_str()) {
                return Err(format!(
                    "forwarded track {} landed on mid {mid:?}, not {}",
                    o.track_id, o.mid
                ));
            }
            let sender = transceiver
                .sender()
                .await
                .ok()
                .flatten()
                .ok_or_else(|| format!("mid {} has no sender", o.mid))?;
            self.outbound.insert(
                o.mid.clone(),
                OutSlot {
                    transceiver,
                    sender,
                    local,
                    ssrc,
                    continuity: Arc::new(Continuity::new(clock_rate)),
                    live: None,
                },
            );
            starting.push(o);
        }
        let answer = pc
            .create_answer(None)
            .await
            .map_err(|e| format!("create_answer: {e}"))?;
        pc.set_local_description(answer)
            .await
            .map_err(|e| format!("set_local_description: {e}"))?;
        let sdp = pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or("no local description after set_local_description")?;
        self.inbound = plan
            .inbound
            .iter()
            .map(|i| (i.mid.clone(), i.track_id.clone()))
            .collect();
        let ended: Vec<String> = self
            .ingress
            .keys()
            .filter(|t| !self.inbound.values().any(|v| v == *t))
            .cloned()
            .collect();
        for track_id in ended {
            self.end_ingress(&track_id);
        }

        // Sources go live only now that the answer fixes their payload type.
        let answer_lines = sdp::media_sections(&sdp);
        self.answered = answer_lines
            .iter()
            .map(|m| (m.mid.clone(), (m.kind, ExtIds::from_extmaps(&m.extmaps))))
            .collect();
        for o in starting {
            let pt = answer_lines
                .iter()
                .find(|m| m.mid == o.mid)
                .and_then(|m| m.payload_types.first().copied())
                .unwrap_or(NO_PAYLOAD_TYPE);
            let ext = self.answered.get(&o.mid).map(|a| a.1).unwrap_or_default();
            let slot = self.outbound.get(&o.mid).expect("placed above");
            let leg = Arc::new(Leg::new(
                self.peer.clone(),
                Arc::clone(&slot.local),
                slot.ssrc,
                pt,
                ext,
                Arc::clone(&slot.continuity),
            ));
            let fanout = self.inner.fanout(&o.track_id);
            fanout.attach(Arc::clone(&leg));
            let rtcp_task = self.spawn_feedback_relay(&leg, &fanout);
            // A new subscriber sees nothing until the next keyframe.
            if send_pli(&fanout).await {
                self.inner.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            let slot = self.outbound.get_mut(&o.mid).expect("placed above");
            slot.live = Some(LiveLeg {
                track_id: o.track_id,
                leg,
                rtcp_task,
            });
        }
        Ok(sdp)
    }

    /// Stops forwarding on `mid` and makes it inactive; the slot stays for a later source.
    async fn stop_slot(&mut self, mid: &str) {
        let Some(slot) = self.outbound.get_mut(mid) else {
            return;
        };
        let Some(live) = slot.live.take() else {
            return;
        };
        self.inner.release_leg(live);
        slot.continuity.pause();
        if let Err(e) = slot
            .transceiver
            .set_direction(RTCRtpTransceiverDirection::Inactive)
            .await
        {
            tracing::debug!(peer = %self.peer, mid = %Untrusted(mid), error = %Untrusted(&e), "set_direction failed");
        }
    }

    /// Relays PLI/FIR the subscriber sends about `leg` to the publisher of `fanout`.
    fn spawn_feedback_relay(&self, leg: &Arc<Leg>, fanout: &Arc<Fanout>) -> JoinHandle<()> {
        let track = Arc::clone(&leg.track);
        let fanout = Arc::clone(fanout);
        let counters = Arc::clone(&self.inner.counters);
        self.inner.rt.spawn(async move {
            while let Some(ev) = track.poll().await {
                let TrackLocalEvent::OnRtcpPacket(packets) = ev else {
                    continue;
                };
                if packets.iter().any(rtcp::is_keyframe_request) && fanout.source().is_some() {
                    // Counted before sending, so the count is visible once the PLI lands.
                    counters.relayed.fetch_add(1, Ordering::Relaxed);
                    send_pli(&fanout).await;
                }
            }
        })
    }

    async fn start_ingress(&mut self, remote: Arc<dyn TrackRemote>) {
        let Some(pc) = self.pc.clone() else { return };
        let mut mid = None;
        for t in pc.get_transceivers().await {
            let Ok(Some(rx)) = t.receiver().await else {
                continue;
            };
            if std::ptr::addr_eq(Arc::as_ptr(rx.track()), Arc::as_ptr(&remote)) {
                mid = t.mid().await.ok().flatten();
                break;
            }
        }
        let Some(mid) = mid else {
            tracing::debug!(peer = %self.peer, "remote track without a mid");
            return;
        };
        let Some(track_id) = self.inbound.get(&mid).cloned() else {
            tracing::debug!(peer = %self.peer, "remote track on a mid the plan does not publish");
            return;
        };
        let (kind, ext) = self
            .answered
            .get(&mid)
            .copied()
            .unwrap_or((RtpCodecKind::Unspecified, ExtIds::default()));
        // Voice activity needs the level the publisher measured: without the extension
        // negotiated there is nothing to judge.
        let mut vad = (kind == RtpCodecKind::Audio && ext.audio_level != 0)
            .then(|| Vad::new(self.peer.clone(), track_id.clone()));
        let ssrc = remote.ssrcs().await.first().copied().unwrap_or(0);
        let fanout = self.inner.fanout(&track_id);
        fanout.set_source(Some((Arc::clone(&remote), ssrc)));
        let counters = Arc::clone(&self.inner.counters);
        let tx = self.tx.clone();
        let sink = self.inner.sink.clone();
        let peer = self.peer.clone();
        let tid = track_id.clone();
        let task = self.inner.rt.spawn(async move {
            let mut started = false;
            loop {
                // While the track is speaking, a sender that goes quiet must end it.
                let deadline = vad.as_ref().and_then(Vad::idle_deadline);
                let ev = match deadline {
                    Some(at) => match net_tokio::time::timeout_at(at, remote.poll()).await {
                        Ok(ev) => ev,
                        Err(_) => {
                            if let Some(v) = vad.as_mut() {
                                v.idle(&sink);
                            }
                            continue;
                        }
                    },
                    None => remote.poll().await,
                };
                let Some(ev) = ev else { break };
                match ev {
                    TrackRemoteEvent::OnRtpPacket(pkt) => {
                        if !started {
                            started = true;
                            sink.send(PlaneEvent::TrackStarted {
                                peer: peer.clone(),
                                track_id: tid.clone(),
                            });
                            // Subscribers that joined before media flowed asked for a keyframe
                            // into the void.
                            if send_pli(&fanout).await {
                                counters.sent.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if let Some(v) = vad.as_mut() {
                            v.packet(&pkt, ext, &sink);
                        }
                        fanout.forward(pkt, ext, &counters);
                    }
                    TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError => break,
                    _ => {}
                }
            }
            let _ = tx.try_send(Cmd::InboundEnded(tid));
        });
        if let Some(old) = self.ingress.insert(track_id, task) {
            old.abort();
        }
    }

    fn end_ingress(&mut self, track_id: &str) {
        if let Some(task) = self.ingress.remove(track_id) {
            task.abort();
            if let Some(f) = self.inner.fanouts.lock().expect("plane lock").get(track_id) {
                f.set_source(None);
            }
            self.inner.release_fanout(track_id);
            self.emit(PlaneEvent::TrackEnded {
                peer: self.peer.clone(),
                track_id: track_id.to_owned(),
            });
        }
    }

    async fn teardown(mut self) {
        // Only the fanouts need to let go: the connection, with every slot, closes below.
        for slot in std::mem::take(&mut self.outbound).into_values() {
            if let Some(live) = slot.live {
                self.inner.release_leg(live);
            }
        }
        let published: Vec<String> = self.ingress.keys().cloned().collect();
        for track_id in published {
            self.end_ingress(&track_id);
        }
        if let Some(pc) = self.pc.take() {
            if let Err(e) = pc.close().await {
                tracing::debug!(peer = %self.peer, error = %e, "close failed");
            }
        }
        tracing::debug!(peer = %self.peer, "media plane peer removed");
    }
}

impl Drop for PeerTask {
    fn drop(&mut self) {
        LIVE_PEER_TASKS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One published audio track's voice activity, as the ingress loop runs it: the sans-IO
/// [`VoiceActivity`] on this task's clock, reporting its changes to the core.
struct Vad {
    peer: String,
    track_id: String,
    epoch: net_tokio::time::Instant,
    state: VoiceActivity,
}

impl Vad {
    fn new(peer: String, track_id: String) -> Self {
        Vad {
            peer,
            track_id,
            epoch: net_tokio::time::Instant::now(),
            state: VoiceActivity::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn idle_deadline(&self) -> Option<net_tokio::time::Instant> {
        let ms = self.state.idle_deadline()?;
        Some(self.epoch + std::time::Duration::from_millis(ms))
    }

    fn report(&self, change: Option<bool>, sink: &PlaneSink) {
        if let Some(speech) = change {
            sink.send(PlaneEvent::VoiceActivity {
                peer: self.peer.clone(),
                track_id: self.track_id.clone(),
                speech,
            });
        }
    }

    /// RFC 6464: the first byte's low seven bits are the level; a packet without the
    /// extension says nothing.
    fn packet(&mut self, pkt: &rtc::rtp::Packet, ext: ExtIds, sink: &PlaneSink) {
        let Some(level) = pkt
            .header
            .get_extension(ext.audio_level)
            .and_then(|b| b.first().copied())
        else {
            return;
        };
        let change = self.state.packet(self.now_ms(), level & 0x7f);
        self.report(change, sink);
    }

    fn idle(&mut self, sink: &PlaneSink) {
        let change = self.state.idle(self.now_ms());
        self.report(change, sink);
    }
}

/// Makes an idle slot send again, under the stream id of its new source (the browser groups a
/// publisher's audio and video by it). The local track keeps its id and SSRC: the connection
/// routes feedback by the id, and the sender's encoding holds the SSRC.
async fn restart_slot(slot: &OutSlot, o: &OutboundMid) -> Result<(), webrtc::error::Error> {
    let bound = slot.local.track().await;
    let media = MediaStreamTrack::new(
        o.stream_id.clone(),
        bound.track_id().to_owned(),
        bound.label().to_owned(),
        bound.kind(),
        bound.codings().to_vec(),
    );
    let carrier = Arc::new(TrackLocalStaticRTP::new(media));
    // webrtc hides the sender of a transceiver that does not send: direction first.
    slot.transceiver
        .set_direction(RTCRtpTransceiverDirection::Sendonly)
        .await?;
    slot.sender
        .replace_track(carrier as Arc<dyn TrackLocal>)
        .await
}

/// The one codec the SFU negotiates for `kind` (VP8 or Opus) with the feedback it relays.
pub fn codec(kind: RtpCodecKind) -> RTCRtpCodecParameters {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    match kind {
        RtpCodecKind::Audio => RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                rtcp_feedback: vec![fb("transport-cc", "")],
            },
            payload_type: OPUS_PT,
        },
        _ => RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: VP8.to_owned(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![
                    fb("goog-remb", ""),
                    fb("ccm", "fir"),
                    fb("nack", ""),
                    fb("nack", "pli"),
                    fb("transport-cc", ""),
                ],
            },
            payload_type: VP8_PT,
        },
    }
}

/// VP8 + Opus only, as the reference videoroom does: every leg negotiates the same codecs,
/// so forwarding never transcodes and only the payload type number can differ.
///
/// Header extensions: the audio level (voice activity, and forwarded so a subscriber's
/// `getSynchronizationSources()` reports it) and abs-send-time (stamped per hop) on every leg
/// that negotiates them.
pub fn media_engine() -> Result<MediaEngine, webrtc::error::Error> {
    let mut me = MediaEngine::default();
    me.register_codec(codec(RtpCodecKind::Audio), RtpCodecKind::Audio)?;
    me.register_codec(codec(RtpCodecKind::Video), RtpCodecKind::Video)?;
    let ext = |uri: &str| RTCRtpHeaderExtensionCapability {
        uri: uri.to_owned(),
    };
    me.register_header_extension(ext(AUDIO_LEVEL_URI), RtpCodecKind::Audio, None)?;
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        me.register_header_extension(ext(ABS_SEND_TIME_URI), kind, None)?;
    }
    Ok(me)
}

/// The interceptor chain every SFU connection uses: the defaults (NACK, reports, TWCC) plus
/// the keyframe-request forwarder.
pub fn interceptors(me: &mut MediaEngine) -> Result<Registry, webrtc::error::Error> {
    let registry = register_default_interceptors(Registry::new(), me)?;
    Ok(registry.with(
        Slot::from(rtcp::SLOT),
        rtcp::KeyframeRequestForwarder::default(),
    ))
}

async fn build_connection(
    cfg: &PlaneConfig,
    peer: &str,
    tx: mpsc::Sender<Cmd>,
) -> Result<Arc<dyn PeerConnection>, webrtc::error::Error> {
    let mut me = media_engine()?;
    let registry = interceptors(&mut me)?;
    // No mDNS: the SFU's candidates are plain IPs and a client's `.local` candidates are never
    // resolved (relay-only clients have none worth reaching), so no connection opens a
    // multicast socket on the host's network.
    let se = SettingEngineBuilder::new()
        .with_include_loopback_candidate(true)
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled);
    let addrs: Vec<SocketAddr> = cfg
        .ice_ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, 0))
        .collect();
    LIVE_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let handler = Arc::new(Handler {
        peer: peer.to_owned(),
        tx,
    });
    let runtime: Arc<dyn webrtc::runtime::Runtime> =
        Arc::new(FabricRuntime::new(Arc::clone(&cfg.fabric)));
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .with_setting_engine(se.build())
        .with_handler(handler as Arc<dyn PeerConnectionEventHandler>)
        .with_runtime(runtime)
        .with_udp_addrs(addrs)
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// Forwards connection events into the peer's queue, so they are handled in order with the
/// commands. Holds no reference to the connection (no cycle through the handler).
struct Handler {
    peer: String,
    tx: mpsc::Sender<Cmd>,
}

impl Drop for Handler {
    fn drop(&mut self) {
        LIVE_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Handler {
    fn push(&self, cmd: Cmd) {
        if self.tx.try_send(cmd).is_err() {
            tracing::debug!(peer = %self.peer, "media plane: peer queue full or closed; event dropped");
        }
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => self.push(Cmd::LocalCandidate(init)),
            Err(e) => tracing::debug!(error = %e, "unserializable local candidate"),
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.push(Cmd::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.push(Cmd::Track(track));
    }
}
