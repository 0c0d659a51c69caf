//! What a forwarded packet becomes on one subscriber leg.
//!
//! Owns the per-leg rewrite (SSRC, payload type, header extensions remapped to the leg's own
//! ids) and sequence/timestamp continuity when a recycled m-line switches source. The worker
//! loop ([`super::worker`]) decides which legs get a packet.
//! It must never do IO, read a clock other than what it is handed, or allocate per leg beyond
//! the packet header clone.

use std::time::Instant;

use bytes::Bytes;
use rtc::rtp;
use rtc::rtp::header::{Extension, EXTENSION_PROFILE_ONE_BYTE, EXTENSION_PROFILE_TWO_BYTE};

/// A leg whose answer did not name a payload type yet forwards nothing.
pub const NO_PAYLOAD_TYPE: u8 = u8::MAX;

pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
pub const ABS_SEND_TIME_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";

/// The ids one side of a connection negotiated for the header extensions a forwarded packet
/// carries (0: not negotiated). Ids are per m-line and per peer, so a publisher's mean nothing
/// on a subscriber's leg: forwarding maps each by what it means.
///
/// Transport-wide sequence numbers are not among them: they number one hop's packets for
/// that hop's congestion feedback, so the publisher's would be meaningless on a leg (the
/// server reports them to the publisher; the legs carry none while the server does no
/// send-side estimation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtIds {
    pub audio_level: u8,
    pub abs_send_time: u8,
}

impl ExtIds {
    /// From an m-line's `a=extmap` entries (id, URI).
    pub fn from_extmaps<'a>(extmaps: impl IntoIterator<Item = &'a (u8, String)>) -> Self {
        let mut ids = ExtIds::default();
        for (id, uri) in extmaps {
            match uri.as_str() {
                AUDIO_LEVEL_URI => ids.audio_level = *id,
                ABS_SEND_TIME_URI => ids.abs_send_time = *id,
                _ => {}
            }
        }
        ids
    }
}

/// What one packet takes to every leg, read or made once per packet: the publisher's audio
/// level and the send time (abs-send-time is the sender's clock on each hop, so the server
/// stamps its own, as a sender must).
#[derive(Default)]
pub struct Carried {
    pub audio_level: Option<Bytes>,
    pub abs_send_time: Option<Bytes>,
}

impl Carried {
    /// What `pkt` (with the publisher's ids `from`) carries; stamped with `send_time` where a
    /// leg wants it (`None`: no leg negotiated abs-send-time, so no clock read or buffer).
    pub fn of(pkt: &rtp::Packet, from: ExtIds, send_time: Option<std::time::SystemTime>) -> Self {
        let get = |id: u8| (id != 0).then(|| pkt.header.get_extension(id)).flatten();
        Carried {
            audio_level: get(from.audio_level),
            abs_send_time: send_time.map(abs_send_time),
        }
    }
}

/// The 24-bit abs-send-time value of `now`: seconds in 6.18 fixed point, modulo 64 s.
pub fn abs_send_time(now: std::time::SystemTime) -> Bytes {
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let fixed = ((since.as_secs() & 0x3f) << 18)
        | ((u64::from(since.subsec_nanos()) << 18) / 1_000_000_000);
    let b = fixed.to_be_bytes();
    Bytes::copy_from_slice(&b[5..8])
}

/// Keeps one outgoing SSRC's sequence numbers and timestamps continuous across sources.
///
/// A recycled m-line keeps its sender and SSRC (webrtc 0.21 binds a local track to one sender
/// for good), so when it starts carrying another publisher the subscriber must see numbering
/// that moves on from where the last source stopped, or its jitter buffer would take the new
/// packets for stale or wildly reordered ones. The first source passes through unchanged.
pub struct Continuity {
    clock_rate: u32,
    state: ContinuityState,
}

#[derive(Default)]
struct ContinuityState {
    sources: u64,
    /// The source the offsets below were computed for.
    current: Option<u64>,
    seq_offset: u16,
    ts_offset: u32,
    last_seq: u16,
    last_ts: u32,
    /// When the previous source stopped, so the timestamp gap matches the pause.
    paused_at: Option<Instant>,
}

impl Continuity {
    pub fn new(clock_rate: u32) -> Self {
        Continuity {
            clock_rate,
            state: ContinuityState::default(),
        }
    }

    /// A new source starts on this SSRC: the id its packets are mapped under.
    pub fn next_source(&mut self) -> u64 {
        self.state.sources += 1;
        self.state.sources
    }

    /// The current source stopped sending on this SSRC.
    pub fn pause(&mut self) {
        self.state.paused_at = Some(Instant::now());
    }

    /// Rewrites `header`'s sequence number and timestamp for `source`.
    pub fn map(&mut self, source: u64, header: &mut rtp::header::Header) {
        let s = &mut self.state;
        if s.current != Some(source) {
            if s.current.is_some() {
                let paused = s.paused_at.map_or(0, |t| t.elapsed().as_millis());
                let gap = u32::try_from(paused * u128::from(self.clock_rate) / 1000)
                    .unwrap_or(u32::MAX)
                    .max(1);
                s.seq_offset = s
                    .last_seq
                    .wrapping_add(1)
                    .wrapping_sub(header.sequence_number);
                s.ts_offset = s.last_ts.wrapping_add(gap).wrapping_sub(header.timestamp);
            }
            s.current = Some(source);
        }
        header.sequence_number = header.sequence_number.wrapping_add(s.seq_offset);
        header.timestamp = header.timestamp.wrapping_add(s.ts_offset);
        s.last_seq = header.sequence_number;
        s.last_ts = header.timestamp;
    }
}

/// The packet as one leg must send it, or `None` if the leg has no payload type yet.
///
/// webrtc 0.21 rejects a packet whose SSRC is not the leg's, whose payload type was not
/// negotiated on the leg, or which carries an extension id the leg did not negotiate; so the
/// packet gets the leg's SSRC and payload type, and exactly the extensions in `carried` that
/// the leg negotiated (`to`), under the leg's ids. Sequence numbers and timestamps are the
/// leg's [`Continuity`]'s business.
pub fn rewrite(
    pkt: &rtp::Packet,
    ssrc: u32,
    payload_type: u8,
    to: ExtIds,
    carried: &Carried,
) -> Option<rtp::Packet> {
    if payload_type == NO_PAYLOAD_TYPE {
        return None;
    }
    let mut extensions = Vec::new();
    for (id, payload) in [
        (to.audio_level, &carried.audio_level),
        (to.abs_send_time, &carried.abs_send_time),
    ] {
        if let (1.., Some(payload)) = (id, payload) {
            extensions.push(Extension {
                id,
                payload: payload.clone(),
            });
        }
    }
    let h = &pkt.header;
    // Ids above 14 only fit the two-byte form (RFC 8285).
    let extension_profile = match extensions.iter().map(|e| e.id).max() {
        None => 0,
        Some(..=14) => EXTENSION_PROFILE_ONE_BYTE,
        Some(_) => EXTENSION_PROFILE_TWO_BYTE,
    };
    let header = rtp::header::Header {
        version: h.version,
        padding: h.padding,
        extension: !extensions.is_empty(),
        marker: h.marker,
        payload_type,
        sequence_number: h.sequence_number,
        timestamp: h.timestamp,
        ssrc,
        csrc: h.csrc.clone(),
        extension_profile,
        extensions,
        extensions_padding: 0,
    };
    Some(rtp::Packet {
        header,
        payload: pkt.payload.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_sets_ssrc_and_pt_maps_extensions_to_the_legs_ids_and_keeps_the_rest() {
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
        // The publisher's ids: audio level 1, abs-send-time 3, transport-cc 5.
        let from = ExtIds {
            audio_level: 1,
            abs_send_time: 3,
        };
        for (id, value) in [(1, &[0x9e][..]), (3, &[1, 2, 3]), (5, &[0, 9])] {
            pkt.header
                .set_extension(id, bytes::Bytes::copy_from_slice(value))
                .unwrap();
        }
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(65_500);
        let carried = Carried::of(&pkt, from, Some(now));
        // A leg with other ids for both.
        let to = ExtIds {
            audio_level: 4,
            abs_send_time: 2,
        };
        let out = rewrite(&pkt, 42, 96, to, &carried).unwrap();
        assert_eq!(out.header.ssrc, 42);
        assert_eq!(out.header.payload_type, 96);
        assert!(out.header.extension);
        assert_eq!(out.header.extension_profile, EXTENSION_PROFILE_ONE_BYTE);
        let ids: Vec<u8> = out.header.extensions.iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            [4, 2],
            "transport-cc is the hop's own and is not forwarded"
        );
        assert_eq!(out.header.get_extension(4).unwrap(), &[0x9e][..]);
        // 65.5 s is 1.5 s modulo 64: 0x060000 in 6.18 fixed point.
        assert_eq!(
            out.header.get_extension(2).unwrap(),
            &[0x06, 0x00, 0x00][..]
        );
        assert_eq!(
            (
                out.header.sequence_number,
                out.header.timestamp,
                out.header.marker
            ),
            (7, 9000, true)
        );
        assert_eq!(out.payload, pkt.payload);
        // The packet the leg sends marshals and reads back with the leg's ids.
        use rtc::shared::marshal::{Marshal, Unmarshal};
        let wire = out.marshal().unwrap();
        let back = rtp::Packet::unmarshal(&mut &wire[..]).unwrap();
        assert_eq!(back.header.get_extension(4).unwrap(), &[0x9e][..]);
        assert_eq!(back.payload, pkt.payload);

        // A leg that negotiated neither gets none; one with a two-byte id gets that form.
        let bare = rewrite(&pkt, 42, 96, ExtIds::default(), &carried).unwrap();
        assert!(!bare.header.extension);
        assert!(bare.header.extensions.is_empty());
        let wide = ExtIds {
            audio_level: 20,
            abs_send_time: 0,
        };
        let out = rewrite(&pkt, 42, 96, wide, &carried).unwrap();
        assert_eq!(out.header.extension_profile, EXTENSION_PROFILE_TWO_BYTE);
        assert_eq!(out.header.get_extension(20).unwrap(), &[0x9e][..]);
        assert!(rewrite(&pkt, 42, NO_PAYLOAD_TYPE, to, &carried).is_none());
        // A publisher without the level extension: the leg gets the send time only.
        let carried = Carried::of(&pkt, ExtIds::default(), Some(now));
        let out = rewrite(&pkt, 42, 96, to, &carried).unwrap();
        assert_eq!(
            out.header
                .extensions
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>(),
            [2]
        );
    }

    #[test]
    fn extension_ids_are_found_by_uri() {
        let extmaps = [
            (
                5,
                "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01".into(),
            ),
            (3, ABS_SEND_TIME_URI.to_owned()),
            (1, AUDIO_LEVEL_URI.to_owned()),
        ];
        assert_eq!(
            ExtIds::from_extmaps(&extmaps),
            ExtIds {
                audio_level: 1,
                abs_send_time: 3
            }
        );
        assert_eq!(ExtIds::from_extmaps(&[]), ExtIds::default());
    }

    fn header(seq: u16, ts: u32) -> rtp::header::Header {
        rtp::header::Header {
            sequence_number: seq,
            timestamp: ts,
            ..Default::default()
        }
    }

    #[test]
    fn the_first_source_passes_through_and_a_later_one_continues_its_numbering() {
        let mut c = Continuity::new(90_000);
        let first = c.next_source();
        let mut out = Vec::new();
        for (seq, ts) in [(65_534, 1_000), (65_535, 4_000), (0, 7_000)] {
            let mut h = header(seq, ts);
            c.map(first, &mut h);
            out.push((h.sequence_number, h.timestamp));
        }
        assert_eq!(out, [(65_534, 1_000), (65_535, 4_000), (0, 7_000)]);
        c.pause();
        let second = c.next_source();
        let mut h = header(30_000, u32::MAX - 10);
        c.map(second, &mut h);
        assert_eq!(
            h.sequence_number, 1,
            "numbering continues after the first source"
        );
        let gap = h.timestamp.wrapping_sub(7_000);
        assert!(
            (1..90_000).contains(&gap),
            "timestamp moved on by the pause: {gap}"
        );
        let mut next = header(30_001, (u32::MAX - 10).wrapping_add(3_000));
        c.map(second, &mut next);
        assert_eq!(next.sequence_number, 2);
        assert_eq!(next.timestamp.wrapping_sub(h.timestamp), 3_000);
        // A straggler of the first source after the switch is renumbered as the switch it is.
        let mut late = header(1, 10_000);
        c.map(first, &mut late);
        assert_eq!(late.sequence_number, 3);
    }
}
