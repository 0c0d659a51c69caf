//! Snapshots (insta, `snapshots/` at the repo root) of the wire transcripts of the main flows, as
//! the real `phoenix` client saw them. Each step waits for the frame that ends it before the next
//! one starts, so every client's frame order is deterministic; refs and peer ids are normalised
//! (see `support::transcript`). Heartbeats come from a timer and are left out, except in the
//! heartbeat flow, which waits for the first heartbeat before doing anything else.

use serde_json::{json, Value};

use crate::support::driver::{ev, frame_in, media_data, media_in, traced_opts, Driver};
use crate::support::server::TestServer;
use crate::support::transcript::Transcript;
use crate::with_snapshot_dir;

fn traced(srv: &TestServer, label: &str) -> Driver {
    let mut c = Driver::phx(label);
    c.connect(&srv.url(), traced_opts());
    c.expect(ev("socket_open"));
    c
}

/// Waits for a server frame on `topic` with `event`.
#[track_caller]
fn wait_frame(c: &mut Driver, topic: &str, event: &str) {
    let (t, e) = (topic.to_owned(), event.to_owned());
    c.expect(frame_in(&format!("{topic} {event}"), move |f| {
        f[2] == t.as_str() && f[3] == e.as_str()
    }));
}

/// Sends `connect` and returns the new peer id from `connected`.
#[track_caller]
fn connect(c: &mut Driver, topic: &str, name: &str) -> String {
    let from = c.mark();
    c.push_media(
        topic,
        json!({"type": "connect", "data": {"metadata": {"displayName": name}}}),
    );
    let m = c.expect_after(from, media_in(topic, "connected"));
    media_data(&m.value).expect("connected is JSON")["data"]["id"]
        .as_str()
        .expect("connected.data.id")
        .to_owned()
}

#[track_caller]
fn wait_media(c: &mut Driver, topic: &str, kind: &str, id: &str) {
    let id = id.to_owned();
    c.expect(media_in(topic, kind).when(&format!("id={id}"), move |v| {
        media_data(v).is_some_and(|d| d["data"]["id"] == id.as_str())
    }));
}

fn events(c: &mut Driver) -> Vec<Value> {
    c.events().to_vec()
}

/// Heartbeat, join, leave: `[null,r,"phoenix","heartbeat"]` → ok; join → ok `{}`; leave → ok
/// reply, then `phx_close` on the join_ref.
#[test]
fn transcript_join_heartbeat_leave() {
    let srv = TestServer::start();
    let mut opts = traced_opts();
    opts["heartbeatIntervalMs"] = json!(1000);
    let mut c = Driver::phx("c");
    c.connect(&srv.url(), opts);
    c.expect(ev("socket_open"));
    wait_frame(&mut c, "phoenix", "phx_reply");
    c.join_ok("room:t-basic");
    c.cmd(json!({"cmd": "leave", "topic": "room:t-basic"}));
    wait_frame(&mut c, "room:t-basic", "phx_close");

    let mut t = Transcript::new();
    t.section("client", &events(&mut c), 2);
    with_snapshot_dir!({ insta::assert_snapshot!("wire_join_heartbeat_leave", t.text()) });
}

/// Two peers: A connects alone, B connects and is told about A, A is told about B; B leaves and
/// A is told.
#[test]
fn transcript_two_peers_media_events() {
    let srv = TestServer::start();
    let topic = "room:t-media";
    let mut a = traced(&srv, "A");
    let mut b = traced(&srv, "B");
    a.join_ok(topic);
    let a_id = connect(&mut a, topic, "A");
    b.join_ok(topic);
    let b_id = connect(&mut b, topic, "B");
    wait_media(&mut a, topic, "endpointAdded", &b_id);
    b.cmd(json!({"cmd": "leave", "topic": topic}));
    wait_frame(&mut b, topic, "phx_close");
    wait_media(&mut a, topic, "endpointRemoved", &b_id);

    let mut t = Transcript::new();
    t.name(&a_id, "peer-A").name(&b_id, "peer-B");
    t.section("A", &events(&mut a), 0);
    t.section("B", &events(&mut b), 0);
    with_snapshot_dir!({ insta::assert_snapshot!("wire_two_peers_media_events", t.text()) });
}

/// Room crash: both peers' channels get `phx_error`, both clients rejoin (new join_ref) into a
/// new room and connect again as new peers.
#[test]
fn transcript_room_crash_rejoin() {
    let srv = TestServer::start();
    let topic = "room:t-crash";
    let mut a = traced(&srv, "A");
    let mut b = traced(&srv, "B");
    a.join_ok(topic);
    let a1 = connect(&mut a, topic, "A");
    b.join_ok(topic);
    let b1 = connect(&mut b, topic, "B");
    wait_media(&mut a, topic, "endpointAdded", &b1);

    srv.app().kill_room("t-crash").expect("room t-crash runs");
    for c in [&mut a, &mut b] {
        c.expect(ev("rejoined").with("topic", topic));
    }
    let a2 = connect(&mut a, topic, "A");
    let b2 = connect(&mut b, topic, "B");
    wait_media(&mut a, topic, "endpointAdded", &b2);

    let mut t = Transcript::new();
    t.name(&a1, "peer-A1")
        .name(&b1, "peer-B1")
        .name(&a2, "peer-A2")
        .name(&b2, "peer-B2");
    t.section("A", &events(&mut a), 0);
    t.section("B", &events(&mut b), 0);
    with_snapshot_dir!({ insta::assert_snapshot!("wire_room_crash_rejoin", t.text()) });
}
