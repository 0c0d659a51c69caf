//! Cluster mode on real etcd (Debian's etcd-server) with the unmodified npm `phoenix` client:
//! nodes in this process, each in its own runtime with its own listener, dist link and lease.
//!
//! Lease TTL 3 s here (fence deadline 1.8 s after a keepalive), so failovers fit a test.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::driver::{ev, media_in, msg, Driver};
use crate::support::etcd::Etcd;
use crate::support::rooms::{connect_media, expect_media, joined, other_ids, until};
use crate::support::server::TestServer;

const TTL_SECS: u64 = 3;

fn node(etcd: &Etcd, name: &str) -> TestServer {
    TestServer::cluster_node(&etcd.url(), name, TTL_SECS, Duration::from_secs(10), |c| {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.etcd_timeout = Duration::from_millis(500);
        }
    })
}

/// Which of `nodes` runs `room` (exactly one must).
#[track_caller]
fn owner(nodes: &[&TestServer], room: &str) -> usize {
    let running: Vec<usize> = (0..nodes.len())
        .filter(|i| nodes[*i].room_pid(room).is_some())
        .collect();
    assert_eq!(
        running.len(),
        1,
        "{room} runs on exactly one node: {running:?}"
    );
    running[0]
}

/// Two clients whose sockets are on different nodes join one room: one room process in the
/// cluster, media events both ways, and a leave seen across the link. Once both are gone the
/// proxies and cross-node monitors are gone too.
#[test]
fn clients_on_two_nodes_meet_in_one_room() {
    let etcd = Etcd::start();
    let a = node(&etcd, "a");
    let b = node(&etcd, "b");
    let t = "room:across";

    let mut ca = joined(&a.url(), "A", t);
    let con_a = connect_media(&mut ca, t, "A");
    let a_id = con_a["id"].as_str().unwrap().to_owned();
    let mut cb = joined(&b.url(), "B", t);
    let con_b = connect_media(&mut cb, t, "B");
    let b_id = con_b["id"].as_str().unwrap().to_owned();
    assert_eq!(other_ids(&con_b), vec![a_id.clone()]);
    assert_eq!(
        con_b["otherEndpoints"][0]["metadata"],
        json!({"displayName": "A"})
    );
    let added = expect_media(&mut ca, t, "endpointAdded", &b_id);
    assert_eq!(added["metadata"], json!({"displayName": "B"}));
    owner(&[&a, &b], "across");

    cb.cmd(json!({"cmd": "leave", "topic": t}));
    expect_media(&mut ca, t, "endpointRemoved", &b_id);
    ca.cmd(json!({"cmd": "leave", "topic": t}));
    for n in [&a, &b] {
        until(
            "no proxy or cross-node monitor is left",
            Duration::from_secs(5),
            || {
                let (_, proxies, monitors) = n.cluster().held();
                proxies == 0 && monitors == 0
            },
        );
    }
    ca.refute(media_in(t, "error"));
    cb.refute(ev("channel_error"));
}

/// New rooms go to the least loaded node, whichever node the joining socket is on.
#[test]
fn new_rooms_spread_over_the_nodes() {
    let etcd = Etcd::start();
    let a = node(&etcd, "a");
    let b = node(&etcd, "b");
    until("a knows both nodes", Duration::from_secs(5), || {
        a.cluster().known_nodes() == 2
    });
    let clients: Vec<Driver> = (0..4)
        .map(|i| joined(&a.url(), &format!("C{i}"), &format!("room:spread-{i}")))
        .collect();
    let owners: Vec<usize> = (0..4)
        .map(|i| owner(&[&a, &b], &format!("spread-{i}")))
        .collect();
    let on_b = owners.iter().filter(|o| **o == 1).count();
    assert_eq!(on_b, 2, "two of four rooms on each node: {owners:?}");
    drop(clients);
}

/// The owner node crashes: the peer on the other node gets `phx_error`, rejoins, and lands in
/// a new room on the surviving node within the lease TTL plus a few seconds.
#[test]
fn a_crashed_owner_node_fails_over_to_a_live_one() {
    let etcd = Etcd::start();
    let mut nodes = vec![node(&etcd, "a"), node(&etcd, "b")];
    let t = "room:failover";
    let mut clients: Vec<Driver> = ["A", "B"]
        .iter()
        .zip(&nodes)
        .map(|(label, n)| {
            let mut c = joined(&n.url(), label, t);
            connect_media(&mut c, t, label);
            c
        })
        .collect();
    let dead = owner(&[&nodes[0], &nodes[1]], "failover");
    let live = 1 - dead;
    drop(clients.remove(dead));
    let mut c = clients.pop().unwrap();
    nodes[dead].crash();
    let crashed = Instant::now();
    c.expect_within(msg(t, "phx_error"), Duration::from_secs(10), 0);
    let from = c.mark();
    c.expect_within(
        ev("rejoined").with("topic", t),
        Duration::from_secs(TTL_SECS + 8),
        from,
    );
    let rejoined = crashed.elapsed();
    let con = connect_media(&mut c, t, "survivor");
    assert_eq!(other_ids(&con), Vec::<String>::new(), "a fresh room");
    assert!(
        nodes[live].room_pid("failover").is_some(),
        "the room now runs on the live node"
    );
    eprintln!("failover: rejoined {rejoined:?} after the owner crashed");
}
