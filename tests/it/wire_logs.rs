//! Logs over the wire: a room's life and its peers' joins and leaves are told at the default
//! level; a client flooding the real media plane with offers it refuses, their SDP full of
//! terminal escapes, carriage returns and NULs, gets a bounded number of log lines written about
//! it, none carrying its raw bytes.
#![cfg(feature = "media-webrtc")]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use videoroom::server::MediaConfig;

use crate::support::driver::{ev, fast_opts, media_data, media_in, Driver};
use crate::support::logs::LogCapture;
use crate::support::server::TestServer;
use crate::support::MEDIA_EXCLUSIVE;

/// An offer the negotiation core accepts (one `sendonly` audio m-line with a mid) but webrtc
/// refuses, with hostile bytes where an error message quotes the input.
fn hostile_offer(i: usize) -> Value {
    let evil = format!("\u{1b}[2J\u{1b}[31mFORGED {i}\r\0\u{202e}");
    let sdp = format!(
        "v=0\r\no={evil}\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na={evil}\r\n"
    );
    json!({"type": "custom", "data": {"type": "sdpOffer", "data": {
        "sdpOffer": {"type": "offer", "sdp": sdp},
        "trackIdToTrackMetadata": {},
        "midToTrackId": {"0": format!("track-{i}")},
    }}})
}

#[test]
fn a_flood_of_refused_offers_writes_few_escaped_lines() {
    const FLOOD: usize = 60;
    const BUDGET: usize = 5;
    let _media = MEDIA_EXCLUSIVE.blocking_lock();
    let logs = LogCapture::new();
    let srv = TestServer::start_logged(
        |c| {
            c.media = MediaConfig {
                real: true,
                turn_bind: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
                ..MediaConfig::default()
            }
        },
        logs.dispatch(),
    );
    let t = "room:flood";
    let mut c = Driver::phx("flood");
    c.connect(&srv.url(), fast_opts());
    c.join_ok(t);
    c.push_media(
        t,
        json!({"type": "connect", "data": {"metadata": {"displayName": "x"}}}),
    );
    c.expect(media_in(t, "connected"));
    for i in 0..FLOOD {
        c.push_media(t, hostile_offer(i));
        // One offer at a time: the core drops an offer while one is being answered.
        let err = c.expect(media_in(t, "error"));
        let data = media_data(&err.value).expect("JSON")["data"].clone();
        assert_eq!(
            data["message"], "media negotiation failed",
            "offer {i} must reach the media plane and fail there: {data}"
        );
    }
    let refused: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("offer not applied"))
        .collect();
    assert_eq!(
        refused.len(),
        BUDGET,
        "one client's {FLOOD} refused offers are logged within its budget: {refused:#?}"
    );
    assert!(
        refused[0].contains("\\x1b[2J") && refused[0].contains("\\r"),
        "the hostile bytes show escaped: {}",
        refused[0]
    );

    // Leaving reports what the budget held back, once.
    c.cmd(json!({"cmd": "disconnect"}));
    c.expect(ev("disconnected"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let summary = loop {
        let found = logs
            .lines()
            .into_iter()
            .find(|l| l.contains("warnings suppressed for this peer"));
        if let Some(line) = found {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no summary of suppressed warnings after the peer left"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        summary.contains(&format!("suppressed={}", FLOOD - BUDGET)),
        "{summary}"
    );

    let bytes = logs.bytes();
    for bad in [0x1b_u8, 0, b'\r'] {
        assert!(
            !bytes.contains(&bad),
            "raw byte {bad:#04x} reached the log:\n{}",
            String::from_utf8_lossy(&bytes)
        );
    }
    assert!(
        !String::from_utf8_lossy(&bytes).contains('\u{202e}'),
        "a bidi override reached the log"
    );
    let lines = logs.lines().len();
    assert!(
        lines <= BUDGET + 10,
        "{lines} log lines for one flooding client:\n{}",
        String::from_utf8_lossy(&bytes)
    );
}

/// What an operator looks for first: the room starting and stopping, each peer joining and
/// leaving with why, at the default level (the webrtc crates' internals are off there).
#[test]
fn a_rooms_life_and_its_peers_are_logged_at_the_default_level() {
    let logs = LogCapture::new();
    let srv = TestServer::start_logged(|_| {}, logs.dispatch());
    let t = "room:logged";
    let mut c = Driver::phx("logged");
    c.connect(&srv.url(), fast_opts());
    c.join_ok(t);
    c.cmd(json!({"cmd": "leave", "topic": t}));
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = logs.lines();
        if lines.iter().any(|l| l.contains("room stopped")) || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let find = |what: &str| {
        lines
            .iter()
            .find(|l| l.contains(what) && l.contains("room=logged"))
    };
    for what in [
        "room started",
        "peer joined",
        "peer left",
        "room stopped: empty",
    ] {
        assert!(
            find(what).is_some(),
            "no {what:?} line for the room in {lines:#?}"
        );
    }
    let left = find("peer left").unwrap();
    assert!(left.contains("peer=") && left.contains("reason="), "{left}");
}
