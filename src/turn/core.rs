//! The TURN server's decisions (RFC 5766 over UDP), sans-IO: datagrams and the time in,
//! replies and relayed datagrams out.
//!
//! It owns the allocations (one per client transport address), their permissions and channel
//! bindings, the per-peer quota and the relay policy. The driver ([`super::TurnServer`]) owns
//! the sockets; it opens relay sockets when the core asks ([`Env::open_relay`]) and closes the
//! ones [`Core::take_closed`] hands back.
//!
//! The relay policy is the point of this module: a relay here is a door into this server's
//! SFU, never into the host or its network. Every permission, channel binding and relayed
//! datagram, in both directions, is checked against [`Env`], which knows the SFU's own sockets:
//! CreatePermission for any other IP and ChannelBind to any other address get 403, and
//! datagrams to or from anything else are dropped and counted.
//!
//! It must never: relay for a client that has not authenticated as a live peer; hold more
//! than the configured allocations (in all, and per peer), permissions or channels; keep state
//! for an unauthenticated request; read a clock or touch a socket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::auth::{Book, Issued, NonceError, Refusal};
use super::stun::{self, attr, method, Class, Message, Writer};
use crate::per_source::source_of;

/// What the core asks of its surroundings.
pub trait Env {
    /// The driver's handle on one relay socket.
    type Relay: Clone;
    /// May a permission be installed for `ip`? (Permissions are per IP, RFC 5766 §8.)
    fn permit_ip(&self, ip: IpAddr) -> bool;
    /// May datagrams be relayed to and from exactly `addr`?
    fn permit_peer(&self, addr: SocketAddr) -> bool;
    /// Opens a relay socket for allocation `id` of `client`: its handle and the relayed
    /// transport address clients see. `ipv6` is the requested address family.
    fn open_relay(
        &mut self,
        id: AllocId,
        client: SocketAddr,
        ipv6: bool,
    ) -> Result<(Self::Relay, SocketAddr), OpenError>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// No relay address of that family (440).
    Family,
    /// No socket could be had (508).
    Capacity,
}

/// One allocation's identity: its client and a number never reused, so a relay socket that
/// outlives its allocation briefly cannot feed a newer one of the same client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocId {
    pub client: SocketAddr,
    pub seq: u64,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub realm: String,
    /// Allocations open at once, over all clients (each holds a socket). At it, the
    /// longest-idle allocation makes way if idle long enough, else 508.
    pub max_allocations: usize,
    /// Allocations one peer's credential may hold at once. At the quota, a new allocation
    /// replaces the peer's longest-idle one if that has been idle for `idle_eviction`, and is
    /// refused (486) otherwise. Chromium makes one allocation per network per ICE restart
    /// (every renegotiation) and keeps the old ones until it leaves.
    pub max_allocations_per_peer: usize,
    /// Allocations one source address (IPv4, or IPv6 /64) holds at once, whatever credentials
    /// it uses: one client with many joined peers cannot take the whole capacity.
    pub max_allocations_per_source: usize,
    /// How long an allocation relays nothing before a newer one may replace it (at its peer's
    /// or source's quota, or at the server's capacity).
    /// A live ICE pair carries media, RTCP or at least consent checks (every 4–6 s, RFC 7675).
    pub idle_eviction: Duration,
    pub max_permissions: usize,
    pub max_channels: usize,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    pub nonce_lifetime: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            realm: "videoroom".into(),
            max_allocations: 2048,
            max_allocations_per_peer: 32,
            max_allocations_per_source: 128,
            idle_eviction: Duration::from_secs(8),
            max_permissions: 16,
            max_channels: 64,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
        }
    }
}

/// What to do with a datagram from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a, R> {
    /// Nothing to send (dropped, counted in [`Stats`]).
    Nothing,
    /// Send this back to the client from the server's socket.
    Reply(Vec<u8>),
    /// Send `data` from relay socket `via` to `to`.
    Relay {
        via: R,
        to: SocketAddr,
        data: &'a [u8],
    },
}

/// Counters over the core's life; the gauges are current values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub allocations: usize,
    pub live_peers: usize,
    pub allocations_made: u64,
    /// The most allocations one peer held at once (how close real clients come to the quota).
    pub peak_per_peer: usize,
    /// Requests refused with 403 by the relay policy.
    pub forbidden: u64,
    /// Allocations refused by a quota (486) or the capacity (508).
    pub quota_refused: u64,
    /// Idle allocations replaced by a newer one at a quota or the capacity.
    pub evicted: u64,
    /// Requests refused for want of valid credentials (401, 438, 441).
    pub auth_refused: u64,
    /// Datagrams dropped: no allocation, permission or channel, or a peer the policy refuses.
    pub dropped: u64,
    pub relayed_out: u64,
    pub relayed_in: u64,
}

struct Allocation<R> {
    seq: u64,
    peer: String,
    /// The client's address as quotas count it ([`source_of`]).
    source: IpAddr,
    username: String,
    relay: R,
    relayed: SocketAddr,
    expires: Instant,
    /// When it last relayed a datagram (or was made).
    last_used: Instant,
    /// The Allocate that made it, so its retransmission gets the same answer.
    txid: [u8; 12],
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    by_peer: HashMap<SocketAddr, u16>,
}

impl<R> Allocation<R> {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|e| *e > now)
    }
}

pub struct Core<R> {
    cfg: Config,
    book: Book,
    allocations: HashMap<SocketAddr, Allocation<R>>,
    /// Relayed address → client, for datagrams that reach an allocation without its socket.
    by_relayed: HashMap<SocketAddr, SocketAddr>,
    per_peer: HashMap<String, usize>,
    per_source: HashMap<IpAddr, usize>,
    closed: Vec<R>,
    next_seq: u64,
    next_txid: u64,
    /// Nonce timestamps count seconds from here (any monotonic origin will do).
    epoch: Instant,
    stats: Stats,
}

impl<R> std::fmt::Debug for Core<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("allocations", &self.allocations.len())
            .finish_non_exhaustive()
    }
}

/// Comprehension-required attributes a request may carry. DONT-FRAGMENT is accepted and has
/// no effect: relayed datagrams stay inside this process or on loopback.
const KNOWN: &[u16] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::CHANNEL_NUMBER,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REALM,
    attr::NONCE,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::REQUESTED_TRANSPORT,
    attr::DONT_FRAGMENT,
];

const UDP: u8 = 17;

/// A refusal: code, reason, and whether the client's key signs it.
struct Refuse(u16, &'static str);

impl<R: Clone> Core<R> {
    pub fn new(cfg: Config, secret: &[u8], epoch: Instant) -> Core<R> {
        Core {
            book: Book::new(cfg.realm.clone(), secret),
            cfg,
            allocations: HashMap::new(),
            by_relayed: HashMap::new(),
            per_peer: HashMap::new(),
            per_source: HashMap::new(),
            closed: Vec::new(),
            next_seq: 1,
            next_txid: 0,
            epoch,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            allocations: self.allocations.len(),
            live_peers: self.book.live_peers(),
            ..self.stats
        }
    }

    /// Issues `peer`'s credential (see [`super::auth`]): good until `revoke_peer`.
    pub fn issue(&mut self, peer: &str, expiry_unix: u64) -> Issued {
        self.book.issue(peer, expiry_unix)
    }

    /// Revokes `peer`'s credential and closes its allocations.
    pub fn revoke_peer(&mut self, peer: &str) {
        self.book.revoke(peer);
        let gone: Vec<SocketAddr> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.peer == peer)
            .map(|(c, _)| *c)
            .collect();
        for client in gone {
            self.remove(client);
        }
    }

    /// Ends every allocation (the server is closing).
    pub fn close_all(&mut self) {
        let all: Vec<SocketAddr> = self.allocations.keys().copied().collect();
        for client in all {
            self.remove(client);
        }
    }

    /// Relay sockets to close (their allocations ended), in the order they ended.
    pub fn take_closed(&mut self) -> Vec<R> {
        std::mem::take(&mut self.closed)
    }

    /// Ends what expired by `now`: allocations, permissions, channel bindings.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<SocketAddr> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        for client in expired {
            self.remove(client);
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, e| *e > now);
            let stale: Vec<u16> = a
                .channels
                .iter()
                .filter(|(_, (_, e))| *e <= now)
                .map(|(ch, _)| *ch)
                .collect();
            for ch in stale {
                if let Some((peer, _)) = a.channels.remove(&ch) {
                    a.by_peer.remove(&peer);
                }
            }
        }
    }

    fn remove(&mut self, client: SocketAddr) {
        if let Some(a) = self.allocations.remove(&client) {
            self.by_relayed.remove(&a.relayed);
            release(&mut self.per_peer, &a.peer);
            release(&mut self.per_source, &a.source);
            self.closed.push(a.relay);
        }
    }

    /// Ends the longest-idle allocation among those `within` picks, if it has relayed nothing
    /// for the idle-eviction time. True if one made way.
    fn evict_idle(&mut self, now: Instant, within: impl Fn(&Allocation<R>) -> bool) -> bool {
        let idle = self
            .allocations
            .iter()
            .filter(|(_, a)| within(a))
            .min_by_key(|(_, a)| a.last_used)
            .filter(|(_, a)| now.saturating_duration_since(a.last_used) >= self.cfg.idle_eviction)
            .map(|(client, _)| *client);
        let Some(client) = idle else {
            return false;
        };
        self.remove(client);
        self.stats.evicted += 1;
        true
    }

    /// The allocation whose relayed transport address is `relayed`.
    pub fn allocation_at(&self, relayed: SocketAddr) -> Option<AllocId> {
        let client = *self.by_relayed.get(&relayed)?;
        let a = self.allocations.get(&client)?;
        Some(AllocId { client, seq: a.seq })
    }

    /// A datagram that arrived at allocation `id`'s relay socket from `from`. Returns the
    /// client to send `out` to (ChannelData if `from` has a channel, else a Data indication).
    pub fn handle_peer(
        &mut self,
        now: Instant,
        id: AllocId,
        from: SocketAddr,
        data: &[u8],
        env: &impl Env<Relay = R>,
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        let channel = self
            .allocations
            .get_mut(&id.client)
            .filter(|a| a.seq == id.seq && a.permitted(from.ip(), now) && env.permit_peer(from))
            .map(|a| {
                a.last_used = now;
                a.by_peer.get(&from).copied()
            });
        let Some(channel) = channel else {
            self.stats.dropped += 1;
            return None;
        };
        match channel {
            Some(ch) => stun::write_channel_data(out, ch, data),
            None => {
                out.clear();
                // Indications are not answered; the id only has to differ between them.
                self.next_txid += 1;
                let mut txid = [0u8; 12];
                txid[4..].copy_from_slice(&self.next_txid.to_be_bytes());
                Writer::new(out, method::DATA, Class::Indication, &txid)
                    .xor_address(attr::XOR_PEER_ADDRESS, from)
                    .attr(attr::DATA, data);
            }
        }
        self.stats.relayed_in += 1;
        Some(id.client)
    }

    /// A datagram from a client at `from`. `unix` is the wall clock in seconds (credential
    /// expiry), `now` the monotonic one (lifetimes, nonces).
    pub fn handle_client<'a>(
        &mut self,
        now: Instant,
        unix: u64,
        from: SocketAddr,
        data: &'a [u8],
        env: &mut impl Env<Relay = R>,
    ) -> Step<'a, R> {
        if !stun::looks_like_stun(data) {
            return self.channel_data(now, from, data, env);
        }
        let Ok(m) = Message::decode(data) else {
            self.stats.dropped += 1;
            return Step::Nothing;
        };
        match (m.class, m.method) {
            (Class::Request, method::BINDING) => {
                let mut buf = Vec::with_capacity(64);
                Writer::new(
                    &mut buf,
                    method::BINDING,
                    Class::Success,
                    &m.transaction_id(),
                )
                .xor_address(attr::XOR_MAPPED_ADDRESS, from)
                .fingerprint();
                Step::Reply(buf)
            }
            (Class::Indication, method::SEND) => self.send_indication(now, from, &m, env),
            (
                Class::Request,
                method::ALLOCATE
                | method::REFRESH
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND,
            ) => Step::Reply(self.request(now, unix, from, &m, env)),
            _ => {
                self.stats.dropped += 1;
                Step::Nothing
            }
        }
    }

    fn channel_data<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &'a [u8],
        env: &impl Env<Relay = R>,
    ) -> Step<'a, R> {
        let relay = stun::channel_data(data).and_then(|(ch, payload)| {
            let a = self.allocations.get_mut(&from)?;
            let (peer, expires) = *a.channels.get(&ch)?;
            if !(expires > now && a.permitted(peer.ip(), now) && env.permit_peer(peer)) {
                return None;
            }
            a.last_used = now;
            Some((a.relay.clone(), peer, payload))
        });
        self.relay_or_drop(relay)
    }

    /// A client datagram the policy let through is relayed and counted; anything else is
    /// dropped and counted.
    fn relay_or_drop<'a>(&mut self, relay: Option<(R, SocketAddr, &'a [u8])>) -> Step<'a, R> {
        match relay {
            Some((via, to, data)) => {
                self.stats.relayed_out += 1;
                Step::Relay { via, to, data }
            }
            None => {
                self.stats.dropped += 1;
                Step::Nothing
            }
        }
    }

    fn send_indication<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<'a>,
        env: &impl Env<Relay = R>,
    ) -> Step<'a, R> {
        let relay = (|| {
            let a = self.allocations.get_mut(&from)?;
            let to = m.xor_address(attr::XOR_PEER_ADDRESS)?;
            let data = m.get(attr::DATA)?;
            if !(a.permitted(to.ip(), now) && env.permit_peer(to)) {
                return None;
            }
            a.last_used = now;
            Some((a.relay.clone(), to, data))
        })();
        self.relay_or_drop(relay)
    }

    /// An authenticated request's answer (RFC 5389 §10.2.2 for the authentication steps).
    fn request(
        &mut self,
        now: Instant,
        unix: u64,
        from: SocketAddr,
        m: &Message<'_>,
        env: &mut impl Env<Relay = R>,
    ) -> Vec<u8> {
        let txid = m.transaction_id();
        let unknown = m.unknown_required(KNOWN);
        if !unknown.is_empty() {
            let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
            let mut buf = Vec::new();
            Writer::new(&mut buf, m.method, Class::Error, &txid)
                .error(420, "Unknown Attribute")
                .attr(attr::UNKNOWN_ATTRIBUTES, &list);
            return buf;
        }
        let secs = now.saturating_duration_since(self.epoch).as_secs();
        let challenge = |core: &mut Core<R>, code: u16, reason: &str| {
            core.stats.auth_refused += 1;
            let nonce = core.book.nonce(from, secs);
            let mut buf = Vec::new();
            Writer::new(&mut buf, m.method, Class::Error, &txid)
                .error(code, reason)
                .attr(attr::REALM, core.book.realm().as_bytes())
                .attr(attr::NONCE, nonce.as_bytes());
            buf
        };
        if m.get(attr::MESSAGE_INTEGRITY).is_none() {
            return challenge(self, 401, "Unauthorized");
        }
        let (Some(username), Some(_realm), Some(nonce)) = (
            m.text(attr::USERNAME),
            m.get(attr::REALM),
            m.text(attr::NONCE),
        ) else {
            return plain_error(m.method, &txid, 400, "Bad Request");
        };
        match self
            .book
            .check_nonce(nonce, from, secs, self.cfg.nonce_lifetime.as_secs())
        {
            Ok(()) => {}
            Err(NonceError::Invalid | NonceError::Stale) => {
                return challenge(self, 438, "Stale Nonce")
            }
        }
        let new_allocation = m.method == method::ALLOCATE && !self.allocations.contains_key(&from);
        let (peer, key) = match self.book.check(username, unix, new_allocation) {
            Ok((peer, key)) => (peer.to_owned(), key),
            Err(Refusal::Unknown | Refusal::Expired) => {
                return challenge(self, 401, "Unauthorized")
            }
        };
        if !m.integrity_ok(&key) {
            return challenge(self, 401, "Unauthorized");
        }
        let result = match m.method {
            method::ALLOCATE => self.allocate(now, from, m, &peer, username, env),
            method::REFRESH => self.refresh(now, from, m, username),
            method::CREATE_PERMISSION => self.create_permission(now, from, m, username, env),
            _ => self.channel_bind(now, from, m, username, env),
        };
        match result {
            Ok(mut buf) => {
                let mut w = Writer::continue_from(&mut buf);
                w.integrity(&key).fingerprint();
                buf
            }
            Err(Refuse(code, reason)) => {
                match code {
                    403 => self.stats.forbidden += 1,
                    486 | 508 => self.stats.quota_refused += 1,
                    441 => self.stats.auth_refused += 1,
                    _ => {}
                }
                let mut buf = Vec::new();
                Writer::new(&mut buf, m.method, Class::Error, &txid)
                    .error(code, reason)
                    .integrity(&key)
                    .fingerprint();
                buf
            }
        }
    }

    fn allocate(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<'_>,
        peer: &str,
        username: &str,
        env: &mut impl Env<Relay = R>,
    ) -> Result<Vec<u8>, Refuse> {
        let txid = m.transaction_id();
        if let Some(a) = self.allocations.get(&from) {
            // A retransmission of the request that made it gets the same success; anything
            // else on a 5-tuple in use is a mismatch (RFC 5766 §6.2).
            if a.txid != txid || a.username != username {
                return Err(Refuse(437, "Allocation Mismatch"));
            }
            let lifetime = a.expires.saturating_duration_since(now);
            return Ok(allocate_success(&txid, a.relayed, from, lifetime));
        }
        match m.get(attr::REQUESTED_TRANSPORT) {
            None => return Err(Refuse(400, "Bad Request")),
            Some(v) if v.first() != Some(&UDP) => {
                return Err(Refuse(442, "Unsupported Transport Protocol"))
            }
            Some(_) => {}
        }
        let ipv6 = match m.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => false,
            Some([0x01, ..]) => false,
            Some([0x02, ..]) => true,
            Some(_) => return Err(Refuse(440, "Address Family not Supported")),
        };
        // Each bound in turn: the peer's quota, its source address's, the server's capacity.
        // At a bound, the longest-idle allocation inside it makes way, if one is idle enough.
        let source = source_of(from.ip());
        if self.per_peer.get(peer).copied().unwrap_or(0) >= self.cfg.max_allocations_per_peer
            && !self.evict_idle(now, |a| a.peer == peer)
        {
            return Err(Refuse(486, "Allocation Quota Reached"));
        }
        if self.per_source.get(&source).copied().unwrap_or(0) >= self.cfg.max_allocations_per_source
            && !self.evict_idle(now, |a| a.source == source)
        {
            return Err(Refuse(486, "Allocation Quota Reached"));
        }
        if self.allocations.len() >= self.cfg.max_allocations && !self.evict_idle(now, |_| true) {
            return Err(Refuse(508, "Insufficient Capacity"));
        }
        let id = AllocId {
            client: from,
            seq: self.next_seq,
        };
        let (relay, relayed) = env.open_relay(id, from, ipv6).map_err(|e| match e {
            OpenError::Family => Refuse(440, "Address Family not Supported"),
            OpenError::Capacity => Refuse(508, "Insufficient Capacity"),
        })?;
        self.next_seq += 1;
        let lifetime = self.lifetime(m);
        self.by_relayed.insert(relayed, from);
        self.allocations.insert(
            from,
            Allocation {
                seq: id.seq,
                peer: peer.to_owned(),
                source,
                username: username.to_owned(),
                relay,
                relayed,
                expires: now + lifetime,
                last_used: now,
                txid,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                by_peer: HashMap::new(),
            },
        );
        *self.per_source.entry(source).or_default() += 1;
        let held = self.per_peer.entry(peer.to_owned()).or_default();
        *held += 1;
        self.stats.peak_per_peer = self.stats.peak_per_peer.max(*held);
        self.stats.allocations_made += 1;
        Ok(allocate_success(&txid, relayed, from, lifetime))
    }

    fn lifetime(&self, m: &Message<'_>) -> Duration {
        m.u32_attr(attr::LIFETIME)
            .map_or(self.cfg.default_lifetime, |s| {
                Duration::from_secs(s.into()).max(self.cfg.default_lifetime)
            })
            .min(self.cfg.max_lifetime)
    }

    /// The caller's allocation, if `username` made it.
    fn own(&mut self, from: SocketAddr, username: &str) -> Result<&mut Allocation<R>, Refuse> {
        let a = self
            .allocations
            .get_mut(&from)
            .ok_or(Refuse(437, "Allocation Mismatch"))?;
        if a.username != username {
            return Err(Refuse(441, "Wrong Credentials"));
        }
        Ok(a)
    }

    fn refresh(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<'_>,
        username: &str,
    ) -> Result<Vec<u8>, Refuse> {
        let lifetime = match m.u32_attr(attr::LIFETIME) {
            Some(0) => Duration::ZERO,
            _ => self.lifetime(m),
        };
        self.own(from, username)?.expires = now + lifetime;
        if lifetime.is_zero() {
            self.remove(from);
        }
        let mut buf = Vec::with_capacity(64);
        Writer::new(
            &mut buf,
            method::REFRESH,
            Class::Success,
            &m.transaction_id(),
        )
        .u32(attr::LIFETIME, lifetime.as_secs() as u32);
        Ok(buf)
    }

    fn create_permission(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<'_>,
        username: &str,
        env: &impl Env<Relay = R>,
    ) -> Result<Vec<u8>, Refuse> {
        let peers = m
            .xor_peer_addresses()
            .filter(|p| !p.is_empty())
            .ok_or(Refuse(400, "Bad Request"))?;
        // All or nothing (RFC 5766 §9.2): one forbidden address refuses the whole request.
        if !peers.iter().all(|p| env.permit_ip(p.ip())) {
            return Err(Refuse(403, "Forbidden"));
        }
        let (max, ttl) = (self.cfg.max_permissions, self.cfg.permission_lifetime);
        let a = self.own(from, username)?;
        let fresh = peers
            .iter()
            .filter(|p| !a.permissions.contains_key(&p.ip()))
            .count();
        if a.permissions.len() + fresh > max {
            return Err(Refuse(508, "Insufficient Capacity"));
        }
        for p in peers {
            a.permissions.insert(p.ip(), now + ttl);
        }
        let mut buf = Vec::with_capacity(64);
        Writer::new(
            &mut buf,
            method::CREATE_PERMISSION,
            Class::Success,
            &m.transaction_id(),
        );
        Ok(buf)
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<'_>,
        username: &str,
        env: &impl Env<Relay = R>,
    ) -> Result<Vec<u8>, Refuse> {
        let ch = m
            .get(attr::CHANNEL_NUMBER)
            .and_then(|v| Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?)))
            .filter(|c| (stun::MIN_CHANNEL..=stun::MAX_CHANNEL).contains(c))
            .ok_or(Refuse(400, "Bad Request"))?;
        let peer = m
            .xor_address(attr::XOR_PEER_ADDRESS)
            .ok_or(Refuse(400, "Bad Request"))?;
        if !(env.permit_ip(peer.ip()) && env.permit_peer(peer)) {
            return Err(Refuse(403, "Forbidden"));
        }
        let cfg = (
            self.cfg.max_channels,
            self.cfg.max_permissions,
            self.cfg.channel_lifetime,
            self.cfg.permission_lifetime,
        );
        let (max_channels, max_permissions, ch_ttl, perm_ttl) = cfg;
        let a = self.own(from, username)?;
        // A channel stays with its peer and a peer with its channel (RFC 5766 §11.2).
        let same = a.channels.get(&ch).map(|(p, _)| *p == peer);
        if same == Some(false) || a.by_peer.get(&peer).is_some_and(|c| *c != ch) {
            return Err(Refuse(400, "Bad Request"));
        }
        if same.is_none() && a.channels.len() >= max_channels {
            return Err(Refuse(508, "Insufficient Capacity"));
        }
        if !a.permissions.contains_key(&peer.ip()) && a.permissions.len() >= max_permissions {
            return Err(Refuse(508, "Insufficient Capacity"));
        }
        a.channels.insert(ch, (peer, now + ch_ttl));
        a.by_peer.insert(peer, ch);
        // A binding installs or refreshes the permission for its IP (RFC 5766 §11.2).
        let perm = a.permissions.entry(peer.ip()).or_insert(now);
        *perm = (*perm).max(now + perm_ttl);
        let mut buf = Vec::with_capacity(64);
        Writer::new(
            &mut buf,
            method::CHANNEL_BIND,
            Class::Success,
            &m.transaction_id(),
        );
        Ok(buf)
    }
}

/// Takes one from a count, forgetting keys that reach zero (the maps hold live entries only).
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

fn allocate_success(
    txid: &[u8; 12],
    relayed: SocketAddr,
    client: SocketAddr,
    lifetime: Duration,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(96);
    Writer::new(&mut buf, method::ALLOCATE, Class::Success, txid)
        .xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
        .u32(attr::LIFETIME, lifetime.as_secs() as u32)
        .xor_address(attr::XOR_MAPPED_ADDRESS, client);
    buf
}

/// An error response without MESSAGE-INTEGRITY (the request could not be authenticated).
fn plain_error(method: u16, txid: &[u8; 12], code: u16, reason: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    Writer::new(&mut buf, method, Class::Error, txid).error(code, reason);
    buf
}

#[cfg(test)]
mod tests;
