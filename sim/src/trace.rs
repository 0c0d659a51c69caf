//! A run's trace: one line per decision or delivery, in simulated-time order, and its digest.
//! Lines carry simulated time and pids (per-world counters), never task ids or wall time.

use std::sync::{Arc, Mutex};

use videoroom::rt::time::{now, Instant};

/// Shared by every task of one world.
#[derive(Clone)]
pub struct Trace {
    start: Instant,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Trace {
    pub fn new() -> Self {
        Trace {
            start: now(),
            lines: Arc::default(),
        }
    }

    pub fn log(&self, line: impl AsRef<str>) {
        let t = now().saturating_duration_since(self.start);
        let entry = format!("{:>10.3}ms {}", t.as_secs_f64() * 1e3, line.as_ref());
        self.lines.lock().unwrap().push(entry);
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a over the lines: stable across builds and platforms, unlike std's hasher.
pub fn digest(lines: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for line in lines {
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}
