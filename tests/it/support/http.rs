//! Plain HTTP/1.1 requests over a blocking TCP socket, for status-code checks (`/healthz`, the
//! WebSocket upgrade's version check) without an HTTP client dependency.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response head: status code and the raw head text (status line and headers).
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub text: String,
}

/// Sends `request` (a full request head, CRLF-terminated) and reads the response head.
pub fn request(addr: SocketAddr, request: &str) -> Head {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).expect("write request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "reading the response to {:?}: {e}; got so far: {:?}",
                request.lines().next().unwrap_or(""),
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_owned();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in response: {text:?}"));
    Head { status, text: head }
}

/// `GET path` with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> Head {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// A WebSocket upgrade request for `path_and_query`, as a browser or `ws` would send it.
pub fn upgrade(addr: SocketAddr, path_and_query: &str) -> Head {
    upgrade_with(addr, path_and_query, "")
}

/// [`upgrade`] with extra header lines (each ending in CRLF).
pub fn upgrade_with(addr: SocketAddr, path_and_query: &str, extra_headers: &str) -> Head {
    request(
        addr,
        &format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
        ),
    )
}
