//! The application's shared state: the process table, the room registry and the limits.
//! Built once per server (or per simulated node) and cloned into every actor.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::engine::{NegotiationConfig, PlaneFactory, SessionConfig};
use crate::phoenix::SocketConfig;
use crate::registry::Registry;
use crate::room::RoomMsg;
use crate::rt::{Pid, System};

/// Every bound the server enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_peers_per_room: usize,
    pub max_room_name_bytes: usize,
    /// The Phoenix socket's own limits (channels per socket, frame size, idle timeout).
    pub socket: SocketConfig,
    pub room_mailbox: usize,
    pub channel_mailbox: usize,
    pub socket_mailbox: usize,
    /// Frames queued for one WebSocket before its client counts as too slow and is dropped.
    pub outbound_frames: usize,
    /// How long a room with no peers waits for one before it stops.
    pub empty_room_linger: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_peers_per_room: 32,
            max_room_name_bytes: 64,
            socket: SocketConfig::default(),
            room_mailbox: 1024,
            channel_mailbox: 256,
            socket_mailbox: 1024,
            outbound_frames: 1024,
            empty_room_linger: std::time::Duration::from_secs(30),
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
}

impl App {
    pub fn new(limits: Limits) -> Self {
        let sys = System::new();
        App {
            rooms: Registry::new(&sys),
            sys,
            limits: Arc::new(limits),
            negotiation: Arc::new(NegotiationConfig::default()),
            // No network-capable plane is linked in yet; the fake one keeps signalling complete.
            plane_factory: PlaneFactory::fake(),
        }
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
    pub async fn room_info(&self, room: &str) -> Option<crate::room::RoomInfo> {
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
