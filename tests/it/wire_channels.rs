//! Phoenix Channels V2 conformance of the socket layer, driven by the real `phoenix` client
//! (`tests/node/phx_driver.js`). Section numbers (S1…) refer to the checklist in
//! `research/phoenix_protocol.md` §5.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::driver::{
    decode_frame, ev, fast_opts, frame_in, frame_out, media_in, traced_opts, Driver,
};
use crate::support::server::TestServer;

/// A connected phx driver (socket open) against `srv`.
fn client(srv: &TestServer, label: &str, opts: Value) -> Driver {
    let mut c = Driver::phx(label);
    c.connect(&srv.url(), opts);
    c.expect(ev("socket_open"));
    c
}

/// Waits for the server frame equal to `want` (a V2 frame array).
#[track_caller]
fn expect_frame(c: &mut Driver, want: Value) -> usize {
    let desc = want.to_string();
    let w = want.clone();
    c.expect(frame_in(&desc, move |f| Value::Array(f.to_vec()) == w))
        .index
}

/// The ref a client frame used (the last `frame_out` matching `pred`).
#[track_caller]
fn sent_frame(c: &mut Driver, desc: &str, pred: impl Fn(&[Value]) -> bool + 'static) -> Vec<Value> {
    let seen = c.expect(frame_out(desc, pred));
    decode_frame(&seen.value).expect("frame_out is a V2 frame")
}

/// S1: a heartbeat is answered at once with `[null, ref, "phoenix", "phx_reply", ok {}]`, and the
/// client keeps its socket (it would close it with "heartbeat timeout" otherwise).
#[test]
fn heartbeat_is_answered() {
    let srv = TestServer::start();
    let mut opts = traced_opts();
    opts["heartbeatIntervalMs"] = json!(300);
    let mut c = client(&srv, "c", opts);
    for _ in 0..2 {
        let hb = sent_frame(&mut c, "heartbeat", |f| {
            f[2] == "phoenix" && f[3] == "heartbeat"
        });
        assert_eq!(
            hb[0],
            Value::Null,
            "client heartbeat has a null join_ref: {hb:?}"
        );
        expect_frame(
            &mut c,
            json!([null, hb[1], "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
        );
    }
    c.refute(ev("socket_close"));
}

/// S3: joining `room:x` answers ok `{}`, echoing join_ref and ref.
#[test]
fn join_room_ok() {
    let srv = TestServer::start();
    let mut c = client(&srv, "c", traced_opts());
    let ok = c.join_ok("room:x");
    assert_eq!(ok["response"], json!({}));
    let join = sent_frame(&mut c, "phx_join", |f| f[3] == "phx_join");
    assert_eq!(join[0], join[1], "a join's join_ref is its ref");
    expect_frame(
        &mut c,
        json!([join[0], join[1], "room:x", "phx_reply", {"status": "ok", "response": {}}]),
    );
}

/// S6: a join of any topic other than `room:*` gets `unmatched topic`, with a null join_ref.
#[test]
fn join_of_other_topics_is_unmatched() {
    let srv = TestServer::start();
    let mut c = client(&srv, "c", traced_opts());
    for topic in ["lobby:x", "roomx", "rooms:y"] {
        c.join(topic);
        let err = c.expect(ev("join_error").with("topic", topic));
        assert_eq!(
            err["response"],
            json!({"reason": "unmatched topic"}),
            "topic {topic}"
        );
        let t = topic.to_owned();
        let join = sent_frame(&mut c, "phx_join", move |f| {
            f[2] == t.as_str() && f[3] == "phx_join"
        });
        expect_frame(
            &mut c,
            json!([null, join[1], topic, "phx_reply",
                   {"status": "error", "response": {"reason": "unmatched topic"}}]),
        );
    }
}

/// S11: leave → ok reply with the leave's ref, then `phx_close` carrying the join_ref.
#[test]
fn leave_replies_ok_then_closes() {
    let srv = TestServer::start();
    let mut c = client(&srv, "c", traced_opts());
    c.join_ok("room:leave");
    let join = sent_frame(&mut c, "phx_join", |f| f[3] == "phx_join");
    c.cmd(json!({"cmd": "leave", "topic": "room:leave"}));
    c.expect(ev("leave_ok"));
    let leave = sent_frame(&mut c, "phx_leave", |f| f[3] == "phx_leave");
    assert_eq!(
        leave[0], join[0],
        "the leave carries the channel's join_ref"
    );
    let reply = expect_frame(
        &mut c,
        json!([join[0], leave[1], "room:leave", "phx_reply", {"status": "ok", "response": {}}]),
    );
    let close = expect_frame(
        &mut c,
        json!([join[0], join[0], "room:leave", "phx_close", {}]),
    );
    assert!(reply < close, "the leave reply comes before phx_close");
}

/// S7 (extra): after a leave, an event on the topic gets `unmatched topic` with a null join_ref.
#[test]
fn event_after_leave_is_unmatched() {
    let srv = TestServer::start();
    let mut c = client(&srv, "c", traced_opts());
    c.raw_frame(json!(["1", "1", "room:gone", "phx_join", {}]));
    expect_frame(
        &mut c,
        json!(["1", "1", "room:gone", "phx_reply", {"status": "ok", "response": {}}]),
    );
    c.raw_frame(json!(["1", "2", "room:gone", "phx_leave", {}]));
    expect_frame(&mut c, json!(["1", "1", "room:gone", "phx_close", {}]));
    c.raw_frame(json!(["1", "3", "room:gone", "mediaEvent", {"data": "{}"}]));
    expect_frame(
        &mut c,
        json!([null, "3", "room:gone", "phx_reply",
               {"status": "error", "response": {"reason": "unmatched topic"}}]),
    );
}

/// S15: a second `phx_join` on a live topic (raw frames, as phoenix.js itself leaves first)
/// answers the new join ok and closes the old channel with `phx_close` on the old join_ref (no
/// `phx_error`); the new channel is the live one.
#[test]
fn duplicate_join_closes_the_old_channel() {
    let srv = TestServer::start();
    let mut c = client(&srv, "c", traced_opts());
    c.raw_frame(json!(["1", "1", "room:dup", "phx_join", {}]));
    expect_frame(
        &mut c,
        json!(["1", "1", "room:dup", "phx_reply", {"status": "ok", "response": {}}]),
    );
    c.raw_frame(json!(["2", "2", "room:dup", "phx_join", {}]));
    expect_frame(
        &mut c,
        json!(["2", "2", "room:dup", "phx_reply", {"status": "ok", "response": {}}]),
    );
    expect_frame(&mut c, json!(["1", "1", "room:dup", "phx_close", {}]));
    // The new channel answers a leave on its own join_ref and closes.
    c.raw_frame(json!(["2", "3", "room:dup", "phx_leave", {}]));
    expect_frame(
        &mut c,
        json!(["2", "3", "room:dup", "phx_reply", {"status": "ok", "response": {}}]),
    );
    expect_frame(&mut c, json!(["2", "2", "room:dup", "phx_close", {}]));
    c.refute(frame_in("phx_error", |f| f[3] == "phx_error"));
}

/// S13/S14: frames carrying a stale join_ref are dropped silently: a stale `connect` media event
/// produces no `connected`, a stale leave gets no reply and leaves the channel up.
#[test]
fn stale_join_ref_is_dropped() {
    let srv = TestServer::start();
    let mut c = client(&srv, "c", traced_opts());
    let connect =
        json!({"type": "connect", "data": {"metadata": {"displayName": "stale"}}}).to_string();
    c.raw_frame(json!(["1", "1", "room:stale", "phx_join", {}]));
    expect_frame(
        &mut c,
        json!(["1", "1", "room:stale", "phx_reply", {"status": "ok", "response": {}}]),
    );
    // Stale (join_ref 9), then current (join_ref 1): the room sees them in this order, so a
    // `connected` for the stale one would arrive first.
    c.raw_frame(json!(["9", "2", "room:stale", "mediaEvent", {"data": connect}]));
    c.raw_frame(json!(["9", "3", "room:stale", "phx_leave", {}]));
    c.raw_frame(json!(["1", "4", "room:stale", "mediaEvent", {"data": connect}]));
    c.expect(frame_in("mediaEvent connected", |f| {
        f[3] == "mediaEvent"
            && f[4]["data"]
                .as_str()
                .is_some_and(|d| d.contains("\"connected\""))
    }));
    // The channel is still up: a current leave replies and closes.
    c.raw_frame(json!(["1", "5", "room:stale", "phx_leave", {}]));
    expect_frame(
        &mut c,
        json!(["1", "5", "room:stale", "phx_reply", {"status": "ok", "response": {}}]),
    );
    expect_frame(&mut c, json!(["1", "1", "room:stale", "phx_close", {}]));
    let connected = c.all(&frame_in("mediaEvent", |f| f[3] == "mediaEvent"));
    assert_eq!(
        connected.len(),
        1,
        "exactly one media event (the current connect's): {connected:?}"
    );
    c.refute(frame_in("reply to a stale frame", |f| {
        f[2] == "room:stale" && (f[1] == "2" || f[1] == "3")
    }));
}

/// S26: a frame that is not a V2 frame closes the connection with 1011 (binary frames: 1003),
/// never 1000, and the client reconnects and rejoins its channel.
#[test]
fn garbage_frame_closes_with_1011_and_client_reconnects() {
    let srv = TestServer::start();
    let mut c = client(&srv, "c", fast_opts());
    c.join_ok("room:garbage");
    // Undecodable text frames → 1011. Binary frames (V2 binary pushes; phoenix.js only sends
    // them for ArrayBuffer payloads) are not supported by design → 1003 (unsupported data);
    // here an unknown kind byte and a truncated kind-0 push.
    let frames = [
        (json!({"cmd": "raw", "frame": "this is not json"}), 1011),
        (json!({"cmd": "raw", "frame": "[\"1\",\"2\"]"}), 1011),
        (
            json!({"cmd": "raw", "frame": "{\"topic\":\"room:garbage\"}"}),
            1011,
        ),
        (json!({"cmd": "raw", "frame": "42"}), 1011),
        (json!({"cmd": "raw", "binary_b64": "/wEC"}), 1003),
        (json!({"cmd": "raw", "binary_b64": "AAEBCAM="}), 1003),
    ];
    for (i, (garbage, code)) in frames.into_iter().enumerate() {
        let from = c.mark();
        c.cmd(garbage.clone());
        let close = c.expect_after(from, ev("socket_close"));
        assert_eq!(
            close["code"],
            json!(code),
            "close code after garbage frame {garbage:?}"
        );
        c.expect_after(close.index, ev("socket_open"));
        c.expect_after(
            close.index,
            ev("rejoined")
                .with("topic", "room:garbage")
                .with("attempt", i + 2),
        );
    }
}

/// S19: a channel past the per-socket limit (4 by default: the web app joins one) is refused
/// with `too many channels joined`.
#[test]
fn a_channel_past_the_limit_is_refused() {
    let srv = TestServer::start();
    let mut c = client(&srv, "c", fast_opts());
    for i in 0..4 {
        c.join(&format!("room:many-{i}"));
    }
    for i in 0..4 {
        c.expect(ev("join_ok").with("topic", format!("room:many-{i}")));
    }
    c.join("room:many-4");
    let err = c.expect(ev("join_error").with("topic", "room:many-4"));
    assert_eq!(
        err["response"],
        json!({"reason": "too many channels joined"})
    );
}

/// Room names up to `max_room_name_bytes` (64) join; a longer one is refused with a reason that
/// says so.
#[test]
fn room_name_too_long_is_refused() {
    let srv = TestServer::start();
    let mut c = client(&srv, "c", fast_opts());
    let ok = format!("room:{}", "a".repeat(64));
    c.join_ok(&ok);
    let long = format!("room:{}", "b".repeat(65));
    c.join(&long);
    let err = c.expect(ev("join_error").with("topic", long.as_str()));
    let reason = err["response"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("room name") && reason.contains("64"),
        "join error should say the room name is too long (limit 64): {}",
        err.value
    );
    // The limit is in bytes: 33 × "é" is 33 characters but 66 bytes.
    let wide = format!("room:{}", "\u{e9}".repeat(33));
    c.join(&wide);
    c.expect(ev("join_error").with("topic", wide.as_str()));
}

/// With `max_peers_per_room = 2`, a third peer is refused; it gets in (its client retries) once
/// a peer leaves.
#[test]
fn room_full_is_refused() {
    let srv = TestServer::with_max_peers(2);
    let mut a = client(&srv, "a", fast_opts());
    let mut b = client(&srv, "b", fast_opts());
    let mut c = client(&srv, "c", fast_opts());
    a.join_ok("room:full");
    b.join_ok("room:full");
    c.join("room:full");
    let err = c.expect(ev("join_error").with("topic", "room:full"));
    let reason = err["response"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("full"),
        "join error should say the room is full: {}",
        err.value
    );
    assert_eq!(srv.room_peers("full").len(), 2);
    b.cmd(json!({"cmd": "leave", "topic": "room:full"}));
    c.expect(ev("join_ok").with("topic", "room:full"));
}

/// S8 (extra): a `mediaEvent` whose `connect` is answered with `connected` pushed on the channel's
/// join_ref with a null ref (S9), and no reply to the push itself.
#[test]
fn media_event_push_carries_join_ref() {
    let srv = TestServer::start();
    let mut c = client(&srv, "c", traced_opts());
    c.join_ok("room:push");
    let join = sent_frame(&mut c, "phx_join", |f| f[3] == "phx_join");
    c.push_media(
        "room:push",
        json!({"type": "connect", "data": {"metadata": {"n": 1}}}),
    );
    let connected = c.expect(media_in("room:push", "connected"));
    assert_eq!(connected["join_ref"], join[0]);
    assert_eq!(connected["ref"], Value::Null);
    let push = sent_frame(&mut c, "mediaEvent", |f| f[3] == "mediaEvent");
    c.refute(frame_in("reply to the mediaEvent push", move |f| {
        f[2] == "room:push" && f[1] == push[1]
    }));
}

/// S21 (extra): a connection with no inbound frame for `idle_timeout` is closed with 1001 (not
/// 1000), and the client reconnects and rejoins; a client whose heartbeats come faster is kept.
#[test]
fn idle_connection_is_closed_with_1001() {
    let srv = TestServer::start_with(|c| c.limits.socket.idle_timeout = Duration::from_millis(400));
    let mut quiet_opts = fast_opts();
    quiet_opts["heartbeatIntervalMs"] = json!(30_000);
    let mut quiet = client(&srv, "quiet", quiet_opts);
    let mut busy_opts = traced_opts();
    busy_opts["heartbeatIntervalMs"] = json!(100);
    let mut busy = client(&srv, "busy", busy_opts);
    quiet.join_ok("room:idle");
    busy.join_ok("room:idle");
    let close = quiet.expect(ev("socket_close"));
    assert_eq!(close["code"], json!(1001), "idle close code");
    quiet.expect_after(close.index, ev("socket_open"));
    quiet.expect(ev("rejoined").with("topic", "room:idle"));
    // By now the busy client has been connected for longer than the idle timeout.
    for _ in 0..8 {
        busy.expect(frame_in("heartbeat reply", |f| {
            f[2] == "phoenix" && f[3] == "phx_reply"
        }));
    }
    busy.refute(ev("socket_close"));
}

/// (extra) A frame larger than `max_frame_bytes` closes the connection with 1009 (message too
/// big); one just under the limit is processed. The client reconnects.
#[test]
fn oversized_frame_closes_with_1009() {
    let srv = TestServer::start_with(|c| c.limits.socket.max_frame_bytes = 4096);
    let mut c = client(&srv, "c", traced_opts());
    let frame = |pad: usize| json!([null, "big", "phoenix", "heartbeat", {"pad": "x".repeat(pad)}]);
    let small = frame(4000);
    assert!(small.to_string().len() <= 4096);
    c.raw_frame(small);
    expect_frame(
        &mut c,
        json!([null, "big", "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
    );
    let big = frame(5000);
    assert!(big.to_string().len() > 4096);
    let from = c.mark();
    c.raw_frame(big);
    let close = c.expect_after(from, ev("socket_close"));
    assert_eq!(
        close["code"],
        json!(1009),
        "close code for an oversized frame"
    );
    c.expect_after(close.index, ev("socket_open"));
}

/// Room names are exactly what the README and the lobby allow: look-alikes made with bidi
/// overrides or zero-width characters are refused with the rule, before any room starts.
#[test]
fn look_alike_room_names_are_refused() {
    let srv = TestServer::start();
    let mut c = client(&srv, "c", fast_opts());
    for name in ["abc\u{202e}def", "a\u{200b}b", "caf\u{e9}", "two words"] {
        let topic = format!("room:{name}");
        c.join(&topic);
        let err = c.expect(ev("join_error").with("topic", topic.as_str()));
        assert_eq!(
            err["response"],
            json!({"reason": "room name may only contain letters, digits, '.', '_' and '-'"}),
            "{name:?}"
        );
    }
    assert!(srv.app().rooms.is_empty());
}

/// With a join secret, the join payload's `token` decides: none, another room's, or an expired
/// one is refused with its reason; a valid one joins, and phoenix.js's automatic rejoin (which
/// resends the join payload) gets back in after a room crash.
#[test]
fn join_tokens_gate_the_room() {
    use std::time::{Duration, SystemTime};
    use videoroom::join_token::JoinSecret;

    let secret = JoinSecret::new(b"wire test secret, 16+ bytes").unwrap();
    let srv = TestServer::start_with(|c| c.join_secret = Some(secret.clone()));
    let mut c = client(&srv, "c", fast_opts());
    let later = SystemTime::now() + Duration::from_secs(600);
    let earlier = SystemTime::now() - Duration::from_secs(1);
    for (room, payload, reason) in [
        ("a", json!({}), "a join token is required"),
        (
            "b",
            json!({"token": secret.mint("x", later)}),
            "token is for another room",
        ),
        (
            "c",
            json!({"token": secret.mint("c", earlier)}),
            "token expired",
        ),
        (
            "d",
            json!({"token": "forged.token"}),
            "join token is not valid",
        ),
    ] {
        let topic = format!("room:{room}");
        c.join_with(&topic, payload);
        let err = c.expect(ev("join_error").with("topic", topic.as_str()));
        assert_eq!(err["response"], json!({"reason": reason}));
    }
    assert!(srv.app().rooms.is_empty(), "no refused join started a room");
    c.join_with("room:ok", json!({"token": secret.mint("ok", later)}));
    c.expect(ev("join_ok").with("topic", "room:ok"));
    srv.app().kill_room("ok").expect("room:ok runs");
    c.expect(ev("rejoined").with("topic", "room:ok"));
}

/// Rooms joined from one source address are counted over all its sockets: past the limit a join
/// is refused with a reason, and a leave gives the place back. (Each joined room is a peer with
/// a media connection on the server: one client could otherwise hold every room of the node.)
#[test]
fn rooms_joined_from_one_address_are_capped_across_its_sockets() {
    let srv = TestServer::start_with(|c| c.edge.max_peers_per_source = 2);
    let mut a = client(&srv, "a", fast_opts());
    let mut b = client(&srv, "b", fast_opts());
    let mut c = client(&srv, "c", fast_opts());
    a.join("room:src-a");
    a.expect(ev("join_ok").with("topic", "room:src-a"));
    b.join("room:src-b");
    b.expect(ev("join_ok").with("topic", "room:src-b"));
    c.join("room:src-c");
    let err = c.expect(ev("join_error").with("topic", "room:src-c"));
    assert_eq!(
        err["response"],
        json!({"reason": "too many rooms joined from your address (limit 2)"})
    );
    assert_eq!(srv.room_pid("src-c"), None, "no room was started for it");
    // phoenix.js retries a refused join by itself; once A leaves, C's retry gets the place.
    a.cmd(json!({"cmd": "leave", "topic": "room:src-a"}));
    a.expect(ev("leave_ok"));
    c.expect(ev("join_ok").with("topic", "room:src-c"));
}
