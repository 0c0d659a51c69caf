//! Phoenix V2 JSON text frames: `[join_ref, ref, topic, event, payload]`.
//!
//! Owns the mapping between a WebSocket text message and a [`Frame`]. It must never panic on
//! any input text, and it never interprets a frame (routing and reference rules belong to
//! [`super::socket`]). Binary V2 frames are not handled here.

use serde_json::{json, Value};

use crate::shared_text::SharedText;

/// Topic the client uses for heartbeats.
pub const HEARTBEAT_TOPIC: &str = "phoenix";
/// Client event: heartbeat on [`HEARTBEAT_TOPIC`].
pub const EV_HEARTBEAT: &str = "heartbeat";
/// Client event: join a topic.
pub const EV_JOIN: &str = "phx_join";
/// Client event: leave a topic.
pub const EV_LEAVE: &str = "phx_leave";
/// Server event: reply to a client message carrying its ref.
pub const EV_REPLY: &str = "phx_reply";
/// Server event: the channel closed; the client removes it and never rejoins.
pub const EV_CLOSE: &str = "phx_close";
/// Server event: the channel crashed; the client rejoins with backoff.
pub const EV_ERROR: &str = "phx_error";

/// One V2 frame.
///
/// Inbound, `payload` may be any JSON value (Phoenix accepts that). Outbound, the constructors
/// always build an object payload, because phoenix.js reads fields off it and Phoenix's own
/// encoder refuses anything else.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// The channel's join reference; `None` for heartbeats, broadcasts and unmatched-topic replies.
    pub join_ref: Option<String>,
    /// The message reference a reply answers; `None` for server pushes.
    pub msg_ref: Option<String>,
    /// The topic, e.g. `room:abc`.
    pub topic: String,
    /// The event name, e.g. `phx_join` or `mediaEvent`.
    pub event: String,
    /// The payload.
    pub payload: Value,
}

/// Why a text message is not a V2 frame.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The text is not JSON at all (or nests too deeply for the parser).
    #[error("frame is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON is valid but is not an array.
    #[error("frame is not a JSON array")]
    NotArray,
    /// The array has fewer than the five V2 fields.
    #[error("frame has {0} elements, expected at least 5")]
    TooShort(usize),
    /// A field has the wrong JSON type.
    #[error("frame field `{field}` must be {expected}")]
    BadField {
        /// Which of the five fields.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
}

/// Decodes one V2 text frame. Elements after the fifth are ignored, as Phoenix does.
///
/// Refs must be strings or null: phoenix.js always sends decimal strings, and echoing a number
/// back as a string would change its type under the client's feet.
pub fn decode(text: &str) -> Result<Frame, DecodeError> {
    // Read as written: serde_json's own reader would unwrap a payload object keyed by its private
    // token, and the frame would not decode to itself after an encode (fuzz target
    // `phoenix_frame`).
    let value = crate::plain_json::from_str(text)?;
    let Value::Array(items) = value else {
        return Err(DecodeError::NotArray);
    };
    if items.len() < 5 {
        return Err(DecodeError::TooShort(items.len()));
    }
    let mut items = items.into_iter();
    // Five elements are present (checked above), so each `next()` below yields one.
    let mut field = || items.next().unwrap_or(Value::Null);
    let join_ref = opt_string(field(), "join_ref")?;
    let msg_ref = opt_string(field(), "ref")?;
    let topic = string(field(), "topic")?;
    let event = string(field(), "event")?;
    let payload = field();
    Ok(Frame {
        join_ref,
        msg_ref,
        topic,
        event,
        payload,
    })
}

fn opt_string(value: Value, field: &'static str) -> Result<Option<String>, DecodeError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(DecodeError::BadField {
            field,
            expected: "a string or null",
        }),
    }
}

fn string(value: Value, field: &'static str) -> Result<String, DecodeError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(DecodeError::BadField {
            field,
            expected: "a string",
        }),
    }
}

impl Frame {
    /// Encodes the frame as V2 JSON text.
    pub fn encode(&self) -> String {
        let tuple = (
            &self.join_ref,
            &self.msg_ref,
            &self.topic,
            &self.event,
            &self.payload,
        );
        // Strings, options and `Value` (whose map keys are strings) always serialise.
        serde_json::to_string(&tuple).expect("a V2 frame always serialises")
    }

    /// What `Frame::push(join_ref, topic, event, json!({field: value})).encode()` gives, byte
    /// for byte, with `value`'s JSON literal made once for every frame that shares it.
    pub fn encode_push_shared(
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        field: &str,
        value: &SharedText,
    ) -> String {
        let head = (join_ref, None::<&str>, topic, event);
        let head = serde_json::to_string(&head).expect("strings always serialise");
        let field = serde_json::to_string(field).expect("strings always serialise");
        let literal = value.json_literal();
        let mut out = String::with_capacity(head.len() + field.len() + literal.len() + 4);
        // `head` is `[a,b,c,d]`: reopen it for the fifth element.
        out.push_str(&head[..head.len() - 1]);
        out.push_str(",{");
        out.push_str(&field);
        out.push(':');
        out.push_str(literal);
        out.push_str("}]");
        out
    }

    /// `[join_ref, ref, topic, "phx_reply", {"status": status, "response": response}]`.
    pub fn reply(
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: impl Into<String>,
        status: impl Into<String>,
        response: Value,
    ) -> Self {
        Self {
            join_ref,
            msg_ref,
            topic: topic.into(),
            event: EV_REPLY.to_owned(),
            payload: json!({ "status": status.into(), "response": response }),
        }
    }

    /// `[join_ref, null, topic, event, payload]`: a channel push.
    pub fn push(
        join_ref: Option<String>,
        topic: impl Into<String>,
        event: impl Into<String>,
        payload: Value,
    ) -> Self {
        Self {
            join_ref,
            msg_ref: None,
            topic: topic.into(),
            event: event.into(),
            payload,
        }
    }

    /// `[join_ref, join_ref, topic, "phx_close", {}]`: the ref field carries the join_ref.
    pub fn close(join_ref: Option<String>, topic: impl Into<String>) -> Self {
        Self {
            msg_ref: join_ref.clone(),
            join_ref,
            topic: topic.into(),
            event: EV_CLOSE.to_owned(),
            payload: json!({}),
        }
    }

    /// `[join_ref, join_ref, topic, "phx_error", {"reason": "channel_crash"}]`.
    pub fn error(join_ref: Option<String>, topic: impl Into<String>) -> Self {
        Self {
            msg_ref: join_ref.clone(),
            join_ref,
            topic: topic.into(),
            event: EV_ERROR.to_owned(),
            payload: json!({ "reason": "channel_crash" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(x: &str) -> Option<String> {
        Some(x.to_owned())
    }

    fn json_of(text: &str) -> Value {
        serde_json::from_str(text).expect("encoded frames are JSON")
    }

    /// serde_json's own reader unwraps an object whose first key is its private raw-value token;
    /// encoding sorts keys, so such a payload did not decode to itself (fuzz `phoenix_frame`).
    #[test]
    fn a_payload_keyed_by_serde_jsons_private_token_round_trips() {
        let text = r#"[null,null,"room:a","x",{"a":1,"$serde_json::private::RawValue":"[1]"}]"#;
        let f = decode(text).unwrap();
        assert_eq!(f.payload["a"], 1);
        assert_eq!(decode(&f.encode()).unwrap(), f);
    }

    #[test]
    fn decodes_join() {
        let f = decode(r#"["6","6","room:r1","phx_join",{"isSimulcastOn":false}]"#).unwrap();
        assert_eq!(
            f,
            Frame {
                join_ref: s("6"),
                msg_ref: s("6"),
                topic: "room:r1".into(),
                event: "phx_join".into(),
                payload: json!({"isSimulcastOn": false}),
            }
        );
    }

    #[test]
    fn decodes_heartbeat_with_null_join_ref() {
        let f = decode(r#"[null,"4","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(f.join_ref, None);
        assert_eq!(f.msg_ref, s("4"));
        assert_eq!(f.topic, HEARTBEAT_TOPIC);
        assert_eq!(f.event, EV_HEARTBEAT);
    }

    #[test]
    fn ignores_trailing_elements_and_accepts_any_payload() {
        let f = decode(r#"[null,null,"t","e",[1,2],"extra",{}]"#).unwrap();
        assert_eq!(f.payload, json!([1, 2]));
        let f = decode(r#"[null,null,"t","e","text"]"#).unwrap();
        assert_eq!(f.payload, json!("text"));
        let f = decode(r#"[null,null,"t","e",null]"#).unwrap();
        assert_eq!(f.payload, Value::Null);
    }

    #[test]
    fn rejects_bad_frames_with_clear_errors() {
        let cases = [
            ("not json", "frame is not valid JSON"),
            ("", "frame is not valid JSON"),
            (r#"{"topic":"t"}"#, "frame is not a JSON array"),
            ("[1,2,3,4]", "frame has 4 elements, expected at least 5"),
            ("[]", "frame has 0 elements, expected at least 5"),
            (
                r#"[1,"1","t","e",{}]"#,
                "frame field `join_ref` must be a string or null",
            ),
            (
                r#"["1",2,"t","e",{}]"#,
                "frame field `ref` must be a string or null",
            ),
            (
                r#"["1","2",null,"e",{}]"#,
                "frame field `topic` must be a string",
            ),
            (
                r#"["1","2","t",5,{}]"#,
                "frame field `event` must be a string",
            ),
        ];
        for (text, msg) in cases {
            let err = decode(text).unwrap_err().to_string();
            assert!(err.starts_with(msg), "{text:?}: got {err:?}, want {msg:?}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(decode(&text), Err(DecodeError::Json(_))));
    }

    #[test]
    fn constructors_build_the_documented_frames() {
        let cases = [
            (
                Frame::reply(s("6"), s("7"), "room:r1", "ok", json!({"echoed": true})),
                json!(["6","7","room:r1","phx_reply",{"status":"ok","response":{"echoed":true}}]),
            ),
            (
                Frame::push(s("6"), "room:r1", "mediaEvent", json!({"data": "x"})),
                json!(["6", null, "room:r1", "mediaEvent", {"data": "x"}]),
            ),
            (
                Frame::push(None, "room:r1", "mediaEvent", json!({"data": "b"})),
                json!([null, null, "room:r1", "mediaEvent", {"data": "b"}]),
            ),
            (
                Frame::close(s("6"), "room:r1"),
                json!(["6", "6", "room:r1", "phx_close", {}]),
            ),
            (
                Frame::error(s("6"), "room:crash"),
                json!(["6","6","room:crash","phx_error",{"reason":"channel_crash"}]),
            ),
            (
                Frame::reply(
                    None,
                    s("1"),
                    "nope:1",
                    "error",
                    json!({"reason": "unmatched topic"}),
                ),
                json!([null, "1", "nope:1", "phx_reply", {
                    "status": "error",
                    "response": {"reason": "unmatched topic"},
                }]),
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(json_of(&frame.encode()), want);
        }
    }

    #[test]
    fn encode_escapes_strings() {
        let f = Frame::push(s("\"1\""), "room:\u{0}\n", "é", json!({}));
        assert_eq!(decode(&f.encode()).unwrap(), f);
    }

    /// Found by fuzz/ phoenix_frame: with serde_json's default (not correctly rounded) float
    /// parser, this payload decoded to a number whose encoding decoded to a different one.
    #[test]
    fn floats_survive_decode_encode_decode() {
        let text = r#"["U","","t","e",1111111111441114133.32334]"#;
        let once = decode(text).unwrap();
        let twice = decode(&once.encode()).unwrap();
        assert_eq!(twice, once);
        assert_eq!(twice.encode(), once.encode());
        assert_eq!(
            once.payload.as_f64(),
            Some(1_111_111_111_441_114_133.323_34)
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn decode_never_panics(text in ".{0,64}") {
            let _ = decode(&text);
        }

        #[test]
        fn decode_never_panics_on_json_arrays(items in prop::collection::vec(arb_json(), 0..7)) {
            let _ = decode(&Value::Array(items).to_string());
        }

        #[test]
        fn encode_then_decode_round_trips(
            join_ref in proptest::option::of(".{0,4}"),
            msg_ref in proptest::option::of(".{0,4}"),
            topic in ".{0,8}",
            event in ".{0,8}",
            payload in arb_json(),
        ) {
            let f = Frame { join_ref, msg_ref, topic, event, payload };
            prop_assert_eq!(decode(&f.encode()).unwrap(), f);
        }

        #[test]
        fn a_shared_push_encodes_as_the_same_push_built_as_a_frame(
            join_ref in proptest::option::of(".{0,4}"),
            topic in ".{0,8}",
            event in ".{0,8}",
            field in ".{0,4}",
            text in "(.|\r|\n|\\|\"){0,32}",
        ) {
            let shared = SharedText::new(text.clone());
            let mut payload = serde_json::Map::new();
            payload.insert(field.clone(), Value::String(text));
            let frame = Frame::push(join_ref.clone(), topic.clone(), event.clone(), Value::Object(payload));
            let fast = Frame::encode_push_shared(join_ref.as_deref(), &topic, &event, &field, &shared);
            prop_assert_eq!(&fast, &frame.encode());
            // The cached literal serves a second frame unchanged.
            prop_assert_eq!(fast, Frame::encode_push_shared(join_ref.as_deref(), &topic, &event, &field, &shared));
        }
    }
}
