//! A run's trace: one line per decision or delivery, in simulated-time order, and its digest.
//! Lines carry simulated time and pids (per-world counters), never task ids or wall time.
//!
//! The digest is computed as lines are logged, without building them: each line's simulated
//! time (in nanoseconds) and its text are fed to a streaming FNV-1a hasher through
//! `fmt::Write`, so a campaign pays no allocation per line. The text itself is kept only when
//! the trace records (a replay, a failure file); a recording run and a hashing-only run of the
//! same seed give the same digest by construction.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};

use videoroom::rt::time::{now, Instant};

/// FNV-1a, stable across builds and platforms, unlike std's hasher.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    const START: Fnv = Fnv(0xcbf2_9ce4_8422_2325);

    fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl fmt::Write for Fnv {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

struct State {
    hash: Fnv,
    /// The rendered lines, when recording.
    lines: Option<Vec<String>>,
}

/// Shared by every task of one world.
#[derive(Clone)]
pub struct Trace {
    start: Instant,
    state: Arc<Mutex<State>>,
}

impl Trace {
    /// A trace that keeps its text (`record`) or only its digest.
    pub fn new(record: bool) -> Self {
        Trace {
            start: now(),
            state: Arc::new(Mutex::new(State {
                hash: Fnv::START,
                lines: record.then(Vec::new),
            })),
        }
    }

    /// A trace like [`Trace::new`], also left in `slot`: a world the runtime aborts (its time
    /// limit) unwinds without a report, and its lines are still there.
    pub fn kept(record: bool, slot: Option<&TraceSlot>) -> Self {
        let t = Trace::new(record);
        if let Some(slot) = slot {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
        }
        t
    }

    /// Logs one line. Pass `format_args!(..)` (or a `&str`) on hot paths: it is rendered only
    /// when recording.
    pub fn log(&self, line: impl fmt::Display) {
        let t = now().saturating_duration_since(self.start);
        let nanos = t.as_nanos() as u64;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.hash.bytes(&nanos.to_le_bytes());
        let _ = write!(s.hash, "{line}");
        s.hash.bytes(b"\n");
        if let Some(lines) = &mut s.lines {
            lines.push(format!("{:>10.3}ms {line}", t.as_secs_f64() * 1e3));
        }
    }

    /// The recorded lines (empty when not recording).
    pub fn lines(&self) -> Vec<String> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.lines.clone().unwrap_or_default()
    }

    pub fn digest(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).hash.0
    }
}

/// Where a world leaves its trace for whoever runs it (see [`Trace::kept`]).
pub type TraceSlot = Arc<Mutex<Option<Trace>>>;

impl Default for Trace {
    fn default() -> Self {
        Self::new(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_and_hashing_only_give_the_same_digest() {
        let mut rt = madsim::runtime::Runtime::with_seed_and_config(1, madsim::Config::default());
        rt.set_allow_system_thread(true);
        let (a, b) = rt.block_on(async {
            let (a, b) = (Trace::new(true), Trace::new(false));
            for t in [&a, &b] {
                t.log("one");
                t.log(format_args!("two {}", 2));
            }
            (a, b)
        });
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.lines().len(), 2);
        assert!(b.lines().is_empty());
        let c = rt.block_on(async {
            let c = Trace::new(false);
            c.log("one");
            c.log("two 3");
            c
        });
        assert_ne!(a.digest(), c.digest());
    }
}
