//! The runtime seam: the one place that knows which runtime runs the actors.
//!
//! Owns spawning, time, seeded randomness, bounded mailboxes, process ids, monitors with Erlang
//! semantics and the crash boundary. Production builds run on tokio; `--cfg madsim` builds run the
//! same code on madsim's deterministic simulator. Nothing outside this module may name madsim or
//! test `cfg(madsim)`: logic modules call these functions and stay runtime-agnostic.
//!
//! Rules this module keeps so simulations replay bit for bit: every random draw comes from
//! [`rand`] (madsim's seeded RNG under simulation), process ids and monitor refs are allocated
//! per [`System`] (never from process-global counters), and maps that can reach an output are
//! `BTreeMap`s.

mod counted;
mod mailbox;
pub mod probe;
#[cfg(test)]
mod probe_tests;
mod process;
pub mod promises;
pub mod rand;
#[cfg(madsim)]
pub mod sim;
#[cfg(test)]
mod tests;
pub mod time;
pub mod watch;

pub use counted::Counted;
pub use mailbox::{Addr, Received, SendError};
pub use process::{Ctx, Down, ExitReason, MonitorRef, Pid, Prepared, System};

/// A point where a concurrent interleaving matters (between a lookup and the action taken on
/// it). Under simulation the scheduler may switch tasks here at random, and sometimes the task
/// stalls for up to a few milliseconds (BUGGIFY-style), so races that real threads and loaded
/// machines hit are explored; in production it costs nothing.
pub async fn race_point() {
    #[cfg(madsim)]
    {
        if rand::chance(0.1) {
            time::sleep(time::Duration::from_micros(rand::below(3_000))).await;
        } else if rand::chance(0.5) {
            tokio::task::yield_now().await;
        }
    }
}

/// Spawns a plain task (no process identity, no monitors): for drivers such as socket readers
/// whose lifetime is tied to an actor.
pub fn spawn_task<F>(fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(fut);
}
