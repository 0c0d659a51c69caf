//! The HTTP edge under hostile or careless clients: slowloris and silent connections, a client
//! that stops reading, the connection cap and its `/healthz` headroom, a bounded shutdown, a
//! WebSocket frame announcing more than a message may hold, and WebSockets per source.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use videoroom::metrics::EdgeTimeout;
use videoroom::server::EdgeConfig;

use crate::support::http::{self, assert_closed_by_server, eventually};
use crate::support::server::TestServer;

const WS_PATH: &str = "/socket/websocket?vsn=2.0.0";

fn with_edge(edge: EdgeConfig) -> TestServer {
    TestServer::start_with(|c| c.edge = edge)
}

/// A client that sends part of a request line and then trickles a byte now and then, and one
/// that sends nothing at all, are both closed once the header read timeout has passed (the
/// trickle does not extend it); the timeouts are counted.
#[test]
fn slowloris_and_silent_connections_are_closed_at_the_header_read_timeout() {
    let timeout = Duration::from_millis(300);
    let srv = with_edge(EdgeConfig {
        header_read_timeout: timeout,
        ..EdgeConfig::default()
    });
    let started = Instant::now();
    let mut silent = http::connect(srv.addr());
    let mut slow = http::connect(srv.addr());
    slow.write_all(b"GET /hea").unwrap();
    let trickle = std::thread::spawn(move || {
        for b in b"lthz HTTP/1.1\r\nHost: x\r\n" {
            std::thread::sleep(Duration::from_millis(50));
            if slow.write_all(&[*b]).is_err() {
                break;
            }
        }
        slow
    });
    assert_closed_by_server(&mut silent, "silent connection");
    let mut slow = trickle.join().unwrap();
    assert_closed_by_server(&mut slow, "slowloris connection");
    assert!(
        started.elapsed() >= timeout,
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    eventually(Duration::from_secs(2), "both timeouts counted", || {
        srv.app().metrics.timeouts(EdgeTimeout::Header) == 2
    });
    // A well-behaved client is unaffected.
    assert_eq!(http::get(srv.addr(), "/healthz").status, 200);
}

/// A client that asks for the app bundle over and over without reading the answers stalls the
/// server's writes; with the header timeout out of the way, the idle timeout closes it.
#[test]
fn a_connection_where_nothing_moves_is_closed_at_the_idle_timeout() {
    let srv = with_edge(EdgeConfig {
        header_read_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_millis(400),
        ..EdgeConfig::default()
    });
    let mut s = http::connect(srv.addr());
    // ~70 KiB each: far more than the loopback socket buffers hold, so the server's writes
    // stop while requests are still queued (a request head is waiting, not being read).
    let req = format!(
        "GET /assets/app.js HTTP/1.1\r\nHost: {}\r\n\r\n",
        srv.addr()
    );
    for _ in 0..400 {
        if s.write_all(req.as_bytes()).is_err() {
            break;
        }
    }
    eventually(Duration::from_secs(10), "the idle timeout fired", || {
        srv.app().metrics.timeouts(EdgeTimeout::Idle) == 1
    });
    eventually(
        Duration::from_secs(2),
        "the connection was released",
        || srv.open_connections() == 0,
    );
    assert_eq!(srv.app().metrics.timeouts(EdgeTimeout::Header), 0);
    assert_closed_by_server(&mut s, "stalled connection");
}

/// At the cap (an open WebSocket counts), a new connection gets 503 for anything but
/// `/healthz`, which still answers 200; clients squatting the headroom silently give their
/// slots up to newer ones (oldest first), so a probe still gets through; a closed connection
/// frees its slot.
#[test]
fn at_the_connection_cap_only_healthz_answers() {
    let srv = with_edge(EdgeConfig {
        max_connections: Some(3),
        healthz_headroom: 2,
        header_read_timeout: Duration::from_secs(60),
        ..EdgeConfig::default()
    });
    let (head, ws) = http::upgrade_stream(srv.addr(), WS_PATH, "");
    assert_eq!(head.status, 101, "{}", head.text);
    let silent: Vec<_> = (0..2).map(|_| http::connect(srv.addr())).collect();
    eventually(Duration::from_secs(2), "three connections held", || {
        srv.open_connections() == 3
    });

    let page = http::get(srv.addr(), "/");
    assert_eq!(
        page.status, 503,
        "an ordinary request at the cap: {}",
        page.text
    );
    let health = http::get(srv.addr(), "/healthz");
    assert_eq!(health.status, 200, "/healthz at the cap: {}", health.text);
    let up = http::upgrade(srv.addr(), WS_PATH);
    assert_eq!(up.status, 503, "a WebSocket at the cap: {}", up.text);

    // Squatters fill the headroom; a probe still gets in, and the oldest squatter is the one
    // that makes way.
    eventually(
        Duration::from_secs(2),
        "headroom connections closed",
        || srv.open_connections() == 3,
    );
    let mut oldest = http::connect(srv.addr());
    eventually(Duration::from_secs(2), "first squatter held", || {
        srv.open_connections() == 4
    });
    let mut newer = http::connect(srv.addr());
    eventually(Duration::from_secs(2), "headroom full", || {
        srv.open_connections() == 5
    });
    let probe = http::get(srv.addr(), "/healthz");
    assert_eq!(
        probe.status, 200,
        "/healthz with the headroom full: {}",
        probe.text
    );
    assert_closed_by_server(&mut oldest, "the oldest squatter");
    newer.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(newer.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the newer squatter keeps its slot"
    );
    drop(newer);

    // Closing the WebSocket gives its slot back.
    drop(ws);
    eventually(
        Duration::from_secs(5),
        "the WebSocket's slot is free",
        || srv.open_connections() == 2,
    );
    assert_eq!(http::get(srv.addr(), "/").status, 200);
    drop(silent);
}

/// A shutdown completes within its grace (plus the moment it takes to drop the rest) although
/// a slowloris client and a WebSocket client that never answers the close are still
/// connected; both are then disconnected.
#[test]
fn shutdown_is_bounded_by_its_grace() {
    let grace = Duration::from_millis(500);
    let mut srv = with_edge(EdgeConfig {
        header_read_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        shutdown_grace: grace,
        ..EdgeConfig::default()
    });
    let mut slow = http::connect(srv.addr());
    slow.write_all(b"GET /healthz HT").unwrap();
    let (head, mut ws) = http::upgrade_stream(srv.addr(), WS_PATH, "");
    assert_eq!(head.status, 101, "{}", head.text);
    eventually(Duration::from_secs(2), "both connections held", || {
        srv.open_connections() == 2
    });
    let started = Instant::now();
    srv.shutdown();
    let took = started.elapsed();
    assert!(
        took >= grace,
        "shutdown returned before its grace: {took:?}"
    );
    assert!(
        took < grace + Duration::from_secs(2),
        "shutdown took {took:?} with a grace of {grace:?}"
    );
    assert_closed_by_server(&mut slow, "slowloris connection after shutdown");
    assert_closed_by_server(&mut ws, "silent WebSocket after shutdown");
}

/// A client frame header announcing more than a message may hold closes the socket with 1009
/// at once: the server answers while the body has not been sent (so it never waited for it,
/// nor made room for it).
#[test]
fn a_frame_announcing_more_than_the_limit_is_refused_at_its_header() {
    let srv = TestServer::start_with(|c| c.limits.socket.max_frame_bytes = 64 * 1024);
    let (head, mut ws) = http::upgrade_stream(srv.addr(), WS_PATH, "");
    assert_eq!(head.status, 101, "{}", head.text);
    // FIN + text; masked, 64-bit length of 16 MiB; the mask key; then a few bytes of body.
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(16u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(b"[null,");
    ws.write_all(&frame).unwrap();
    let mut h = [0u8; 2];
    ws.read_exact(&mut h)
        .expect("the server answers before the body arrives");
    assert_eq!(h[0], 0x88, "a close frame (got {h:02x?})");
    let mut payload = vec![0u8; usize::from(h[1] & 0x7f)];
    ws.read_exact(&mut payload).unwrap();
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    assert_eq!(
        code,
        1009,
        "close code; reason {:?}",
        String::from_utf8_lossy(&payload[2..])
    );
}

/// Past the per-source limit an upgrade gets 429 with a plain reason; closing a socket frees
/// its place.
#[test]
fn websockets_per_source_are_capped() {
    let srv = with_edge(EdgeConfig {
        max_sockets_per_source: 2,
        ..EdgeConfig::default()
    });
    let open = || http::upgrade_stream(srv.addr(), WS_PATH, "");
    let (a, first) = open();
    let (b, _second) = open();
    assert_eq!((a.status, b.status), (101, 101));
    let (refused, mut s) = open();
    assert_eq!(refused.status, 429, "{}", refused.text);
    let len: usize = refused
        .text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")?
                .trim()
                .parse()
                .ok()
        })
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("too many WebSocket connections from your address (limit 2)"),
        "{body:?}"
    );
    assert_eq!(
        http::get(srv.addr(), "/healthz").status,
        200,
        "plain HTTP is not limited"
    );
    drop(first);
    // The slot comes back once the server has seen the socket close.
    eventually(Duration::from_secs(5), "a freed slot is reused", || {
        let (h, _s) = open();
        h.status == 101
    });
}

/// One source holding silent connections hits its own limit, not the server's: past it, its
/// connections are closed at accept, and the server keeps serving everyone else.
#[test]
fn connections_per_source_are_capped_at_accept() {
    let srv = with_edge(EdgeConfig {
        max_connections_per_source: 3,
        max_connections: Some(100),
        header_read_timeout: Duration::from_secs(60),
        ..EdgeConfig::default()
    });
    let silent: Vec<_> = (0..3).map(|_| http::connect(srv.addr())).collect();
    eventually(Duration::from_secs(2), "three connections held", || {
        srv.open_connections() == 3
    });
    let mut fourth = http::connect(srv.addr());
    assert_closed_by_server(&mut fourth, "a connection past the per-source limit");
    assert_eq!(srv.open_connections(), 3, "the refused one holds nothing");
    // Closing them gives their places back (this client's probe included).
    drop(silent);
    eventually(Duration::from_secs(5), "places given back", || {
        srv.open_connections() == 0
    });
    let m = metrics(&srv);
    assert!(
        m["videoroom_http_refused_total{reason=\"connections_per_source\"}"] >= 1.0,
        "{m:?}"
    );
}

fn metrics(srv: &TestServer) -> std::collections::BTreeMap<String, f64> {
    let (_, body) = http::get_body(srv.addr(), "/metrics");
    http::parse_metrics(&body)
}
