//! Rooms over the wire: media events between peers, room and channel crashes with automatic
//! rejoin, the real `membrane-webrtc-js` client, and graceful shutdown.

use std::time::Duration;

use serde_json::json;

use crate::support::driver::{ev, fast_opts, media_in, msg, Driver};
use crate::support::rooms::{connect_media, expect_media, joined, other_ids, until};
use crate::support::server::TestServer;

/// A's `connect` → `connected` to A (no other endpoints); B's `connect` → `connected` listing A,
/// and A sees `endpointAdded` for B with B's metadata; B leaves → A sees `endpointRemoved`.
#[test]
fn two_peers_exchange_media_events() {
    let srv = TestServer::start();
    let t = "room:media";
    let mut a = joined(&srv.url(), "A", t);
    let ca = connect_media(&mut a, t, "A");
    let a_id = ca["id"].as_str().unwrap().to_owned();
    assert_eq!(other_ids(&ca), Vec::<String>::new());

    let mut b = joined(&srv.url(), "B", t);
    let cb = connect_media(&mut b, t, "B");
    let b_id = cb["id"].as_str().unwrap().to_owned();
    assert_ne!(a_id, b_id);
    assert_eq!(other_ids(&cb), vec![a_id.clone()]);
    assert_eq!(
        cb["otherEndpoints"][0]["metadata"],
        json!({"displayName": "A"})
    );

    let added = expect_media(&mut a, t, "endpointAdded", &b_id);
    assert_eq!(added["metadata"], json!({"displayName": "B"}));

    b.cmd(json!({"cmd": "leave", "topic": t}));
    expect_media(&mut a, t, "endpointRemoved", &b_id);
    a.refute(media_in(t, "error"));
}

/// Room names are case-insensitive: a peer in `room:Team-Standup` meets one in
/// `room:team-standup`, each on the topic it joined.
#[test]
fn room_names_differing_only_in_case_are_one_room() {
    let srv = TestServer::start();
    let (ta, tb) = ("room:Team-Standup", "room:team-STANDUP");
    let mut a = joined(&srv.url(), "A", ta);
    let ca = connect_media(&mut a, ta, "A");
    let a_id = ca["id"].as_str().unwrap().to_owned();
    let mut b = joined(&srv.url(), "B", tb);
    let cb = connect_media(&mut b, tb, "B");
    assert_eq!(other_ids(&cb), vec![a_id]);
    let b_id = cb["id"].as_str().unwrap().to_owned();
    expect_media(&mut a, ta, "endpointAdded", &b_id);
}

/// S18 (extra): when a client's WebSocket goes away (here: it disconnects), its peer is torn
/// down and the other peer sees `endpointRemoved`.
#[test]
fn socket_close_removes_the_peer() {
    let srv = TestServer::start();
    let t = "room:sockclose";
    let mut a = joined(&srv.url(), "A", t);
    let mut b = joined(&srv.url(), "B", t);
    connect_media(&mut a, t, "A");
    let b_id = connect_media(&mut b, t, "B")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.cmd(json!({"cmd": "disconnect"}));
    b.expect(ev("disconnected"));
    expect_media(&mut a, t, "endpointRemoved", &b_id);
}

/// `app.kill_room` → every channel of the room gets `phx_error`, its client rejoins (`rejoined`)
/// into a new room process, where both peers connect afresh as new peers. A channel of another
/// room is untouched.
#[test]
fn room_crash_rejoins_into_a_new_room() {
    let srv = TestServer::start();
    let t = "room:crash";
    let mut a = joined(&srv.url(), "A", t);
    let mut b = joined(&srv.url(), "B", t);
    let mut other = joined(&srv.url(), "other", "room:bystander");
    let old_a = connect_media(&mut a, t, "A")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_b = connect_media(&mut b, t, "B")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_room = srv.room_pid("crash").expect("room:crash runs");

    assert_eq!(srv.app().kill_room("crash"), Some(old_room));
    for c in [&mut a, &mut b] {
        c.expect(msg(t, "phx_error"));
        c.expect(ev("channel_error").with("topic", t));
        c.expect(ev("rejoined").with("topic", t));
    }
    let new_room = srv
        .room_pid("crash")
        .expect("room:crash runs again after the rejoins");
    assert_ne!(new_room, old_room, "the rejoins started a new room process");

    let ca = connect_media(&mut a, t, "A");
    let cb = connect_media(&mut b, t, "B");
    let (new_a, new_b) = (ca["id"].as_str().unwrap(), cb["id"].as_str().unwrap());
    for id in [new_a, new_b] {
        assert!(
            id != old_a && id != old_b,
            "rejoined peers get new ids: {id}"
        );
    }
    assert_eq!(
        other_ids(&ca),
        Vec::<String>::new(),
        "no stale endpoints in the new room"
    );
    assert_eq!(other_ids(&cb), vec![new_a.to_owned()]);
    let mut peers: Vec<String> = srv
        .room_peers("crash")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    peers.sort();
    let mut want = vec![new_a.to_owned(), new_b.to_owned()];
    want.sort();
    assert_eq!(peers, want);

    other.refute(ev("channel_error"));
    other.refute(ev("rejoined"));
}

/// `app.kill_process(channel pid)` → that client gets `phx_error` and rejoins as a new peer; the
/// other peer sees `endpointRemoved` for the old id, then `endpointAdded` for the new one.
#[test]
fn channel_crash_rejoins_and_peers_see_removal() {
    let srv = TestServer::start();
    let t = "room:chancrash";
    let mut a = joined(&srv.url(), "A", t);
    let mut b = joined(&srv.url(), "B", t);
    let a_id = connect_media(&mut a, t, "A")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b_id = connect_media(&mut b, t, "B")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    expect_media(&mut a, t, "endpointAdded", &b_id);
    let room = srv.room_pid("chancrash");

    let pid = srv.channel_pid("chancrash", &b_id);
    assert!(srv.app().kill_process(pid), "channel {pid:?} was alive");
    b.expect(msg(t, "phx_error"));
    b.expect(ev("rejoined").with("topic", t));
    expect_media(&mut a, t, "endpointRemoved", &b_id);

    let cb = connect_media(&mut b, t, "B");
    let new_b = cb["id"].as_str().unwrap().to_owned();
    assert_ne!(new_b, b_id);
    assert_eq!(other_ids(&cb), vec![a_id]);
    expect_media(&mut a, t, "endpointAdded", &new_b);
    assert_eq!(
        srv.room_pid("chancrash"),
        room,
        "the room survived the channel crash"
    );
    a.refute(ev("channel_error"));
}

/// The real `membrane-webrtc-js` 0.5.3 client: A joins alone, B joins and sees A, A sees B
/// arrive and leave.
#[test]
fn membrane_client_join_and_leave() {
    let srv = TestServer::start();
    let join = |d: &mut Driver, name: &str| {
        d.cmd(json!({"cmd": "join", "url": srv.url(), "room": "membrane",
                     "metadata": {"displayName": name}, "opts": fast_opts()}));
        d.expect(ev("join_success"))
    };
    let mut a = Driver::membrane("A");
    let ja = join(&mut a, "A");
    let a_id = ja["peerId"].as_str().expect("peerId").to_owned();
    assert_eq!(ja["peersInRoom"], json!([]));

    let mut b = Driver::membrane("B");
    let jb = join(&mut b, "B");
    let b_id = jb["peerId"].as_str().expect("peerId").to_owned();
    assert_eq!(
        jb["peersInRoom"],
        json!([{"id": a_id, "type": "webrtc", "metadata": {"displayName": "A"}, "trackIds": []}])
    );
    let joined = a.expect(ev("peer_joined").with("id", b_id.as_str()));
    assert_eq!(joined["metadata"], json!({"displayName": "B"}));

    b.cmd(json!({"cmd": "leave"}));
    b.expect(ev("left"));
    a.expect(ev("peer_left").with("id", b_id.as_str()));
    for d in [&mut a, &mut b] {
        d.refute(ev("media_event_error"));
        d.refute(ev("connection_error"));
        d.refute(ev("driver_error"));
    }
}

/// Graceful shutdown closes every socket with a code other than 1000 (1012, service restart),
/// so phoenix.js clients reconnect.
#[test]
fn graceful_shutdown_closes_with_1012() {
    let mut srv = TestServer::start();
    let mut a = joined(&srv.url(), "A", "room:bye");
    let mut b = joined(&srv.url(), "B", "room:bye");
    srv.shutdown();
    for c in [&mut a, &mut b] {
        let close = c.expect(ev("socket_close"));
        assert_ne!(
            close["code"],
            json!(1000),
            "1000 would stop older phoenix.js from reconnecting"
        );
        assert_eq!(close["code"], json!(1012));
    }
}

/// At `max_rooms`, a join that would start one more room is refused with a reason, while a join
/// to a running room still works. When the clients go, every room stops: the registry and the
/// process table are back to where they started, and new rooms may start again.
#[test]
fn rooms_per_node_are_capped_and_come_back_when_closed() {
    const CAP: usize = 60;
    // One socket opens every room: the per-socket and per-source limits are not under test.
    let srv = TestServer::start_with(|c| {
        c.limits.max_rooms = CAP;
        c.limits.socket.max_channels = 2 * CAP;
        c.edge.max_peers_per_source = 2 * CAP;
    });
    let baseline = srv.app().sys.live_count();
    let mut a = Driver::phx("A");
    a.connect(&srv.url(), fast_opts());
    for i in 0..CAP {
        a.join(&format!("room:cap-{i}"));
    }
    for i in 0..CAP {
        a.expect(ev("join_ok").with("topic", format!("room:cap-{i}")));
    }
    assert_eq!(srv.app().rooms.len(), CAP);
    a.join("room:one-too-many");
    let err = a.expect(ev("join_error").with("topic", "room:one-too-many"));
    assert_eq!(
        err["response"],
        json!({"reason": "server is at its room limit"})
    );
    assert_eq!(srv.room_pid("one-too-many"), None);
    let mut b = joined(&srv.url(), "B", "room:cap-7");
    assert_eq!(
        srv.room_peers("cap-7").len(),
        2,
        "a running room still admits"
    );

    for c in [&mut a, &mut b] {
        c.cmd(json!({"cmd": "disconnect"}));
        c.expect(ev("disconnected"));
    }
    until(
        "every room stopped and every process ended",
        Duration::from_secs(10),
        || srv.app().rooms.is_empty() && srv.app().sys.live_count() == baseline,
    );
    let _c = joined(&srv.url(), "C", "room:one-too-many");
}

/// A joined channel that never sends `connect` holds a slot nobody in the room can see. After
/// the connect grace the room drops it: its client gets `dropped` with a reason, then
/// `phx_close` (so phoenix.js does not rejoin), and the newcomer it kept out gets in.
#[test]
fn a_squatter_is_dropped_after_the_grace_and_told_why() {
    let srv = TestServer::start_with(|c| {
        c.limits.max_peers_per_room = 2;
        c.limits.connect_grace = std::time::Duration::from_millis(500);
    });
    let t = "room:squat";
    // Every client's process is up and connected before the squatter's grace starts: starting
    // a Node process can take longer than the grace on a loaded machine, and the guest must be
    // refused while the squatter still holds its slot.
    let mut guest = Driver::phx("guest");
    guest.connect(&srv.url(), fast_opts());
    let mut host = Driver::phx("host");
    host.connect(&srv.url(), fast_opts());
    let mut squatter = joined(&srv.url(), "squatter", t);
    host.join_ok(t);
    connect_media(&mut host, t, "host");
    guest.join(t);
    let full = guest.expect(ev("join_error").with("topic", t));
    assert_eq!(full["response"], json!({"reason": "room is full"}));

    let dropped = squatter.expect(msg(t, "dropped"));
    assert_eq!(
        dropped["payload"],
        json!({"reason": "did not connect to the media session within 0.5 s of joining"})
    );
    let closed = squatter.expect(ev("channel_close").with("topic", t));
    assert!(
        closed.index > dropped.index,
        "the reason comes before the close"
    );
    guest.expect(ev("join_ok").with("topic", t));
    connect_media(&mut guest, t, "guest");
    assert_eq!(srv.room_peers("squat").len(), 2);
    squatter.refute(ev("rejoined"));
    squatter.refute(ev("channel_error"));
    host.refute(media_in(t, "endpointRemoved"));
}
