//! The edge's accept loop and every connection's life, from accept to close.
//!
//! Owns what `axum::serve` hides: the connection cap with, past it, a few slots that only
//! answer `/healthz` and `/metrics` (503 for anything else) so a probe still gets through when
//! the server is full (the counting is [`super::slots`]), the TLS handshake, hyper's HTTP/1
//! connection with its header read timeout, the idle timeout before an upgrade
//! ([`super::tracked`] notes the bytes moving), and a graceful shutdown with a bound.
//!
//! Never looks at a request (the router does), and never lets one client's pace hold up the
//! accept loop: every handshake and request runs in the connection's own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use net_tokio::io::{AsyncRead, AsyncWrite};
use net_tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::slots::{evicted, Eviction, Headroom, Pool, Slot};
use super::tracked::{Activity, Tracked};
use crate::metrics::{EdgeTimeout, Metrics, Refusal};
use crate::rt::watch;

/// The edge's limits and timeouts (each has a CLI flag; see `main.rs` and the README).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeConfig {
    /// A request head must be complete this long after the server starts waiting for it (on
    /// accept, or after the previous response); the TLS handshake gets the same time. Closes
    /// silent connections and slowloris clients.
    pub header_read_timeout: Duration,
    /// A connection not (yet) upgraded to a WebSocket is closed when no byte has moved either
    /// way for this long (e.g. a client that stopped reading a response). WebSockets have
    /// their own idle rule (the socket's heartbeat timeout).
    pub idle_timeout: Duration,
    /// Open connections (WebSockets included). `None` sizes it under the process's open-file
    /// limit ([`super::fd_limit::default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Connections accepted past the cap that only answer `/healthz` and `/metrics` (503
    /// otherwise) and close.
    pub healthz_headroom: usize,
    /// Open WebSockets per source address (IPv6: per /64).
    pub max_sockets_per_source: usize,
    /// Joined channels (peers, each with a media connection on the server) per source address
    /// across its sockets: one client cannot hold every room, nor a peer connection per channel
    /// of every socket.
    pub max_peers_per_source: usize,
    /// Open connections of any kind per source address (IPv6: per /64), counted at accept: a
    /// single client cannot hold the connection cap with silent connections. Past it a
    /// connection is closed at once.
    pub max_connections_per_source: usize,
    /// How long a shutdown waits for connections to finish before closing the rest.
    pub shutdown_grace: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: None,
            healthz_headroom: 8,
            max_sockets_per_source: 64,
            max_peers_per_source: 32,
            max_connections_per_source: 128,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl EdgeConfig {
    /// The connection cap in force: the configured one, or the default for this process.
    pub fn connection_cap(&self) -> usize {
        self.max_connections.unwrap_or_else(|| {
            super::fd_limit::default_max_connections(super::fd_limit::soft_limit())
        })
    }

    /// Checks the values are usable; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        for (name, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be longer than zero"));
            }
        }
        let max = Semaphore::MAX_PERMITS.min(u32::MAX as usize);
        for (name, v) in [
            ("max_connections", self.connection_cap()),
            ("healthz_headroom", self.healthz_headroom),
            ("max_sockets_per_source", self.max_sockets_per_source),
            ("max_peers_per_source", self.max_peers_per_source),
            (
                "max_connections_per_source",
                self.max_connections_per_source,
            ),
        ] {
            if v == 0 || v > max {
                return Err(format!("{name} = {v} must be between 1 and {max}"));
            }
        }
        Ok(())
    }
}

/// How long a `/healthz`-only connection may take to send its request: a probe sends at once,
/// and these slots are few, so a silent client must not hold one for long.
const HEADROOM_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long to wait after an accept error (e.g. out of descriptors) before accepting again, so
/// the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a shutdown waits, after closing the stragglers, for their tasks to let go.
const FORCED_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What every connection task shares.
struct Shared {
    router: Router,
    headroom_router: Router,
    tls: Option<TlsAcceptor>,
    cfg: EdgeConfig,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    hard_stop: watch::Receiver<bool>,
    /// Open connections per source.
    sources: crate::per_source::PerSource,
}

/// The running accept loop; [`Running::finish`] ends it after shutdown was signalled.
pub(crate) struct Running {
    task: net_tokio::task::JoinHandle<()>,
    ordinary: Pool,
    headroom: Pool,
    grace: Duration,
    hard_stop: watch::Sender<bool>,
}

/// What the accept loop is started with.
pub(crate) struct Parts {
    pub cfg: EdgeConfig,
    pub tls: Option<TlsAcceptor>,
    /// The full application.
    pub router: Router,
    /// What connections in the `/healthz` headroom get.
    pub headroom_router: Router,
    pub metrics: Arc<Metrics>,
    /// Turns true once: stop accepting and wind the connections down.
    pub shutdown: watch::Receiver<bool>,
    /// Turned true when the shutdown grace ran out: close whatever is still open.
    pub hard_stop: watch::Sender<bool>,
}

/// Starts accepting on `listener`; see [`Running::finish`] for the end.
pub(crate) fn spawn(listener: TcpListener, parts: Parts) -> Running {
    let ordinary = Pool::new(parts.cfg.connection_cap());
    let headroom = Headroom::new(parts.cfg.healthz_headroom);
    let grace = parts.cfg.shutdown_grace;
    let sources = crate::per_source::PerSource::new(parts.cfg.max_connections_per_source);
    let shared = Arc::new(Shared {
        router: parts.router,
        headroom_router: parts.headroom_router,
        tls: parts.tls,
        cfg: parts.cfg,
        metrics: parts.metrics,
        shutdown: parts.shutdown,
        hard_stop: parts.hard_stop.subscribe(),
        sources,
    });
    let task = net_tokio::spawn(accept_loop(
        listener,
        shared,
        ordinary.clone(),
        headroom.clone(),
    ));
    Running {
        task,
        ordinary,
        headroom: headroom.pool,
        grace,
        hard_stop: parts.hard_stop,
    }
}

impl Running {
    /// Open connections, WebSockets included.
    pub(crate) fn open_connections(&self) -> usize {
        self.ordinary.in_use() + self.headroom.in_use()
    }

    /// Waits (after shutdown was signalled) for the accept loop to stop and for every
    /// connection to close, at most the shutdown grace; then closes what is left.
    pub(crate) async fn finish(self) {
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "accept loop failed");
        }
        let all_closed = async {
            self.ordinary.all_returned().await;
            self.headroom.all_returned().await;
        };
        if net_tokio::time::timeout(self.grace, all_closed)
            .await
            .is_ok()
        {
            return;
        }
        let open = self.ordinary.in_use() + self.headroom.in_use();
        tracing::warn!(
            open,
            grace_ms = self.grace.as_millis() as u64,
            "connections still open after the shutdown grace: closing them"
        );
        self.hard_stop.send_replace(true);
        let closed = async {
            self.ordinary.all_returned().await;
            self.headroom.all_returned().await;
        };
        let _ = net_tokio::time::timeout(FORCED_CLOSE_WAIT, closed).await;
    }
}

/// Resolves once `flag` is (or turns) true, or its sender is gone.
pub(crate) async fn raised(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    ordinary: Pool,
    headroom: Headroom,
) {
    let shutdown = raised(shared.shutdown.clone());
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut shutdown => return,
            r = listener.accept() => r,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was accepted: the
                // listener itself is fine. Pause so a lasting condition does not spin.
                tracing::warn!(error = %e, "accept failed");
                net_tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(source) = shared.sources.try_acquire(remote.ip()) else {
            // One client holding this many connections is not a household behind a NAT.
            shared.metrics.refused(Refusal::ConnectionsPerSource);
            drop(stream);
            continue;
        };
        let (permit, eviction) = if let Ok(p) = ordinary.sem.clone().try_acquire_owned() {
            (p, None)
        } else {
            shared.metrics.refused(Refusal::ConnectionLimit);
            match headroom.acquire().await {
                Some((p, e)) => (p, Some(e)),
                None => {
                    // No slot came free: close at once, before it costs anything more.
                    drop(stream);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let slot = Slot::new(permit, source, Arc::clone(&shared.metrics));
        net_tokio::spawn(connection(
            Arc::clone(&shared),
            stream,
            remote,
            slot,
            eviction,
        ));
    }
}

async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    slot: Slot,
    mut eviction: Option<Eviction>,
) {
    let healthz_only = eviction.is_some();
    let activity = Arc::new(Activity::new());
    let io = Tracked {
        io: stream,
        activity: Arc::clone(&activity),
        _slot: slot,
    };
    let header_timeout = if healthz_only {
        shared.cfg.header_read_timeout.min(HEADROOM_HEADER_TIMEOUT)
    } else {
        shared.cfg.header_read_timeout
    };
    let Some(tls) = &shared.tls else {
        let conn = http(&shared, io, remote, &activity, header_timeout, healthz_only);
        tokio::select! {
            biased;
            _ = evicted(&mut eviction) => {}
            _ = conn => {}
        }
        return;
    };
    let handshake = tokio::select! {
        biased;
        _ = raised(shared.shutdown.clone()) => return,
        _ = evicted(&mut eviction) => return,
        r = net_tokio::time::timeout(header_timeout, tls.accept(io)) => r,
    };
    match handshake {
        Ok(Ok(tls_io)) => {
            let conn = http(
                &shared,
                tls_io,
                remote,
                &activity,
                header_timeout,
                healthz_only,
            );
            tokio::select! {
                biased;
                _ = evicted(&mut eviction) => {}
                _ = conn => {}
            }
        }
        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
        Err(_) => shared.metrics.timed_out(EdgeTimeout::TlsHandshake),
    }
}

/// Serves HTTP/1.1 on `io` until it closes, upgrades, times out, or the server stops.
async fn http<IO>(
    shared: &Shared,
    io: IO,
    remote: SocketAddr,
    activity: &Activity,
    header_timeout: Duration,
    healthz_only: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = if healthz_only {
        shared.headroom_router.clone()
    } else {
        shared.router.clone()
    };
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        router.clone().oneshot(req)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(!healthz_only);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let idle = activity.idle_for(shared.cfg.idle_timeout);
    tokio::pin!(idle);
    let ended = tokio::select! {
        biased;
        r = conn.as_mut() => Some(r),
        _ = &mut idle => None,
        _ = raised(shared.shutdown.clone()) => {
            // Finishes a request in flight, then closes; an idle connection closes at once.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                biased;
                r = conn.as_mut() => Some(r),
                _ = raised(shared.hard_stop.clone()) => return,
                _ = &mut idle => None,
            }
        }
    };
    match ended {
        Some(Ok(())) => {}
        Some(Err(e)) if e.is_timeout() => shared.metrics.timed_out(EdgeTimeout::Header),
        Some(Err(e)) => tracing::debug!(%remote, error = %e, "connection ended with an error"),
        None => {
            tracing::debug!(%remote, "idle connection closed before any upgrade");
            shared.metrics.timed_out(EdgeTimeout::Idle);
        }
    }
}
