//! The header a synthetic publisher writes at the start of each RTP payload (after an optional
//! prefix), so a subscriber can tell which publisher and which packet it got and when it left:
//! tag (1 byte), publisher SSRC (4), sequence (4), send time in ns (8), big-endian, then
//! padding. Shared by the SFU peers (`sfu_peer.rs`) and the Janus peers
//! (`examples/support/janus_peer.rs`), so both benchmarks send and read the same packets.

use std::sync::OnceLock;
use std::time::Instant;

/// Payload bytes of the header.
pub const HEADER: usize = 17;
pub const TAG_PROBE: u8 = 0;
pub const TAG_NUMBERED: u8 = 1;

/// Nanoseconds since the first call in this process: send and receive times of one packet
/// come from the same clock because publisher and subscriber share the process.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Appends the header of packet `seq` of `ssrc`, sent now, to `payload`, then pads `payload`
/// to `size` bytes in all (never shorter than what it holds).
pub fn write(payload: &mut Vec<u8>, tag: u8, ssrc: u32, seq: u32, size: usize) {
    payload.push(tag);
    payload.extend_from_slice(&ssrc.to_be_bytes());
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.extend_from_slice(&now_ns().to_be_bytes());
    let len = size.max(payload.len());
    payload.resize(len, 0xAB);
}

/// The header's fields: (tag, publisher SSRC, sequence, send time in ns).
pub fn read(payload: &[u8]) -> Option<(u8, u32, u32, u64)> {
    let h = payload.get(..HEADER)?;
    Some((
        h[0],
        u32::from_be_bytes(h[1..5].try_into().ok()?),
        u32::from_be_bytes(h[5..9].try_into().ok()?),
        u64::from_be_bytes(h[9..17].try_into().ok()?),
    ))
}
