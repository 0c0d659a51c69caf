//! The frames of a dist link and their codec.
//!
//! Owns the mapping between bytes on the link and [`Frame`]s. It must never panic on any input,
//! never allocate more than the bytes it was given (a length prefix is checked against
//! [`MAX_FRAME_BYTES`] before anything waits for the body), and never interpret a frame: what a
//! frame means on a link belongs to [`super::link`].
//!
//! # Wire format
//!
//! Each frame is `len: u32 BE` then `len` bytes of body, `1 <= len <=` [`MAX_FRAME_BYTES`].
//! The body is a tag byte and fixed fields (integers `u64` BE; text `u16 BE` length then UTF-8):
//!
//! | tag | frame       | fields                                                   |
//! |-----|-------------|----------------------------------------------------------|
//! | 1   | `Hello`     | version `u8` ([`PROTOCOL_VERSION`]), incarnation, node   |
//! | 2   | `Tick`      | —                                                        |
//! | 3   | `Send`      | pid, epoch, then the payload: the rest of the body       |
//! | 4   | `Monitor`   | mref, pid, epoch                                         |
//! | 5   | `Demonitor` | mref                                                     |
//! | 6   | `Down`      | mref, reason tag `u8`, text for `Crashed`/`Other` only   |
//!
//! Reason tags: 0 normal, 1 shutdown, 2 crashed, 3 noproc, 4 noconnection, 5 other.
//!
//! Why hand-written binary rather than serde_json of a tagged enum: the frame that matters is
//! `Send`, whose payload is opaque bytes. serde_json writes a `Vec<u8>` as an array of numbers
//! (about 3.5 bytes per byte, and a visitor call per byte to read back), so either the payload
//! is inflated or a base64 adapter is bolted on; here it travels verbatim, and
//! [`MAX_PAYLOAD_BYTES`] is an exact bound rather than an estimate. There are six frames over
//! three field kinds, so the whole format is the table above, the decoder is total (every byte
//! string is a frame or a [`FrameError`]; the property tests feed it arbitrary bytes) and no
//! serde representation attribute can change the wire by accident. Debugging reads frames
//! through their `Debug` form, as the driver logs them.

use std::fmt;

use thiserror::Error;

/// The largest body a frame may have. Room messages relay client payloads of up to 1 MiB
/// (`SocketConfig::max_frame_bytes`), so a frame holds several times that plus its envelope.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Body bytes of a `Send` besides its payload: tag, pid, epoch.
const SEND_OVERHEAD: usize = 1 + 8 + 8;

/// The largest `Send` payload that fits in a frame.
pub const MAX_PAYLOAD_BYTES: usize = MAX_FRAME_BYTES - SEND_OVERHEAD;

/// The longest node name, in bytes.
pub const MAX_NODE_BYTES: usize = 255;

/// The longest text a [`DownReason`] carries, in bytes; longer text is cut (at a character
/// boundary) when the reason is built or encoded, and refused when decoded.
pub const MAX_REASON_BYTES: usize = 1024;

/// The version carried in `Hello`; a peer speaking another one is a protocol error, so a mixed
/// cluster fails its handshake loudly instead of misreading frames.
pub const PROTOCOL_VERSION: u8 = 1;

const TAG_HELLO: u8 = 1;
const TAG_TICK: u8 = 2;
const TAG_SEND: u8 = 3;
const TAG_MONITOR: u8 = 4;
const TAG_DEMONITOR: u8 = 5;
const TAG_DOWN: u8 = 6;

const REASON_NORMAL: u8 = 0;
const REASON_SHUTDOWN: u8 = 1;
const REASON_CRASHED: u8 = 2;
const REASON_NOPROC: u8 = 3;
const REASON_NOCONNECTION: u8 = 4;
const REASON_OTHER: u8 = 5;

/// A process on the other side of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteRef {
    /// Its pid in its node's process table.
    pub pid: u64,
    /// 0 for none; a room carries its etcd claim revision, and the node that owns the pid
    /// answers a monitor on a stale epoch with `Noproc`.
    pub epoch: u64,
}

/// Why a monitored process is gone, as seen across a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownReason {
    Normal,
    Shutdown,
    /// It panicked; the message, at most [`MAX_REASON_BYTES`].
    Crashed(String),
    /// It did not exist (or its epoch was stale) when the monitor reached its node.
    Noproc,
    /// The link to its node went down before its fate was known.
    Noconnection,
    /// Any other exit, e.g. `killed`; at most [`MAX_REASON_BYTES`].
    Other(String),
}

impl DownReason {
    /// `Crashed` with `message` cut to [`MAX_REASON_BYTES`].
    pub fn crashed(message: &str) -> Self {
        DownReason::Crashed(bounded(message, MAX_REASON_BYTES).to_owned())
    }

    /// `Other` with `text` cut to [`MAX_REASON_BYTES`].
    pub fn other(text: &str) -> Self {
        DownReason::Other(bounded(text, MAX_REASON_BYTES).to_owned())
    }
}

impl From<&crate::rt::ExitReason> for DownReason {
    fn from(reason: &crate::rt::ExitReason) -> Self {
        use crate::rt::ExitReason;
        match reason {
            ExitReason::Normal => DownReason::Normal,
            ExitReason::Shutdown => DownReason::Shutdown,
            ExitReason::Noproc => DownReason::Noproc,
            ExitReason::Crashed(m) => DownReason::crashed(m),
            // Keeps the local wording ("killed", "error: ..."), so a remote watcher logs what
            // a local one would.
            ExitReason::Killed | ExitReason::Error(_) => DownReason::other(&reason.to_string()),
        }
    }
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownReason::Normal => f.write_str("normal"),
            DownReason::Shutdown => f.write_str("shutdown"),
            DownReason::Crashed(m) => write!(f, "crashed: {m}"),
            DownReason::Noproc => f.write_str("noproc"),
            DownReason::Noconnection => f.write_str("noconnection"),
            DownReason::Other(m) => f.write_str(m),
        }
    }
}

/// One frame of a dist link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The first frame each way: who is speaking.
    Hello { node: String, incarnation: u64 },
    /// Liveness only: sent when nothing else was sent for a while.
    Tick,
    /// A message for `to`; the payload is opaque to the link.
    Send { to: RemoteRef, msg: Vec<u8> },
    /// The sender's process monitors `target` under the sender's ref `mref`.
    Monitor { mref: u64, target: RemoteRef },
    /// The sender cancels its monitor `mref`.
    Demonitor { mref: u64 },
    /// The target of the receiver's monitor `mref` is gone.
    Down { mref: u64, reason: DownReason },
}

/// A byte string that is not a frame. The link cannot resynchronise after one (there is no
/// frame marker to search for), so every error ends the link.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame length {0} exceeds the maximum")]
    TooLarge(u32),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
    #[error("unknown down reason tag {0}")]
    UnknownReason(u8),
    #[error("protocol version {0} not supported")]
    Version(u8),
    #[error("frame body ends inside a field")]
    Truncated,
    #[error("bytes after the last field of a frame")]
    Trailing,
    #[error("text longer than its bound")]
    TextTooLong,
    #[error("text is not UTF-8")]
    NotUtf8,
}

impl Frame {
    /// Appends the frame, length prefix included, to `out`. Text longer than its bound is cut
    /// at a character boundary.
    ///
    /// # Panics
    ///
    /// If a `Send` payload exceeds [`MAX_PAYLOAD_BYTES`]: callers check first (the link answers
    /// such a send with an error), so this is a bug, never input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Hello { node, incarnation } => {
                out.push(TAG_HELLO);
                out.push(PROTOCOL_VERSION);
                out.extend_from_slice(&incarnation.to_be_bytes());
                put_text(out, node, MAX_NODE_BYTES);
            }
            Frame::Tick => out.push(TAG_TICK),
            Frame::Send { to, msg } => {
                assert!(
                    msg.len() <= MAX_PAYLOAD_BYTES,
                    "Send payload of {} bytes exceeds MAX_PAYLOAD_BYTES",
                    msg.len()
                );
                out.push(TAG_SEND);
                put_ref(out, to);
                out.extend_from_slice(msg);
            }
            Frame::Monitor { mref, target } => {
                out.push(TAG_MONITOR);
                out.extend_from_slice(&mref.to_be_bytes());
                put_ref(out, target);
            }
            Frame::Demonitor { mref } => {
                out.push(TAG_DEMONITOR);
                out.extend_from_slice(&mref.to_be_bytes());
            }
            Frame::Down { mref, reason } => {
                out.push(TAG_DOWN);
                out.extend_from_slice(&mref.to_be_bytes());
                match reason {
                    DownReason::Normal => out.push(REASON_NORMAL),
                    DownReason::Shutdown => out.push(REASON_SHUTDOWN),
                    DownReason::Noproc => out.push(REASON_NOPROC),
                    DownReason::Noconnection => out.push(REASON_NOCONNECTION),
                    DownReason::Crashed(m) => {
                        out.push(REASON_CRASHED);
                        put_text(out, m, MAX_REASON_BYTES);
                    }
                    DownReason::Other(m) => {
                        out.push(REASON_OTHER);
                        put_text(out, m, MAX_REASON_BYTES);
                    }
                }
            }
        }
        let len = out.len() - at - 4;
        // Every other frame is far below the bound: its text fields are bounded.
        debug_assert!(len <= MAX_FRAME_BYTES);
        let len = u32::try_from(len).expect("bounded by MAX_FRAME_BYTES");
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The frame alone, length prefix included (tests and one-off writers).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Decodes a stream of frames fed in arbitrary pieces.
///
/// It buffers at most one incomplete frame beyond what it was last given, and after the first
/// error it returns that error forever: nothing after a bad frame can be trusted.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already decoded; dropped at the next `push` rather than per frame, so a
    /// read holding many small frames costs one shift, not one per frame.
    start: usize,
    failed: Option<FrameError>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the transport.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.buf.drain(..self.start);
        self.start = 0;
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let avail = &self.buf[self.start..];
        let Some(header) = avail.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header);
        // Checked before waiting for the body: a huge length is refused with 4 bytes buffered.
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        if size > MAX_FRAME_BYTES {
            return Err(self.fail(FrameError::TooLarge(len)));
        }
        if size == 0 {
            return Err(self.fail(FrameError::Empty));
        }
        let Some(body) = avail.get(4..4 + size) else {
            return Ok(None);
        };
        match decode_body(body) {
            Ok(frame) => {
                self.start += 4 + size;
                Ok(Some(frame))
            }
            Err(err) => Err(self.fail(err)),
        }
    }

    /// Bytes held that do not yet make a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.buf = Vec::new();
        self.start = 0;
        self.failed = Some(err.clone());
        err
    }
}

fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
    let mut r = Reader(body);
    let frame = match r.u8()? {
        TAG_HELLO => {
            let version = r.u8()?;
            if version != PROTOCOL_VERSION {
                return Err(FrameError::Version(version));
            }
            let incarnation = r.u64()?;
            let node = r.text(MAX_NODE_BYTES)?;
            Frame::Hello { node, incarnation }
        }
        TAG_TICK => Frame::Tick,
        TAG_SEND => {
            let to = r.remote_ref()?;
            Frame::Send {
                to,
                msg: r.rest().to_vec(),
            }
        }
        TAG_MONITOR => Frame::Monitor {
            mref: r.u64()?,
            target: r.remote_ref()?,
        },
        TAG_DEMONITOR => Frame::Demonitor { mref: r.u64()? },
        TAG_DOWN => {
            let mref = r.u64()?;
            let reason = match r.u8()? {
                REASON_NORMAL => DownReason::Normal,
                REASON_SHUTDOWN => DownReason::Shutdown,
                REASON_CRASHED => DownReason::Crashed(r.text(MAX_REASON_BYTES)?),
                REASON_NOPROC => DownReason::Noproc,
                REASON_NOCONNECTION => DownReason::Noconnection,
                REASON_OTHER => DownReason::Other(r.text(MAX_REASON_BYTES)?),
                tag => return Err(FrameError::UnknownReason(tag)),
            };
            Frame::Down { mref, reason }
        }
        tag => return Err(FrameError::UnknownTag(tag)),
    };
    if !r.0.is_empty() {
        return Err(FrameError::Trailing);
    }
    Ok(frame)
}

/// The unread part of a body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn remote_ref(&mut self) -> Result<RemoteRef, FrameError> {
        Ok(RemoteRef {
            pid: self.u64()?,
            epoch: self.u64()?,
        })
    }

    fn text(&mut self, max: usize) -> Result<String, FrameError> {
        let b = self.take(2)?;
        let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
        if len > max {
            return Err(FrameError::TextTooLong);
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| FrameError::NotUtf8)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

fn put_ref(out: &mut Vec<u8>, r: &RemoteRef) {
    out.extend_from_slice(&r.pid.to_be_bytes());
    out.extend_from_slice(&r.epoch.to_be_bytes());
}

fn put_text(out: &mut Vec<u8>, s: &str, max: usize) {
    let s = bounded(s, max);
    let len = u16::try_from(s.len()).expect("text bounds fit in u16");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// `s` cut to at most `max` bytes at a character boundary.
fn bounded(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Frame> {
        let to = RemoteRef { pid: 7, epoch: 42 };
        vec![
            Frame::Hello {
                node: "node-a".into(),
                incarnation: 9,
            },
            Frame::Tick,
            Frame::Send {
                to,
                msg: b"hello".to_vec(),
            },
            Frame::Send { to, msg: vec![] },
            Frame::Monitor {
                mref: 3,
                target: to,
            },
            Frame::Demonitor { mref: 3 },
            Frame::Down {
                mref: u64::MAX,
                reason: DownReason::Normal,
            },
            Frame::Down {
                mref: 1,
                reason: DownReason::Shutdown,
            },
            Frame::Down {
                mref: 1,
                reason: DownReason::Crashed("boom ✓".into()),
            },
            Frame::Down {
                mref: 1,
                reason: DownReason::Noproc,
            },
            Frame::Down {
                mref: 1,
                reason: DownReason::Noconnection,
            },
            Frame::Down {
                mref: 1,
                reason: DownReason::Other("killed".into()),
            },
        ]
    }

    fn decode_all(d: &mut Decoder) -> Result<Vec<Frame>, FrameError> {
        let mut frames = Vec::new();
        while let Some(f) = d.next_frame()? {
            frames.push(f);
        }
        Ok(frames)
    }

    /// The first frame decoded from a raw body (length prefix added here).
    fn decode_body_bytes(body: &[u8]) -> Result<Option<Frame>, FrameError> {
        let mut d = Decoder::new();
        d.push(&u32::try_from(body.len()).unwrap().to_be_bytes());
        d.push(body);
        d.next_frame()
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in samples() {
            let mut d = Decoder::new();
            d.push(&frame.to_bytes());
            assert_eq!(d.next_frame(), Ok(Some(frame)));
            assert_eq!(d.next_frame(), Ok(None));
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn the_wire_is_the_documented_one() {
        let send = Frame::Send {
            to: RemoteRef { pid: 1, epoch: 2 },
            msg: vec![0xAB],
        };
        let mut want = vec![0, 0, 0, 18, TAG_SEND];
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&2u64.to_be_bytes());
        want.push(0xAB);
        assert_eq!(send.to_bytes(), want);
        assert_eq!(Frame::Tick.to_bytes(), vec![0, 0, 0, 1, TAG_TICK]);
    }

    #[test]
    fn frames_split_at_every_byte_and_batched_decode() {
        let stream: Vec<u8> = samples().iter().flat_map(Frame::to_bytes).collect();
        for cut in 0..=stream.len() {
            let mut d = Decoder::new();
            d.push(&stream[..cut]);
            let mut got = decode_all(&mut d).unwrap();
            d.push(&stream[cut..]);
            got.extend(decode_all(&mut d).unwrap());
            assert_eq!(got, samples(), "cut at {cut}");
        }
        // One byte at a time.
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &stream {
            d.push(std::slice::from_ref(b));
            got.extend(decode_all(&mut d).unwrap());
        }
        assert_eq!(got, samples());
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_body() {
        let mut d = Decoder::new();
        d.push(&u32::MAX.to_be_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(u32::MAX)));
        let just_over = u32::try_from(MAX_FRAME_BYTES + 1).unwrap();
        let mut d = Decoder::new();
        d.push(&just_over.to_be_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(just_over)));
        // The error sticks: nothing after a bad frame is trusted.
        d.push(&Frame::Tick.to_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(just_over)));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn a_payload_of_the_maximum_size_fits() {
        let frame = Frame::Send {
            to: RemoteRef { pid: 1, epoch: 0 },
            msg: vec![7; MAX_PAYLOAD_BYTES],
        };
        let bytes = frame.to_bytes();
        assert_eq!(bytes.len(), 4 + MAX_FRAME_BYTES);
        let mut d = Decoder::new();
        d.push(&bytes);
        assert_eq!(d.next_frame(), Ok(Some(frame)));
    }

    #[test]
    #[should_panic(expected = "exceeds MAX_PAYLOAD_BYTES")]
    fn encoding_an_oversized_payload_is_a_bug() {
        let _ = Frame::Send {
            to: RemoteRef { pid: 1, epoch: 0 },
            msg: vec![0; MAX_PAYLOAD_BYTES + 1],
        }
        .to_bytes();
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let e = |body: &[u8]| decode_body_bytes(body).unwrap_err();
        assert_eq!(decode_body_bytes(&[]), Err(FrameError::Empty));
        assert_eq!(e(&[0]), FrameError::UnknownTag(0));
        assert_eq!(e(&[99]), FrameError::UnknownTag(99));
        assert_eq!(e(&[TAG_TICK, 0]), FrameError::Trailing);
        assert_eq!(e(&[TAG_DEMONITOR, 0, 0, 0]), FrameError::Truncated);
        assert_eq!(e(&[TAG_HELLO, 2]), FrameError::Version(2));
        let mut down = vec![TAG_DOWN];
        down.extend_from_slice(&1u64.to_be_bytes());
        assert_eq!(e(&[&down[..], &[9]].concat()), FrameError::UnknownReason(9));
        let crashed = |text: &[u8], len: u16| {
            [&down[..], &[REASON_CRASHED], &len.to_be_bytes(), text].concat()
        };
        assert_eq!(e(&crashed(&[0xFF], 1)), FrameError::NotUtf8);
        assert_eq!(e(&crashed(b"ab", 3)), FrameError::Truncated);
        let long = vec![b'x'; MAX_REASON_BYTES + 1];
        let len = u16::try_from(long.len()).unwrap();
        assert_eq!(e(&crashed(&long, len)), FrameError::TextTooLong);
        let mut hello = vec![TAG_HELLO, PROTOCOL_VERSION];
        hello.extend_from_slice(&1u64.to_be_bytes());
        hello.extend_from_slice(&256u16.to_be_bytes());
        hello.extend_from_slice(&[b'n'; 256]);
        assert_eq!(e(&hello), FrameError::TextTooLong);
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        // 'é' is two bytes: cutting at an odd byte count must back off one byte.
        let long = "é".repeat(MAX_REASON_BYTES);
        let DownReason::Crashed(m) = DownReason::crashed(&long) else {
            unreachable!()
        };
        assert_eq!(m.len(), MAX_REASON_BYTES);
        let odd = format!("x{long}");
        let DownReason::Other(m) = DownReason::other(&odd) else {
            unreachable!()
        };
        assert_eq!(m.len(), MAX_REASON_BYTES - 1);
        // Encoding cuts too, so a reason built by hand cannot make an undecodable frame.
        let frame = Frame::Down {
            mref: 1,
            reason: DownReason::Crashed(odd.clone()),
        };
        let mut d = Decoder::new();
        d.push(&frame.to_bytes());
        let Ok(Some(Frame::Down {
            reason: DownReason::Crashed(m),
            ..
        })) = d.next_frame()
        else {
            panic!("not a down")
        };
        assert_eq!(m, bounded(&odd, MAX_REASON_BYTES));
    }

    #[test]
    fn exit_reasons_map_to_down_reasons() {
        use crate::rt::ExitReason;
        assert_eq!(DownReason::from(&ExitReason::Normal), DownReason::Normal);
        assert_eq!(
            DownReason::from(&ExitReason::Shutdown),
            DownReason::Shutdown
        );
        assert_eq!(DownReason::from(&ExitReason::Noproc), DownReason::Noproc);
        assert_eq!(
            DownReason::from(&ExitReason::Crashed("boom".into())),
            DownReason::Crashed("boom".into())
        );
        assert_eq!(
            DownReason::from(&ExitReason::Killed),
            DownReason::Other("killed".into())
        );
    }

    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![".{0,12}", Just("ü".repeat(MAX_REASON_BYTES / 2))]
    }

    fn arb_ref() -> impl Strategy<Value = RemoteRef> {
        (any::<u64>(), prop_oneof![Just(0u64), any::<u64>()])
            .prop_map(|(pid, epoch)| RemoteRef { pid, epoch })
    }

    fn arb_reason() -> impl Strategy<Value = DownReason> {
        prop_oneof![
            Just(DownReason::Normal),
            Just(DownReason::Shutdown),
            arb_text().prop_map(DownReason::Crashed),
            Just(DownReason::Noproc),
            Just(DownReason::Noconnection),
            arb_text().prop_map(DownReason::Other),
        ]
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (".{0,20}", any::<u64>())
                .prop_map(|(node, incarnation)| Frame::Hello { node, incarnation }),
            Just(Frame::Tick),
            (arb_ref(), prop::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(to, msg)| Frame::Send { to, msg }),
            (any::<u64>(), arb_ref()).prop_map(|(mref, target)| Frame::Monitor { mref, target }),
            any::<u64>().prop_map(|mref| Frame::Demonitor { mref }),
            (any::<u64>(), arb_reason()).prop_map(|(mref, reason)| Frame::Down { mref, reason }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever the split points, the decoder yields exactly the frames encoded, in order.
        #[test]
        fn round_trip_across_arbitrary_splits(
            frames in prop::collection::vec(arb_frame(), 0..12),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut stream = Vec::new();
            for f in &frames {
                f.encode(&mut stream);
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut d = Decoder::new();
            let mut got = Vec::new();
            let mut from = 0;
            for cut in cuts {
                d.push(&stream[from..cut]);
                from = cut;
                got.extend(decode_all(&mut d).unwrap());
            }
            prop_assert_eq!(got, frames);
            prop_assert_eq!(d.buffered(), 0);
        }

        /// Arbitrary bytes never panic; once an error is returned it is returned forever, and
        /// the decoder never holds more than it was given.
        #[test]
        fn arbitrary_bytes_are_frames_or_errors(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
        ) {
            let mut d = Decoder::new();
            let mut given = 0;
            let mut failed = None;
            for chunk in chunks {
                d.push(&chunk);
                given += chunk.len();
                prop_assert!(d.buffered() <= given);
                loop {
                    match d.next_frame() {
                        Ok(Some(_)) => prop_assert!(failed.is_none()),
                        Ok(None) => break,
                        Err(e) => {
                            if let Some(first) = &failed {
                                prop_assert_eq!(first, &e);
                            }
                            failed = Some(e);
                            break;
                        }
                    }
                }
            }
        }
    }
}
