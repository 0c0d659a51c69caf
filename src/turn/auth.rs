//! Who may use the TURN server: one credential per live peer, and stateless nonces.
//!
//! Credentials are TURN REST shaped (draft-uberti-behave-turn-rest): username
//! `<unix expiry>:<peer id>`, password `base64(HMAC-SHA1(secret, username))`. Unlike plain TURN
//! REST they are also *registered*: a credential is good only while its peer is in a room. It
//! is issued when the peer connects and revoked when it leaves, so a leaked credential dies with
//! its peer rather than hours later. The expiry in the username is a backstop; it cannot be
//! short, because the 0.5.3 client reads its ICE servers once per connection and makes new
//! allocations with them at every renegotiation (each `offerData` restarts ICE).
//!
//! Nonces carry their own issue time and a MAC over it and the client's address, so a flood of
//! unauthenticated requests costs no memory (RFC 5389 §10.2 leaves the nonce's form to the
//! server).
//!
//! It owns: the credential book (peer → username and long-term key) and the nonce secret. It
//! must never: accept a username that is not the one currently issued to a live peer; keep
//! state per unauthenticated request.

use std::collections::HashMap;
use std::net::SocketAddr;

use base64::Engine as _;
use md5::Digest as _;

/// The long-term credential key, MD5(username ":" realm ":" password) (RFC 5389 §15.4).
pub type Key = [u8; 16];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub username: String,
    pub password: String,
}

#[derive(Debug)]
struct Credential {
    username: String,
    key: Key,
    expiry: u64,
}

/// Why a username is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not issued by this server, or its peer has left.
    Unknown,
    /// Past its expiry: good for allocations it already has, not for new ones.
    Expired,
}

/// Why a nonce is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceError {
    /// Not made by this server for this client (or garbled).
    Invalid,
    /// Made by this server, but too old.
    Stale,
}

pub struct Book {
    realm: String,
    secret: ring::hmac::Key,
    peers: HashMap<String, Credential>,
}

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Book")
            .field("realm", &self.realm)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Book {
    pub fn new(realm: String, secret: &[u8]) -> Book {
        Book {
            realm,
            secret: ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret),
            peers: HashMap::new(),
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Issues `peer`'s credential, replacing any earlier one.
    pub fn issue(&mut self, peer: &str, expiry: u64) -> Issued {
        let username = format!("{expiry}:{peer}");
        let password = base64::engine::general_purpose::STANDARD
            .encode(ring::hmac::sign(&self.secret, username.as_bytes()));
        let key = long_term_key(&username, &self.realm, &password);
        self.peers.insert(
            peer.to_owned(),
            Credential {
                username: username.clone(),
                key,
                expiry,
            },
        );
        Issued { username, password }
    }

    /// Forgets `peer`'s credential. True if it had one.
    pub fn revoke(&mut self, peer: &str) -> bool {
        self.peers.remove(peer).is_some()
    }

    /// The peer id and key of `username`, if it is the credential currently issued to a live
    /// peer; `now` is unix seconds, checked against the expiry only when `new_allocation`.
    pub fn check(
        &self,
        username: &str,
        now: u64,
        new_allocation: bool,
    ) -> Result<(&str, Key), Refusal> {
        let peer = username_peer(username).ok_or(Refusal::Unknown)?;
        let (peer, cred) = self.peers.get_key_value(peer).ok_or(Refusal::Unknown)?;
        if cred.username != username {
            return Err(Refusal::Unknown);
        }
        if new_allocation && cred.expiry < now {
            return Err(Refusal::Expired);
        }
        Ok((peer.as_str(), cred.key))
    }

    pub fn live_peers(&self) -> usize {
        self.peers.len()
    }

    /// A nonce for `client`, issued at `now` (seconds on any clock that only moves forward).
    pub fn nonce(&self, client: SocketAddr, now: u64) -> String {
        let mut s = format!("{now:016x}");
        for b in &self.nonce_mac(client, now).as_ref()[..8] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Checks a nonce this server gave `client`, valid for `lifetime` seconds.
    pub fn check_nonce(
        &self,
        nonce: &str,
        client: SocketAddr,
        now: u64,
        lifetime: u64,
    ) -> Result<(), NonceError> {
        if nonce.len() != 32 || !nonce.is_ascii() {
            return Err(NonceError::Invalid);
        }
        let issued = u64::from_str_radix(&nonce[..16], 16).map_err(|_| NonceError::Invalid)?;
        let mac = &nonce[16..];
        let expect = self.nonce(client, issued);
        if !ct_eq(&expect.as_bytes()[16..], mac.as_bytes()) {
            return Err(NonceError::Invalid);
        }
        if issued > now || now - issued > lifetime {
            return Err(NonceError::Stale);
        }
        Ok(())
    }

    fn nonce_mac(&self, client: SocketAddr, issued: u64) -> ring::hmac::Tag {
        let mut ctx = ring::hmac::Context::with_key(&self.secret);
        ctx.update(b"nonce");
        ctx.update(&issued.to_be_bytes());
        match client.ip() {
            std::net::IpAddr::V4(ip) => ctx.update(&ip.octets()),
            std::net::IpAddr::V6(ip) => ctx.update(&ip.octets()),
        }
        ctx.update(&client.port().to_be_bytes());
        ctx.sign()
    }
}

/// Equality whose time does not depend on where the inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The peer a username was issued to (`<expiry>:<peer>`).
pub fn username_peer(username: &str) -> Option<&str> {
    let (expiry, peer) = username.split_once(':')?;
    (!peer.is_empty() && expiry.parse::<u64>().is_ok()).then_some(peer)
}

pub fn long_term_key(username: &str, realm: &str, password: &str) -> Key {
    let mut h = md5::Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Book {
        Book::new("videoroom".into(), b"secret")
    }

    #[test]
    fn the_password_is_the_published_rest_construction() {
        // base64(HMAC-SHA1("secret", "1:peer")), computed independently with openssl.
        let issued = book().issue("peer", 1);
        assert_eq!(issued.username, "1:peer");
        assert_eq!(issued.password, "zWZZ3aPeLl9Lvh3Q1qKdZlQugqc=");
    }

    #[test]
    fn the_key_is_rfc5389_long_term() {
        // MD5("user:realm:pass"), computed independently with md5sum.
        let k = long_term_key("user", "realm", "pass");
        let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "8493fbc53ba582fb4c044c456bdc40eb");
    }

    #[test]
    fn a_credential_is_good_only_while_its_peer_is_live() {
        let mut b = book();
        let a = b.issue("peer-a", 100);
        let key = long_term_key(&a.username, "videoroom", &a.password);
        assert_eq!(b.check(&a.username, 50, true), Ok(("peer-a", key)));
        // Past the expiry: existing allocations go on, new ones are refused.
        assert_eq!(b.check(&a.username, 101, false), Ok(("peer-a", key)));
        assert_eq!(b.check(&a.username, 101, true), Err(Refusal::Expired));
        // A username naming a live peer but not the one issued (forged expiry) is unknown.
        assert_eq!(b.check("999:peer-a", 50, true), Err(Refusal::Unknown));
        assert!(b.revoke("peer-a"));
        assert_eq!(b.check(&a.username, 50, false), Err(Refusal::Unknown));
        assert!(!b.revoke("peer-a"));
        assert_eq!(b.check("garbage", 0, false), Err(Refusal::Unknown));
        assert_eq!(b.live_peers(), 0);
    }

    #[test]
    fn reissuing_replaces_the_old_credential() {
        let mut b = book();
        let old = b.issue("p", 100);
        let new = b.issue("p", 200);
        assert_eq!(b.check(&old.username, 0, false), Err(Refusal::Unknown));
        assert!(b.check(&new.username, 0, false).is_ok());
    }

    #[test]
    fn usernames_name_their_peer() {
        assert_eq!(username_peer("1700000000:peer-a"), Some("peer-a"));
        assert_eq!(username_peer("1:a:b"), Some("a:b"));
        assert_eq!(username_peer("videoroom"), None);
        assert_eq!(username_peer("x:peer"), None);
        assert_eq!(username_peer("1:"), None);
    }

    #[test]
    fn nonces_are_bound_to_client_and_time() {
        let b = book();
        let c: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let other: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        let n = b.nonce(c, 1000);
        assert_eq!(b.check_nonce(&n, c, 1000, 600), Ok(()));
        assert_eq!(b.check_nonce(&n, c, 1600, 600), Ok(()));
        assert_eq!(b.check_nonce(&n, c, 1601, 600), Err(NonceError::Stale));
        assert_eq!(
            b.check_nonce(&n, other, 1000, 600),
            Err(NonceError::Invalid)
        );
        let mut forged = n.clone();
        forged.replace_range(..16, &format!("{:016x}", 1500));
        assert_eq!(
            b.check_nonce(&forged, c, 1500, 600),
            Err(NonceError::Invalid)
        );
        for bad in ["", "zz", &"g".repeat(32), &"é".repeat(16)] {
            assert_eq!(b.check_nonce(bad, c, 1000, 600), Err(NonceError::Invalid));
        }
        // Another server's secret.
        let other_server = Book::new("videoroom".into(), b"other");
        assert_eq!(
            other_server.check_nonce(&n, c, 1000, 600),
            Err(NonceError::Invalid)
        );
    }
}
