//! Which peer connection a datagram on a worker's shared socket belongs to.
//!
//! Every connection of a worker answers on the same local address, so the source address alone
//! cannot name the connection until ICE has run: a STUN binding request names it by the local
//! ICE username fragment (RFC 8445 §7.2.2: `USERNAME` is `<recipient ufrag>:<sender ufrag>`),
//! and from then on its source address does. Browsers are relay-only, so a source address is a
//! TURN allocation of one browser connection.
//!
//! It owns the two maps (ufrag → key, address → key). It must never route a non-STUN datagram
//! from an address no STUN check of a known ufrag came from (DTLS or SRTP from a stranger goes
//! nowhere), nor keep anything of a key after [`Demux::remove`].

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const HEADER: usize = 20;
const USERNAME: u16 = 0x0006;
const BINDING_REQUEST: u16 = 0x0001;

/// The local ufrag a STUN binding request is addressed to, or `None` for anything else
/// (DTLS, SRTP, a malformed or foreign STUN message).
pub fn binding_ufrag(data: &[u8]) -> Option<&str> {
    if data.len() < HEADER || data[0] & 0xc0 != 0 || data[4..8] != MAGIC_COOKIE {
        return None;
    }
    if u16::from_be_bytes([data[0], data[1]]) != BINDING_REQUEST {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(HEADER..HEADER + len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let typ = u16::from_be_bytes([body[at], body[at + 1]]);
        let alen = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + alen)?;
        if typ == USERNAME {
            let name = std::str::from_utf8(value).ok()?;
            return name.split_once(':').map(|(local, _)| local);
        }
        at += 4 + alen.div_ceil(4) * 4;
    }
    None
}

/// Routes datagrams of one shared socket to connection keys.
#[derive(Debug)]
pub struct Demux<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<SocketAddr, K>,
}

impl<K> Default for Demux<K> {
    fn default() -> Self {
        Demux {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Demux<K> {
    /// `key`'s connection now answers to `ufrag` (its first answer, or an ICE restart's: the
    /// old fragment keeps routing until the browser stops using it).
    pub fn set_ufrag(&mut self, ufrag: &str, key: K) {
        self.by_ufrag.insert(ufrag.to_owned(), key);
    }

    /// The connection `data` from `src` is for. A binding request for a known ufrag (re)binds
    /// `src` to that connection: a TURN port freed by one browser and allocated to another is
    /// taken over by the new owner's first check.
    pub fn route(&mut self, src: SocketAddr, data: &[u8]) -> Option<K> {
        if let Some(ufrag) = binding_ufrag(data) {
            let key = *self.by_ufrag.get(ufrag)?;
            self.by_addr.insert(src, key);
            return Some(key);
        }
        self.by_addr.get(&src).copied()
    }

    /// Forgets everything that routes to `key`.
    pub fn remove(&mut self, key: K) {
        self.by_ufrag.retain(|_, k| *k != key);
        self.by_addr.retain(|_, k| *k != key);
    }

    pub fn len(&self) -> (usize, usize) {
        (self.by_ufrag.len(), self.by_addr.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        // A PRIORITY attribute first, so the parser has to skip one.
        attrs.extend_from_slice(&0x0024u16.to_be_bytes());
        attrs.extend_from_slice(&4u16.to_be_bytes());
        attrs.extend_from_slice(&[1, 2, 3, 4]);
        attrs.extend_from_slice(&USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_recipient_fragment_names_the_connection() {
        assert_eq!(binding_ufrag(&binding("srv1:brw9")), Some("srv1"));
        let mut response = binding("srv1:brw9");
        response[0] = 0x01; // a binding success response is not routed by its username
        assert_eq!(binding_ufrag(&response), None);
        assert_eq!(binding_ufrag(&[0x16, 0xfe, 0xfd, 0, 0]), None, "DTLS");
        let mut truncated = binding("srv1:brw9");
        truncated.truncate(30);
        assert_eq!(binding_ufrag(&truncated), None);
    }

    #[test]
    fn strangers_are_not_routed_until_a_check_names_them() {
        let mut d = Demux::default();
        d.set_ufrag("a", 1u32);
        d.set_ufrag("b", 2u32);
        let dtls = [0x16u8, 0xfe, 0xfd];
        assert_eq!(d.route(addr(10), &dtls), None);
        assert_eq!(d.route(addr(10), &binding("zz:x")), None, "unknown ufrag");
        assert_eq!(d.route(addr(10), &dtls), None);
        assert_eq!(d.route(addr(10), &binding("a:x")), Some(1));
        assert_eq!(d.route(addr(10), &dtls), Some(1));
        // The port changes hands: the new owner's check moves it.
        assert_eq!(d.route(addr(10), &binding("b:y")), Some(2));
        assert_eq!(d.route(addr(10), &dtls), Some(2));
        d.remove(2);
        assert_eq!(d.route(addr(10), &dtls), None);
        assert_eq!(d.route(addr(10), &binding("b:y")), None);
        assert_eq!(d.len(), (1, 0));
    }
}
