//! Cluster mode: rooms spread over several nodes, coordinated by etcd (see docs/cluster.md).
//!
//! Owns the coordination with etcd. It never decides anything a single node decides today
//! (who joins a room, what a room does): without `--etcd` none of it runs.

pub mod claims;
pub mod dist;
pub mod etcd;
pub mod lease;
pub mod node;
pub mod rooms;
