//! A running server: binds the listener, serves the HTTP edge in the background, and shuts
//! down gracefully (every socket closed with 1012 so clients reconnect elsewhere or later).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::sync::watch;

use crate::app::{App, Limits};
use crate::http::{self, Edge};

pub use crate::app::Limits as ServerLimits;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub bind: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// Origins allowed to open a WebSocket (exact `scheme://host[:port]`); empty allows all.
    /// Requests without an Origin header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    pub limits: Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 4000,
            allowed_origins: Vec::new(),
            limits: Limits::default(),
        }
    }
}

pub struct Server {
    addr: SocketAddr,
    app: App,
    shutdown: watch::Sender<bool>,
    task: net_tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Binds and starts serving in the background.
    pub async fn start(cfg: ServerConfig) -> std::io::Result<Server> {
        let listener = net_tokio::net::TcpListener::bind((cfg.bind, cfg.port)).await?;
        let addr = listener.local_addr()?;
        let app = App::new(cfg.limits);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let edge = Edge {
            app: app.clone(),
            allowed_origins: cfg.allowed_origins,
            shutdown: shutdown_rx.clone(),
        };
        let mut stop = shutdown_rx;
        let task = net_tokio::spawn(async move {
            axum::serve(listener, http::router(edge))
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
        Ok(Server {
            addr,
            app,
            shutdown,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// Closes every socket with 1012 and stops accepting connections.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "server task failed"),
        }
    }
}
