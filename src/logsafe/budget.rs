//! A per-peer budget of warnings.

use std::time::{Duration, Instant};

/// At most `per_window` lines per `window` for one source (a peer, a socket); lines over the
/// budget are counted instead of written, and the count rides on the next line written
/// ([`WarnBudget::admit`]) or is taken at the end ([`WarnBudget::take_suppressed`]). Sans-IO:
/// the caller passes `now`.
#[derive(Debug, Clone)]
pub struct WarnBudget {
    per_window: u32,
    window: Duration,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl WarnBudget {
    pub fn new(per_window: u32, window: Duration) -> Self {
        WarnBudget {
            per_window,
            window,
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// The budget for warnings one client can cause: 5 a minute.
    pub fn per_peer() -> Self {
        WarnBudget::new(5, Duration::from_secs(60))
    }

    /// Whether a line may be written at `now`: `Some(n)` if so, `n` being the lines suppressed
    /// since the last one written (log it with the line); `None` if this one is suppressed.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if fresh {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Lines suppressed and not yet reported; resets the count. For a last line when the
    /// source goes away.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_flood_writes_the_budget_then_counts() {
        let t0 = Instant::now();
        let mut b = WarnBudget::new(3, MIN);
        let written: Vec<Option<u64>> = (0..1000)
            .map(|i| b.admit(t0 + Duration::from_millis(i)))
            .collect();
        assert_eq!(&written[..3], &[Some(0), Some(0), Some(0)]);
        assert!(written[3..].iter().all(Option::is_none));
        // The next window's first line carries the count of the previous window's silence.
        assert_eq!(b.admit(t0 + MIN), Some(997));
        assert_eq!(b.admit(t0 + MIN), Some(0));
        assert_eq!(b.take_suppressed(), 0);
    }

    #[test]
    fn what_was_never_reported_is_taken_at_the_end() {
        let t0 = Instant::now();
        let mut b = WarnBudget::new(1, MIN);
        assert_eq!(b.admit(t0), Some(0));
        assert_eq!(b.admit(t0), None);
        assert_eq!(b.admit(t0 + Duration::from_secs(59)), None);
        assert_eq!(b.take_suppressed(), 2);
        assert_eq!(b.take_suppressed(), 0);
    }

    #[test]
    fn a_quiet_source_gets_its_full_budget_back() {
        let t0 = Instant::now();
        let mut b = WarnBudget::per_peer();
        for _ in 0..5 {
            assert_eq!(b.admit(t0), Some(0));
        }
        assert_eq!(b.admit(t0), None);
        for _ in 0..5 {
            assert!(b.admit(t0 + Duration::from_secs(3600)).is_some());
        }
    }
}
