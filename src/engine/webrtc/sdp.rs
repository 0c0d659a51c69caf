//! Just enough SDP reading for the plane: each m-line's kind, mid, payload types and header
//! extension ids.
//!
//! The negotiation core owns the real SDP decisions; the plane only needs the kind of a mid
//! the core assigned a forwarded track to, and the payload type and extension ids its answer
//! chose. It must
//! never reject an SDP (webrtc does that) or guess a mid that is not written down.

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaSection {
    pub mid: String,
    pub kind: RtpCodecKind,
    /// In preference order, as listed on the m-line.
    pub payload_types: Vec<u8>,
    /// `a=extmap:<id>[/<direction>] <uri>` entries, in order.
    pub extmaps: Vec<(u8, String)>,
}

/// The audio and video m-lines of `sdp` that carry an `a=mid`, in order.
pub fn media_sections(sdp: &str) -> Vec<MediaSection> {
    let mut out = Vec::new();
    let mut current: Option<(MediaSection, bool)> = None;
    let mut flush = |cur: Option<(MediaSection, bool)>| {
        if let Some((section, true)) = cur {
            out.push(section);
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
            let section = MediaSection {
                mid: String::new(),
                kind,
                payload_types,
                extmaps: Vec::new(),
            };
            current = Some((section, false));
        } else if let Some(mid) = line.strip_prefix("a=mid:") {
            if let Some((section, has_mid)) = current.as_mut() {
                section.mid = mid.trim().to_owned();
                *has_mid = true;
            }
        } else if let Some(ext) = line.strip_prefix("a=extmap:") {
            let mut parts = ext.split_whitespace();
            let id = parts
                .next()
                .and_then(|id| id.split('/').next())
                .and_then(|id| id.parse::<u8>().ok());
            if let (Some((section, _)), Some(id), Some(uri)) = (current.as_mut(), id, parts.next())
            {
                section.extmaps.push((id, uri.to_owned()));
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
            a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
            a=extmap:3/sendonly http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
            a=extmap:x bad\r\n\
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
                    payload_types: vec![111, 63],
                    extmaps: vec![
                        (1, "urn:ietf:params:rtp-hdrext:ssrc-audio-level".into()),
                        (
                            3,
                            "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time".into()
                        ),
                    ],
                },
                MediaSection {
                    mid: "1".into(),
                    kind: RtpCodecKind::Video,
                    payload_types: vec![96, 97],
                    extmaps: vec![],
                },
                MediaSection {
                    mid: "3".into(),
                    kind: RtpCodecKind::Video,
                    payload_types: vec![100],
                    extmaps: vec![],
                },
            ]
        );
    }
}
