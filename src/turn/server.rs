//! The TURN driver: the tokio tasks and sockets around [`super::core::Core`] (see the module
//! doc of [`super`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use net_tokio::net::UdpSocket;

use super::batch::{Flushed, SendBatch};
use super::core::{AllocId, Core, Env, OpenError, Step};
use super::relay::Relay;
use super::{TurnLimits, TurnStats};
use crate::fabric::{Fabric, FabricStats, Kind};

/// Where the TURN server listens and which addresses it hands out.
#[derive(Clone, Debug)]
pub struct TurnConfig {
    /// UDP listen address; port 0 picks a free one (tests).
    pub bind: SocketAddr,
    /// Relay sockets bind here. It must be able to reach the SFU's candidates, so it is the
    /// same address family and scope as the SFU's ICE addresses (loopback by default).
    pub relay_ip: IpAddr,
    /// The address clients are told to use for the server and that appears in
    /// XOR-RELAYED-ADDRESS (a deployment's external IP); `None` uses the bound addresses.
    pub public_ip: Option<IpAddr>,
    /// The SFU's ICE addresses: the only IPs a client may ask a permission for.
    pub sfu_ips: Vec<IpAddr>,
    /// HMAC key for credentials and nonces. Empty means a random one per process, which is
    /// right for a single server: credentials are only ever handed out by this process.
    pub secret: Vec<u8>,
    /// The backstop expiry written into issued credentials. A credential dies when its peer
    /// leaves; until then it must keep making allocations (every renegotiation restarts ICE).
    pub credential_ttl: Duration,
    /// Quotas and lifetimes.
    pub limits: TurnLimits,
    /// The registry of the SFU's sockets, which is the relay policy, and the in-process
    /// hand-off to them (see [`crate::fabric`]).
    pub fabric: Arc<Fabric>,
}

impl TurnConfig {
    /// Defaults on loopback, relaying to SFU sockets registered in `fabric`.
    pub fn new(fabric: Arc<Fabric>) -> TurnConfig {
        TurnConfig {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3478),
            relay_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            public_ip: None,
            sfu_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            secret: Vec::new(),
            credential_ttl: Duration::from_secs(12 * 3600),
            limits: TurnLimits::default(),
            fabric,
        }
    }
}

/// One peer's credentials and the server to use them on (`offerData.integratedTurnServers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnCredentials {
    pub server_addr: IpAddr,
    pub server_port: u16,
    pub username: String,
    pub password: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("cannot bind the TURN socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the TURN relay IP {0} must be a unicast address")]
    RelayIp(IpAddr),
}

/// What [`TurnServer::relay_from_client`] leaves to the worker that read the datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum FromClient<'a> {
    /// Dropped, answered nowhere, or relayed elsewhere already.
    Nothing,
    /// Send this back to the client, from the listening socket.
    Reply(Vec<u8>),
    /// Take `data` in as a datagram from `from` (the allocation's relayed address).
    ToSfu { from: SocketAddr, data: &'a [u8] },
}

/// What the tasks share.
struct Shared {
    core: Mutex<Core<Arc<Relay>>>,
    socket: UdpSocket,
    fabric: Arc<Fabric>,
    relay_ip: IpAddr,
    public_ip: Option<IpAddr>,
    sfu_ips: Vec<IpAddr>,
}

/// A running TURN server. Its tasks stop when it is closed or dropped.
pub struct TurnServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    advertised: SocketAddr,
    ttl: Duration,
    tasks: Vec<net_tokio::task::JoinHandle<()>>,
    /// Reads the listening socket until [`TurnServer::listener_for_workers`] takes it over.
    serve: Mutex<Option<net_tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("local_addr", &self.local_addr)
            .field("advertised", &self.advertised)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl TurnServer {
    /// Binds the UDP socket and starts serving on the current tokio runtime.
    pub async fn start(cfg: TurnConfig) -> Result<TurnServer, TurnError> {
        let ip = cfg.relay_ip;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(TurnError::RelayIp(ip));
        }
        let bind_err = |source| TurnError::Bind {
            addr: cfg.bind,
            source,
        };
        let socket = UdpSocket::bind(cfg.bind).await.map_err(bind_err)?;
        let local_addr = socket.local_addr().map_err(bind_err)?;
        let secret = if cfg.secret.is_empty() {
            let mut s = vec![0u8; 32];
            rand::Rng::fill(&mut rand::thread_rng(), &mut s[..]);
            s
        } else {
            cfg.secret.clone()
        };
        let shared = Arc::new(Shared {
            core: Mutex::new(Core::new(cfg.limits.clone(), &secret, Instant::now())),
            socket,
            fabric: cfg.fabric,
            relay_ip: cfg.relay_ip,
            public_ip: cfg.public_ip,
            sfu_ips: cfg.sfu_ips,
        });
        let serve = net_tokio::spawn(serve(Arc::clone(&shared)));
        let tasks = vec![net_tokio::spawn(expire(Arc::downgrade(&shared)))];
        let advertised =
            SocketAddr::new(cfg.public_ip.unwrap_or(local_addr.ip()), local_addr.port());
        tracing::info!(%local_addr, %advertised, "TURN server listening");
        Ok(TurnServer {
            shared,
            local_addr,
            advertised,
            ttl: cfg.credential_ttl,
            tasks,
            serve: Mutex::new(Some(serve)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Issues `peer`'s credentials (replacing earlier ones): good until [`Self::revoke_peer`].
    pub fn credentials(&self, peer: &str) -> TurnCredentials {
        let expiry = unix_now().saturating_add(self.ttl.as_secs());
        self.credentials_expiring(peer, expiry)
    }

    /// Credentials for `peer` whose backstop expiry is `expiry` (unix seconds).
    pub fn credentials_expiring(&self, peer: &str, expiry: u64) -> TurnCredentials {
        let issued = self.shared.lock().issue(peer, expiry);
        TurnCredentials {
            server_addr: self.advertised.ip(),
            server_port: self.advertised.port(),
            username: issued.username,
            password: issued.password,
        }
    }

    /// Revokes `peer`'s credentials and closes its allocations at once (on leave).
    pub fn revoke_peer(&self, peer: &str) {
        let closed = {
            let mut core = self.shared.lock();
            core.revoke_peer(peer);
            core.take_closed()
        };
        close_all(closed);
    }

    /// What allocation `to`'s relay socket would do with `data` from the SFU socket `from`,
    /// done by the caller without that socket or its task: the same policy and framing
    /// ([`Core::handle_peer`]), queued in `batch` for the client; [`Self::send_batch`] sends
    /// it from the listening socket. `scratch` is the caller's buffer. False when `to` is no
    /// relayed address of this server (the caller sends the datagram the ordinary way).
    pub fn relay_from_sfu(
        &self,
        from: SocketAddr,
        to: SocketAddr,
        data: &[u8],
        scratch: &mut Vec<u8>,
        batch: &mut SendBatch,
    ) -> bool {
        let client = {
            let mut core = self.shared.lock();
            let Some(id) = core.allocation_at(to) else {
                return false;
            };
            let env = DriverEnv {
                shared: &self.shared,
            };
            core.handle_peer(Instant::now(), id, from, data, &env, scratch)
        };
        if let Some(client) = client {
            batch.push(client, scratch);
        }
        true
    }

    /// Stops this server's own reading of the listening socket and returns a handle on it for
    /// the SFU's workers, which from then on read it and step the core themselves
    /// ([`Self::relay_from_client`]): a client's datagram then reaches the SFU connection in
    /// the worker that read it with no task in between, and one for another SFU socket goes
    /// through the fabric as before. Someone must read the handle: nothing else does now.
    pub fn listener_for_workers(&self) -> std::io::Result<std::net::UdpSocket> {
        use std::os::fd::AsFd;
        let fd = self.shared.socket.as_fd().try_clone_to_owned()?;
        let socket = std::net::UdpSocket::from(fd);
        socket.set_nonblocking(true)?;
        if let Some(t) = self.serve.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        Ok(socket)
    }

    /// A datagram a worker read from the listening socket (see
    /// [`Self::listener_for_workers`]), stepped as the server's own reader would. A datagram
    /// the policy relays to `local` (the worker's own socket) is returned for the worker to
    /// take in; one for any other SFU socket goes through the fabric as usual.
    pub fn relay_from_client<'a>(
        &self,
        from: SocketAddr,
        data: &'a [u8],
        local: SocketAddr,
    ) -> FromClient<'a> {
        match self.shared.step_client(from, data) {
            Step::Nothing => FromClient::Nothing,
            Step::Reply(reply) => FromClient::Reply(reply),
            Step::Relay { via, to, data } if to == local => FromClient::ToSfu {
                from: via.relayed(),
                data,
            },
            Step::Relay { via, to, data } => {
                via.send(data, to);
                FromClient::Nothing
            }
        }
    }

    /// Sends what [`Self::relay_from_sfu`] queued, from the listening socket, in as few system
    /// calls as the batch allows.
    pub fn send_batch(&self, batch: &mut SendBatch) -> Flushed {
        batch.flush(&self.shared.socket)
    }

    /// The fabric whose SFU sockets this server relays to.
    pub fn fabric(&self) -> &Arc<Fabric> {
        &self.shared.fabric
    }

    /// Counters of the in-process hand-off and the policy.
    pub fn fabric_stats(&self) -> FabricStats {
        self.shared.fabric.stats()
    }

    pub fn stats(&self) -> TurnStats {
        self.shared.lock().stats()
    }

    /// Allocations currently open (for leak checks).
    pub fn allocation_count(&self) -> usize {
        self.stats().allocations
    }

    pub fn close(self) {
        drop(self);
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(t) = self.serve.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        let closed = {
            let mut core = self.shared.lock();
            core.close_all();
            core.take_closed()
        };
        close_all(closed);
    }
}

impl Shared {
    /// One client datagram through the core, closing the relays of any allocation it ended:
    /// what the listening socket's reader does, whichever thread that is.
    fn step_client<'a>(self: &Arc<Self>, from: SocketAddr, data: &'a [u8]) -> Step<'a, Arc<Relay>> {
        let (step, closed) = {
            let mut core = self.lock();
            let mut env = DriverEnv { shared: self };
            let step = core.handle_client(Instant::now(), unix_now(), from, data, &mut env);
            (step, core.take_closed())
        };
        close_all(closed);
        step
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Core<Arc<Relay>>> {
        // A panic while stepping the core is a bug; the state it left is still the best there
        // is, and refusing all TURN traffic forever would be worse.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn close_all(relays: Vec<Arc<Relay>>) {
    for r in relays {
        r.close();
    }
}

/// The core's view of the world: the fabric decides who is a permitted peer, relay sockets are
/// bound here and get their reading task at once.
struct DriverEnv<'a> {
    shared: &'a Arc<Shared>,
}

impl Env for DriverEnv<'_> {
    type Relay = Arc<Relay>;

    fn permit_ip(&self, ip: IpAddr) -> bool {
        self.shared.sfu_ips.contains(&ip)
    }

    fn permit_peer(&self, addr: SocketAddr) -> bool {
        self.shared.fabric.kind_of(addr) == Some(Kind::Sfu)
    }

    fn open_relay(
        &mut self,
        id: AllocId,
        _client: SocketAddr,
        ipv6: bool,
    ) -> Result<(Arc<Relay>, SocketAddr), OpenError> {
        let s = self.shared;
        if ipv6 != s.relay_ip.is_ipv6() {
            return Err(OpenError::Family);
        }
        let (relay, relayed) = Relay::bind(s.relay_ip, s.public_ip, &s.fabric).map_err(|e| {
            tracing::warn!(error = %e, "TURN: cannot open a relay socket");
            OpenError::Capacity
        })?;
        let relay = Arc::new(relay);
        let task = net_tokio::spawn(relay_loop(Arc::downgrade(s), Arc::clone(&relay), id));
        relay.set_task(task.abort_handle());
        Ok((relay, relayed))
    }
}

/// What the listening socket reads into: large enough for any UDP datagram, so a client's is
/// never truncated.
const DATAGRAM: usize = 65_536;

/// What a relay reads into: the SFU sends datagrams of at most one MTU, and anything longer
/// from elsewhere is dropped anyway. Every allocation has one, so it stays small.
const RELAY_DATAGRAM: usize = 2048;

async fn serve(shared: Arc<Shared>) {
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let (n, from) = match shared.socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP port unreachable from an earlier send, and the like: not fatal.
            Err(e) => {
                tracing::debug!(error = %e, "TURN: receive error");
                continue;
            }
        };
        match shared.step_client(from, &buf[..n]) {
            Step::Nothing => {}
            Step::Reply(reply) => {
                let _ = shared.socket.try_send_to(&reply, from);
            }
            Step::Relay { via, to, data } => via.send(data, to),
        }
    }
}

async fn relay_loop(shared: std::sync::Weak<Shared>, relay: Arc<Relay>, id: AllocId) {
    let mut buf = vec![0u8; RELAY_DATAGRAM];
    let mut out = Vec::with_capacity(1500);
    while let Some((n, from)) = relay.recv(&mut buf).await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if n > buf.len() {
            continue;
        }
        let client = {
            let env = DriverEnv { shared: &shared };
            shared
                .lock()
                .handle_peer(Instant::now(), id, from, &buf[..n], &env, &mut out)
        };
        if let Some(client) = client {
            let _ = shared.socket.try_send_to(&out, client);
        }
    }
}

/// Ends what expired, once a second (lifetimes are minutes; a second late is immaterial).
async fn expire(shared: std::sync::Weak<Shared>) {
    let mut tick = net_tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let closed = {
            let mut core = shared.lock();
            core.handle_timeout(Instant::now());
            core.take_closed()
        };
        close_all(closed);
    }
}
