//! The HTTP edge: the WebSocket upgrade's serializer-version check, `/healthz` and the web app.

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

/// The page and its bundle come out of the binary with the right content types; an unknown
/// asset is 404.
#[test]
fn web_app_is_served() {
    let srv = TestServer::start();
    for (path, ty) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
    ] {
        let r = http::get(srv.addr(), path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
        let want = format!("content-type: {ty}");
        assert!(
            r.text.to_ascii_lowercase().contains(&want),
            "GET {path}: want {want:?} in {}",
            r.text
        );
    }
    for path in ["/assets/nope.js", "/assets/", "/assets/../Cargo.toml"] {
        let r = http::get(srv.addr(), path);
        assert_eq!(r.status, 404, "GET {path}: {}", r.text);
    }
}

/// By default only the server's own pages (Origin = the request's Host, over http or https)
/// and clients that send no Origin may open the WebSocket; anything else gets 403.
#[test]
fn origin_defaults_to_the_servers_own() {
    let srv = TestServer::start();
    let path = "/socket/websocket?vsn=2.0.0";
    let addr = srv.addr();
    let port = addr.port();
    for (origin, status) in [
        (format!("http://{addr}"), 101),
        (format!("https://{addr}"), 101),
        ("https://evil.example".to_owned(), 403),
        (format!("http://127.0.0.1:{}", port.wrapping_add(1)), 403),
        (format!("http://localhost:{port}"), 403),
        ("null".to_owned(), 403),
    ] {
        let r = http::upgrade_with(srv.addr(), path, &format!("Origin: {origin}\r\n"));
        assert_eq!(r.status, status, "Origin {origin}: {}", r.text);
    }
    let none = http::upgrade(srv.addr(), path);
    assert_eq!(none.status, 101, "no Origin header: {}", none.text);
    assert_eq!(
        srv.app()
            .metrics
            .refusals(videoroom::metrics::Refusal::Origin),
        4
    );
}

/// An origin allow-list widens the default: a listed `Origin` upgrades, the server's own still
/// does, another gets 403, and a request without `Origin` (a non-browser client) is allowed.
#[test]
fn origin_allow_list() {
    let srv = TestServer::start_with(|c| c.allowed_origins = vec!["https://meet.example".into()]);
    let path = "/socket/websocket?vsn=2.0.0";
    let allowed = http::upgrade_with(srv.addr(), path, "Origin: https://meet.example\r\n");
    assert_eq!(allowed.status, 101, "allowed origin: {}", allowed.text);
    let own = http::upgrade_with(
        srv.addr(),
        path,
        &format!("Origin: http://{}\r\n", srv.addr()),
    );
    assert_eq!(own.status, 101, "own origin: {}", own.text);
    let other = http::upgrade_with(srv.addr(), path, "Origin: https://evil.example\r\n");
    assert_eq!(other.status, 403, "other origin: {}", other.text);
    let none = http::upgrade(srv.addr(), path);
    assert_eq!(none.status, 101, "no Origin header: {}", none.text);
}
