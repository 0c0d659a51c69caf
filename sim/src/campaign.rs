//! Running seeds: one world per seed in a fresh madsim runtime on a fresh thread, its outcome,
//! the failure record written for a failing seed, and the command that replays it.
//!
//! A world leaves nothing behind that a later world in the same process could see (see
//! `rt::sim`), so campaigns run seeds in-process; `tests/inprocess.rs` holds that promise to a
//! fresh process's digest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::knobs::Overrides;
use crate::world::{self, Failure, Options};

/// Simulated time after which a world counts as crashed (hung).
const TIME_LIMIT: Duration = Duration::from_secs(600);

/// What is run: a seed of a scenario, with knob overrides.
#[derive(Clone, Debug)]
pub struct Job {
    pub seed: u64,
    pub scenario: String,
    pub overrides: Overrides,
}

impl Job {
    pub fn swarm(seed: u64) -> Job {
        Job {
            seed,
            scenario: "swarm".into(),
            overrides: Overrides::default(),
        }
    }

    /// The command that replays this job, naming its scenario and overrides.
    pub fn replay_command(&self) -> String {
        let mut s = format!(
            "RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/sim cargo run --profile sim -p videoroom-sim -- replay --seed {}",
            self.seed
        );
        if self.scenario != "swarm" {
            s.push_str(&format!(" --scenario {}", self.scenario));
        }
        for a in self.overrides.to_args() {
            s.push(' ');
            s.push_str(&a);
        }
        s
    }
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub job: Job,
    pub seed: u64,
    pub swarm: String,
    pub trace: Vec<String>,
    pub digest: u64,
    pub checks: u64,
    pub coverage: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    pub failure: Option<Failure>,
    /// Simulated time the world ran.
    pub simulated: Duration,
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
            "scenario": self.job.scenario,
            "overrides": self.job.overrides.to_string(),
            "result": self.kind(),
            "exit": self.exit_code(),
            "detail": self.verdict(),
            "digest": format!("{:016x}", self.digest),
            "checks": self.checks,
            "faults": self.faults,
            "coverage": self.coverage,
            "swarm": self.swarm,
            "simulated_secs": self.simulated.as_secs_f64(),
        })
        .to_string()
    }
}

pub fn run_seed(seed: u64) -> Outcome {
    run_job(&Job::swarm(seed), true)
}

/// Runs one job; `record` keeps the trace's text (else only its digest).
pub fn run_job(job: &Job, record: bool) -> Outcome {
    let (seed, overrides) = (job.seed, job.overrides.clone());
    let opts = match crate::scenarios::parse(&job.scenario) {
        Ok(f) => f,
        Err(e) => return crashed(job, e),
    };
    let kept = crate::trace::TraceSlot::default();
    let slot = kept.clone();
    let run = move || async move {
        let start = videoroom::rt::time::now();
        let r = world::run(
            seed,
            Options {
                overrides,
                record,
                keep_trace: Some(slot),
                ..opts()
            },
        )
        .await;
        (
            r,
            videoroom::rt::time::now().saturating_duration_since(start),
        )
    };
    match videoroom::rt::sim::run(seed, TIME_LIMIT, run) {
        Ok((r, simulated)) => Outcome {
            job: job.clone(),
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
            simulated,
        },
        Err(panic) => Outcome {
            trace: kept
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .map(|t| t.lines())
                .unwrap_or_default(),
            ..crashed(job, panic)
        },
    }
}

fn crashed(job: &Job, why: String) -> Outcome {
    Outcome {
        job: job.clone(),
        seed: job.seed,
        swarm: String::new(),
        trace: Vec::new(),
        digest: 0,
        checks: 0,
        coverage: BTreeMap::new(),
        faults: BTreeMap::new(),
        failure: Some(Failure::Crash(why)),
        simulated: Duration::ZERO,
    }
}

pub fn replay_command(seed: u64) -> String {
    Job::swarm(seed).replay_command()
}

/// Where a failing job's record goes: `sim-failures/seed-N.txt`, or `SCENARIO-seed-N.txt`.
pub fn failure_path(job: &Job) -> PathBuf {
    let name = match job.scenario.as_str() {
        "swarm" => format!("seed-{}.txt", job.seed),
        s => format!("{s}-seed-{}.txt", job.seed),
    };
    PathBuf::from("sim-failures").join(name)
}

/// Writes seed, scenario, overrides, verdict, replay command and trace of a failing run to
/// `sim-failures/`; returns the file written.
pub fn record_failure(o: &Outcome) -> Option<PathBuf> {
    o.failure.as_ref()?;
    let path = failure_path(&o.job);
    std::fs::create_dir_all(path.parent()?).ok()?;
    let overrides = if o.job.overrides.is_empty() {
        "none".to_string()
    } else {
        o.job.overrides.to_string()
    };
    let body = format!(
        "seed: {}\nscenario: {}\noverrides: {overrides}\nswarm: {}\nverdict: {}\nexit: {}\ndigest: {:016x}\nreplay: {}\n\n{}\n",
        o.seed,
        o.job.scenario,
        o.swarm,
        o.verdict(),
        o.exit_code(),
        o.digest,
        o.job.replay_command(),
        o.trace.join("\n")
    );
    std::fs::write(&path, body).ok()?;
    Some(path)
}
