//! The etcd client against real etcd (Debian's etcd-server, 3.4), and the conformance scenario
//! that holds the simulation's etcd model to it (`snapshots/etcd_conformance.txt`).
//!
//! Each test starts its own etcd: 127.0.0.1 only, free ports, a temporary data directory, killed
//! and removed on drop. The etcd.service the package installs is never used.

use std::time::{Duration, Instant};

use std::net::TcpListener;

use crate::support::etcd::{free_port, runtime, Etcd};
use videoroom::cluster::claims::{lease_hex, ClaimOutcome, Keys};
use videoroom::cluster::etcd::client::{EtcdClient, EtcdError};
use videoroom::cluster::etcd::conformance::{Action, Runner};
use videoroom::cluster::etcd::gateway::{
    code, Compare, CompareResult, PutRequest, RangeRequest, RequestOp, ResponseOp, TxnRequest,
};
use videoroom::cluster::lease::LeaseConfig;
use videoroom::cluster::node::{Node, NodeConfig, NodeError, NodeRecord, NodeStatus};

const EXPECTED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/snapshots/etcd_conformance.txt"
);

fn client(endpoints: &[String], timeout: Duration) -> EtcdClient {
    EtcdClient::new(endpoints, timeout).expect("valid endpoints")
}

fn claim(key: &[u8], value: &[u8], lease: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare::value(key, CompareResult::Greater, b"")],
        success: vec![RequestOp::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..RangeRequest::default()
        })],
        failure: vec![RequestOp::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
        })],
    }
}

/// Every helper against etcd, including the answers for a lease that is gone.
#[test]
fn client_helpers_end_to_end() {
    let etcd = Etcd::start();
    let c = client(&[etcd.url()], Duration::from_secs(2));
    runtime().block_on(async {
        let (lease, ttl) = c.grant(1).await.unwrap();
        assert_eq!(ttl, 2, "etcd's minimum TTL");
        let (other, ttl) = c.grant(30).await.unwrap();
        assert_eq!(ttl, 30);
        assert_ne!(lease, other);

        let rev = c.put(b"/t/alive/n1", b"x", lease).await.unwrap();
        let (kv, read_at) = c.get(b"/t/alive/n1").await.unwrap();
        let kv = kv.expect("the key");
        assert_eq!((kv.value.as_slice(), kv.lease), (&b"x"[..], lease));
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version),
            (rev, rev, 1)
        );
        assert_eq!(read_at, rev);
        assert_eq!(c.get(b"/t/none").await.unwrap(), (None, rev));

        // A claim won, then lost.
        let won = c.txn(&claim(b"/t/rooms/a", b"n2", other)).await.unwrap();
        assert!(!won.succeeded);
        assert_eq!(won.header.revision, rev + 1);
        let lost = c.txn(&claim(b"/t/rooms/a", b"n1", lease)).await.unwrap();
        assert!(lost.succeeded);
        let ResponseOp::ResponseRange(r) = &lost.responses[0] else {
            panic!("{lost:?}")
        };
        assert_eq!(r.kvs[0].value, b"n2");
        assert_eq!(r.kvs[0].create_revision, rev + 1, "the room's epoch");

        let (under, _) = c.get_prefix(b"/t/").await.unwrap();
        let keys: Vec<&[u8]> = under.iter().map(|kv| kv.key.as_slice()).collect();
        assert_eq!(keys, [&b"/t/alive/n1"[..], b"/t/rooms/a"]);

        assert_eq!(c.keepalive(lease).await.unwrap(), Some(2));
        assert_eq!(c.delete(b"/t/rooms/a").await.unwrap(), (1, rev + 2));
        assert_eq!(c.delete(b"/t/rooms/a").await.unwrap(), (0, rev + 2));

        // Revoking a lease takes its keys; the lease is then gone for every call.
        assert_eq!(c.revoke(lease).await.unwrap(), rev + 3);
        assert_eq!(c.get(b"/t/alive/n1").await.unwrap().0, None);
        assert_eq!(c.keepalive(lease).await.unwrap(), None);
        for err in [
            c.put(b"/t/x", b"", lease).await.unwrap_err(),
            c.revoke(lease).await.unwrap_err(),
        ] {
            assert!(err.is_lease_not_found(), "{err}");
            let EtcdError::Refused(body) = &err else {
                panic!("{err:?}")
            };
            assert_eq!(body.code, code::NOT_FOUND);
            assert_eq!(body.error, "etcdserver: requested lease not found");
        }
        // A path the gateway does not have: its mux's plain-text 404.
        assert_eq!(
            c.post_raw("/v3/kv/nothing", b"{}").await.unwrap(),
            (404, b"Not Found\n".to_vec())
        );
        let dup = TxnRequest {
            success: vec![
                RequestOp::RequestPut(PutRequest {
                    key: b"/t/d".to_vec(),
                    ..PutRequest::default()
                }),
                RequestOp::RequestPut(PutRequest {
                    key: b"/t/d".to_vec(),
                    ..PutRequest::default()
                }),
            ],
            ..TxnRequest::default()
        };
        let EtcdError::Refused(body) = c.txn(&dup).await.unwrap_err() else {
            panic!("a duplicate key is refused")
        };
        assert_eq!(
            (body.code, body.message.as_str()),
            (
                code::INVALID_ARGUMENT,
                "etcdserver: duplicate key given in txn request"
            )
        );
    });
}

/// A request that reached etcd but got no answer is `Indeterminate` (never retried); one that
/// could not connect anywhere is `Unreachable`.
#[test]
fn stopped_then_killed_etcd() {
    let mut etcd = Etcd::start();
    let c = client(&[etcd.url()], Duration::from_millis(700));
    let rt = runtime();
    rt.block_on(c.put(b"/t/k", b"1", 0)).unwrap();

    // Stopped, the kernel still accepts the connection and takes the request.
    etcd.signal(libc::SIGSTOP);
    let started = Instant::now();
    let err = rt.block_on(c.put(b"/t/k", b"2", 0)).unwrap_err();
    assert!(
        matches!(err, EtcdError::Indeterminate(_)) && err.may_have_applied(),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the timeout"
    );
    etcd.signal(libc::SIGCONT);
    // Whether that put landed is exactly what the caller cannot know; etcd answers again.
    let (kv, _) = rt.block_on(c.get(b"/t/k")).unwrap();
    assert!(matches!(kv.unwrap().value.as_slice(), b"1" | b"2"));

    etcd.kill();
    let err = rt.block_on(c.put(b"/t/k", b"3", 0)).unwrap_err();
    assert!(
        matches!(&err, EtcdError::Unreachable(m) if m.contains(&etcd.url())),
        "{err:?}"
    );
    assert!(!err.may_have_applied());
}

/// A dead endpoint is skipped, and the client stays with the one that worked.
#[test]
fn endpoint_fallback() {
    let etcd = Etcd::start();
    let dead_port = free_port();
    let dead = format!("http://127.0.0.1:{dead_port}");
    let c = client(&[dead.clone(), etcd.url()], Duration::from_secs(2));
    let rt = runtime();
    assert!(rt.block_on(c.put(b"/t/k", b"v", 0)).is_ok());

    // Now the dead port accepts and never answers: a client that went back to it would time
    // out with an indeterminate put; one that stays with the live endpoint does not notice.
    let blackhole = TcpListener::bind(("127.0.0.1", dead_port)).expect("rebind the dead port");
    for _ in 0..3 {
        let (kv, _) = rt
            .block_on(c.get(b"/t/k"))
            .expect("served by the live endpoint");
        assert_eq!(kv.unwrap().value, b"v");
    }
    drop(blackhole);

    // Nothing reachable: each endpoint tried once, both named.
    let both_dead = client(
        &[dead.clone(), format!("http://127.0.0.1:{}", free_port())],
        Duration::from_secs(2),
    );
    let err = rt.block_on(both_dead.get(b"/t/k")).unwrap_err();
    assert!(
        matches!(&err, EtcdError::Unreachable(m) if m.contains(&dead) && m.matches("127.0.0.1").count() == 2),
        "{err:?}"
    );
}

/// The conformance scenario on real etcd gives `snapshots/etcd_conformance.txt` (written from
/// here with `ETCD_CONFORMANCE_WRITE=1`; never by hand). The model's unit test replays it.
#[test]
fn conformance_against_real_etcd() {
    let etcd = Etcd::start();
    let c = client(&[etcd.url()], Duration::from_secs(2));
    let mut runner = Runner::new();
    let transcript = runtime().block_on(async {
        loop {
            match runner.next_action() {
                Action::Post { path, body } => {
                    let (status, answer) = c
                        .post_raw(path, &body)
                        .await
                        .unwrap_or_else(|e| panic!("{path}: {e}"));
                    runner.answer(status, answer);
                }
                Action::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Action::Finished(result) => break result,
            }
        }
    });
    let transcript = transcript.unwrap_or_else(|e| panic!("the scenario failed on real etcd: {e}"));
    if std::env::var_os("ETCD_CONFORMANCE_WRITE").is_some_and(|v| v == "1") {
        std::fs::write(EXPECTED, &transcript).expect("write the expected transcript");
        return;
    }
    let expected = std::fs::read_to_string(EXPECTED)
        .unwrap_or_else(|e| panic!("{EXPECTED}: {e} (write it with ETCD_CONFORMANCE_WRITE=1)"));
    if transcript != expected {
        let first = transcript
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(transcript.lines().count().min(expected.lines().count()));
        panic!(
            "real etcd no longer gives the committed transcript (first difference at line {}):\n  \
             etcd now: {}\n  committed: {}",
            first + 1,
            transcript.lines().nth(first).unwrap_or("<end>"),
            expected.lines().nth(first).unwrap_or("<end>")
        );
    }
}

// ---- The node driver (src/cluster/node) against real etcd ----

/// Short enough that a fence happens within a test: TTL 3 s, margin 1 s, so a node acts for 2 s
/// past its last acknowledged keepalive's send.
fn fast_lease() -> LeaseConfig {
    LeaseConfig {
        ttl: Duration::from_secs(3),
        keepalive_every: Duration::from_millis(500),
        margin: Duration::from_secs(1),
        retry_after: Duration::from_millis(250),
    }
    .checked()
    .expect("a valid lease config")
}

fn node_config(node_id: &str) -> NodeConfig {
    NodeConfig {
        node_id: node_id.into(),
        dist_addr: format!("127.0.0.1:7{}", node_id.len()),
        lease: fast_lease(),
        keys: Keys::default(),
    }
}

fn start_node(etcd: &Etcd, node_id: &str) -> Node {
    Node::start(
        client(&[etcd.url()], Duration::from_secs(1)),
        node_config(node_id),
    )
}

/// The first status `f` accepts, within `within`.
async fn status_where(
    rx: &mut tokio::sync::watch::Receiver<NodeStatus>,
    within: Duration,
    what: &str,
    f: impl FnMut(&NodeStatus) -> bool,
) -> NodeStatus {
    let seen = match tokio::time::timeout(within, rx.wait_for(f)).await {
        Ok(Ok(s)) => Some(*s),
        Ok(Err(_)) => panic!("the driver ended while waiting for {what}"),
        Err(_) => None,
    };
    seen.unwrap_or_else(|| panic!("no {what} within {within:?}; last {:?}", *rx.borrow()))
}

/// The first Acting of an incarnation numbered above `after`: (lease, deadline, incarnation).
async fn acting(node: &Node, after: u64) -> (i64, Instant, u64) {
    let mut rx = node.status();
    match status_where(
        &mut rx,
        Duration::from_secs(5),
        "Acting",
        |s| matches!(s, NodeStatus::Acting { incarnation: i, .. } if *i > after),
    )
    .await
    {
        NodeStatus::Acting {
            lease,
            deadline,
            incarnation,
        } => (lease, deadline, incarnation),
        other => unreachable!("{other:?}"),
    }
}

/// The node record once it carries `incarnation` (the registration's own write cannot).
async fn record_of(c: &EtcdClient, node_id: &str, incarnation: u64) -> (NodeRecord, i64) {
    eventually(
        Duration::from_secs(2),
        "the record carrying the incarnation",
        || node_record(c, node_id),
        |r| {
            r.as_ref()
                .is_some_and(|(r, _)| r.incarnation == incarnation)
        },
    )
    .await
    .unwrap()
}

/// The node record and the lease it is attached to.
async fn node_record(c: &EtcdClient, node_id: &str) -> Option<(NodeRecord, i64)> {
    let (kv, _) = c.get(&Keys::default().node(node_id)).await.unwrap();
    kv.map(|kv| (NodeRecord::from_value(&kv.value).unwrap(), kv.lease))
}

/// The alive key's value and lease.
async fn alive_key(c: &EtcdClient, node_id: &str) -> Option<(String, i64)> {
    let (kv, _) = c.get(&Keys::default().alive(node_id)).await.unwrap();
    kv.map(|kv| (String::from_utf8(kv.value).unwrap(), kv.lease))
}

/// Polls etcd (there is no watch in the client) until `f` holds, within `within`.
async fn eventually<T, Fut: std::future::Future<Output = T>>(
    within: Duration,
    what: &str,
    mut probe: impl FnMut() -> Fut,
    f: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let v = probe().await;
        if f(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bounded<F: std::future::Future>(fut: F) -> F::Output {
    runtime()
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), fut).await })
        .expect("the test took longer than 20 s")
}

/// A node registers both keys on its lease before it says Acting, keeps acting past its first
/// deadline by its keepalives, publishes its load, and takes its keys with it when stopped.
#[test]
fn node_registers_under_its_lease() {
    let etcd = Etcd::start();
    let c = client(&[etcd.url()], Duration::from_secs(2));
    bounded(async {
        let t0 = Instant::now();
        let node = start_node(&etcd, "n1");
        let (lease, first_deadline, inc) = acting(&node, 0).await;
        eprintln!(
            "node_registers: incarnation {inc} Acting after {:?}",
            t0.elapsed()
        );
        assert_eq!(node.acting_now(), Some((lease, inc)));
        assert_eq!(alive_key(&c, "n1").await, Some((lease_hex(lease), lease)));
        let record = NodeRecord {
            node_id: "n1".into(),
            dist_addr: node_config("n1").dist_addr,
            incarnation: inc,
            rooms: 0,
        };
        assert_eq!(record_of(&c, "n1", inc).await, (record.clone(), lease));

        node.set_load(3);
        let (published, _) = eventually(
            Duration::from_secs(3),
            "the new load",
            || node_record(&c, "n1"),
            |r| r.as_ref().is_some_and(|(r, _)| r.rooms == 3),
        )
        .await
        .unwrap();
        assert_eq!(published.incarnation, inc);

        // Time passing is the point here: keepalives must carry the node past its first deadline.
        tokio::time::sleep_until((first_deadline + Duration::from_millis(300)).into()).await;
        assert_eq!(node.acting_now(), Some((lease, inc)));

        node.stop().await;
        assert_eq!(alive_key(&c, "n1").await, None, "revoked with the lease");
        assert_eq!(node_record(&c, "n1").await, None);
        assert_eq!(c.keepalive(lease).await.unwrap(), None);
        eprintln!("node_registers: {:?} in all", t0.elapsed());
    });
}

/// Two nodes claiming the same names at once: exactly one wins each, the other is told the
/// winner and its epoch; a release with a stale record leaves the owner, the right one frees it.
#[test]
fn node_claims_race_to_one_owner() {
    let etcd = Etcd::start();
    bounded(async {
        let t0 = Instant::now();
        let (n1, n2) = (start_node(&etcd, "n1"), start_node(&etcd, "n22"));
        let (_, _, inc1) = acting(&n1, 0).await;
        let (_, _, inc2) = acting(&n2, 0).await;
        assert_ne!(inc1, inc2, "incarnations are unique cluster-wide");
        let mut wins = [0, 0];
        let mut owners = Vec::new();
        for i in 0..20u64 {
            let room = format!("race-{i}");
            let (a, b) = tokio::join!(n1.claim(&room, 100 + i), n2.claim(&room, 200 + i));
            let (a, b) = (a.unwrap(), b.unwrap());
            let (winner, epoch, owner) = match (a, b) {
                (ClaimOutcome::Won { epoch }, ClaimOutcome::Taken(owner)) => {
                    wins[0] += 1;
                    (n1.room_record(100 + i), epoch, owner)
                }
                (ClaimOutcome::Taken(owner), ClaimOutcome::Won { epoch }) => {
                    wins[1] += 1;
                    (n2.room_record(200 + i), epoch, owner)
                }
                other => panic!("{room}: not exactly one winner: {other:?}"),
            };
            assert_eq!(owner.record, winner, "{room}: the loser names the winner");
            assert_eq!(owner.epoch, epoch, "{room}: and its epoch");
            assert_eq!(n1.whereis(&room).await.unwrap(), Some(owner.clone()));
            owners.push((room, owner));
        }
        eprintln!("node_claims_race: wins n1/n2 = {wins:?}");

        let (room, owner) = &owners[0];
        let node = if owner.record.node_id == "n1" {
            &n1
        } else {
            &n2
        };
        let other = if owner.record.node_id == "n1" {
            &n2
        } else {
            &n1
        };
        let stale = node.room_record(owner.record.token + 1);
        assert!(!node.release(room, &stale).await.unwrap());
        assert!(!other
            .release(room, &other.room_record(owner.record.token))
            .await
            .unwrap());
        assert_eq!(other.whereis(room).await.unwrap().as_ref(), Some(owner));
        assert!(node.release(room, &owner.record).await.unwrap());
        assert_eq!(other.whereis(room).await.unwrap(), None);
        assert!(!node.release(room, &owner.record).await.unwrap(), "once");
        // The name is free again, under a newer epoch.
        let ClaimOutcome::Won { epoch } = other.claim(room, 999).await.unwrap() else {
            panic!("a released name can be claimed")
        };
        assert!(epoch > owner.epoch);
        n1.stop().await;
        // A dropped handle ends the driver too, fenced first, but leaves the lease to lapse.
        let mut status = n2.status();
        let (lease, _) = n2.acting_now().expect("n2 still acting");
        drop(n2);
        let ended = tokio::time::timeout(Duration::from_secs(2), async {
            while status.changed().await.is_ok() {}
        });
        ended
            .await
            .expect("the driver ends when its handle is dropped");
        assert_eq!(*status.borrow(), NodeStatus::Fenced { incarnation: inc2 });
        let c = client(&[etcd.url()], Duration::from_secs(2));
        assert_eq!(alive_key(&c, "n22").await, Some((lease_hex(lease), lease)));
        eprintln!("node_claims_race: {:?} in all", t0.elapsed());
    });
}

/// etcd stopped for longer than the TTL: the node is fenced by its deadline (not by etcd,
/// which cannot answer), refuses claims, and once etcd is back registers a new incarnation
/// whose lease replaces the old one's keys; the old lease's room lapses.
#[test]
fn node_fenced_by_a_stopped_etcd_comes_back_as_a_new_incarnation() {
    let etcd = Etcd::start();
    let c = client(&[etcd.url()], Duration::from_secs(2));
    let cfg = fast_lease();
    let window = cfg.ttl - cfg.margin;
    bounded(async {
        let t0 = Instant::now();
        let node = start_node(&etcd, "n1");
        let mut status = node.status();
        let (old, _, inc1) = acting(&node, 0).await;
        assert!(matches!(
            node.claim("kept", 1).await.unwrap(),
            ClaimOutcome::Won { .. }
        ));

        let stopped = Instant::now();
        etcd.signal(libc::SIGSTOP);
        let fenced = status_where(
            &mut status,
            window + Duration::from_secs(2),
            "Fenced",
            |s| matches!(s, NodeStatus::Fenced { .. }),
        )
        .await;
        let fenced_at = Instant::now();
        assert_eq!(fenced, NodeStatus::Fenced { incarnation: inc1 });
        // The last acknowledged keepalive was sent before the stop, so its deadline is at most
        // stop + TTL - margin; and one was sent within a keepalive period before the stop.
        let after_stop = fenced_at - stopped;
        eprintln!("node_fenced: Fenced {after_stop:?} after SIGSTOP (window {window:?})");
        assert!(
            after_stop <= window + Duration::from_millis(250),
            "fenced {after_stop:?} after the stop, past the deadline"
        );
        assert!(
            after_stop + cfg.keepalive_every + Duration::from_millis(250) >= window,
            "fenced {after_stop:?} after the stop: well before any deadline"
        );
        assert_eq!(node.acting_now(), None);
        let refused = Instant::now();
        assert_eq!(node.claim("new", 2).await, Err(NodeError::Fenced));
        assert!(
            refused.elapsed() < Duration::from_millis(100),
            "without asking etcd"
        );

        // Held past the lease's TTL, so etcd expires the old lease when it runs again.
        tokio::time::sleep_until((stopped + cfg.ttl + Duration::from_secs(1)).into()).await;
        etcd.signal(libc::SIGCONT);
        let resumed = Instant::now();
        let (new, _, inc2) = acting(&node, inc1).await;
        eprintln!(
            "node_fenced: incarnation {inc2} (after {inc1}) Acting {:?} after SIGCONT",
            resumed.elapsed()
        );
        assert_ne!(new, old);
        assert_eq!(node.acting_now(), Some((new, inc2)));
        assert_eq!(alive_key(&c, "n1").await, Some((lease_hex(new), new)));
        let (_, lease) = record_of(&c, "n1", inc2).await;
        assert_eq!(lease, new);

        // The old incarnation's room goes with its lease (lapsed, or revoked once incarnation 2
        // acted), and the name is free to claim.
        let gone = eventually(
            Duration::from_secs(5),
            "the old lease's room gone",
            || node.whereis("kept"),
            |o| matches!(o, Ok(None)),
        )
        .await;
        assert_eq!(gone, Ok(None));
        assert_eq!(c.keepalive(old).await.unwrap(), None);
        assert!(matches!(
            node.claim("kept", 3).await.unwrap(),
            ClaimOutcome::Won { .. }
        ));
        node.stop().await;
        eprintln!("node_fenced: {:?} in all", t0.elapsed());
    });
}

/// etcd stopped just past the node's deadline but well within its lease's TTL: once the new
/// incarnation acts, the fenced lease is revoked at once, so its room's name is free seconds
/// before the lease would have lapsed, and the new incarnation's keys stay.
#[test]
fn node_revokes_its_fenced_lease_once_a_new_incarnation_acts() {
    let etcd = Etcd::start();
    let c = client(&[etcd.url()], Duration::from_secs(2));
    // A TTL long past the deadline, so a lapse cannot pass for a revoke.
    let cfg = LeaseConfig {
        ttl: Duration::from_secs(5),
        keepalive_every: Duration::from_millis(500),
        margin: Duration::from_secs(3),
        retry_after: Duration::from_millis(250),
    }
    .checked()
    .expect("a valid lease config");
    bounded(async {
        let t0 = Instant::now();
        let node = Node::start(
            client(&[etcd.url()], Duration::from_secs(1)),
            NodeConfig {
                lease: cfg,
                ..node_config("n1")
            },
        );
        let mut status = node.status();
        let (old, _, inc1) = acting(&node, 0).await;
        assert!(matches!(
            node.claim("kept", 1).await.unwrap(),
            ClaimOutcome::Won { .. }
        ));

        let stopped = Instant::now();
        etcd.signal(libc::SIGSTOP);
        status_where(
            &mut status,
            cfg.ttl - cfg.margin + Duration::from_secs(2),
            "Fenced",
            |s| *s == NodeStatus::Fenced { incarnation: inc1 },
        )
        .await;
        etcd.signal(libc::SIGCONT);
        let resumed = Instant::now();
        let (new, _, inc2) = acting(&node, inc1).await;
        let acted = Instant::now();
        assert_ne!(new, old);

        let gone = eventually(
            Duration::from_secs(1),
            "the fenced lease's room gone",
            || node.whereis("kept"),
            |o| matches!(o, Ok(None)),
        )
        .await;
        let freed = Instant::now();
        assert_eq!(gone, Ok(None));
        eprintln!(
            "node_revokes: fenced {:?} after SIGSTOP; Acting {:?} after SIGCONT; name free {:?} \
             after Acting, {:?} after SIGSTOP (TTL {:?})",
            resumed - stopped,
            acted - resumed,
            freed - acted,
            freed - stopped,
            cfg.ttl
        );
        // The last keepalive etcd acknowledged was sent at most a period before the stop: on
        // its own, the lease would have lived at least until then.
        assert!(
            freed < stopped + cfg.ttl - cfg.keepalive_every,
            "the name was freed {:?} after the stop: by the lease lapsing, not by a revoke",
            freed - stopped
        );
        assert_eq!(
            c.keepalive(old).await.unwrap(),
            None,
            "the old lease is gone"
        );
        assert!(matches!(
            node.claim("kept", 2).await.unwrap(),
            ClaimOutcome::Won { .. }
        ));
        // The revoke took nothing of the incarnation that acts.
        assert_eq!(node.acting_now(), Some((new, inc2)));
        assert_eq!(alive_key(&c, "n1").await, Some((lease_hex(new), new)));
        assert_eq!(record_of(&c, "n1", inc2).await.1, new);
        assert_eq!(
            c.keepalive(new).await.unwrap(),
            Some(cfg.ttl.as_secs() as i64)
        );
        node.stop().await;
        eprintln!("node_revokes: {:?} in all", t0.elapsed());
    });
}
