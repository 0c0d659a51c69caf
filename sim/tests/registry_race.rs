//! The registry race over many seeds, and replay determinism.
//!
//! `VIDEOROOM_SIM_SEED=N` runs one seed (replay); `VIDEOROOM_SIM_SEEDS=N` sets the sweep size.

use std::collections::BTreeSet;
use std::time::Duration;

use videoroom::rt::sim;
use videoroom_sim::registry_race::{scenario, Outcome};

const LIMIT: Duration = Duration::from_secs(60);

fn run(seed: u64) -> Result<Outcome, String> {
    sim::run(seed, LIMIT, scenario).and_then(|r| r)
}

fn seeds() -> Vec<u64> {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    match env("VIDEOROOM_SIM_SEED") {
        Some(s) => vec![s],
        None => (0..env("VIDEOROOM_SIM_SEEDS").unwrap_or(1000)).collect(),
    }
}

#[test]
fn fifty_joiners_race_a_killer_over_many_seeds() {
    let seeds = seeds();
    let (mut failures, mut kills, mut lost, mut rejoins, mut started) = (vec![], 0, 0, 0, 0);
    let mut digests = BTreeSet::new();
    for &seed in &seeds {
        match run(seed) {
            Ok(o) => {
                kills += o.kills;
                lost += o.races_lost;
                rejoins += o.rejoins;
                started += o.rooms_started;
                digests.insert(o.digest);
                if seeds.len() == 1 {
                    println!("{}", o.trace.join("\n"));
                }
            }
            Err(e) => {
                eprintln!(
                    "seed {seed} failed: {e}\nreplay: VIDEOROOM_SIM_SEED={seed} RUSTFLAGS=\"--cfg madsim\" \
                     CARGO_TARGET_DIR=target/sim cargo test --release -p videoroom-sim --test registry_race -- --nocapture"
                );
                failures.push(seed);
            }
        }
    }
    println!(
        "{} seeds: {} distinct traces, {kills} kills, {started} rooms started, {lost} registration races lost, {rejoins} rejoins after DOWN",
        seeds.len(),
        digests.len()
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
    if seeds.len() >= 100 {
        // The sweep must actually exercise the race and the crash path, or it proves nothing.
        assert!(lost > 0, "no seed lost a registration race");
        assert!(
            kills > 0 && rejoins > 0,
            "no seed crashed a room under its joiners"
        );
        assert!(
            digests.len() * 10 >= seeds.len() * 9,
            "seeds barely change the schedule"
        );
    }
}

#[test]
fn a_seed_replays_bit_for_bit() {
    let mut seen = BTreeSet::new();
    for seed in 0..20 {
        let a = run(seed).expect("first run");
        let b = run(seed).expect("second run");
        assert_eq!(a.digest, b.digest, "seed {seed} diverged");
        assert_eq!(a.trace, b.trace);
        seen.insert(a.digest);
    }
    assert_eq!(
        seen.len(),
        20,
        "different seeds should give different traces"
    );
}
