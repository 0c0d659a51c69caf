//! The peer channel's decisions, sans-IO: what a client's push becomes (a media event for the
//! room, or an error reply with a reason), which process a DOWN is about and how the channel
//! ends for it, and how a join that meets a stopping or dying room is retried, and when it
//! gives up.
//!
//! The actor (`channel::run`) asks the registry, sends and waits; it brings each outcome here
//! and does what comes back. Nothing here touches a mailbox, the registry or the clock.

use std::time::Duration;

use serde_json::Value;

use crate::rt::{ExitReason, MonitorRef};

/// How many times a join tries a room that stops or dies under it.
pub const JOIN_ATTEMPTS: usize = 8;

/// How long one join is worked on, all its attempts together, before it is refused with a
/// reason the client retries on. A join must be answered within the client's patience (the
/// simulated client's 5 s; phoenix.js times out at 10 s and sends the join again, so the first
/// one's late answer is wasted), and a node frozen for up to a second before it reads the join
/// comes out of that patience too. Each attempt alone is bounded (a cluster lookup by 2.5 s, a
/// room proxy by 1.5 s), but a room that dies under a join makes another attempt, and the
/// attempts chained past it (fuzz seed 1796415575231456 of the cluster scenario: 4.6 s).
pub const JOIN_BUDGET: Duration = Duration::from_millis(3500);

/// The refusal of a join whose room could not be started or kept alive long enough to take it.
pub const FAILED_TO_START: &str = "failed to start room";

/// What a client's push on a joined channel becomes.
#[derive(Debug, PartialEq, Eq)]
pub enum Push<'a> {
    /// A media event for the room (its `data` string).
    ToRoom(&'a str),
    /// An error reply with this reason; the channel stays.
    Refuse(&'static str),
}

pub fn client_push<'a>(event: &str, payload: &'a Value) -> Push<'a> {
    match (event, payload.get("data").and_then(Value::as_str)) {
        ("mediaEvent", Some(data)) => Push::ToRoom(data),
        ("mediaEvent", None) => Push::Refuse("mediaEvent needs a string `data`"),
        _ => Push::Refuse("unknown event"),
    }
}

/// A DOWN a joined channel gets, and how it ends the channel.
pub fn joined_down(
    mref: MonitorRef,
    room: MonitorRef,
    socket: MonitorRef,
    reason: impl std::fmt::Display,
) -> Option<ExitReason> {
    if mref == room {
        // Abnormal, so the client gets `phx_error` and rejoins into a fresh room.
        Some(ExitReason::Error(format!("room down: {reason}")))
    } else if mref == socket {
        Some(ExitReason::Shutdown)
    } else {
        // A monitor this channel should have dropped: a never-event, reported by the caller.
        None
    }
}

/// How one attempt to join a room ended without the room taking the peer.
#[derive(Debug)]
pub enum Attempt {
    /// The room refused it (full, or stopped): final.
    Refused(String),
    /// The room stopped with the join queued (its ack dropped), died before taking it, or its
    /// mailbox could not take the request.
    Lost,
}

/// What the channel does after an attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Refused(String),
    /// Ask the registry again (a fresh room will be started if the name is free).
    Retry,
}

/// The join's attempts: a lost attempt is retried, up to [`JOIN_ATTEMPTS`] in all.
#[derive(Debug, Default)]
pub struct Attempts {
    made: usize,
}

impl Attempts {
    /// Counts an attempt starting; [`Attempts::outcome`] alone decides whether there is another.
    pub fn start(&mut self) {
        self.made += 1;
    }

    pub fn outcome(&self, a: Attempt) -> Next {
        match a {
            Attempt::Refused(reason) => Next::Refused(reason),
            Attempt::Lost if self.made < JOIN_ATTEMPTS => Next::Retry,
            Attempt::Lost => Next::Refused(FAILED_TO_START.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_media_event_goes_to_the_room_and_anything_else_is_refused_with_a_reason() {
        let p = json!({"data": "{\"type\":\"connect\"}"});
        assert_eq!(
            client_push("mediaEvent", &p),
            Push::ToRoom("{\"type\":\"connect\"}")
        );
        assert_eq!(
            client_push("mediaEvent", &json!({"data": 3})),
            Push::Refuse("mediaEvent needs a string `data`")
        );
        assert_eq!(client_push("shout", &p), Push::Refuse("unknown event"));
    }

    #[test]
    fn a_room_down_is_an_error_exit_a_socket_down_a_shutdown_and_others_nothing() {
        let (room, socket) = (MonitorRef(1), MonitorRef(2));
        assert_eq!(
            joined_down(room, room, socket, "killed"),
            Some(ExitReason::Error("room down: killed".into()))
        );
        assert_eq!(
            joined_down(socket, room, socket, "normal"),
            Some(ExitReason::Shutdown)
        );
        assert_eq!(joined_down(MonitorRef(3), room, socket, "x"), None);
    }

    #[test]
    fn lost_attempts_are_retried_up_to_the_limit_then_refused() {
        let mut a = Attempts::default();
        for _ in 0..JOIN_ATTEMPTS - 1 {
            a.start();
            assert_eq!(a.outcome(Attempt::Lost), Next::Retry);
        }
        a.start();
        assert_eq!(
            a.outcome(Attempt::Lost),
            Next::Refused(FAILED_TO_START.into())
        );
    }

    #[test]
    fn a_refusal_is_final() {
        let mut a = Attempts::default();
        a.start();
        assert_eq!(
            a.outcome(Attempt::Refused("room is full".into())),
            Next::Refused("room is full".into())
        );
    }
}
