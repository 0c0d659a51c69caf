//! Swarm testing: each seed switches workload actions and faults on or off and picks their
//! rates, so rare combinations are not drowned by frequent ones. The choice is printed with
//! every run and is part of its trace.

use std::fmt;
use std::time::Duration;

use videoroom::rt;

/// Faults the injector can apply.
pub const FAULTS: &[&str] = &[
    "room_crash",
    "channel_crash",
    "engine_crash",
    "socket_drop",
    "latency",
    "loss",
    "clog",
    "partition",
    "server_restart",
];

/// Client actions.
pub const ACTIONS: &[&str] = &[
    "media",
    "leave",
    "duplicate",
    "garbage",
    "disconnect",
    "publish",
    "unpublish",
    "flood",
    // A frame on a join_ref the client let go of (client.rs `send_stale`).
    "stale",
    // Publish/unpublish/leave/rejoin churn, also right after an offer (client.rs `burst`).
    "burst",
];

#[derive(Clone, Debug)]
pub struct Swarm {
    pub clients: usize,
    pub rooms: usize,
    /// Share of clients that pile into the first room within the first milliseconds.
    pub burst: bool,
    pub faults: Vec<&'static str>,
    /// Mean gap between two faults.
    pub fault_gap_ms: u64,
    /// Action weights, in `ACTIONS` order (0 = off).
    pub action_weights: Vec<u64>,
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
}

impl Swarm {
    /// Draws a swarm configuration from the seed's RNG (call first thing in the world).
    pub fn draw() -> Swarm {
        let faults = FAULTS
            .iter()
            .copied()
            .filter(|_| rt::rand::chance(0.5))
            .collect();
        let action_weights = ACTIONS
            .iter()
            .map(|a| match *a {
                // Media events are the bread and butter of a room: usually on, and frequent.
                "media" => rt::rand::below(10),
                _ if rt::rand::chance(0.5) => 1 + rt::rand::below(3),
                _ => 0,
            })
            .collect();
        Swarm {
            clients: 2 + rt::rand::below(11) as usize,
            rooms: 1 + rt::rand::below(3) as usize,
            burst: rt::rand::chance(0.5),
            faults,
            fault_gap_ms: 20 + rt::rand::below(400),
            action_weights,
            action_gap_ms: 20 + rt::rand::below(300),
            max_peers_per_room: 32,
            queue_cap: 0,
            squatters: 0,
            max_rooms: None,
        }
        .squeeze()
    }

    /// Sometimes small rooms, sometimes also queues as small as the server accepts for them.
    fn squeeze(mut self) -> Swarm {
        if rt::rand::chance(0.2) {
            self.max_peers_per_room = 3;
        }
        if rt::rand::chance(0.2) {
            self.max_peers_per_room = 3;
            let floor = videoroom::app::Limits::for_peers(3).min_queue();
            self.queue_cap = floor + rt::rand::below(8) as usize;
        }
        self
    }

    pub fn action_gap(&self) -> Duration {
        Duration::from_millis(1 + rt::rand::below(2 * self.action_gap_ms))
    }

    pub fn fault_gap(&self) -> Duration {
        Duration::from_millis(1 + rt::rand::below(2 * self.fault_gap_ms))
    }

    pub fn pick_action(&self) -> &'static str {
        let total: u64 = self.action_weights.iter().sum();
        if total == 0 {
            return "none";
        }
        let mut x = rt::rand::below(total);
        for (a, w) in ACTIONS.iter().zip(&self.action_weights) {
            if x < *w {
                return a;
            }
            x -= w;
        }
        "none"
    }

    pub fn pick_fault(&self) -> Option<&'static str> {
        if self.faults.is_empty() {
            return None;
        }
        Some(self.faults[rt::rand::below(self.faults.len() as u64) as usize])
    }
}

impl fmt::Display for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actions: Vec<String> = ACTIONS
            .iter()
            .zip(&self.action_weights)
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
            self.faults.join(","),
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
