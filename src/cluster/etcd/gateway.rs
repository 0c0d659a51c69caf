//! The subset of etcd's v3 JSON gateway (`POST /v3/...`, etcd >= 3.4) the cluster speaks: the
//! request and response bodies as serde types, for the client and for the simulation's etcd
//! model alike, so both sides of the simulated wire are the bytes real etcd exchanges.
//!
//! The gateway is grpc-gateway over etcd's protobuf API: field names are the proto's, int64s
//! travel as JSON strings (numbers are accepted on input), `bytes` as standard base64, and a
//! field at its default value (0, false, empty) is left out, so every field here has a default.
//! Unknown fields are ignored in both directions, as the gateway does.
//!
//! It owns no I/O and no semantics: what a compare or a lease means lives in the client's
//! callers and in the model.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A gateway call: the path it is posted to and the body it answers with.
pub trait Rpc: Serialize + DeserializeOwned {
    const PATH: &'static str;
    type Response: Serialize + DeserializeOwned;
}

/// The body of a refused call (any HTTP status other than 200): a gRPC status code and text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    pub code: i32,
}

/// gRPC codes the cluster tells apart (the gateway maps them to HTTP statuses too).
pub mod code {
    /// `etcdserver: requested lease not found`.
    pub const NOT_FOUND: i32 = 5;
    /// `etcdserver: request timed out`, leader changes and the like: retry.
    pub const UNAVAILABLE: i32 = 14;
    pub const INVALID_ARGUMENT: i32 = 3;
    /// A lease TTL etcd will not grant, a txn with too many operations.
    pub const FAILED_PRECONDITION: i32 = 9;
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResponseHeader {
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub revision: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyValue {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub create_revision: i64,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub mod_revision: i64,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub version: i64,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub value: Vec<u8>,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub lease: i64,
}

/// `range_end` empty: the one key; `range_end == prefix_end(key)`: every key under the prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RangeRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub limit: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RangeResponse {
    pub header: ResponseHeader,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kvs: Vec<KeyValue>,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub count: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PutRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub value: Vec<u8>,
    /// 0: no lease.
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub lease: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PutResponse {
    pub header: ResponseHeader,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeleteRangeRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeleteRangeResponse {
    pub header: ResponseHeader,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub deleted: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompareTarget {
    Version,
    Create,
    Mod,
    #[default]
    Value,
    Lease,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompareResult {
    #[default]
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// One guard of a txn. Only the field named by `target` is read (etcd's `target_union`).
/// etcd's rule the cluster relies on: a `VALUE` compare on a missing key is false whatever the
/// result asked for (`value(missing) != "x"` is false too); the other targets compare a missing
/// key as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Compare {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    pub target: CompareTarget,
    pub result: CompareResult,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub value: Vec<u8>,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub version: i64,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub create_revision: i64,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub mod_revision: i64,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub lease: i64,
}

impl Compare {
    pub fn value(key: &[u8], result: CompareResult, value: &[u8]) -> Self {
        Compare {
            key: key.to_vec(),
            target: CompareTarget::Value,
            result,
            value: value.to_vec(),
            ..Compare::default()
        }
    }

    pub fn create_revision(key: &[u8], result: CompareResult, revision: i64) -> Self {
        Compare {
            key: key.to_vec(),
            target: CompareTarget::Create,
            result,
            create_revision: revision,
            ..Compare::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOp {
    RequestRange(RangeRequest),
    RequestPut(PutRequest),
    RequestDeleteRange(DeleteRangeRequest),
    RequestTxn(TxnRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseOp {
    ResponseRange(RangeResponse),
    ResponsePut(PutResponse),
    ResponseDeleteRange(DeleteRangeResponse),
    ResponseTxn(TxnResponse),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TxnRequest {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compare: Vec<Compare>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<RequestOp>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failure: Vec<RequestOp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TxnResponse {
    pub header: ResponseHeader,
    #[serde(skip_serializing_if = "is_false")]
    pub succeeded: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub responses: Vec<ResponseOp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseGrantRequest {
    #[serde(rename = "TTL", with = "int64")]
    pub ttl: i64,
    /// 0: etcd picks the id.
    #[serde(rename = "ID", with = "int64", skip_serializing_if = "is_zero")]
    pub id: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseGrantResponse {
    pub header: ResponseHeader,
    #[serde(rename = "ID", with = "int64", skip_serializing_if = "is_zero")]
    pub id: i64,
    /// What etcd granted: at least its minimum TTL, whatever was asked.
    #[serde(rename = "TTL", with = "int64", skip_serializing_if = "is_zero")]
    pub ttl: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseKeepAliveRequest {
    #[serde(rename = "ID", with = "int64")]
    pub id: i64,
}

/// `ttl` 0 (left out): the lease is gone (expired or revoked); the keepalive renewed nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseKeepAliveResponse {
    pub header: ResponseHeader,
    #[serde(rename = "ID", with = "int64", skip_serializing_if = "is_zero")]
    pub id: i64,
    #[serde(rename = "TTL", with = "int64", skip_serializing_if = "is_zero")]
    pub ttl: i64,
}

/// KeepAlive is a streaming RPC: the gateway answers one request body with one stream item,
/// `{"result": ...}` or `{"error": ...}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseKeepAliveItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<LeaseKeepAliveResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseRevokeRequest {
    #[serde(rename = "ID", with = "int64")]
    pub id: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseRevokeResponse {
    pub header: ResponseHeader,
}

/// Each request body with the gateway path it is posted to and the body etcd answers with.
macro_rules! rpcs {
    ($($req:ty => $resp:ty, $path:literal;)*) => {
        $(impl Rpc for $req {
            const PATH: &'static str = $path;
            type Response = $resp;
        })*
    };
}

rpcs! {
    RangeRequest => RangeResponse, "/v3/kv/range";
    PutRequest => PutResponse, "/v3/kv/put";
    DeleteRangeRequest => DeleteRangeResponse, "/v3/kv/deleterange";
    TxnRequest => TxnResponse, "/v3/kv/txn";
    LeaseGrantRequest => LeaseGrantResponse, "/v3/lease/grant";
    LeaseKeepAliveRequest => LeaseKeepAliveItem, "/v3/lease/keepalive";
    LeaseRevokeRequest => LeaseRevokeResponse, "/v3/lease/revoke";
}

/// The `range_end` that makes a range cover every key starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff incremented and the rest cut.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): etcd's "\0" means every key from `key` on.
    vec![0]
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// int64 as the gateway writes it (a JSON string); a number is accepted too.
mod int64 {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = i64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an int64 as a string or a number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
                Ok(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
                i64::try_from(v).map_err(|_| E::custom("int64 out of range"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
                v.parse()
                    .map_err(|_| E::custom(format!("not an int64: {v:?}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// `bytes` as standard base64 with padding (what the gateway writes and reads).
mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bodies as etcd 3.4.23 wrote them (captured with curl against Debian's etcd-server).
    #[test]
    fn reads_what_etcd_writes() {
        let txn: TxnResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2","raft_term":"2"},"succeeded":true,"responses":[{"response_range":{"header":{"revision":"2"},"kvs":[{"key":"L3ZyL3Jvb21zL3g=","create_revision":"2","mod_revision":"2","version":"1","value":"b3duZXIx","lease":"2324035771644441351"}],"count":"1"}}]}"#,
        )
        .unwrap();
        assert!(txn.succeeded);
        assert_eq!(txn.header.revision, 2);
        let ResponseOp::ResponseRange(r) = &txn.responses[0] else {
            panic!("{txn:?}")
        };
        assert_eq!(r.kvs[0].key, b"/vr/rooms/x");
        assert_eq!(r.kvs[0].value, b"owner1");
        assert_eq!(r.kvs[0].lease, 2324035771644441351);
        assert_eq!(r.kvs[0].create_revision, 2);

        let failed: TxnResponse = serde_json::from_str(
            r#"{"header":{"revision":"2"},"responses":[{"response_put":{"header":{"revision":"2"}}}]}"#,
        )
        .unwrap();
        assert!(!failed.succeeded, "a false `succeeded` is left out");

        let ka: LeaseKeepAliveItem =
            serde_json::from_str(r#"{"result":{"header":{"revision":"2"},"ID":"12345"}}"#).unwrap();
        assert_eq!(
            ka.result.unwrap().ttl,
            0,
            "an unknown lease answers without a TTL"
        );

        let err: ErrorBody = serde_json::from_str(
            r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#,
        )
        .unwrap();
        assert_eq!(err.code, code::NOT_FOUND);
    }

    #[test]
    fn writes_what_etcd_reads() {
        let txn = TxnRequest {
            compare: vec![Compare::value(b"/k", CompareResult::Greater, b"")],
            success: vec![RequestOp::RequestRange(RangeRequest {
                key: b"/k".to_vec(),
                ..Default::default()
            })],
            failure: vec![RequestOp::RequestPut(PutRequest {
                key: b"/k".to_vec(),
                value: b"v".to_vec(),
                lease: 7,
            })],
        };
        assert_eq!(
            serde_json::to_string(&txn).unwrap(),
            r#"{"compare":[{"key":"L2s=","target":"VALUE","result":"GREATER"}],"success":[{"request_range":{"key":"L2s="}}],"failure":[{"request_put":{"key":"L2s=","value":"dg==","lease":"7"}}]}"#
        );
        let back: TxnRequest = serde_json::from_str(&serde_json::to_string(&txn).unwrap()).unwrap();
        assert_eq!(back, txn);
        let grant: LeaseGrantRequest = serde_json::from_str(r#"{"TTL":5}"#).unwrap();
        assert_eq!(grant.ttl, 5, "numbers are accepted for int64s");
    }

    #[test]
    fn prefix_end_is_etcds() {
        assert_eq!(prefix_end(b"/vr/"), b"/vr0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
