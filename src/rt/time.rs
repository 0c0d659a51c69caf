//! Time for actors: simulated under madsim (std's clock is intercepted there), real otherwise.
//! Cores never read the clock; drivers read it here and pass `now` in.
//!
//! Under madsim a `Sleep` adds a timer to the simulator's heap every time it is polled and
//! found pending, and a timer is never removed before it fires. A loop that waits on a
//! deadline next to a mailbox therefore left one stale timer per message (a socket's idle
//! timeout: one per frame, each firing 60 s later as a spurious wake that polled the loop and
//! added another). The futures here register once per deadline instead, so the simulator
//! only keeps the timers that mean something.

use std::future::Future;

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
    once(tokio::time::sleep(d)).await;
}

/// Sleeps until `deadline`; returns at once if it has passed.
pub async fn sleep_until(deadline: Instant) {
    if deadline > now() {
        once(tokio_sleep_until(deadline)).await;
    }
}

/// Runs `fut` with a deadline; `None` if it did not finish in time.
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        out = fut => Some(out),
        _ = sleep(d) => None,
    }
}

/// A loop's wait for a deadline that moves between waits (a socket's idle timeout moves with
/// every frame). At most one simulator timer is outstanding per `Timer` while the deadline
/// only moves later: the armed timer fires, the wait finds its deadline not yet reached and
/// arms the next. The loop must wait from one task (the armed timer wakes that task).
#[derive(Debug, Default)]
pub struct Timer {
    #[cfg(madsim)]
    armed: Option<Instant>,
}

impl Timer {
    pub fn new() -> Timer {
        Timer::default()
    }

    /// Waits until `deadline` (forever if `None`); returns at once if it has passed.
    pub async fn until(&mut self, deadline: Option<Instant>) {
        let Some(deadline) = deadline else {
            return std::future::pending().await;
        };
        if deadline <= now() {
            return;
        }
        #[cfg(madsim)]
        armed_wait(tokio_sleep_until(deadline), &mut self.armed).await;
        #[cfg(not(madsim))]
        tokio_sleep_until(deadline).await
    }
}

#[cfg(madsim)]
fn tokio_sleep_until(deadline: Instant) -> tokio::time::Sleep {
    tokio::time::sleep_until(deadline)
}

#[cfg(not(madsim))]
fn tokio_sleep_until(deadline: Instant) -> tokio::time::Sleep {
    tokio::time::sleep_until(deadline.into())
}

/// Polls `sleep` for registration once; later polls (spurious wakes) only look at the clock.
#[cfg(madsim)]
async fn once(sleep: tokio::time::Sleep) {
    armed_wait(sleep, &mut None).await
}

/// Waits out `sleep`, registering a simulator timer only when none that fires first is
/// `armed` already (madsim keeps a sleep at least 1 ms long, as tokio does, so its own
/// deadline is the target).
#[cfg(madsim)]
async fn armed_wait(mut sleep: tokio::time::Sleep, armed: &mut Option<Instant>) {
    let target = sleep.deadline();
    std::future::poll_fn(|cx| {
        use std::task::Poll;
        if sleep.is_elapsed() {
            return Poll::Ready(());
        }
        let now = now();
        if armed.is_none_or(|a| a <= now || a > target) {
            *armed = Some(target);
            let _ = std::pin::Pin::new(&mut sleep).poll(cx);
        }
        Poll::Pending
    })
    .await
}

#[cfg(not(madsim))]
async fn once(sleep: tokio::time::Sleep) {
    sleep.await
}
