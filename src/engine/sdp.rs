//! The little of SDP the negotiation core needs: the m-line structure of an offer (media, port,
//! mid, direction) and each m-section's lines, so a fake answer can be derived from it.
//!
//! It owns validation of client SDP against bounds (size, m-line count, mid presence and
//! uniqueness). It must never panic on input: every failure is an [`SdpError`] whose text is
//! fit to send back to the client.

/// Offers larger than this are refused; a browser offer with dozens of m-lines is a few tens
/// of KiB.
pub const MAX_SDP_BYTES: usize = 256 * 1024;
/// More m-lines than this in one offer are refused: each one costs state per peer.
pub const MAX_MLINES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is larger than {MAX_SDP_BYTES} bytes")]
    TooLarge,
    #[error("SDP does not start with v=0")]
    NoVersion,
    #[error("SDP has more than {MAX_MLINES} m-lines")]
    TooManyMLines,
    #[error("SDP m-line {0} is malformed")]
    BadMLine(usize),
    #[error("SDP m-line {0} has no a=mid")]
    MissingMid(usize),
    #[error("SDP mid is used twice")]
    DuplicateMid,
}

/// Direction attribute of an m-section (`sendrecv` when absent, RFC 8866 §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
}

/// One m-section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// The `m=` media token (`audio`, `video`, `application`, …).
    pub media: String,
    pub port: u16,
    pub proto: String,
    pub formats: Vec<String>,
    pub mid: String,
    pub direction: Direction,
    /// Every `a=` value of the section (without `a=`), in order.
    pub attributes: Vec<String>,
}

impl MediaSection {
    /// Port 0: the offerer rejected or stopped this m-line.
    pub fn is_rejected(&self) -> bool {
        self.port == 0
    }
}

/// A parsed session description: only its m-sections are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    pub media: Vec<MediaSection>,
}

impl Sdp {
    pub fn parse(text: &str) -> Result<Sdp, SdpError> {
        if text.len() > MAX_SDP_BYTES {
            return Err(SdpError::TooLarge);
        }
        let mut lines = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .filter(|l| !l.is_empty());
        if lines.next() != Some("v=0") {
            return Err(SdpError::NoVersion);
        }
        let mut media: Vec<MediaSection> = Vec::new();
        let mut mids: Vec<Option<String>> = Vec::new();
        for line in lines {
            if let Some(m) = line.strip_prefix("m=") {
                if media.len() == MAX_MLINES {
                    return Err(SdpError::TooManyMLines);
                }
                let index = media.len();
                let mut parts = m.split(' ');
                let (Some(kind), Some(port), Some(proto)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(SdpError::BadMLine(index));
                };
                // `<port>/<count>` is legal SDP; only the port matters here.
                let port = port.split('/').next().unwrap_or(port);
                let port: u16 = port.parse().map_err(|_| SdpError::BadMLine(index))?;
                if kind.is_empty() || proto.is_empty() {
                    return Err(SdpError::BadMLine(index));
                }
                media.push(MediaSection {
                    media: kind.to_owned(),
                    port,
                    proto: proto.to_owned(),
                    formats: parts.filter(|f| !f.is_empty()).map(str::to_owned).collect(),
                    mid: String::new(),
                    direction: Direction::SendRecv,
                    attributes: Vec::new(),
                });
                mids.push(None);
                continue;
            }
            let (Some(section), Some(attr)) = (media.last_mut(), line.strip_prefix("a=")) else {
                continue;
            };
            match attr {
                "sendrecv" => section.direction = Direction::SendRecv,
                "sendonly" => section.direction = Direction::SendOnly,
                "recvonly" => section.direction = Direction::RecvOnly,
                "inactive" => section.direction = Direction::Inactive,
                _ => {
                    if let Some(mid) = attr.strip_prefix("mid:") {
                        *mids.last_mut().expect("pushed with its section") = Some(mid.to_owned());
                    }
                }
            }
            section.attributes.push(attr.to_owned());
        }
        for (index, (section, mid)) in media.iter_mut().zip(mids).enumerate() {
            match mid {
                Some(mid) if !mid.is_empty() && mid.chars().all(is_token_char) => section.mid = mid,
                _ => return Err(SdpError::MissingMid(index)),
            }
        }
        let mut seen: Vec<&str> = media.iter().map(|m| m.mid.as_str()).collect();
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(SdpError::DuplicateMid);
        }
        Ok(Sdp { media })
    }
}

/// RFC 8866 token characters: what a mid (and a stream id) may contain so that it can be
/// written back into an SDP line verbatim.
/// `sdp` with the m-sections whose `a=mid` is in `mids` made `inactive` (their direction
/// attribute replaced, or added when absent); everything else byte for byte.
pub fn make_inactive(sdp: &str, mids: &std::collections::BTreeSet<String>) -> String {
    if mids.is_empty() {
        return sdp.to_owned();
    }
    let mut out = String::with_capacity(sdp.len() + 16);
    // Sections start at `m=` lines; the session part before the first is kept as is.
    let mut rest = sdp;
    let mut sections: Vec<&str> = Vec::new();
    while let Some(i) = rest.find("\r\nm=").or_else(|| rest.find("\nm=")) {
        let cut = i + if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        sections.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    sections.push(rest);
    for section in sections {
        let is_media = section.starts_with("m=");
        let mid = section
            .lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix("a=mid:"));
        if !is_media || !mid.is_some_and(|m| mids.contains(m)) {
            out.push_str(section);
            continue;
        }
        let mut has_direction = false;
        for line in section.split_inclusive('\n') {
            let bare = line.trim_end_matches(['\r', '\n']);
            if matches!(
                bare,
                "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive"
            ) {
                has_direction = true;
                out.push_str("a=inactive");
                out.push_str(&line[bare.len()..]);
            } else {
                out.push_str(line);
            }
        }
        if !has_direction {
            if !out.ends_with('\n') {
                out.push_str("\r\n");
            }
            out.push_str("a=inactive\r\n");
        }
    }
    out
}

pub fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`{|}~".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_inactive_silences_only_the_named_sections() {
        let sdp = "v=0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\na=mid:0\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\n";
        let mids = ["1".to_owned()].into_iter().collect();
        let out = make_inactive(sdp, &mids);
        let parsed = Sdp::parse(&out).unwrap();
        assert_eq!(parsed.media[0].direction, Direction::SendOnly);
        assert_eq!(parsed.media[1].direction, Direction::Inactive);
        assert_eq!(out.len(), sdp.len() + "inactive".len() - "sendonly".len());
        assert_eq!(make_inactive(sdp, &Default::default()), sdp);
        // A section without a direction attribute gets one.
        let bare = "v=0\r\nm=audio 9 RTP/AVP 0\r\na=mid:a\r\n";
        let one = ["a".to_owned()].into_iter().collect();
        assert_eq!(
            Sdp::parse(&make_inactive(bare, &one)).unwrap().media[0].direction,
            Direction::Inactive
        );
    }

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 96 97\r\na=recvonly\r\na=mid:1\r\n";

    #[test]
    fn parses_m_lines() {
        let sdp = Sdp::parse(OFFER).unwrap();
        assert_eq!(sdp.media.len(), 2);
        let a = &sdp.media[0];
        assert_eq!(
            (a.media.as_str(), a.port, a.mid.as_str(), a.direction),
            ("audio", 9, "0", Direction::SendOnly)
        );
        assert_eq!(a.formats, ["111"]);
        assert_eq!(
            a.attributes,
            ["mid:0", "sendonly", "rtpmap:111 opus/48000/2"]
        );
        let v = &sdp.media[1];
        assert_eq!((v.mid.as_str(), v.direction), ("1", Direction::RecvOnly));
        assert!(v.is_rejected());
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(Sdp::parse(""), Err(SdpError::NoVersion));
        assert_eq!(Sdp::parse("v=1\r\n"), Err(SdpError::NoVersion));
        assert_eq!(Sdp::parse("v=0\r\nm=audio\r\n"), Err(SdpError::BadMLine(0)));
        assert_eq!(
            Sdp::parse("v=0\r\nm=audio x RTP 1\r\na=mid:0\r\n"),
            Err(SdpError::BadMLine(0))
        );
        assert_eq!(
            Sdp::parse("v=0\r\nm=audio 9 RTP 1\r\n"),
            Err(SdpError::MissingMid(0))
        );
        assert_eq!(
            Sdp::parse("v=0\r\nm=audio 9 RTP 1\r\na=mid:a b\r\n"),
            Err(SdpError::MissingMid(0))
        );
        assert_eq!(
            Sdp::parse("v=0\r\nm=audio 9 RTP 1\r\na=mid:0\r\nm=video 9 RTP 1\r\na=mid:0\r\n"),
            Err(SdpError::DuplicateMid)
        );
        assert_eq!(
            Sdp::parse(&"v=0\r\n".repeat(MAX_SDP_BYTES)),
            Err(SdpError::TooLarge)
        );
        let many = format!("v=0\r\n{}", "m=audio 9 RTP 1\r\n".repeat(MAX_MLINES + 1));
        assert_eq!(Sdp::parse(&many), Err(SdpError::TooManyMLines));
        // No m-lines at all is a valid (empty) offer.
        assert_eq!(Sdp::parse("v=0\n").unwrap().media, []);
    }
}
