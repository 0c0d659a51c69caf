//! Client SDP as the negotiation core reads it (`Sdp::parse`), and the fake media plane's
//! answer to it (`fake_answer`, what the simulation's plane sends back).
//!
//! Checked: no panic; a parsed offer obeys the bounds the parser promises (at most
//! `MAX_MLINES` m-lines, each with a non-empty mid of token characters, no mid twice); and the
//! answer to it, with a role per m-line derived from the offer as the core would choose it,
//! parses again with the same m-lines in order (same media, same mids, port 0 exactly where
//! the offer rejected the m-line) and the direction each role asks for.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use videoroom::engine::sdp::{is_token_char, Direction, Sdp, MAX_MLINES};
use videoroom::engine::{fake_answer, MLine, MLineRole, MediaKind, PlaneOffer};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(sdp) = Sdp::parse(&text) else {
        return;
    };
    assert!(sdp.media.len() <= MAX_MLINES);
    let mut mids = BTreeSet::new();
    for m in &sdp.media {
        assert!(
            !m.mid.is_empty() && m.mid.chars().all(is_token_char),
            "mid {:?}",
            m.mid
        );
        assert!(mids.insert(m.mid.as_str()), "mid {:?} twice", m.mid);
    }
    let mlines: Vec<MLine> = sdp
        .media
        .iter()
        .map(|m| {
            let kind = match m.media.as_str() {
                "audio" => Some(MediaKind::Audio),
                "video" => Some(MediaKind::Video),
                _ => None,
            };
            let role = match (kind, m.direction) {
                (Some(kind), Direction::SendOnly) => MLineRole::Inbound {
                    kind,
                    track_id: format!("p:{}", m.mid),
                },
                (Some(kind), Direction::RecvOnly | Direction::SendRecv) => MLineRole::Outbound {
                    kind,
                    publisher: "q".into(),
                    track_id: format!("q:{}", m.mid),
                    stream_id: "q".into(),
                },
                _ => MLineRole::Inactive,
            };
            MLine {
                mid: m.mid.clone(),
                role,
            }
        })
        .collect();
    let offer = PlaneOffer {
        negotiation: 1,
        sdp: text.into_owned(),
        mlines,
    };
    let answer = fake_answer(&offer, 1).expect("an offer that parses gets an answer");
    let parsed = Sdp::parse(&answer).unwrap_or_else(|e| panic!("answer does not parse: {e}"));
    assert_eq!(parsed.media.len(), sdp.media.len());
    for ((a, o), line) in parsed.media.iter().zip(&sdp.media).zip(&offer.mlines) {
        assert_eq!((&a.media, &a.mid), (&o.media, &o.mid));
        assert_eq!(a.is_rejected(), o.is_rejected(), "mid {}", o.mid);
        let want = match line.role {
            MLineRole::Inbound { .. } => Direction::RecvOnly,
            MLineRole::Outbound { .. } => Direction::SendOnly,
            MLineRole::Inactive => Direction::Inactive,
        };
        assert_eq!(a.direction, want, "mid {}", o.mid);
    }
});
