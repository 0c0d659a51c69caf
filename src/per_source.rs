//! Counting what one client source address holds: connections, WebSockets, joined channels
//! (each a [`PerSource`] of its own), and what the TURN server counts its quota by.
//!
//! Owns the counts per source and the guard that gives a slot back when what it counts ends
//! (however it ends: the guard lives as long as the connection, socket or channel). An IPv4
//! source is one address (IPv4-mapped IPv6 included); an IPv6 source is its /64, the block one
//! subscriber usually gets, so a client cannot step around a limit by cycling addresses inside
//! its own prefix.
//!
//! Never trusts a forwarded-for header: behind a reverse proxy every client has the proxy's
//! address, and the limit must be raised to suit (README).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// The limiter; clones share the counts.
#[derive(Clone, Debug)]
pub struct PerSource {
    limit: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One client's view of a [`PerSource`]: slots for its own address.
#[derive(Clone, Debug)]
pub struct ForSource {
    per_source: PerSource,
    ip: IpAddr,
}

impl ForSource {
    pub fn new(per_source: PerSource, ip: IpAddr) -> ForSource {
        ForSource { per_source, ip }
    }

    pub fn try_acquire(&self) -> Option<SourceSlot> {
        self.per_source.try_acquire(self.ip)
    }

    pub fn limit(&self) -> usize {
        self.per_source.limit()
    }
}

/// One open WebSocket's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct SourceSlot {
    owner: PerSource,
    key: IpAddr,
}

impl PerSource {
    pub fn new(limit: usize) -> Self {
        PerSource {
            limit,
            counts: Arc::default(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for one more WebSocket from `ip`, or `None` if its source is at the limit.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<SourceSlot> {
        let key = source_of(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= self.limit {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            owner: self.clone(),
            key,
        })
    }

    /// Open WebSockets counted for `ip`'s source.
    pub fn count(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&source_of(ip)).copied().unwrap_or(0)
    }

    /// Sources with at least one open WebSocket (the map never keeps empty entries).
    pub fn sources(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The key a source is counted under: the IPv4 address (IPv4-mapped IPv6 included), or the
/// IPv6 /64.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_at_most_limit_slots_and_gets_them_back() {
        let p = PerSource::new(2);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let a = p.try_acquire(ip).expect("first");
        let b = p.try_acquire(ip).expect("second");
        assert!(p.try_acquire(ip).is_none(), "third is over the limit");
        assert!(
            p.try_acquire("192.0.2.8".parse().unwrap()).is_some(),
            "another source is counted apart"
        );
        drop(a);
        let c = p.try_acquire(ip).expect("a closed socket frees its slot");
        drop((b, c));
        assert_eq!(p.count(ip), 0);
        assert_eq!(
            p.sources(),
            0,
            "no entry is kept for a source with nothing open"
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let p = PerSource::new(1);
        let _a = p.try_acquire("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(p
            .try_acquire("2001:db8:1:2:ffff::9".parse().unwrap())
            .is_none());
        assert!(p.try_acquire("2001:db8:1:3::1".parse().unwrap()).is_some());
        let _v4 = p.try_acquire("192.0.2.7".parse().unwrap()).unwrap();
        assert!(p.try_acquire("::ffff:192.0.2.7".parse().unwrap()).is_none());
    }

    #[test]
    fn a_zero_limit_refuses_everything_and_keeps_no_entry() {
        let p = PerSource::new(0);
        assert!(p.try_acquire("192.0.2.7".parse().unwrap()).is_none());
        assert_eq!(p.sources(), 0);
    }
}
