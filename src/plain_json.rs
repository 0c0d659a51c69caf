//! JSON text read into a [`serde_json::Value`] exactly as written.
//!
//! serde_json's own `Value` reader treats an object whose first key is one of its private tokens
//! (`$serde_json::private::RawValue`, live here because axum turns on the `raw_value` feature)
//! as a raw value to unwrap, not as an object. The same JSON then means two things depending on
//! the order of its keys, and a value read back after serde_json wrote it out (keys sorted) can
//! fail or change. Client input is read here instead: every object stays an object.
//!
//! Owns only the reading. It must never reject or rewrite anything valid JSON allows; what a key
//! may be is for the caller to decide (see [`reserved_key`]).

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The prefix of serde_json's private tokens.
const RESERVED_PREFIX: &str = "$serde_json::private::";

/// Parses `text` as one JSON value, every object read as an object.
pub fn from_str(text: &str) -> serde_json::Result<Value> {
    serde_json::from_str::<Plain>(text).map(|p| p.0)
}

/// The first object key in `v` (depth first) that serde_json would read as one of its private
/// tokens when deserializing from a `Value`: a value holding one cannot be turned into a typed
/// struct the same way twice.
pub fn reserved_key(v: &Value) -> Option<&str> {
    match v {
        Value::Object(m) => m.iter().find_map(|(k, v)| {
            if k.starts_with(RESERVED_PREFIX) {
                Some(k.as_str())
            } else {
                reserved_key(v)
            }
        }),
        Value::Array(a) => a.iter().find_map(reserved_key),
        _ => None,
    }
}

struct Plain(Value);

impl<'de> Deserialize<'de> for Plain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PlainVisitor).map(Plain)
    }
}

struct PlainVisitor;

impl<'de> Visitor<'de> for PlainVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        // serde_json's reader yields only finite numbers, which `from` keeps as numbers.
        Ok(Value::from(n))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Plain::deserialize(d).map(|p| p.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Plain(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((k, Plain(v))) = map.next_entry::<String, Plain>()? {
            // A repeated key keeps its last value, as serde_json's own reader does.
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TOKEN: &str = "$serde_json::private::RawValue";

    #[test]
    fn an_object_keyed_by_a_private_token_stays_an_object_whatever_the_key_order() {
        let first = format!(r#"{{"{TOKEN}":"[1,2]","a":1}}"#);
        let second = format!(r#"{{"a":1,"{TOKEN}":"[1,2]"}}"#);
        let want = json!({TOKEN: "[1,2]", "a": 1});
        assert_eq!(from_str(&first).unwrap(), want);
        assert_eq!(from_str(&second).unwrap(), want);
        // What it guards against: serde_json's reader unwraps the first spelling.
        assert_ne!(
            serde_json::from_str::<Value>(&first).ok(),
            Some(want.clone())
        );
        assert_eq!(from_str(&want.to_string()).unwrap(), want);
        assert_eq!(reserved_key(&want), Some(TOKEN));
        assert_eq!(reserved_key(&json!([{"x": {TOKEN: 1}}])), Some(TOKEN));
    }

    #[test]
    fn reads_what_serde_json_reads_otherwise() {
        let text = r#"{"n":[1,-2,3.5,1e300,null,true,"s\u00e9"],"o":{"k":{}},"k":1,"k":2}"#;
        assert_eq!(
            from_str(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert_eq!(reserved_key(&from_str(text).unwrap()), None);
        assert!(from_str("{").is_err());
        assert!(from_str("[1,]").is_err());
    }
}
