use std::collections::HashSet;

use super::*;
use crate::turn::auth::{long_term_key, Key};

const SFU: &str = "127.0.0.1:40000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The SFU's one socket is the only permitted peer; relays are numbered.
struct FakeEnv {
    ips: HashSet<IpAddr>,
    peers: HashSet<SocketAddr>,
    opened: Vec<AllocId>,
    fail: Option<OpenError>,
}

impl Default for FakeEnv {
    fn default() -> Self {
        FakeEnv {
            ips: [addr(SFU).ip()].into(),
            peers: [addr(SFU)].into(),
            opened: Vec::new(),
            fail: None,
        }
    }
}

impl Env for FakeEnv {
    type Relay = u64;
    fn permit_ip(&self, ip: IpAddr) -> bool {
        self.ips.contains(&ip)
    }
    fn permit_peer(&self, addr: SocketAddr) -> bool {
        self.peers.contains(&addr)
    }
    fn open_relay(
        &mut self,
        id: AllocId,
        _client: SocketAddr,
        _ipv6: bool,
    ) -> Result<(u64, SocketAddr), OpenError> {
        if let Some(e) = self.fail {
            return Err(e);
        }
        self.opened.push(id);
        Ok((
            id.seq,
            SocketAddr::new(addr(SFU).ip(), 50000 + id.seq as u16),
        ))
    }
}

/// A test world: the core, its environment and the clock.
struct World {
    core: Core<u64>,
    env: FakeEnv,
    t0: Instant,
    now: Instant,
    unix: u64,
    txid: u32,
}

/// A client holding one peer's credentials.
#[derive(Clone)]
struct Client {
    addr: SocketAddr,
    username: String,
    key: Key,
    nonce: String,
}

/// A decoded answer.
#[derive(Debug)]
struct Answer {
    class: Class,
    code: Option<u16>,
    raw: Vec<u8>,
}

impl Answer {
    fn msg(&self) -> Message<'_> {
        Message::decode(&self.raw).unwrap()
    }
    fn ok(&self) -> bool {
        self.class == Class::Success
    }
}

fn world_with(cfg: Config) -> World {
    let t0 = Instant::now();
    World {
        core: Core::new(cfg, b"secret", t0),
        env: FakeEnv::default(),
        t0,
        now: t0,
        unix: 1_000_000,
        txid: 0,
    }
}

fn world() -> World {
    world_with(Config::default())
}

impl World {
    fn client(&mut self, peer: &str, at: &str) -> Client {
        let issued = self.core.issue(peer, self.unix + 3600);
        let from = addr(at);
        let secs = self.now.duration_since(self.t0).as_secs();
        Client {
            addr: from,
            key: long_term_key(&issued.username, "videoroom", &issued.password),
            username: issued.username,
            nonce: self.core.book.nonce(from, secs),
        }
    }

    fn next_txid(&mut self) -> [u8; 12] {
        self.txid += 1;
        let mut id = [0u8; 12];
        id[8..].copy_from_slice(&self.txid.to_be_bytes());
        id
    }

    /// The same credentials used from another transport address (with its own nonce).
    fn at(&self, c: &Client, at: &str) -> Client {
        let from = addr(at);
        let secs = self.now.duration_since(self.t0).as_secs();
        Client {
            addr: from,
            nonce: self.core.book.nonce(from, secs),
            ..c.clone()
        }
    }

    /// Sends a request from `c` built by `attrs`, authenticated unless `auth` is false.
    fn request_with(
        &mut self,
        c: &Client,
        method: u16,
        txid: [u8; 12],
        auth: bool,
        attrs: impl FnOnce(&mut Writer<'_>),
    ) -> Answer {
        let mut buf = Vec::new();
        {
            let mut w = Writer::new(&mut buf, method, Class::Request, &txid);
            attrs(&mut w);
            if auth {
                w.attr(attr::USERNAME, c.username.as_bytes())
                    .attr(attr::REALM, b"videoroom")
                    .attr(attr::NONCE, c.nonce.as_bytes())
                    .integrity(&c.key)
                    .fingerprint();
            }
        }
        match self
            .core
            .handle_client(self.now, self.unix, c.addr, &buf, &mut self.env)
        {
            Step::Reply(raw) => {
                let m = Message::decode(&raw).unwrap();
                assert_eq!(m.transaction_id(), txid);
                let code = m
                    .get(attr::ERROR_CODE)
                    .map(|v| u16::from(v[2]) * 100 + u16::from(v[3]));
                Answer {
                    class: m.class,
                    code,
                    raw,
                }
            }
            other => panic!("a request got {other:?}"),
        }
    }

    fn request(&mut self, c: &Client, method: u16, attrs: impl FnOnce(&mut Writer<'_>)) -> Answer {
        let txid = self.next_txid();
        self.request_with(c, method, txid, true, attrs)
    }

    fn allocate(&mut self, c: &Client) -> Answer {
        self.request(c, method::ALLOCATE, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        })
    }

    fn permit(&mut self, c: &Client, peers: &[&str]) -> Answer {
        self.request(c, method::CREATE_PERMISSION, |w| {
            for p in peers {
                w.xor_address(attr::XOR_PEER_ADDRESS, addr(p));
            }
        })
    }

    fn bind(&mut self, c: &Client, ch: u16, peer: &str) -> Answer {
        self.request(c, method::CHANNEL_BIND, |w| {
            w.attr(attr::CHANNEL_NUMBER, &[(ch >> 8) as u8, ch as u8, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, addr(peer));
        })
    }

    fn refresh(&mut self, c: &Client, lifetime: u32) -> Answer {
        self.request(c, method::REFRESH, |w| {
            w.u32(attr::LIFETIME, lifetime);
        })
    }

    fn channel_data(
        &mut self,
        c: &Client,
        ch: u16,
        data: &[u8],
    ) -> Option<(u64, SocketAddr, Vec<u8>)> {
        let mut buf = Vec::new();
        stun::write_channel_data(&mut buf, ch, data);
        self.relayed(c, &buf)
    }

    fn relayed(&mut self, c: &Client, buf: &[u8]) -> Option<(u64, SocketAddr, Vec<u8>)> {
        match self
            .core
            .handle_client(self.now, self.unix, c.addr, buf, &mut self.env)
        {
            Step::Relay { via, to, data } => Some((via, to, data.to_vec())),
            Step::Nothing => None,
            Step::Reply(r) => panic!("data got a reply {r:?}"),
        }
    }

    fn peer_sends(
        &mut self,
        id: AllocId,
        from: &str,
        data: &[u8],
    ) -> Option<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        self.core
            .handle_peer(self.now, id, addr(from), data, &self.env, &mut out)
            .map(|to| (to, out))
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.unix += secs;
        self.core.handle_timeout(self.now);
    }
}

#[test]
fn an_unauthenticated_request_is_challenged_and_leaves_no_state() {
    let mut w = world();
    let c = w.client("peer-a", "192.0.2.1:5000");
    let txid = w.next_txid();
    let a = w.request_with(&c, method::ALLOCATE, txid, false, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(a.code, Some(401));
    let m = a.msg();
    assert_eq!(m.text(attr::REALM), Some("videoroom"));
    let nonce = m.text(attr::NONCE).unwrap();
    assert_eq!(nonce.len(), 32);
    // A flood of them (spoofable sources) costs nothing.
    for port in 0..10_000u16 {
        let spoofed = Client {
            addr: SocketAddr::new(addr("198.51.100.1:0").ip(), port),
            ..c.clone()
        };
        let txid = w.next_txid();
        let a = w.request_with(&spoofed, method::ALLOCATE, txid, false, |_| {});
        assert_eq!(a.code, Some(401));
    }
    assert_eq!(w.core.stats().allocations, 0);
    assert!(w.env.opened.is_empty());
    assert!(w.core.allocations.is_empty() && w.core.per_peer.is_empty());
}

#[test]
fn allocate_gives_a_relayed_address_and_a_retransmission_the_same_answer() {
    let mut w = world();
    let c = w.client("peer-a", "192.0.2.1:5000");
    let txid = w.next_txid();
    let alloc = |w: &mut World, txid| {
        w.request_with(&c, method::ALLOCATE, txid, true, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        })
    };
    let a = alloc(&mut w, txid);
    assert!(a.ok(), "{a:?}");
    let m = a.msg();
    assert!(m.integrity_ok(&c.key));
    let relayed = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relayed, addr("127.0.0.1:50001"));
    assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(c.addr));
    assert_eq!(m.u32_attr(attr::LIFETIME), Some(600));
    let again = alloc(&mut w, txid);
    assert!(again.ok());
    assert_eq!(
        again.msg().xor_address(attr::XOR_RELAYED_ADDRESS),
        Some(relayed)
    );
    assert_eq!(w.env.opened.len(), 1, "a retransmission opens nothing");
    let other = w.next_txid();
    assert_eq!(alloc(&mut w, other).code, Some(437));
}

#[test]
fn allocate_checks_transport_and_family() {
    let mut w = world();
    let c = w.client("peer-a", "192.0.2.1:5000");
    let no_transport = w.request(&c, method::ALLOCATE, |_| {});
    assert_eq!(no_transport.code, Some(400));
    let tcp = w.request(&c, method::ALLOCATE, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_eq!(tcp.code, Some(442));
    w.env.fail = Some(OpenError::Family);
    let v6 = w.request(&c, method::ALLOCATE, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(v6.code, Some(440));
    // Refusals to an authenticated client are signed with its key.
    assert!(v6.msg().integrity_ok(&c.key));
}

#[test]
fn unknown_required_attributes_are_named_in_a_420() {
    let mut w = world();
    let c = w.client("peer-a", "192.0.2.1:5000");
    let a = w.request(&c, method::ALLOCATE, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80]);
    });
    assert_eq!(a.code, Some(420));
    assert_eq!(
        a.msg().get(attr::UNKNOWN_ATTRIBUTES),
        Some(&[0x00, 0x18][..])
    );
}

#[test]
fn permissions_are_refused_for_anything_but_the_sfu() {
    let mut w = world();
    let c = w.client("peer-a", "192.0.2.1:5000");
    assert!(w.allocate(&c).ok());
    for bad in [
        "169.254.169.254:80",
        "10.0.0.1:22",
        "192.168.1.1:53",
        "0.0.0.0:1",
        "255.255.255.255:9",
        "[::1]:3478",
        "192.0.2.1:5000", // the client itself
    ] {
        let a = w.permit(&c, &[bad]);
        assert_eq!(a.code, Some(403), "{bad}");
        assert!(a.msg().integrity_ok(&c.key));
    }
    // All or nothing: one forbidden address refuses the SFU's too.
    assert_eq!(w.permit(&c, &[SFU, "10.0.0.1:1"]).code, Some(403));
    assert!(w
        .peer_sends(
            AllocId {
                client: c.addr,
                seq: 1
            },
            SFU,
            b"x"
        )
        .is_none());
    assert!(w.permit(&c, &[SFU]).ok());
    assert_eq!(w.core.stats().forbidden, 8);
}

#[test]
fn a_permitted_ip_still_reaches_only_the_sfu_sockets() {
    // The SFU's IP is loopback: a permission for it must not open every loopback service.
    let mut w = world();
    let c = w.client("peer-a", "192.0.2.1:5000");
    assert!(w.allocate(&c).ok());
    assert!(w.permit(&c, &[SFU]).ok());
    let id = AllocId {
        client: c.addr,
        seq: 1,
    };
    for other in ["127.0.0.1:22", "127.0.0.1:3478", "127.0.0.1:40001"] {
        assert_eq!(w.bind(&c, 0x4001, other).code, Some(403), "{other}");
        let send = |w: &mut World| {
            let mut buf = Vec::new();
            let txid = w.next_txid();
            Writer::new(&mut buf, method::SEND, Class::Indication, &txid)
                .xor_address(attr::XOR_PEER_ADDRESS, addr(other))
                .attr(attr::DATA, b"probe");
            w.relayed(&c, &buf)
        };
        assert_eq!(send(&mut w), None, "send to {other}");
        assert_eq!(w.peer_sends(id, other, b"reply"), None, "from {other}");
    }
    // The SFU itself: a Send indication goes through, its answer comes back as Data.
    let mut buf = Vec::new();
    let txid = w.next_txid();
    Writer::new(&mut buf, method::SEND, Class::Indication, &txid)
        .xor_address(attr::XOR_PEER_ADDRESS, addr(SFU))
        .attr(attr::DATA, b"stun");
    assert_eq!(w.relayed(&c, &buf), Some((1, addr(SFU), b"stun".to_vec())));
    let (to, data) = w.peer_sends(id, SFU, b"answer").unwrap();
    assert_eq!(to, c.addr);
    let m = Message::decode(&data).unwrap();
    assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(addr(SFU)));
    assert_eq!(m.get(attr::DATA), Some(&b"answer"[..]));
}

#[test]
fn channels_carry_data_both_ways_once_bound() {
    let mut w = world();
    let c = w.client("peer-a", "192.0.2.1:5000");
    assert!(w.allocate(&c).ok());
    assert_eq!(w.channel_data(&c, 0x4001, b"early"), None, "no channel yet");
    let bound = w.bind(&c, 0x4001, SFU);
    assert!(bound.ok(), "{bound:?}");
    assert!(bound.msg().integrity_ok(&c.key));
    assert_eq!(
        w.channel_data(&c, 0x4001, b"rtp"),
        Some((1, addr(SFU), b"rtp".to_vec()))
    );
    assert_eq!(w.channel_data(&c, 0x4002, b"rtp"), None, "unbound channel");
    let id = AllocId {
        client: c.addr,
        seq: 1,
    };
    assert_eq!(
        w.peer_sends(id, SFU, b"back"),
        Some((c.addr, vec![0x40, 0x01, 0, 4, b'b', b'a', b'c', b'k']))
    );
    // A stale relay socket of an older allocation of the same client feeds nothing.
    assert_eq!(w.peer_sends(AllocId { seq: 7, ..id }, SFU, b"old"), None);
    // A channel keeps its peer, a peer its channel; out-of-range numbers are refused.
    w.env.peers.insert(addr("127.0.0.1:40002"));
    assert_eq!(w.bind(&c, 0x4001, "127.0.0.1:40002").code, Some(400));
    assert_eq!(w.bind(&c, 0x4003, SFU).code, Some(400));
    assert_eq!(w.bind(&c, 0x3FFF, "127.0.0.1:40002").code, Some(400));
    assert!(
        w.bind(&c, 0x4001, SFU).ok(),
        "a refresh of the same binding"
    );
}

#[test]
fn a_socket_the_sfu_closed_is_no_longer_reached_through_its_channel() {
    let mut w = world();
    let c = w.client("peer-a", "192.0.2.1:5000");
    assert!(w.allocate(&c).ok());
    assert!(w.bind(&c, 0x4001, SFU).ok());
    // The SFU socket closes; another process could now own that port.
    w.env.peers.clear();
    assert_eq!(w.channel_data(&c, 0x4001, b"rtp"), None);
    let id = AllocId {
        client: c.addr,
        seq: 1,
    };
    assert_eq!(w.peer_sends(id, SFU, b"x"), None);
}

#[test]
fn requests_on_someone_elses_allocation_or_without_one_are_refused() {
    let mut w = world();
    let a = w.client("peer-a", "192.0.2.1:5000");
    let b = w.client("peer-b", "192.0.2.2:5000");
    assert!(w.allocate(&a).ok());
    let b_on_a = w.at(&b, "192.0.2.1:5000");
    assert_eq!(w.refresh(&b_on_a, 600).code, Some(441));
    assert_eq!(w.permit(&b, &[SFU]).code, Some(437));
    assert_eq!(w.refresh(&b, 600).code, Some(437));
}

#[test]
fn bad_integrity_or_nonce_are_challenged_again() {
    let mut w = world();
    let c = w.client("peer-a", "192.0.2.1:5000");
    let wrong_key = Client {
        key: [0; 16],
        ..c.clone()
    };
    assert_eq!(w.allocate(&wrong_key).code, Some(401));
    let forged_nonce = Client {
        nonce: "0".repeat(32),
        ..c.clone()
    };
    assert_eq!(w.allocate(&forged_nonce).code, Some(438));
    w.now += Duration::from_secs(601);
    let stale = w.allocate(&c);
    assert_eq!(stale.code, Some(438));
    let fresh = Client {
        nonce: stale.msg().text(attr::NONCE).unwrap().to_owned(),
        ..c.clone()
    };
    assert!(w.allocate(&fresh).ok());
    // Missing USERNAME/REALM/NONCE with an integrity attribute is malformed.
    let txid = w.next_txid();
    let a = w.request_with(&c, method::ALLOCATE, txid, false, |w| {
        w.attr(attr::USERNAME, c.username.as_bytes())
            .integrity(&c.key);
    });
    assert_eq!(a.code, Some(400));
}

#[test]
fn each_peer_has_an_allocation_quota_and_the_server_a_capacity() {
    let mut w = world_with(Config {
        max_allocations_per_peer: 2,
        max_allocations: 3,
        idle_eviction: Duration::from_secs(10),
        ..Config::default()
    });
    let a1 = w.client("peer-a", "192.0.2.1:1");
    let a2 = w.at(&a1, "192.0.2.1:2");
    let a3 = w.at(&a1, "192.0.2.1:3");
    assert!(w.allocate(&a1).ok());
    assert!(w.allocate(&a2).ok());
    let refused = w.allocate(&a3);
    assert_eq!(refused.code, Some(486));
    assert!(refused.msg().integrity_ok(&a1.key));
    // Releasing one (Refresh with lifetime 0) makes room again.
    let released = w.refresh(&a2, 0);
    assert!(released.ok());
    assert_eq!(released.msg().u32_attr(attr::LIFETIME), Some(0));
    assert_eq!(w.core.take_closed(), vec![2]);
    assert!(w.allocate(&a3).ok());
    let b1 = w.client("peer-b", "192.0.2.2:1");
    let b2 = w.at(&b1, "192.0.2.2:2");
    assert!(w.allocate(&b1).ok());
    assert_eq!(w.allocate(&b2).code, Some(508));
    assert_eq!(w.core.stats().quota_refused, 2);
}

#[test]
fn revoking_a_peer_closes_its_allocations_and_kills_its_credential() {
    let mut w = world();
    let a = w.client("peer-a", "192.0.2.1:1");
    let a2 = w.at(&a, "192.0.2.1:2");
    let b = w.client("peer-b", "192.0.2.2:1");
    assert!(w.allocate(&a).ok());
    assert!(w.allocate(&a2).ok());
    assert!(w.allocate(&b).ok());
    assert!(w.bind(&a, 0x4001, SFU).ok());
    w.core.revoke_peer("peer-a");
    let mut closed = w.core.take_closed();
    closed.sort();
    assert_eq!(closed, vec![1, 2]);
    assert_eq!(w.channel_data(&a, 0x4001, b"rtp"), None);
    assert_eq!(
        w.allocate(&a).code,
        Some(401),
        "the credential died with its peer"
    );
    assert_eq!(w.refresh(&a, 600).code, Some(401));
    assert!(w.refresh(&b, 600).ok(), "other peers are untouched");
    assert_eq!(w.core.stats().allocations, 1);
    assert_eq!(w.core.stats().live_peers, 1);
}

#[test]
fn an_expired_credential_keeps_its_allocations_but_makes_no_new_ones() {
    let mut w = world();
    let c = w.client("peer-a", "192.0.2.1:1");
    assert!(w.allocate(&c).ok());
    w.unix += 3601;
    assert!(w.refresh(&c, 600).ok());
    let other = w.at(&c, "192.0.2.1:2");
    assert_eq!(w.allocate(&other).code, Some(401));
}

#[test]
fn lifetimes_end_allocations_permissions_and_channels() {
    let mut w = world();
    let c = w.client("peer-a", "192.0.2.1:1");
    assert!(w.allocate(&c).ok());
    assert!(w.bind(&c, 0x4001, SFU).ok());
    let id = AllocId {
        client: c.addr,
        seq: 1,
    };
    w.advance(299);
    assert!(w.channel_data(&c, 0x4001, b"x").is_some());
    // The permission (300 s) lapses before the channel (600 s): data stops.
    w.advance(2);
    assert!(w.channel_data(&c, 0x4001, b"x").is_none());
    assert!(w.peer_sends(id, SFU, b"x").is_none());
    w.advance(298);
    assert!(
        w.core.take_closed().is_empty(),
        "the allocation lives 600 s"
    );
    w.advance(1);
    assert_eq!(w.core.take_closed(), vec![1]);
    assert_eq!(w.core.stats().allocations, 0);
}

#[test]
fn lifetimes_are_clamped_to_default_and_maximum() {
    let mut w = world();
    let c = w.client("peer-a", "192.0.2.1:1");
    assert!(w.allocate(&c).ok());
    let short = w.refresh(&c, 10);
    assert_eq!(short.msg().u32_attr(attr::LIFETIME), Some(600));
    let long = w.refresh(&c, 100_000);
    assert_eq!(long.msg().u32_attr(attr::LIFETIME), Some(3600));
}

#[test]
fn permissions_and_channels_per_allocation_are_bounded() {
    let mut w = world_with(Config {
        max_channels: 2,
        ..Config::default()
    });
    let c = w.client("peer-a", "192.0.2.1:1");
    for p in ["127.0.0.1:40001", "127.0.0.1:40002", "127.0.0.1:40003"] {
        w.env.peers.insert(addr(p));
    }
    assert!(w.allocate(&c).ok());
    assert!(w.bind(&c, 0x4001, "127.0.0.1:40001").ok());
    assert!(w.bind(&c, 0x4002, "127.0.0.1:40002").ok());
    assert_eq!(w.bind(&c, 0x4003, "127.0.0.1:40003").code, Some(508));
}

#[test]
fn binding_requests_are_answered_and_garbage_is_dropped() {
    let mut w = world();
    let c = w.client("peer-a", "192.0.2.1:1");
    let mut buf = Vec::new();
    Writer::new(&mut buf, method::BINDING, Class::Request, &[9; 12]);
    match w
        .core
        .handle_client(w.now, w.unix, c.addr, &buf, &mut w.env)
    {
        Step::Reply(r) => {
            let m = Message::decode(&r).unwrap();
            assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(c.addr));
        }
        other => panic!("{other:?}"),
    }
    for junk in [
        &b""[..],
        b"\x00\x01",
        b"\xff\xff\xff\xff",
        b"\x40\x01\x00\x10abc",
    ] {
        assert!(w.relayed(&c, junk).is_none());
    }
    // A response or an unknown indication from a client is ignored.
    let mut resp = Vec::new();
    Writer::new(&mut resp, method::ALLOCATE, Class::Success, &[1; 12]);
    assert!(w.relayed(&c, &resp).is_none());
}

#[test]
fn at_its_quota_a_peer_replaces_its_longest_idle_allocation() {
    // Chromium keeps every old ICE generation's allocation until it leaves: the quota must
    // not strand it, and must not let anyone hold more than the quota either.
    let mut w = world_with(Config {
        max_allocations_per_peer: 2,
        idle_eviction: Duration::from_secs(10),
        ..Config::default()
    });
    let old = w.client("peer-a", "192.0.2.1:1");
    assert!(w.allocate(&old).ok());
    assert!(w.bind(&old, 0x4001, SFU).ok());
    w.advance(5);
    let current = w.at(&old, "192.0.2.1:2");
    assert!(w.allocate(&current).ok());
    assert!(w.bind(&current, 0x4001, SFU).ok());
    // Both used within the idle time: the quota holds.
    let third = w.at(&old, "192.0.2.1:3");
    assert_eq!(w.allocate(&third).code, Some(486));
    // The current one keeps carrying media, the old one falls idle.
    for _ in 0..3 {
        w.advance(4);
        assert!(w.channel_data(&current, 0x4001, b"rtp").is_some());
    }
    let third = w.at(&old, "192.0.2.1:3");
    assert!(w.allocate(&third).ok(), "the idle one made room");
    assert_eq!(w.core.take_closed(), vec![1]);
    assert_eq!(w.core.stats().evicted, 1);
    assert!(
        w.channel_data(&current, 0x4001, b"rtp").is_some(),
        "the live one is untouched"
    );
    assert_eq!(w.channel_data(&old, 0x4001, b"rtp"), None);
    // Another peer's idle allocations are never taken for this one.
    let b = w.client("peer-b", "192.0.2.2:1");
    assert!(w.allocate(&b).ok());
    w.advance(11);
    let fourth = w.at(&old, "192.0.2.1:4");
    assert!(w.allocate(&fourth).ok());
    assert!(w.refresh(&w.at(&b, "192.0.2.2:1"), 600).ok());
}

#[test]
fn one_source_cannot_take_the_capacity_with_many_peers() {
    // A client joined as many peers (each with its own credential) from one address.
    let mut w = world_with(Config {
        max_allocations_per_source: 3,
        max_allocations: 10,
        ..Config::default()
    });
    for (i, peer) in ["p1", "p2", "p3"].iter().enumerate() {
        let c = w.client(peer, &format!("192.0.2.1:{}", 1000 + i));
        assert!(w.allocate(&c).ok(), "{peer}");
    }
    let fourth = w.client("p4", "192.0.2.1:2000");
    assert_eq!(
        w.allocate(&fourth).code,
        Some(486),
        "the source is at its quota"
    );
    // IPv6 sources are counted per /64: another address in the block is the same source.
    let mut v6 = world_with(Config {
        max_allocations_per_source: 1,
        ..Config::default()
    });
    let a = v6.client("a", "[2001:db8:1:2::1]:5000");
    let b = v6.client("b", "[2001:db8:1:2::ffff]:5000");
    let other_block = v6.client("c", "[2001:db8:1:3::1]:5000");
    assert!(v6.allocate(&a).ok());
    assert_eq!(v6.allocate(&b).code, Some(486));
    assert!(v6.allocate(&other_block).ok());
    // On a dual-stack socket IPv4 clients arrive v4-mapped: each is still its own source.
    let mut dual = world_with(Config {
        max_allocations_per_source: 1,
        ..Config::default()
    });
    let x = dual.client("x", "[::ffff:192.0.2.1]:5000");
    let y = dual.client("y", "[::ffff:192.0.2.2]:5000");
    let x2 = dual.client("x2", "192.0.2.1:6000");
    assert!(dual.allocate(&x).ok());
    assert!(
        dual.allocate(&y).ok(),
        "another IPv4 client is another source"
    );
    assert_eq!(
        dual.allocate(&x2).code,
        Some(486),
        "mapped or not, the same address"
    );
    // Someone else is not held back.
    let other = w.client("p5", "192.0.2.9:1000");
    assert!(w.allocate(&other).ok());
    // Once the source's oldest has been idle long enough, it makes way.
    w.advance(9);
    let fourth = w.at(&fourth, "192.0.2.1:2000");
    assert!(w.allocate(&fourth).ok());
    assert_eq!(w.core.stats().evicted, 1);
}

#[test]
fn at_capacity_the_longest_idle_allocation_makes_way() {
    let mut w = world_with(Config {
        max_allocations: 2,
        ..Config::default()
    });
    let a = w.client("a", "192.0.2.1:1");
    let b = w.client("b", "192.0.2.2:1");
    assert!(w.allocate(&a).ok());
    assert!(w.allocate(&b).ok());
    assert!(w.bind(&b, 0x4001, SFU).ok());
    let c = w.client("c", "192.0.2.3:1");
    assert_eq!(w.allocate(&c).code, Some(508), "nobody idle yet");
    w.advance(5);
    assert!(w.channel_data(&b, 0x4001, b"rtp").is_some());
    w.advance(4);
    let c = w.at(&c, "192.0.2.3:1");
    assert!(w.allocate(&c).ok(), "a's allocation sat idle for 9 s");
    assert_eq!(w.core.take_closed(), vec![1]);
    assert!(
        w.channel_data(&b, 0x4001, b"rtp").is_some(),
        "b's is in use"
    );
}
