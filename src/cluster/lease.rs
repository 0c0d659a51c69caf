//! The node's etcd lease as a sans-IO state machine: when to ask for a lease, when to keep it
//! alive, and when the node must stop acting (its fence deadline).
//!
//! A keepalive sent at `t_s` and acknowledged with a TTL proves etcd will not expire the lease
//! before `t_s + TTL` on etcd's clock, so the node may act until `t_s + TTL − margin` on its own
//! (docs/cluster.md, "Leases and fencing"). Counting from the *send* time, not the answer's
//! arrival, is what makes the deadline safe whatever the answer's delay.
//!
//! It never does I/O and never reads the clock (every input carries `now`); one call is in
//! flight at a time, so an answer always belongs to the last call it asked for.

use std::time::{Duration, Instant};

/// Lease timing. See [`LeaseConfig::production`] and [`LeaseConfig::simulation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The TTL asked of etcd (etcd may grant more: its minimum is 2 s).
    pub ttl: Duration,
    /// Time between two keepalives that succeed.
    pub keepalive_every: Duration,
    /// Taken off the proven expiry: covers clock-rate drift and a stall between checking the
    /// deadline and acting on it.
    pub margin: Duration,
    /// After a call that failed, the next try comes this much later.
    pub retry_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseConfigError {
    #[error(
        "the lease TTL must be a whole number of seconds, at least 2 (etcd's minimum), not {0:?}"
    )]
    Ttl(Duration),
    #[error("the fence margin ({margin:?}) must be shorter than the lease TTL ({ttl:?})")]
    Margin { margin: Duration, ttl: Duration },
    #[error(
        "keepalives every {every:?} cannot keep a node acting: a deadline lasts TTL - margin = {window:?}"
    )]
    Keepalive { every: Duration, window: Duration },
    #[error("the retry delay must be more than zero and less than TTL - margin")]
    Retry,
}

impl LeaseConfig {
    /// TTL 10 s, keepalive every 2 s, margin 4 s.
    pub fn production() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(10),
            keepalive_every: Duration::from_secs(2),
            margin: Duration::from_secs(4),
            retry_after: Duration::from_millis(500),
        }
    }

    /// The production proportions for a TTL of `ttl_secs`: keepalives every fifth of it, a
    /// margin of two fifths (4 s of 10), retries every 500 ms at most. Pass it through
    /// [`LeaseConfig::checked`] (a TTL under 2 s is refused).
    pub fn with_ttl(ttl_secs: u64) -> Self {
        let ttl = Duration::from_secs(ttl_secs);
        LeaseConfig {
            ttl,
            keepalive_every: ttl / 5,
            margin: ttl * 2 / 5,
            retry_after: (ttl / 10).min(Duration::from_millis(500)),
        }
    }

    /// TTL 4 s, keepalive every 800 ms, margin 1.5 s: leases lapse within a short world.
    pub fn simulation() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(4),
            keepalive_every: Duration::from_millis(800),
            margin: Duration::from_millis(1500),
            retry_after: Duration::from_millis(250),
        }
    }

    /// Refuses timings under which a node could never act, or act past its lease.
    ///
    /// ```
    /// use videoroom::cluster::lease::LeaseConfig;
    /// assert_eq!(LeaseConfig::with_ttl(10).checked(), Ok(LeaseConfig::production()));
    /// assert!(LeaseConfig::with_ttl(3).checked().is_ok());
    /// assert!(LeaseConfig::with_ttl(1).checked().is_err());
    /// ```
    pub fn checked(self) -> Result<Self, LeaseConfigError> {
        if self.ttl < Duration::from_secs(2) || self.ttl.subsec_nanos() != 0 {
            return Err(LeaseConfigError::Ttl(self.ttl));
        }
        if self.margin >= self.ttl {
            return Err(LeaseConfigError::Margin {
                margin: self.margin,
                ttl: self.ttl,
            });
        }
        let window = self.ttl - self.margin;
        if self.keepalive_every >= window {
            return Err(LeaseConfigError::Keepalive {
                every: self.keepalive_every,
                window,
            });
        }
        if self.retry_after.is_zero() || self.retry_after >= window {
            return Err(LeaseConfigError::Retry);
        }
        Ok(self)
    }

    fn ttl_secs(&self) -> i64 {
        self.ttl.as_secs() as i64
    }
}

/// A call the driver must make to etcd, then answer with the matching `on_*` method (or
/// [`LeaseCore::on_failed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Grant { ttl_secs: i64 },
    KeepAlive { id: i64 },
}

/// Why the node stopped acting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceCause {
    /// The deadline passed before a keepalive was acknowledged.
    Deadline,
    /// etcd answered that the lease is gone (expired or revoked).
    LeaseGone,
}

/// What the node must act on, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new lease: a new incarnation of the node, acting until `deadline` unless renewed.
    Acting { id: i64, deadline: Instant },
    /// Stop acting at once: end every room of this incarnation, refuse new ones.
    Fenced { id: i64, cause: FenceCause },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No lease (at start, or fenced): the next grant starts a new incarnation.
    Idle,
    Live {
        id: i64,
        ttl: Duration,
        deadline: Instant,
    },
}

#[derive(Debug)]
pub struct LeaseCore {
    cfg: LeaseConfig,
    state: State,
    /// The call in flight and when it was sent.
    in_flight: Option<(Call, Instant)>,
    /// When the next call is due (none while one is in flight).
    next_call: Instant,
    changes: std::collections::VecDeque<Change>,
}

impl LeaseCore {
    pub fn new(cfg: LeaseConfig, now: Instant) -> Self {
        LeaseCore {
            cfg,
            state: State::Idle,
            in_flight: None,
            next_call: now,
            changes: Default::default(),
        }
    }

    /// The lease and its deadline while the node may act; `None` when it must not.
    pub fn acting(&self, now: Instant) -> Option<(i64, Instant)> {
        match self.state {
            State::Live { id, deadline, .. } if now < deadline => Some((id, deadline)),
            _ => None,
        }
    }

    /// The call to make now, if one is due; it is then in flight until answered.
    pub fn poll_call(&mut self, now: Instant) -> Option<Call> {
        self.check_deadline(now);
        if self.in_flight.is_some() || now < self.next_call {
            return None;
        }
        let call = match self.state {
            State::Idle => Call::Grant {
                ttl_secs: self.cfg.ttl_secs(),
            },
            State::Live { id, .. } => Call::KeepAlive { id },
        };
        self.in_flight = Some((call, now));
        Some(call)
    }

    /// The grant in flight was answered: lease `id` with the TTL etcd granted.
    pub fn on_granted(&mut self, now: Instant, id: i64, granted_ttl_secs: i64) {
        let Some((Call::Grant { .. }, sent)) = self.in_flight.take() else {
            debug_assert!(false, "a grant answer with no grant in flight");
            return;
        };
        let ttl = Duration::from_secs(granted_ttl_secs.max(0) as u64);
        match self.deadline_from(sent, ttl) {
            Some(deadline) if now < deadline => {
                self.state = State::Live { id, ttl, deadline };
                self.changes.push_back(Change::Acting { id, deadline });
                self.next_call = sent + self.cfg.keepalive_every;
            }
            // The answer came too late (or the TTL is shorter than the margin) to act on: the
            // lease lapses on its own; ask again.
            _ => self.next_call = now + self.cfg.retry_after,
        }
    }

    /// The keepalive in flight was answered: `Some(ttl)` renewed, `None` the lease is gone.
    pub fn on_keepalive(&mut self, now: Instant, ttl_secs: Option<i64>) {
        let Some((Call::KeepAlive { id: asked }, sent)) = self.in_flight.take() else {
            debug_assert!(false, "a keepalive answer with no keepalive in flight");
            return;
        };
        self.check_deadline(now);
        let State::Live { id, .. } = self.state else {
            // Fenced meanwhile by the deadline: this incarnation is over whatever etcd says.
            self.next_call = now;
            return;
        };
        debug_assert_eq!(id, asked);
        match ttl_secs.filter(|t| *t > 0) {
            Some(t) => {
                let ttl = Duration::from_secs(t as u64);
                if let Some(deadline) = self.deadline_from(sent, ttl) {
                    self.state = State::Live { id, ttl, deadline };
                }
                self.next_call = sent + self.cfg.keepalive_every;
            }
            None => self.fence(now, FenceCause::LeaseGone),
        }
    }

    /// The call in flight failed or timed out: nothing is known, try again soon.
    pub fn on_failed(&mut self, now: Instant) {
        self.in_flight = None;
        self.next_call = now + self.cfg.retry_after;
        self.check_deadline(now);
    }

    /// When the core next needs [`LeaseCore::handle_timeout`]: a call due, or the deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let call = self.in_flight.is_none().then_some(self.next_call);
        let deadline = match self.state {
            State::Live { deadline, .. } => Some(deadline),
            State::Idle => None,
        };
        [call, deadline].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.check_deadline(now);
    }

    pub fn poll_change(&mut self) -> Option<Change> {
        self.changes.pop_front()
    }

    fn deadline_from(&self, sent: Instant, ttl: Duration) -> Option<Instant> {
        ttl.checked_sub(self.cfg.margin).map(|window| sent + window)
    }

    fn check_deadline(&mut self, now: Instant) {
        if let State::Live { deadline, .. } = self.state {
            if now >= deadline {
                self.fence(now, FenceCause::Deadline);
            }
        }
    }

    fn fence(&mut self, now: Instant, cause: FenceCause) {
        if let State::Live { id, .. } = self.state {
            self.state = State::Idle;
            self.changes.push_back(Change::Fenced { id, cause });
            // A keepalive still in flight belongs to the old incarnation; its answer is taken
            // as above (ignored), and the next grant waits for it.
            if self.in_flight.is_none() {
                self.next_call = now + self.cfg.retry_after;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn live(t0: Instant) -> LeaseCore {
        let mut l = LeaseCore::new(LeaseConfig::simulation(), t0);
        assert_eq!(l.poll_call(t0), Some(Call::Grant { ttl_secs: 4 }));
        l.on_granted(t0 + ms(10), 7, 4);
        l
    }

    #[test]
    fn a_grant_makes_the_node_act_until_ttl_less_margin_from_the_send() {
        let t0 = Instant::now();
        let mut l = live(t0);
        let deadline = t0 + ms(4000 - 1500);
        assert_eq!(l.poll_change(), Some(Change::Acting { id: 7, deadline }));
        assert_eq!(l.acting(deadline - ms(1)), Some((7, deadline)));
        assert_eq!(l.acting(deadline), None, "the deadline itself is past");
    }

    #[test]
    fn keepalives_are_due_every_period_from_the_last_send_and_extend_the_deadline() {
        let t0 = Instant::now();
        let mut l = live(t0);
        assert_eq!(l.poll_call(t0 + ms(799)), None);
        assert_eq!(l.poll_timeout(), Some(t0 + ms(800)));
        let sent = t0 + ms(800);
        assert_eq!(l.poll_call(sent), Some(Call::KeepAlive { id: 7 }));
        assert_eq!(l.poll_call(sent), None, "one call in flight");
        l.on_keepalive(sent + ms(300), Some(4));
        assert_eq!(
            l.acting(sent + ms(2499)).map(|a| a.1),
            Some(sent + ms(2500))
        );
        assert_eq!(l.poll_timeout(), Some(sent + ms(800)));
    }

    #[test]
    fn a_late_grant_answer_is_not_acted_on() {
        let t0 = Instant::now();
        let mut l = LeaseCore::new(LeaseConfig::simulation(), t0);
        l.poll_call(t0);
        l.on_granted(t0 + ms(2600), 7, 4);
        assert_eq!(l.poll_change(), None);
        assert_eq!(l.acting(t0 + ms(2600)), None);
        assert_eq!(
            l.poll_call(t0 + ms(2850)),
            Some(Call::Grant { ttl_secs: 4 })
        );
    }

    #[test]
    fn silence_past_the_deadline_fences_and_a_new_grant_is_a_new_incarnation() {
        let t0 = Instant::now();
        let mut l = live(t0);
        l.poll_change();
        let sent = t0 + ms(800);
        l.poll_call(sent);
        l.on_failed(sent + ms(500));
        assert_eq!(l.poll_call(sent + ms(700)), None, "retry waits");
        assert_eq!(l.poll_call(sent + ms(750)), Some(Call::KeepAlive { id: 7 }));
        // That one hangs; the deadline comes first.
        assert_eq!(l.poll_timeout(), Some(t0 + ms(2500)));
        l.handle_timeout(t0 + ms(2500));
        assert_eq!(
            l.poll_change(),
            Some(Change::Fenced {
                id: 7,
                cause: FenceCause::Deadline
            })
        );
        assert_eq!(l.acting(t0 + ms(2500)), None);
        // Its late answer renews nothing.
        l.on_keepalive(t0 + ms(2600), Some(4));
        assert_eq!(l.acting(t0 + ms(2600)), None);
        assert_eq!(
            l.poll_call(t0 + ms(2600)),
            Some(Call::Grant { ttl_secs: 4 })
        );
        l.on_granted(t0 + ms(2650), 9, 4);
        assert_eq!(
            l.poll_change(),
            Some(Change::Acting {
                id: 9,
                deadline: t0 + ms(2600 + 2500)
            })
        );
    }

    #[test]
    fn a_lease_etcd_says_is_gone_fences_at_once() {
        let t0 = Instant::now();
        let mut l = live(t0);
        l.poll_change();
        l.poll_call(t0 + ms(800));
        l.on_keepalive(t0 + ms(900), None);
        assert_eq!(
            l.poll_change(),
            Some(Change::Fenced {
                id: 7,
                cause: FenceCause::LeaseGone
            })
        );
        assert_eq!(l.acting(t0 + ms(900)), None);
        assert_eq!(l.poll_call(t0 + ms(1149)), None);
        assert_eq!(
            l.poll_call(t0 + ms(1150)),
            Some(Call::Grant { ttl_secs: 4 })
        );
    }

    #[test]
    fn a_slow_keepalive_answer_still_counts_from_its_send() {
        let t0 = Instant::now();
        let mut l = live(t0);
        let sent = t0 + ms(800);
        l.poll_call(sent);
        // Answered 1.6 s later: still before the old deadline (2.5 s), new deadline 3.3 s.
        l.on_keepalive(sent + ms(1600), Some(4));
        assert_eq!(
            l.acting(sent + ms(1600)).map(|a| a.1),
            Some(sent + ms(2500))
        );
        // The next keepalive is already due (800 ms after the send).
        assert_eq!(
            l.poll_call(sent + ms(1600)),
            Some(Call::KeepAlive { id: 7 })
        );
    }

    #[test]
    fn timings_that_cannot_work_are_refused() {
        let base = LeaseConfig::production();
        assert!(base.checked().is_ok());
        assert!(LeaseConfig::simulation().checked().is_ok());
        assert!(matches!(
            LeaseConfig {
                ttl: Duration::from_secs(1),
                ..base
            }
            .checked(),
            Err(LeaseConfigError::Ttl(_))
        ));
        assert!(matches!(
            LeaseConfig {
                ttl: ms(2500),
                ..base
            }
            .checked(),
            Err(LeaseConfigError::Ttl(_))
        ));
        assert!(matches!(
            LeaseConfig {
                margin: Duration::from_secs(10),
                ..base
            }
            .checked(),
            Err(LeaseConfigError::Margin { .. })
        ));
        assert!(matches!(
            LeaseConfig {
                keepalive_every: Duration::from_secs(6),
                ..base
            }
            .checked(),
            Err(LeaseConfigError::Keepalive { .. })
        ));
        assert!(matches!(
            LeaseConfig {
                retry_after: Duration::ZERO,
                ..base
            }
            .checked(),
            Err(LeaseConfigError::Retry)
        ));
    }
}
