//! Time for actors: simulated under madsim (std's clock is intercepted there), real otherwise.
//! Cores never read the clock; drivers read it here and pass `now` in.

pub use std::time::{Duration, Instant, SystemTime};

/// The current instant (simulated time under madsim).
pub fn now() -> Instant {
    Instant::now()
}

/// The wall clock (simulated under madsim), for what is dated in calendar time, e.g. the expiry
/// of a join token.
pub fn wall_clock() -> SystemTime {
    SystemTime::now()
}

/// Sleeps for `d` (at least one millisecond under simulation, as in tokio).
pub async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Sleeps until `deadline`; returns at once if it has passed.
pub async fn sleep_until(deadline: Instant) {
    let d = deadline.saturating_duration_since(now());
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// Runs `fut` with a deadline; `None` if it did not finish in time.
pub async fn timeout<F: std::future::Future>(d: Duration, fut: F) -> Option<F::Output> {
    tokio::time::timeout(d, fut).await.ok()
}
