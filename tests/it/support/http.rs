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

/// `GET path` with `Connection: close`; the head and the whole body (read to EOF).
pub fn get_body(addr: SocketAddr, path: &str) -> (Head, String) {
    let mut s = connect(addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("reading the response to GET {path}: {e}"));
    split_response(&buf)
}

/// The same as [`get_body`] from async code (the server may share the caller's runtime).
pub async fn get_body_async(addr: SocketAddr, path: &str) -> (Head, String) {
    use net_tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = net_tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut buf = Vec::new();
    net_tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no complete response to GET {path} within 5 s"))
        .unwrap_or_else(|e| panic!("reading the response to GET {path}: {e}"));
    split_response(&buf)
}

fn split_response(buf: &[u8]) -> (Head, String) {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in response: {text:?}"));
    let head = Head {
        status,
        text: head.to_owned(),
    };
    (head, body.to_owned())
}

/// A TCP connection to `addr` whose reads give up after 5 s.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Whether the server closed `s` (EOF or reset) within its read timeout; data read on the way
/// is discarded. Panics if the read timeout passes with the connection still open.
#[track_caller]
pub fn assert_closed_by_server(s: &mut TcpStream, what: &str) {
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{what}: the server kept the connection open")
            }
            Err(_) => return, // reset
        }
    }
}

/// Sends a WebSocket upgrade for `path_and_query` and returns the response head and the
/// connection, ready for raw frames (nothing after the head has been read).
pub fn upgrade_stream(
    addr: SocketAddr,
    path_and_query: &str,
    extra_headers: &str,
) -> (Head, TcpStream) {
    let mut s = connect(addr);
    write!(
        s,
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
    )
    .expect("write upgrade");
    // Byte by byte, so no frame after the head is consumed here.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            r => panic!(
                "upgrade response cut short ({r:?}) after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {text:?}"));
    (
        Head {
            status,
            text: text.trim_end().to_owned(),
        },
        s,
    )
}

/// The samples of a Prometheus text exposition: `name{labels}` → value.
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample line {l:?}"));
            let v = v
                .parse()
                .unwrap_or_else(|_| panic!("bad sample value in {l:?}"));
            (series.to_owned(), v)
        })
        .collect()
}

/// Polls `cond` until it holds; panics with `what` after `within`.
#[track_caller]
pub fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
