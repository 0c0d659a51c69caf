//! The media plane's address book and firewall: which UDP sockets of this process belong to
//! the SFU and which to the integrated TURN server's relays, and the in-process hand-off of
//! datagrams between them ("loopback fabric").
//!
//! Browsers are relay-only, so every forwarded packet used to cross the kernel three times on
//! the server (SFU socket `sendto` → relay socket `recvfrom` → `sendto` the client, and the
//! mirror image inbound). Both ends of the middle hop live in this process, so this module
//! keeps a registry `SocketAddr → (kind, bounded inbox)`: a send from a registered socket to a
//! registered address of the other kind is pushed into the destination's inbox instead of
//! making a syscall, and the receiver takes it from there. Sockets stay bound to their real UDP
//! ports, so their addresses are real.
//!
//! The same registry is the policy both sides enforce: an SFU socket talks to relay sockets
//! only, a relay socket to SFU sockets only. A send anywhere else is refused (dropped and
//! counted), so neither a client's ICE candidates nor a TURN client can make this server send
//! to the host or its network. With the hand-off off ([`Fabric::kernel_only`], for comparisons)
//! permitted datagrams go through the kernel, and the policy is the same.
//! Its users are the media workers' sockets (`crate::engine::webrtc::worker`, which hand their
//! own media to the TURN core without it and use it for what crosses workers) and the TURN
//! server's relay sockets (`crate::turn`).
//!
//! It owns: the registry, the inboxes and their counters. It must never: deliver to an address
//! no live socket of this process owns (an [`Endpoint`] unregisters when it is closed or
//! dropped, and only its own entries); let a socket reach one of its own kind or an
//! unregistered address; block or fail a sender (a full inbox drops the datagram and counts
//! it, as a full socket buffer would); claim a wildcard address (the kernel picks the source of
//! such a socket per route, which this could not reproduce) or a multicast or broadcast one;
//! hold a lock across an await or while waking a receiver.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

/// Datagrams an inbox holds before it drops. A default Linux receive buffer (212 KiB of
/// socket memory) holds ~90 full-size datagrams, so this absorbs bursts at least as well as
/// the kernel did, while a stalled reader's backlog stays under ~400 KiB.
pub const DEFAULT_INBOX_CAPACITY: usize = 256;

/// The registry. One per process is enough (addresses are unique per bound socket); it is
/// injected rather than global so tests can observe their own counters.
pub struct Fabric {
    routes: RwLock<HashMap<SocketAddr, Route>>,
    capacity: usize,
    /// False: permitted datagrams go through the kernel (the registry still decides).
    handoff: bool,
    delivered: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    endpoints: AtomicUsize,
}

/// Whose socket an endpoint is. Each kind may only send to the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One of the SFU's peer-connection sockets.
    Sfu,
    /// A TURN allocation's relay socket.
    Relay,
}

#[derive(Clone)]
struct Route {
    inbox: Arc<Inbox>,
    kind: Kind,
}

/// What became of a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Handed over in-process (or dropped because the inbox was full, as UDP would).
    Delivered,
    /// Permitted, but the hand-off is off: the caller sends through the kernel.
    Kernel,
    /// Not a socket of the other kind: the caller must drop it (counted).
    Refused,
}

/// Counters over a fabric's lifetime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FabricStats {
    /// Datagrams handed over in-process (each one a `sendto` + `recvfrom` pair saved).
    pub delivered: u64,
    /// Datagrams lost because the destination's inbox was full.
    pub dropped: u64,
    /// Sends refused by the policy (to an unregistered address or one of the sender's kind).
    pub refused: u64,
    /// Sockets currently registered (a leak gauge: back to its baseline once peers left).
    pub endpoints: usize,
}

/// One datagram in an inbox.
#[derive(Debug)]
pub struct Datagram {
    pub src: SocketAddr,
    pub data: Vec<u8>,
}

struct Inbox {
    queue: Mutex<VecDeque<Datagram>>,
    /// The one task reading this socket (webrtc's driver, a TURN allocation's relay loop).
    waker: AtomicWaker,
}

impl std::fmt::Debug for Fabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fabric")
            .field("capacity", &self.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Fabric {
    pub fn new(capacity: usize) -> Fabric {
        Fabric {
            routes: RwLock::new(HashMap::new()),
            capacity: capacity.max(1),
            handoff: true,
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            endpoints: AtomicUsize::new(0),
        }
    }

    /// The registry and its policy without the in-process hand-off (to measure what it saves).
    pub fn kernel_only() -> Fabric {
        Fabric {
            handoff: false,
            ..Fabric::new(1)
        }
    }

    pub fn stats(&self) -> FabricStats {
        FabricStats {
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            endpoints: self.endpoints.load(Ordering::Relaxed),
        }
    }

    /// The kind of socket registered at `addr`, if any.
    pub fn kind_of(&self, addr: SocketAddr) -> Option<Kind> {
        self.routes
            .read()
            .expect("fabric lock")
            .get(&addr)
            .map(|r| r.kind)
    }

    /// Registers the socket bound to `local`, also reachable as `public` (the address a 1:1
    /// NAT maps to it, which is what peers are told). Datagrams it sends through the fabric
    /// carry `public` (else `local`) as their source, as a hairpinning NAT would show them.
    /// `None` unless `local` is a unicast address (a wildcard or multicast socket always uses
    /// the kernel).
    ///
    /// An address already registered is taken over: the kernel has just given it to this
    /// socket, so the old entry can only belong to a socket on its way out.
    pub fn register(
        self: &Arc<Self>,
        local: SocketAddr,
        public: Option<SocketAddr>,
        kind: Kind,
    ) -> Option<Endpoint> {
        if !is_unicast(local) {
            return None;
        }
        let public = public.filter(|p| *p != local && is_unicast(*p));
        let inbox = Arc::new(Inbox {
            queue: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
        });
        let addrs: Vec<SocketAddr> = std::iter::once(local).chain(public).collect();
        {
            let mut routes = self.routes.write().expect("fabric lock");
            for a in &addrs {
                let route = Route {
                    inbox: Arc::clone(&inbox),
                    kind,
                };
                if routes.insert(*a, route).is_some() {
                    tracing::debug!(addr = %a, "fabric: address re-registered");
                }
            }
        }
        self.endpoints.fetch_add(1, Ordering::Relaxed);
        Some(Endpoint {
            fabric: Arc::clone(self),
            kind,
            source: public.unwrap_or(local),
            addrs,
            inbox,
            closed: AtomicBool::new(false),
        })
    }
}

fn is_unicast(addr: SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    !(ip.is_unspecified() || ip.is_multicast() || broadcast)
}

/// A socket's membership in the fabric: its inbox and its addresses. Closing or dropping it
/// unregisters them.
pub struct Endpoint {
    fabric: Arc<Fabric>,
    kind: Kind,
    addrs: Vec<SocketAddr>,
    source: SocketAddr,
    inbox: Arc<Inbox>,
    closed: AtomicBool,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("kind", &self.kind)
            .field("addrs", &self.addrs)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Hands `contents` to the socket registered at `dst`, split into `segment`-byte datagrams
    /// when given (a GSO send), if that socket is of the other kind. A full inbox drops (and
    /// counts) the rest of the datagrams; that still counts as sent, as UDP would.
    pub fn send(&self, contents: &[u8], segment: Option<usize>, dst: SocketAddr) -> Sent {
        let routes = self.fabric.routes.read().expect("fabric lock");
        let inbox = match routes.get(&dst) {
            Some(r) if r.kind != self.kind && !self.closed.load(Ordering::Relaxed) => &r.inbox,
            _ => {
                drop(routes);
                self.fabric.refused.fetch_add(1, Ordering::Relaxed);
                return Sent::Refused;
            }
        };
        if !self.fabric.handoff {
            return Sent::Kernel;
        }
        let seg = segment.filter(|s| *s > 0).unwrap_or(contents.len()).max(1);
        let (mut delivered, mut dropped) = (0u64, 0u64);
        {
            let mut queue = inbox.queue.lock().expect("inbox lock");
            // An empty datagram is still one datagram (`chunks` would yield none).
            let chunks = contents
                .chunks(seg)
                .chain(contents.is_empty().then_some(contents));
            for chunk in chunks {
                if queue.len() >= self.fabric.capacity {
                    dropped += 1;
                } else {
                    queue.push_back(Datagram {
                        src: self.source,
                        data: chunk.to_vec(),
                    });
                    delivered += 1;
                }
            }
        }
        if delivered > 0 {
            inbox.waker.wake();
            self.fabric
                .delivered
                .fetch_add(delivered, Ordering::Relaxed);
        }
        if dropped > 0 {
            self.fabric.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        Sent::Delivered
    }

    /// The next datagram handed to this socket, if any.
    pub fn try_recv(&self) -> Option<Datagram> {
        self.inbox.queue.lock().expect("inbox lock").pop_front()
    }

    /// Like [`Endpoint::try_recv`], registering `cx` to be woken by the next delivery when
    /// the inbox is empty. Only the last registered task is woken (one reader per socket).
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Datagram> {
        if let Some(d) = self.try_recv() {
            return Poll::Ready(d);
        }
        self.inbox.waker.register(cx.waker());
        // A delivery between the first look and the registration woke nobody.
        match self.try_recv() {
            Some(d) => Poll::Ready(d),
            None => Poll::Pending,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Unregisters this socket's addresses (those still pointing at it) and discards what its
    /// inbox holds; later sends from it are refused. Wakes the reader so it sees
    /// the close. Idempotent.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        {
            let mut routes = self.fabric.routes.write().expect("fabric lock");
            for a in &self.addrs {
                if routes
                    .get(a)
                    .is_some_and(|r| Arc::ptr_eq(&r.inbox, &self.inbox))
                {
                    routes.remove(a);
                }
            }
        }
        self.inbox.queue.lock().expect("inbox lock").clear();
        self.fabric.endpoints.fetch_sub(1, Ordering::Relaxed);
        self.inbox.waker.wake();
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.close();
    }
}

/// Which source a socket with a kernel socket and an inbox reads next: it alternates, so a
/// busy one never starves the other.
#[derive(Debug, Default)]
pub(crate) struct Alternate(AtomicBool);

impl Alternate {
    /// True when the inbox goes first this time.
    pub(crate) fn inbox_first(&self) -> bool {
        !self.0.fetch_xor(true, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker_ref;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn sfu(f: &Arc<Fabric>, a: &str) -> Endpoint {
        f.register(addr(a), None, Kind::Sfu).unwrap()
    }

    fn relay(f: &Arc<Fabric>, a: &str) -> Endpoint {
        f.register(addr(a), None, Kind::Relay).unwrap()
    }

    #[test]
    fn delivers_with_the_senders_address_as_source() {
        let f = Arc::new(Fabric::new(8));
        let a = sfu(&f, "127.0.0.1:1000");
        let b = relay(&f, "127.0.0.1:2000");
        assert_eq!(
            a.send(b"hello", None, addr("127.0.0.1:2000")),
            Sent::Delivered
        );
        let d = b.try_recv().unwrap();
        assert_eq!(
            (d.src, &d.data[..]),
            (addr("127.0.0.1:1000"), &b"hello"[..])
        );
        assert!(b.try_recv().is_none());
        assert_eq!(f.stats().delivered, 1);
    }

    #[test]
    fn each_kind_reaches_only_the_other() {
        let f = Arc::new(Fabric::new(8));
        let s1 = sfu(&f, "127.0.0.1:1000");
        let _s2 = sfu(&f, "127.0.0.1:1001");
        let r1 = relay(&f, "127.0.0.1:2000");
        let _r2 = relay(&f, "127.0.0.1:2001");
        assert_eq!(s1.send(b"x", None, addr("127.0.0.1:1001")), Sent::Refused);
        assert_eq!(r1.send(b"x", None, addr("127.0.0.1:2001")), Sent::Refused);
        // Anything outside the fabric: the host's services, the LAN, the metadata service.
        for outside in ["127.0.0.1:22", "10.0.0.1:53", "169.254.169.254:80"] {
            assert_eq!(s1.send(b"x", None, addr(outside)), Sent::Refused);
            assert_eq!(r1.send(b"x", None, addr(outside)), Sent::Refused);
        }
        assert_eq!(f.stats().refused, 8);
        assert_eq!(f.stats().delivered, 0);
        assert_eq!(f.kind_of(addr("127.0.0.1:1001")), Some(Kind::Sfu));
        assert_eq!(f.kind_of(addr("127.0.0.1:2001")), Some(Kind::Relay));
        assert_eq!(f.kind_of(addr("127.0.0.1:22")), None);
    }

    #[test]
    fn without_hand_off_permitted_sends_go_to_the_kernel() {
        let f = Arc::new(Fabric::kernel_only());
        let s = sfu(&f, "127.0.0.1:1000");
        let r = relay(&f, "127.0.0.1:2000");
        assert_eq!(s.send(b"x", None, addr("127.0.0.1:2000")), Sent::Kernel);
        assert_eq!(s.send(b"x", None, addr("127.0.0.1:22")), Sent::Refused);
        assert!(r.try_recv().is_none());
        assert_eq!((f.stats().delivered, f.stats().refused), (0, 1));
    }

    #[test]
    fn wildcard_or_group_sockets_are_not_registered() {
        let f = Arc::new(Fabric::new(8));
        let a = sfu(&f, "127.0.0.1:1000");
        assert!(f
            .register(addr("0.0.0.0:3000"), None, Kind::Relay)
            .is_none());
        assert_eq!(a.send(b"x", None, addr("0.0.0.0:3000")), Sent::Refused);
        // webrtc's mDNS socket: an mDNS query must reach the group, not one connection.
        assert!(f
            .register(addr("224.0.0.251:5353"), None, Kind::Sfu)
            .is_none());
        assert!(f.register(addr("[::]:5353"), None, Kind::Sfu).is_none());
        assert!(f
            .register(addr("255.255.255.255:9"), None, Kind::Sfu)
            .is_none());
        assert_eq!(f.stats().endpoints, 1);
        assert_eq!(f.stats().delivered, 0);
    }

    #[test]
    fn a_full_inbox_drops_and_counts() {
        let f = Arc::new(Fabric::new(2));
        let a = sfu(&f, "127.0.0.1:1000");
        let b = relay(&f, "127.0.0.1:2000");
        for _ in 0..3 {
            assert_eq!(
                a.send(b"x", None, addr("127.0.0.1:2000")),
                Sent::Delivered,
                "a drop is still a send"
            );
        }
        assert_eq!((f.stats().delivered, f.stats().dropped), (2, 1));
        assert!(b.try_recv().is_some() && b.try_recv().is_some() && b.try_recv().is_none());
    }

    #[test]
    fn gso_sends_are_split_into_datagrams() {
        let f = Arc::new(Fabric::new(8));
        let a = sfu(&f, "127.0.0.1:1000");
        let b = relay(&f, "127.0.0.1:2000");
        a.send(b"aabbc", Some(2), addr("127.0.0.1:2000"));
        a.send(b"", None, addr("127.0.0.1:2000"));
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| b.try_recv())
            .map(|d| d.data)
            .collect();
        assert_eq!(got, [&b"aa"[..], b"bb", b"c", b""]);
    }

    #[test]
    fn dropping_or_closing_unregisters_and_frees_the_inbox() {
        let f = Arc::new(Fabric::new(8));
        let a = sfu(&f, "127.0.0.1:1000");
        let b = f
            .register(
                addr("127.0.0.1:2000"),
                Some(addr("192.0.2.1:2000")),
                Kind::Relay,
            )
            .unwrap();
        assert_eq!(a.send(b"x", None, addr("127.0.0.1:2000")), Sent::Delivered);
        drop(b);
        assert_eq!(a.send(b"x", None, addr("127.0.0.1:2000")), Sent::Refused);
        assert_eq!(a.send(b"x", None, addr("192.0.2.1:2000")), Sent::Refused);
        assert_eq!(f.stats().endpoints, 1);
        a.close();
        assert!(a.is_closed() && f.routes.read().unwrap().is_empty());
        assert_eq!(f.stats().endpoints, 0);
        drop(a); // closing twice must not count twice
        assert_eq!(f.stats().endpoints, 0);
    }

    #[test]
    fn a_closed_endpoint_sends_nothing() {
        let f = Arc::new(Fabric::new(8));
        let a = sfu(&f, "127.0.0.1:1000");
        let b = relay(&f, "127.0.0.1:2000");
        a.close();
        assert_eq!(a.send(b"x", None, addr("127.0.0.1:2000")), Sent::Refused);
        assert!(b.try_recv().is_none());
    }

    #[test]
    fn a_reissued_port_is_taken_over_and_the_stale_owner_does_not_remove_it() {
        let f = Arc::new(Fabric::new(8));
        let a = sfu(&f, "127.0.0.1:1000");
        let old = relay(&f, "127.0.0.1:2000");
        let new = relay(&f, "127.0.0.1:2000");
        drop(old);
        assert_eq!(a.send(b"x", None, addr("127.0.0.1:2000")), Sent::Delivered);
        assert!(new.try_recv().is_some());
    }

    #[test]
    fn the_public_alias_routes_and_is_the_source_shown() {
        // A relay bound on 10.0.0.5 and told to clients as 192.0.2.1 (1:1 NAT): the SFU sends
        // to the public address without hairpinning, and sees the relay as it was advertised.
        let f = Arc::new(Fabric::new(8));
        let relay = f
            .register(
                addr("10.0.0.5:4000"),
                Some(addr("192.0.2.1:4000")),
                Kind::Relay,
            )
            .unwrap();
        let sfu = sfu(&f, "10.0.0.5:5000");
        assert_eq!(
            sfu.send(b"out", None, addr("192.0.2.1:4000")),
            Sent::Delivered
        );
        assert_eq!(relay.try_recv().unwrap().src, addr("10.0.0.5:5000"));
        assert_eq!(
            relay.send(b"in", None, addr("10.0.0.5:5000")),
            Sent::Delivered
        );
        assert_eq!(sfu.try_recv().unwrap().src, addr("192.0.2.1:4000"));
    }

    #[test]
    fn poll_recv_registers_and_is_woken_by_a_delivery() {
        let f = Arc::new(Fabric::new(8));
        let a = sfu(&f, "127.0.0.1:1000");
        let b = relay(&f, "127.0.0.1:2000");
        let woken = Arc::new(AtomicUsize::new(0));
        let waker = futures::task::waker(Arc::new(CountWake(Arc::clone(&woken))));
        let mut cx = Context::from_waker(&waker);
        assert!(b.poll_recv(&mut cx).is_pending());
        a.send(b"x", None, addr("127.0.0.1:2000"));
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        let mut noop = Context::from_waker(noop_waker_ref());
        assert!(b.poll_recv(&mut noop).is_ready());
    }

    struct CountWake(Arc<AtomicUsize>);

    impl futures::task::ArcWake for CountWake {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn alternate_flips() {
        let a = Alternate::default();
        assert_eq!(
            [a.inbox_first(), a.inbox_first(), a.inbox_first()],
            [true, false, true]
        );
    }
}
