//! The HTTP edge: the WebSocket upgrade's serializer-version check and `/healthz`.

use crate::support::http;
use crate::support::server::TestServer;

/// Only `vsn=2.0.0` (V2 JSON) upgrades; any other version, or none (Phoenix assumes 1.0.0, the
/// V1 serializer this server does not implement), gets HTTP 403 and no upgrade.
#[test]
fn wrong_vsn_is_403() {
    let srv = TestServer::start();
    let ok = http::upgrade(srv.addr(), "/socket/websocket?vsn=2.0.0");
    assert_eq!(ok.status, 101, "V2 upgrades: {}", ok.text);
    for q in ["?vsn=1.0.0", "?vsn=123.1.1", "?vsn=abc", ""] {
        let r = http::upgrade(srv.addr(), &format!("/socket/websocket{q}"));
        assert_eq!(r.status, 403, "upgrade with {q:?}: {}", r.text);
    }
}

#[test]
fn healthz_is_200() {
    let srv = TestServer::start();
    let r = http::get(srv.addr(), "/healthz");
    assert_eq!(r.status, 200, "{}", r.text);
}
