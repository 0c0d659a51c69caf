//! `videoroom`: serve the video room (by default on http://127.0.0.1:4000).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use videoroom::cluster::lease::LeaseConfig;
use videoroom::http::fd_limit;
use videoroom::join_token::{self, JoinSecret};
use videoroom::server::{
    ClusterConfig, EdgeConfig, MediaConfig, Server, ServerConfig, ServerLimits, TlsFiles,
};

#[derive(Parser, Debug)]
#[command(version, about = "A self-hosted video-conferencing server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, env = "VIDEOROOM_BIND", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "VIDEOROOM_PORT", default_value_t = 4000)]
    port: u16,
    /// Origin allowed to open the WebSocket besides the server's own, exactly
    /// scheme://host[:port], e.g. https://meet.example.org (repeatable). Pages served by this
    /// server (same host and port, http or https) and non-browser clients are always allowed.
    #[arg(
        long = "allowed-origin",
        env = "VIDEOROOM_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Most peers in one room.
    #[arg(long, env = "VIDEOROOM_MAX_PEERS", default_value_t = 32)]
    max_peers_per_room: usize,
    /// Run the network-free fake media plane instead of the webrtc SFU (always the case in a
    /// build without the `media-webrtc` feature).
    #[arg(long, env = "VIDEOROOM_FAKE_MEDIA")]
    fake_media: bool,
    /// Address the SFU's ICE sockets bind (repeatable).
    #[arg(
        long = "ice-ip",
        env = "VIDEOROOM_ICE_IPS",
        value_delimiter = ',',
        default_value = "127.0.0.1"
    )]
    ice_ips: Vec<IpAddr>,
    /// External IP of the integrated TURN server (deployments behind 1:1 NAT): the address
    /// browsers are told to reach it at, and the address of its relayed candidates. The SFU's
    /// own sockets only talk to that TURN server, so they keep their `--ice-ip` addresses.
    #[arg(long, env = "VIDEOROOM_PUBLIC_IP")]
    public_ip: Option<IpAddr>,
    /// Media worker threads (one event loop each, forwarding the rooms spread over them)
    /// [default: 1].
    #[arg(long, env = "VIDEOROOM_MEDIA_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    media_workers: Option<u16>,
    /// UDP address of the integrated TURN server.
    #[arg(long, env = "VIDEOROOM_TURN_BIND", default_value = "127.0.0.1:3478")]
    turn_bind: std::net::SocketAddr,
    /// Most TURN allocations open at once (each holds a UDP socket); at it the longest-idle
    /// one makes way, else 508 [default: as --max-connections, sized under the open-file
    /// limit].
    #[arg(long, env = "VIDEOROOM_TURN_MAX_ALLOCATIONS")]
    turn_max_allocations: Option<usize>,
    /// Most TURN allocations one peer's credential holds at once; at the quota a new one
    /// replaces the peer's longest-idle allocation (idle 8 s), else 486.
    #[arg(
        long,
        env = "VIDEOROOM_TURN_ALLOCATIONS_PER_PEER",
        default_value_t = 32
    )]
    turn_allocations_per_peer: usize,
    /// Most TURN allocations from one source address (IPv6: one /64), whatever credentials
    /// it uses; at it the source's longest-idle one makes way, else 486.
    #[arg(
        long,
        env = "VIDEOROOM_TURN_ALLOCATIONS_PER_SOURCE",
        default_value_t = 128
    )]
    turn_allocations_per_source: usize,
    /// Most rooms running at once; a join that would start one more is refused with "server is
    /// at its room limit" (joining a running room still works).
    #[arg(long, env = "VIDEOROOM_MAX_ROOMS", default_value_t = 1000)]
    max_rooms: usize,
    /// Seconds a joined peer may stay out of the media session (no `connect`) before its room
    /// drops it and frees its slot.
    #[arg(long, env = "VIDEOROOM_CONNECT_GRACE", default_value_t = 10)]
    connect_grace: u64,
    /// Serve HTTPS and WSS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, env = "VIDEOROOM_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "VIDEOROOM_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds a client has to send a complete request head (and finish a TLS handshake).
    #[arg(long, env = "VIDEOROOM_HEADER_READ_TIMEOUT", default_value = "10", value_parser = seconds)]
    header_read_timeout: Duration,
    /// Seconds a connection not upgraded to a WebSocket may go without a byte moving.
    #[arg(long, env = "VIDEOROOM_IDLE_TIMEOUT", default_value = "30", value_parser = seconds)]
    idle_timeout: Duration,
    /// Most open connections, WebSockets included [default: (open-file limit - 256) / 4,
    /// between 16 and 16384; the soft limit is raised to the hard one at start].
    #[arg(long, env = "VIDEOROOM_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Connections accepted past --max-connections that only answer /healthz and /metrics (503
    /// otherwise); when all are taken, the oldest makes way for the newest.
    #[arg(long, env = "VIDEOROOM_HEALTHZ_HEADROOM", default_value_t = 8)]
    healthz_headroom: usize,
    /// Most open WebSockets from one source address (IPv6: one /64); more get HTTP 429.
    /// Behind a reverse proxy every client has the proxy's address: raise it there.
    #[arg(long, env = "VIDEOROOM_MAX_SOCKETS_PER_SOURCE", default_value_t = 64)]
    max_sockets_per_source: usize,
    /// Most open connections of any kind from one source address (IPv6: one /64); more are
    /// closed at accept. Behind a reverse proxy, raise it as well as --max-sockets-per-source.
    #[arg(
        long,
        env = "VIDEOROOM_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 128
    )]
    max_connections_per_source: usize,
    /// Most rooms joined at once from one source address (IPv6: one /64), over all its sockets;
    /// each is a peer with a media connection on the server. More get a join error that says so.
    #[arg(long, env = "VIDEOROOM_MAX_PEERS_PER_SOURCE", default_value_t = 32)]
    max_peers_per_source: usize,
    /// Most channels (rooms) one WebSocket may join; the web app joins one.
    #[arg(long, env = "VIDEOROOM_MAX_CHANNELS_PER_SOCKET", default_value_t = 4)]
    max_channels_per_socket: usize,
    /// Seconds a shutdown (SIGTERM, Ctrl-C) waits for connections to close before dropping them.
    #[arg(long, env = "VIDEOROOM_SHUTDOWN_GRACE", default_value = "5", value_parser = seconds)]
    shutdown_grace: Duration,
    /// Log line format.
    #[arg(long, env = "VIDEOROOM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    /// Shared secret (at least 16 bytes) that turns on join tokens: every join then needs a
    /// token for its room minted with `videoroom token` (default: none, anyone may join).
    #[arg(
        long,
        env = "VIDEOROOM_JOIN_SECRET",
        global = true,
        hide_env_values = true
    )]
    join_secret: Option<String>,
    /// Cluster mode: etcd client URLs, comma-separated (e.g. http://127.0.0.1:2379). Rooms are
    /// then claimed in etcd and spread over every node started with the same etcd; needs
    /// --node-name and --dist-listen. Without it the server runs alone, as always.
    #[arg(
        long,
        env = "VIDEOROOM_ETCD",
        value_delimiter = ',',
        requires_all = ["node_name", "dist_listen"]
    )]
    etcd: Vec<String>,
    /// Cluster mode: this node's name, unique in the cluster and the same across restarts.
    #[arg(long, env = "VIDEOROOM_NODE_NAME", requires = "etcd")]
    node_name: Option<String>,
    /// Cluster mode: the TCP address other nodes connect to this one at (its dist listener).
    #[arg(long, env = "VIDEOROOM_DIST_LISTEN", requires = "etcd")]
    dist_listen: Option<std::net::SocketAddr>,
    /// Cluster mode: the host:port other nodes dial, when --dist-listen is not it (a wildcard
    /// bind, NAT) [default: --dist-listen].
    #[arg(long, env = "VIDEOROOM_DIST_ADVERTISE", requires = "etcd")]
    dist_advertise: Option<String>,
    /// Cluster mode: seconds of the node's etcd lease. A node that cannot renew it for TTL less
    /// two fifths ends its rooms (their clients rejoin on live nodes); a dead node's rooms are
    /// free again after it.
    #[arg(
        long,
        env = "VIDEOROOM_LEASE_TTL",
        default_value_t = 10,
        requires = "etcd"
    )]
    lease_ttl: u64,
    /// Cluster mode: the etcd key prefix, one per deployment sharing an etcd.
    #[arg(
        long,
        env = "VIDEOROOM_ETCD_PREFIX",
        default_value = "/videoroom/v1/",
        requires = "etcd"
    )]
    etcd_prefix: String,
}

/// The cluster configuration, if cluster mode is on; an incomplete one is an error.
fn cluster_config(cli: &Cli) -> Result<Option<ClusterConfig>, String> {
    let etcd: Vec<String> = cli.etcd.iter().filter(|e| !e.is_empty()).cloned().collect();
    if etcd.is_empty() {
        return Ok(None);
    }
    let (Some(name), Some(listen)) = (&cli.node_name, cli.dist_listen) else {
        return Err("--etcd needs --node-name and --dist-listen".into());
    };
    let lease = LeaseConfig::with_ttl(cli.lease_ttl)
        .checked()
        .map_err(|e| format!("--lease-ttl: {e}"))?;
    let mut cfg = ClusterConfig::new(etcd, name.clone(), listen);
    cfg.dist_advertise = cli.dist_advertise.clone();
    cfg.prefix = cli.etcd_prefix.clone();
    cfg.lease = lease;
    Ok(Some(cfg))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a link that admits its holder to one room until it expires (needs the server's
    /// join secret: --join-secret or VIDEOROOM_JOIN_SECRET).
    Token {
        /// The room the link admits to (required).
        #[arg(long, env = "VIDEOROOM_TOKEN_ROOM")]
        room: String,
        /// How long the link works: 90s, 30m, 24h or 7d.
        #[arg(long, env = "VIDEOROOM_TOKEN_TTL", default_value = "24h")]
        ttl: String,
        /// The server's address as browsers reach it.
        #[arg(
            long,
            env = "VIDEOROOM_PUBLIC_URL",
            default_value = "http://127.0.0.1:4000"
        )]
        url: String,
    },
}

/// The join secret, if one is set; a weak one is an error worth stopping for.
fn join_secret(cli: &Cli) -> Result<Option<JoinSecret>, String> {
    match &cli.join_secret {
        None => Ok(None),
        Some(s) => JoinSecret::new(s.as_bytes())
            .map(Some)
            .map_err(|e| format!("--join-secret / VIDEOROOM_JOIN_SECRET: {e}")),
    }
}

/// `videoroom token`: prints `<url>/?room=<room>&token=<token>`.
fn print_token_link(
    secret: Option<JoinSecret>,
    room: &str,
    ttl: &str,
    url: &str,
) -> Result<(), String> {
    let secret = secret.ok_or(
        "no join secret: set VIDEOROOM_JOIN_SECRET (or --join-secret) to the server's secret",
    )?;
    videoroom::channel::room_name::check(room, ServerLimits::default().max_room_name_bytes)
        .map_err(|e| format!("--room {room:?}: {e}"))?;
    let ttl = join_token::parse_ttl(ttl).map_err(|e| format!("--ttl: {e}"))?;
    let token = secret.mint(room, std::time::SystemTime::now() + ttl);
    println!("{}/?room={room}&token={token}", url.trim_end_matches('/'));
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line (for log collectors).
    Json,
}

/// A positive number of seconds, fractions allowed.
fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v > 0.0 && v <= 86_400.0) {
        return Err(format!(
            "{s} s is out of range (more than 0, at most 86400)"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

#[net_tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| videoroom::logsafe::DEFAULT_FILTER.into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match cli.log_format {
        LogFormat::Pretty => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let secret = match join_secret(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("videoroom: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Command::Token { room, ttl, url }) = &cli.command {
        return match print_token_link(secret, room, ttl, url) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("videoroom token: {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let cluster = match cluster_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("videoroom: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut limits = ServerLimits {
        max_rooms: cli.max_rooms,
        connect_grace: std::time::Duration::from_secs(cli.connect_grace),
        ..ServerLimits::for_peers(cli.max_peers_per_room)
    };
    limits.socket.max_channels = cli.max_channels_per_socket;
    if let Err(e) = limits.validate() {
        eprintln!("videoroom: {e}");
        return std::process::ExitCode::from(2);
    }
    match fd_limit::raise_to_hard() {
        Ok(n) => tracing::debug!(open_files = n, "open-file limit"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit; the connection cap is sized under the current one")
        }
    }
    let edge = EdgeConfig {
        header_read_timeout: cli.header_read_timeout,
        idle_timeout: cli.idle_timeout,
        max_connections: cli.max_connections,
        healthz_headroom: cli.healthz_headroom,
        max_sockets_per_source: cli.max_sockets_per_source,
        max_connections_per_source: cli.max_connections_per_source,
        max_peers_per_source: cli.max_peers_per_source,
        shutdown_grace: cli.shutdown_grace,
    };
    let tls = match (cli.tls_cert, cli.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let cap = edge.connection_cap();
    let cfg = ServerConfig {
        join_secret: secret,
        bind: cli.bind,
        port: cli.port,
        allowed_origins: cli
            .allowed_origins
            .into_iter()
            .filter(|o| !o.is_empty())
            .collect(),
        limits,
        edge,
        tls,
        media: MediaConfig {
            real: !cli.fake_media,
            ice_ips: cli.ice_ips,
            public_ip: cli.public_ip,
            turn_bind: cli.turn_bind,
            media_workers: cli
                .media_workers
                .map_or_else(videoroom::server::default_media_workers, usize::from),
            // The same budget as connections: each holds one descriptor.
            turn_max_allocations: cli.turn_max_allocations.unwrap_or(cap),
            turn_max_allocations_per_peer: cli.turn_allocations_per_peer,
            turn_max_allocations_per_source: cli.turn_allocations_per_source,
            ..MediaConfig::default()
        },
        cluster,
    };
    let server = match Server::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("videoroom: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!(
        max_connections = cap,
        "videoroom listening on {scheme}://{}",
        server.local_addr()
    );
    if let Some(c) = server.cluster() {
        // With `--dist-listen …:0` this is the only place the chosen port shows.
        tracing::info!(
            node = c.node_id(),
            "dist link listening on {}",
            c.dist_addr()
        );
    }
    shutdown_signal().await;
    tracing::info!("shutting down: closing every connection with 1012");
    server.shutdown().await;
    std::process::ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = net_tokio::signal::ctrl_c().await;
    };
    let term = async {
        match net_tokio::signal::unix::signal(net_tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    net_tokio::select! {
        biased;
        _ = ctrl_c => {}
        _ = term => {}
    }
}
