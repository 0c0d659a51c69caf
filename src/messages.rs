//! The messages the processes of a room exchange: what a room, a peer channel and a socket
//! process each accept. They live apart from the actors so that `app`, `conn`, `channel` and
//! `room` depend on these types, not on each other's bodies (the actors import downwards only:
//! conn -> channel -> room -> app).
//!
//! Owns no behaviour: plain data, and never an import of an actor module.

use serde_json::Value;
use tokio::sync::oneshot;

use crate::engine::PlaneEvent;
use crate::phoenix::ChannelEvent;
use crate::rt::{Addr, Pid};
use crate::shared_text::SharedText;

/// What a room reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomInfo {
    /// (peer id, channel pid), in peer-id order.
    pub peers: Vec<(String, Pid)>,
    /// Peers the media session counts as connected endpoints, in join order.
    pub endpoints: Vec<String>,
    /// Each endpoint's current metadata (what every other peer must end up seeing), in join
    /// order.
    pub metadata: Vec<(String, serde_json::Value)>,
    /// Peers the negotiation core holds state for: exactly the endpoints, or state leaks.
    pub negotiation_peers: usize,
    /// Each endpoint's published tracks with their current metadata: (endpoint, track id,
    /// metadata), what every subscriber must end up holding.
    pub tracks: Vec<(String, String, serde_json::Value)>,
    /// (subscriber, track): video its plane forwards with no keyframe since it started (see
    /// `MediaPlane::keyframe_waits`; always empty with a real plane).
    pub keyframe_waits: Vec<(String, String)>,
}

/// What a room accepts.
#[derive(Debug)]
pub enum RoomMsg {
    /// A channel joins as `peer_id`; answered once the room has taken it (or refused it).
    AddPeerChannel {
        peer_id: String,
        channel: Addr<ChannelMsg>,
        ack: oneshot::Sender<Result<(), String>>,
    },
    /// A media event from a peer's client (a JSON string).
    MediaEvent { peer_id: String, data: String },
    /// The peers, as (peer id, channel pid).
    Peers(oneshot::Sender<Vec<(String, Pid)>>),
    /// The room's state as observers see it (diagnostics and oracles).
    Info(oneshot::Sender<RoomInfo>),
    /// A report of the room's media plane.
    Plane(PlaneEvent),
}

/// What a channel accepts.
#[derive(Debug)]
pub enum ChannelMsg {
    /// An event from the client on this topic.
    FromClient {
        event: String,
        msg_ref: Option<String>,
        payload: Value,
    },
    /// A media event from the room, to push to the client (shared by a broadcast's peers).
    MediaEvent(SharedText),
    /// The socket stopped this channel (leave, duplicate join, socket closed).
    Stop,
    /// The room let go of this peer for `reason`; the client is told, then the channel closes.
    Dropped(String),
}

/// What a socket process accepts from its channels.
#[derive(Debug)]
pub enum ConnMsg {
    Channel(ChannelEvent),
}
