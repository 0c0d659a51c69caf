//! Client media-event parsing (`ClientEvent::parse`, the string a client puts into
//! `mediaEvent.data`), on any text.
//!
//! Checked: no panic, and the outcome depends only on the JSON value, not on its spelling: the
//! same value written out again (key order, whitespace, escapes and number forms normalized)
//! parses to the same event or fails the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use videoroom::engine::ClientEvent;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = ClientEvent::parse(&text);
    // Read as the server reads it (`plain_json`): serde_json's own reader unwraps an object
    // keyed by its private token, which is not what the JSON says.
    let Ok(value) = videoroom::plain_json::from_str(&text) else {
        assert!(
            parsed.is_err(),
            "text that is not JSON parsed as {parsed:?}"
        );
        return;
    };
    let again = ClientEvent::parse(&value.to_string());
    match (&parsed, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "one JSON value, two events"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("one JSON value, two outcomes: {parsed:?} / {again:?}"),
    }
});
