//! Signed, expiring join tokens: the optional shared-secret access control of rooms.
//!
//! A token is `base64url(payload) "." base64url(HMAC-SHA256(secret, base64url(payload)))`
//! (no padding), the payload being the JSON `{"room": <name>, "exp": <unix seconds>}`. The
//! server and the `videoroom token` command share the secret; whoever holds a token may join
//! that one room until it expires. Checking a token is pure: the caller passes the time.
//!
//! Owns minting and checking tokens. It never logs, and never puts a token or the secret into
//! an error (the errors are the reasons clients are shown).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// Shortest secret accepted: 16 bytes keep a guessed secret out of reach.
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest token looked at; anything longer is refused before it is decoded.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// The HMAC key behind every token of a deployment. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct JoinSecret {
    key: hmac::Key,
}

impl fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinSecret(..)")
    }
}

/// Why a secret is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the join secret must be at least {MIN_SECRET_BYTES} bytes long (it is {0})")]
pub struct WeakSecret(pub usize);

/// Why a join was refused; the `Display` text is the join error's `reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a join token is required")]
    Missing,
    #[error("join token is not valid")]
    Invalid,
    #[error("token is for another room")]
    OtherRoom,
    #[error("token expired")]
    Expired,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    room: String,
    exp: u64,
}

impl JoinSecret {
    pub fn new(secret: &[u8]) -> Result<JoinSecret, WeakSecret> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(WeakSecret(secret.len()));
        }
        Ok(JoinSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// A token for `room` valid until `expires` (rounded down to the second).
    pub fn mint(&self, room: &str, expires: SystemTime) -> String {
        let claims = Claims {
            room: room.to_owned(),
            exp: unix_seconds(expires),
        };
        let body = serde_json::to_vec(&claims).expect("claims serialize");
        let payload = URL_SAFE_NO_PAD.encode(body);
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Checks that `token` (the join payload's `token` field, if any) admits `room` at `now`.
    /// The signature is checked (in constant time) before anything in the payload is believed.
    pub fn check(
        &self,
        token: Option<&serde_json::Value>,
        room: &str,
        now: SystemTime,
    ) -> Result<(), TokenError> {
        let token = match token {
            None | Some(serde_json::Value::Null) => return Err(TokenError::Missing),
            Some(serde_json::Value::String(t)) if t.is_empty() => return Err(TokenError::Missing),
            Some(serde_json::Value::String(t)) => t.as_str(),
            Some(_) => return Err(TokenError::Invalid),
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid);
        }
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Invalid)?;
        hmac::verify(&self.key, payload.as_bytes(), &tag).map_err(|_| TokenError::Invalid)?;
        let body = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Invalid)?;
        let claims: Claims = serde_json::from_slice(&body).map_err(|_| TokenError::Invalid)?;
        // Room names are case-insensitive (see `channel`).
        if !claims.room.eq_ignore_ascii_case(room) {
            return Err(TokenError::OtherRoom);
        }
        if unix_seconds(now) >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Parses a lifetime such as `90s`, `30m`, `24h` or `7d` (a bare number is seconds).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 24h or 7d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    match n.checked_mul(unit_secs) {
        Some(0) => Err("the lifetime must be longer than zero".into()),
        Some(secs) if secs <= MAX_TTL_SECS => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "{s:?} is too long: a link lives at most {} days",
            MAX_TTL_SECS / 86_400
        )),
    }
}

/// The longest a minted link may live: a year and a day. Longer is a link that never expires
/// in practice (and far longer overflows the clock).
pub const MAX_TTL_SECS: u64 = 366 * 86_400;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_ttl_is_at_most_a_year_and_a_day() {
        assert_eq!(parse_ttl("366d"), Ok(Duration::from_secs(366 * 86_400)));
        for long in ["367d", "9999999999999d", "18446744073709551615s"] {
            let e = parse_ttl(long).unwrap_err();
            assert!(e.contains("at most 366 days"), "{long}: {e}");
        }
    }

    fn secret() -> JoinSecret {
        JoinSecret::new(b"0123456789abcdef-test").unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_minted_token_admits_its_room_until_it_expires() {
        let s = secret();
        let t = json!(s.mint("standup", at(1_000)));
        assert_eq!(s.check(Some(&t), "standup", at(999)), Ok(()));
        // Room names are case-insensitive.
        assert_eq!(s.check(Some(&t), "StandUp", at(999)), Ok(()));
        assert_eq!(
            s.check(Some(&t), "standup", at(1_000)),
            Err(TokenError::Expired)
        );
        assert_eq!(
            s.check(Some(&t), "other", at(10)),
            Err(TokenError::OtherRoom)
        );
    }

    #[test]
    fn missing_forged_and_foreign_tokens_are_refused_with_their_reason() {
        let s = secret();
        let now = at(10);
        assert_eq!(s.check(None, "r", now), Err(TokenError::Missing));
        assert_eq!(
            s.check(Some(&json!(null)), "r", now),
            Err(TokenError::Missing)
        );
        assert_eq!(
            s.check(Some(&json!("")), "r", now),
            Err(TokenError::Missing)
        );
        for bad in [
            json!(42),
            json!("no-dot"),
            json!("a.b"),
            json!("..."),
            json!("é.é"),
        ] {
            assert_eq!(
                s.check(Some(&bad), "r", now),
                Err(TokenError::Invalid),
                "{bad}"
            );
        }
        // Signed with another secret.
        let other = JoinSecret::new(b"another secret of 16+ bytes").unwrap();
        let foreign = json!(other.mint("r", at(100)));
        assert_eq!(s.check(Some(&foreign), "r", now), Err(TokenError::Invalid));
        // A payload edited to another room keeps the old signature: refused as invalid, not
        // as "another room", since nothing in a forged payload is believed.
        let good = s.mint("r", at(100));
        let (_, tag) = good.split_once('.').unwrap();
        let edited = URL_SAFE_NO_PAD.encode(br#"{"room":"x","exp":100}"#);
        let forged = json!(format!("{edited}.{tag}"));
        assert_eq!(s.check(Some(&forged), "x", now), Err(TokenError::Invalid));
        let huge = json!(format!("{}.{}", "a".repeat(MAX_TOKEN_BYTES), "b"));
        assert_eq!(s.check(Some(&huge), "r", now), Err(TokenError::Invalid));
    }

    #[test]
    fn reasons_read_as_the_brief_promises() {
        assert_eq!(TokenError::Missing.to_string(), "a join token is required");
        assert_eq!(TokenError::Expired.to_string(), "token expired");
        assert_eq!(
            TokenError::OtherRoom.to_string(),
            "token is for another room"
        );
    }

    #[test]
    fn short_secrets_are_refused_and_debug_hides_the_key() {
        assert_eq!(JoinSecret::new(b"short").unwrap_err(), WeakSecret(5));
        assert_eq!(format!("{:?}", secret()), "JoinSecret(..)");
    }

    #[test]
    fn lifetimes_parse_with_units() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "h", "0h", "5w", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }
}
