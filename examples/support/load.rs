//! The synthetic load both SFU benchmarks drive (`sfu_bench` against this server, `janus_bench`
//! against Janus) and how they read it, so the two measure the same thing: the publishers'
//! common schedule, the sender of one peer's video and audio, the per-publisher accounting of
//! numbered packets (loss, reordering, latency), and the runtime and CPU figures.
//!
//! It owns no peer and no server: a bench hands it the local tracks to send on (anything that
//! can [`SendNumbered`]) and the received headers to count. Included by path (`#[path]`) in
//! each benchmark, so each uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use net_tokio::runtime::{Builder, Runtime};

/// Every publisher sends video every period and audio every other one.
pub const PERIOD: Duration = Duration::from_millis(10);
pub const VIDEO_BYTES: usize = 1100;
pub const AUDIO_BYTES: usize = 100;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Phase {
    /// Publisher i of n sends at i/n of the period.
    Spread,
    /// Every publisher sends at the same instant.
    Lockstep,
}

/// The publishers' common send schedule.
#[derive(Clone, Copy)]
pub struct Schedule {
    epoch: Instant,
    phase: Phase,
    publishers: usize,
}

impl Schedule {
    pub fn new(phase: Phase, publishers: usize) -> Schedule {
        Schedule {
            epoch: Instant::now(),
            phase,
            publishers: publishers.max(1),
        }
    }

    /// The first tick of publisher `i`: its offset in the period, at or after now.
    pub fn first_tick(&self, i: usize) -> Instant {
        let offset = match self.phase {
            Phase::Spread => PERIOD * (i % self.publishers) as u32 / self.publishers as u32,
            Phase::Lockstep => Duration::ZERO,
        };
        let since = Instant::now().saturating_duration_since(self.epoch + offset);
        let periods = since.as_nanos().div_ceil(PERIOD.as_nanos());
        self.epoch + offset + PERIOD * u32::try_from(periods).unwrap_or(u32::MAX)
    }
}

/// Whether the window is on, and whether the senders must stop.
pub struct Shared {
    pub measuring: AtomicBool,
    pub stop: AtomicBool,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        })
    }
}

/// A local track that sends one packet carrying the benchmark header (`tag`, `seq`), padded to
/// `size` payload bytes.
pub trait SendNumbered: Send + Sync + 'static {
    fn send_numbered(&self, tag: u8, seq: u32, size: usize) -> impl Future<Output = bool> + Send;
}

/// Publishes `video` every period and `audio` every other one, tagged `tag`, from `first`
/// until `shared.stop`.
pub fn spawn_sender<L: SendNumbered>(
    video: Option<Arc<L>>,
    audio: Option<Arc<L>>,
    tag: u8,
    shared: Arc<Shared>,
    first: Instant,
) {
    net_tokio::spawn(async move {
        let mut tick = net_tokio::time::interval_at(first.into(), PERIOD);
        let mut seq = 0u32;
        while !shared.stop.load(Ordering::Relaxed) {
            tick.tick().await;
            if let Some(v) = &video {
                v.send_numbered(tag, seq, VIDEO_BYTES).await;
            }
            if seq.is_multiple_of(2) {
                if let Some(a) = &audio {
                    a.send_numbered(tag, seq / 2, AUDIO_BYTES).await;
                }
            }
            seq += 1;
        }
    });
}

/// One receiver's numbered packets, per publisher: the next sequence expected, and over the
/// window the packets lost (gaps), reordered (behind the next expected) and their latencies.
#[derive(Default)]
pub struct Tally {
    next: BTreeMap<u32, u32>,
    pub lost: u64,
    pub reordered: u64,
    pub latencies_ns: Vec<u64>,
}

impl Tally {
    /// Publishers heard from (numbered packets only).
    pub fn publishers(&self) -> usize {
        self.next.len()
    }

    /// Numbered packet `seq` of `publisher`, sent and received at these instants.
    pub fn numbered(
        &mut self,
        publisher: u32,
        seq: u32,
        sent_ns: u64,
        recv_ns: u64,
        shared: &Shared,
    ) {
        let measuring = shared.measuring.load(Ordering::Relaxed);
        let next = self.next.entry(publisher).or_insert(seq);
        if seq >= *next {
            let gap = u64::from(seq - *next);
            *next = seq + 1;
            if measuring {
                self.lost += gap;
                self.latencies_ns.push(recv_ns.saturating_sub(sent_ns));
            }
        } else if measuring {
            self.reordered += 1;
        }
    }
}

/// A tokio runtime of one worker whose threads are named `name` (read by [`thread_cpu_ns`]).
pub fn runtime(name: &str) -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// CPU nanoseconds consumed so far by this process's threads whose name starts with `prefix`
/// (threads that exited are lost, so read it over windows where the set is stable).
pub fn thread_cpu_ns(prefix: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The `p` quantile of `sorted` (NaN when empty).
pub fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64
}

/// Nanoseconds as milliseconds with three decimals.
pub fn ms(ns: f64) -> String {
    format!("{:.3}", ns / 1e6)
}
