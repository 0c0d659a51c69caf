//! Running seeds: one world per seed in a fresh madsim runtime on a fresh thread, its outcome,
//! the failure record written for a failing seed, and the command that replays it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::world::{self, Failure, Options};

/// Simulated time after which a world counts as crashed (hung).
const TIME_LIMIT: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    pub swarm: String,
    pub trace: Vec<String>,
    pub digest: u64,
    pub checks: u64,
    pub coverage: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    pub failure: Option<Failure>,
}

impl Outcome {
    pub fn verdict(&self) -> String {
        match &self.failure {
            None => "ok".into(),
            Some(Failure::Crash(m)) => format!("CRASH: {m}"),
            Some(Failure::Safety(v)) => format!("SAFETY: {}", v.join("; ")),
            Some(Failure::Liveness(r)) => format!("LIVENESS: {r}"),
        }
    }

    pub fn kind(&self) -> &'static str {
        match &self.failure {
            None => "ok",
            Some(Failure::Crash(_)) => "crash",
            Some(Failure::Safety(_)) => "safety",
            Some(Failure::Liveness(_)) => "liveness",
        }
    }

    pub fn exit_code(&self) -> u8 {
        match &self.failure {
            None => 0,
            Some(Failure::Crash(_)) => 2,
            Some(Failure::Safety(_)) => 3,
            Some(Failure::Liveness(_)) => 4,
        }
    }

    pub fn to_json(&self) -> String {
        json!({
            "seed": self.seed,
            "result": self.kind(),
            "detail": self.verdict(),
            "digest": format!("{:016x}", self.digest),
            "checks": self.checks,
            "faults": self.faults,
            "coverage": self.coverage,
            "swarm": self.swarm,
        })
        .to_string()
    }
}

pub fn run_seed(seed: u64) -> Outcome {
    run_seed_with(seed, Options::default)
}

pub fn run_seed_with(seed: u64, opts: fn() -> Options) -> Outcome {
    match videoroom::rt::sim::run(seed, TIME_LIMIT, move || world::run(opts())) {
        Ok(r) => Outcome {
            seed,
            swarm: r.swarm,
            trace: r.trace,
            digest: r.digest,
            checks: r.checks,
            coverage: r.coverage,
            faults: r
                .faults
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            failure: r.failure,
        },
        Err(panic) => Outcome {
            seed,
            swarm: String::new(),
            trace: Vec::new(),
            digest: 0,
            checks: 0,
            coverage: BTreeMap::new(),
            faults: BTreeMap::new(),
            failure: Some(Failure::Crash(panic)),
        },
    }
}

pub fn replay_command(seed: u64) -> String {
    replay_command_for(seed, "swarm")
}

pub fn replay_command_for(seed: u64, scenario: &str) -> String {
    let s = if scenario == "swarm" {
        String::new()
    } else {
        format!(" --scenario {scenario}")
    };
    format!(
        "RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/sim cargo run --profile sim -p videoroom-sim -- replay --seed {seed}{s}"
    )
}

/// Writes seed, options, verdict and trace of a failing run; returns the file written.
pub fn record_failure(o: &Outcome) -> Option<PathBuf> {
    o.failure.as_ref()?;
    let dir = PathBuf::from("sim-failures");
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("seed-{}.txt", o.seed));
    let body = format!(
        "seed: {}\nswarm: {}\nverdict: {}\nreplay: {}\n\n{}\n",
        o.seed,
        o.swarm,
        o.verdict(),
        replay_command(o.seed),
        o.trace.join("\n")
    );
    std::fs::write(&path, body).ok()?;
    Some(path)
}
