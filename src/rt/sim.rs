//! Simulation-only controls (compiled under `--cfg madsim` only): running a seed in a fresh
//! deterministic world. The `sim/` crate drives the world through these.
//!
//! A world must not depend on what ran before it in the process, so campaigns can run seeds
//! in-process, several threads at once. Per-thread state (std's hash seeds, tokio's
//! thread-local context) is fresh because every world gets its own thread. Process-global state
//! is the danger: madsim's task-id counter (ids never reach a decision or the trace), tracing's
//! callsite interest cache (decides only whether an event is counted), and tokio's RNG seed
//! counter, which does reach decisions through tokio's watch channel: hence `rt::watch`.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

thread_local! {
    // Per world: each world runs on its own thread (see `run`), so nothing carries over.
    static LAG: Cell<(f64, Duration)> = const { Cell::new((0.0, Duration::ZERO)) };
}

/// Makes processes of this world slow to be scheduled: an idle process woken by a message runs,
/// with probability `chance`, only after a delay drawn below `max` (a loaded machine); a
/// backlog is then worked through at full speed, so throughput stays a server's. Under the
/// simulator every process otherwise runs the instant it is woken, so a mailbox never fills
/// and a join is never caught half-way; with lag, messages pile up behind a process that has
/// not run yet and faults land mid-protocol. Draws from the seeded RNG, so a world replays
/// exactly.
pub fn set_lag(chance: f64, max: Duration) {
    LAG.with(|l| l.set((chance, max)));
}

/// The delay before a woken process runs (see [`set_lag`]).
pub(crate) async fn lag() {
    let (chance, max) = LAG.with(Cell::get);
    if chance > 0.0 && !max.is_zero() && super::rand::chance(chance) {
        let d = Duration::from_micros(super::rand::below(max.as_micros() as u64));
        super::time::sleep(d).await;
    }
}

/// Runs `f` in a fresh madsim runtime seeded with `seed`, on a fresh OS thread (madsim seeds
/// per-thread state, such as std's hash seeds, when a thread first uses it). Returns the
/// panic message if the world panicked, including simulated-time limit overruns.
pub fn run<F, Fut, T>(seed: u64, time_limit: Duration, f: F) -> Result<T, String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(format!("sim-{seed}"))
        .spawn(move || {
            let mut rt =
                madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            rt.set_time_limit(time_limit);
            rt.block_on(f())
        })
        .expect("spawn simulation thread")
        .join()
        .map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into())
        })
}
