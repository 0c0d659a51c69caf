//! The room's decisions stepped by hand: no runtime, no mailbox; a channel is its name.

use std::cell::Cell;
use std::time::{Duration, Instant};

use super::*;
use crate::engine::{NegotiationConfig, SessionConfig};

const LINGER: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(10);

struct Room {
    core: RoomCore<&'static str>,
    t0: Instant,
    next_ref: Cell<u64>,
}

impl Room {
    fn new(max_peers: usize) -> Room {
        let t0 = Instant::now();
        let session = Session::with_negotiation(
            SessionConfig::default(),
            TrackNegotiation::new(NegotiationConfig::default()),
        );
        Room {
            core: RoomCore::new(max_peers, LINGER, GRACE, session, t0),
            t0,
            next_ref: Cell::new(0),
        }
    }

    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    /// Peer `name` (also its channel) with pid `pid` joins at `secs`.
    fn join(&mut self, name: &'static str, pid: u64, secs: u64) -> Result<(), String> {
        let now = self.at(secs);
        let next = &self.next_ref;
        self.core.add_peer(name.into(), Pid(pid), name, now, || {
            next.set(next.get() + 1);
            MonitorRef(next.get())
        })
    }

    fn connect(&mut self, name: &str, secs: u64) -> Vec<Step<&'static str>> {
        let now = self.at(secs);
        self.core.media_event(
            name,
            r#"{"type":"connect","data":{"metadata":{"name":"x"}}}"#,
            now,
        )
    }
}

fn pushed_to(steps: &[Step<&'static str>]) -> Vec<&'static str> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Push { to, .. } => Some(*to),
            _ => None,
        })
        .collect()
}

#[test]
fn a_join_past_the_last_slot_is_refused_without_a_monitor() {
    let mut r = Room::new(2);
    assert_eq!(r.join("a", 1, 0), Ok(()));
    assert_eq!(r.join("b", 2, 0), Ok(()));
    assert_eq!(r.join("c", 3, 0), Err(ROOM_FULL.to_string()));
    assert_eq!(r.next_ref.get(), 2, "the refused join was monitored");
    assert_eq!(r.core.peers().len(), 2);
}

#[test]
fn a_room_nobody_joins_stops_at_the_linger_time_and_not_before() {
    let mut r = Room::new(4);
    assert_eq!(r.core.poll_timeout(), Some(r.at(30)));
    assert!(r.core.handle_timeout(r.at(29)).is_empty());
    assert!(!r.core.is_stopped());
    r.core.handle_timeout(r.at(30));
    assert!(r.core.is_stopped());
    assert_eq!(r.core.poll_timeout(), None);
    assert_eq!(r.join("late", 1, 31), Err("room stopped".to_string()));
}

#[test]
fn a_join_ends_the_linger() {
    let mut r = Room::new(4);
    r.join("a", 1, 5).unwrap();
    r.connect("a", 6);
    assert_eq!(
        r.core.poll_timeout(),
        None,
        "a connected peer waits for nothing"
    );
    r.core.handle_timeout(r.at(60));
    assert!(!r.core.is_stopped());
}

#[test]
fn the_room_stops_when_its_last_peer_is_down_and_only_then() {
    let mut r = Room::new(4);
    r.join("a", 1, 0).unwrap();
    r.join("b", 2, 0).unwrap();
    r.connect("a", 1);
    r.connect("b", 1);
    r.core.down(Pid(1), MonitorRef(1));
    assert!(!r.core.is_stopped());
    r.core.down(Pid(2), MonitorRef(2));
    assert!(r.core.is_stopped());
}

#[test]
fn a_stale_or_unknown_down_removes_nobody() {
    let mut r = Room::new(4);
    r.join("a", 1, 0).unwrap();
    // Another monitor of the same pid (not the one the room holds for this peer).
    assert!(r.core.down(Pid(1), MonitorRef(99)).is_empty());
    assert!(r.core.down(Pid(7), MonitorRef(1)).is_empty());
    assert!(!r.core.is_stopped());
    assert_eq!(r.core.peers().len(), 1);
    // Its own monitor's DOWN still removes it.
    r.core.down(Pid(1), MonitorRef(1));
    assert!(r.core.is_stopped());
}

#[test]
fn the_others_hear_of_a_peer_that_connects_and_leaves() {
    let mut r = Room::new(4);
    r.join("a", 1, 0).unwrap();
    r.join("b", 2, 0).unwrap();
    r.connect("a", 1);
    let steps = r.connect("b", 2);
    assert!(pushed_to(&steps).contains(&"a"), "{steps:?}");
    let steps = r.core.down(Pid(2), MonitorRef(2));
    assert_eq!(pushed_to(&steps), ["a"], "{steps:?}");
}

#[test]
fn media_from_a_process_that_is_not_a_peer_is_ignored() {
    let mut r = Room::new(4);
    r.join("a", 1, 0).unwrap();
    assert!(r.connect("stranger", 1).is_empty());
}

#[test]
fn a_peer_that_never_connects_is_dropped_at_the_grace_and_told_why() {
    let mut r = Room::new(4);
    r.join("a", 1, 0).unwrap();
    r.connect("a", 0);
    r.join("squatter", 2, 3).unwrap();
    assert_eq!(r.core.poll_timeout(), Some(r.at(13)));
    assert!(r.core.handle_timeout(r.at(12)).is_empty());
    let steps = r.core.handle_timeout(r.at(13));
    assert_eq!(steps.first(), Some(&Step::Demonitor(MonitorRef(2))));
    assert!(
        matches!(steps.last(), Some(Step::Drop { to: "squatter", reason }) if reason.contains("10 s")),
        "{steps:?}"
    );
    // Never in the session: nobody else is told.
    assert!(pushed_to(&steps).is_empty(), "{steps:?}");
    assert_eq!(r.core.peers().len(), 1);
    assert!(!r.core.is_stopped());
    // Its channel's DOWN after the drop changes nothing.
    assert!(r.core.down(Pid(2), MonitorRef(2)).is_empty());
}

#[test]
fn a_room_whose_only_peer_is_dropped_for_the_grace_stops() {
    let mut r = Room::new(4);
    r.join("squatter", 1, 0).unwrap();
    r.core.handle_timeout(r.at(10));
    assert!(r.core.is_stopped());
}

#[test]
fn info_lists_peers_and_the_metadata_of_connected_endpoints() {
    let mut r = Room::new(4);
    r.join("b", 2, 0).unwrap();
    r.join("a", 1, 0).unwrap();
    r.connect("b", 1);
    let info = r.core.info();
    assert_eq!(
        info.peers,
        [("a".to_string(), Pid(1)), ("b".to_string(), Pid(2))]
    );
    assert_eq!(info.endpoints, ["b"]);
    assert_eq!(info.metadata[0].1["name"], "x");
}
