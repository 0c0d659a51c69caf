//! Distribution between nodes, after Erlang's: one link (one TCP connection) per node pair,
//! over which a process on one node sends to and monitors processes on the other.
//!
//! Owns the sans-IO core of a link: the wire format ([`frame`]) and the link's state machine
//! ([`link`]): handshake, liveness, bounded output, FIFO delivery and the monitor tables with
//! their exactly-one-DOWN promise. It must never do I/O (no sockets, tasks or clock reads) and
//! never decide anything about processes: whether a pid is alive, which epoch a room is at and
//! where a delivered message goes belong to the driver that owns the connection and the
//! process table.

pub mod frame;
pub mod link;
#[cfg(test)]
mod tests;

pub use frame::{Decoder, DownReason, Frame, FrameError, RemoteRef};
pub use link::{DownCause, Event, LinkConfig, LinkCore, LinkDown, NodeId, SendError};
