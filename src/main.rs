//! `videoroom`: serve the video room (by default on http://127.0.0.1:4000).

use std::net::IpAddr;

use clap::{Parser, Subcommand};
use videoroom::join_token::{self, JoinSecret};
use videoroom::server::{MediaConfig, Server, ServerConfig, ServerLimits};

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
    /// Origin allowed to open the WebSocket, e.g. https://meet.example.org (repeatable;
    /// none allows every origin).
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
    /// UDP address of the integrated TURN server.
    #[arg(long, env = "VIDEOROOM_TURN_BIND", default_value = "127.0.0.1:3478")]
    turn_bind: std::net::SocketAddr,
    /// Most TURN allocations open at once (each holds a UDP socket); beyond it, 508.
    #[arg(long, env = "VIDEOROOM_TURN_MAX_ALLOCATIONS", default_value_t = 2048)]
    turn_max_allocations: usize,
    /// Most TURN allocations one peer's credential holds at once; at the quota a new one
    /// replaces the peer's longest-idle allocation (idle 8 s), else 486.
    #[arg(
        long,
        env = "VIDEOROOM_TURN_ALLOCATIONS_PER_PEER",
        default_value_t = 32
    )]
    turn_allocations_per_peer: usize,
    /// Most rooms running at once; a join that would start one more is refused with "server is
    /// at its room limit" (joining a running room still works).
    #[arg(long, env = "VIDEOROOM_MAX_ROOMS", default_value_t = 1000)]
    max_rooms: usize,
    /// Seconds a joined peer may stay out of the media session (no `connect`) before its room
    /// drops it and frees its slot.
    #[arg(long, env = "VIDEOROOM_CONNECT_GRACE", default_value_t = 10)]
    connect_grace: u64,
    /// Shared secret (at least 16 bytes) that turns on join tokens: every join then needs a
    /// token for its room minted with `videoroom token` (default: none, anyone may join).
    #[arg(
        long,
        env = "VIDEOROOM_JOIN_SECRET",
        global = true,
        hide_env_values = true
    )]
    join_secret: Option<String>,
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

#[net_tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
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
    let limits = ServerLimits {
        max_rooms: cli.max_rooms,
        connect_grace: std::time::Duration::from_secs(cli.connect_grace),
        ..ServerLimits::for_peers(cli.max_peers_per_room)
    };
    if let Err(e) = limits.validate() {
        eprintln!("videoroom: {e}");
        return std::process::ExitCode::from(2);
    }
    let cfg = ServerConfig {
        join_secret: secret,
        bind: cli.bind,
        port: cli.port,
        allowed_origins: cli.allowed_origins,
        limits,
        media: MediaConfig {
            real: !cli.fake_media,
            ice_ips: cli.ice_ips,
            public_ip: cli.public_ip,
            turn_bind: cli.turn_bind,
            turn_max_allocations: cli.turn_max_allocations,
            turn_max_allocations_per_peer: cli.turn_allocations_per_peer,
            ..MediaConfig::default()
        },
    };
    let server = match Server::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("videoroom: cannot listen on {}:{}: {e}", cli.bind, cli.port);
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!("videoroom listening on http://{}", server.local_addr());
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
