//! `videoroom-sim`: run, replay, check and fuzz seeds of the simulated videoroom world.
//!
//! Every seed runs in a fresh process when more than one is involved: a process that has
//! already run a world can schedule a later one differently (see HARNESS.md), so only a
//! fresh process is a faithful replay.
//!
//! Exit codes: 0 ok, 2 crash (the world panicked), 3 safety violation, 4 liveness failure,
//! 5 non-determinism, 1 usage or harness error, or failing seeds in a campaign.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use videoroom_sim::{campaign, scenarios};

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
        /// A named scenario instead of the swarm draw (see `scenarios`).
        #[arg(long, default_value = "swarm")]
        scenario: String,
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
        #[arg(long, default_value = "swarm")]
        scenario: String,
    },
    /// List the named scenarios.
    Scenarios,
    /// Run each seed twice, in fresh processes, and compare trace digests.
    CheckDeterminism {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 20)]
        count: u64,
        #[arg(long, default_value = "swarm")]
        scenario: String,
    },
    /// Run many seeds in parallel processes; non-zero exit listing the failing seeds.
    Fuzz {
        /// Number of seeds (from --from).
        #[arg(long, conflicts_with = "minutes")]
        seeds: Option<u64>,
        /// Run seeds until this many minutes have passed.
        #[arg(long)]
        minutes: Option<f64>,
        /// First seed (default: derived from the clock, and printed).
        #[arg(long)]
        from: Option<u64>,
        /// Also run the seeds listed in this file (one per line, `#` comments).
        #[arg(long)]
        also: Option<std::path::PathBuf>,
        #[arg(long, default_value = "swarm")]
        scenario: String,
        /// Parallel processes (default: available cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// End with one JSON line summarising the campaign.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Run {
            seed,
            scenario,
            print_trace,
            json,
        } => run(seed, &scenario, print_trace, json),
        Cmd::Replay { seed, scenario } => run(seed, &scenario, true, false),
        Cmd::Scenarios => {
            for (name, what, _) in scenarios::ALL {
                println!("{name:<24} {what}");
            }
            ExitCode::SUCCESS
        }
        Cmd::CheckDeterminism {
            from,
            count,
            scenario,
        } => check_determinism(from, count, &scenario),
        Cmd::Fuzz {
            seeds,
            minutes,
            from,
            also,
            scenario,
            jobs,
            json,
        } => fuzz(Campaign {
            seeds,
            minutes,
            from,
            also,
            scenario,
            jobs,
            json,
        }),
    }
}

fn run(seed: u64, scenario: &str, print_trace: bool, as_json: bool) -> ExitCode {
    let Some(opts) = scenarios::by_name(scenario) else {
        eprintln!("unknown scenario {scenario:?}; `videoroom-sim scenarios` lists them");
        return ExitCode::from(1);
    };
    let o = campaign::run_seed_with(seed, opts);
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
            eprintln!("replay: {}", campaign::replay_command_for(seed, scenario));
        }
    }
    ExitCode::from(o.exit_code())
}

fn child(seed: u64, scenario: &str) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args([
            "run",
            "--seed",
            &seed.to_string(),
            "--scenario",
            scenario,
            "--json",
        ])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line)
        .map_err(|_| format!("seed {seed}: no summary (exit {:?})", out.status.code()))
}

fn check_determinism(from: u64, count: u64, scenario: &str) -> ExitCode {
    let mut bad = Vec::new();
    for seed in from..from + count {
        match (child(seed, scenario), child(seed, scenario)) {
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

struct Campaign {
    seeds: Option<u64>,
    minutes: Option<f64>,
    from: Option<u64>,
    also: Option<std::path::PathBuf>,
    scenario: String,
    jobs: Option<usize>,
    json: bool,
}

fn read_seed_file(path: &std::path::Path) -> Result<Vec<u64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let first = l.split_whitespace().next().unwrap_or("");
            first
                .parse()
                .map_err(|_| format!("{}: not a seed: {l:?}", path.display()))
        })
        .collect()
}

fn fuzz(c: Campaign) -> ExitCode {
    if scenarios::by_name(&c.scenario).is_none() {
        eprintln!("unknown scenario {:?}", c.scenario);
        return ExitCode::from(1);
    }
    let jobs = c
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let start = c.from.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .wrapping_mul(1_000_003)
    });
    let mut queue: Vec<u64> = match &c.also {
        Some(p) => match read_seed_file(p) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        None => Vec::new(),
    };
    let regressions = queue.len();
    queue.reverse();
    let total = c.seeds.unwrap_or(u64::MAX);
    let deadline = c
        .minutes
        .map(|m| Instant::now() + Duration::from_secs_f64(m * 60.0));
    let started = Instant::now();
    let plan = match (c.seeds, c.minutes) {
        (Some(n), _) => format!("{n} seeds"),
        (_, Some(m)) => format!("{m} minutes"),
        _ => "until stopped".into(),
    };
    println!(
        "fuzz: scenario {}, seeds {start}.. ({plan}) + {regressions} regression seeds, {jobs} parallel processes",
        c.scenario
    );
    let tty = std::io::stderr().is_terminal();
    let (tx, rx) = std::sync::mpsc::channel::<(u64, Result<Value, String>)>();
    let (mut next, mut running, mut done) = (start, 0usize, 0u64);
    let mut failing: Vec<(u64, String)> = Vec::new();
    let mut checks = 0u64;
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut coverage: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let open = deadline.is_none_or(|d| Instant::now() < d);
        while running < jobs {
            let seed = match queue.pop() {
                Some(s) => s,
                None if open && next - start < total => {
                    next += 1;
                    next - 1
                }
                None => break,
            };
            let (tx, scenario) = (tx.clone(), c.scenario.clone());
            std::thread::spawn(move || {
                let _ = tx.send((seed, child(seed, &scenario)));
            });
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
                    let why = v["detail"].as_str().unwrap_or("?").to_string();
                    failing.push((seed, why));
                }
            }
            Err(e) => failing.push((seed, e)),
        }
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let line = format!(
            "[{done:>6} seeds] {rate:>6.1} seeds/s, {} failing",
            failing.len()
        );
        if tty {
            eprint!("\r{line}");
        } else if done % 100 == 0 {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
    }
    if tty {
        eprintln!();
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let rate = done as f64 / secs;
    println!(
        "{done} seeds in {secs:.1}s: {rate:.1} seeds/s ({:.1} per process), {checks} invariant checks",
        rate / jobs as f64
    );
    println!("faults exercised: {}", fmt_counts(&faults));
    println!(
        "branches reached (server log events): {}",
        fmt_counts(&coverage)
    );
    failing.sort();
    if failing.is_empty() {
        println!("no failing seed");
    } else {
        println!("{} failing seeds:", failing.len());
        for (seed, why) in &failing {
            println!("  seed {seed}: {why}");
            println!(
                "    replay: {}",
                campaign::replay_command_for(*seed, &c.scenario)
            );
        }
    }
    if c.json {
        let fails: Vec<Value> = failing
            .iter()
            .map(|(s, w)| json!({"seed": s, "why": w}))
            .collect();
        println!(
            "{}",
            json!({"seeds": done, "seconds": secs, "checks": checks, "faults": faults,
                   "coverage": coverage, "failing": fails})
        );
    }
    if failing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn fmt_counts(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
