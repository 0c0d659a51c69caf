//! `videoroom`: serve the video room (by default on http://127.0.0.1:4000).

use std::net::IpAddr;

use clap::Parser;
use videoroom::server::{MediaConfig, Server, ServerConfig, ServerLimits};

#[derive(Parser, Debug)]
#[command(version, about = "A self-hosted video-conferencing server")]
struct Cli {
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
}

#[net_tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let limits = ServerLimits::for_peers(cli.max_peers_per_room);
    let cfg = ServerConfig {
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
