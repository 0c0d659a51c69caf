//! The little HTTP/1.1 the etcd gateway needs: one `POST` per connection (`Connection: close`)
//! and the answer read back, plus the server half the simulation's etcd answers with.
//!
//! Owns framing only: the request line and headers it writes, the status line, headers and body
//! it reads (by `Content-Length`, by chunked transfer encoding with its trailers, or to EOF),
//! and the bounds on each, so a broken or hostile peer costs at most [`MAX_HEAD`] plus the body
//! bound in memory. It is generic over `AsyncRead`/`AsyncWrite` so the same code runs on tokio's
//! sockets, on madsim's simulated ones (the crate's `tokio` is madsim-tokio) and on byte slices in
//! the tests.
//!
//! It never connects, retries or times out (the client does), never keeps a connection for a
//! second request, and never interprets a body.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest answer the client accepts from etcd: a range over every room of a big deployment
/// fits many times over, and anything larger is a bug or a hostile peer, not data to buffer.
pub const MAX_RESPONSE: usize = 4 << 20;

/// The largest request the simulation's etcd accepts (etcd's own default limit is 1.5 MiB).
pub const MAX_REQUEST: usize = 2 << 20;

/// The bound on a status or request line plus headers (and on chunked trailers).
pub const MAX_HEAD: usize = 64 << 10;

/// What went wrong reading or writing one exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection before the message was complete.
    #[error("connection closed in the middle of the {0}")]
    Truncated(&'static str),
    #[error("malformed HTTP: {0}")]
    Malformed(String),
    #[error("the {what} is larger than the {limit}-byte bound")]
    TooLarge { what: &'static str, limit: usize },
}

/// An answer as read off the wire, body already de-chunked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Names as sent; look them up with [`Response::header`], which ignores case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive, as HTTP names are).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// A request as the simulation's etcd reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The bytes of a JSON `POST` to `path` on `host` (the `Host` header: `host:port` as configured).
pub fn encode_post(host: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Writes one `POST` on `stream` and reads its answer (at most `limit` body bytes).
pub async fn post<S>(
    stream: &mut S,
    host: &str,
    path: &str,
    body: &[u8],
    limit: usize,
) -> Result<Response, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&encode_post(host, path, body)).await?;
    // madsim's sockets only send on flush.
    stream.flush().await?;
    read_response(stream, limit).await
}

/// Reads one answer. Interim `1xx` answers (other than 101) are skipped, as RFC 9110 asks.
pub async fn read_response<R: AsyncRead + Unpin>(
    reader: R,
    limit: usize,
) -> Result<Response, HttpError> {
    let mut r = Buffered::new(reader);
    loop {
        let head = r.read_head().await?;
        let (status, headers) = parse_status_head(&head)?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        // RFC 9112 6.3: these never carry a body whatever the headers say.
        let body = if status == 204 || status == 304 || (100..200).contains(&status) {
            Vec::new()
        } else {
            match body_framing(&headers)? {
                Framing::Chunked => r.read_chunked(limit).await?,
                Framing::Length(n) => r.read_length(n, limit, "response body").await?,
                Framing::ToEof => r.read_to_eof(limit).await?,
            }
        };
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

/// Reads one request with a `Content-Length` body (or none) of at most `limit` bytes. A chunked
/// request body is refused: the client here never sends one.
pub async fn read_request<R: AsyncRead + Unpin>(
    reader: R,
    limit: usize,
) -> Result<Request, HttpError> {
    let mut r = Buffered::new(reader);
    let head = r.read_head().await?;
    let (method, path, headers) = parse_request_head(&head)?;
    let body = match body_framing(&headers)? {
        Framing::Chunked => {
            return Err(HttpError::Malformed(
                "chunked request bodies are not supported".into(),
            ))
        }
        Framing::Length(n) => r.read_length(n, limit, "request body").await?,
        // A request without a length has no body (RFC 9112 6.3, rule 6).
        Framing::ToEof => Vec::new(),
    };
    Ok(Request {
        method,
        path,
        headers,
        body,
    })
}

/// Writes a complete answer with a `Content-Length` and `Connection: close`, and flushes it.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out).await?;
    w.flush().await
}

/// The reason phrases of the statuses etcd's gateway answers with (only cosmetic in HTTP/1.1).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Chunked,
    Length(usize),
    ToEof,
}

fn body_framing(headers: &[(String, String)]) -> Result<Framing, HttpError> {
    let mut te = None;
    let mut length: Option<usize> = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            te = Some(value.as_str());
        } else if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.trim().parse().map_err(|_| {
                HttpError::Malformed(format!("bad Content-Length {:?}", truncate(value)))
            })?;
            // Two different lengths are the classic request-smuggling shape: never guess.
            if length.is_some_and(|m| m != n) {
                return Err(HttpError::Malformed(
                    "conflicting Content-Length headers".into(),
                ));
            }
            length = Some(n);
        }
    }
    if let Some(te) = te {
        // Transfer-Encoding overrides Content-Length (RFC 9112 6.3); chunked must be the last
        // coding, and no other coding is ever used by etcd.
        let last = te.rsplit(',').next().unwrap_or("").trim();
        if last.eq_ignore_ascii_case("chunked") {
            return Ok(Framing::Chunked);
        }
        return Err(HttpError::Malformed(format!(
            "unsupported Transfer-Encoding {:?}",
            truncate(te)
        )));
    }
    Ok(length.map_or(Framing::ToEof, Framing::Length))
}

/// Splits a head (without its blank line) into lines and the header fields after the first.
fn parse_fields(head: &[u8]) -> Result<(String, Vec<(String, String)>), HttpError> {
    let text =
        std::str::from_utf8(head).map_err(|_| HttpError::Malformed("head is not UTF-8".into()))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            return Err(HttpError::Malformed("obsolete header line folding".into()));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| {
            HttpError::Malformed(format!("header without ':': {:?}", truncate(line)))
        })?;
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(HttpError::Malformed(format!(
                "bad header name {:?}",
                truncate(name)
            )));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok((first, headers))
}

fn parse_status_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), HttpError> {
    let (line, headers) = parse_fields(head)?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!(
            "not an HTTP/1 status line: {:?}",
            truncate(&line)
        )));
    }
    let status = match code.parse::<u16>() {
        Ok(s) if code.len() == 3 && (100..600).contains(&s) => s,
        _ => {
            return Err(HttpError::Malformed(format!(
                "bad status code in {:?}",
                truncate(&line)
            )))
        }
    };
    Ok((status, headers))
}

type RequestHead = (String, String, Vec<(String, String)>);

fn parse_request_head(head: &[u8]) -> Result<RequestHead, HttpError> {
    let (line, headers) = parse_fields(head)?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(path), Some(version), None)
            if !method.is_empty() && path.starts_with('/') && version.starts_with("HTTP/1.") =>
        {
            Ok((method.to_string(), path.to_string(), headers))
        }
        _ => Err(HttpError::Malformed(format!(
            "bad request line {:?}",
            truncate(&line)
        ))),
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A read buffer over the stream: the head may arrive with part of the body, and chunk sizes are
/// lines, so reads go through here rather than straight to the socket.
struct Buffered<R> {
    inner: R,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    eof: bool,
}

impl<R: AsyncRead + Unpin> Buffered<R> {
    fn new(inner: R) -> Self {
        Buffered {
            inner,
            buf: Vec::new(),
            pos: 0,
            eof: false,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more bytes into the buffer; false at EOF.
    async fn fill(&mut self) -> Result<bool, HttpError> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 8192];
        let n = self.inner.read(&mut chunk).await?;
        if n == 0 {
            self.eof = true;
            return Ok(false);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(true)
    }

    /// The head up to (not including) its blank line, which is consumed.
    async fn read_head(&mut self) -> Result<Vec<u8>, HttpError> {
        let mut scanned = 0;
        loop {
            let pending = self.pending();
            if let Some(end) = find_blank_line(pending, scanned) {
                // Judged on the head itself, so how the bytes arrived changes nothing.
                if end.0 > MAX_HEAD {
                    return Err(HttpError::TooLarge {
                        what: "head",
                        limit: MAX_HEAD,
                    });
                }
                let head = pending[..end.0].to_vec();
                self.pos += end.1;
                return Ok(head);
            }
            if pending.len() > MAX_HEAD + 3 {
                return Err(HttpError::TooLarge {
                    what: "head",
                    limit: MAX_HEAD,
                });
            }
            // The terminator may straddle reads: rescan the last three bytes.
            scanned = pending.len().saturating_sub(3);
            if !self.fill().await? {
                return Err(HttpError::Truncated("head"));
            }
        }
    }

    /// One line (CRLF or bare LF), at most `max` bytes, without its terminator.
    async fn read_line(&mut self, max: usize, what: &'static str) -> Result<Vec<u8>, HttpError> {
        loop {
            let pending = self.pending();
            if let Some(i) = pending.iter().position(|&b| b == b'\n') {
                // Judged on the line itself, so how the bytes arrived changes nothing.
                if i > max {
                    return Err(HttpError::TooLarge { what, limit: max });
                }
                let mut line = pending[..i].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.pos += i + 1;
                return Ok(line);
            }
            if pending.len() > max {
                return Err(HttpError::TooLarge { what, limit: max });
            }
            if !self.fill().await? {
                return Err(HttpError::Truncated(what));
            }
        }
    }

    /// Exactly `n` bytes, appended to `out`.
    async fn take(
        &mut self,
        n: usize,
        out: &mut Vec<u8>,
        what: &'static str,
    ) -> Result<(), HttpError> {
        let mut left = n;
        while left > 0 {
            if self.pending().is_empty() && !self.fill().await? {
                return Err(HttpError::Truncated(what));
            }
            let k = left.min(self.pending().len());
            out.extend_from_slice(&self.buf[self.pos..self.pos + k]);
            self.pos += k;
            left -= k;
        }
        Ok(())
    }

    async fn read_length(
        &mut self,
        n: usize,
        limit: usize,
        what: &'static str,
    ) -> Result<Vec<u8>, HttpError> {
        if n > limit {
            return Err(HttpError::TooLarge { what, limit });
        }
        let mut body = Vec::with_capacity(n);
        self.take(n, &mut body, what).await?;
        Ok(body)
    }

    async fn read_to_eof(&mut self, limit: usize) -> Result<Vec<u8>, HttpError> {
        loop {
            if self.pending().len() > limit {
                return Err(HttpError::TooLarge {
                    what: "response body",
                    limit,
                });
            }
            if !self.fill().await? {
                let body = self.pending().to_vec();
                self.pos = self.buf.len();
                return Ok(body);
            }
        }
    }

    /// A chunked body (RFC 9112 7.1): size lines in hex (extensions ignored), data, and after the
    /// zero-size chunk the trailer fields (etcd's gateway sends `Grpc-Trailer-*` ones), dropped.
    async fn read_chunked(&mut self, limit: usize) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line(1024, "chunk size").await?;
            let text = std::str::from_utf8(&line)
                .map_err(|_| HttpError::Malformed("chunk size is not text".into()))?;
            let digits = text.split(';').next().unwrap_or("").trim();
            if digits.is_empty() || digits.len() > 16 {
                return Err(HttpError::Malformed(format!(
                    "bad chunk size {:?}",
                    truncate(text)
                )));
            }
            let size = usize::from_str_radix(digits, 16).map_err(|_| {
                HttpError::Malformed(format!("bad chunk size {:?}", truncate(text)))
            })?;
            if size == 0 {
                let mut trailers = 0;
                loop {
                    let line = self.read_line(MAX_HEAD, "chunked trailer").await?;
                    if line.is_empty() {
                        return Ok(body);
                    }
                    trailers += line.len();
                    if trailers > MAX_HEAD {
                        return Err(HttpError::TooLarge {
                            what: "chunked trailer",
                            limit: MAX_HEAD,
                        });
                    }
                }
            }
            if body.len().saturating_add(size) > limit {
                return Err(HttpError::TooLarge {
                    what: "response body",
                    limit,
                });
            }
            self.take(size, &mut body, "chunk").await?;
            let mut end = Vec::with_capacity(2);
            self.take(2, &mut end, "chunk").await?;
            if end != b"\r\n" {
                return Err(HttpError::Malformed(
                    "chunk data longer than its size".into(),
                ));
            }
        }
    }
}

/// Where the blank line ending a head is in `buf` (searching from `from`): (end of the head,
/// end of the blank line). CRLF CRLF, or bare LF LF from a lenient peer.
fn find_blank_line(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    (from..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some((i, i + 4))
        } else if buf[i..].starts_with(b"\n\n") {
            Some((i, i + 2))
        } else if buf[i..].starts_with(b"\n\r\n") {
            Some((i, i + 3))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// Hands out its bytes `step` at a time, so every parser state sees a split.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self
                .step
                .min(buf.remaining())
                .min(self.data.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    fn read_all(data: &[u8], limit: usize) -> Result<Response, HttpError> {
        let whole = block_on(read_response(data, limit));
        for step in [1, 2, 3, 7] {
            let split = block_on(read_response(
                Trickle {
                    data: data.to_vec(),
                    at: 0,
                    step,
                },
                limit,
            ));
            let (w, s) = (format!("{whole:?}"), format!("{split:?}"));
            assert!(
                w == s,
                "reading {step} bytes at a time changes nothing: {} vs {}",
                &w[..w.len().min(300)],
                &s[..s.len().min(300)]
            );
        }
        whole
    }

    /// The shape etcd 3.4's gateway gives a refused call: chunked, with a `Trailer` announced
    /// and sent after the last chunk.
    #[test]
    fn chunked_with_trailers() {
        let body = br#"{"error":"etcdserver: requested lease not found","code":5}"#;
        let raw = format!(
            "HTTP/1.1 404 Not Found\r\nTrailer: Grpc-Trailer-Content-Type\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\
             Grpc-Trailer-Content-Type: application/grpc\r\n\r\n",
            body.len(),
            std::str::from_utf8(body).unwrap()
        );
        let r = read_all(raw.as_bytes(), MAX_RESPONSE).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body, body);
    }

    #[test]
    fn chunked_in_pieces_with_extensions() {
        let raw = b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: Chunked\r\n\r\n\
                    5;name=x\r\n{\"a\":\r\nA\r\n\"0123456\"}\r\n0\r\n\r\n";
        let r = read_all(raw, MAX_RESPONSE).unwrap();
        assert_eq!(r.body, br#"{"a":"0123456"}"#);
    }

    #[test]
    fn headers_are_case_insensitive() {
        let raw = b"HTTP/1.1 200 OK\r\ncOnTeNt-LeNgTh: 2\r\nX-Thing:  spaced  \r\n\r\n{}";
        let r = read_all(raw, MAX_RESPONSE).unwrap();
        assert_eq!(r.body, b"{}");
        assert_eq!(r.header("content-length"), Some("2"));
        assert_eq!(r.header("x-thing"), Some("spaced"));
        assert_eq!(r.header("missing"), None);
    }

    #[test]
    fn length_wins_over_eof_and_extra_bytes_are_ignored() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}garbage";
        assert_eq!(read_all(raw, MAX_RESPONSE).unwrap().body, b"{}");
    }

    #[test]
    fn transfer_encoding_overrides_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n\
                    2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(read_all(raw, MAX_RESPONSE).unwrap().body, b"{}");
    }

    #[test]
    fn body_to_eof_without_framing() {
        let raw = b"HTTP/1.0 200 OK\r\n\r\n{\"x\":1}";
        assert_eq!(read_all(raw, MAX_RESPONSE).unwrap().body, br#"{"x":1}"#);
    }

    #[test]
    fn interim_answers_are_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let r = read_all(raw, MAX_RESPONSE).unwrap();
        assert_eq!((r.status, r.body.len()), (200, 0));
    }

    #[test]
    fn truncated_input_is_an_error() {
        let cases: [(&[u8], &str); 5] = [
            (b"", "head"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5", "head"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}",
                "response body",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}",
                "chunk",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n",
                "chunked trailer",
            ),
        ];
        for (raw, what) in cases {
            match read_all(raw, MAX_RESPONSE) {
                Err(HttpError::Truncated(w)) => assert_eq!(w, what, "{raw:?}"),
                other => panic!("{raw:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        let cases: [&[u8]; 8] = [
            b"SPDY/3 200 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 20x OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n",
        ];
        for raw in cases {
            assert!(
                matches!(read_all(raw, MAX_RESPONSE), Err(HttpError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn bounds_are_enforced() {
        let big = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n01234567890";
        assert!(matches!(
            read_all(big, 10),
            Err(HttpError::TooLarge { limit: 10, .. })
        ));
        let eof = b"HTTP/1.1 200 OK\r\n\r\n01234567890";
        assert!(matches!(read_all(eof, 10), Err(HttpError::TooLarge { .. })));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n6\r\n012345\r\n0\r\n\r\n";
        assert!(matches!(
            read_all(chunked, 10),
            Err(HttpError::TooLarge { .. })
        ));
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while head.len() <= MAX_HEAD + 100 {
            head.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        head.extend_from_slice(b"\r\n");
        assert!(matches!(
            read_all(&head, MAX_RESPONSE),
            Err(HttpError::TooLarge { what: "head", .. })
        ));
        let err = read_all(big, 10).unwrap_err().to_string();
        assert!(err.contains("10-byte bound"), "{err}");
    }

    #[test]
    fn request_round_trip() {
        let raw = encode_post("127.0.0.1:2379", "/v3/kv/range", br#"{"key":"YQ=="}"#);
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(text.starts_with("POST /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1:2379\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        for step in [1, 5, 4096] {
            let req = block_on(read_request(
                Trickle {
                    data: raw.clone(),
                    at: 0,
                    step,
                },
                MAX_REQUEST,
            ))
            .unwrap();
            assert_eq!(req.method, "POST");
            assert_eq!(req.path, "/v3/kv/range");
            assert_eq!(req.header("CONTENT-TYPE"), Some("application/json"));
            assert_eq!(req.body, br#"{"key":"YQ=="}"#);
        }
    }

    #[test]
    fn request_errors() {
        let big = b"POST /x HTTP/1.1\r\nContent-Length: 100\r\n\r\n";
        assert!(matches!(
            block_on(read_request(&big[..], 99)),
            Err(HttpError::TooLarge { .. })
        ));
        let short = b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}";
        assert!(matches!(
            block_on(read_request(&short[..], 99)),
            Err(HttpError::Truncated("request body"))
        ));
        for bad in [
            &b"POST x HTTP/1.1\r\n\r\n"[..],
            b"POST /x\r\n\r\n",
            b"POST /x HTTP/1.1 extra\r\n\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(
                    block_on(read_request(bad, 99)),
                    Err(HttpError::Malformed(_))
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let none = block_on(read_request(&b"GET /health HTTP/1.1\r\n\r\n"[..], 99)).unwrap();
        assert!(none.body.is_empty());
    }

    #[test]
    fn response_round_trip() {
        let mut out = Vec::new();
        block_on(write_response(&mut out, 404, "text/plain", b"Not Found\n")).unwrap();
        let r = read_all(&out, MAX_RESPONSE).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"Not Found\n");
        assert_eq!(r.header("content-type"), Some("text/plain"));
    }

    /// A real socket on the loopback: the request goes out whole and the answer comes back.
    #[test]
    fn loopback_exchange() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let req = read_request(&mut s, MAX_REQUEST).await.unwrap();
                let mut answer = req.path.into_bytes();
                answer.extend_from_slice(&req.body);
                write_response(&mut s, 200, "application/json", &answer)
                    .await
                    .unwrap();
            });
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let r = post(&mut s, &addr.to_string(), "/v3/x", b"{}", MAX_RESPONSE)
                .await
                .unwrap();
            assert_eq!((r.status, r.body.as_slice()), (200, &b"/v3/x{}"[..]));
            server.await.unwrap();
        });
    }
}
