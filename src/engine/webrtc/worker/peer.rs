//! One peer on a worker: its sans-IO `RTCPeerConnection` and what the plane keeps beside it
//! (which mid publishes which track, the sending slots, the published tracks' ingress state).
//!
//! It owns the translation of a [`PlaneOffer`] into calls on the connection, and of the
//! connection's events into what changed. It must never touch another peer or a fanout (it
//! reports [`OfferChanges`] and the worker rewires), read a socket, or block: everything here
//! runs inside the worker's loop, between two datagrams.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId,
    RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;

use super::super::forward::{Continuity, ExtIds, NO_PAYLOAD_TYPE};
use super::super::{codec, interceptors, media_engine, sdp};
use crate::engine::plane::{MLineRole, PlaneOffer};
use crate::engine::vad::VoiceActivity;
use crate::logsafe::WarnBudget;

/// An offer containing this panics inside the worker (unit tests of the panic boundary only).
#[cfg(test)]
pub(super) const PANIC_FAILPOINT: &str = "a=x-panic-in-the-media-stack";

/// A published track whose media the connection announced (`OnTrack`).
pub(super) struct Ingress {
    pub track_id: Arc<str>,
    /// The publisher's extension ids on this m-line.
    pub ext: ExtIds,
    /// Only for audio whose publisher negotiated the audio level.
    pub vad: Option<VoiceActivity>,
    pub started: bool,
}

/// One of this peer's `recvonly` mids the plane sends on. Kept for the connection's life: the
/// core recycles the mid for later tracks, and the SSRC must stay.
pub(super) struct OutSlot {
    pub mid: String,
    pub transceiver: RTCRtpTransceiverId,
    pub sender: RTCRtpSenderId,
    pub ssrc: u32,
    /// The local track's id: the connection tags the subscriber's feedback with it.
    pub local_track: String,
    pub continuity: Continuity,
    /// The [`Continuity`] source of what is forwarded now.
    pub source: u64,
    /// The published track forwarded on it, `None` while the mid is inactive.
    pub live: Option<Arc<str>>,
}

/// What an applied offer changed outside this peer.
#[derive(Default)]
pub(super) struct OfferChanges {
    pub answer: String,
    /// Slots that stopped forwarding `track` (index, track).
    pub detached: Vec<(usize, Arc<str>)>,
    /// Slots that now forward a track: (index, payload type, extension ids).
    pub attached: Vec<(usize, u8, ExtIds)>,
    /// Published tracks this offer no longer publishes.
    pub ended: Vec<Ingress>,
}

/// What a connection event means to the plane.
pub(super) enum PeerEvent {
    Connected,
    Failed,
    /// Media of a published track was announced; the worker makes it the track's source.
    TrackOpened {
        track_id: Arc<str>,
        receiver: RTCRtpReceiverId,
        ssrc: u32,
    },
    TrackClosed(Ingress),
}

pub(super) struct Peer {
    pub room: u64,
    pub id: String,
    pub pc: Option<RTCPeerConnection>,
    /// The local ICE username fragment of the latest answer.
    pub ufrag: Option<String>,
    /// The host candidate given to the connection (`candidate:…`), once its first offer came.
    pub host_candidate: Option<String>,
    /// mid → published track id, from the latest applied offer.
    inbound: BTreeMap<String, Arc<str>>,
    /// mid → kind and extension ids, from the latest answer.
    answered: BTreeMap<String, (RtpCodecKind, ExtIds)>,
    /// By the connection's remote track id.
    pub ingress: HashMap<String, Ingress>,
    pub outbound: Vec<OutSlot>,
    pub warnings: WarnBudget,
    /// In the worker's flush list.
    pub dirty: bool,
    /// The connection's next timer.
    pub timeout: Option<Instant>,
}

impl Peer {
    pub fn new(room: u64, id: String) -> Self {
        Peer {
            room,
            id,
            pc: None,
            ufrag: None,
            host_candidate: None,
            inbound: BTreeMap::new(),
            answered: BTreeMap::new(),
            ingress: HashMap::new(),
            outbound: Vec::new(),
            warnings: WarnBudget::per_peer(),
            dirty: false,
            timeout: None,
        }
    }

    /// The connection, built at the first offer. Returned as the field itself, so the caller
    /// can still use the peer's other fields while holding it.
    fn connection(
        pc: &mut Option<RTCPeerConnection>,
        now: Instant,
    ) -> Result<&mut RTCPeerConnection, String> {
        if pc.is_none() {
            let mut me = media_engine().map_err(|e| format!("media engine: {e}"))?;
            let registry = interceptors(&mut me).map_err(|e| format!("interceptors: {e}"))?;
            let se = SettingEngineBuilder::new()
                .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                .build();
            let built = RTCPeerConnectionBuilder::new()
                .with_media_engine(me)
                .with_interceptor_registry(registry)
                .with_setting_engine(se)
                .build(now)
                .map_err(|e| format!("cannot create the peer connection: {e}"))?;
            *pc = Some(built);
        }
        Ok(pc.as_mut().expect("set above"))
    }

    /// Applies `offer` and answers it; `local` is the worker's socket, the one host candidate
    /// every connection of the worker has.
    pub fn apply_offer(
        &mut self,
        offer: PlaneOffer,
        local: std::net::SocketAddr,
        now: Instant,
    ) -> Result<OfferChanges, String> {
        #[cfg(test)]
        if offer.sdp.contains(PANIC_FAILPOINT) {
            panic!("failpoint: {PANIC_FAILPOINT}");
        }
        let mut changes = OfferChanges::default();
        let m_lines = sdp::media_sections(&offer.sdp);
        let mut inbound = BTreeMap::new();
        let mut wanted: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
        for m in &offer.mlines {
            match &m.role {
                MLineRole::Inbound { track_id, .. } => {
                    inbound.insert(m.mid.clone(), Arc::<str>::from(track_id.as_str()));
                }
                MLineRole::Outbound {
                    track_id,
                    stream_id,
                    ..
                } => {
                    wanted.insert(&m.mid, (track_id, stream_id));
                }
                MLineRole::Inactive => {}
            }
        }
        let pc = Self::connection(&mut self.pc, now)?;

        // Sources no longer wanted stop first, so their mids answer inactive (or switch).
        for (i, slot) in self.outbound.iter_mut().enumerate() {
            let Some(live) = &slot.live else { continue };
            if wanted
                .get(slot.mid.as_str())
                .is_some_and(|(t, _)| **t == **live)
            {
                continue;
            }
            changes
                .detached
                .push((i, slot.live.take().expect("checked")));
            slot.continuity.pause();
            if let Some(mut t) = pc.rtp_transceiver(slot.transceiver) {
                t.set_direction(RTCRtpTransceiverDirection::Inactive);
            }
        }

        // Idle slots the core recycled take their new source's stream id and send again; new
        // mids become transceivers, in m-line order, before the offer is applied: a remote
        // recvonly m-line pairs with the first mid-less local sendonly transceiver of its kind.
        let mut starting: Vec<(usize, Arc<str>)> = Vec::new();
        let mut new: Vec<(&str, &str, &str, RtpCodecKind)> = Vec::new();
        for (mid, (track_id, stream_id)) in &wanted {
            match self.outbound.iter().position(|s| s.mid == *mid) {
                Some(i) if self.outbound[i].live.is_none() => {
                    let slot = &self.outbound[i];
                    if let Some(mut s) = pc.rtp_sender(slot.sender) {
                        s.set_streams(vec![(*stream_id).to_owned()]);
                    }
                    if let Some(mut t) = pc.rtp_transceiver(slot.transceiver) {
                        t.set_direction(RTCRtpTransceiverDirection::Sendonly);
                    }
                    starting.push((i, Arc::from(*track_id)));
                }
                Some(_) => {}
                None => {
                    let kind = m_lines
                        .iter()
                        .find(|m| m.mid == *mid)
                        .map(|m| m.kind)
                        .ok_or_else(|| format!("mid {mid} is not an m-line of the offer"))?;
                    new.push((mid, track_id, stream_id, kind));
                }
            }
        }
        new.sort_by_key(|(mid, ..)| m_lines.iter().position(|m| m.mid == *mid));
        let mut pending = Vec::new();
        for (mid, track_id, stream_id, kind) in new {
            let ssrc = rand::random::<u32>();
            let track = MediaStreamTrack::new(
                stream_id.to_owned(),
                track_id.to_owned(),
                track_id.to_owned(),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: codec(kind).rtp_codec,
                    ..Default::default()
                }],
            );
            let id = pc
                .add_transceiver_from_track(
                    track,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        streams: vec![stream_id.to_owned()],
                        send_encodings: Vec::new(),
                    }),
                )
                .map_err(|e| format!("add transceiver for mid {mid}: {e}"))?;
            pending.push((mid, track_id, ssrc, codec(kind).rtp_codec.clock_rate, id));
        }

        let desc = RTCSessionDescription::offer(offer.sdp.clone())
            .map_err(|e| format!("bad offer: {e}"))?;
        pc.set_remote_description(now, desc)
            .map_err(|e| format!("set_remote_description: {e}"))?;
        if self.host_candidate.is_none() {
            let candidate = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: "udp".to_owned(),
                    address: local.ip().to_string(),
                    port: local.port(),
                    component: 1,
                    ..Default::default()
                },
                ..Default::default()
            }
            .new_candidate_host()
            .map_err(|e| format!("host candidate: {e}"))?;
            let init = RTCIceCandidate::from(&candidate)
                .to_json()
                .map_err(|e| format!("host candidate: {e}"))?;
            let line = init.candidate.clone();
            pc.add_local_candidate(init)
                .map_err(|e| format!("add_local_candidate: {e}"))?;
            // No more candidates will come: the browser need not wait for them.
            let _ = pc.add_local_candidate(RTCIceCandidateInit::default());
            self.host_candidate = Some(line);
        }
        for (mid, track_id, ssrc, clock_rate, id) in pending {
            let (landed, sender) = match pc.rtp_transceiver(id) {
                Some(t) => (t.mid().clone(), t.sender()),
                None => (None, None),
            };
            if landed.as_deref() != Some(mid) {
                return Err(format!(
                    "forwarded track {track_id} landed on mid {landed:?}, not {mid}"
                ));
            }
            let sender = sender.ok_or_else(|| format!("mid {mid} has no sender"))?;
            self.outbound.push(OutSlot {
                mid: mid.to_owned(),
                transceiver: id,
                sender,
                ssrc,
                local_track: track_id.to_owned(),
                continuity: Continuity::new(clock_rate),
                source: 0,
                live: None,
            });
            starting.push((self.outbound.len() - 1, Arc::from(track_id)));
        }
        let answer = pc
            .create_answer(None)
            .map_err(|e| format!("create_answer: {e}"))?;
        pc.set_local_description(now, answer)
            .map_err(|e| format!("set_local_description: {e}"))?;
        let answer = pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or("no local description after set_local_description")?;

        self.inbound = inbound;
        let gone: Vec<String> = self
            .ingress
            .iter()
            .filter(|(_, i)| !self.inbound.values().any(|t| *t == i.track_id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            changes.ended.extend(self.ingress.remove(&k));
        }

        // Sources go live only now that the answer fixes their payload type.
        let answer_lines = sdp::media_sections(&answer);
        self.answered = answer_lines
            .iter()
            .map(|m| (m.mid.clone(), (m.kind, ExtIds::from_extmaps(&m.extmaps))))
            .collect();
        for (i, track_id) in starting {
            let slot = &mut self.outbound[i];
            let line = answer_lines.iter().find(|m| m.mid == slot.mid);
            let pt = line
                .and_then(|m| m.payload_types.first().copied())
                .unwrap_or(NO_PAYLOAD_TYPE);
            let ext = line
                .map(|m| ExtIds::from_extmaps(&m.extmaps))
                .unwrap_or_default();
            slot.source = slot.continuity.next_source();
            slot.live = Some(track_id);
            changes.attached.push((i, pt, ext));
        }
        self.ufrag = answer
            .lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .map(|u| u.trim().to_owned());
        changes.answer = answer;
        Ok(changes)
    }

    /// The connection's pending events, as the plane reads them.
    pub fn events(&mut self, out: &mut Vec<PeerEvent>) {
        let Some(pc) = self.pc.as_mut() else { return };
        while let Some(ev) = pc.poll_event() {
            match ev {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                    RTCPeerConnectionState::Connected => out.push(PeerEvent::Connected),
                    RTCPeerConnectionState::Failed => out.push(PeerEvent::Failed),
                    _ => {}
                },
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    let ids: Vec<RTCRtpTransceiverId> = pc.get_transceivers().collect();
                    let mid = ids.into_iter().find_map(|id| {
                        let t = pc.rtp_transceiver(id)?;
                        (t.receiver() == Some(init.receiver_id)).then(|| t.mid().clone())?
                    });
                    let Some(mid) = mid else { continue };
                    let Some(track_id) = self.inbound.get(&mid).cloned() else {
                        continue;
                    };
                    let (kind, ext) = self
                        .answered
                        .get(&mid)
                        .copied()
                        .unwrap_or((RtpCodecKind::Unspecified, ExtIds::default()));
                    let vad = (kind == RtpCodecKind::Audio && ext.audio_level != 0)
                        .then(VoiceActivity::new);
                    self.ingress.insert(
                        init.track_id,
                        Ingress {
                            track_id: Arc::clone(&track_id),
                            ext,
                            vad,
                            started: false,
                        },
                    );
                    out.push(PeerEvent::TrackOpened {
                        track_id,
                        receiver: init.receiver_id,
                        ssrc: init.ssrc,
                    });
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(id)) => {
                    if let Some(i) = self.ingress.remove(&id) {
                        out.push(PeerEvent::TrackClosed(i));
                    }
                }
                _ => {}
            }
        }
    }

    /// Forgets the connection and what was negotiated on it; the next offer starts afresh.
    pub fn reset_connection(&mut self) {
        self.pc = None;
        self.ufrag = None;
        self.host_candidate = None;
        self.inbound.clear();
        self.answered.clear();
        self.ingress.clear();
        self.outbound.clear();
        self.timeout = None;
    }

    /// When the worker must step this peer next: its connection's timer, or the moment a
    /// speaking track of it that went quiet must be judged silent (VAD times are ms after
    /// `epoch`).
    pub fn deadline(&self, epoch: Instant) -> Option<Instant> {
        let vad = self
            .ingress
            .values()
            .filter_map(|i| i.vad.as_ref()?.idle_deadline())
            .min()
            .map(|ms| epoch + std::time::Duration::from_millis(ms));
        [self.timeout, vad].into_iter().flatten().min()
    }

    /// The slot whose local track is `local_track`.
    pub fn slot_of(&self, local_track: &str) -> Option<&OutSlot> {
        self.outbound.iter().find(|s| s.local_track == local_track)
    }
}
