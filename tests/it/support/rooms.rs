//! What the room tests do with a phx client again and again: join a topic, connect to the media
//! session, read `connected`, wait for a media event about one endpoint; and polling a condition
//! with a deadline. One copy for the single-node and the cluster tests.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::driver::{fast_opts, media_data, media_in, Driver, DEFAULT_TIMEOUT};

/// A phx driver connected to the socket endpoint `url` and joined to `topic`.
pub fn joined(url: &str, label: &str, topic: &str) -> Driver {
    let mut c = Driver::phx(label);
    c.connect(url, fast_opts());
    c.join_ok(topic);
    c
}

/// Sends the client's `connect` media event and returns the `data` of the `connected` answer.
#[track_caller]
pub fn connect_media(c: &mut Driver, topic: &str, name: &str) -> Value {
    connect_media_within(c, topic, name, DEFAULT_TIMEOUT)
}

/// [`connect_media`], waiting up to `within` for `connected`.
#[track_caller]
pub fn connect_media_within(c: &mut Driver, topic: &str, name: &str, within: Duration) -> Value {
    let from = c.mark();
    c.push_media(
        topic,
        json!({"type": "connect", "data": {"metadata": {"displayName": name}}}),
    );
    let m = c.expect_within(media_in(topic, "connected"), within, from);
    let data = media_data(&m.value).expect("connected is JSON")["data"].clone();
    assert!(
        data["id"].is_string(),
        "connected carries the peer id: {data}"
    );
    data
}

/// Ids of `connected.otherEndpoints`, in the server's order.
pub fn other_ids(connected: &Value) -> Vec<String> {
    connected["otherEndpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("otherEndpoints is an array: {connected}"))
        .iter()
        .map(|e| e["id"].as_str().expect("endpoint id").to_owned())
        .collect()
}

/// The `data` of the first media event of type `kind` about endpoint `id` received on `topic`.
#[track_caller]
pub fn expect_media(c: &mut Driver, topic: &str, kind: &str, id: &str) -> Value {
    expect_media_within(c, topic, kind, id, DEFAULT_TIMEOUT, 0)
}

/// [`expect_media`] among the events from index `from` on, waiting up to `within`.
#[track_caller]
pub fn expect_media_within(
    c: &mut Driver,
    topic: &str,
    kind: &str,
    id: &str,
    within: Duration,
    from: usize,
) -> Value {
    let id = id.to_owned();
    let m = c.expect_within(
        media_in(topic, kind).when(&format!("data.data.id={id:?}"), move |v| {
            media_data(v).is_some_and(|d| d["data"]["id"] == id.as_str())
        }),
        within,
        from,
    );
    media_data(&m.value).expect("media event is JSON")["data"].clone()
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `within`.
#[track_caller]
pub fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
