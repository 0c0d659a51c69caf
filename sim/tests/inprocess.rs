//! Faithful in-process replay: a process that has already run other worlds must run a seed
//! exactly as a fresh process does (same trace digest), or in-process campaigns and failure
//! reproduction would disagree with `replay`. Several (A, B) pairs: B runs after A (and after
//! worlds on another thread) in this process, and alone in a fresh process.

use std::process::Command;

use serde_json::Value;
use videoroom_sim::campaign::{run_job, Job};

fn fresh_digest(seed: u64) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_videoroom-sim"))
        .args(["run", "--seed", &seed.to_string(), "--json"])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run videoroom-sim");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.lines().last().unwrap_or("")).expect("summary");
    v["digest"].as_str().expect("digest").to_string()
}

#[test]
fn a_seed_after_other_worlds_replays_as_in_a_fresh_process() {
    // Worlds on a concurrent thread too: campaigns run several at once.
    let other = std::thread::spawn(|| {
        for seed in 300..306 {
            run_job(&Job::swarm(seed), false);
        }
    });
    let mut diverged = Vec::new();
    for (a, b) in [(0u64, 1u64), (5, 2), (3, 9), (11, 4), (7, 8), (1234, 42)] {
        run_job(&Job::swarm(a), false);
        let here = format!("{:016x}", run_job(&Job::swarm(b), false).digest);
        let fresh = fresh_digest(b);
        if here != fresh {
            diverged.push(format!("seed {b} after {a}: {here} here, {fresh} fresh"));
        }
    }
    other.join().expect("other worlds");
    assert!(
        diverged.is_empty(),
        "in-process replay diverged: {diverged:?}"
    );
}

#[test]
fn recording_the_trace_does_not_change_the_digest() {
    for seed in [3u64, 17] {
        let job = Job::swarm(seed);
        let (quiet, recorded) = (run_job(&job, false), run_job(&job, true));
        assert_eq!(quiet.digest, recorded.digest, "seed {seed}");
        assert!(quiet.trace.is_empty() && !recorded.trace.is_empty());
    }
}
