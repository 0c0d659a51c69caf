//! A running server: binds the listener, serves the HTTP edge in the background, and shuts
//! down gracefully (every socket closed with 1012 so clients reconnect elsewhere or later)
//! within the configured grace.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::rt::watch;

use crate::app::{App, Limits};
use crate::cluster::rooms::Cluster;
pub use crate::cluster::rooms::ClusterConfig;
use crate::http::{self, serve, Edge};
use crate::join_token::JoinSecret;
use crate::per_source::PerSource;

pub use crate::app::Limits as ServerLimits;
pub use crate::http::serve::EdgeConfig;
pub use crate::http::tls::TlsFiles;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub bind: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// Origins allowed to open a WebSocket besides the server's own (the request's Host, over
    /// http or https); exact `scheme://host[:port]`. Requests without an Origin header
    /// (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    pub limits: Limits,
    /// With a secret, every join needs a token for its room (`crate::join_token`).
    pub join_secret: Option<JoinSecret>,
    /// The HTTP edge's connection cap, timeouts and per-source limit.
    pub edge: EdgeConfig,
    /// Serve HTTPS and WSS with this certificate and key (PEM) instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// The media plane. The default is the network-free fake plane (signalling tests); the
    /// binary turns the real one on.
    pub media: MediaConfig,
    /// Cluster mode: rooms claimed in etcd and spread over nodes (docs/cluster.md). `None`: one
    /// node with the in-process registry.
    pub cluster: Option<ClusterConfig>,
}

/// Which media plane rooms get, and where the real one listens.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// The webrtc SFU and its integrated TURN server. Ignored (the fake plane runs) when the
    /// crate is built without the `media-webrtc` feature.
    pub real: bool,
    /// Addresses the SFU's ICE sockets bind (one per peer connection, OS-chosen ports).
    pub ice_ips: Vec<IpAddr>,
    /// A deployment's external IP: advertised in ICE candidates and TURN relay addresses.
    pub public_ip: Option<IpAddr>,
    /// The integrated TURN server's UDP listen address (port 0 picks one).
    pub turn_bind: SocketAddr,
    /// Backstop expiry of the per-peer TURN credentials handed out in `offerData`. A
    /// credential is revoked (and its allocations closed) when its peer leaves; until then the
    /// client makes new allocations with it at every renegotiation, so this must outlast a
    /// call.
    pub turn_credential_ttl: std::time::Duration,
    /// Hand packets between the TURN relay sockets and the SFU's sockets over in-process
    /// (`crate::fabric`) instead of through the kernel. On by default; off only to compare
    /// (the relay policy is the same either way). The media workers step the TURN core
    /// themselves for their own rooms, so what still takes this path is a client's packet for
    /// a room on a worker other than the first.
    pub in_process_turn: bool,
    /// Worker threads of the media plane (`engine::webrtc::worker`), rooms spread over them
    /// (0 is taken as 1).
    pub media_workers: usize,
    /// TURN quotas: allocations in all, per peer and per source address.
    pub turn_max_allocations: usize,
    pub turn_max_allocations_per_peer: usize,
    pub turn_max_allocations_per_source: usize,
}

/// One media worker: it forwards every room at the lowest CPU per packet measured. More
/// workers spread rooms over cores for capacity, at a cost per packet (BENCHMARKS.md, "The
/// sans-IO plane").
pub fn default_media_workers() -> usize {
    1
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            real: false,
            ice_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            public_ip: None,
            turn_bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3478),
            turn_credential_ttl: std::time::Duration::from_secs(12 * 3600),
            in_process_turn: true,
            media_workers: default_media_workers(),
            turn_max_allocations: 2048,
            turn_max_allocations_per_peer: 32,
            turn_max_allocations_per_source: 128,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 4000,
            allowed_origins: Vec::new(),
            limits: Limits::default(),
            join_secret: None,
            edge: EdgeConfig::default(),
            tls: None,
            media: MediaConfig::default(),
            cluster: None,
        }
    }
}

pub struct Server {
    addr: SocketAddr,
    app: App,
    shutdown: watch::Sender<bool>,
    edge: serve::Running,
    cluster: Option<Cluster>,
    #[cfg(feature = "media-webrtc")]
    turn: Option<std::sync::Arc<crate::turn::TurnServer>>,
}

impl Server {
    /// Binds and starts serving in the background. Errors say what failed (bad limits, TLS
    /// files, the address taken) in a sentence fit for an operator.
    pub async fn start(cfg: ServerConfig) -> std::io::Result<Server> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        cfg.limits.validate().map_err(invalid)?;
        cfg.edge.validate().map_err(invalid)?;
        let tls = match &cfg.tls {
            Some(files) => Some(http::tls::acceptor(files).map_err(|e| invalid(e.to_string()))?),
            None => None,
        };
        let listener = net_tokio::net::TcpListener::bind((cfg.bind, cfg.port))
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {}:{}: {e}", cfg.bind, cfg.port),
                )
            })?;
        let addr = listener.local_addr()?;
        let app = App::new(cfg.limits).with_join_secret(cfg.join_secret);
        #[cfg(feature = "media-webrtc")]
        let (app, turn) = if cfg.media.real {
            let (app, turn) = real_media(app, &cfg.media).await?;
            (app, Some(turn))
        } else {
            (app, None)
        };
        let cluster = match cfg.cluster {
            Some(c) => Some(Cluster::start(c, &app).await.map_err(invalid)?),
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (hard_stop, hard_stop_rx) = watch::channel(false);
        #[cfg(feature = "media-webrtc")]
        let probe_turn = turn.clone();
        let turn_report: http::Probe = std::sync::Arc::new(move || {
            #[cfg(feature = "media-webrtc")]
            return turn_report(probe_turn.as_deref());
            #[cfg(not(feature = "media-webrtc"))]
            crate::metrics::TurnReport::default()
        });
        let edge = Edge {
            app: app.clone(),
            allowed_origins: cfg.allowed_origins,
            shutdown: shutdown_rx.clone(),
            hard_stop: hard_stop_rx,
            per_source: PerSource::new(cfg.edge.max_sockets_per_source),
            peer_sources: PerSource::new(cfg.edge.max_peers_per_source),
            turn_report,
            connection_cap: cfg.edge.connection_cap(),
        };
        let running = serve::spawn(
            listener,
            serve::Parts {
                cfg: cfg.edge,
                tls,
                router: http::router(edge.clone()),
                headroom_router: http::headroom_router(edge),
                metrics: std::sync::Arc::clone(&app.metrics),
                shutdown: shutdown_rx,
                hard_stop,
            },
        );
        Ok(Server {
            addr,
            app,
            shutdown,
            edge: running,
            cluster,
            #[cfg(feature = "media-webrtc")]
            turn,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// The node's cluster mode, if it runs in one.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// The integrated TURN server's listen address, when the real media plane runs.
    pub fn turn_addr(&self) -> Option<SocketAddr> {
        #[cfg(feature = "media-webrtc")]
        return self.turn.as_ref().map(|t| t.local_addr());
        #[cfg(not(feature = "media-webrtc"))]
        None
    }

    /// Live allocations on the integrated TURN server (0 without the real media plane).
    pub async fn turn_allocations(&self) -> usize {
        #[cfg(feature = "media-webrtc")]
        return turn_report(self.turn.as_deref()).allocations as usize;
        #[cfg(not(feature = "media-webrtc"))]
        0
    }

    /// Open HTTP connections, WebSockets included.
    pub fn open_connections(&self) -> usize {
        self.edge.open_connections()
    }

    /// The integrated TURN server's counters (`None` without the real media plane).
    #[cfg(feature = "media-webrtc")]
    pub fn turn_stats(&self) -> Option<crate::turn::TurnStats> {
        self.turn.as_ref().map(|t| t.stats())
    }

    /// Counters of the in-process TURN hand-off and the relay policy (`None` without the real
    /// media plane).
    #[cfg(feature = "media-webrtc")]
    pub fn fabric_stats(&self) -> Option<crate::fabric::FabricStats> {
        self.turn.as_ref().map(|t| t.fabric_stats())
    }

    /// Stops accepting, closes every socket with 1012, lets requests in flight finish, and
    /// returns once every connection is closed or the shutdown grace ran out (then the rest
    /// are dropped).
    ///
    /// In a cluster the node drains first: it takes no new rooms and ends its own (their
    /// clients get `phx_error` and rejoin, landing on other nodes), and its lease is revoked.
    pub async fn shutdown(self) {
        if let Some(cluster) = &self.cluster {
            cluster.stop().await;
        }
        self.shutdown.send_replace(true);
        self.edge.finish().await;
    }
}

/// What [`Server::turn_allocations`] and `/metrics` read of the TURN server and the relay
/// policy (all zero without the real media plane).
#[cfg(feature = "media-webrtc")]
fn turn_report(turn: Option<&crate::turn::TurnServer>) -> crate::metrics::TurnReport {
    let Some(turn) = turn else {
        return crate::metrics::TurnReport::default();
    };
    let (t, f) = (turn.stats(), turn.fabric_stats());
    crate::metrics::TurnReport {
        allocations: t.allocations as u64,
        refused_forbidden: t.forbidden,
        refused_quota: t.quota_refused,
        refused_auth: t.auth_refused,
        evicted: t.evicted,
        dropped: t.dropped,
        policy_refused: f.refused,
    }
}

/// Starts the TURN server and gives every room the webrtc plane.
///
/// Each peer gets its own TURN REST credentials (username `<expiry>:<peer id>`) in its
/// `offerData`; the plane closes that peer's allocations when it leaves.
#[cfg(feature = "media-webrtc")]
async fn real_media(
    app: App,
    media: &MediaConfig,
) -> std::io::Result<(App, std::sync::Arc<crate::turn::TurnServer>)> {
    use crate::engine::webrtc::{factory, PlaneConfig};
    use crate::engine::{NegotiationConfig, TurnIssuer, TurnServer};
    use crate::turn::{TurnConfig, TurnServer as Turn};

    if let Some(ip) = media
        .ice_ips
        .iter()
        .find(|ip| ip.is_unspecified() || ip.is_multicast())
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("ICE address {ip} must be a unicast address: the TURN relay reaches the SFU at exactly those addresses"),
        ));
    }
    if media.turn_max_allocations == 0
        || media.turn_max_allocations_per_peer == 0
        || media.turn_max_allocations_per_source == 0
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "TURN allocation limits must be at least 1: browsers reach the SFU only through TURN",
        ));
    }
    let relay_ip = media
        .ice_ips
        .first()
        .copied()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    // One fabric for the TURN server and every room's plane: it is the registry of the SFU's
    // sockets that the relay policy checks, and the hand-off between them.
    let fabric = std::sync::Arc::new(if media.in_process_turn {
        crate::fabric::Fabric::new(crate::fabric::DEFAULT_INBOX_CAPACITY)
    } else {
        crate::fabric::Fabric::kernel_only()
    });
    let turn = Turn::start(TurnConfig {
        bind: media.turn_bind,
        relay_ip,
        public_ip: media.public_ip,
        sfu_ips: media.ice_ips.clone(),
        credential_ttl: media.turn_credential_ttl,
        limits: crate::turn::TurnLimits {
            max_allocations: media.turn_max_allocations,
            max_allocations_per_peer: media.turn_max_allocations_per_peer,
            max_allocations_per_source: media.turn_max_allocations_per_source,
            ..crate::turn::TurnLimits::default()
        },
        ..TurnConfig::new(std::sync::Arc::clone(&fabric))
    })
    .await
    .map_err(std::io::Error::other)?;
    let turn = std::sync::Arc::new(turn);
    let issuer = std::sync::Arc::clone(&turn);
    let negotiation = NegotiationConfig {
        turn_issuer: Some(TurnIssuer::new(move |peer| {
            let creds = issuer.credentials(peer);
            vec![TurnServer {
                server_addr: creds.server_addr.to_string(),
                server_port: creds.server_port,
                transport: "udp".to_owned(),
                username: creds.username,
                password: creds.password,
            }]
        })),
        ..NegotiationConfig::default()
    };
    let plane = PlaneConfig {
        ice_ips: media.ice_ips.clone(),
        turn: Some(std::sync::Arc::clone(&turn)),
        fabric,
        metrics: std::sync::Arc::clone(&app.metrics),
    };
    let workers = media.media_workers.max(1);
    let planes = factory(plane, workers)?;
    tracing::info!(workers, "media plane: sans-IO workers");
    Ok((app.with_media(negotiation, planes), turn))
}
