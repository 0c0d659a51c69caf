//! `videoroom-sim`: run, replay, check and fuzz seeds of the simulated videoroom world.
//!
//! Exit codes: 0 ok, 2 crash (the world panicked), 3 safety violation, 4 liveness failure,
//! 5 non-determinism, 1 usage or harness error.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::Value;
use videoroom_sim::campaign;

#[derive(Parser)]
#[command(about = "Deterministic simulation of videoroom: run, replay, check and fuzz seeds")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one seed and summarise it.
    Run {
        #[arg(long)]
        seed: u64,
        /// Print the whole trace.
        #[arg(long)]
        print_trace: bool,
        /// One JSON summary line (used by `fuzz` and `check-determinism`).
        #[arg(long)]
        json: bool,
    },
    /// Run one seed and print its trace (same as `run --print-trace`).
    Replay {
        #[arg(long)]
        seed: u64,
    },
    /// Run each seed twice, in fresh processes, and compare trace digests.
    CheckDeterminism {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 20)]
        count: u64,
    },
    /// Run many seeds in parallel processes; non-zero exit listing the failing seeds.
    Fuzz {
        /// Number of seeds (from --from).
        #[arg(long, conflicts_with = "minutes")]
        seeds: Option<u64>,
        /// Run seeds until this many minutes have passed.
        #[arg(long)]
        minutes: Option<f64>,
        #[arg(long)]
        from: Option<u64>,
        /// Parallel processes (default: available cores).
        #[arg(long)]
        jobs: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            seed,
            print_trace,
            json,
        } => run(seed, print_trace, json),
        Cmd::Replay { seed } => run(seed, true, false),
        Cmd::CheckDeterminism { from, count } => check_determinism(from, count),
        Cmd::Fuzz {
            seeds,
            minutes,
            from,
            jobs,
        } => fuzz(seeds, minutes, from, jobs),
    }
}

fn run(seed: u64, print_trace: bool, as_json: bool) -> ExitCode {
    let o = campaign::run_seed(seed);
    if print_trace {
        for l in &o.trace {
            println!("{l}");
        }
    }
    if as_json {
        println!("{}", o.to_json());
    } else {
        println!("seed {seed}: {}", o.verdict());
        println!("swarm: {}", o.swarm);
        println!("digest {:016x}, {} checks", o.digest, o.checks);
        if let Some(path) = campaign::record_failure(&o) {
            eprintln!("wrote {}", path.display());
            eprintln!("replay: {}", campaign::replay_command(seed));
        }
    }
    ExitCode::from(o.exit_code())
}

fn child(seed: u64) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args(["run", "--seed", &seed.to_string(), "--json"])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line)
        .map_err(|_| format!("seed {seed}: no summary (exit {:?})", out.status.code()))
}

fn check_determinism(from: u64, count: u64) -> ExitCode {
    let mut bad = Vec::new();
    for seed in from..from + count {
        let (a, b) = (child(seed), child(seed));
        match (a, b) {
            (Ok(a), Ok(b)) if a["digest"] == b["digest"] => {
                println!(
                    "seed {seed}: digest {} twice",
                    a["digest"].as_str().unwrap_or("?")
                );
            }
            (Ok(a), Ok(b)) => {
                println!(
                    "seed {seed}: NON-DETERMINISTIC {} vs {}",
                    a["digest"], b["digest"]
                );
                bad.push(seed);
            }
            (Err(e), _) | (_, Err(e)) => {
                println!("seed {seed}: {e}");
                bad.push(seed);
            }
        }
    }
    if bad.is_empty() {
        println!("{count} seeds replayed bit for bit in fresh processes");
        ExitCode::SUCCESS
    } else {
        println!("non-deterministic seeds: {bad:?}");
        ExitCode::from(5)
    }
}

fn fuzz(
    seeds: Option<u64>,
    minutes: Option<f64>,
    from: Option<u64>,
    jobs: Option<usize>,
) -> ExitCode {
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let start_seed = from.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .wrapping_mul(1_000_003)
    });
    let total = seeds.unwrap_or(u64::MAX);
    let deadline = minutes.map(|m| Instant::now() + Duration::from_secs_f64(m * 60.0));
    let started = Instant::now();
    println!(
        "fuzz: seeds {start_seed}.. ({}), {jobs} parallel processes",
        match (seeds, minutes) {
            (Some(n), _) => format!("{n} seeds"),
            (_, Some(m)) => format!("{m} minutes"),
            _ => "until stopped".into(),
        }
    );
    let (tx, rx) = std::sync::mpsc::channel::<(u64, Result<Value, String>)>();
    let mut next = start_seed;
    let mut running = 0usize;
    let mut done = 0u64;
    let mut failing: Vec<(u64, String)> = Vec::new();
    let mut checks = 0u64;
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut coverage: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let more = next - start_seed < total && deadline.is_none_or(|d| Instant::now() < d);
        while more && running < jobs && next - start_seed < total {
            let (seed, tx) = (next, tx.clone());
            std::thread::spawn(move || {
                let _ = tx.send((seed, child(seed)));
            });
            next += 1;
            running += 1;
        }
        if running == 0 {
            break;
        }
        let (seed, r) = rx.recv().expect("workers report");
        running -= 1;
        done += 1;
        match r {
            Ok(v) => {
                checks += v["checks"].as_u64().unwrap_or(0);
                for (k, n) in v["faults"].as_object().into_iter().flatten() {
                    *faults.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
                }
                for (k, n) in v["coverage"].as_object().into_iter().flatten() {
                    *coverage.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
                }
                if v["result"] != "ok" {
                    failing.push((seed, format!("{}: {}", v["result"], v["detail"])));
                }
            }
            Err(e) => failing.push((seed, e)),
        }
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r[{done:>6} seeds] {rate:>7.1} seeds/s, {} failing",
            failing.len()
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{done} seeds in {secs:.1}s: {:.1} seeds/s ({:.1} per process), {checks} invariant checks",
        done as f64 / secs,
        done as f64 / secs / jobs as f64
    );
    println!("faults exercised: {}", fmt_counts(&faults));
    println!(
        "branches reached (server log events): {}",
        fmt_counts(&coverage)
    );
    if failing.is_empty() {
        println!("no failing seed");
        return ExitCode::SUCCESS;
    }
    println!("{} failing seeds:", failing.len());
    for (seed, why) in &failing {
        println!(
            "  seed {seed}: {why}\n    replay: {}",
            campaign::replay_command(*seed)
        );
    }
    ExitCode::from(1)
}

fn fmt_counts(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
