//! Cluster mode as an operator runs it: three real `videoroom` processes (`--fake-media --port 0
//! --etcd <url> --node-name nX --dist-listen 127.0.0.1:0 --lease-ttl 3`) against one real etcd
//! (Debian's etcd-server), driven by the unmodified npm `phoenix` client. Crashes are real
//! (`kill -9` of a node, SIGSTOP of etcd), and which node runs a room is read from each node's
//! `GET /metrics` (`videoroom_rooms`).
//!
//! Lease TTL 3 s: a node fences 1.8 s after its last acknowledged keepalive was sent, and a dead
//! node's rooms are free again 3 s after its last keepalive.
//!
//! Run alone (`-- --test-threads 1`) on a small machine: each test holds four processes.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::driver::{ev, msg, Driver};
use crate::support::etcd::Etcd;
use crate::support::node_proc::{NodeProc, ACTING, FENCED};
use crate::support::rooms::{connect_media_within, expect_media_within, joined, other_ids, until};

const TTL_SECS: u64 = 3;
/// How long a media event may take: a room on another node answers through two processes and
/// a dist link.
const CROSS_NODE: Duration = Duration::from_secs(10);

/// Three nodes on one etcd, each registered and acting.
fn three_nodes(etcd: &Etcd) -> Vec<NodeProc> {
    let nodes: Vec<NodeProc> = ["n1", "n2", "n3"]
        .iter()
        .map(|name| NodeProc::cluster_node(&etcd.url(), name, TTL_SECS))
        .collect();
    for n in &nodes {
        assert!(n.healthy(), "{} answers /healthz", n.label());
        assert_eq!(
            n.metric("videoroom_cluster_acting"),
            1.0,
            "{} acts",
            n.label()
        );
        assert!(
            n.log().contains("dist link listening on 127.0.0.1:"),
            "{} logs its dist port: {}",
            n.label(),
            n.tail(5)
        );
    }
    nodes
}

fn own_id(connected: &Value) -> String {
    connected["id"].as_str().expect("endpoint id").to_owned()
}

/// The index of the one node whose `/metrics` shows a running room, once exactly one does and
/// the others show none (polled: a room's gauge goes up as its process starts).
#[track_caller]
fn room_owner(nodes: &[&NodeProc]) -> usize {
    let mut owner = None;
    let mut last = Vec::new();
    until(
        "exactly one node runs a room",
        Duration::from_secs(10),
        || {
            last = nodes.iter().map(|n| n.metric("videoroom_rooms")).collect();
            let running: Vec<usize> = (0..nodes.len()).filter(|i| last[*i] > 0.0).collect();
            owner = (running.len() == 1 && last[running[0]] == 1.0).then(|| running[0]);
            owner.is_some()
        },
    );
    owner.unwrap_or_else(|| panic!("rooms per node: {last:?}"))
}

/// Each client connects its media in turn; each sees every earlier one in `connected`, and
/// every earlier one gets `endpointAdded` for it. Returns the endpoint ids.
#[track_caller]
fn all_meet(clients: &mut [(&str, &mut Driver)], topic: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for i in 0..clients.len() {
        let marks: Vec<usize> = clients[..i].iter_mut().map(|(_, c)| c.mark()).collect();
        let label = clients[i].0;
        let con = connect_media_within(clients[i].1, topic, label, CROSS_NODE);
        let id = own_id(&con);
        let mut want = ids.clone();
        want.sort();
        let mut seen = other_ids(&con);
        seen.sort();
        assert_eq!(
            seen, want,
            "{label} sees everyone connected before it: {con}"
        );
        for (j, (_, earlier)) in clients[..i].iter_mut().enumerate() {
            let added =
                expect_media_within(earlier, topic, "endpointAdded", &id, CROSS_NODE, marks[j]);
            assert_eq!(added["metadata"]["displayName"], json!(label));
        }
        ids.push(id);
    }
    ids
}

/// Two clients whose sockets are on two different nodes meet in one room (which runs on
/// exactly one of the three nodes), and a leave is seen across the cluster.
#[test]
fn clients_on_two_node_processes_meet_in_one_room() {
    let etcd = Etcd::start();
    let nodes = three_nodes(&etcd);
    let t = "room:x";
    let mut a = joined(&nodes[0].url(), "A", t);
    let mut b = joined(&nodes[1].url(), "B", t);
    let ids = all_meet(&mut [("A", &mut a), ("B", &mut b)], t);
    let owner = room_owner(&nodes.iter().collect::<Vec<_>>());
    eprintln!("room:x runs on {}", nodes[owner].label());

    let from = a.mark();
    b.cmd(json!({"cmd": "leave", "topic": t}));
    expect_media_within(&mut a, t, "endpointRemoved", &ids[1], CROSS_NODE, from);
    a.refute(msg(t, "phx_error"));
    b.refute(ev("channel_error"));
}

/// `kill -9` of the node that runs a room: its two clients, whose sockets are on the two other
/// nodes, get `phx_error`, rejoin by themselves, and meet again in a fresh room on a live node
/// within the lease TTL plus a few seconds.
#[test]
fn killing_the_room_node_moves_its_clients_to_a_live_one() {
    let etcd = Etcd::start();
    let mut nodes = three_nodes(&etcd);
    let t = "room:failover";
    // Placement picks the least loaded node (hash tie-break), wherever the socket is: a probe
    // creates the room, /metrics says where it runs, and the clients join through the others.
    let mut probe = joined(&nodes[0].url(), "probe", t);
    let owner = room_owner(&nodes.iter().collect::<Vec<_>>());
    let live: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let mut a = joined(&nodes[live[0]].url(), "A", t);
    let mut b = joined(&nodes[live[1]].url(), "B", t);
    all_meet(&mut [("A", &mut a), ("B", &mut b)], t);
    probe.cmd(json!({"cmd": "leave", "topic": t}));
    probe.expect(ev("leave_ok").with("topic", t));
    drop(probe);
    eprintln!(
        "room:failover runs on {}; clients on {} and {}",
        nodes[owner].label(),
        nodes[live[0]].label(),
        nodes[live[1]].label()
    );

    let (from_a, from_b) = (a.mark(), b.mark());
    nodes[owner].kill9();
    let killed = Instant::now();
    a.expect_within(msg(t, "phx_error"), Duration::from_secs(10), from_a);
    b.expect_within(msg(t, "phx_error"), Duration::from_secs(10), from_b);
    let errored = killed.elapsed();
    let within = Duration::from_secs(TTL_SECS + 10);
    a.expect_within(ev("rejoined").with("topic", t), within, from_a);
    b.expect_within(ev("rejoined").with("topic", t), within, from_b);
    let rejoined = killed.elapsed();
    all_meet(&mut [("A", &mut a), ("B", &mut b)], t);
    let met = killed.elapsed();
    let survivors = [&nodes[live[0]], &nodes[live[1]]];
    let new_owner = room_owner(&survivors);
    eprintln!(
        "kill -9 failover: phx_error on both clients {errored:?}, both rejoined {rejoined:?}, \
         met again {met:?} after the kill (room now on {})",
        survivors[new_owner].label()
    );
    assert!(
        met < Duration::from_secs(TTL_SECS + 8),
        "clients met again within TTL + 8 s: {met:?}"
    );
}

/// etcd stops answering (SIGSTOP) for longer than the lease TTL: every node fences, so every
/// joined client gets `phx_error` and no join succeeds while it lasts; once etcd is back
/// (SIGCONT) the nodes register anew and the clients' own rejoins bring them together again.
#[test]
fn an_etcd_outage_ends_every_room_until_etcd_is_back() {
    let etcd = Etcd::start();
    let mut nodes = three_nodes(&etcd);
    let t = "room:x";
    let mut a = joined(&nodes[0].url(), "A", t);
    let mut b = joined(&nodes[1].url(), "B", t);
    let mut c = joined(&nodes[2].url(), "C", t);
    all_meet(&mut [("A", &mut a), ("B", &mut b), ("C", &mut c)], t);
    let owner = room_owner(&nodes.iter().collect::<Vec<_>>());

    let outage = Duration::from_secs(TTL_SECS + 2);
    let marks = [a.mark(), b.mark(), c.mark()];
    etcd.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let mut errored = Vec::new();
    for (cl, from) in [&mut a, &mut b, &mut c].into_iter().zip(marks) {
        cl.expect_within(msg(t, "phx_error"), outage, from);
        errored.push(stopped.elapsed());
    }
    for n in &mut nodes {
        n.wait_log(FENCED, outage.saturating_sub(stopped.elapsed()));
    }
    let all_fenced = stopped.elapsed();
    // A fenced node tells a load balancer so, and says why.
    for n in &nodes {
        let (head, body) = crate::support::http::get_body(n.addr, "/healthz");
        assert_eq!(head.status, 503, "{} fenced: /healthz {body}", n.label());
        assert!(body.starts_with("fenced"), "{}: {body}", n.label());
        assert_eq!(n.metric("videoroom_cluster_acting"), 0.0, "{}", n.label());
    }
    // The outage itself is the scenario: keep etcd stopped for its whole length.
    std::thread::sleep(outage.saturating_sub(stopped.elapsed()));
    for cl in [&mut a, &mut b, &mut c] {
        cl.refute(ev("rejoined"));
    }
    etcd.signal(libc::SIGCONT);
    let resumed = Instant::now();
    for n in &mut nodes {
        n.wait_log_nth(ACTING, 2, Duration::from_secs(10));
    }
    let reregistered = resumed.elapsed();
    for n in &nodes {
        assert!(
            n.healthy(),
            "{} answers /healthz ok once acting again",
            n.label()
        );
    }
    let within = Duration::from_secs(15);
    for (cl, from) in [&mut a, &mut b, &mut c].into_iter().zip(marks) {
        cl.expect_within(ev("rejoined").with("topic", t), within, from);
    }
    let rejoined = resumed.elapsed();
    all_meet(&mut [("A", &mut a), ("B", &mut b), ("C", &mut c)], t);
    let met = resumed.elapsed();
    let new_owner = room_owner(&nodes.iter().collect::<Vec<_>>());
    eprintln!(
        "etcd outage of {outage:?} (room on {} before, {} after): phx_error after {:?} \
         (A, B, C), every node fenced by {all_fenced:?} after SIGSTOP; after SIGCONT every \
         node acting again {reregistered:?}, every client rejoined {rejoined:?}, met again \
         {met:?}",
        nodes[owner].label(),
        nodes[new_owner].label(),
        errored,
    );
    assert!(
        errored.iter().all(|e| *e < Duration::from_secs(TTL_SECS)),
        "every room ended before the TTL ran out: {errored:?}"
    );
}

/// A node frozen past its lease (SIGSTOP, as a long pause or a VM migration would freeze it) is
/// the stale owner. The clients on the live nodes get `phx_error` once the link to it falls
/// silent and meet again in a fresh room once etcd lets its lease lapse. When the frozen node
/// wakes, its old room ends before it serves anything more: its own client gets `phx_error`,
/// rejoins, and lands in the one room that runs, where the others see it; the woken node runs
/// no room.
#[test]
fn a_node_frozen_past_its_lease_wakes_without_serving_its_old_room() {
    let etcd = Etcd::start();
    let nodes = three_nodes(&etcd);
    let t = "room:frozen";
    let mut probe = joined(&nodes[0].url(), "probe", t);
    let owner = room_owner(&nodes.iter().collect::<Vec<_>>());
    let live: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    // S's socket is on the room's node (a local channel), A's and B's on the others.
    let mut s = joined(&nodes[owner].url(), "S", t);
    let mut a = joined(&nodes[live[0]].url(), "A", t);
    let mut b = joined(&nodes[live[1]].url(), "B", t);
    all_meet(&mut [("S", &mut s), ("A", &mut a), ("B", &mut b)], t);
    probe.cmd(json!({"cmd": "leave", "topic": t}));
    probe.expect(ev("leave_ok").with("topic", t));
    drop(probe);

    let frozen_for = Duration::from_secs(TTL_SECS + 2);
    let marks = [s.mark(), a.mark(), b.mark()];
    nodes[owner].signal(libc::SIGSTOP);
    let frozen = Instant::now();
    a.expect_within(msg(t, "phx_error"), Duration::from_secs(10), marks[1]);
    b.expect_within(msg(t, "phx_error"), Duration::from_secs(10), marks[2]);
    let within = Duration::from_secs(TTL_SECS + 10);
    a.expect_within(ev("rejoined").with("topic", t), within, marks[1]);
    b.expect_within(ev("rejoined").with("topic", t), within, marks[2]);
    let ab = all_meet(&mut [("A", &mut a), ("B", &mut b)], t);
    let met = frozen.elapsed();
    let survivors = [&nodes[live[0]], &nodes[live[1]]];
    let new_owner = room_owner(&survivors);
    // The freeze is the scenario: hold it past the lease TTL whatever the rejoins took.
    std::thread::sleep(frozen_for.saturating_sub(frozen.elapsed()));

    let (from_a, from_b) = (a.mark(), b.mark());
    nodes[owner].signal(libc::SIGCONT);
    let woke = Instant::now();
    s.expect_within(msg(t, "phx_error"), Duration::from_secs(10), marks[0]);
    let errored = woke.elapsed();
    s.expect_within(
        ev("rejoined").with("topic", t),
        Duration::from_secs(20),
        marks[0],
    );
    let con = connect_media_within(&mut s, t, "S", CROSS_NODE);
    let mut seen = other_ids(&con);
    seen.sort();
    let mut want = ab.clone();
    want.sort();
    assert_eq!(seen, want, "S lands in the room A and B are in: {con}");
    let id = own_id(&con);
    expect_media_within(&mut a, t, "endpointAdded", &id, CROSS_NODE, from_a);
    expect_media_within(&mut b, t, "endpointAdded", &id, CROSS_NODE, from_b);
    let rejoined = woke.elapsed();
    let after = room_owner(&nodes.iter().collect::<Vec<_>>());
    assert_ne!(after, owner, "the woken node runs no room");
    eprintln!(
        "{} frozen {frozen_for:?}: A and B met again in a fresh room on {} {met:?} after the \
         freeze; on waking, S got phx_error after {errored:?} and met A and B {rejoined:?} \
         after",
        nodes[owner].label(),
        survivors[new_owner].label(),
    );
}

/// SIGTERM to the node that runs a room drains it: the room ends at once, its clients (on the
/// two other nodes) rejoin and meet again on a live node well before a lease TTL, because the
/// stopping node releases its rooms' names and revokes its lease instead of letting them lapse.
#[test]
fn a_stopped_room_node_hands_its_clients_over_at_once() {
    let etcd = Etcd::start();
    let mut nodes = three_nodes(&etcd);
    let t = "room:drain";
    let mut probe = joined(&nodes[0].url(), "probe", t);
    let owner = room_owner(&nodes.iter().collect::<Vec<_>>());
    let live: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let mut a = joined(&nodes[live[0]].url(), "A", t);
    let mut b = joined(&nodes[live[1]].url(), "B", t);
    all_meet(&mut [("A", &mut a), ("B", &mut b)], t);
    probe.cmd(json!({"cmd": "leave", "topic": t}));
    probe.expect(ev("leave_ok").with("topic", t));
    drop(probe);

    let (from_a, from_b) = (a.mark(), b.mark());
    let stopping = Instant::now();
    let status = nodes[owner].terminate(Duration::from_secs(15));
    let exited = stopping.elapsed();
    assert!(status.success(), "a drained node exits 0: {status}");
    a.expect_within(msg(t, "phx_error"), Duration::from_secs(10), from_a);
    b.expect_within(msg(t, "phx_error"), Duration::from_secs(10), from_b);
    let within = Duration::from_secs(TTL_SECS + 10);
    a.expect_within(ev("rejoined").with("topic", t), within, from_a);
    b.expect_within(ev("rejoined").with("topic", t), within, from_b);
    let rejoined = stopping.elapsed();
    all_meet(&mut [("A", &mut a), ("B", &mut b)], t);
    let met = stopping.elapsed();
    let survivors = [&nodes[live[0]], &nodes[live[1]]];
    let new_owner = room_owner(&survivors);
    eprintln!(
        "SIGTERM of {}: exited {exited:?}, both clients rejoined {rejoined:?}, met again \
         {met:?} after the signal (room now on {})",
        nodes[owner].label(),
        survivors[new_owner].label()
    );
    assert!(
        met < Duration::from_secs(TTL_SECS),
        "a drained node's room is free at once, not after its lease TTL: {met:?}"
    );
}
