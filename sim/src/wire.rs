//! WebSocket stand-in over madsim TCP: the same text frames and close codes a browser's
//! WebSocket carries, length-prefixed, so the server's socket process runs unchanged and the
//! network faults (latency, loss, clogs, partitions, node restarts) apply to them.
//!
//! A frame is a kind byte, a big-endian u32 length and, for text and close, that many bytes.
//! An oversized frame is only announced (kind and length, no body): tungstenite refuses a frame
//! on its header's length without reading the payload, so the server never sees its bytes
//! either, and the simulation does not spend a megabyte of copies on each one.

use bytes::BufMut;
use madsim::net::TcpStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

/// One frame on the simulated WebSocket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireFrame {
    Text(String),
    Close(u16),
    /// A text frame of this many bytes, announced by its header only (see the module doc).
    Oversized(u32),
    /// A binary message (the videoroom client never sends one; a hostile client may).
    Binary(Vec<u8>),
}

const TEXT: u8 = 0;
const CLOSE: u8 = 1;
const OVERSIZED: u8 = 2;
const BINARY: u8 = 3;
const HEADER: usize = 5;

/// Reads frames. Cancel-safe: a partly read frame stays in `self` until the rest arrives, so
/// `next` can sit in a `select!` beside timers.
pub struct Reader {
    half: ReadHalf<TcpStream>,
    header: Vec<u8>,
    body: Vec<u8>,
}

pub struct Writer(WriteHalf<TcpStream>);

pub fn split(s: TcpStream) -> (Reader, Writer) {
    let (r, w) = tokio::io::split(s);
    let reader = Reader {
        half: r,
        header: Vec::with_capacity(HEADER),
        body: Vec::new(),
    };
    (reader, Writer(w))
}

impl Reader {
    /// The next frame; `None` when the connection is gone or sends something that is not a
    /// frame.
    pub async fn next(&mut self) -> Option<WireFrame> {
        fill(&mut self.half, &mut self.header, HEADER).await?;
        let kind = self.header[0];
        let len = u32::from_be_bytes([
            self.header[1],
            self.header[2],
            self.header[3],
            self.header[4],
        ]);
        if kind == OVERSIZED {
            self.header.clear();
            return Some(WireFrame::Oversized(len));
        }
        let len = len as usize;
        self.body.reserve_exact(len - self.body.len().min(len));
        fill(&mut self.half, &mut self.body, len).await?;
        self.header.clear();
        let body = std::mem::take(&mut self.body);
        match kind {
            TEXT => Some(WireFrame::Text(String::from_utf8(body).unwrap_or_else(
                |e| String::from_utf8_lossy(e.as_bytes()).into_owned(),
            ))),
            CLOSE if len == 2 => Some(WireFrame::Close(u16::from_be_bytes([body[0], body[1]]))),
            BINARY => Some(WireFrame::Binary(body)),
            _ => None,
        }
    }
}

/// Reads into `buf` until it holds `len` bytes, never past them; `None` when the stream ends
/// or fails first. What was read stays in `buf`, so a cancelled call loses nothing.
async fn fill(half: &mut ReadHalf<TcpStream>, buf: &mut Vec<u8>, len: usize) -> Option<()> {
    while buf.len() < len {
        let want = len - buf.len();
        if half.read_buf(&mut buf.limit(want)).await.ok()? == 0 {
            return None;
        }
    }
    Some(())
}

impl Writer {
    /// Sends one frame; false when the connection is gone. The stream copies what it is given
    /// into its send buffer, so header and body go in as they are, without a joined copy.
    pub async fn send(&mut self, f: &WireFrame) -> bool {
        let close;
        let (kind, len, body): (u8, usize, &[u8]) = match f {
            WireFrame::Text(t) => (TEXT, t.len(), t.as_bytes()),
            WireFrame::Close(c) => {
                close = c.to_be_bytes();
                (CLOSE, 2, &close)
            }
            WireFrame::Oversized(n) => (OVERSIZED, *n as usize, &[]),
            WireFrame::Binary(b) => (BINARY, b.len(), b),
        };
        let mut header = [kind, 0, 0, 0, 0];
        header[1..].copy_from_slice(&(len as u32).to_be_bytes());
        self.0.write_all(&header).await.is_ok()
            && self.0.write_all(body).await.is_ok()
            && self.0.flush().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of every kind arrive whole and in order, across the stream's chunking.
    #[test]
    fn frames_round_trip() {
        let mut rt = madsim::runtime::Runtime::with_seed_and_config(1, madsim::Config::default());
        rt.set_time_limit(std::time::Duration::from_secs(10));
        let sent = vec![
            WireFrame::Text("hello".into()),
            WireFrame::Text(String::new()),
            WireFrame::Oversized(1 << 20),
            WireFrame::Close(1009),
            WireFrame::Binary(vec![0, 1, 2]),
            WireFrame::Text("é".repeat(5000)),
        ];
        let expect = sent.clone();
        let got = rt.block_on(async move {
            let h = madsim::runtime::Handle::current();
            let server = h.create_node().ip([10, 0, 0, 1].into()).build();
            let client = h.create_node().ip([10, 0, 0, 2].into()).build();
            let recv = server.spawn(async move {
                let l = madsim::net::TcpListener::bind("10.0.0.1:1").await.unwrap();
                let (s, _) = l.accept().await.unwrap();
                let (mut r, _w) = split(s);
                let mut got = Vec::new();
                while let Some(f) = r.next().await {
                    got.push(f);
                }
                got
            });
            client
                .spawn(async move {
                    madsim::time::sleep(std::time::Duration::from_millis(1)).await;
                    let s = TcpStream::connect("10.0.0.1:1").await.unwrap();
                    let (_r, mut w) = split(s);
                    for f in &sent {
                        assert!(w.send(f).await);
                    }
                })
                .await
                .unwrap();
            recv.await.unwrap()
        });
        assert_eq!(got, expect);
    }
}
