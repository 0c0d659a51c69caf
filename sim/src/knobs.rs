//! Per-knob overrides from the command line (`--clients`, `--faults`, `--chaos-ms` ...), applied
//! on top of the seed's swarm draw or a named scenario's fixed configuration. The seed still
//! draws everything else, from streams an override does not consume, so a knob changes that
//! knob only. Overrides are echoed in replay commands and failure files: a failing run replays
//! only with the same knobs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::faults::Fault;
use crate::swarm::{Action, Swarm, Weights};

/// A comma-separated list of faults, or `none`.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultList(pub Vec<Fault>);

impl FromStr for FaultList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(FaultList(Vec::new()));
        }
        s.split(',')
            .map(|f| f.trim().parse())
            .collect::<Result<_, _>>()
            .map(FaultList)
    }
}

impl fmt::Display for FaultList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.0.iter().map(|x| x.name()).collect();
        f.write_str(&names.join(","))
    }
}

/// A comma-separated list of `action` or `action:weight` (weight 1 if left out), or `none`.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionList(pub Weights);

impl FromStr for ActionList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut w = Weights::new();
        if s == "none" {
            return Ok(ActionList(w));
        }
        for item in s.split(',') {
            let (name, weight) = item.trim().split_once(':').unwrap_or((item.trim(), "1"));
            let weight: u64 = weight
                .parse()
                .map_err(|_| format!("action {name:?}: weight {weight:?} is not a number"))?;
            w.insert(name.parse::<Action>()?, weight);
        }
        w.retain(|_, n| *n > 0);
        Ok(ActionList(w))
    }
}

impl fmt::Display for ActionList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let items: Vec<String> = self.0.iter().map(|(a, w)| format!("{a}:{w}")).collect();
        f.write_str(&items.join(","))
    }
}

/// Knobs that override the seed's draw; unset ones keep it.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// Number of clients [default: drawn by the seed].
    #[arg(long, env = "VIDEOROOM_SIM_CLIENTS", value_parser = clap::value_parser!(u64).range(1..=250))]
    pub clients: Option<u64>,
    /// Number of room names [default: drawn by the seed].
    #[arg(long, env = "VIDEOROOM_SIM_ROOMS", value_parser = clap::value_parser!(u64).range(1..=100))]
    pub rooms: Option<u64>,
    /// Faults to inject, comma-separated, or `none` [default: drawn by the seed]. Valid:
    /// room_crash, channel_crash, engine_crash, socket_drop, latency, loss, clog, partition,
    /// server_restart; with `--scenario cluster` also node_split, etcd_cut, node_pause,
    /// etcd_restart.
    #[arg(long, env = "VIDEOROOM_SIM_FAULTS")]
    pub faults: Option<FaultList>,
    /// Client actions as `name[:weight]`, comma-separated, or `none` [default: drawn by the
    /// seed]. Valid: media, leave, duplicate, garbage, disconnect, publish, unpublish, flood,
    /// stale, burst, hangup, pipeline, tabs.
    #[arg(long, env = "VIDEOROOM_SIM_ACTIONS")]
    pub actions: Option<ActionList>,
    /// Peers per room the server allows [default: drawn by the seed].
    #[arg(long, env = "VIDEOROOM_SIM_MAX_PEERS")]
    pub max_peers: Option<usize>,
    /// Mailbox and outbound-queue capacity, 0 for the production defaults [default: drawn].
    #[arg(long, env = "VIDEOROOM_SIM_QUEUE_CAP")]
    pub queue_cap: Option<usize>,
    /// Length of the chaos phase in simulated ms [default: the scenario's, 3000 for swarm].
    #[arg(long, env = "VIDEOROOM_SIM_CHAOS_MS")]
    pub chaos_ms: Option<u64>,
    /// Mean gap between two faults in ms [default: drawn by the seed].
    #[arg(long, env = "VIDEOROOM_SIM_FAULT_GAP_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub fault_gap_ms: Option<u64>,
    /// Mean gap between two actions of one client in ms [default: drawn by the seed].
    #[arg(long, env = "VIDEOROOM_SIM_ACTION_GAP_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub action_gap_ms: Option<u64>,
    /// Whether half the clients pile into the first room at once [default: drawn by the seed].
    #[arg(long, env = "VIDEOROOM_SIM_BURST")]
    pub burst: Option<bool>,
    /// Whether the rooms' fake media planes report voice activity [default: drawn by the seed].
    #[arg(long, env = "VIDEOROOM_SIM_VOICES")]
    pub voices: Option<bool>,
    /// M-lines one connection may be given, its own eight included [default: drawn by the
    /// seed, mostly the server's default].
    #[arg(long, env = "VIDEOROOM_SIM_MAX_MLINES", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_mlines: Option<u64>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }

    /// Sets the overridden knobs on `swarm` and the chaos length.
    pub fn apply(&self, swarm: &mut Swarm, chaos: &mut Duration) {
        if let Some(n) = self.clients {
            swarm.clients = n as usize;
        }
        if let Some(n) = self.rooms {
            swarm.rooms = n as usize;
        }
        if let Some(f) = &self.faults {
            swarm.faults = f.0.clone();
        }
        if let Some(a) = &self.actions {
            swarm.actions = a.0.clone();
        }
        if let Some(n) = self.max_peers {
            swarm.max_peers_per_room = n;
        }
        if let Some(n) = self.queue_cap {
            swarm.queue_cap = n;
        }
        if let Some(ms) = self.chaos_ms {
            *chaos = Duration::from_millis(ms);
        }
        if let Some(ms) = self.fault_gap_ms {
            swarm.fault_gap_ms = ms;
        }
        if let Some(ms) = self.action_gap_ms {
            swarm.action_gap_ms = ms;
        }
        if let Some(b) = self.burst {
            swarm.burst = b;
        }
    }

    /// The command-line flags that set these overrides (for replay commands).
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let mut push = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                a.push(format!("--{flag}"));
                a.push(v);
            }
        };
        push("clients", self.clients.map(|v| v.to_string()));
        push("rooms", self.rooms.map(|v| v.to_string()));
        push("faults", self.faults.as_ref().map(|v| v.to_string()));
        push("actions", self.actions.as_ref().map(|v| v.to_string()));
        push("max-peers", self.max_peers.map(|v| v.to_string()));
        push("queue-cap", self.queue_cap.map(|v| v.to_string()));
        push("chaos-ms", self.chaos_ms.map(|v| v.to_string()));
        push("fault-gap-ms", self.fault_gap_ms.map(|v| v.to_string()));
        push("action-gap-ms", self.action_gap_ms.map(|v| v.to_string()));
        push("burst", self.burst.map(|v| v.to_string()));
        push("voices", self.voices.map(|v| v.to_string()));
        push("max-mlines", self.max_mlines.map(|v| v.to_string()));
        a
    }

    /// A configuration the server refuses (checked before any world runs). Without a
    /// `--max-peers`, a `--queue-cap` must suit the largest room any scenario uses.
    pub fn validate(&self) -> Result<(), String> {
        let peers = self.max_peers.unwrap_or(64);
        if peers == 0 {
            return Err("--max-peers must be at least 1".into());
        }
        if let Some(cap) = self.queue_cap.filter(|c| *c > 0) {
            let floor = videoroom::app::Limits::for_peers(peers).min_queue();
            if cap < floor {
                return Err(format!(
                    "--queue-cap {cap} is below the server's floor of {floor} for rooms of {peers} peers"
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_args().join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_round_trip_and_reject_unknown_names() {
        let f: FaultList = "room_crash,loss".parse().unwrap();
        assert_eq!(f.0, vec![Fault::RoomCrash, Fault::Loss]);
        assert_eq!(f.to_string(), "room_crash,loss");
        let e = "room_crash,meteor".parse::<FaultList>().unwrap_err();
        assert!(e.contains("meteor") && e.contains("server_restart"), "{e}");
        let a: ActionList = "media:5,flood".parse().unwrap();
        assert_eq!(a.to_string(), "media:5,flood:1");
        assert!("dance".parse::<ActionList>().is_err());
        assert_eq!("none".parse::<FaultList>().unwrap().0, vec![]);
    }

    #[test]
    fn overrides_echo_as_flags() {
        let o = Overrides {
            clients: Some(4),
            faults: Some("loss".parse().unwrap()),
            chaos_ms: Some(500),
            ..Overrides::default()
        };
        assert_eq!(o.to_string(), "--clients 4 --faults loss --chaos-ms 500");
        assert!(Overrides::default().is_empty());
    }
}
