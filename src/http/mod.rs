//! The HTTP edge (axum): the WebSocket endpoint `/socket/websocket`, `/healthz`, `/metrics`,
//! and the web app (`/` and `/assets/...`, see [`assets`]). The connection side (accept loop,
//! cap, timeouts, TLS, shutdown) is [`serve`].
//!
//! Owns the handshake checks (protocol version, [`origin`], subprotocol, WebSockets
//! [`crate::per_source`]) and the pumps between axum's WebSocket and a socket process's frame queues.
//! Holds no protocol logic: the socket process and its core decide everything about frames.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

mod assets;
pub mod fd_limit;
pub mod origin;
pub mod serve;
mod slots;
pub mod tls;
mod tracked;

use crate::app::App;
use crate::conn::{self, Transport, WsIn, WsOut};
use crate::metrics::Refusal;
use crate::per_source::{ForSource, PerSource, SourceSlot};
use crate::rt::watch;

/// Reads what lives outside the app at scrape time (the TURN server's counters).
pub type Probe = Arc<dyn Fn() -> crate::metrics::TurnReport + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
pub struct Edge {
    pub app: App,
    /// Origins allowed besides the server's own (exact `scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
    pub shutdown: watch::Receiver<bool>,
    /// Turns true when the shutdown grace ran out: every WebSocket still open is dropped.
    pub hard_stop: watch::Receiver<bool>,
    pub per_source: PerSource,
    /// Joined channels per source address, across its sockets.
    pub peer_sources: PerSource,
    pub turn_report: Probe,
    /// The connection cap in force (reported by `/metrics`).
    pub connection_cap: usize,
}

pub fn router(edge: Edge) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{name}", get(assets::asset))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/socket/websocket", get(websocket))
        .with_state(edge)
}

/// What a connection accepted past the cap gets: `/healthz` and `/metrics` answer (the
/// operator most needs them when the server is full), anything else is 503.
pub fn headroom_router(edge: Edge) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "server at its connection limit; try again later",
            )
        })
        .with_state(edge)
}

/// 200 `ok` when the node serves. In a cluster, 503 while the node may not act (not registered
/// yet, or fenced: it cannot prove its etcd lease alive, so its rooms ended and it takes no
/// joins) or drains, so a load balancer sends new sockets to the other nodes meanwhile.
async fn healthz(State(edge): State<Edge>) -> Response {
    match edge.app.cluster.get().map(|c| c.health()) {
        Some(h) if h.draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping: this node is draining\n",
        )
            .into_response(),
        Some(h) if !h.acting => (
            StatusCode::SERVICE_UNAVAILABLE,
            "fenced: this node cannot prove its etcd lease alive and serves no room until etcd \
             answers again\n",
        )
            .into_response(),
        _ => "ok".into_response(),
    }
}

async fn metrics(State(edge): State<Edge>) -> Response {
    let turn = (edge.turn_report)();
    let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    let mut gauges = vec![
        (
            "videoroom_turn_allocations",
            "Allocations on the integrated TURN server.",
            i64::try_from(turn.allocations).unwrap_or(i64::MAX),
        ),
        (
            "videoroom_http_connection_limit",
            "The connection cap (connections past it only get /healthz).",
            gauge(edge.connection_cap),
        ),
    ];
    if let Some(h) = edge.app.cluster.get().map(|c| c.health()) {
        gauges.extend([
            (
                "videoroom_cluster_acting",
                "1 while this node may act (registered, lease before its fence deadline).",
                i64::from(h.acting),
            ),
            (
                "videoroom_cluster_draining",
                "1 once this node drains (SIGTERM): no new rooms.",
                i64::from(h.draining),
            ),
            (
                "videoroom_cluster_rooms_owned",
                "Rooms this node owns through a claim in etcd.",
                gauge(h.rooms),
            ),
            (
                "videoroom_cluster_nodes_known",
                "Nodes in the placement list as last read from etcd.",
                gauge(h.known_nodes),
            ),
        ]);
    }
    let mut body = edge.app.metrics.render(&gauges);
    turn.render(&mut body);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn forbidden(why: &'static str) -> Response {
    (StatusCode::FORBIDDEN, why).into_response()
}

/// Read and write buffer of one WebSocket connection.
const SOCKET_BUFFER_BYTES: usize = 8 * 1024;

async fn websocket(
    State(edge): State<Edge>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // phoenix.js always sends vsn=2.0.0; only the V2 JSON serializer is implemented.
    if params.get("vsn").map(String::as_str) != Some("2.0.0") {
        return forbidden("unsupported protocol version: use vsn=2.0.0");
    }
    // A header that is not text is no origin at all, so it can only match nothing.
    let text = |h| headers.get(h).map(|v| v.to_str().unwrap_or(""));
    if !origin::allowed(
        text(header::ORIGIN),
        text(header::HOST),
        &edge.allowed_origins,
    ) {
        edge.app.metrics.refused(Refusal::Origin);
        return forbidden("origin not allowed: open the page from this server, or list the origin with --allowed-origin");
    }
    // tungstenite's 128 KiB read and write buffers were most of an idle socket's ~150 KiB
    // (benches/idle_channels.rs); Phoenix frames are small, and a larger one is still read and
    // written whole, just in more than one step. A frame is refused at its header when it
    // announces more than a message may hold, before any of it is buffered.
    // The write buffer is bounded too: what piles up there (pongs to a client that pings and
    // never reads, frames to one that stopped reading) ends the connection at the bound rather
    // than growing with the client's bandwidth.
    let max = edge.app.limits.socket.max_frame_bytes;
    let mut ws = ws
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(SOCKET_BUFFER_BYTES)
        .max_write_buffer_size((2 * max).max(2 * SOCKET_BUFFER_BYTES));
    if let Some(protos) = headers.get(header::SEC_WEBSOCKET_PROTOCOL) {
        let offered = protos.to_str().unwrap_or("");
        if !offered.split(',').any(|p| p.trim() == "phoenix") {
            return forbidden("unsupported websocket subprotocol");
        }
        ws = ws.protocols(["phoenix"]);
    }
    let Some(slot) = edge.per_source.try_acquire(remote.ip()) else {
        edge.app.metrics.refused(Refusal::SocketsPerSource);
        let why = format!(
            "too many WebSocket connections from your address (limit {})",
            edge.per_source.limit()
        );
        return (StatusCode::TOO_MANY_REQUESTS, why).into_response();
    };
    let ip = remote.ip();
    ws.on_upgrade(move |socket| serve_socket(edge, socket, slot, ip))
}

fn is_too_long(e: axum::Error) -> bool {
    matches!(
        e.into_inner().downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// Runs one WebSocket until it closes, or until a shutdown outlasted its grace. `_slot` is the
/// source's count for it, given back when this returns.
async fn serve_socket(edge: Edge, socket: WebSocket, _slot: SourceSlot, ip: std::net::IpAddr) {
    tokio::select! {
        biased;
        _ = serve::raised(edge.hard_stop.clone()) => {}
        _ = pump(edge, socket, ip) => {}
    }
}

async fn pump(edge: Edge, socket: WebSocket, remote: std::net::IpAddr) {
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, mut out_rx) = mpsc::channel(edge.app.limits.outbound_frames);
    let queued = conn::QueuedBytes::new(edge.app.limits.outbound_bytes);
    let transport = Transport {
        incoming: in_rx,
        outgoing: out_tx,
        queued: std::sync::Arc::clone(&queued),
        channel_slots: Some(ForSource::new(edge.peer_sources.clone(), remote)),
    };
    let (app, shutdown) = (edge.app.clone(), edge.shutdown.clone());
    let conn = edge
        .app
        .sys
        .spawn(edge.app.limits.socket_mailbox, move |ctx| {
            conn::run(app, transport, shutdown, ctx)
        });
    let (mut sink, mut stream) = socket.split();
    let writer = async move {
        while let Some(out) = out_rx.recv().await {
            let r = match out {
                WsOut::Text(t) => {
                    let n = t.len();
                    let r = sink.send(Message::Text(t.into())).await;
                    queued.written(n);
                    r
                }
                WsOut::Close(code, reason) => {
                    let frame = CloseFrame {
                        code,
                        reason: reason.into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    break;
                }
            };
            if r.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    };
    let reader = async move {
        while let Some(msg) = stream.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    // The transport enforces the frame limit before buffering a frame; the
                    // socket core still decides what the client is told (1009).
                    if is_too_long(e) {
                        let _ = in_tx.send(WsIn::TooBig).await;
                    }
                    break;
                }
            };
            let frame = match msg {
                Message::Text(t) => WsIn::Text(t.to_string()),
                Message::Binary(b) => WsIn::Binary(b.to_vec()),
                Message::Close(_) => break,
                // Pings are answered by the WebSocket layer itself.
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if in_tx.send(frame).await.is_err() {
                break;
            }
        }
    };
    // Reader done (client left): the dropped frame queue ends the socket process, which drops
    // its outbound queue, so the writer drains, answers the close and stops. Writer done (the
    // process closed the connection): give the client a moment to answer the close. Process
    // gone while the writer is stuck on a client that stopped reading (a slow consumer): give
    // the writer a moment, then drop the connection rather than hold it open.
    let sys = edge.app.sys.clone();
    let process_gone = sys.wait_exit(conn.pid());
    tokio::pin!(writer, reader, process_gone);
    let grace = std::time::Duration::from_secs(5);
    tokio::select! {
        biased;
        _ = &mut writer => {
            let _ = crate::rt::time::timeout(grace, reader).await;
        }
        // The reader also ends on an error, such as the write buffer over its bound while it
        // answered a ping: the writer may then be stuck on a client that reads nothing.
        _ = &mut reader => {
            let _ = crate::rt::time::timeout(grace, writer).await;
        }
        _ = &mut process_gone => {
            let _ = crate::rt::time::timeout(std::time::Duration::from_secs(1), writer).await;
        }
    }
    drop(conn);
}
