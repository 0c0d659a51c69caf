//! The cluster-wide room name table as etcd transactions: the keys, the claim that decides
//! `AlreadyStarted`, the release that never removes a newer owner, and reading their answers.
//!
//! Pure functions over the gateway bodies (docs/cluster.md, "Rooms cluster-wide"): it never
//! does I/O, never retries, and never decides what a failed call means for the node (the caller
//! owns that: an unknown outcome is read back with [`read_back`]).

use serde::{Deserialize, Serialize};

use super::etcd::gateway::{
    Compare, CompareResult, DeleteRangeRequest, KeyValue, PutRequest, RangeRequest, RangeResponse,
    RequestOp, ResponseOp, TxnRequest, TxnResponse,
};

/// The deployment's key layout under one prefix (default [`Keys::DEFAULT_PREFIX`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub const DEFAULT_PREFIX: &'static str = "/videoroom/v1/";

    /// `prefix` must end with `/` so one deployment's keys never share a prefix with another's.
    pub fn new(prefix: &str) -> Result<Self, String> {
        if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() < 2 {
            return Err(format!(
                "an etcd key prefix starts and ends with '/', not {prefix:?}"
            ));
        }
        Ok(Keys {
            prefix: prefix.to_owned(),
        })
    }

    /// Holds the node's lease id while the lease lives: the claim's proof of life.
    pub fn alive(&self, node_id: &str) -> Vec<u8> {
        format!("{}alive/{node_id}", self.prefix).into_bytes()
    }

    /// The node's published record (addresses, load).
    pub fn node(&self, node_id: &str) -> Vec<u8> {
        format!("{}nodes/{node_id}", self.prefix).into_bytes()
    }

    pub fn nodes_prefix(&self) -> Vec<u8> {
        format!("{}nodes/", self.prefix).into_bytes()
    }

    pub fn room(&self, name: &str) -> Vec<u8> {
        format!("{}rooms/{name}", self.prefix).into_bytes()
    }

    pub fn rooms_prefix(&self) -> Vec<u8> {
        format!("{}rooms/", self.prefix).into_bytes()
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            prefix: Self::DEFAULT_PREFIX.to_owned(),
        }
    }
}

/// The value of `rooms/<name>`: who owns the room and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    pub node_id: String,
    pub dist_addr: String,
    /// Unique per claim attempt of the owner node: makes the value this claim's own, so a
    /// release or a read-back matches this claim and no other. The cluster registry uses the
    /// room process's pid (allocated before the claim, started only if it wins), so the record
    /// also tells a joiner where to send: pids are never reused within an incarnation.
    pub token: u64,
    /// The owner's incarnation when it claimed: a joiner dials the owner's dist link expecting
    /// exactly this incarnation, so a record left by a node that has since restarted never
    /// reaches the new process's rooms. 0 in records written before it existed.
    #[serde(default)]
    pub incarnation: u64,
}

impl RoomRecord {
    pub fn to_value(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a RoomRecord always serialises")
    }

    pub fn from_value(v: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(v)
            .map_err(|e| format!("a rooms/ value that is not a RoomRecord: {e}"))
    }
}

/// A room owner as a joiner sees it; `epoch` is the claim's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub record: RoomRecord,
    pub epoch: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This node owns the room from `epoch` on.
    Won { epoch: i64 },
    /// Another claim holds the name (possibly an older one of this very node).
    Taken(Owner),
    /// The node's `alive/` key does not hold its lease: the lease is gone; the node is fenced.
    Fenced,
}

/// `lease_hex` is how the lease id is written in `alive/<node_id>` ([`lease_hex`]).
pub fn claim_txn(
    keys: &Keys,
    node_id: &str,
    lease: i64,
    name: &str,
    record: &RoomRecord,
) -> TxnRequest {
    let room = keys.room(name);
    let inner = TxnRequest {
        // A VALUE compare on a missing key is false in etcd, so "holds any value" is `> ""`.
        compare: vec![Compare::value(&room, CompareResult::Greater, b"")],
        success: vec![RequestOp::RequestRange(RangeRequest {
            key: room.clone(),
            ..Default::default()
        })],
        failure: vec![RequestOp::RequestPut(PutRequest {
            key: room,
            value: record.to_value(),
            lease,
        })],
    };
    TxnRequest {
        // The outer guard proves the lease alive before the put names it: a put on a dead lease
        // is an error that would hide which branch ran.
        compare: vec![Compare::value(
            &keys.alive(node_id),
            CompareResult::Equal,
            lease_hex(lease).as_bytes(),
        )],
        success: vec![RequestOp::RequestTxn(inner)],
        failure: vec![],
    }
}

pub fn claim_outcome(resp: &TxnResponse) -> Result<ClaimOutcome, String> {
    if !resp.succeeded {
        return Ok(ClaimOutcome::Fenced);
    }
    let Some(ResponseOp::ResponseTxn(inner)) = resp.responses.first() else {
        return Err(format!("a claim answered without its inner txn: {resp:?}"));
    };
    if !inner.succeeded {
        // The put ran: this txn's revision is the key's create_revision.
        return Ok(ClaimOutcome::Won {
            epoch: resp.header.revision,
        });
    }
    match inner.responses.first() {
        Some(ResponseOp::ResponseRange(r)) => match r.kvs.first() {
            Some(kv) => Ok(ClaimOutcome::Taken(owner_of(kv)?)),
            None => Err("a claim found the room held but read no key".into()),
        },
        other => Err(format!("a claim's inner txn answered {other:?}")),
    }
}

/// The request that reads one room's owner.
pub fn whereis_request(keys: &Keys, name: &str) -> RangeRequest {
    RangeRequest {
        key: keys.room(name),
        ..Default::default()
    }
}

pub fn whereis_outcome(resp: &RangeResponse) -> Result<Option<Owner>, String> {
    resp.kvs.first().map(owner_of).transpose()
}

/// After a claim whose answer was lost: did that very claim land? `Ok(Some(epoch))` if the key
/// holds `mine`; otherwise the owner read is what a fresh `whereis` would give.
pub fn read_back(
    resp: &RangeResponse,
    mine: &RoomRecord,
) -> Result<Result<i64, Option<Owner>>, String> {
    match whereis_outcome(resp)? {
        Some(owner) if &owner.record == mine => Ok(Ok(owner.epoch)),
        other => Ok(Err(other)),
    }
}

/// Deletes `rooms/<name>` only while it holds this claim's value: a late release never removes a
/// newer owner. Succeeded = released; not succeeded = it was already gone or someone else's.
pub fn release_txn(keys: &Keys, name: &str, mine: &RoomRecord) -> TxnRequest {
    let room = keys.room(name);
    TxnRequest {
        compare: vec![Compare::value(
            &room,
            CompareResult::Equal,
            &mine.to_value(),
        )],
        success: vec![RequestOp::RequestDeleteRange(DeleteRangeRequest {
            key: room,
            ..Default::default()
        })],
        failure: vec![],
    }
}

/// How `alive/<node_id>` spells the lease id.
pub fn lease_hex(lease: i64) -> String {
    format!("{lease:x}")
}

fn owner_of(kv: &KeyValue) -> Result<Owner, String> {
    Ok(Owner {
        record: RoomRecord::from_value(&kv.value)?,
        epoch: kv.create_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::etcd::gateway::{RangeResponse, ResponseHeader};

    fn rec(node: &str, token: u64) -> RoomRecord {
        RoomRecord {
            node_id: node.into(),
            dist_addr: "10.0.0.1:7000".into(),
            token,
            incarnation: 7,
        }
    }

    #[test]
    fn keys_live_under_the_prefix() {
        let k = Keys::default();
        assert_eq!(k.room("x"), b"/videoroom/v1/rooms/x");
        assert_eq!(k.alive("n1.7"), b"/videoroom/v1/alive/n1.7");
        assert!(Keys::new("videoroom").is_err());
        assert!(Keys::new("/a").is_err());
        assert_eq!(Keys::new("/a/").unwrap().nodes_prefix(), b"/a/nodes/");
    }

    #[test]
    fn the_claim_is_guarded_by_the_lease_then_by_the_name() {
        let t = claim_txn(&Keys::default(), "n1.7", 0x1f, "x", &rec("n1.7", 3));
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["compare"][0]["target"], "VALUE");
        assert_eq!(json["compare"][0]["result"], "EQUAL");
        let RequestOp::RequestTxn(inner) = &t.success[0] else {
            panic!()
        };
        assert_eq!(inner.compare[0].result, CompareResult::Greater);
        let RequestOp::RequestPut(put) = &inner.failure[0] else {
            panic!()
        };
        assert_eq!(put.lease, 0x1f);
        assert_eq!(RoomRecord::from_value(&put.value).unwrap(), rec("n1.7", 3));
        assert_eq!(lease_hex(0x1f), "1f");
    }

    #[test]
    fn claim_answers_read_as_won_taken_or_fenced() {
        let won = TxnResponse {
            header: ResponseHeader { revision: 12 },
            succeeded: true,
            responses: vec![ResponseOp::ResponseTxn(TxnResponse::default())],
        };
        assert_eq!(claim_outcome(&won), Ok(ClaimOutcome::Won { epoch: 12 }));
        let held = KeyValue {
            value: rec("n2.9", 1).to_value(),
            create_revision: 5,
            ..Default::default()
        };
        let taken = TxnResponse {
            header: ResponseHeader { revision: 12 },
            succeeded: true,
            responses: vec![ResponseOp::ResponseTxn(TxnResponse {
                succeeded: true,
                responses: vec![ResponseOp::ResponseRange(RangeResponse {
                    kvs: vec![held],
                    ..Default::default()
                })],
                ..Default::default()
            })],
        };
        assert_eq!(
            claim_outcome(&taken),
            Ok(ClaimOutcome::Taken(Owner {
                record: rec("n2.9", 1),
                epoch: 5
            }))
        );
        assert_eq!(
            claim_outcome(&TxnResponse::default()),
            Ok(ClaimOutcome::Fenced)
        );
        assert!(claim_outcome(&TxnResponse {
            succeeded: true,
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn a_read_back_recognises_only_this_claim() {
        let mine = rec("n1.7", 3);
        let range = |r: &RoomRecord| RangeResponse {
            kvs: vec![KeyValue {
                value: r.to_value(),
                create_revision: 8,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(read_back(&range(&mine), &mine), Ok(Ok(8)));
        let older_mine = rec("n1.7", 2);
        assert_eq!(
            read_back(&range(&older_mine), &mine),
            Ok(Err(Some(Owner {
                record: older_mine,
                epoch: 8
            })))
        );
        assert_eq!(read_back(&RangeResponse::default(), &mine), Ok(Err(None)));
    }

    #[test]
    fn a_release_compares_the_exact_value() {
        let t = release_txn(&Keys::default(), "x", &rec("n1.7", 3));
        assert_eq!(t.compare[0].value, rec("n1.7", 3).to_value());
        assert_eq!(t.compare[0].result, CompareResult::Equal);
        assert!(matches!(t.success[0], RequestOp::RequestDeleteRange(_)));
    }
}
