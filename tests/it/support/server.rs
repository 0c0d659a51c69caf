//! One videoroom server per test, on an ephemeral port, in its own multi-threaded tokio runtime.
//!
//! The test body stays synchronous (it blocks on driver events); server calls that are async are
//! run with [`TestServer::block_on`].

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use videoroom::app::{App, Limits};
use videoroom::cluster::lease::LeaseConfig;
use videoroom::rt::Pid;
use videoroom::server::{ClusterConfig, Server, ServerConfig};

use super::rooms::until;

pub struct TestServer {
    // Declared before `rt`, but dropped explicitly inside the runtime in `Drop`.
    server: Option<Server>,
    addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    /// A server with the default configuration on 127.0.0.1, port 0.
    pub fn start() -> TestServer {
        TestServer::start_with(|_| {})
    }

    /// Like [`TestServer::start`], after `tweak` adjusted the configuration.
    pub fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        TestServer::start_inner(tweak, None)
    }

    /// Like [`TestServer::start_with`], with `logs` as the `tracing` subscriber of every thread
    /// the server runs on.
    pub fn start_logged(
        tweak: impl FnOnce(&mut ServerConfig),
        logs: tracing::Dispatch,
    ) -> TestServer {
        TestServer::start_inner(tweak, Some(logs))
    }

    fn start_inner(
        tweak: impl FnOnce(&mut ServerConfig),
        logs: Option<tracing::Dispatch>,
    ) -> TestServer {
        let mut cfg = ServerConfig {
            port: 0,
            ..ServerConfig::default()
        };
        tweak(&mut cfg);
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        // Starting runs on this thread: under the capture too, so what the server starts from
        // here (its media workers) logs into it.
        let start_under = logs
            .clone()
            .unwrap_or_else(|| tracing::dispatcher::get_default(|d| d.clone()));
        if let Some(logs) = logs {
            builder.on_thread_start(move || {
                // The thread's default for its whole life: the guard is never dropped.
                std::mem::forget(tracing::dispatcher::set_default(&logs));
            });
        }
        let rt = builder
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let server =
            tracing::dispatcher::with_default(&start_under, || rt.block_on(Server::start(cfg)))
                .expect("server starts on an ephemeral port");
        let addr = server.local_addr();
        TestServer {
            server: Some(server),
            addr,
            rt: Some(rt),
        }
    }

    /// A cluster node on the etcd at `etcd_url` (dist link on a free loopback port, lease TTL
    /// `ttl_secs`), after `tweak`; returns once it acts in the cluster, or panics after
    /// `ready_within`.
    pub fn cluster_node(
        etcd_url: &str,
        name: &str,
        ttl_secs: u64,
        ready_within: Duration,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let mut cluster = ClusterConfig::new(
            vec![etcd_url.to_owned()],
            name.to_owned(),
            "127.0.0.1:0".parse().expect("a socket address"),
        );
        cluster.lease = LeaseConfig::with_ttl(ttl_secs)
            .checked()
            .expect("a valid lease TTL");
        let srv = TestServer::start_with(|c| {
            c.cluster = Some(cluster);
            tweak(c);
        });
        until(&format!("{name} registers in etcd"), ready_within, || {
            srv.cluster().is_acting()
        });
        srv
    }

    /// With `max_peers_per_room` set.
    pub fn with_max_peers(n: usize) -> TestServer {
        TestServer::start_with(|c| {
            c.limits = Limits {
                max_peers_per_room: n,
                ..Limits::default()
            }
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL the phoenix client is given (it appends `/websocket?vsn=2.0.0`).
    pub fn url(&self) -> String {
        format!("ws://{}/socket", self.addr)
    }

    pub fn app(&self) -> &App {
        self.server.as_ref().expect("server is running").app()
    }

    /// Open HTTP connections on the server, WebSockets included.
    pub fn open_connections(&self) -> usize {
        self.server
            .as_ref()
            .expect("server is running")
            .open_connections()
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.as_ref().expect("runtime").block_on(f)
    }

    pub fn room_pid(&self, room: &str) -> Option<Pid> {
        self.app().room_pid(room)
    }

    pub fn room_peers(&self, room: &str) -> Vec<(String, Pid)> {
        self.block_on(self.app().room_peers(room))
    }

    /// The channel pid of peer `peer_id` in `room`; panics with the room's peers if absent.
    pub fn channel_pid(&self, room: &str, peer_id: &str) -> Pid {
        let peers = self.room_peers(room);
        peers
            .iter()
            .find(|(id, _)| id == peer_id)
            .map(|(_, pid)| *pid)
            .unwrap_or_else(|| panic!("peer {peer_id:?} is not in room {room:?}; peers: {peers:?}"))
    }

    /// The integrated TURN server's counters (`None` without the real media plane).
    #[cfg(feature = "media-webrtc")]
    pub fn turn_stats(&self) -> Option<videoroom::turn::TurnStats> {
        self.server
            .as_ref()
            .expect("server is running")
            .turn_stats()
    }

    /// The node's cluster mode; panics if it runs alone.
    pub fn cluster(&self) -> &videoroom::cluster::rooms::Cluster {
        self.server
            .as_ref()
            .expect("server is running")
            .cluster()
            .expect("the server runs in a cluster")
    }

    /// Ends the server as a crash would: every task and socket dropped at once, nothing
    /// released (in a cluster its lease lapses on its own).
    pub fn crash(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Dropping the server would shut it down in order; a crash does not.
            std::mem::forget(self.server.take());
            rt.shutdown_background();
        }
    }

    /// Graceful shutdown, awaited.
    pub fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            self.block_on(server.shutdown());
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            {
                let _guard = rt.enter();
                drop(self.server.take());
            }
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
