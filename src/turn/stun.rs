//! STUN messages (RFC 5389) and TURN ChannelData (RFC 5766 §11.4), as the TURN server reads
//! and writes them: a zero-copy reader over a received datagram and a writer that appends
//! attributes, MESSAGE-INTEGRITY and FINGERPRINT.
//!
//! It owns the byte layout only: which method a message is, where its attributes are, whether
//! a MESSAGE-INTEGRITY verifies with a given key. It must never panic or allocate on input it
//! rejects (every length is checked before it is used), and it decides nothing about TURN.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Methods this server knows (RFC 5389 §18.1, RFC 5766 §13).
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types (RFC 5389 §18.2, RFC 5766 §14).
pub mod attr {
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }
}

/// The 16-bit message type field: method bits interleaved with the two class bits.
fn message_type(method: u16, class: Class) -> u16 {
    let c = class.bits();
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 0b01) << 4)
        | ((c & 0b10) << 7)
}

fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = match ((t >> 7) & 0b10) | ((t >> 4) & 0b01) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// Why a datagram is not a STUN message this server reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("shorter than a STUN header")]
    Short,
    #[error("not a STUN message (first bits or magic cookie)")]
    NotStun,
    #[error("length field does not match the datagram")]
    Length,
    #[error("attribute runs past the end of the message")]
    Attribute,
}

/// A received STUN message, borrowing the datagram.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    raw: &'a [u8],
    pub method: u16,
    pub class: Class,
}

impl<'a> Message<'a> {
    /// Checks the header and that the attributes tile the body exactly.
    pub fn decode(raw: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        if raw.len() < HEADER_LEN {
            return Err(DecodeError::Short);
        }
        let t = u16::from_be_bytes([raw[0], raw[1]]);
        let cookie = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
        if t & 0xC000 != 0 || cookie != MAGIC_COOKIE {
            return Err(DecodeError::NotStun);
        }
        let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
        if !len.is_multiple_of(4) || HEADER_LEN + len != raw.len() {
            return Err(DecodeError::Length);
        }
        let (method, class) = split_type(t);
        let m = Message { raw, method, class };
        let mut off = HEADER_LEN;
        while off < raw.len() {
            let (_, _, next) = m.attr_at(off).ok_or(DecodeError::Attribute)?;
            off = next;
        }
        Ok(m)
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.raw[8..20]);
        id
    }

    /// The attribute at `off`: (type, value, offset of the next one).
    fn attr_at(&self, off: usize) -> Option<(u16, &'a [u8], usize)> {
        let raw = self.raw;
        let head = raw.get(off..off + 4)?;
        let typ = u16::from_be_bytes([head[0], head[1]]);
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let value = raw.get(off + 4..off + 4 + len)?;
        let next = off + 4 + len.div_ceil(4) * 4;
        (next <= raw.len()).then_some((typ, value, next))
    }

    /// Every attribute with its offset, in order.
    pub fn attrs(&self) -> impl Iterator<Item = (usize, u16, &'a [u8])> + '_ {
        let mut off = HEADER_LEN;
        std::iter::from_fn(move || {
            let (typ, value, next) = self.attr_at(off)?;
            let at = off;
            off = next;
            Some((at, typ, value))
        })
    }

    /// The first attribute of type `typ` before MESSAGE-INTEGRITY (what follows it, bar
    /// FINGERPRINT, is not covered by the integrity check and must be ignored).
    pub fn get(&self, typ: u16) -> Option<&'a [u8]> {
        for (_, t, v) in self.attrs() {
            if t == typ {
                return Some(v);
            }
            if t == attr::MESSAGE_INTEGRITY {
                break;
            }
        }
        None
    }

    /// Comprehension-required attributes (0x0000–0x7FFF) this server does not know.
    pub fn unknown_required(&self, known: &[u16]) -> Vec<u16> {
        self.attrs()
            .map(|(_, t, _)| t)
            .filter(|t| *t < 0x8000 && !known.contains(t))
            .collect()
    }

    pub fn text(&self, typ: u16) -> Option<&'a str> {
        self.get(typ).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn u32_attr(&self, typ: u16) -> Option<u32> {
        let v = self.get(typ)?;
        Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
    }

    /// An XOR-*-ADDRESS attribute, decoded.
    pub fn xor_address(&self, typ: u16) -> Option<SocketAddr> {
        xor_address_value(self.get(typ)?, &self.raw[4..20])
    }

    /// Every XOR-PEER-ADDRESS (CreatePermission may carry several). `None` if one is malformed.
    pub fn xor_peer_addresses(&self) -> Option<Vec<SocketAddr>> {
        let mut out = Vec::new();
        for (_, t, v) in self.attrs() {
            if t == attr::MESSAGE_INTEGRITY {
                break;
            }
            if t == attr::XOR_PEER_ADDRESS {
                out.push(xor_address_value(v, &self.raw[4..20])?);
            }
        }
        Some(out)
    }

    /// Whether MESSAGE-INTEGRITY is present and verifies with `key` (RFC 5389 §15.4: HMAC-SHA1
    /// over the message up to the attribute, with the length field counting up to its end).
    pub fn integrity_ok(&self, key: &[u8]) -> bool {
        let Some((at, _, mac)) = self.attrs().find(|(_, t, _)| *t == attr::MESSAGE_INTEGRITY)
        else {
            return false;
        };
        if mac.len() != 20 {
            return false;
        }
        let covered_len = (at + 4 + 20 - HEADER_LEN) as u16;
        let mut covered = self.raw[..at].to_vec();
        covered[2..4].copy_from_slice(&covered_len.to_be_bytes());
        let hkey = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
        ring::hmac::verify(&hkey, &covered, mac).is_ok()
    }
}

fn xor_address_value(v: &[u8], cookie_and_txid: &[u8]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match (v[1], v.len()) {
        (0x01, 8) => {
            let mut b = [0u8; 4];
            for i in 0..4 {
                b[i] = v[4 + i] ^ cookie_and_txid[i];
            }
            IpAddr::V4(Ipv4Addr::from(b))
        }
        (0x02, 20) => {
            let mut b = [0u8; 16];
            for i in 0..16 {
                b[i] = v[4 + i] ^ cookie_and_txid[i];
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Builds one STUN message into a buffer.
pub struct Writer<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
}

impl<'b> Writer<'b> {
    /// Starts a message at the end of `buf` (which it does not clear).
    pub fn new(buf: &'b mut Vec<u8>, method: u16, class: Class, txid: &[u8; 12]) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(txid);
        Writer { buf, start }
    }

    /// Goes on writing the message that starts at the beginning of `buf`.
    pub fn continue_from(buf: &'b mut Vec<u8>) -> Self {
        debug_assert!(buf.len() >= HEADER_LEN);
        Writer { buf, start: 0 }
    }

    fn set_len(&mut self, body: usize) {
        let len = (body as u16).to_be_bytes();
        self.buf[self.start + 2..self.start + 4].copy_from_slice(&len);
    }

    fn body_len(&self) -> usize {
        self.buf.len() - self.start - HEADER_LEN
    }

    pub fn attr(&mut self, typ: u16, value: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = value.len().div_ceil(4) * 4 - value.len();
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        let body = self.body_len();
        self.set_len(body);
        self
    }

    pub fn u32(&mut self, typ: u16, v: u32) -> &mut Self {
        self.attr(typ, &v.to_be_bytes())
    }

    pub fn xor_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let mut key = [0u8; 16];
        key.copy_from_slice(&self.buf[self.start + 4..self.start + 20]);
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let mut v = Vec::with_capacity(20);
        v.push(0);
        match addr.ip() {
            IpAddr::V4(ip) => {
                v.push(0x01);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend(ip.octets().iter().zip(key).map(|(a, k)| a ^ k));
            }
            IpAddr::V6(ip) => {
                v.push(0x02);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend(ip.octets().iter().zip(key).map(|(a, k)| a ^ k));
            }
        }
        self.attr(typ, &v)
    }

    /// ERROR-CODE with its standard reason phrase.
    pub fn error(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    /// MESSAGE-INTEGRITY keyed with `key` over everything written so far.
    pub fn integrity(&mut self, key: &[u8]) -> &mut Self {
        let body = self.body_len() + 24;
        self.set_len(body);
        let hkey = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
        let tag = ring::hmac::sign(&hkey, &self.buf[self.start..]);
        self.attr(attr::MESSAGE_INTEGRITY, tag.as_ref())
    }

    /// FINGERPRINT (CRC-32 of everything before it, XOR 0x5354554e); last attribute.
    pub fn fingerprint(&mut self) {
        let body = self.body_len() + 8;
        self.set_len(body);
        let crc = crc32(&self.buf[self.start..]) ^ FINGERPRINT_XOR;
        self.attr(attr::FINGERPRINT, &crc.to_be_bytes());
    }
}

/// CRC-32 (ISO-HDLC), as FINGERPRINT uses.
fn crc32(data: &[u8]) -> u32 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    CRC.checksum(data)
}

/// RFC 5766 channel numbers.
pub const MIN_CHANNEL: u16 = 0x4000;
pub const MAX_CHANNEL: u16 = 0x7FFF;

/// A ChannelData message: (channel, application data). `None` unless it starts with a
/// channel number and its length field fits the datagram (UDP may carry padding after it).
pub fn channel_data(raw: &[u8]) -> Option<(u16, &[u8])> {
    let head = raw.get(..4)?;
    let ch = u16::from_be_bytes([head[0], head[1]]);
    if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&ch) {
        return None;
    }
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    Some((ch, raw.get(4..4 + len)?))
}

/// Writes a ChannelData message for `data` on `channel` into `buf` (cleared first).
pub fn write_channel_data(buf: &mut Vec<u8>, channel: u16, data: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&channel.to_be_bytes());
    buf.extend_from_slice(&(data.len() as u16).to_be_bytes());
    buf.extend_from_slice(data);
}

/// Whether a datagram may be STUN (first two bits zero); ChannelData starts with 0b01.
pub fn looks_like_stun(raw: &[u8]) -> bool {
    raw.first().is_some_and(|b| b & 0xC0 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn type_field_round_trips_for_every_method_and_class() {
        for method in 0..0x1000u16 {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                assert_eq!(split_type(message_type(method, class)), (method, class));
            }
        }
        // Known encodings (RFC 5389 §6, RFC 5766).
        assert_eq!(message_type(method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(method::SEND, Class::Indication), 0x0016);
        assert_eq!(message_type(method::DATA, Class::Indication), 0x0017);
    }

    #[test]
    fn written_messages_decode_with_their_attributes() {
        let mut buf = Vec::new();
        let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let peer6: SocketAddr = "[2001:db8::1]:6000".parse().unwrap();
        Writer::new(&mut buf, method::CREATE_PERMISSION, Class::Request, &TXID)
            .attr(attr::USERNAME, b"user")
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .xor_address(attr::XOR_PEER_ADDRESS, peer6)
            .u32(attr::LIFETIME, 600)
            .integrity(b"key")
            .fingerprint();
        let m = Message::decode(&buf).unwrap();
        assert_eq!(
            (m.method, m.class),
            (method::CREATE_PERMISSION, Class::Request)
        );
        assert_eq!(m.transaction_id(), TXID);
        assert_eq!(m.text(attr::USERNAME), Some("user"));
        assert_eq!(m.u32_attr(attr::LIFETIME), Some(600));
        assert_eq!(m.xor_peer_addresses(), Some(vec![peer, peer6]));
        assert!(m.integrity_ok(b"key"));
        assert!(!m.integrity_ok(b"other"));
        // FINGERPRINT covers everything before it.
        let (at, _, v) = m.attrs().last().unwrap();
        let mut covered = buf[..at].to_vec();
        covered[2..4].copy_from_slice(&((buf.len() - HEADER_LEN) as u16).to_be_bytes());
        assert_eq!(
            u32::from_be_bytes(v.try_into().unwrap()),
            crc32(&covered) ^ FINGERPRINT_XOR
        );
    }

    #[test]
    fn integrity_matches_rfc5769_sample_request() {
        // RFC 5769 §2.1: short-term credential, password "VOkJxbRl1RmTxUk/WvJxBt".
        let hex = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69\
                   656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a6836765920\
                   2020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf";
        let hex: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
        let raw: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let m = Message::decode(&raw).unwrap();
        assert_eq!(m.text(attr::USERNAME), Some("evtj:h6vY"));
        assert!(m.integrity_ok(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.integrity_ok(b"VOkJxbRl1RmTxUk/WvJxBT"));
        let (at, _, fp) = m.attrs().last().unwrap();
        let mut covered = raw[..at].to_vec();
        covered[2..4].copy_from_slice(&((raw.len() - HEADER_LEN) as u16).to_be_bytes());
        assert_eq!(fp, &(crc32(&covered) ^ FINGERPRINT_XOR).to_be_bytes());
    }

    #[test]
    fn malformed_input_is_rejected_without_panicking() {
        assert_eq!(Message::decode(&[0; 19]).unwrap_err(), DecodeError::Short);
        let mut ok = Vec::new();
        Writer::new(&mut ok, method::BINDING, Class::Request, &TXID).attr(attr::SOFTWARE, b"x");
        let mut bad_cookie = ok.clone();
        bad_cookie[4] ^= 1;
        assert_eq!(
            Message::decode(&bad_cookie).unwrap_err(),
            DecodeError::NotStun
        );
        let mut long = ok.clone();
        long.push(0);
        assert_eq!(Message::decode(&long).unwrap_err(), DecodeError::Length);
        let mut overrun = ok.clone();
        overrun[HEADER_LEN + 3] = 200; // attribute length past the end
        assert_eq!(
            Message::decode(&overrun).unwrap_err(),
            DecodeError::Attribute
        );
        // Every truncation and every single-byte corruption: an error or a message, never a
        // panic, and accessors stay in bounds.
        for cut in 0..ok.len() {
            let _ = Message::decode(&ok[..cut]);
        }
        for i in 0..ok.len() {
            for b in [0u8, 0x80, 0xff] {
                let mut c = ok.clone();
                c[i] = b;
                if let Ok(m) = Message::decode(&c) {
                    let _ = (
                        m.xor_peer_addresses(),
                        m.text(attr::USERNAME),
                        m.integrity_ok(b"k"),
                    );
                }
            }
        }
    }

    #[test]
    fn xor_addresses_reject_wrong_family_lengths() {
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::CHANNEL_BIND, Class::Request, &TXID)
            .attr(attr::XOR_PEER_ADDRESS, &[0, 1, 0, 0, 1, 2, 3]);
        let m = Message::decode(&buf).unwrap();
        assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), None);
        assert_eq!(m.xor_peer_addresses(), None);
    }

    #[test]
    fn attributes_after_integrity_are_not_read() {
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::REFRESH, Class::Request, &TXID)
            .integrity(b"k")
            .u32(attr::LIFETIME, 0);
        let m = Message::decode(&buf).unwrap();
        assert_eq!(m.u32_attr(attr::LIFETIME), None);
    }

    #[test]
    fn channel_data_frames_and_parses() {
        let mut buf = Vec::new();
        write_channel_data(&mut buf, 0x4001, b"rtp");
        assert_eq!(buf, [0x40, 0x01, 0, 3, b'r', b't', b'p']);
        assert_eq!(channel_data(&buf), Some((0x4001, &b"rtp"[..])));
        buf.push(0); // UDP padding is allowed
        assert_eq!(channel_data(&buf), Some((0x4001, &b"rtp"[..])));
        assert_eq!(channel_data(&buf[..5]), None, "length past the datagram");
        assert_eq!(channel_data(&[0x80, 0, 0, 0]), None, "not a channel number");
        assert!(!looks_like_stun(&buf) && looks_like_stun(&[0x00, 0x01]));
    }
}
