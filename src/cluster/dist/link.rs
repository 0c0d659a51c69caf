//! The state machine of one dist link: this node and one peer node, over one byte stream.
//!
//! [`LinkCore`] owns everything the link decides: the handshake (a `Hello` each way, and the
//! refusal of a peer that is not the expected node and incarnation), liveness (ticks out,
//! silence in), the bound on bytes waiting to be written, FIFO delivery of messages, and both
//! monitor tables: monitors local processes hold on the peer's processes, and monitors the
//! peer's processes hold on local ones. Its promise, as Erlang's: every monitor set through
//! [`LinkCore::monitor`] yields exactly one [`Event::Down`] unless it is demonitored first, with
//! reason `Noconnection` if the link went down before the real one arrived.
//!
//! It must never do I/O: no clock reads (`now` is passed in), no sockets, no tasks, no process
//! table. What it cannot know (whether a local pid is alive, a room's current epoch, where a
//! message goes) it asks the driver through [`Event`]s and hears back through
//! [`LinkCore::local_exited`] and [`LinkCore::target_gone`].
//!
//! # Driving it
//!
//! After every call, write what [`LinkCore::poll_transmit`] returns until it returns `None`
//! (and call it only when the transport can take more: the byte bound covers what the core
//! holds, not what a driver buffers), and drain [`LinkCore::poll_event`] in order: the order
//! is the arrival order. Call [`LinkCore::handle_timeout`] when the instant from
//! [`LinkCore::poll_timeout`] is reached, and [`LinkCore::transport_closed`] on EOF or a
//! transport error. Once [`LinkCore::is_down`], close the transport and drop the core after
//! draining its last events; a new connection gets a new core.
//!
//! An accepting driver does not know who is calling until the first frame: it reads the peer's
//! `Hello` with a [`super::frame::Decoder`], looks the node up, then builds the core with that
//! expectation and hands it the bytes read so far.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::frame::{
    Decoder, DownReason, Frame, FrameError, RemoteRef, MAX_NODE_BYTES, MAX_PAYLOAD_BYTES,
};

/// A node as the link knows it. A restarted node is a new incarnation: its pids and monitors
/// are not the old ones', so a link to it is a new link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeId {
    /// At most [`MAX_NODE_BYTES`].
    pub name: String,
    pub incarnation: u64,
}

/// Timing and bounds of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// A `Tick` goes out when nothing was written for this long.
    pub tick: Duration,
    /// The link is down when nothing was received for this long. Must exceed `tick`, or a
    /// healthy idle peer would be declared dead between its ticks.
    pub silence: Duration,
    /// The most bytes the core holds unwritten; a frame that would exceed it takes the link
    /// down as overloaded. Should be several times [`super::frame::MAX_FRAME_BYTES`], or one
    /// large message alone overloads the link.
    pub max_queue_bytes: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            silence: Duration::from_secs(4),
            max_queue_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What the driver must act on, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message from the peer for the local process `to`. The driver checks `to.epoch` and
    /// drops a message for a stale epoch or a dead pid, as Erlang drops a send to a dead pid.
    Deliver { to: RemoteRef, msg: Vec<u8> },
    /// The target of the local monitor `mref` is gone (exactly once per monitor).
    Down { mref: u64, reason: DownReason },
    /// A process of the peer now monitors the local `target` (the first monitor on it since it
    /// was last cleared). The driver must check it: a dead pid is answered with
    /// [`LinkCore::local_exited`] (`Noproc`), a stale epoch with [`LinkCore::target_gone`]
    /// (`Noproc`); otherwise the driver watches the pid and reports its exit.
    Watch { target: RemoteRef },
}

/// Why a link went down.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DownCause {
    #[error("refused a peer announcing {node} incarnation {incarnation}")]
    Refused { node: String, incarnation: u64 },
    #[error("nothing received within the silence timeout")]
    Silence,
    /// The peer is not reading fast enough, or the local consumer of the link's events is not
    /// taking them (the driver's bound).
    #[error("overloaded: a bounded queue of the link is full")]
    Overloaded,
    #[error("malformed frame: {0}")]
    Malformed(FrameError),
    #[error("protocol violation: {0}")]
    Unexpected(&'static str),
    #[error("transport closed")]
    TransportClosed,
    /// Local code closed the link (shutdown, or a newer connection to the peer replaced it).
    #[error("closed locally")]
    Closed,
}

/// Why [`LinkCore::send`] did not queue a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum SendError {
    /// The link is down (possibly because this message overloaded it).
    #[error("link is down")]
    Down,
    /// Longer than [`MAX_PAYLOAD_BYTES`]; the link stays up.
    #[error("message exceeds the largest frame")]
    TooLarge,
}

/// [`LinkCore::monitor`] on a link that is down: no monitor was set and no `Down` will come
/// from this core, so the caller owes its watcher a `Noconnection` DOWN (as Erlang gives a
/// monitor on an unreachable node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("link is down")]
pub struct LinkDown;

/// One link's state. See the module docs for the driving contract.
#[derive(Debug)]
pub struct LinkCore {
    peer: NodeId,
    config: LinkConfig,
    decoder: Decoder,
    /// Our `Hello`, until the driver takes it.
    hello: Option<Vec<u8>>,
    /// The peer's `Hello` was received and matched. Until then nothing but our `Hello` is
    /// written: a peer that turns out to be the wrong incarnation must not get our messages.
    established: bool,
    /// Encoded frames not yet handed to the driver, bounded by `max_queue_bytes`.
    out: Vec<u8>,
    events: VecDeque<Event>,
    last_sent: Instant,
    last_recv: Instant,
    /// Monitors local processes hold on the peer's processes: local ref → target.
    watching: BTreeMap<u64, RemoteRef>,
    /// Monitors the peer's processes hold on local ones: the peer's ref → target.
    watched: BTreeMap<u64, RemoteRef>,
    /// `watched` by target, so an exit finds its monitors without a scan.
    watched_by_target: BTreeMap<RemoteRef, BTreeSet<u64>>,
    /// `Down` frames for a ref not (or no longer) in `watching`.
    dropped_downs: u64,
    down: Option<DownCause>,
}

impl LinkCore {
    /// The core of a link from `me` to the expected `peer`, whose transport opened at `now`.
    ///
    /// # Panics
    ///
    /// If a node name is longer than [`MAX_NODE_BYTES`], `tick` is zero or `silence` does not
    /// exceed `tick`: configuration bugs, never input.
    pub fn new(me: NodeId, peer: NodeId, config: LinkConfig, now: Instant) -> Self {
        assert!(me.name.len() <= MAX_NODE_BYTES && peer.name.len() <= MAX_NODE_BYTES);
        assert!(!config.tick.is_zero(), "tick must be positive");
        assert!(config.silence > config.tick, "silence must exceed tick");
        let hello = Frame::Hello {
            node: me.name,
            incarnation: me.incarnation,
        };
        Self {
            peer,
            config,
            decoder: Decoder::new(),
            hello: Some(hello.to_bytes()),
            established: false,
            out: Vec::new(),
            events: VecDeque::new(),
            last_sent: now,
            last_recv: now,
            watching: BTreeMap::new(),
            watched: BTreeMap::new(),
            watched_by_target: BTreeMap::new(),
            dropped_downs: 0,
            down: None,
        }
    }

    /// Bytes read from the transport.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if self.down.is_some() || bytes.is_empty() {
            return;
        }
        self.last_recv = now;
        self.decoder.push(bytes);
        while self.down.is_none() {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => self.handle_frame(frame),
                Ok(None) => return,
                Err(err) => self.go_down(DownCause::Malformed(err)),
            }
        }
    }

    /// Time passed: the link goes down after `silence` without input, and a `Tick` is queued
    /// after `tick` without output.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.down.is_some() {
            return;
        }
        if deadline(self.last_recv, self.config.silence).is_some_and(|d| now >= d) {
            self.go_down(DownCause::Silence);
            return;
        }
        if self.tick_deadline().is_some_and(|d| now >= d) {
            self.queue(&Frame::Tick);
        }
    }

    /// When [`Self::handle_timeout`] should next be called; `None` once down.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.down.is_some() {
            return None;
        }
        let silence = deadline(self.last_recv, self.config.silence);
        match (silence, self.tick_deadline()) {
            (Some(s), Some(t)) => Some(s.min(t)),
            (s, t) => s.or(t),
        }
    }

    /// Bytes to write, at `now`; `None` when there is nothing (or nothing yet: frames queued
    /// before the handshake completes wait for it).
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.down.is_some() {
            return None;
        }
        let bytes = match self.hello.take() {
            Some(hello) => hello,
            None if self.established && !self.out.is_empty() => std::mem::take(&mut self.out),
            None => return None,
        };
        self.last_sent = now;
        Some(bytes)
    }

    /// The next event for the driver.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queues a message for the peer's process `to`. Messages are delivered in the order they
    /// were queued, and none is lost while the link stays up.
    pub fn send(&mut self, to: RemoteRef, msg: Vec<u8>) -> Result<(), SendError> {
        if self.down.is_some() {
            return Err(SendError::Down);
        }
        if msg.len() > MAX_PAYLOAD_BYTES {
            return Err(SendError::TooLarge);
        }
        self.queue(&Frame::Send { to, msg });
        match self.down {
            Some(_) => Err(SendError::Down),
            None => Ok(()),
        }
    }

    /// A local process monitors the peer's process `target` under `mref`: exactly one
    /// [`Event::Down`] for `mref` follows unless [`Self::demonitor`] is called first.
    ///
    /// `mref` must never have been used on this link before (refs from the process table are
    /// never reused): a late `Down` for an old monitor would otherwise end the new one.
    ///
    /// # Panics
    ///
    /// If `mref` is a monitor still outstanding on this link: a driver bug.
    pub fn monitor(&mut self, mref: u64, target: RemoteRef) -> Result<(), LinkDown> {
        if self.down.is_some() {
            return Err(LinkDown);
        }
        let fresh = self.watching.insert(mref, target).is_none();
        assert!(fresh, "monitor ref {mref} is already outstanding");
        // If this frame overloads the link, the monitor is already in the table and gets its
        // Noconnection like every other.
        self.queue(&Frame::Monitor { mref, target });
        Ok(())
    }

    /// Cancels the local monitor `mref`. Afterwards no [`Event::Down`] for it is emitted, even
    /// one already queued. True if none had been taken by [`Self::poll_event`] (the monitor
    /// was still pending from the driver's view); false if its `Down` was already taken or
    /// `mref` is unknown.
    pub fn demonitor(&mut self, mref: u64) -> bool {
        if self.watching.remove(&mref).is_some() {
            // The peer may be sending its Down already; it will be dropped on arrival.
            self.queue(&Frame::Demonitor { mref });
            return true;
        }
        let queued = self.events.len();
        self.events
            .retain(|e| !matches!(e, Event::Down { mref: m, .. } if *m == mref));
        self.events.len() != queued
    }

    /// The local process `pid` exited: every monitor the peer holds on it, whatever the
    /// epoch, is answered with one `Down` frame and forgotten.
    pub fn local_exited(&mut self, pid: u64, reason: DownReason) {
        let every_epoch = RemoteRef { pid, epoch: 0 }..=RemoteRef {
            pid,
            epoch: u64::MAX,
        };
        let targets: Vec<RemoteRef> = self
            .watched_by_target
            .range(every_epoch)
            .map(|(target, _)| *target)
            .collect();
        for target in targets {
            self.target_gone(target, reason.clone());
        }
    }

    /// The local `target` (that pid at that epoch) is gone while the pid may live on, e.g. a
    /// monitor reached a room under a stale epoch: every monitor the peer holds on exactly
    /// `target` is answered with one `Down` frame and forgotten.
    pub fn target_gone(&mut self, target: RemoteRef, reason: DownReason) {
        if self.down.is_some() {
            return;
        }
        let Some(mrefs) = self.watched_by_target.remove(&target) else {
            return;
        };
        for mref in mrefs {
            self.watched.remove(&mref);
            self.queue(&Frame::Down {
                mref,
                reason: reason.clone(),
            });
            if self.down.is_some() {
                return;
            }
        }
    }

    /// The transport reached EOF or failed.
    pub fn transport_closed(&mut self) {
        self.go_down(DownCause::TransportClosed);
    }

    /// The driver takes the link down for a reason the core cannot see: its event consumer
    /// lags past the driver's bound (`Overloaded`, the same policy as the core's own output
    /// bound) or local code closes the link (`Closed`). Monitors end as on any other cause.
    pub fn close(&mut self, cause: DownCause) {
        self.go_down(cause);
    }

    /// The peer's `Hello` was received and matched, and the link is not down.
    pub fn is_established(&self) -> bool {
        self.established && self.down.is_none()
    }

    /// Whether the link is down: it accepts nothing and emits nothing more (besides events
    /// queued before, the last of them its `Noconnection` DOWNs).
    pub fn is_down(&self) -> bool {
        self.down.is_some()
    }

    /// Why the link is down.
    pub fn down_cause(&self) -> Option<&DownCause> {
        self.down.as_ref()
    }

    /// `Down` frames received for a ref with no outstanding monitor (demonitored while the
    /// `Down` was in flight, or a peer bug). Counted so a leak of them is visible.
    pub fn dropped_downs(&self) -> u64 {
        self.dropped_downs
    }

    /// The node this link expects on the other end.
    pub fn peer(&self) -> &NodeId {
        &self.peer
    }

    fn handle_frame(&mut self, frame: Frame) {
        if !self.established {
            match frame {
                Frame::Hello { node, incarnation }
                    if node == self.peer.name && incarnation == self.peer.incarnation =>
                {
                    self.established = true;
                }
                Frame::Hello { node, incarnation } => {
                    self.go_down(DownCause::Refused { node, incarnation });
                }
                _ => self.go_down(DownCause::Unexpected("frame before Hello")),
            }
            return;
        }
        match frame {
            Frame::Hello { .. } => self.go_down(DownCause::Unexpected("second Hello")),
            Frame::Tick => {}
            Frame::Send { to, msg } => self.events.push_back(Event::Deliver { to, msg }),
            Frame::Monitor { mref, target } => {
                if self.watched.insert(mref, target).is_some() {
                    // The peer's refs are never reused, so its process table is corrupt or it
                    // is not speaking this protocol.
                    self.go_down(DownCause::Unexpected("Monitor reuses an outstanding ref"));
                    return;
                }
                let mrefs = self.watched_by_target.entry(target).or_default();
                if mrefs.is_empty() {
                    self.events.push_back(Event::Watch { target });
                }
                mrefs.insert(mref);
            }
            Frame::Demonitor { mref } => {
                // Unknown is normal: the target's Down crossed the Demonitor on the wire.
                if let Some(target) = self.watched.remove(&mref) {
                    if let Some(mrefs) = self.watched_by_target.get_mut(&target) {
                        mrefs.remove(&mref);
                        if mrefs.is_empty() {
                            self.watched_by_target.remove(&target);
                        }
                    }
                }
            }
            Frame::Down { mref, reason } => {
                if self.watching.remove(&mref).is_some() {
                    self.events.push_back(Event::Down { mref, reason });
                } else {
                    self.dropped_downs += 1;
                }
            }
        }
    }

    /// Encodes `frame` for the peer, or takes the link down if that would exceed the bound.
    ///
    /// Overload policy: Erlang blocks a sender on a busy dist port, but a process here cannot
    /// be blocked forever by a peer that stopped reading, and dropping this one message would
    /// break FIFO silently (a later message would arrive without it). So the link goes down:
    /// every monitor across it reports `Noconnection`, which a watcher must handle anyway,
    /// and the next connection starts clean.
    fn queue(&mut self, frame: &Frame) {
        if self.down.is_some() {
            return;
        }
        frame.encode(&mut self.out);
        if self.out.len() > self.config.max_queue_bytes {
            self.go_down(DownCause::Overloaded);
        }
    }

    /// Nothing is waiting to be written, so the peer hears from us only if we tick.
    fn idle(&self) -> bool {
        self.established && self.hello.is_none() && self.out.is_empty()
    }

    fn tick_deadline(&self) -> Option<Instant> {
        if self.idle() {
            deadline(self.last_sent, self.config.tick)
        } else {
            None
        }
    }

    fn go_down(&mut self, cause: DownCause) {
        if self.down.is_some() {
            return;
        }
        self.down = Some(cause);
        self.hello = None;
        self.out = Vec::new();
        self.decoder = Decoder::new();
        // A Watch not yet taken would only make the driver check a target nobody can
        // monitor any more.
        self.events.retain(|e| !matches!(e, Event::Watch { .. }));
        for mref in std::mem::take(&mut self.watching).into_keys() {
            self.events.push_back(Event::Down {
                mref,
                reason: DownReason::Noconnection,
            });
        }
        self.watched.clear();
        self.watched_by_target.clear();
    }
}

/// `at + after`, or `None` past the end of time (a deadline that never comes).
fn deadline(at: Instant, after: Duration) -> Option<Instant> {
    at.checked_add(after)
}

#[cfg(test)]
impl LinkCore {
    /// Internal consistency, checked after every step of the property tests.
    pub(crate) fn check_invariants(&self) {
        let by_target: usize = self.watched_by_target.values().map(BTreeSet::len).sum();
        assert_eq!(by_target, self.watched.len());
        for (target, mrefs) in &self.watched_by_target {
            assert!(!mrefs.is_empty());
            for mref in mrefs {
                assert_eq!(self.watched.get(mref), Some(target));
            }
        }
        if self.down.is_some() {
            assert!(self.watching.is_empty() && self.watched.is_empty());
            assert!(self.out.is_empty() && self.hello.is_none());
        } else {
            assert!(self.out.len() <= self.config.max_queue_bytes);
        }
        if !self.established {
            assert!(self.watched.is_empty());
        }
    }

    pub(crate) fn queued_bytes(&self) -> usize {
        self.out.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::dist::frame::MAX_FRAME_BYTES;

    fn node(name: &str, incarnation: u64) -> NodeId {
        NodeId {
            name: name.into(),
            incarnation,
        }
    }

    fn target(pid: u64) -> RemoteRef {
        RemoteRef { pid, epoch: 5 }
    }

    /// Two cores back to back over a perfect transport, on a manual clock.
    struct Pair {
        t0: Instant,
        now: Instant,
        a: LinkCore,
        b: LinkCore,
    }

    impl Pair {
        fn new() -> Self {
            Self::with(LinkConfig::default())
        }

        fn with(config: LinkConfig) -> Self {
            let t0 = Instant::now();
            let a = LinkCore::new(node("a", 1), node("b", 2), config.clone(), t0);
            let b = LinkCore::new(node("b", 2), node("a", 1), config, t0);
            Self { t0, now: t0, a, b }
        }

        fn connected() -> Self {
            let mut p = Self::new();
            p.pump();
            assert!(p.a.is_established() && p.b.is_established());
            p
        }

        /// Moves bytes both ways until neither side has anything to write.
        fn pump(&mut self) {
            loop {
                let mut moved = false;
                while let Some(bytes) = self.a.poll_transmit(self.now) {
                    self.b.handle_bytes(self.now, &bytes);
                    moved = true;
                }
                while let Some(bytes) = self.b.poll_transmit(self.now) {
                    self.a.handle_bytes(self.now, &bytes);
                    moved = true;
                }
                if !moved {
                    return;
                }
            }
        }

        /// What A writes now, delivered to B, as frames.
        fn a_to_b(&mut self) -> Vec<Frame> {
            let bytes: Vec<u8> = std::iter::from_fn(|| self.a.poll_transmit(self.now))
                .flatten()
                .collect();
            self.b.handle_bytes(self.now, &bytes);
            frames(&bytes)
        }

        /// What B writes now, delivered to A, as frames.
        fn b_to_a(&mut self) -> Vec<Frame> {
            let bytes: Vec<u8> = std::iter::from_fn(|| self.b.poll_transmit(self.now))
                .flatten()
                .collect();
            self.a.handle_bytes(self.now, &bytes);
            frames(&bytes)
        }

        fn at(&mut self, ms: u64) {
            self.now = self.t0 + Duration::from_millis(ms);
        }
    }

    fn events(core: &mut LinkCore) -> Vec<Event> {
        std::iter::from_fn(|| core.poll_event()).collect()
    }

    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut d = Decoder::new();
        d.push(bytes);
        std::iter::from_fn(|| d.next_frame().unwrap()).collect()
    }

    fn transmitted(core: &mut LinkCore, now: Instant) -> Vec<Frame> {
        let bytes: Vec<u8> = std::iter::from_fn(|| core.poll_transmit(now))
            .flatten()
            .collect();
        frames(&bytes)
    }

    fn down(mref: u64, reason: DownReason) -> Event {
        Event::Down { mref, reason }
    }

    #[test]
    fn handshake_sends_hello_first_and_holds_everything_else_until_the_peer_hello() {
        let mut p = Pair::new();
        p.a.send(target(1), b"early".to_vec()).unwrap();
        p.a.monitor(10, target(1)).unwrap();
        assert_eq!(
            transmitted(&mut p.a, p.now),
            vec![Frame::Hello {
                node: "a".into(),
                incarnation: 1
            }]
        );
        assert!(!p.a.is_established());
        // B's Hello arrives: A's held frames go out, in order.
        let hello_b = p.b.poll_transmit(p.now).unwrap();
        p.a.handle_bytes(p.now, &hello_b);
        assert!(p.a.is_established());
        assert_eq!(
            transmitted(&mut p.a, p.now),
            vec![
                Frame::Send {
                    to: target(1),
                    msg: b"early".to_vec()
                },
                Frame::Monitor {
                    mref: 10,
                    target: target(1)
                },
            ]
        );
    }

    #[test]
    fn a_wrong_incarnation_or_node_is_refused() {
        for (name, incarnation) in [("b", 3), ("c", 2)] {
            let t0 = Instant::now();
            let mut a = LinkCore::new(node("a", 1), node("b", 2), LinkConfig::default(), t0);
            let mut impostor = LinkCore::new(
                node(name, incarnation),
                node("a", 1),
                LinkConfig::default(),
                t0,
            );
            a.monitor(1, target(9)).unwrap();
            a.send(target(9), b"never".to_vec()).unwrap();
            let _ = a.poll_transmit(t0);
            let hello = impostor.poll_transmit(t0).unwrap();
            a.handle_bytes(t0, &hello);
            assert_eq!(
                a.down_cause(),
                Some(&DownCause::Refused {
                    node: name.into(),
                    incarnation
                })
            );
            assert_eq!(events(&mut a), vec![down(1, DownReason::Noconnection)]);
            // Nothing held for the expected peer reaches the impostor.
            assert_eq!(a.poll_transmit(t0), None);
            assert_eq!(a.poll_timeout(), None);
        }
    }

    #[test]
    fn frames_out_of_place_are_protocol_errors() {
        let t0 = Instant::now();
        let mut a = LinkCore::new(node("a", 1), node("b", 2), LinkConfig::default(), t0);
        a.handle_bytes(t0, &Frame::Tick.to_bytes());
        assert_eq!(
            a.down_cause(),
            Some(&DownCause::Unexpected("frame before Hello"))
        );

        let mut p = Pair::connected();
        let hello = Frame::Hello {
            node: "b".into(),
            incarnation: 2,
        };
        p.a.handle_bytes(p.now, &hello.to_bytes());
        assert_eq!(
            p.a.down_cause(),
            Some(&DownCause::Unexpected("second Hello"))
        );

        let mut p = Pair::connected();
        let monitor = Frame::Monitor {
            mref: 1,
            target: target(1),
        };
        p.a.handle_bytes(p.now, &[monitor.to_bytes(), monitor.to_bytes()].concat());
        assert_eq!(
            p.a.down_cause(),
            Some(&DownCause::Unexpected("Monitor reuses an outstanding ref"))
        );

        let mut p = Pair::connected();
        p.a.handle_bytes(p.now, &[0, 0, 0, 1, 0]);
        assert_eq!(
            p.a.down_cause(),
            Some(&DownCause::Malformed(FrameError::UnknownTag(0)))
        );
    }

    #[test]
    fn an_idle_link_ticks_every_tick() {
        let mut p = Pair::connected();
        for second in 1..=5 {
            let due = p.t0 + Duration::from_secs(second);
            assert_eq!(p.a.poll_timeout(), Some(due));
            p.now = due - Duration::from_millis(1);
            p.a.handle_timeout(p.now);
            assert_eq!(p.a.poll_transmit(p.now), None, "no tick before it is due");
            p.now = due;
            p.a.handle_timeout(p.now);
            assert_eq!(p.a_to_b(), vec![Frame::Tick]);
            // B's ticks keep A's silence timer from firing.
            p.b.handle_timeout(p.now);
            p.pump();
        }
        assert!(p.a.is_established() && p.b.is_established());
    }

    #[test]
    fn a_busy_link_does_not_tick() {
        let mut p = Pair::connected();
        for ms in (500..=5_000).step_by(500) {
            p.at(ms);
            p.a.handle_timeout(p.now);
            p.b.handle_timeout(p.now);
            p.a.send(target(1), vec![1]).unwrap();
            p.b.send(target(1), vec![2]).unwrap();
            let send = |byte| Frame::Send {
                to: target(1),
                msg: vec![byte],
            };
            assert_eq!(p.a_to_b(), vec![send(1)]);
            assert_eq!(p.b_to_a(), vec![send(2)]);
            let _ = events(&mut p.a);
            let _ = events(&mut p.b);
        }
        assert!(p.a.is_established() && p.b.is_established());
    }

    #[test]
    fn a_silent_peer_takes_the_link_down_and_ends_every_monitor() {
        let mut p = Pair::connected();
        p.a.monitor(1, target(1)).unwrap();
        p.a.monitor(2, target(2)).unwrap();
        p.pump();
        // B says nothing from here on; A keeps ticking, into the void.
        for ms in (1_000..4_000).step_by(1_000) {
            p.at(ms);
            p.a.handle_timeout(p.now);
            let _ = p.a.poll_transmit(p.now);
        }
        assert_eq!(p.a.poll_timeout(), Some(p.t0 + Duration::from_secs(4)));
        p.at(4_000);
        p.a.handle_timeout(p.now);
        assert_eq!(p.a.down_cause(), Some(&DownCause::Silence));
        assert_eq!(
            events(&mut p.a),
            vec![
                down(1, DownReason::Noconnection),
                down(2, DownReason::Noconnection)
            ]
        );
        assert_eq!(p.a.poll_timeout(), None);
        assert_eq!(p.a.send(target(1), vec![]), Err(SendError::Down));
        assert_eq!(p.a.monitor(3, target(1)), Err(LinkDown));
        p.a.handle_bytes(p.now, &Frame::Tick.to_bytes());
        assert_eq!(p.a.poll_event(), None);
    }

    #[test]
    fn an_unread_queue_past_its_bound_takes_the_link_down() {
        let mut p = Pair::with(LinkConfig {
            max_queue_bytes: 100,
            ..LinkConfig::default()
        });
        p.pump();
        p.a.monitor(7, target(1)).unwrap();
        // The driver cannot write (the peer stopped reading): nothing is taken from A.
        let mut accepted = 0;
        let result = loop {
            match p.a.send(target(1), vec![0; 20]) {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            assert!(p.a.queued_bytes() <= 100);
        };
        assert_eq!(result, SendError::Down);
        assert_eq!(
            accepted, 1,
            "a 29-byte Monitor and one 41-byte Send fit in 100"
        );
        assert_eq!(p.a.down_cause(), Some(&DownCause::Overloaded));
        assert_eq!(events(&mut p.a), vec![down(7, DownReason::Noconnection)]);
        assert_eq!(p.a.poll_transmit(p.now), None);
    }

    #[test]
    fn a_message_larger_than_a_frame_is_refused_and_the_link_stays_up() {
        let mut p = Pair::connected();
        let huge = vec![0; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(p.a.send(target(1), huge), Err(SendError::TooLarge));
        assert!(p.a.is_established());
        let largest = vec![0; MAX_PAYLOAD_BYTES];
        p.a.send(target(1), largest).unwrap();
        assert_eq!(p.a.queued_bytes(), 4 + MAX_FRAME_BYTES);
        p.pump();
        assert_eq!(events(&mut p.b).len(), 1);
    }

    #[test]
    fn messages_are_delivered_in_order() {
        let mut p = Pair::connected();
        for i in 0u8..50 {
            p.a.send(target(u64::from(i % 3)), vec![i]).unwrap();
            if i % 7 == 0 {
                p.pump();
            }
        }
        p.pump();
        let got: Vec<u8> = events(&mut p.b)
            .into_iter()
            .map(|e| match e {
                Event::Deliver { msg, .. } => msg[0],
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(got, (0..50).collect::<Vec<u8>>());
    }

    /// Sets monitor 1 from A on B's pid 1 and lets B's driver accept it.
    fn monitored() -> Pair {
        let mut p = Pair::connected();
        p.a.monitor(1, target(1)).unwrap();
        p.pump();
        assert_eq!(events(&mut p.b), vec![Event::Watch { target: target(1) }]);
        p
    }

    #[test]
    fn down_then_demonitor_gives_one_down() {
        let mut p = monitored();
        p.b.local_exited(1, DownReason::Shutdown);
        p.pump();
        assert_eq!(events(&mut p.a), vec![down(1, DownReason::Shutdown)]);
        assert!(!p.a.demonitor(1));
        p.a.transport_closed();
        assert_eq!(events(&mut p.a), vec![]);
    }

    #[test]
    fn demonitor_then_down_gives_none_and_counts_the_drop() {
        let mut p = monitored();
        assert!(p.a.demonitor(1));
        // B's exit crosses the Demonitor on the wire.
        p.b.local_exited(1, DownReason::Normal);
        p.pump();
        assert_eq!(events(&mut p.a), vec![]);
        assert_eq!(p.a.dropped_downs(), 1);
        p.a.transport_closed();
        assert_eq!(events(&mut p.a), vec![]);
    }

    #[test]
    fn demonitor_before_the_exit_reaches_the_peer_clears_its_side() {
        let mut p = monitored();
        assert!(p.a.demonitor(1));
        p.pump();
        p.b.local_exited(1, DownReason::Normal);
        assert_eq!(
            p.b.poll_transmit(p.now),
            None,
            "no Down for a cleared monitor"
        );
        assert_eq!(p.a.dropped_downs(), 0);
    }

    #[test]
    fn down_then_link_down_gives_the_real_down_only() {
        let mut p = monitored();
        p.b.local_exited(1, DownReason::crashed("boom"));
        p.pump();
        p.a.transport_closed();
        assert_eq!(
            events(&mut p.a),
            vec![down(1, DownReason::Crashed("boom".into()))]
        );
    }

    #[test]
    fn link_down_then_down_gives_noconnection_only() {
        let mut p = monitored();
        p.b.local_exited(1, DownReason::Normal);
        let in_flight = p.b.poll_transmit(p.now).unwrap();
        p.a.transport_closed();
        p.a.handle_bytes(p.now, &in_flight);
        assert_eq!(events(&mut p.a), vec![down(1, DownReason::Noconnection)]);
        assert!(!p.a.demonitor(1));
    }

    #[test]
    fn demonitor_then_link_down_gives_none() {
        let mut p = monitored();
        assert!(p.a.demonitor(1));
        p.a.transport_closed();
        assert_eq!(events(&mut p.a), vec![]);
    }

    #[test]
    fn demonitor_withdraws_a_down_not_yet_taken() {
        let mut p = monitored();
        p.a.transport_closed();
        assert!(p.a.demonitor(1), "its Noconnection was still queued");
        assert_eq!(events(&mut p.a), vec![]);

        let mut p = monitored();
        p.b.local_exited(1, DownReason::Normal);
        p.pump();
        assert!(p.a.demonitor(1));
        assert_eq!(events(&mut p.a), vec![]);
        assert!(!p.a.demonitor(1), "unknown by now");
    }

    #[test]
    fn a_local_exit_answers_each_remote_monitor_once() {
        let mut p = Pair::connected();
        let stale = RemoteRef { pid: 1, epoch: 4 };
        p.a.monitor(1, target(1)).unwrap();
        p.a.monitor(2, target(1)).unwrap();
        p.a.monitor(3, stale).unwrap();
        p.a.monitor(4, target(2)).unwrap();
        p.pump();
        // One Watch per distinct target.
        assert_eq!(
            events(&mut p.b),
            vec![
                Event::Watch { target: target(1) },
                Event::Watch { target: stale },
                Event::Watch { target: target(2) },
            ]
        );
        p.b.target_gone(stale, DownReason::Noproc);
        p.b.local_exited(1, DownReason::Normal);
        p.b.local_exited(1, DownReason::Shutdown);
        p.b.target_gone(stale, DownReason::Normal);
        assert_eq!(
            p.b_to_a(),
            vec![
                Frame::Down {
                    mref: 3,
                    reason: DownReason::Noproc
                },
                Frame::Down {
                    mref: 1,
                    reason: DownReason::Normal
                },
                Frame::Down {
                    mref: 2,
                    reason: DownReason::Normal
                },
            ]
        );
        // A new monitor on the dead pid is a new Watch, for the driver to answer Noproc.
        p.a.monitor(5, target(1)).unwrap();
        p.pump();
        assert_eq!(events(&mut p.b), vec![Event::Watch { target: target(1) }]);
        p.b.local_exited(1, DownReason::Noproc);
        p.pump();
        assert_eq!(
            events(&mut p.a),
            vec![
                down(3, DownReason::Noproc),
                down(1, DownReason::Normal),
                down(2, DownReason::Normal),
                down(5, DownReason::Noproc),
            ]
        );
        p.a.transport_closed();
        assert_eq!(events(&mut p.a), vec![down(4, DownReason::Noconnection)]);
    }

    #[test]
    fn a_local_exit_ends_the_monitors_of_every_epoch() {
        let mut p = Pair::connected();
        let untagged = RemoteRef { pid: 1, epoch: 0 };
        p.a.monitor(1, untagged).unwrap();
        p.a.monitor(2, target(1)).unwrap();
        p.a.monitor(3, target(2)).unwrap();
        p.pump();
        assert_eq!(events(&mut p.b).len(), 3, "three targets, three Watches");
        p.b.local_exited(1, DownReason::Shutdown);
        p.pump();
        assert_eq!(
            events(&mut p.a),
            vec![down(1, DownReason::Shutdown), down(2, DownReason::Shutdown)]
        );
    }

    #[test]
    fn a_down_link_forgets_remote_monitors_and_pending_watches() {
        let mut p = Pair::connected();
        p.a.monitor(1, target(1)).unwrap();
        p.pump();
        p.b.transport_closed();
        assert_eq!(events(&mut p.b), vec![]);
        p.b.local_exited(1, DownReason::Normal);
        assert_eq!(p.b.poll_transmit(p.now), None);
    }

    #[test]
    fn a_tick_waits_for_the_handshake() {
        let t0 = Instant::now();
        let mut a = LinkCore::new(node("a", 1), node("b", 2), LinkConfig::default(), t0);
        let _ = a.poll_transmit(t0);
        // Only the silence deadline: there is nobody to tick to yet.
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(4)));
        a.handle_timeout(t0 + Duration::from_secs(4));
        assert_eq!(a.down_cause(), Some(&DownCause::Silence));
    }
}
