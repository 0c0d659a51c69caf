//! Just enough SDP reading for the plane: each m-line's kind, mid and payload types.
//!
//! The negotiation core owns the real SDP decisions; the plane only needs the kind of a mid
//! the core assigned a forwarded track to, and the payload type its answer chose. It must
//! never reject an SDP (webrtc does that) or guess a mid that is not written down.

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaSection {
    pub mid: String,
    pub kind: RtpCodecKind,
    /// In preference order, as listed on the m-line.
    pub payload_types: Vec<u8>,
}

/// The audio and video m-lines of `sdp` that carry an `a=mid`, in order.
pub fn media_sections(sdp: &str) -> Vec<MediaSection> {
    let mut out = Vec::new();
    let mut current: Option<(RtpCodecKind, Vec<u8>, Option<String>)> = None;
    let mut flush = |cur: Option<(RtpCodecKind, Vec<u8>, Option<String>)>| {
        if let Some((kind, payload_types, Some(mid))) = cur {
            out.push(MediaSection {
                mid,
                kind,
                payload_types,
            });
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            flush(current.take());
            let mut parts = m.split_whitespace();
            let kind = match parts.next() {
                Some("audio") => RtpCodecKind::Audio,
                Some("video") => RtpCodecKind::Video,
                _ => continue,
            };
            let payload_types = parts.skip(2).filter_map(|p| p.parse().ok()).collect();
            current = Some((kind, payload_types, None));
        } else if let Some(mid) = line.strip_prefix("a=mid:") {
            if let Some(cur) = current.as_mut() {
                cur.2 = Some(mid.trim().to_owned());
            }
        }
    }
    flush(current.take());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kind_mid_and_payload_types_in_order() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 100\r\na=mid:3\r\n";
        let s = media_sections(sdp);
        assert_eq!(
            s,
            vec![
                MediaSection {
                    mid: "0".into(),
                    kind: RtpCodecKind::Audio,
                    payload_types: vec![111, 63]
                },
                MediaSection {
                    mid: "1".into(),
                    kind: RtpCodecKind::Video,
                    payload_types: vec![96, 97]
                },
                MediaSection {
                    mid: "3".into(),
                    kind: RtpCodecKind::Video,
                    payload_types: vec![100]
                },
            ]
        );
    }
}
