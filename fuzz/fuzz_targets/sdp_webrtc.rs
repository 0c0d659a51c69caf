//! Client SDP as the production media plane reads it: `engine/webrtc` hands the client's offer
//! to `RTCSessionDescription::offer`, which parses it with `rtc-sdp` (the `webrtc` 0.21
//! family's parser), inside the room's plane. That plane is compiled only with `media-webrtc`,
//! which this crate leaves off (see README.md), so the target calls the parser directly, at the
//! version videoroom's Cargo.lock pins.
//!
//! Checked: no panic on any offer text, and a description that parses can be written out again.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use rtc_sdp::description::session::SessionDescription;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(parsed) = SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes())) {
        let _ = parsed.marshal();
    }
});
