//! Distribution between nodes, after Erlang's: one link (one TCP connection) per node pair,
//! over which a process on one node sends to and monitors processes on the other.
//!
//! Owns the link: its wire format ([`frame`]) and its sans-IO state machine ([`link`]):
//! handshake, liveness, bounded output, FIFO delivery and the monitor tables with their
//! exactly-one-DOWN promise; and the I/O ([`driver`]): the listener, dialing with the rule that
//! keeps one link per node pair, and one task per link that feeds the core bytes and time.
//! `frame` and `link` must never do I/O (no sockets, tasks or clock reads). None of it decides
//! anything about processes: whether a pid is alive, which epoch a room is at and where a
//! delivered message goes belong to whoever consumes a link's events.

pub mod driver;
pub mod frame;
pub mod link;
#[cfg(test)]
mod tests;

pub use driver::{ConnectError, DistListener, DistNode, Link, LinkHandle};
pub use frame::{Decoder, DownReason, Frame, FrameError, RemoteRef};
pub use link::{DownCause, Event, LinkConfig, LinkCore, LinkDown, NodeId, SendError};
