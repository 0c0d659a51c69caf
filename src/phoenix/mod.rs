//! Phoenix Channels V2: frame codec and the sans-IO socket core.
//!
//! This module owns the wire side of one WebSocket connection as the unmodified npm `phoenix`
//! client sees it: decoding and encoding V2 JSON text frames ([`frame`]), and the per-connection
//! multiplexer ([`socket`]) that answers heartbeats, routes joins to channels, enforces the join
//! reference rules (stale leaves and events are dropped), limits channels and frame sizes, and
//! closes idle connections.
//!
//! It must never do I/O of any kind: no clock reads (time comes in as `Instant` arguments), no
//! spawning, no sockets, no async. The driver feeds it inputs (`handle_*`) and executes what
//! [`SocketCore::poll_output`] hands back; channel actors live outside and talk to the core only
//! through [`ChannelEvent`]s. Client input must never make it panic. Everything that can reach an
//! output is iterated in a deterministic order, because the same code runs inside a deterministic
//! simulation.

pub mod frame;
pub mod socket;

pub use frame::{decode, DecodeError, Frame};
pub use socket::{
    ChanId, ChannelEvent, Output, SocketConfig, SocketCore, StopReason, CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR, CLOSE_POLICY_VIOLATION, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED_DATA,
    MAX_HELD_FRAMES,
};
