//! The real media plane: an SFU on webrtc-rs's sans-IO core `rtc` 0.21 (compiled only with the
//! `media-webrtc` feature; the simulation runs the fake plane instead).
//!
//! The plane itself is [`worker`]: rooms spread over worker threads, each one event loop that
//! drives every `RTCPeerConnection` of its rooms and steps the integrated TURN server's core.
//! This module holds what the workers share: the codecs and header extensions the SFU
//! negotiates, its interceptor chain, the per-leg packet rewrite ([`forward`]), the keyframe
//! request interceptor ([`rtcp`]) and the reading of SDP m-lines ([`sdp`]).
//!
//! Per peer the plane keeps one connection (the browser always offers, this side always
//! answers) and one sender (SSRC) per subscriber m-line, kept for the connection's life while the
//! core recycles the mid for successive tracks. A forwarded packet gets the subscriber leg's
//! SSRC and negotiated payload type, sequence numbers and timestamps continuous across those
//! tracks, and its audio level and a fresh abs-send-time under the leg's own extension ids
//! (nothing else), because `rtc` *rejects* rather than rewrites packets that do not match the
//! leg (research: sfu_perf.md §2). Subscriber PLI/FIR is relayed to the publisher, and every new
//! subscription asks the publisher for a keyframe. Each published audio track's levels feed a
//! [`VoiceActivity`](crate::engine::vad::VoiceActivity), whose changes go to the core as
//! [`PlaneEvent::VoiceActivity`](crate::engine::PlaneEvent::VoiceActivity).
//!
//! It must never: decide anything about negotiation (which mid carries what, stream ids, when
//! to offer: the negotiation core decides, the plane only executes a
//! [`PlaneOffer`](crate::engine::PlaneOffer)); block the caller; keep anything of a peer after
//! its removal (connection, legs, TURN allocations).

mod forward;
mod rtcp;
mod sdp;
pub mod worker;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rtc::interceptor::Registry;
use rtc::interceptor::Slot;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};

use crate::engine::plane::PlaneFactory;
use crate::fabric::Fabric;
use crate::turn::TurnServer;

pub use forward::{
    abs_send_time, rewrite, Carried, Continuity, ExtIds, ABS_SEND_TIME_URI, AUDIO_LEVEL_URI,
    NO_PAYLOAD_TYPE,
};
pub use worker::{live_objects, LiveObjects};

pub const VP8: &str = "video/VP8";
pub const OPUS: &str = "audio/opus";
const VP8_PT: u8 = 96;
const OPUS_PT: u8 = 111;

/// How the plane binds ICE and which TURN server it hands out.
#[derive(Clone)]
pub struct PlaneConfig {
    /// Each worker binds one UDP socket on the first address (port chosen by the OS), shared by
    /// all its connections. Browsers are relay-only, so only the integrated TURN server (on
    /// this host) must reach it; that is why there is no external-address setting here.
    pub ice_ips: Vec<IpAddr>,
    /// The integrated TURN server: the workers step its core (both directions of the media),
    /// and a removed peer's allocations on it are closed.
    pub turn: Option<Arc<TurnServer>>,
    /// Registers every worker's socket here: it sends to the TURN server's relays only (see
    /// [`crate::fabric`]); a fabric without a TURN server in it leaves the SFU talking to no
    /// one.
    pub fabric: Arc<Fabric>,
    /// The server's counters (forwarded packets and bytes are added there too).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Default for PlaneConfig {
    fn default() -> Self {
        PlaneConfig {
            ice_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
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
    /// Packets a leg could not take (no payload type yet, or its connection refused it).
    pub dropped: u64,
    /// PLI/FIR from subscribers relayed to publishers.
    pub keyframe_requests_relayed: u64,
    /// PLIs sent to publishers because someone subscribed or the core asked.
    pub keyframe_requests_sent: u64,
}

/// A [`PlaneFactory`] building each room's plane on `workers` new worker threads.
pub fn factory(cfg: PlaneConfig, workers: usize) -> std::io::Result<PlaneFactory> {
    Ok(worker::factory(worker::Workers::start(cfg, workers)?))
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
pub fn media_engine() -> Result<MediaEngine, rtc::shared::error::Error> {
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
pub fn interceptors(me: &mut MediaEngine) -> Result<Registry, rtc::shared::error::Error> {
    let registry = register_default_interceptors(Registry::new(), me)?;
    Ok(registry.with(
        Slot::from(rtcp::SLOT),
        rtcp::KeyframeRequestForwarder::default(),
    ))
}
