#![no_main]

use libfuzzer_sys::fuzz_target;
use videoroom::phoenix::frame;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(f) = frame::decode(text) else {
        return;
    };
    let once = f.encode();
    let again = frame::decode(&once).expect("an encoded frame decodes");
    assert_eq!(again, f, "decode -> encode -> decode changed the frame");
    assert_eq!(again.encode(), once, "encode is not a fixed point");
});
