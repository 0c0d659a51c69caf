//! The web app end to end in headless Chromium on a two-node cluster (real etcd, real media on
//! both nodes): Alice's page is served by node A, so its WebSocket is on A, and Bob's by node B.
//! Both join one room through the lobby; the room, its media engine and its TURN run on one node,
//! so one page's signalling crosses the dist link and its media goes to the other node's TURN.
//! Each page must decode the other's video, hear its audio and list both names. The browser side
//! is `tests/e2e/cluster.mjs` (see `e2e.rs` for the setup it needs).
#![cfg(feature = "media-webrtc")]

use std::time::Duration;

use crate::e2e::{check_browser_setup, real_media, repo_root, run_script_with};
use crate::support::etcd::Etcd;
use crate::support::rooms::until;
use crate::support::server::TestServer;

/// Lease TTL: generous, as Chromium and the two media planes share a small machine and no
/// failover is tested here.
const TTL_SECS: u64 = 10;

/// How long a node may take to register, and a page to show what it should: Chromium and two
/// media planes share a small machine.
const READY: Duration = Duration::from_secs(30);

/// A cluster node with the real media plane (its own TURN port), once it acts in the cluster.
fn node(etcd: &Etcd, name: &str) -> TestServer {
    TestServer::cluster_node(&etcd.url(), name, TTL_SECS, READY, |c| {
        c.media = real_media()
    })
}

#[test]
fn two_pages_on_two_nodes_see_and_hear_each_other() {
    let root = repo_root();
    let chromium = check_browser_setup(&root);
    let _serial = crate::support::MEDIA_EXCLUSIVE.blocking_lock();
    let etcd = Etcd::start();
    let a = node(&etcd, "a");
    let b = node(&etcd, "b");
    for (name, n) in [("a", &a), ("b", &b)] {
        until(&format!("{name} knows both nodes"), READY, || {
            n.cluster().known_nodes() == 2
        });
    }
    let nodes = [("a", &a), ("b", &b)];
    let base_a = format!("http://{}/", a.addr());
    let base_b = format!("http://{}/", b.addr());

    // Which nodes run the room, and their TURN servers' counters, while both pages are in it.
    let mut running: Option<(String, Vec<&str>)> = None;
    let mut turn = Vec::new();
    let (result, out) = run_script_with(
        &root,
        &chromium,
        "cluster.mjs",
        &[&base_a, &base_b],
        &[("E2E_CONTROL", "1".to_owned())],
        |line| {
            let room = line.strip_prefix("E2E_ROOM_OWNER ")?.trim();
            let on: Vec<&str> = nodes
                .iter()
                .filter(|(_, n)| n.room_pid(room).is_some())
                .map(|(name, _)| *name)
                .collect();
            turn = nodes
                .iter()
                .map(|(name, n)| (*name, n.turn_stats().expect("the real media plane")))
                .collect();
            let reply = on.join(" ");
            running = Some((room.to_owned(), on));
            Some(reply)
        },
    );

    for who in ["alice", "bob"] {
        let r = &result[who];
        let frames = r["framesDecodedDelta"].as_f64().unwrap_or(0.0);
        let energy = r["audioEnergyDelta"].as_f64().unwrap_or(0.0);
        let level = r["audioLevel"].as_f64().unwrap_or(0.0);
        assert!(frames > 5.0, "{who} decodes too few frames: {r}");
        assert!(energy > 0.0 || level > 0.0, "{who} hears nothing: {r}");
    }
    for (key, me, other) in [
        ("participantsAlice", "Alice (you)", "Bob"),
        ("participantsBob", "Bob (you)", "Alice"),
    ] {
        let names: Vec<&str> = result[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {result}"))
            .iter()
            .filter_map(|n| n.as_str())
            .collect();
        assert_eq!(names.len(), 2, "{key}: {names:?}");
        assert!(names.contains(&me), "{key}: {names:?}");
        assert!(
            names.iter().any(|n| n.starts_with(other)),
            "{key}: {names:?}"
        );
    }

    let (room, on) =
        running.unwrap_or_else(|| panic!("the script never asked where its room runs:\n{out}"));
    assert_eq!(result["room"], room.as_str(), "{out}");
    assert_eq!(
        on.len(),
        1,
        "room {room} must run on exactly one of the two nodes, runs on {on:?}"
    );
    let owner = on[0];
    println!("room {room} ran on node {owner}");
    // The browsers relay everything through TURN: both pages' media, the crossing one's too,
    // goes to the room node's TURN, and none to the other node's.
    for (name, stats) in &turn {
        println!("TURN on {name}, both pages in the room: {stats:?}");
        if *name == owner {
            assert_eq!(
                stats.live_peers, 2,
                "both pages use {name}'s TURN: {stats:?}"
            );
            assert!(stats.relayed_in > 0 && stats.relayed_out > 0, "{stats:?}");
        } else {
            assert_eq!(
                stats.allocations_made, 0,
                "a page used {name}'s TURN: {stats:?}"
            );
        }
    }
}
