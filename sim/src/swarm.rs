//! Swarm testing: each seed switches workload actions and faults on or off and picks their
//! rates, so rare combinations are not drowned by frequent ones. The choice is printed with
//! every run and is part of its trace. The draw comes from the world's "swarm" stream, each
//! client's action choices from its own "workload" stream (see `streams`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use videoroom::rt::time;

use crate::faults::Fault;
use crate::named_enum;
use crate::streams::Stream;

named_enum! {
    /// What a simulated client may do between protocol steps (the workload). Weights are keyed
    /// by this type, so a scenario cannot switch an action off by miscounting a list.
    pub enum Action ("action") {
        Media = "media",
        Leave = "leave",
        Duplicate = "duplicate",
        Garbage = "garbage",
        Disconnect = "disconnect",
        Publish = "publish",
        Unpublish = "unpublish",
        Flood = "flood",
        // A frame on a join_ref the client let go of (client.rs `send_stale`).
        Stale = "stale",
        // Publish/unpublish/leave/rejoin churn, also right after an offer (client.rs `burst`).
        Burst = "burst",
        // The media-level `disconnect` on a live channel ("leave call" keeping the page), then
        // `connect` again on the same channel a little later (client.rs `hang_up`).
        Hangup = "hangup",
        // Media events pipelined right behind a `phx_join`, before its reply (not phoenix.js,
        // which buffers them; a client of its own might): the socket holds them for the join.
        Pipeline = "pipeline",
        // More channels on the same socket, up to and past its limit (tabs.rs).
        Tabs = "tabs",
        // Joins the server must refuse, each for its own reason: a bad room name, a topic no
        // route takes, and in worlds with a join secret a missing, forged, expired or
        // other room's token (tabs.rs `trespass`). Drawn after every other knob, so the worlds
        // drawn before it existed kept their shape (and the regression seeds their meaning).
        Trespass = "trespass",
        // The client's own ICE candidates, as a browser trickles them: host candidates and the
        // empty end-of-candidates, with or without a media session (client.rs `trickle`).
        // Drawn after trespass, for the same reason.
        Trickle = "trickle",
    }
}

/// Action weights (absent or 0 = off).
pub type Weights = BTreeMap<Action, u64>;

/// Weights from a list of `(action, weight)`.
pub fn weights(list: &[(Action, u64)]) -> Weights {
    list.iter().copied().filter(|(_, w)| *w > 0).collect()
}

#[derive(Clone, Debug)]
pub struct Swarm {
    pub clients: usize,
    pub rooms: usize,
    /// Share of clients that pile into the first room within the first milliseconds.
    pub burst: bool,
    pub faults: Vec<Fault>,
    /// Mean gap between two faults.
    pub fault_gap_ms: u64,
    pub actions: Weights,
    /// Mean gap between two actions of one client.
    pub action_gap_ms: u64,
    pub max_peers_per_room: usize,
    /// Mailbox and outbound-queue capacity when squeezed (0 = production defaults), so the
    /// overload paths (slow consumer, full room, full channel) run under faults too.
    pub queue_cap: usize,
    /// The first this many clients join but never send `connect` (they hold a slot nobody
    /// sees until the server drops them); the others start a little later. Named scenarios only.
    pub squatters: usize,
    /// The server's room limit, if not the production default. Named scenarios only.
    pub max_rooms: Option<usize>,
    /// The server's idle timeout (a socket with no frame for this long is closed with 1001).
    /// Drawn by the world from its own stream, short enough that worlds reach it.
    pub idle_timeout: Duration,
    /// The server's join secret, when the world has one (drawn by the world from its server
    /// stream): every join must then carry a token, which the clients mint with it.
    pub join_secret: Option<Arc<videoroom::join_token::JoinSecret>>,
    /// Size of each metadata update, serialised, padded up to it (0: unpadded). Drawn by the
    /// world where the per-socket byte budget, not the frame count, is the outbound bound a
    /// slow client meets; at most the server's metadata limit.
    pub metadata_bytes: usize,
    /// The server's per-peer update burst (`Limits::peer_update_burst`, set by the world with
    /// its limits): a client that has sent no more broadcast events (connect, metadata updates)
    /// on a channel than this can have had none dropped for its budget.
    pub update_burst: u32,
    /// Receiving m-lines the server may give one connection: its m-line bound (the world's
    /// `max_mlines`, else the SDP limit) less the lines it keeps for the peer's own tracks.
    pub recv_lines: usize,
    /// The rooms mint each peer's TURN credentials (`server::turn_server`); otherwise they
    /// send none.
    pub turn: bool,
    /// Some clients' downlinks are slow (set by the world with its links).
    pub slow_links: bool,
    /// The workload stream of the client holding this copy (see [`Swarm::for_client`]).
    pub workload: Arc<Mutex<Stream>>,
    /// The world runs a cluster (set by the world; not shown, so single-node traces keep their
    /// digests).
    pub cluster: bool,
    /// Quiet spells (drawn by cluster worlds; not shown, as `cluster`).
    pub hush: Option<Hush>,
}

/// Quiet spells: from `start`, in every period of `every`, no client starts an action for the
/// first `length`. Rooms then sit idle while faults run, so a node that loses its lease must
/// end its rooms on its own at its fence deadline: a room that acts is stopped by its lease
/// check before it acts, which hides a fence that ends nothing behind any client's next message.
#[derive(Clone, Copy, Debug)]
pub struct Hush {
    pub start: time::Instant,
    pub every: Duration,
    pub length: Duration,
}

impl Hush {
    /// Quiet spells of 2.5 to 6 s, one every 4 to 10 s (at least 0.5 s of activity between
    /// two), starting at `start`. Long against the simulation's 4 s lease: signalling in a real
    /// room is idle most of the time.
    pub fn draw(rng: &mut Stream, start: time::Instant) -> Hush {
        let every = Duration::from_millis(4_000 + rng.below(6_000));
        let length =
            Duration::from_millis(2_500 + rng.below(3_500)).min(every - Duration::from_millis(500));
        Hush {
            start,
            every,
            length,
        }
    }

    /// The end of the quiet spell `t` falls in, or `t` itself outside one.
    pub fn after(&self, t: time::Instant) -> time::Instant {
        let into = t.saturating_duration_since(self.start).as_nanos() % self.every.as_nanos();
        let into = Duration::from_nanos(into as u64);
        if t >= self.start && into < self.length {
            t + (self.length - into)
        } else {
            t
        }
    }

    /// Whether `t` falls in a quiet spell.
    pub fn quiet(&self, t: time::Instant) -> bool {
        self.after(t) != t
    }
}

impl Swarm {
    /// Draws a swarm configuration from the world's swarm stream.
    pub fn draw(rng: &mut Stream) -> Swarm {
        // Cluster faults are drawn by the cluster world itself, so a single node's draw is
        // what it always was.
        let faults = Fault::ALL
            .iter()
            .copied()
            .filter(|f| !f.cluster_only() && f.variant_of().is_none())
            .filter(|_| rng.chance(0.5))
            .collect();
        let actions = Action::ALL
            .iter()
            .filter(|a| !matches!(a, Action::Trespass | Action::Trickle))
            .map(|a| {
                let w = match a {
                    // Media events are the bread and butter of a room: usually on, and frequent.
                    Action::Media => rng.below(10),
                    _ if rng.chance(0.5) => 1 + rng.below(3),
                    _ => 0,
                };
                (*a, w)
            })
            .filter(|(_, w)| *w > 0)
            .collect();
        Swarm {
            clients: 2 + rng.below(11) as usize,
            rooms: 1 + rng.below(3) as usize,
            burst: rng.chance(0.5),
            faults,
            fault_gap_ms: 20 + rng.below(400),
            actions,
            action_gap_ms: 20 + rng.below(300),
            max_peers_per_room: 32,
            queue_cap: 0,
            squatters: 0,
            max_rooms: None,
            idle_timeout: videoroom::phoenix::SocketConfig::default().idle_timeout,
            join_secret: None,
            metadata_bytes: 0,
            update_burst: videoroom::app::Limits::default().peer_update_burst,
            recv_lines: recv_lines(None),
            turn: false,
            slow_links: false,
            workload: Arc::default(),
            cluster: false,
            hush: None,
        }
        .squeeze(rng)
        .late_action(rng, Action::Trespass)
        .late_action(rng, Action::Trickle)
    }

    /// An action added after the first draw, drawn after every other knob so that the worlds
    /// drawn before it existed keep their shape where it is off (and the regression seeds their
    /// meaning).
    fn late_action(mut self, rng: &mut Stream, a: Action) -> Swarm {
        if rng.chance(0.5) {
            self.actions.insert(a, 1 + rng.below(3));
        }
        self
    }

    /// Sometimes small rooms, sometimes also queues as small as the server accepts for them.
    fn squeeze(mut self, rng: &mut Stream) -> Swarm {
        if rng.chance(0.2) {
            self.max_peers_per_room = 3;
        }
        if rng.chance(0.2) {
            self.max_peers_per_room = 3;
            let floor = videoroom::app::Limits::for_peers(3).min_queue();
            self.queue_cap = floor + rng.below(8) as usize;
        }
        self
    }

    /// This configuration with client `idx`'s own workload stream.
    pub fn for_client(&self, workload: &Stream, idx: usize) -> Swarm {
        Swarm {
            workload: Arc::new(Mutex::new(workload.fork(idx as u64))),
            ..self.clone()
        }
    }

    fn workload(&self) -> std::sync::MutexGuard<'_, Stream> {
        self.workload.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn action_gap(&self) -> Duration {
        Duration::from_millis(1 + self.workload().below(2 * self.action_gap_ms))
    }

    /// When a client's next action is due, `now` plus a drawn gap, put off past a quiet spell.
    pub fn next_action(&self, now: time::Instant) -> time::Instant {
        let at = now + self.action_gap();
        self.hush.map_or(at, |h| h.after(at))
    }

    pub fn fault_gap(&self, rng: &mut Stream) -> Duration {
        Duration::from_millis(1 + rng.below(2 * self.fault_gap_ms))
    }

    /// The next action of this client, by name (`"none"` when every action is off).
    pub fn pick_action(&self) -> &'static str {
        self.pick().map_or("none", Action::name)
    }

    /// The next action of this client, drawn by weight.
    pub fn pick(&self) -> Option<Action> {
        let total: u64 = self.actions.values().sum();
        if total == 0 {
            return None;
        }
        let mut x = self.workload().below(total);
        for (a, w) in &self.actions {
            if x < *w {
                return Some(*a);
            }
            x -= w;
        }
        None
    }

    pub fn pick_fault(&self, rng: &mut Stream) -> Option<Fault> {
        if self.faults.is_empty() {
            return None;
        }
        let f = self.faults[rng.below(self.faults.len() as u64) as usize];
        // Half the restarts drain first: sockets closed with 1012, as a deploy does.
        if f == Fault::ServerRestart && rng.chance(0.5) {
            return Some(Fault::GracefulRestart);
        }
        Some(f)
    }
}

impl fmt::Display for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        let actions: Vec<String> = self
            .actions
            .iter()
            .filter(|(_, w)| **w > 0)
            .map(|(a, w)| format!("{a}:{w}"))
            .collect();
        write!(
            f,
            "clients={} rooms={} burst={} max_peers={} queue_cap={} faults=[{}] fault_gap={}ms actions=[{}] action_gap={}ms",
            self.clients,
            self.rooms,
            self.burst,
            self.max_peers_per_room,
            self.queue_cap,
            faults.join(","),
            self.fault_gap_ms,
            actions.join(","),
            self.action_gap_ms
        )?;
        // Only when set, so the swarm's own draws print (and digest) as before.
        if self.squatters > 0 {
            write!(f, " squatters={}", self.squatters)?;
        }
        if let Some(n) = self.max_rooms {
            write!(f, " max_rooms={n}")?;
        }
        Ok(())
    }
}

/// Receiving m-lines a connection may be given where the server bounds connections to
/// `max_mlines` m-lines (None: the SDP limit alone).
pub fn recv_lines(max_mlines: Option<usize>) -> usize {
    let sdp = videoroom::engine::sdp::MAX_MLINES;
    max_mlines
        .map_or(sdp, |n| n.min(sdp))
        .saturating_sub(videoroom::engine::NegotiationConfig::default().max_published_tracks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_valid_ones() {
        for a in Action::ALL {
            assert_eq!(a.name().parse::<Action>(), Ok(*a));
        }
        let e = "flod".parse::<Action>().unwrap_err();
        assert!(e.contains("flood") && e.contains("media"), "{e}");
    }

    #[test]
    fn every_weighted_action_can_be_drawn() {
        let s = Swarm {
            actions: weights(&[(Action::Media, 5), (Action::Flood, 1)]),
            ..Swarm::draw(&mut Stream::new(1, "swarm"))
        }
        .for_client(&Stream::new(1, "workload"), 0);
        let drawn: std::collections::BTreeSet<Action> = (0..500).filter_map(|_| s.pick()).collect();
        assert_eq!(drawn, [Action::Media, Action::Flood].into());
    }
}
