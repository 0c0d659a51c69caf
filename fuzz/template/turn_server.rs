//! TEMPLATE for the TURN/STUN target (not built: cargo-fuzz only builds the `[[bin]]`s listed
//! in fuzz/Cargo.toml). See fuzz/README.md, "Adding a target", for the two-minute recipe.
//!
//! The sans-IO TURN core in src/turn/ takes (now, source address, datagram bytes) and returns
//! outputs. The script: each datagram is one input chunk, split on the 4-byte separator
//! `b"\xffTRN"` (binary-safe, unlike lines), with the first byte of a chunk choosing the source
//! address (a few clients, so allocations, permissions and channels interact) and the second
//! the clock step in seconds (so lifetimes and nonces expire).
//!
//! Properties to keep (adapt the names to the core's API):
//! - no panic on any datagram, from any source, at any time;
//! - every datagram the core emits to a client parses as STUN (or ChannelData) with the
//!   request's transaction id, and an error response carries an error code;
//! - relayed datagrams only ever go to the server's own SFU sockets (DESIGN.md: "a door into
//!   this server, never into the host or its network");
//! - allocations per credential stay within the configured limit; nothing outlives a
//!   lifetime that expired.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;

const SEPARATOR: &[u8] = b"\xffTRN";

fn chunks(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        out.push(&rest[..i]);
        rest = &rest[i + SEPARATOR.len()..];
    }
    out.push(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    // let mut core = videoroom::turn::<Core>::new(<config with a fixed secret>, now);
    for chunk in chunks(data) {
        let [who, step, datagram @ ..] = chunk else {
            continue;
        };
        now += Duration::from_secs(u64::from(*step % 8));
        let source: SocketAddr = ([127, 0, 0, 1], 50_000 + u16::from(*who % 4)).into();
        let _ = (source, datagram);
        // for out in core.handle_datagram(now, source, datagram) { check(out) }
        // core.handle_timeout(now) if the core has timers
    }
});
