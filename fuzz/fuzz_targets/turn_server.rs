//! The integrated TURN server's sans-IO core (`videoroom::turn::core::Core`): datagrams from a
//! few clients and from both sides of their relays, with time passing and peers leaving.
//!
//! The script is chunks split on `b"\xffTRN"`; a chunk is `[who, step, flags, datagram...]`:
//! `who` picks the client (and, for relay-side datagrams, the sender), `step` advances the
//! clock by up to 7 s (lifetimes, nonces, idle eviction), and `flags` says what the chunk is:
//! bit 0 signs a STUN datagram with the client's peer's credentials and the nonce the server
//! last gave that client (the fuzzer cannot compute an HMAC, so without this it would never
//! get past the 401), bit 1 makes it a datagram arriving at the client's relay instead, bit 2
//! revokes the client's peer after the datagram.
//!
//! Checked, besides no panic: every reply decodes as STUN with the request's transaction id,
//! and an error reply carries an error code; a relayed datagram goes only to a permitted SFU
//! socket, through a relay the core opened and has not closed; a datagram from a relay's far
//! side reaches a client only from a permitted SFU socket, framed as ChannelData or a Data
//! indication; allocations stay within the capacity; every relay is closed at most once, and
//! all of them once the clock runs past every lifetime.
#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use videoroom::turn::auth::long_term_key;
use videoroom::turn::core::{AllocId, Config, Core, Env, OpenError, Step};
use videoroom::turn::stun::{self, attr, Class, Message, Writer};

const SEPARATOR: &[u8] = b"\xffTRN";
const SFU: [&str; 2] = ["127.0.0.1:40000", "127.0.0.1:40001"];
const OUTSIDERS: [&str; 2] = ["127.0.0.1:22", "10.0.0.1:53"];
const PEERS: [&str; 2] = ["peer-a", "peer-b"];

fn chunks(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        out.push(&rest[..i]);
        rest = &rest[i + SEPARATOR.len()..];
    }
    out.push(rest);
    out
}

/// The SFU's two sockets are the only permitted peers; relays are numbered.
struct FakeEnv {
    sfu: HashSet<SocketAddr>,
    open: BTreeMap<u64, AllocId>,
    fail_every: u8,
    opened: u64,
}

impl Env for FakeEnv {
    type Relay = u64;
    fn permit_ip(&self, ip: IpAddr) -> bool {
        self.sfu.iter().any(|a| a.ip() == ip)
    }
    fn permit_peer(&self, addr: SocketAddr) -> bool {
        self.sfu.contains(&addr)
    }
    fn open_relay(
        &mut self,
        id: AllocId,
        client: SocketAddr,
        ipv6: bool,
    ) -> Result<(u64, SocketAddr), OpenError> {
        assert_eq!(id.client, client);
        self.opened += 1;
        if ipv6 {
            return Err(OpenError::Family);
        }
        if self.fail_every > 0 && self.opened % u64::from(self.fail_every) == 0 {
            return Err(OpenError::Capacity);
        }
        assert!(
            self.open.insert(id.seq, id).is_none(),
            "relay handle reused"
        );
        Ok((
            id.seq,
            SocketAddr::from(([127, 0, 0, 1], 50_000 + (id.seq % 10_000) as u16)),
        ))
    }
}

/// A client's state as the target tracks it: its peer's credentials and the last nonce.
struct Client {
    addr: SocketAddr,
    peer: usize,
    nonce: String,
    realm: String,
}

/// Rebuilds a decoded request with credentials and a valid MESSAGE-INTEGRITY appended.
fn sign(m: &Message<'_>, username: &str, realm: &str, nonce: &str, key: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = Writer::new(&mut buf, m.method, m.class, &m.transaction_id());
    for (_, t, v) in m.attrs() {
        if matches!(
            t,
            attr::MESSAGE_INTEGRITY
                | attr::FINGERPRINT
                | attr::USERNAME
                | attr::REALM
                | attr::NONCE
        ) {
            continue;
        }
        w.attr(t, v);
    }
    w.attr(attr::USERNAME, username.as_bytes())
        .attr(attr::REALM, realm.as_bytes())
        .attr(attr::NONCE, nonce.as_bytes())
        .integrity(key);
    buf
}

/// Takes the relays the core closed: each one it opened, none twice.
fn check_closed(core: &mut Core<u64>, env: &FakeEnv, closed: &mut BTreeSet<u64>) {
    for r in core.take_closed() {
        assert!(
            env.open.contains_key(&r),
            "closed a relay never opened: {r}"
        );
        assert!(closed.insert(r), "relay {r} closed twice");
    }
}

fuzz_target!(|data: &[u8]| {
    let cfg = Config {
        max_allocations: 6,
        max_allocations_per_peer: 3,
        max_allocations_per_source: 2,
        max_permissions: 2,
        max_channels: 3,
        ..Config::default()
    };
    let t0 = Instant::now();
    let mut now = t0;
    let unix = 1_000_000u64;
    let mut core: Core<u64> = Core::new(cfg.clone(), b"fuzz secret", t0);
    let mut env = FakeEnv {
        sfu: SFU.iter().map(|a| a.parse().unwrap()).collect(),
        open: BTreeMap::new(),
        fail_every: data.first().copied().unwrap_or(0) % 5,
        opened: 0,
    };
    let mut creds: Vec<(String, String)> = PEERS
        .iter()
        .map(|p| {
            let i = core.issue(p, unix + 3600);
            (i.username, i.password)
        })
        .collect();
    let mut clients: Vec<Client> = (0..4u8)
        .map(|i| Client {
            addr: SocketAddr::from(([192, 0, 2, 1 + i / 2], 5000 + u16::from(i))),
            peer: usize::from(i % 2),
            nonce: String::new(),
            realm: String::new(),
        })
        .collect();
    let mut closed: BTreeSet<u64> = BTreeSet::new();
    let mut out = Vec::new();

    for chunk in chunks(data) {
        let [who, step, flags, datagram @ ..] = chunk else {
            continue;
        };
        now += Duration::from_secs(u64::from(*step % 8));
        core.handle_timeout(now);
        check_closed(&mut core, &env, &mut closed);
        let c = usize::from(*who % 4);
        let client = &clients[c];
        if flags & 2 != 0 {
            // A datagram at one of this client's relays, from the SFU or an outsider.
            let from: SocketAddr = if who & 0x80 == 0 {
                SFU[usize::from(who >> 2) % 2].parse().unwrap()
            } else {
                OUTSIDERS[usize::from(who >> 2) % 2].parse().unwrap()
            };
            let ids: Vec<AllocId> = env
                .open
                .values()
                .filter(|id| id.client == client.addr)
                .copied()
                .collect();
            for id in ids {
                if let Some(to) = core.handle_peer(now, id, from, datagram, &env, &mut out) {
                    assert!(env.permit_peer(from), "relayed in from {from}");
                    assert!(!closed.contains(&id.seq), "a closed relay relayed");
                    assert_eq!(to, id.client);
                    match stun::channel_data(&out) {
                        Some((_, d)) => assert_eq!(d, datagram),
                        None => {
                            let m = Message::decode(&out).expect("a Data indication");
                            assert_eq!(m.get(attr::DATA), Some(datagram));
                            assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(from));
                        }
                    }
                }
            }
        } else {
            let signed;
            let input: &[u8] = match Message::decode(datagram) {
                Ok(m) if flags & 1 != 0 && !client.nonce.is_empty() => {
                    let (user, pass) = &creds[client.peer];
                    let key = long_term_key(user, &client.realm, pass);
                    signed = sign(&m, user, &client.realm, &client.nonce, &key);
                    &signed
                }
                _ => datagram,
            };
            let txid = Message::decode(input).ok().map(|m| m.transaction_id());
            match core.handle_client(now, unix, client.addr, input, &mut env) {
                Step::Nothing => {}
                Step::Reply(reply) => {
                    let m = Message::decode(&reply).expect("a reply decodes as STUN");
                    assert_eq!(Some(m.transaction_id()), txid, "a reply to a request");
                    match m.class {
                        Class::Success => {}
                        Class::Error => {
                            assert!(m.get(attr::ERROR_CODE).is_some_and(|v| v.len() >= 4));
                        }
                        other => panic!("a reply of class {other:?}"),
                    }
                    if let Some(n) = m.text(attr::NONCE) {
                        let client = &mut clients[c];
                        client.nonce = n.to_owned();
                        client.realm = m.text(attr::REALM).unwrap_or_default().to_owned();
                    }
                }
                Step::Relay { via, to, data } => {
                    assert!(env.permit_peer(to), "relayed out to {to}");
                    assert!(
                        env.open.contains_key(&via),
                        "relayed through an unknown relay"
                    );
                    assert!(!closed.contains(&via), "relayed through a closed relay");
                    assert!(input.ends_with(data) || input.windows(data.len()).any(|w| w == data));
                }
            }
        }
        if flags & 4 != 0 {
            let p = clients[c].peer;
            core.revoke_peer(PEERS[p]);
            // A later credential for the same peer is a new one.
            let i = core.issue(PEERS[p], unix + 3600);
            creds[p] = (i.username, i.password);
        }
        check_closed(&mut core, &env, &mut closed);
        assert!(core.stats().allocations <= cfg.max_allocations);
        assert_eq!(
            core.stats().allocations,
            env.open.len() - closed.len(),
            "open allocations are the relays opened and not closed"
        );
    }
    // Past every lifetime, nothing is left.
    core.handle_timeout(now + cfg.max_lifetime + Duration::from_secs(1));
    check_closed(&mut core, &env, &mut closed);
    assert_eq!(core.stats().allocations, 0);
    assert_eq!(closed.len(), env.open.len());
});
