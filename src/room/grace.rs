//! The room's connect grace: which peers hold a slot without being in the media session, and
//! when each must be dropped.
//!
//! A joined channel counts against `max_peers_per_room` from its join, but the people in the
//! room only see media endpoints (peers that sent `connect`). A channel that never connects
//! would keep a newcomer out while nobody inside can see why, so each peer gets a grace period,
//! counted from its join or from its last `disconnect`, to be in the session; past it, the room
//! drops it. Sans-IO: the room passes `now` and executes what [`ConnectGrace::expired`] returns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Peers waiting to connect, with the instant each started waiting.
#[derive(Debug)]
pub struct ConnectGrace {
    grace: Duration,
    waiting: BTreeMap<String, Instant>,
}

impl ConnectGrace {
    pub fn new(grace: Duration) -> Self {
        ConnectGrace {
            grace,
            waiting: BTreeMap::new(),
        }
    }

    /// Records whether `peer` is in the media session after something it did at `now`. A peer
    /// that is not starts (or keeps) waiting; one that is stops waiting.
    pub fn update(&mut self, peer: &str, connected: bool, now: Instant) {
        if connected {
            self.waiting.remove(peer);
        } else if !self.waiting.contains_key(peer) {
            self.waiting.insert(peer.to_owned(), now);
        }
    }

    /// `peer` left the room: nothing to wait for.
    pub fn remove(&mut self, peer: &str) {
        self.waiting.remove(peer);
    }

    /// When [`Self::expired`] next has something to return.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiting.values().min().map(|since| *since + self.grace)
    }

    /// Peers whose grace has run out at `now`, oldest first (ties in peer-id order); they are
    /// forgotten here, and the room must drop them.
    pub fn expired(&mut self, now: Instant) -> Vec<String> {
        let mut out: Vec<(Instant, String)> = self
            .waiting
            .iter()
            .filter(|(_, since)| now >= **since + self.grace)
            .map(|(peer, since)| (*since, peer.clone()))
            .collect();
        out.sort();
        for (_, peer) in &out {
            self.waiting.remove(peer);
        }
        out.into_iter().map(|(_, peer)| peer).collect()
    }

    /// The reason a dropped peer's client is given.
    pub fn reason(&self) -> String {
        format!(
            "did not connect to the media session within {} s of joining",
            self.grace.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    #[test]
    fn a_peer_that_never_connects_expires_after_the_grace() {
        let t0 = Instant::now();
        let mut g = ConnectGrace::new(GRACE);
        g.update("a", false, t0);
        assert_eq!(g.poll_timeout(), Some(t0 + GRACE));
        assert!(g.expired(t0 + GRACE - Duration::from_millis(1)).is_empty());
        assert_eq!(g.expired(t0 + GRACE), vec!["a".to_owned()]);
        assert_eq!(g.poll_timeout(), None, "an expired peer is forgotten");
        assert!(g.expired(t0 + 2 * GRACE).is_empty());
    }

    #[test]
    fn connecting_stops_the_clock_and_disconnecting_restarts_it() {
        let t0 = Instant::now();
        let mut g = ConnectGrace::new(GRACE);
        g.update("a", false, t0);
        // Events before `connect` (the peer is still outside) do not restart its clock.
        g.update("a", false, t0 + Duration::from_secs(5));
        assert_eq!(g.poll_timeout(), Some(t0 + GRACE));
        g.update("a", true, t0 + Duration::from_secs(6));
        assert_eq!(g.poll_timeout(), None);
        assert!(g.expired(t0 + 3 * GRACE).is_empty());
        let left = t0 + Duration::from_secs(40);
        g.update("a", false, left);
        assert_eq!(g.poll_timeout(), Some(left + GRACE));
        g.remove("a");
        assert_eq!(g.poll_timeout(), None);
    }

    #[test]
    fn several_expire_oldest_first() {
        let t0 = Instant::now();
        let mut g = ConnectGrace::new(GRACE);
        g.update("z", false, t0);
        g.update("b", false, t0 + Duration::from_secs(1));
        g.update("a", false, t0 + Duration::from_secs(1));
        g.update("c", false, t0 + Duration::from_secs(3));
        assert_eq!(g.poll_timeout(), Some(t0 + GRACE));
        assert_eq!(
            g.expired(t0 + Duration::from_secs(12)),
            vec!["z".to_owned(), "a".to_owned(), "b".to_owned()]
        );
        assert_eq!(g.poll_timeout(), Some(t0 + Duration::from_secs(13)));
    }

    #[test]
    fn the_reason_names_the_grace() {
        assert_eq!(
            ConnectGrace::new(GRACE).reason(),
            "did not connect to the media session within 10 s of joining"
        );
    }
}
