//! `videoroom-sim`: run, replay, check and fuzz seeds of the simulated videoroom world.
//!
//! `fuzz` runs seeds in-process, one world per thread at a time (`--jobs` threads): a world
//! leaves nothing behind that changes a later one (see `rt::sim`). A failing seed is run again,
//! recording its trace, for its failure file; a different digest the second time is a
//! non-determinism verdict. `check-determinism` cross-checks with fresh processes.
//!
//! Exit codes: 0 ok, 2 crash, 3 safety violation, 4 liveness failure, 5 non-determinism,
//! 1 usage or harness error. A campaign exits with its most severe verdict (the lowest of
//! 2..5 among its failing seeds).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

// A fifth of a campaign's CPU went to glibc malloc/free (thousands of small JSON values and
// frames per world); allocation addresses never reach a decision, so the choice of allocator
// does not change any world.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use videoroom_sim::campaign::{self, Job, Outcome};
use videoroom_sim::knobs::Overrides;
use videoroom_sim::scenarios;

#[derive(Parser)]
#[command(about = "Deterministic simulation of videoroom: run, replay, check and fuzz seeds")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

fn scenario_name(s: &str) -> Result<String, String> {
    scenarios::parse(s).map(|_| s.to_string())
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one seed and summarise it (writes sim-failures/… when it fails).
    Run {
        #[arg(long)]
        seed: u64,
        /// A named scenario instead of the swarm draw (see `scenarios`) [default: swarm].
        #[arg(long, default_value = "swarm", value_parser = scenario_name)]
        scenario: String,
        #[command(flatten)]
        knobs: Overrides,
        /// Print the whole trace.
        #[arg(long)]
        print_trace: bool,
        /// One JSON summary line (used by `check-determinism`).
        #[arg(long)]
        json: bool,
    },
    /// Run one seed and print its trace (same as `run --print-trace`).
    Replay {
        #[arg(long)]
        seed: u64,
        /// [default: swarm]
        #[arg(long, default_value = "swarm", value_parser = scenario_name)]
        scenario: String,
        #[command(flatten)]
        knobs: Overrides,
    },
    /// List the named scenarios.
    Scenarios,
    /// Run each seed twice in fresh processes and once in this one; compare trace digests.
    CheckDeterminism {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 20)]
        count: u64,
        /// [default: swarm]
        #[arg(long, default_value = "swarm", value_parser = scenario_name)]
        scenario: String,
        #[command(flatten)]
        knobs: Overrides,
    },
    /// Run many seeds in-process on parallel threads; exits with the most severe verdict.
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
        /// [default: swarm]
        #[arg(long, default_value = "swarm", value_parser = scenario_name)]
        scenario: String,
        #[command(flatten)]
        knobs: Overrides,
        /// Parallel worlds [default: available cores].
        #[arg(long, env = "VIDEOROOM_SIM_JOBS")]
        jobs: Option<usize>,
        /// Run every seed in a fresh process instead (slower; a cross-check) [default: off].
        #[arg(long, env = "VIDEOROOM_SIM_FRESH_PROCESSES", value_parser = clap::builder::BoolishValueParser::new())]
        fresh_processes: bool,
        /// End with one JSON line summarising the campaign.
        #[arg(long)]
        json: bool,
        /// Stop at the first failing seed (worlds already running finish): for bisecting and
        /// for mutation runs, where one failing seed is the verdict [default: off].
        #[arg(long, env = "VIDEOROOM_SIM_FAIL_FAST", value_parser = clap::builder::BoolishValueParser::new())]
        fail_fast: bool,
    },
}

/// mimalloc's `mi_option_purge_delay` (not among libmimalloc-sys's named constants).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Every world runs on a fresh thread, so memory a finished world freed went back to the OS
/// after mimalloc's purge delay and the next world faulted it in again (zeroing huge
/// pages was ~5 % of a campaign). A campaign's peak is tens of MiB: keep it.
fn keep_freed_memory() {
    // SAFETY: plain option calls on mimalloc's global options. The default (1000 ms in
    // mimalloc 3, 10 ms in 2) is checked first, so a renumbered option list is left alone
    // rather than a wrong option set.
    unsafe {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none()
            && matches!(
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                10 | 1000
            )
        {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    // Usage errors exit 1: clap's own 2 would read as a crash verdict.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let knobs = match &cli.cmd {
        Cmd::Run { knobs, .. }
        | Cmd::Replay { knobs, .. }
        | Cmd::CheckDeterminism { knobs, .. }
        | Cmd::Fuzz { knobs, .. } => Some(knobs),
        Cmd::Scenarios => None,
    };
    if let Some(Err(e)) = knobs.map(Overrides::validate) {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    match cli.cmd {
        Cmd::Run {
            seed,
            scenario,
            knobs,
            print_trace,
            json,
        } => run(job(seed, scenario, knobs), print_trace, json),
        Cmd::Replay {
            seed,
            scenario,
            knobs,
        } => run(job(seed, scenario, knobs), true, false),
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
            knobs,
        } => check_determinism(from, count, &scenario, &knobs),
        Cmd::Fuzz {
            seeds,
            minutes,
            from,
            also,
            scenario,
            knobs,
            jobs,
            fresh_processes,
            json,
            fail_fast,
        } => fuzz(Campaign {
            seeds,
            minutes,
            from,
            also,
            scenario,
            knobs,
            jobs,
            fresh_processes,
            json,
            fail_fast,
        }),
    }
}

fn job(seed: u64, scenario: String, overrides: Overrides) -> Job {
    Job {
        seed,
        scenario,
        overrides,
    }
}

fn run(job: Job, print_trace: bool, as_json: bool) -> ExitCode {
    let o = campaign::run_job(&job, true);
    if print_trace {
        for l in &o.trace {
            println!("{l}");
        }
    }
    if as_json {
        println!("{}", o.to_json());
    } else {
        println!("seed {}: {}", job.seed, o.verdict());
        println!("swarm: {}", o.swarm);
        println!("digest {:016x}, {} checks", o.digest, o.checks);
    }
    if let Some(path) = campaign::record_failure(&o) {
        eprintln!("wrote {}", path.display());
        eprintln!("replay: {}", job.replay_command());
    }
    ExitCode::from(o.exit_code())
}

/// One seed's summary from a fresh process (`run --json`).
fn child(job: &Job) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut args = vec![
        "run".to_string(),
        "--seed".into(),
        job.seed.to_string(),
        "--scenario".into(),
        job.scenario.clone(),
        "--json".into(),
    ];
    args.extend(job.overrides.to_args());
    let out = Command::new(exe)
        .args(&args)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).map_err(|_| {
        format!(
            "seed {}: no summary from its process (exit {:?})",
            job.seed,
            out.status.code()
        )
    })
}

fn check_determinism(from: u64, count: u64, scenario: &str, knobs: &Overrides) -> ExitCode {
    let mut bad = Vec::new();
    for seed in from..from + count {
        let j = job(seed, scenario.to_string(), knobs.clone());
        let here = format!("{:016x}", campaign::run_job(&j, false).digest);
        match (child(&j), child(&j)) {
            (Ok(a), Ok(b)) if a["digest"] == b["digest"] && a["digest"] == here.as_str() => {
                println!("seed {seed}: digest {here} twice, and in-process");
            }
            (Ok(a), Ok(b)) => {
                println!(
                    "seed {seed}: NON-DETERMINISTIC {} vs {} (in-process {here})",
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
    knobs: Overrides,
    jobs: Option<usize>,
    fresh_processes: bool,
    json: bool,
    fail_fast: bool,
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

/// One seed's result as a campaign counts it.
struct Summary {
    seed: u64,
    /// ok, crash, safety, liveness or nondeterminism.
    kind: String,
    exit: u8,
    detail: String,
    checks: u64,
    simulated: f64,
    faults: BTreeMap<String, u64>,
    coverage: BTreeMap<String, u64>,
    /// The failure file written, if any.
    file: Option<String>,
}

impl Summary {
    fn from_outcome(o: &Outcome) -> Summary {
        Summary {
            seed: o.seed,
            kind: o.kind().into(),
            exit: o.exit_code(),
            detail: o.verdict(),
            checks: o.checks,
            simulated: o.simulated.as_secs_f64(),
            faults: o.faults.clone(),
            coverage: o.coverage.clone(),
            file: None,
        }
    }

    fn from_json(seed: u64, v: Result<Value, String>) -> Summary {
        let map = |v: &Value| -> BTreeMap<String, u64> {
            v.as_object()
                .into_iter()
                .flatten()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        };
        match v {
            Ok(v) => Summary {
                seed,
                kind: v["result"].as_str().unwrap_or("crash").into(),
                exit: v["exit"].as_u64().unwrap_or(2) as u8,
                detail: v["detail"].as_str().unwrap_or("?").into(),
                checks: v["checks"].as_u64().unwrap_or(0),
                simulated: v["simulated_secs"].as_f64().unwrap_or(0.0),
                faults: map(&v["faults"]),
                coverage: map(&v["coverage"]),
                file: None,
            },
            // The process died without a summary (an abort, a stack overflow): a crash.
            Err(e) => Summary {
                seed,
                kind: "crash".into(),
                exit: 2,
                detail: format!("CRASH: {e}"),
                checks: 0,
                simulated: 0.0,
                faults: BTreeMap::new(),
                coverage: BTreeMap::new(),
                file: None,
            },
        }
    }
}

/// Seeds still to run: regression seeds first, then the range until its count or deadline.
struct Queue {
    regressions: Vec<u64>,
    next: u64,
    start: u64,
    total: u64,
    deadline: Option<Instant>,
}

impl Queue {
    fn pop(&mut self) -> Option<u64> {
        if let Some(s) = self.regressions.pop() {
            return Some(s);
        }
        let open = self.deadline.is_none_or(|d| Instant::now() < d);
        if open && self.next.wrapping_sub(self.start) < self.total {
            self.next = self.next.wrapping_add(1);
            return Some(self.next.wrapping_sub(1));
        }
        None
    }
}

/// In-process: runs a failing seed again recording its trace, writes its failure file, and
/// turns a different digest into a non-determinism verdict.
fn examine(job: &Job, first: &Outcome) -> Summary {
    let again = campaign::run_job(job, true);
    let mut s = Summary::from_outcome(first);
    if again.digest != first.digest || again.kind() != first.kind() {
        s.kind = "nondeterminism".into();
        s.exit = 5;
        s.detail = format!(
            "NON-DETERMINISM: digest {:016x} ({}) then {:016x} ({}) in one process",
            first.digest,
            first.kind(),
            again.digest,
            again.kind()
        );
    }
    s.file = campaign::record_failure(&again).map(|p| p.display().to_string());
    s
}

fn fuzz(c: Campaign) -> ExitCode {
    let jobs = c
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = c.from.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .wrapping_mul(1_000_003)
    });
    let mut regress = match &c.also {
        Some(p) => match read_seed_file(p) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        },
        None => Vec::new(),
    };
    let regressions = regress.len();
    regress.reverse();
    let queue = Arc::new(Mutex::new(Queue {
        regressions: regress,
        next: start,
        start,
        total: c.seeds.unwrap_or(u64::MAX),
        deadline: c
            .minutes
            .map(|m| Instant::now() + Duration::from_secs_f64(m * 60.0)),
    }));
    let started = Instant::now();
    let cpu_at_start = cpu_seconds();
    let plan = match (c.seeds, c.minutes) {
        (Some(n), _) => format!("{n} seeds"),
        (_, Some(m)) => format!("{m} minutes"),
        _ => "until stopped".into(),
    };
    let how = if c.fresh_processes {
        "fresh processes"
    } else {
        "in-process threads"
    };
    let knobs = if c.knobs.is_empty() {
        String::new()
    } else {
        format!(", overrides {}", c.knobs)
    };
    println!(
        "fuzz: scenario {}{knobs}, seeds {start}.. ({plan}) + {regressions} regression seeds, {jobs} {how}",
        c.scenario
    );
    let tty = std::io::stderr().is_terminal();
    let (tx, rx) = std::sync::mpsc::channel::<Summary>();
    let mut workers = Vec::new();
    for _ in 0..jobs {
        let (tx, queue) = (tx.clone(), queue.clone());
        let (scenario, knobs, fresh) = (c.scenario.clone(), c.knobs.clone(), c.fresh_processes);
        workers.push(std::thread::spawn(move || loop {
            let Some(seed) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                break;
            };
            let j = job(seed, scenario.clone(), knobs.clone());
            let s = if fresh {
                let mut s = Summary::from_json(seed, child(&j));
                // The child wrote its own failure file.
                if s.exit != 0 {
                    let path = campaign::failure_path(&j);
                    s.file = path.exists().then(|| path.display().to_string());
                }
                s
            } else {
                let o = campaign::run_job(&j, false);
                if o.failure.is_some() {
                    examine(&j, &o)
                } else {
                    Summary::from_outcome(&o)
                }
            };
            if tx.send(s).is_err() {
                break;
            }
        }));
    }
    drop(tx);
    let mut done = 0u64;
    let mut failing: Vec<Summary> = Vec::new();
    let (mut checks, mut simulated) = (0u64, 0f64);
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut coverage: BTreeMap<String, u64> = BTreeMap::new();
    let mut verdicts: BTreeMap<String, u64> = BTreeMap::new();
    for s in rx {
        done += 1;
        checks += s.checks;
        simulated += s.simulated;
        for (k, n) in &s.faults {
            *faults.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &s.coverage {
            *coverage.entry(k.clone()).or_default() += n;
        }
        *verdicts.entry(s.kind.clone()).or_default() += 1;
        if s.exit != 0 {
            failing.push(s);
            if c.fail_fast {
                let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                q.regressions.clear();
                q.total = 0;
            }
        }
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let line = format!(
            "[{done:>6} seeds] {rate:>6.1} seeds/s, {} failing",
            failing.len()
        );
        if tty {
            eprint!("\r{line}");
        } else if done.is_multiple_of(100) {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
    }
    for w in workers {
        let _ = w.join();
    }
    if tty {
        eprintln!();
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let rate = done as f64 / secs;
    let per_core = rate / jobs.min(cores) as f64;
    let sim_speed = simulated / secs;
    // Per CPU second of this process: what a core gives when it is not shared. Wall-clock
    // rates undercount on a loaded machine. (In-process runs only: children are not counted.)
    let cpu = match (cpu_at_start, cpu_seconds()) {
        (Some(a), Some(b)) if !c.fresh_processes && b > a => Some(b - a),
        _ => None,
    };
    let per_cpu = cpu.map(|s| done as f64 / s);
    let sim_per_cpu = cpu.map(|s| simulated / s);
    println!(
        "{done} seeds in {secs:.1}s: {rate:.1} seeds/s, {per_core:.1} seeds/s per core, {sim_speed:.1} simulated s per wall s, {checks} invariant checks"
    );
    if let (Some(cpu), Some(p), Some(s)) = (cpu, per_cpu, sim_per_cpu) {
        println!("cpu: {cpu:.1}s, {p:.1} seeds per cpu second, {s:.1} simulated s per cpu second");
    }
    println!("verdicts: {}", fmt_counts(&verdicts, false));
    println!("faults exercised: {}", fmt_counts(&faults, false));
    println!("branches reached: {}", fmt_counts(&coverage, true));
    failing.sort_by_key(|s| (s.exit, s.seed));
    let exit = failing.iter().map(|s| s.exit).min().unwrap_or(0);
    if failing.is_empty() {
        println!("no failing seed");
    } else {
        println!("{} failing seeds:", failing.len());
        for s in &failing {
            let j = job(s.seed, c.scenario.clone(), c.knobs.clone());
            println!("  seed {} ({}): {}", s.seed, s.kind, s.detail);
            println!("    replay: {}", j.replay_command());
            if let Some(f) = &s.file {
                println!("    failure file: {f}");
            }
        }
    }
    if c.json {
        let fails: Vec<Value> = failing
            .iter()
            .map(|s| {
                let j = job(s.seed, c.scenario.clone(), c.knobs.clone());
                json!({"seed": s.seed, "verdict": s.kind, "exit": s.exit, "why": s.detail,
                       "replay": j.replay_command(), "file": s.file})
            })
            .collect();
        println!(
            "{}",
            json!({"scenario": c.scenario, "overrides": c.knobs.to_string(), "seeds": done,
                   "seconds": secs, "jobs": jobs, "seeds_per_sec": rate,
                   "seeds_per_sec_per_core": per_core, "simulated_secs": simulated,
                   "simulated_secs_per_wall_sec": sim_speed, "cpu_secs": cpu,
                   "seeds_per_cpu_sec": per_cpu, "simulated_secs_per_cpu_sec": sim_per_cpu,
                   "checks": checks,
                   "verdicts": verdicts, "faults": faults, "coverage": coverage,
                   "failing": fails, "exit": exit})
        );
    }
    ExitCode::from(exit)
}

/// CPU time (user + system) this process has used, from `/proc/self/stat` (Linux only).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ, 100 on every Linux target Rust supports.
    Some(ticks as f64 / 100.0)
}

/// `name=count` pairs separated by ", "; names that could hold a separator are JSON-quoted.
fn fmt_counts(m: &BTreeMap<String, u64>, quote: bool) -> String {
    m.iter()
        .map(|(k, v)| {
            if quote {
                format!("{}={v}", Value::from(k.as_str()))
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
