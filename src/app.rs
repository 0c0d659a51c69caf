//! The application's shared state: the process table, the room registry and the limits.
//! Built once per server (or per simulated node) and cloned into every actor.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use tokio::sync::oneshot;

use crate::engine::{NegotiationConfig, PlaneFactory, SessionConfig};
use crate::join_token::JoinSecret;
use crate::messages::{RoomInfo, RoomMsg};
use crate::metrics::Metrics;
use crate::phoenix::SocketConfig;
use crate::registry::{JoinError, Registry};
use crate::rt::{Addr, Pid, System};

/// Every bound the server enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_peers_per_room: usize,
    /// Rooms running at once on this node; a join that would start one more is refused.
    pub max_rooms: usize,
    /// How long a joined channel may stay without a media `connect` before the room drops it
    /// (it holds a slot that nobody in the room can see).
    pub connect_grace: std::time::Duration,
    pub max_room_name_bytes: usize,
    /// The Phoenix socket's own limits (channels per socket, frame size, idle timeout).
    pub socket: SocketConfig,
    pub room_mailbox: usize,
    pub channel_mailbox: usize,
    pub socket_mailbox: usize,
    /// Frames queued for one WebSocket before its client counts as too slow and is dropped.
    pub outbound_frames: usize,
    /// Bytes of frames queued for one WebSocket (not yet written) before its client counts as
    /// too slow and is dropped: a frame count alone let a client that never reads hold
    /// megabyte `connected` frames by the thousand.
    pub outbound_bytes: usize,
    /// How long a room with no peers waits for one before it stops.
    pub empty_room_linger: std::time::Duration,
    /// `connect`s and metadata updates one peer may make (each is copied to every other peer):
    /// a burst, then a rate per second; the rest are dropped.
    pub peer_update_burst: u32,
    pub peer_updates_per_sec: u32,
}

impl Limits {
    /// The defaults, for rooms of up to `max_peers` peers (queues grow with the room size).
    pub fn for_peers(max_peers: usize) -> Limits {
        let d = Limits::default();
        let max_peers = max_peers.max(1);
        let floor = Limits {
            max_peers_per_room: max_peers,
            ..d.clone()
        }
        .min_queue();
        Limits {
            max_peers_per_room: max_peers,
            room_mailbox: d.room_mailbox.max(floor),
            channel_mailbox: d.channel_mailbox.max(floor),
            socket_mailbox: d.socket_mailbox.max(floor),
            outbound_frames: d.outbound_frames.max(floor),
            outbound_bytes: d.outbound_bytes.max(Limits::min_outbound_bytes(max_peers)),
            ..d
        }
    }

    /// The most a room of `peers` peers may queue for one client at once, with headroom: a
    /// joiner's `connected` lists every other peer with its metadata and its tracks' (bounded
    /// by the session's and the negotiation's metadata limits: under 10 KiB a peer), then a
    /// `tracksAdded` per publisher (under 5 KiB) and an `offerData`.
    pub fn min_outbound_bytes(peers: usize) -> usize {
        peers * 24 * 1024 + 64 * 1024
    }

    /// The largest burst of messages a room may put on one queue at once, with headroom: a
    /// joiner gets `connected`, one `tracksAdded` per publishing peer and an `offerData` in one
    /// go, and every peer of a full room may speak at the same moment. A queue smaller than
    /// this makes a healthy client look slow: it is dropped, rejoins, and is dropped again.
    pub fn min_queue(&self) -> usize {
        4 * self.max_peers_per_room + 16
    }

    /// Checks the limits are coherent; the error says which one to raise.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_peers_per_room == 0 {
            return Err("max_peers_per_room must be at least 1".into());
        }
        if self.max_rooms == 0 {
            return Err("max_rooms must be at least 1".into());
        }
        if self.connect_grace.is_zero() {
            return Err("connect_grace must be longer than zero".into());
        }
        let min = self.min_queue();
        for (name, v) in [
            ("room_mailbox", self.room_mailbox),
            ("channel_mailbox", self.channel_mailbox),
            ("socket_mailbox", self.socket_mailbox),
            ("outbound_frames", self.outbound_frames),
        ] {
            if v < min {
                return Err(format!(
                    "{name} = {v} is below {min}, the largest burst a room of {} peers sends at once; raise it or lower max_peers_per_room",
                    self.max_peers_per_room
                ));
            }
        }
        let min_bytes = Limits::min_outbound_bytes(self.max_peers_per_room);
        if self.outbound_bytes < min_bytes {
            return Err(format!(
                "outbound_bytes = {} is below {min_bytes}, what a room of {} peers may queue for one client at once; raise it or lower max_peers_per_room",
                self.outbound_bytes, self.max_peers_per_room
            ));
        }
        if self.socket.max_channels == 0 {
            return Err("max_channels (per socket) must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Limits;

    #[test]
    fn defaults_and_scaled_limits_are_coherent() {
        assert_eq!(Limits::default().validate(), Ok(()));
        for n in [1, 2, 32, 100, 1000] {
            assert_eq!(Limits::for_peers(n).validate(), Ok(()), "{n} peers");
        }
    }

    #[test]
    fn a_queue_smaller_than_one_burst_is_refused_with_its_name() {
        let l = Limits {
            channel_mailbox: 8,
            ..Limits::default()
        };
        let e = l.validate().unwrap_err();
        assert!(e.starts_with("channel_mailbox = 8 is below 144"), "{e}");
        let none = Limits {
            max_peers_per_room: 0,
            ..Limits::default()
        };
        assert!(none.validate().is_err());
        let no_rooms = Limits {
            max_rooms: 0,
            ..Limits::default()
        };
        assert_eq!(
            no_rooms.validate(),
            Err("max_rooms must be at least 1".into())
        );
        let no_grace = Limits {
            connect_grace: std::time::Duration::ZERO,
            ..Limits::default()
        };
        assert!(no_grace.validate().is_err());
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_peers_per_room: 32,
            max_rooms: 1000,
            connect_grace: std::time::Duration::from_secs(10),
            max_room_name_bytes: 64,
            socket: SocketConfig::default(),
            room_mailbox: 1024,
            channel_mailbox: 256,
            socket_mailbox: 1024,
            outbound_frames: 1024,
            outbound_bytes: 1024 * 1024,
            empty_room_linger: std::time::Duration::from_secs(30),
            peer_update_burst: 20,
            peer_updates_per_sec: 5,
        }
    }
}

/// Cheap to clone; clones share everything.
#[derive(Clone, Debug)]
pub struct App {
    pub sys: System,
    pub rooms: Registry<RoomMsg>,
    pub limits: Arc<Limits>,
    /// TURN servers and track limits for every room's negotiation core.
    pub negotiation: Arc<NegotiationConfig>,
    /// Builds each room's media plane.
    pub plane_factory: PlaneFactory,
    /// With a secret, every join needs a token signed with it (`crate::join_token`).
    pub join_secret: Option<Arc<JoinSecret>>,
    /// Operational counters (`GET /metrics`).
    pub metrics: Arc<Metrics>,
    /// Set once in cluster mode: joins then go through the cluster-wide registry, and `rooms`
    /// holds only the rooms this node runs.
    pub cluster: Arc<OnceLock<Arc<dyn ClusterRooms>>>,
}

/// A future a [`ClusterRooms`] call returns.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The cluster-wide room registry as the channel and the room use it (implemented in
/// `cluster::rooms`; a trait so that `app` does not import the cluster, which starts rooms).
pub trait ClusterRooms: Send + Sync + fmt::Debug {
    /// The tutorial's join across nodes: an address of the room `name` (a local room, or a
    /// proxy for a remote one), starting it if none runs.
    fn whereis_or_start<'a>(
        &'a self,
        name: &'a str,
    ) -> Pending<'a, Result<Addr<RoomMsg>, JoinError>>;

    /// Whether the room process `room` may act now: it holds a claim of this node, on the lease
    /// the node holds now, before that lease's fence deadline. Asked by the room before it
    /// handles anything, so a room of a node that was frozen past its lease ends on waking
    /// instead of serving a name etcd may have given to another node.
    fn room_may_act(&self, room: Pid) -> bool;

    /// The node's standing in the cluster, for `/healthz` and `/metrics`.
    fn health(&self) -> ClusterHealth;

    /// The lease the node acts under and its fence deadline, while it may act
    /// ([`crate::cluster::node::Node::fence_deadline`]): the simulation holds it to etcd's own
    /// expiry of the lease.
    fn fence_deadline(&self) -> Option<(i64, crate::rt::time::Instant)>;
}

/// What an operator (or a load balancer's health check) needs to know about a cluster node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterHealth {
    /// Registered, with its lease before the fence deadline: it starts and serves rooms.
    pub acting: bool,
    /// Shutting down (SIGTERM): no new rooms.
    pub draining: bool,
    /// Rooms this node owns.
    pub rooms: usize,
    /// Nodes in the placement list as last read from etcd (this one included).
    pub known_nodes: usize,
}

impl App {
    pub fn new(limits: Limits) -> Self {
        let sys = System::new();
        App {
            rooms: Registry::bounded(&sys, limits.max_rooms),
            sys,
            limits: Arc::new(limits),
            negotiation: Arc::new(NegotiationConfig::default()),
            // No network-capable plane is linked in yet; the fake one keeps signalling complete.
            plane_factory: PlaneFactory::fake(),
            join_secret: None,
            metrics: Arc::new(Metrics::default()),
            cluster: Arc::new(OnceLock::new()),
        }
    }

    /// Requires a join token signed with `secret` for every join from now on.
    pub fn with_join_secret(mut self, secret: Option<JoinSecret>) -> Self {
        self.join_secret = secret.map(Arc::new);
        self
    }

    /// Replaces the media configuration; rooms started afterwards use it.
    pub fn with_media(
        mut self,
        negotiation: NegotiationConfig,
        plane_factory: PlaneFactory,
    ) -> Self {
        self.negotiation = Arc::new(negotiation);
        self.plane_factory = plane_factory;
        self
    }

    pub(crate) fn session_config(&self) -> SessionConfig {
        SessionConfig {
            max_endpoints: self.limits.max_peers_per_room,
            update_burst: self.limits.peer_update_burst,
            updates_per_sec: self.limits.peer_updates_per_sec,
            ..SessionConfig::default()
        }
    }

    /// The pid of the room named `room` (without the `room:` prefix), if it runs.
    pub fn room_pid(&self, room: &str) -> Option<Pid> {
        self.rooms.whereis(room).map(|a| a.pid())
    }

    /// Crashes the room named `room` (an operator action and a test hook).
    pub fn kill_room(&self, room: &str) -> Option<Pid> {
        let pid = self.room_pid(room)?;
        self.sys.kill(pid).then_some(pid)
    }

    /// Kills any process, e.g. one peer's channel.
    pub fn kill_process(&self, pid: Pid) -> bool {
        self.sys.kill(pid)
    }

    /// A room's peers and media endpoints; `None` if no such room runs.
    pub async fn room_info(&self, room: &str) -> Option<RoomInfo> {
        let addr = self.rooms.whereis(room)?;
        let (tx, rx) = oneshot::channel();
        addr.try_send(RoomMsg::Info(tx)).ok()?;
        rx.await.ok()
    }

    /// The peers of a room: (peer id, channel pid), in peer-id order.
    pub async fn room_peers(&self, room: &str) -> Vec<(String, Pid)> {
        let Some(addr) = self.rooms.whereis(room) else {
            return Vec::new();
        };
        let (tx, rx) = oneshot::channel();
        if addr.try_send(RoomMsg::Peers(tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}
