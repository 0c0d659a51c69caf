//! `GET /metrics` over the wire: Prometheus text whose gauges follow joins, crashes and leaves,
//! and whose join histogram and crash counters move.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::http::{self, eventually};
use crate::support::server::TestServer;

fn scrape(srv: &TestServer) -> BTreeMap<String, f64> {
    let (head, body) = http::get_body(srv.addr(), "/metrics");
    assert_eq!(head.status, 200, "{}", head.text);
    assert!(
        head.text
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        head.text
    );
    http::parse_metrics(&body)
}

fn sample(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no {series} in /metrics: {m:#?}"))
}

/// Waits until every `(series, value)` holds in a scrape.
#[track_caller]
fn until(srv: &TestServer, what: &str, want: &[(&str, f64)]) {
    let mut last = BTreeMap::new();
    let mut ok = || {
        last = scrape(srv);
        want.iter().all(|(s, v)| last.get(*s) == Some(v))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: want {want:?}, last scrape {last:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends `phx_join` for `topic` with ref `r` and waits for its reply; returns the status.
async fn join(ws: &mut Ws, topic: &str, r: &str) -> String {
    let frame = json!([r, r, topic, "phx_join", {}]).to_string();
    ws.send(Message::Text(frame.into())).await.unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("join reply within 5 s")
            .expect("socket open")
            .expect("frame");
        let Message::Text(t) = m else { continue };
        let f: Value = serde_json::from_str(&t).unwrap();
        if f[1] == r && f[3] == "phx_reply" {
            return f[4]["status"].as_str().unwrap_or_default().to_owned();
        }
    }
}

#[test]
fn metrics_follow_joins_crashes_and_leaves() {
    let srv = TestServer::start();
    let m = scrape(&srv);
    for s in [
        "videoroom_rooms",
        "videoroom_peers",
        "videoroom_channels",
        "videoroom_sockets",
        "videoroom_turn_allocations",
        "videoroom_join_duration_seconds_count",
        "videoroom_forwarded_packets_total",
    ] {
        assert_eq!(sample(&m, s), 0.0, "{s} before anything happened");
    }
    assert!(
        sample(&m, "videoroom_http_connections") >= 1.0,
        "the scrape itself"
    );

    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", srv.addr());
    let mut ws = srv.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        assert_eq!(join(&mut ws, "room:m", "1").await, "ok");
        ws
    });
    until(
        &srv,
        "one peer joined",
        &[
            ("videoroom_rooms", 1.0),
            ("videoroom_peers", 1.0),
            ("videoroom_channels", 1.0),
            ("videoroom_sockets", 1.0),
            ("videoroom_join_duration_seconds_count", 1.0),
            ("videoroom_join_duration_seconds_bucket{le=\"+Inf\"}", 1.0),
        ],
    );

    // A killed room: its channel exits abnormally (the client gets phx_error) and both are
    // counted by exit class; the gauges drop with them.
    srv.app().kill_room("m").expect("room runs");
    until(
        &srv,
        "room crash counted",
        &[
            ("videoroom_rooms", 0.0),
            ("videoroom_peers", 0.0),
            ("videoroom_channels", 0.0),
            (
                "videoroom_process_crashes_total{process=\"room\",reason=\"killed\"}",
                1.0,
            ),
            (
                "videoroom_process_crashes_total{process=\"channel\",reason=\"error\"}",
                1.0,
            ),
            ("videoroom_sockets", 1.0),
        ],
    );
    srv.block_on(async { assert_eq!(join(&mut ws, "room:m", "2").await, "ok") });
    until(
        &srv,
        "rejoined",
        &[
            ("videoroom_rooms", 1.0),
            ("videoroom_peers", 1.0),
            ("videoroom_join_duration_seconds_count", 2.0),
        ],
    );

    srv.block_on(async {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
    until(
        &srv,
        "everything gone after the client left",
        &[
            ("videoroom_rooms", 0.0),
            ("videoroom_peers", 0.0),
            ("videoroom_channels", 0.0),
            ("videoroom_sockets", 0.0),
            (
                "videoroom_process_crashes_total{process=\"socket\",reason=\"killed\"}",
                0.0,
            ),
            (
                "videoroom_process_crashes_total{process=\"room\",reason=\"crashed\"}",
                0.0,
            ),
        ],
    );
    eventually(Duration::from_secs(5), "every connection closed", || {
        srv.open_connections() == 0
    });
}
