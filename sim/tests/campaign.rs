//! The fixed campaign the test command runs, through the `videoroom-sim` binary so that every
//! seed runs in a fresh process (the only faithful replay): a seed range plus the regression
//! seeds, a determinism check, the named scenarios, and pinned trace summaries.
//!
//! `VIDEOROOM_SIM_CAMPAIGN=N` changes the number of seeds (default 500).

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

fn sim(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_videoroom-sim"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run videoroom-sim");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn campaign(args: &[&str]) -> Value {
    let mut all = vec!["fuzz", "--json"];
    all.extend_from_slice(args);
    let (_, out) = sim(&all);
    println!("{out}");
    serde_json::from_str(out.lines().last().unwrap_or("")).expect("campaign summary")
}

fn seeds() -> String {
    std::env::var("VIDEOROOM_SIM_CAMPAIGN").unwrap_or_else(|_| "500".into())
}

#[test]
fn fixed_campaign_and_regression_seeds() {
    let n = seeds();
    let v = campaign(&["--seeds", &n, "--from", "0", "--also", "regressions.txt"]);
    assert_eq!(
        v["failing"],
        Value::Array(vec![]),
        "failing seeds (replay commands above)"
    );
    if n.parse::<u64>().unwrap_or(0) >= 500 {
        let coverage: BTreeMap<String, u64> =
            serde_json::from_value(v["coverage"].clone()).expect("coverage");
        let faults: BTreeMap<String, u64> =
            serde_json::from_value(v["faults"].clone()).expect("faults");
        // The campaign must reach what it exists for, or it proves nothing ("sometimes"
        // assertions over the product's typed probe events and the client's branches).
        let missed: Vec<&str> = videoroom_sim::coverage::SOMETIMES
            .iter()
            .copied()
            .filter(|b| coverage.get(*b).copied().unwrap_or(0) == 0)
            .collect();
        assert!(missed.is_empty(), "no seed reached {missed:?}");
        for f in videoroom_sim::swarm::FAULTS {
            assert!(
                faults.get(*f).copied().unwrap_or(0) > 0,
                "no seed injected {f}"
            );
        }
    }
}

#[test]
fn twenty_seeds_replay_bit_for_bit_in_fresh_processes() {
    let (ok, out) = sim(&["check-determinism", "--from", "0", "--count", "20"]);
    assert!(ok, "determinism check failed:\n{out}");
    assert!(out.contains("20 seeds replayed bit for bit"), "{out}");
    let digests: std::collections::BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split("digest ").nth(1))
        .collect();
    assert_eq!(
        digests.len(),
        20,
        "different seeds must give different traces:\n{out}"
    );
}

#[test]
fn fifty_peers_join_a_fresh_room_at_once_while_it_crashes_twice() {
    let v = campaign(&[
        "--scenario",
        "fifty-join-crash-twice",
        "--seeds",
        "20",
        "--from",
        "0",
    ]);
    assert_eq!(v["failing"], Value::Array(vec![]));
    assert_eq!(v["faults"]["room_crash"], 20, "every seed crashed the room");
    assert_eq!(v["faults"]["engine_crash"], 20, "and crashed it again");
}

#[test]
fn server_restarts_under_churn_converge() {
    let v = campaign(&[
        "--scenario",
        "restart-under-churn",
        "--seeds",
        "10",
        "--from",
        "0",
    ]);
    assert_eq!(v["failing"], Value::Array(vec![]));
    assert!(v["faults"]["server_restart"].as_u64().unwrap_or(0) > 0);
}

/// Joined clients that never connect are dropped after the grace with a reason (the client-side
/// oracle checks who, when and why), and the clients they kept out get in.
#[test]
fn squatters_are_dropped_and_the_room_fills_with_real_peers() {
    let v = campaign(&["--scenario", "squatters", "--seeds", "50", "--from", "0"]);
    assert_eq!(v["failing"], Value::Array(vec![]));
    assert_eq!(v["coverage"]["client: dropped with a reason"], 150);
    assert_eq!(v["coverage"]["PeerDroppedNoConnect"], 150);
}

/// Never more rooms than the limit, under crashes and churn (a safety oracle), and clients
/// refused for the limit only while the server is at it (the liveness check).
#[test]
fn the_room_limit_holds_under_churn() {
    let v = campaign(&["--scenario", "room-cap", "--seeds", "50", "--from", "0"]);
    assert_eq!(v["failing"], Value::Array(vec![]));
    assert!(v["coverage"]["JoinRefusedRoomLimit"].as_u64().unwrap_or(0) > 0);
}

/// Exit codes tell failure kinds apart; a world given no time to settle must be a liveness
/// failure (4), not a pass.
#[test]
fn exit_codes_distinguish_failures() {
    let out = Command::new(env!("CARGO_BIN_EXE_videoroom-sim"))
        .args(["run", "--seed", "1", "--scenario", "no-time-to-settle"])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_videoroom-sim"))
        .args(["run", "--seed", "1", "--scenario", "nonsense"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
}

fn summary(seed: u64, replay_output: &str) -> String {
    // Trace lines are "<simulated time>ms <who> <what>"; the replay's own summary follows them.
    let trace: Vec<&str> = replay_output
        .lines()
        .filter(|l| {
            l.trim_start()
                .split_once("ms ")
                .is_some_and(|(t, _)| t.parse::<f64>().is_ok())
        })
        .collect();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut world = Vec::new();
    for l in &trace {
        let mut w = l.split_whitespace().skip(1);
        let who = w.next().unwrap_or("");
        if who.starts_with('c') && who[1..].parse::<u32>().is_ok() {
            *kinds.entry(w.next().unwrap_or("").to_string()).or_default() += 1;
        } else {
            world.push(l.trim().to_string());
        }
    }
    format!(
        "seed {seed}\nclient events by kind: {kinds:?}\nworld events:\n{}\n",
        world.join("\n")
    )
}

#[test]
fn pinned_trace_summaries() {
    for seed in [7u64, 42, 1234] {
        let (_, trace) = sim(&["replay", "--seed", &seed.to_string()]);
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots"),
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!(format!("sim_seed_{seed}"), summary(seed, &trace));
        });
    }
}
