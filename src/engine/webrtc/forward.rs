//! The forwarding hot path: one published track's packets to every subscriber leg.
//!
//! Owns the per-leg rewrite (SSRC, payload type, header extensions) and the rule that a leg
//! which cannot take a packet right now loses it instead of stalling the publisher's loop.
//! It must never await on a leg, take a lock shared with another publisher's track, or
//! allocate per leg beyond the packet header clone.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::FutureExt;
use rtc::rtp;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::TrackRemote;

use super::Counters;

/// A leg whose answer did not name a payload type yet forwards nothing.
pub const NO_PAYLOAD_TYPE: u8 = u8::MAX;

/// One subscriber's copy of one published track.
pub struct Leg {
    pub subscriber: String,
    pub track: Arc<TrackLocalStaticRTP>,
    pub ssrc: u32,
    payload_type: AtomicU8,
}

impl Leg {
    pub fn new(
        subscriber: String,
        track: Arc<TrackLocalStaticRTP>,
        ssrc: u32,
        payload_type: u8,
    ) -> Self {
        Leg {
            subscriber,
            track,
            ssrc,
            payload_type: AtomicU8::new(payload_type),
        }
    }

    pub fn payload_type(&self) -> u8 {
        self.payload_type.load(Ordering::Relaxed)
    }
}

type Source = (Arc<dyn TrackRemote>, u32);

/// A published track and the legs it is forwarded to.
pub struct Fanout {
    pub track_id: String,
    /// Copy-on-write: the forwarding loop clones the `Arc` once per packet and never holds the
    /// lock while sending.
    legs: RwLock<Arc<Vec<Arc<Leg>>>>,
    /// The publisher's track and media SSRC, for keyframe requests.
    source: Mutex<Option<Source>>,
}

impl Fanout {
    pub fn new(track_id: String) -> Self {
        super::LIVE_FANOUTS.fetch_add(1, Ordering::Relaxed);
        Fanout {
            track_id,
            legs: RwLock::new(Arc::new(Vec::new())),
            source: Mutex::new(None),
        }
    }

    pub fn attach(&self, leg: Arc<Leg>) {
        let mut legs = self.legs.write().expect("fanout lock");
        let mut next = Vec::clone(&legs);
        next.push(leg);
        *legs = Arc::new(next);
    }

    pub fn detach(&self, leg: &Arc<Leg>) {
        let mut legs = self.legs.write().expect("fanout lock");
        let next: Vec<_> = legs
            .iter()
            .filter(|l| !Arc::ptr_eq(l, leg))
            .cloned()
            .collect();
        *legs = Arc::new(next);
    }

    pub fn legs(&self) -> Arc<Vec<Arc<Leg>>> {
        Arc::clone(&self.legs.read().expect("fanout lock"))
    }

    pub fn set_source(&self, source: Option<Source>) {
        *self.source.lock().expect("fanout lock") = source;
    }

    pub fn source(&self) -> Option<Source> {
        self.source.lock().expect("fanout lock").clone()
    }

    pub fn is_unused(&self) -> bool {
        self.source.lock().expect("fanout lock").is_none()
            && self.legs.read().expect("fanout lock").is_empty()
    }

    /// Sends `pkt` to every leg.
    pub(crate) fn forward(&self, pkt: rtp::Packet, counters: &Counters) {
        let legs = self.legs();
        for leg in legs.iter() {
            let Some(out) = rewrite(&pkt, leg.ssrc, leg.payload_type()) else {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            // `write_rtp` only waits when the connection's driver queue is full; polling it
            // once and dropping it then means that leg loses this packet, not everyone.
            match leg.track.write_rtp(out).now_or_never() {
                Some(Ok(())) => counters.forwarded.fetch_add(1, Ordering::Relaxed),
                _ => counters.dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        super::LIVE_FANOUTS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The packet as one leg must send it, or `None` if the leg has no payload type yet.
///
/// webrtc 0.21 rejects a packet whose SSRC is not the leg's, whose payload type was not
/// negotiated on the leg, or which carries an extension id the leg did not negotiate; the
/// publisher's ids mean nothing on the subscriber's leg, so extensions are dropped (the leg's
/// own interceptors add transport-cc). Sequence numbers and timestamps pass unchanged: a leg
/// only ever carries one source.
pub fn rewrite(pkt: &rtp::Packet, ssrc: u32, payload_type: u8) -> Option<rtp::Packet> {
    if payload_type == NO_PAYLOAD_TYPE {
        return None;
    }
    let mut out = pkt.clone();
    out.header.ssrc = ssrc;
    out.header.payload_type = payload_type;
    out.header.extension = false;
    out.header.extension_profile = 0;
    out.header.extensions.clear();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_sets_ssrc_and_pt_strips_extensions_and_keeps_the_rest() {
        let mut pkt = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                marker: true,
                payload_type: 120,
                sequence_number: 7,
                timestamp: 9000,
                ssrc: 1,
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(b"payload"),
        };
        pkt.header
            .set_extension(3, bytes::Bytes::from_static(&[1, 2]))
            .unwrap();
        assert!(pkt.header.extension);
        let out = rewrite(&pkt, 42, 96).unwrap();
        assert_eq!(out.header.ssrc, 42);
        assert_eq!(out.header.payload_type, 96);
        assert!(!out.header.extension);
        assert!(out.header.extensions.is_empty());
        assert_eq!(
            (
                out.header.sequence_number,
                out.header.timestamp,
                out.header.marker
            ),
            (7, 9000, true)
        );
        assert_eq!(out.payload, pkt.payload);
        assert!(rewrite(&pkt, 42, NO_PAYLOAD_TYPE).is_none());
    }
}
