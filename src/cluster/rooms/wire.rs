//! What crosses a dist link inside `Send` frames: the two process protocols that span nodes
//! (a joiner's room proxy → the room, the room's channel proxy → the room proxy) and the node
//! service's placement request.
//!
//! Owns only the encoding. It must never carry anything a process on the other node cannot act
//! on without a local lookup (no local addresses, no oneshot senders): a reply is always named
//! by the pid it goes to, and a room by its pid and epoch in the frame's target.

use serde::{Deserialize, Serialize};

/// The pid the node service answers at on every node: no process has pid 0.
pub const NODE_SERVICE: u64 = 0;

/// To a room (the frame's target is the room's pid and epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToRoom {
    /// A channel behind the room proxy `reply` joins as `peer_id`.
    Join { peer_id: String, reply: u64 },
    /// A media event from a joined peer's client.
    Media { peer_id: String, data: String },
}

/// To a room proxy, from the channel proxy that stands for its channel in the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToProxy {
    /// The room took the peer; `channel_proxy` is the pid standing for the channel there.
    Joined { channel_proxy: u64 },
    /// The room refused the peer for `reason` (final, e.g. full).
    Refused { reason: String },
    /// The room stopped with the join queued: try again (a fresh room).
    Lost,
    /// A media event for the client.
    Media { text: String },
    /// The room let the peer go for `reason`.
    Dropped { reason: String },
}

/// Between node services (pid [`NODE_SERVICE`] on both sides).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToNode {
    /// Placement chose this node for room `name`: claim it and start it.
    Start { req: u64, name: String },
    /// The room runs here as `pid` from `epoch`.
    Started { req: u64, pid: u64, epoch: u64 },
    /// Not started here: the name is taken (ask etcd again) or this node cannot take rooms.
    NotStarted { req: u64, reason: String },
}

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).expect("wire messages always serialise")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_survives_the_round_trip() {
        let room = [
            ToRoom::Join {
                peer_id: "p".into(),
                reply: 9,
            },
            ToRoom::Media {
                peer_id: "p".into(),
                data: "{\"type\":\"connect\"}".into(),
            },
        ];
        for m in room {
            assert_eq!(decode::<ToRoom>(&encode(&m)).unwrap(), m);
        }
        let proxy = [
            ToProxy::Joined { channel_proxy: 3 },
            ToProxy::Refused {
                reason: "full".into(),
            },
            ToProxy::Lost,
            ToProxy::Media { text: "x".into() },
            ToProxy::Dropped { reason: "r".into() },
        ];
        for m in proxy {
            assert_eq!(decode::<ToProxy>(&encode(&m)).unwrap(), m);
        }
        let node = [
            ToNode::Start {
                req: 1,
                name: "a".into(),
            },
            ToNode::Started {
                req: 1,
                pid: 2,
                epoch: 3,
            },
            ToNode::NotStarted {
                req: 1,
                reason: "taken".into(),
            },
        ];
        for m in node {
            assert_eq!(decode::<ToNode>(&encode(&m)).unwrap(), m);
        }
    }

    #[test]
    fn a_message_of_one_protocol_is_not_read_as_another() {
        let join = encode(&ToRoom::Join {
            peer_id: "p".into(),
            reply: 1,
        });
        assert!(decode::<ToProxy>(&join).is_err());
        assert!(decode::<ToNode>(&join).is_err());
        assert!(decode::<ToRoom>(b"\xff").is_err());
    }
}
