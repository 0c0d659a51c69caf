//! A model of etcd 3.4 for the simulation: the subset of its v3 JSON gateway the cluster speaks,
//! answered with the status codes and bodies real etcd gives (held to it by the conformance
//! scenario, `snapshots/etcd_conformance.txt`).
//!
//! Owns the key space (values, `create_revision`, `mod_revision`, `version`, attached lease),
//! the revision counter and the leases with their expiry instants. It is sans-IO and
//! deterministic: the driver passes `now` in, serves [`EtcdModel::handle`] over HTTP, and calls
//! [`EtcdModel::expire`] on its own cadence (real etcd checks every 500 ms), so when a lease
//! lapses is the driver's choice, as in etcd where it is the lessor loop's.
//!
//! It never reads a clock, never draws a random number and never iterates a hash map: two runs
//! with the same calls give the same bytes. It never models what the cluster does not use
//! (watches, compaction, auth, `prev_kv`, sorting, `keys_only`, reading at a past revision):
//! such request fields are ignored, where etcd would honour them.
//!
//! Semantics it keeps (observed on etcd 3.4.23, or read in its source where timing hides them):
//! revisions start at 1 and a write that changes something bumps them once, all its puts
//! sharing the new `mod_revision`; reads, keepalives, grants and writes that change nothing do
//! not. A txn's compares (nested ones
//! included) are all evaluated before any of its operations run; its duplicate-key check is
//! etcd's `checkIntervals` (so a delete with `range_end` "\0" is not seen as overlapping a put,
//! as in etcd); the lease of a put is only checked on the branch taken; a range inside a write
//! txn sees the txn's earlier writes; a nested txn answers with an empty header. Leases get at
//! least [`MIN_TTL_SECS`]; a lease past its expiry but not yet revoked answers keepalives as gone
//! yet still accepts puts (etcd revokes it on its next check, deleting those keys too).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::gateway::{
    code, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse,
    ErrorBody, KeyValue, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveItem,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader, Rpc, TxnRequest,
};

/// etcd's minimum lease TTL with its default election timeout (1 s): 1.5 election timeouts,
/// rounded up to whole seconds.
pub const MIN_TTL_SECS: i64 = 2;
/// etcd's `MaxLeaseTTL`.
pub const MAX_TTL_SECS: i64 = 9_000_000_000;
/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// Server-chosen lease ids: a fixed high part and a counter, positive and nonzero like etcd's
/// (which put the member id in the high bits and a counter below).
const LEASE_ID_BASE: i64 = 0x3e8d << 48;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    ttl: i64,
    expiry_ms: u64,
}

/// A key as an oracle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyView<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    /// 0: none.
    pub lease: i64,
}

/// A lease as an oracle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseView {
    pub id: i64,
    /// As granted (seconds).
    pub ttl: i64,
    /// When it lapses unless kept alive, on the driver's clock.
    pub expiry_ms: u64,
}

/// etcd's state: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdModel {
    revision: i64,
    kv: BTreeMap<Vec<u8>, Entry>,
    leases: BTreeMap<i64, Lease>,
    lease_counter: i64,
}

impl Default for EtcdModel {
    fn default() -> Self {
        EtcdModel::new()
    }
}

/// A refused call: the HTTP status and gRPC code the gateway answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    status: u16,
    code: i32,
    message: String,
}

impl Refusal {
    fn new(status: u16, code: i32, message: &str) -> Refusal {
        Refusal {
            status,
            code,
            message: message.to_string(),
        }
    }
    fn lease_not_found() -> Refusal {
        Refusal::new(
            404,
            code::NOT_FOUND,
            "etcdserver: requested lease not found",
        )
    }
    fn empty_key() -> Refusal {
        Refusal::new(
            400,
            code::INVALID_ARGUMENT,
            "etcdserver: key is not provided",
        )
    }
    fn duplicate_key() -> Refusal {
        Refusal::new(
            400,
            code::INVALID_ARGUMENT,
            "etcdserver: duplicate key given in txn request",
        )
    }
    fn body(&self) -> Vec<u8> {
        json(&ErrorBody {
            error: self.message.clone(),
            message: self.message.clone(),
            code: self.code,
        })
    }
}

/// gRPC's `OutOfRange`, which etcd answers a too-large TTL with (not in `gateway::code`: the
/// client never asks for one).
const OUT_OF_RANGE: i32 = 11;

// The txn as etcd decodes it: a `RequestOp` is a oneof, so an op with no request in it decodes
// (and is refused as etcd refuses it) rather than failing to parse as the gateway's enum would.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TxnIn {
    compare: Vec<Compare>,
    success: Vec<OpIn>,
    failure: Vec<OpIn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OpIn {
    request_range: Option<RangeRequest>,
    request_put: Option<PutRequest>,
    request_delete_range: Option<DeleteRangeRequest>,
    request_txn: Option<TxnIn>,
}

enum Op<'a> {
    Range(&'a RangeRequest),
    Put(&'a PutRequest),
    Delete(&'a DeleteRangeRequest),
    Txn(&'a TxnIn),
    /// No request set: etcd answers `key not found`.
    Empty,
    /// More than one set: etcd's decoder keeps the last in the JSON; the model, which cannot
    /// see the order, refuses it (the client never sends one).
    Many,
}

impl OpIn {
    fn op(&self) -> Op<'_> {
        let set = [
            self.request_range.is_some(),
            self.request_put.is_some(),
            self.request_delete_range.is_some(),
            self.request_txn.is_some(),
        ];
        match set.iter().filter(|s| **s).count() {
            0 => return Op::Empty,
            1 => {}
            _ => return Op::Many,
        }
        if let Some(r) = &self.request_range {
            Op::Range(r)
        } else if let Some(p) = &self.request_put {
            Op::Put(p)
        } else if let Some(d) = &self.request_delete_range {
            Op::Delete(d)
        } else {
            Op::Txn(self.request_txn.as_ref().expect("counted above"))
        }
    }
}

// Answers: the gateway's types, plus the range's `more` flag that `gateway` leaves out (the
// cluster never sets a limit, but etcd sends it when one cuts a range short).
#[derive(Debug, Serialize)]
struct RangeOut {
    #[serde(flatten)]
    resp: RangeResponse,
    #[serde(skip_serializing_if = "is_false")]
    more: bool,
}

#[derive(Debug, Serialize)]
enum OpOut {
    #[serde(rename = "response_range")]
    Range(RangeOut),
    #[serde(rename = "response_put")]
    Put(PutResponse),
    #[serde(rename = "response_delete_range")]
    DeleteRange(DeleteRangeResponse),
    #[serde(rename = "response_txn")]
    Txn(TxnOut),
}

#[derive(Debug, Serialize)]
struct TxnOut {
    header: ResponseHeader,
    #[serde(skip_serializing_if = "is_false")]
    succeeded: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    responses: Vec<OpOut>,
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("the model's answers always serialise")
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader { revision }
}

/// The write in progress of one request: etcd's `storeTxnWrite`, whose reads see its writes
/// and whose revision moves only if it changed something.
struct Write {
    begin: i64,
    changed: bool,
}

impl Write {
    /// The revision a read inside the write answers with.
    fn read_rev(&self) -> i64 {
        self.begin + i64::from(self.changed)
    }
}

impl EtcdModel {
    /// A fresh, empty etcd: revision 1, no keys, no leases.
    pub fn new() -> EtcdModel {
        EtcdModel {
            revision: 1,
            kv: BTreeMap::new(),
            leases: BTreeMap::new(),
            lease_counter: 0,
        }
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Every key, in key order.
    pub fn keys(&self) -> impl Iterator<Item = KeyView<'_>> + '_ {
        self.kv.iter().map(|(k, e)| view(k, e))
    }

    pub fn get(&self, key: &[u8]) -> Option<KeyView<'_>> {
        self.kv.get_key_value(key).map(|(k, e)| view(k, e))
    }

    /// Every lease etcd holds (expired ones too, until [`EtcdModel::expire`] revokes them), by id.
    pub fn leases(&self) -> impl Iterator<Item = LeaseView> + '_ {
        self.leases.iter().map(|(id, l)| LeaseView {
            id: *id,
            ttl: l.ttl,
            expiry_ms: l.expiry_ms,
        })
    }

    /// The earliest instant a lease lapses: when the driver should next call `expire`.
    pub fn next_expiry(&self) -> Option<u64> {
        self.leases.values().map(|l| l.expiry_ms).min()
    }

    /// Revokes every lease whose expiry is at or before `now_ms`, earliest first, each deleting
    /// its keys in one revision (none if it had no keys). Returns the revoked ids.
    pub fn expire(&mut self, now_ms: u64) -> Vec<i64> {
        let mut due: Vec<(u64, i64)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expiry_ms <= now_ms)
            .map(|(id, l)| (l.expiry_ms, *id))
            .collect();
        due.sort_unstable();
        due.into_iter()
            .map(|(_, id)| {
                self.revoke_lease(id);
                id
            })
            .collect()
    }

    /// etcd restarted with its data: keys and revision kept, and every lease's expiry set to
    /// `now_ms` + its TTL (what etcd does when a member becomes leader), so a lease that lapsed
    /// while etcd was down lives again.
    pub fn restart(&mut self, now_ms: u64) {
        for l in self.leases.values_mut() {
            l.expiry_ms = expiry(now_ms, l.ttl);
        }
    }

    /// Answers one gateway call (`POST path` with `body`) at `now_ms`: the HTTP status and body
    /// etcd would send. An unknown path is 404 with the gateway mux's plain-text body. Methods
    /// are the driver's: etcd answers anything but `POST` with 405.
    pub fn handle(&mut self, now_ms: u64, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        // The gateway decodes an empty body as an empty message.
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            body
        };
        let answer = match path {
            RangeRequest::PATH => decode(body).and_then(|r| self.range_call(&r)),
            PutRequest::PATH => decode(body).and_then(|r| self.put_call(&r)),
            DeleteRangeRequest::PATH => decode(body).and_then(|r| self.delete_call(&r)),
            TxnRequest::PATH => decode(body).and_then(|r| self.txn_call(&r)),
            LeaseGrantRequest::PATH => decode(body).and_then(|r| self.grant_call(now_ms, &r)),
            LeaseKeepAliveRequest::PATH => decode(body).map(|r| self.keepalive_call(now_ms, &r)),
            LeaseRevokeRequest::PATH => decode(body).and_then(|r| self.revoke_call(&r)),
            _ => return (404, b"Not Found\n".to_vec()),
        };
        match answer {
            Ok(bytes) => (200, bytes),
            Err(r) => (r.status, r.body()),
        }
    }

    fn range_call(&self, r: &RangeRequest) -> Result<Vec<u8>, Refusal> {
        if r.key.is_empty() {
            return Err(Refusal::empty_key());
        }
        Ok(json(&self.range(r, self.revision)))
    }

    fn put_call(&mut self, p: &PutRequest) -> Result<Vec<u8>, Refusal> {
        if p.key.is_empty() {
            return Err(Refusal::empty_key());
        }
        self.check_lease(p.lease)?;
        let mut w = self.begin();
        let resp = self.put(&mut w, p);
        self.commit(&w);
        Ok(json(&resp))
    }

    fn delete_call(&mut self, d: &DeleteRangeRequest) -> Result<Vec<u8>, Refusal> {
        if d.key.is_empty() {
            return Err(Refusal::empty_key());
        }
        let mut w = self.begin();
        let resp = self.delete(&mut w, d);
        self.commit(&w);
        Ok(json(&resp))
    }

    fn txn_call(&mut self, t: &TxnIn) -> Result<Vec<u8>, Refusal> {
        // The order of etcd's checks: shape (the gRPC handler), overlaps, then, on the branches
        // the compares take, the leases (the apply loop).
        check_txn(t, MAX_TXN_OPS)?;
        check_intervals(&t.success)?;
        check_intervals(&t.failure)?;
        let mut path = Vec::new();
        self.compare_to_path(t, &mut path);
        self.check_txn_leases(t, &path, &mut 0)?;
        let mut w = self.begin();
        let mut out = self.apply_txn(&mut w, t, &path, &mut 0);
        out.header = header(w.read_rev());
        self.commit(&w);
        Ok(json(&out))
    }

    fn grant_call(&mut self, now_ms: u64, g: &LeaseGrantRequest) -> Result<Vec<u8>, Refusal> {
        if g.ttl > MAX_TTL_SECS {
            return Err(Refusal::new(
                400,
                OUT_OF_RANGE,
                "etcdserver: too large lease TTL",
            ));
        }
        let id = if g.id == 0 {
            self.fresh_lease_id()
        } else {
            g.id
        };
        if self.leases.contains_key(&id) {
            return Err(Refusal::new(
                412,
                code::FAILED_PRECONDITION,
                "etcdserver: lease already exists",
            ));
        }
        let ttl = g.ttl.max(MIN_TTL_SECS);
        self.leases.insert(
            id,
            Lease {
                ttl,
                expiry_ms: expiry(now_ms, ttl),
            },
        );
        Ok(json(&LeaseGrantResponse {
            header: header(self.revision),
            id,
            ttl,
            error: String::new(),
        }))
    }

    fn keepalive_call(&mut self, now_ms: u64, k: &LeaseKeepAliveRequest) -> Vec<u8> {
        let ttl = match self.leases.get_mut(&k.id) {
            // Past its expiry etcd waits for the revocation under way and answers not found.
            Some(l) if l.expiry_ms > now_ms => {
                l.expiry_ms = expiry(now_ms, l.ttl);
                l.ttl
            }
            _ => 0,
        };
        let mut out = json(&LeaseKeepAliveItem {
            result: Some(LeaseKeepAliveResponse {
                header: header(self.revision),
                id: k.id,
                ttl,
            }),
            error: None,
        });
        // The gateway ends every stream item with a newline.
        out.push(b'\n');
        out
    }

    fn revoke_call(&mut self, r: &LeaseRevokeRequest) -> Result<Vec<u8>, Refusal> {
        if !self.leases.contains_key(&r.id) {
            return Err(Refusal::lease_not_found());
        }
        self.revoke_lease(r.id);
        Ok(json(&LeaseRevokeResponse {
            header: header(self.revision),
        }))
    }

    fn fresh_lease_id(&mut self) -> i64 {
        loop {
            self.lease_counter += 1;
            let id = LEASE_ID_BASE | self.lease_counter;
            if !self.leases.contains_key(&id) {
                return id;
            }
        }
    }

    fn check_lease(&self, lease: i64) -> Result<(), Refusal> {
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(Refusal::lease_not_found());
        }
        Ok(())
    }

    /// Removes the lease and its keys, in one revision if it had any.
    fn revoke_lease(&mut self, id: i64) {
        self.leases.remove(&id);
        let keys: Vec<Vec<u8>> = self
            .kv
            .iter()
            .filter(|(_, e)| e.lease == id)
            .map(|(k, _)| k.clone())
            .collect();
        if !keys.is_empty() {
            for k in keys {
                self.kv.remove(&k);
            }
            self.revision += 1;
        }
    }

    fn begin(&self) -> Write {
        Write {
            begin: self.revision,
            changed: false,
        }
    }

    fn commit(&mut self, w: &Write) {
        self.revision = w.read_rev();
    }

    /// The keys `[key, range_end)` covers: `range_end` empty is the one key, "\0" every key from
    /// `key` on (etcd's `mkGteRange`).
    fn span<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Entry)> + 'a {
        let all_from = range_end == [0];
        let single = range_end.is_empty();
        self.kv.range(key.to_vec()..).take_while(move |(k, _)| {
            let k = k.as_slice();
            if single {
                k == key
            } else {
                all_from || k < range_end
            }
        })
    }

    fn range(&self, r: &RangeRequest, rev: i64) -> RangeOut {
        let mut kvs = Vec::new();
        let mut count = 0;
        for (k, e) in self.span(&r.key, &r.range_end) {
            count += 1;
            if r.limit <= 0 || (kvs.len() as i64) < r.limit {
                kvs.push(key_value(k, e));
            }
        }
        let more = r.limit > 0 && count > r.limit;
        RangeOut {
            resp: RangeResponse {
                header: header(rev),
                kvs,
                count,
            },
            more,
        }
    }

    fn put(&mut self, w: &mut Write, p: &PutRequest) -> PutResponse {
        let rev = w.begin + 1;
        let entry = match self.kv.get(&p.key) {
            Some(old) => Entry {
                value: p.value.clone(),
                create_revision: old.create_revision,
                mod_revision: rev,
                version: old.version + 1,
                lease: p.lease,
            },
            None => Entry {
                value: p.value.clone(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: p.lease,
            },
        };
        self.kv.insert(p.key.clone(), entry);
        w.changed = true;
        PutResponse {
            header: header(rev),
        }
    }

    fn delete(&mut self, w: &mut Write, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let doomed: Vec<Vec<u8>> = self
            .span(&d.key, &d.range_end)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &doomed {
            self.kv.remove(k);
        }
        if !doomed.is_empty() {
            w.changed = true;
        }
        DeleteRangeResponse {
            header: header(w.read_rev()),
            deleted: doomed.len() as i64,
        }
    }

    fn compare(&self, c: &Compare) -> bool {
        let Some(e) = self.kv.get(&c.key) else {
            // etcd: "nil == empty string in grpc; no way to represent missing value".
            if c.target == CompareTarget::Value {
                return false;
            }
            return outcome(c, 0i64.cmp(&target_number(c)));
        };
        let ord = match c.target {
            CompareTarget::Value => e.value.as_slice().cmp(c.value.as_slice()),
            CompareTarget::Create => e.create_revision.cmp(&c.create_revision),
            CompareTarget::Mod => e.mod_revision.cmp(&c.mod_revision),
            CompareTarget::Version => e.version.cmp(&c.version),
            CompareTarget::Lease => e.lease.cmp(&c.lease),
        };
        outcome(c, ord)
    }

    /// Every compare on the branches taken, in pre-order, on the state before the txn (etcd's
    /// `compareToPath`): a nested compare never sees the outer txn's writes.
    fn compare_to_path(&self, t: &TxnIn, path: &mut Vec<bool>) {
        let ok = t.compare.iter().all(|c| self.compare(c));
        path.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            if let Op::Txn(n) = op.op() {
                self.compare_to_path(n, path);
            }
        }
    }

    fn check_txn_leases(&self, t: &TxnIn, path: &[bool], at: &mut usize) -> Result<(), Refusal> {
        let ok = path[*at];
        *at += 1;
        for op in if ok { &t.success } else { &t.failure } {
            match op.op() {
                Op::Put(p) => self.check_lease(p.lease)?,
                Op::Txn(n) => self.check_txn_leases(n, path, at)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn apply_txn(&mut self, w: &mut Write, t: &TxnIn, path: &[bool], at: &mut usize) -> TxnOut {
        let ok = path[*at];
        *at += 1;
        let mut responses = Vec::new();
        for op in if ok { &t.success } else { &t.failure } {
            responses.push(match op.op() {
                Op::Range(r) => OpOut::Range(self.range(r, w.read_rev())),
                Op::Put(p) => OpOut::Put(self.put(w, p)),
                Op::Delete(d) => OpOut::DeleteRange(self.delete(w, d)),
                Op::Txn(n) => OpOut::Txn(self.apply_txn(w, n, path, at)),
                Op::Empty | Op::Many => unreachable!("refused by check_txn"),
            });
        }
        TxnOut {
            // A nested txn's header stays empty in etcd; the outermost gets its revision after.
            header: ResponseHeader::default(),
            succeeded: ok,
            responses,
        }
    }
}

fn view<'a>(k: &'a [u8], e: &'a Entry) -> KeyView<'a> {
    KeyView {
        key: k,
        value: &e.value,
        create_revision: e.create_revision,
        mod_revision: e.mod_revision,
        version: e.version,
        lease: e.lease,
    }
}

fn key_value(k: &[u8], e: &Entry) -> KeyValue {
    KeyValue {
        key: k.to_vec(),
        create_revision: e.create_revision,
        mod_revision: e.mod_revision,
        version: e.version,
        value: e.value.clone(),
        lease: e.lease,
    }
}

fn expiry(now_ms: u64, ttl: i64) -> u64 {
    now_ms.saturating_add((ttl.max(0) as u64).saturating_mul(1000))
}

fn target_number(c: &Compare) -> i64 {
    match c.target {
        CompareTarget::Create => c.create_revision,
        CompareTarget::Mod => c.mod_revision,
        CompareTarget::Version => c.version,
        CompareTarget::Lease => c.lease,
        CompareTarget::Value => 0,
    }
}

fn outcome(c: &Compare, ord: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match c.result {
        CompareResult::Equal => ord == Equal,
        CompareResult::NotEqual => ord != Equal,
        CompareResult::Greater => ord == Greater,
        CompareResult::Less => ord == Less,
    }
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    // etcd answers with Go's decoder error text; the model with serde's (same status and code).
    serde_json::from_slice(body)
        .map_err(|e| Refusal::new(400, code::INVALID_ARGUMENT, &e.to_string()))
}

/// etcd's `checkTxnRequest`: the op count (nested txns get what their parent left), then empty
/// keys and empty ops, compares first.
fn check_txn(t: &TxnIn, max_ops: usize) -> Result<(), Refusal> {
    let opc = t.compare.len().max(t.success.len()).max(t.failure.len());
    if opc > max_ops {
        return Err(Refusal::new(
            400,
            code::INVALID_ARGUMENT,
            "etcdserver: too many operations in txn request",
        ));
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Refusal::empty_key());
    }
    for op in t.success.iter().chain(&t.failure) {
        let key_given = match op.op() {
            Op::Range(r) => !r.key.is_empty(),
            Op::Put(p) => !p.key.is_empty(),
            Op::Delete(d) => !d.key.is_empty(),
            Op::Txn(n) => {
                check_txn(n, max_ops - opc)?;
                true
            }
            Op::Empty => {
                return Err(Refusal::new(
                    400,
                    code::INVALID_ARGUMENT,
                    "etcdserver: key not found",
                ))
            }
            Op::Many => {
                return Err(Refusal::new(
                    400,
                    code::INVALID_ARGUMENT,
                    "model: a RequestOp with more than one request",
                ))
            }
        };
        if !key_given {
            return Err(Refusal::empty_key());
        }
    }
    Ok(())
}

/// Deleted intervals `[begin, end)` as etcd's interval tree holds them (a single key `k` is
/// `[k, k\0)`; a `range_end` of "\0" stays the literal, inverted `[key, "\0")`, which overlaps
/// nothing: etcd's quirk, kept).
type Dels = Vec<(Vec<u8>, Vec<u8>)>;

fn hits(dels: &Dels, key: &[u8]) -> bool {
    dels.iter()
        .any(|(b, e)| b.as_slice() <= key && key < e.as_slice())
}

/// etcd's `checkIntervals`: within one branch no key is put twice or put and deleted, nested
/// txns included, except that a nested txn's success and failure may put the same key (only one
/// runs). Returns the branch's puts and deletes for its parent.
fn check_intervals(ops: &[OpIn]) -> Result<(BTreeSet<Vec<u8>>, Dels), Refusal> {
    let mut dels: Dels = Vec::new();
    for op in ops {
        if let Op::Delete(d) = op.op() {
            let end = if d.range_end.is_empty() {
                let mut e = d.key.clone();
                e.push(0);
                e
            } else {
                d.range_end.clone()
            };
            dels.push((d.key.clone(), end));
        }
    }
    let mut puts = BTreeSet::new();
    for op in ops {
        let Op::Txn(n) = op.op() else { continue };
        let (puts_then, dels_then) = check_intervals(&n.success)?;
        let (puts_else, dels_else) = check_intervals(&n.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hits(&dels, k) {
                return Err(Refusal::duplicate_key());
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || hits(&dels, &k) {
                return Err(Refusal::duplicate_key());
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Op::Put(p) = op.op() else { continue };
        if puts.contains(&p.key) || hits(&dels, &p.key) {
            return Err(Refusal::duplicate_key());
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::etcd::gateway::prefix_end;
    use serde_json::{json, Value};

    fn b64(s: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// Posts a JSON body, answers (status, parsed body).
    fn call(m: &mut EtcdModel, now: u64, path: &str, body: Value) -> (u16, Value) {
        let (status, out) = m.handle(now, path, body.to_string().as_bytes());
        let v = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&out)));
        (status, v)
    }

    fn put(m: &mut EtcdModel, key: &str, value: &str, lease: i64) -> (u16, Value) {
        call(
            m,
            0,
            PutRequest::PATH,
            json!({"key": b64(key), "value": b64(value), "lease": lease.to_string()}),
        )
    }

    fn range(m: &mut EtcdModel, key: &str, end: &[u8]) -> RangeResponse {
        let req = RangeRequest {
            key: key.as_bytes().to_vec(),
            range_end: end.to_vec(),
            limit: 0,
        };
        let (s, out) = m.handle(0, RangeRequest::PATH, &serde_json::to_vec(&req).unwrap());
        assert_eq!(s, 200);
        serde_json::from_slice(&out).unwrap()
    }

    fn keys(r: &RangeResponse) -> Vec<String> {
        r.kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
            .collect()
    }

    fn grant(m: &mut EtcdModel, now: u64, ttl: i64) -> i64 {
        let (s, v) = call(m, now, LeaseGrantRequest::PATH, json!({ "TTL": ttl }));
        assert_eq!(s, 200, "{v}");
        v["ID"].as_str().unwrap().parse().unwrap()
    }

    fn txn(m: &mut EtcdModel, body: Value) -> (u16, Value) {
        call(m, 0, TxnRequest::PATH, body)
    }

    fn rev(v: &Value) -> i64 {
        v["header"]["revision"]
            .as_str()
            .map_or(0, |s| s.parse().unwrap())
    }

    const LEASE_NOT_FOUND: &str = r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
    const DUPLICATE: &str = r#"{"error":"etcdserver: duplicate key given in txn request","message":"etcdserver: duplicate key given in txn request","code":3}"#;

    #[test]
    fn revisions_versions_and_create_revision() {
        let mut m = EtcdModel::new();
        assert_eq!(m.revision(), 1);
        assert_eq!(rev(&put(&mut m, "/a", "1", 0).1), 2);
        assert_eq!(rev(&put(&mut m, "/b", "1", 0).1), 3);
        assert_eq!(rev(&put(&mut m, "/a", "2", 0).1), 4);
        let a = m.get(b"/a").unwrap();
        assert_eq!(
            (a.value, a.create_revision, a.mod_revision, a.version),
            (&b"2"[..], 2, 4, 2)
        );
        // A read answers the current revision and bumps nothing.
        let r = range(&mut m, "/a", b"");
        assert_eq!((r.header.revision, r.count, m.revision()), (4, 1, 4));
        // Deleted and put again: a new life, version 1.
        let (_, d) = call(
            &mut m,
            0,
            DeleteRangeRequest::PATH,
            json!({ "key": b64("/a") }),
        );
        assert_eq!((rev(&d), d["deleted"].as_str()), (5, Some("1")));
        put(&mut m, "/a", "3", 0);
        let a = m.get(b"/a").unwrap();
        assert_eq!((a.create_revision, a.mod_revision, a.version), (6, 6, 1));
        // Deleting nothing changes nothing and leaves `deleted` out, as etcd does.
        let (_, d) = call(
            &mut m,
            0,
            DeleteRangeRequest::PATH,
            json!({ "key": b64("/none") }),
        );
        assert_eq!(d, json!({"header": {"revision": "6"}}));
        assert_eq!(m.revision(), 6);
    }

    #[test]
    fn range_ends() {
        let mut m = EtcdModel::new();
        for k in ["/a", "/b", "/b/1", "/b/2", "/c", "/d"] {
            put(&mut m, k, "v", 0);
        }
        assert_eq!(keys(&range(&mut m, "/b", b"")), ["/b"]);
        assert_eq!(
            keys(&range(&mut m, "/b", b"/d")),
            ["/b", "/b/1", "/b/2", "/c"]
        );
        assert_eq!(keys(&range(&mut m, "/c", b"\0")), ["/c", "/d"]);
        assert_eq!(range(&mut m, "\0", b"\0").count, 6);
        assert_eq!(
            keys(&range(&mut m, "/b/", &prefix_end(b"/b/"))),
            ["/b/1", "/b/2"]
        );
        let inverted = range(&mut m, "/d", b"/a");
        assert_eq!((inverted.count, inverted.kvs.len()), (0, 0));
        assert_eq!(range(&mut m, "/zz", b"").count, 0);

        // A limit cuts the keys, not the count, and says there is more.
        let (_, v) = call(
            &mut m,
            0,
            RangeRequest::PATH,
            json!({"key": b64("/"), "range_end": b64("0"), "limit": 2}),
        );
        assert_eq!(v["kvs"].as_array().unwrap().len(), 2);
        assert_eq!(
            (v["count"].as_str(), v["more"].as_bool()),
            (Some("6"), Some(true))
        );
        let (_, v) = call(
            &mut m,
            0,
            RangeRequest::PATH,
            json!({"key": b64("/"), "range_end": b64("0"), "limit": 6}),
        );
        assert_eq!(v.get("more"), None);
    }

    #[test]
    fn compares() {
        let mut m = EtcdModel::new();
        put(&mut m, "/k", "m", 0);
        let holds = |m: &mut EtcdModel, c: Value| {
            let (s, v) = txn(m, json!({ "compare": [c] }));
            assert_eq!(s, 200, "{v}");
            v.get("succeeded").and_then(Value::as_bool).unwrap_or(false)
        };
        // VALUE on a missing key is false whatever is asked.
        for result in ["EQUAL", "NOT_EQUAL", "GREATER", "LESS"] {
            for value in ["", "x"] {
                let c = json!({"key": b64("/missing"), "target": "VALUE", "result": result, "value": b64(value)});
                assert!(!holds(&mut m, c), "{result} {value:?}");
            }
        }
        // The other targets compare a missing key as 0.
        for (target, field) in [
            ("CREATE", "create_revision"),
            ("MOD", "mod_revision"),
            ("VERSION", "version"),
            ("LEASE", "lease"),
        ] {
            let c =
                json!({"key": b64("/missing"), "target": target, "result": "EQUAL", field: "0"});
            assert!(holds(&mut m, c), "{target}");
            let c = json!({"key": b64("/missing"), "target": target, "result": "LESS", field: "1"});
            assert!(holds(&mut m, c), "{target}");
        }
        // Values compare as bytes.
        let v = |result: &str, value: &str| json!({"key": b64("/k"), "target": "VALUE", "result": result, "value": b64(value)});
        assert!(holds(&mut m, v("GREATER", "")));
        assert!(holds(&mut m, v("GREATER", "l")));
        assert!(holds(&mut m, v("LESS", "ma")));
        assert!(holds(&mut m, v("EQUAL", "m")));
        assert!(holds(&mut m, v("NOT_EQUAL", "n")));
        assert!(!holds(&mut m, v("EQUAL", "M")));
        let c = json!({"key": b64("/k"), "target": "VERSION", "result": "EQUAL", "version": "1"});
        assert!(holds(&mut m, c));
        let c = json!({"key": b64("/k"), "target": "CREATE", "result": "EQUAL", "create_revision": "2"});
        assert!(holds(&mut m, c));
        // Every compare must hold.
        let (_, out) = txn(
            &mut m,
            json!({"compare": [v("EQUAL", "m"), v("EQUAL", "x")]}),
        );
        assert_eq!(
            out,
            json!({"header": {"revision": "2"}}),
            "false is left out"
        );
        assert_eq!(m.revision(), 2, "compares write nothing");
    }

    /// Shapes captured from etcd 3.4.23 (cluster fields removed).
    #[test]
    fn txn_answers_as_etcd() {
        let mut m = EtcdModel::new();
        put(&mut m, "/a", "3", 0);
        // A range before a put in one txn reads the old state at the old revision.
        let (_, out) = txn(
            &mut m,
            json!({"success": [
                {"request_range": {"key": b64("/a")}},
                {"request_put": {"key": b64("/a"), "value": b64("5")}},
                {"request_range": {"key": b64("/a")}},
                {"request_delete_range": {"key": b64("/zz")}},
            ]}),
        );
        assert_eq!(
            out,
            json!({"header": {"revision": "3"}, "succeeded": true, "responses": [
                {"response_range": {"header": {"revision": "2"}, "kvs": [{"key": b64("/a"),
                    "create_revision": "2", "mod_revision": "2", "version": "1", "value": b64("3")}], "count": "1"}},
                {"response_put": {"header": {"revision": "3"}}},
                {"response_range": {"header": {"revision": "3"}, "kvs": [{"key": b64("/a"),
                    "create_revision": "2", "mod_revision": "3", "version": "2", "value": b64("5")}], "count": "1"}},
                {"response_delete_range": {"header": {"revision": "3"}}},
            ]})
        );
        // Nested: the compare sees the state before the txn (so /q is missing), the nested
        // header is empty, and all puts share one new revision.
        let (_, out) = txn(
            &mut m,
            json!({"success": [
                {"request_put": {"key": b64("/q"), "value": b64("1")}},
                {"request_txn": {
                    "compare": [{"key": b64("/q"), "target": "VALUE", "result": "EQUAL", "value": b64("1")}],
                    "success": [{"request_put": {"key": b64("/q2"), "value": b64("yes")}}],
                    "failure": [{"request_put": {"key": b64("/q2"), "value": b64("no")}}],
                }},
                {"request_txn": {}},
            ]}),
        );
        assert_eq!(
            out,
            json!({"header": {"revision": "4"}, "succeeded": true, "responses": [
                {"response_put": {"header": {"revision": "4"}}},
                {"response_txn": {"header": {}, "responses": [{"response_put": {"header": {"revision": "4"}}}]}},
                {"response_txn": {"header": {}, "succeeded": true}},
            ]})
        );
        assert_eq!(m.get(b"/q2").unwrap().value, b"no");
        assert_eq!(m.get(b"/q").unwrap().mod_revision, 4);
        assert_eq!(m.get(b"/q2").unwrap().mod_revision, 4);
        // Deletes: the second finds nothing but answers the txn's new revision.
        let (_, out) = txn(
            &mut m,
            json!({"success": [
                {"request_delete_range": {"key": b64("/q")}},
                {"request_delete_range": {"key": b64("/q")}},
            ]}),
        );
        assert_eq!(
            out,
            json!({"header": {"revision": "5"}, "succeeded": true, "responses": [
                {"response_delete_range": {"header": {"revision": "5"}, "deleted": "1"}},
                {"response_delete_range": {"header": {"revision": "5"}}},
            ]})
        );
        // A write txn that writes nothing keeps the revision.
        let (_, out) = txn(
            &mut m,
            json!({"success": [{"request_delete_range": {"key": b64("/none")}}]}),
        );
        assert_eq!(rev(&out), 5);
        let (_, out) = txn(&mut m, json!({}));
        assert_eq!(out, json!({"header": {"revision": "5"}, "succeeded": true}));
        assert_eq!(m.revision(), 5);
    }

    #[test]
    fn duplicate_keys_in_a_txn() {
        let mut m = EtcdModel::new();
        let p = |k: &str| json!({"request_put": {"key": b64(k), "value": b64("v")}});
        let d = |k: &str, end: &str| json!({"request_delete_range": {"key": b64(k), "range_end": b64(end)}});
        let nested =
            |s: Vec<Value>, f: Vec<Value>| json!({"request_txn": {"success": s, "failure": f}});
        let refused = [
            json!({"success": [p("/a"), p("/a")]}),
            json!({"failure": [p("/a"), p("/a")]}),
            json!({"success": [p("/a"), nested(vec![p("/a")], vec![])]}),
            json!({"success": [nested(vec![p("/a")], vec![]), nested(vec![p("/a")], vec![])]}),
            json!({"success": [nested(vec![p("/a")], vec![]), nested(vec![], vec![p("/a")])]}),
            json!({"success": [d("/a", "/c"), p("/b")]}),
            json!({"success": [json!({"request_delete_range": {"key": b64("/b")}}), p("/b")]}),
            json!({"success": [d("/a", "/c"), nested(vec![p("/b")], vec![])]}),
            json!({"success": [nested(vec![d("/a", "/c")], vec![]), p("/b")]}),
        ];
        for body in refused {
            let (s, out) = m.handle(0, TxnRequest::PATH, body.to_string().as_bytes());
            assert_eq!(
                (s, String::from_utf8(out).unwrap()),
                (400, DUPLICATE.into()),
                "{body}"
            );
        }
        let allowed = [
            // One key in success and in failure: only one of them runs.
            json!({"success": [p("/a")], "failure": [p("/a")]}),
            json!({"success": [nested(vec![p("/a")], vec![p("/a")])]}),
            // Overlapping deletes are fine.
            json!({"success": [d("/a", "/c"), d("/b", "/d")]}),
            // etcd's quirk: a delete to the end ("\0") is not seen to overlap a put.
            json!({"success": [json!({"request_delete_range": {"key": b64("/a"), "range_end": "AA=="}}), p("/b")]}),
            // A range does not conflict with anything.
            json!({"success": [p("/a"), json!({"request_range": {"key": b64("/a")}})]}),
            // [/a, /b) does not include /b.
            json!({"success": [d("/a", "/b"), p("/b")]}),
        ];
        for body in allowed {
            let (s, out) = m.handle(0, TxnRequest::PATH, body.to_string().as_bytes());
            assert_eq!(s, 200, "{body}: {}", String::from_utf8_lossy(&out));
        }
        assert_eq!(m.get(b"/b").unwrap().value, b"v");
    }

    #[test]
    fn refusals_as_etcd_words_them() {
        let mut m = EtcdModel::new();
        let text = |m: &mut EtcdModel, path: &str, body: &str| {
            let (s, out) = m.handle(0, path, body.as_bytes());
            (s, String::from_utf8(out).unwrap())
        };
        let k = b64("/k");
        assert_eq!(
            text(
                &mut m,
                PutRequest::PATH,
                &format!(r#"{{"key":"{k}","lease":"12345"}}"#)
            ),
            (404, LEASE_NOT_FOUND.into())
        );
        assert_eq!(
            text(&mut m, LeaseRevokeRequest::PATH, r#"{"ID":"12345"}"#),
            (404, LEASE_NOT_FOUND.into())
        );
        assert_eq!(
            text(&mut m, LeaseRevokeRequest::PATH, "{}"),
            (404, LEASE_NOT_FOUND.into())
        );
        // A txn's lease is only checked on the branch taken; refused, it writes nothing.
        let bad = format!(r#"{{"request_put":{{"key":"{k}","lease":"12345"}}}}"#);
        let good = format!(r#"{{"request_put":{{"key":"{}"}}}}"#, b64("/g"));
        assert_eq!(
            text(
                &mut m,
                TxnRequest::PATH,
                &format!(r#"{{"success":[{good},{bad}]}}"#)
            ),
            (404, LEASE_NOT_FOUND.into())
        );
        assert_eq!(m.revision(), 1);
        assert!(m.get(b"/g").is_none());
        let (s, _) = text(
            &mut m,
            TxnRequest::PATH,
            &format!(r#"{{"success":[{good}],"failure":[{bad}]}}"#),
        );
        assert_eq!((s, m.revision()), (200, 2));
        let nested = format!(r#"{{"success":[{{"request_txn":{{"success":[{bad}]}}}}]}}"#);
        assert_eq!(
            text(&mut m, TxnRequest::PATH, &nested),
            (404, LEASE_NOT_FOUND.into())
        );

        let empty_key = r#"{"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3}"#;
        assert_eq!(
            text(&mut m, RangeRequest::PATH, ""),
            (400, empty_key.into())
        );
        assert_eq!(
            text(&mut m, PutRequest::PATH, r#"{"key":""}"#),
            (400, empty_key.into())
        );
        assert_eq!(
            text(&mut m, DeleteRangeRequest::PATH, "{}"),
            (400, empty_key.into())
        );
        assert_eq!(
            text(
                &mut m,
                TxnRequest::PATH,
                r#"{"compare":[{"key":"","target":"VALUE"}]}"#
            ),
            (400, empty_key.into())
        );
        assert_eq!(
            text(
                &mut m,
                TxnRequest::PATH,
                r#"{"failure":[{"request_range":{}}]}"#
            ),
            (400, empty_key.into())
        );
        assert_eq!(
            text(&mut m, TxnRequest::PATH, r#"{"success":[{}]}"#),
            (
                400,
                r#"{"error":"etcdserver: key not found","message":"etcdserver: key not found","code":3}"#.into()
            )
        );
        let many = |n: usize| {
            let op = format!(r#"{{"request_range":{{"key":"{k}"}}}}"#);
            vec![op; n].join(",")
        };
        let too_many = r#"{"error":"etcdserver: too many operations in txn request","message":"etcdserver: too many operations in txn request","code":3}"#;
        assert_eq!(
            text(
                &mut m,
                TxnRequest::PATH,
                &format!(r#"{{"success":[{}]}}"#, many(129))
            ),
            (400, too_many.into())
        );
        assert_eq!(
            text(
                &mut m,
                TxnRequest::PATH,
                &format!(r#"{{"success":[{}]}}"#, many(128))
            )
            .0,
            200
        );
        // A nested txn gets what its parent left (128 minus the parent's 1).
        assert_eq!(
            text(
                &mut m,
                TxnRequest::PATH,
                &format!(
                    r#"{{"success":[{{"request_txn":{{"success":[{}]}}}}]}}"#,
                    many(128)
                )
            ),
            (400, too_many.into())
        );
        assert_eq!(
            text(&mut m, "/v3/kv/compact", "{}"),
            (404, "Not Found\n".into())
        );
        // Undecodable: etcd's status and code (the text is serde's, not Go's).
        for body in [
            "notjson",
            r#"{"key":"!!"}"#,
            r#"{"key":"YQ==","limit":"x"}"#,
        ] {
            let (s, out) = text(&mut m, RangeRequest::PATH, body);
            let e: ErrorBody = serde_json::from_str(&out).unwrap();
            assert_eq!((s, e.code), (400, code::INVALID_ARGUMENT), "{body}: {out}");
            assert!(!e.error.is_empty() && e.error == e.message);
        }
        let (s, _) = text(
            &mut m,
            TxnRequest::PATH,
            r#"{"compare":[{"key":"YQ==","target":"FOO"}]}"#,
        );
        assert_eq!(s, 400);
        // Unknown fields are ignored.
        let (s, _) = text(
            &mut m,
            RangeRequest::PATH,
            r#"{"key":"YQ==","serializable":true,"whatever":{"x":1}}"#,
        );
        assert_eq!(s, 200);
    }

    #[test]
    fn leases_grant_keepalive_revoke() {
        let mut m = EtcdModel::new();
        let (s, v) = call(&mut m, 0, LeaseGrantRequest::PATH, json!({"TTL": 1}));
        assert_eq!(s, 200);
        assert_eq!((v["TTL"].as_str(), rev(&v)), (Some("2"), 1));
        let a: i64 = v["ID"].as_str().unwrap().parse().unwrap();
        let b = grant(&mut m, 0, -5);
        let c = grant(&mut m, 0, 0);
        assert!(a > 0 && b > 0 && c > 0 && a != b && b != c && a != c);
        assert!(m.leases().all(|l| l.ttl == 2 && l.expiry_ms == 2000));

        // Explicit ids, taken ones and too long TTLs.
        let (s, v) = call(
            &mut m,
            0,
            LeaseGrantRequest::PATH,
            json!({"TTL": 5, "ID": 77}),
        );
        assert_eq!(
            (s, v["ID"].as_str(), v["TTL"].as_str()),
            (200, Some("77"), Some("5"))
        );
        let (s, out) = m.handle(0, LeaseGrantRequest::PATH, br#"{"TTL":5,"ID":77}"#);
        assert_eq!(
            (s, String::from_utf8(out).unwrap().as_str()),
            (
                412,
                r#"{"error":"etcdserver: lease already exists","message":"etcdserver: lease already exists","code":9}"#
            )
        );
        let (s, out) = m.handle(0, LeaseGrantRequest::PATH, br#"{"TTL":9000000001}"#);
        assert_eq!(
            (s, String::from_utf8(out).unwrap().as_str()),
            (
                400,
                r#"{"error":"etcdserver: too large lease TTL","message":"etcdserver: too large lease TTL","code":11}"#
            )
        );

        // Keepalive: renews from now, answers the TTL (as a stream item with its newline).
        let (s, out) = m.handle(
            1500,
            LeaseKeepAliveRequest::PATH,
            format!(r#"{{"ID":"{a}"}}"#).as_bytes(),
        );
        assert_eq!(s, 200);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{{\"result\":{{\"header\":{{\"revision\":\"1\"}},\"ID\":\"{a}\",\"TTL\":\"2\"}}}}\n")
        );
        assert_eq!(m.leases().find(|l| l.id == a).unwrap().expiry_ms, 3500);
        let (_, v) = call(
            &mut m,
            0,
            LeaseKeepAliveRequest::PATH,
            json!({"ID": "12345"}),
        );
        assert_eq!(
            v,
            json!({"result": {"header": {"revision": "1"}, "ID": "12345"}})
        );
        let (_, v) = call(&mut m, 0, LeaseKeepAliveRequest::PATH, json!({}));
        assert_eq!(v, json!({"result": {"header": {"revision": "1"}}}));

        // Revoke: its keys go in one revision; a key re-put on another lease stays.
        put(&mut m, "/x", "1", a);
        put(&mut m, "/y", "1", a);
        put(&mut m, "/z", "1", a);
        put(&mut m, "/z", "2", b);
        assert_eq!(m.revision(), 5);
        let (s, v) = call(
            &mut m,
            0,
            LeaseRevokeRequest::PATH,
            json!({"ID": a.to_string()}),
        );
        assert_eq!((s, rev(&v)), (200, 6));
        assert_eq!(m.keys().map(|k| k.key).collect::<Vec<_>>(), [&b"/z"[..]]);
        // A lease without keys goes without a revision.
        let (_, v) = call(
            &mut m,
            0,
            LeaseRevokeRequest::PATH,
            json!({"ID": c.to_string()}),
        );
        assert_eq!(rev(&v), 6);
        let (_, v) = call(
            &mut m,
            0,
            LeaseKeepAliveRequest::PATH,
            json!({"ID": a.to_string()}),
        );
        assert_eq!(v["result"].get("TTL"), None);
        // Ids are never handed out twice.
        let d = grant(&mut m, 0, 2);
        assert!(![a, b, c, 77].contains(&d));
    }

    #[test]
    fn expiry_on_the_drivers_cadence() {
        let mut m = EtcdModel::new();
        let short = grant(&mut m, 0, 2);
        let long = grant(&mut m, 0, 3);
        let bare = grant(&mut m, 0, 2);
        put(&mut m, "/s1", "", short);
        put(&mut m, "/s2", "", short);
        put(&mut m, "/l", "", long);
        assert_eq!((m.revision(), m.next_expiry()), (4, Some(2000)));
        assert!(m.expire(1999).is_empty());

        // Past its expiry but not yet revoked: keepalive says gone, a put is still accepted
        // (etcd's lessor still holds it) and goes with the lease.
        let (_, v) = call(
            &mut m,
            2000,
            LeaseKeepAliveRequest::PATH,
            json!({"ID": short.to_string()}),
        );
        assert_eq!(v["result"].get("TTL"), None);
        assert_eq!(put(&mut m, "/s3", "", short).0, 200);
        assert_eq!(m.revision(), 5);

        let mut gone = m.expire(2000);
        gone.sort_unstable();
        let mut want = vec![short, bare];
        want.sort_unstable();
        assert_eq!(gone, want);
        assert_eq!(
            m.revision(),
            6,
            "one revision for the lease with keys, none for the bare one"
        );
        assert_eq!(m.keys().map(|k| k.key).collect::<Vec<_>>(), [&b"/l"[..]]);
        assert_eq!(m.next_expiry(), Some(3000));
        assert_eq!(put(&mut m, "/s4", "", short).0, 404);

        // Kept alive in time, a lease lives on.
        call(
            &mut m,
            2900,
            LeaseKeepAliveRequest::PATH,
            json!({"ID": long.to_string()}),
        );
        assert!(m.expire(5000).is_empty());
        assert_eq!(m.expire(5900), vec![long]);
        assert_eq!(
            (m.revision(), m.keys().count(), m.next_expiry()),
            (7, 0, None)
        );
    }

    #[test]
    fn restart_keeps_data_and_refreshes_leases() {
        let mut m = EtcdModel::new();
        let l = grant(&mut m, 0, 4);
        put(&mut m, "/k", "v", l);
        let before = m.clone();
        // Down from 1 s to 10 s: the lease would have lapsed at 4 s; etcd gives it a full TTL.
        m.restart(10_000);
        assert_eq!(m.revision(), before.revision());
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>()
        );
        assert_eq!(m.next_expiry(), Some(14_000));
        assert!(m.expire(13_999).is_empty());
        assert_eq!(m.expire(14_000), vec![l]);
    }

    /// The same calls give the same bytes.
    #[test]
    fn deterministic() {
        let run = || {
            let mut m = EtcdModel::new();
            let mut out = Vec::new();
            for i in 0..20u64 {
                let l = grant(&mut m, i, 2 + (i as i64 % 3));
                out.push(put(&mut m, &format!("/k{}", i % 7), "v", l).1);
                out.push(json!(m.expire(i * 700)));
            }
            (out, m)
        };
        assert_eq!(run(), run());
    }
}
