//! WebSocket stand-in over madsim TCP: the same text frames and close codes a browser's
//! WebSocket carries, length-prefixed, so the server's socket process runs unchanged and the
//! network faults (latency, loss, clogs, partitions, node restarts) apply to them.

use madsim::net::TcpStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};

/// One frame on the simulated WebSocket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireFrame {
    Text(String),
    Close(u16),
}

/// Buffered: a frame is three reads, each a trip through the split stream's lock otherwise.
pub struct Reader(BufReader<ReadHalf<TcpStream>>);
pub struct Writer(WriteHalf<TcpStream>);

pub fn split(s: TcpStream) -> (Reader, Writer) {
    let (r, w) = tokio::io::split(s);
    (Reader(BufReader::new(r)), Writer(w))
}

impl Reader {
    /// The next frame; `None` when the connection is gone.
    pub async fn next(&mut self) -> Option<WireFrame> {
        let kind = self.0.read_u8().await.ok()?;
        let len = self.0.read_u32().await.ok()? as usize;
        let mut buf = vec![0; len];
        self.0.read_exact(&mut buf).await.ok()?;
        match kind {
            0 => Some(WireFrame::Text(String::from_utf8(buf).unwrap_or_else(
                |e| String::from_utf8_lossy(e.as_bytes()).into_owned(),
            ))),
            1 if len == 2 => Some(WireFrame::Close(u16::from_be_bytes([buf[0], buf[1]]))),
            _ => None,
        }
    }
}

impl Writer {
    pub async fn send(&mut self, f: &WireFrame) -> bool {
        let (kind, body) = match f {
            WireFrame::Text(t) => (0u8, t.as_bytes().to_vec()),
            WireFrame::Close(c) => (1u8, c.to_be_bytes().to_vec()),
        };
        let mut buf = Vec::with_capacity(5 + body.len());
        buf.push(kind);
        buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
        buf.extend_from_slice(&body);
        self.0.write_all(&buf).await.is_ok() && self.0.flush().await.is_ok()
    }
}
