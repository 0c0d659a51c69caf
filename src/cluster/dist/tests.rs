//! Two link cores back to back, driven through random interleavings of sends, monitors,
//! demonitors, local exits, byte splits, time, bad frames and a cut, checked against what the
//! link promises: exactly one DOWN per monitor (`Noconnection` only once the link is down),
//! FIFO delivery with nothing lost while the link is up, and nothing at all after down.
//!
//! The harness plays both drivers: it answers `Watch` as a driver must (a dead pid gets
//! `Noproc` through `local_exited`, a stale epoch through `target_gone`) and closes the
//! transport the way TCP would (after the peer's bytes in flight, or at once on a cut).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

const PIDS: u64 = 3;
/// Every local pid's current epoch; monitors on another one, except 0 (none), are stale.
const EPOCH: u64 = 7;
const STALE_EPOCH: u64 = 6;
/// A frame with tag 0: what a peer speaking something else might send.
const BAD_FRAME: [u8; 5] = [0, 0, 0, 1, 0];

#[derive(Clone, Debug)]
enum Op {
    Send {
        side: usize,
        pid: u64,
        filler: usize,
    },
    Monitor {
        side: usize,
        pid: u64,
        epoch: u64,
    },
    Demonitor {
        side: usize,
        pick: Index,
    },
    Exit {
        side: usize,
        pid: u64,
        reason: DownReason,
    },
    /// Up to `bytes` of what `side` wrote reach the other side.
    Transfer {
        side: usize,
        bytes: usize,
    },
    Advance(u64),
    /// The connection breaks: bytes in flight are lost, neither side knows yet.
    Cut,
    /// `side`'s driver learns the transport is gone (once it is).
    Notice(usize),
    /// A bad frame is on its way to `side`.
    Garbage(usize),
}

#[derive(Debug)]
struct Mon {
    target: RemoteRef,
    demonitored: bool,
    downs: Vec<DownReason>,
}

struct Side {
    core: LinkCore,
    next_mref: u64,
    mons: BTreeMap<u64, Mon>,
    /// Local pids that exited, with the reason reported.
    dead: BTreeMap<u64, DownReason>,
    /// Messages `send` accepted; the payload carries this sequence number.
    sent: u64,
    /// Messages delivered from the other side.
    received: u64,
    /// The core was seen down after a drain: it must emit nothing more.
    seen_down: bool,
}

struct World {
    now: Instant,
    sides: [Side; 2],
    /// `wire[x]`: bytes `x` wrote that the other side has not read.
    wire: [VecDeque<u8>; 2],
    cut: bool,
}

impl World {
    fn new(config: LinkConfig, peer_incarnation: u64) -> Self {
        let now = Instant::now();
        let a = NodeId {
            name: "a".into(),
            incarnation: 1,
        };
        let b = NodeId {
            name: "b".into(),
            incarnation: 2,
        };
        let expected_b = NodeId {
            incarnation: peer_incarnation,
            ..b.clone()
        };
        let side = |core| Side {
            core,
            next_mref: 1,
            mons: BTreeMap::new(),
            dead: BTreeMap::new(),
            sent: 0,
            received: 0,
            seen_down: false,
        };
        Self {
            now,
            sides: [
                side(LinkCore::new(a.clone(), expected_b, config.clone(), now)),
                side(LinkCore::new(b, a, config, now)),
            ],
            wire: [VecDeque::new(), VecDeque::new()],
            cut: false,
        }
    }

    /// Takes everything `x` has to write and every event it has, acting as its driver.
    fn drain(&mut self, x: usize) -> Result<(), TestCaseError> {
        let now = self.now;
        let was_down = self.sides[x].seen_down;
        let mut emitted = 0;
        loop {
            while let Some(bytes) = self.sides[x].core.poll_transmit(now) {
                prop_assert!(!was_down, "bytes written after down");
                if !self.cut {
                    self.wire[x].extend(bytes);
                }
            }
            let s = &mut self.sides[x];
            let Some(event) = s.core.poll_event() else {
                break;
            };
            emitted += 1;
            match event {
                Event::Deliver { to, msg } => {
                    let seq = u64::from_be_bytes(msg[..8].try_into().unwrap());
                    prop_assert_eq!(seq, s.received, "out of order or lost");
                    prop_assert_eq!(to.pid, u64::from(msg[8]));
                    s.received += 1;
                }
                Event::Down { mref, reason } => {
                    let is_down = s.core.is_down();
                    let m = s
                        .mons
                        .get_mut(&mref)
                        .expect("a Down for a monitor never set");
                    prop_assert!(!m.demonitored, "a Down after demonitor");
                    prop_assert!(m.downs.is_empty(), "a second Down for {}", mref);
                    if reason == DownReason::Noconnection {
                        prop_assert!(is_down, "Noconnection on a link that is up");
                    }
                    m.downs.push(reason);
                }
                Event::Watch { target } => {
                    prop_assert!(!s.core.is_down());
                    if s.dead.contains_key(&target.pid) {
                        s.core.local_exited(target.pid, DownReason::Noproc);
                    } else if is_stale(target.epoch) {
                        s.core.target_gone(target, DownReason::Noproc);
                    }
                }
            }
        }
        prop_assert!(!(was_down && emitted > 0), "events after down");
        self.sides[x].seen_down = self.sides[x].core.is_down();
        self.sides[x].core.check_invariants();
        Ok(())
    }

    fn drain_both(&mut self) -> Result<(), TestCaseError> {
        self.drain(0)?;
        self.drain(1)
    }

    /// Moves up to `n` bytes written by `x` to the other side.
    fn transfer(&mut self, x: usize, n: usize) -> Result<(), TestCaseError> {
        let n = n.min(self.wire[x].len());
        if self.cut || n == 0 {
            return Ok(());
        }
        let chunk: Vec<u8> = self.wire[x].drain(..n).collect();
        self.sides[1 - x].core.handle_bytes(self.now, &chunk);
        self.drain(1 - x)
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Send { side, pid, filler } => {
                let s = &mut self.sides[side];
                let was_down = s.core.is_down();
                let mut msg = s.sent.to_be_bytes().to_vec();
                msg.push(u8::try_from(pid).unwrap());
                msg.resize(msg.len() + filler, 0xAA);
                match s.core.send(RemoteRef { pid, epoch: EPOCH }, msg) {
                    Ok(()) => {
                        prop_assert!(!was_down);
                        s.sent += 1;
                    }
                    Err(SendError::Down) => prop_assert!(s.core.is_down()),
                    Err(SendError::TooLarge) => {
                        return Err(TestCaseError::fail("a small message refused as too large"));
                    }
                }
            }
            Op::Monitor { side, pid, epoch } => {
                let s = &mut self.sides[side];
                let target = RemoteRef { pid, epoch };
                let mref = s.next_mref;
                s.next_mref += 1;
                let was_down = s.core.is_down();
                match s.core.monitor(mref, target) {
                    Ok(()) => {
                        prop_assert!(!was_down);
                        s.mons.insert(
                            mref,
                            Mon {
                                target,
                                demonitored: false,
                                downs: Vec::new(),
                            },
                        );
                    }
                    Err(LinkDown) => prop_assert!(was_down),
                }
            }
            Op::Demonitor { side, pick } => {
                let s = &mut self.sides[side];
                let live: Vec<u64> = s
                    .mons
                    .iter()
                    .filter(|(_, m)| !m.demonitored)
                    .map(|(mref, _)| *mref)
                    .collect();
                if !live.is_empty() {
                    let mref = live[pick.index(live.len())];
                    let pending = s.core.demonitor(mref);
                    let m = s.mons.get_mut(&mref).unwrap();
                    prop_assert_eq!(pending, m.downs.is_empty());
                    m.demonitored = true;
                }
            }
            Op::Exit { side, pid, reason } => {
                // A process exits once.
                let s = &mut self.sides[side];
                if let Entry::Vacant(e) = s.dead.entry(pid) {
                    e.insert(reason.clone());
                    s.core.local_exited(pid, reason);
                }
            }
            Op::Transfer { side, bytes } => self.transfer(side, bytes)?,
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                for x in 0..2 {
                    // At most twice: a tick queued is written by the drain, which moves the
                    // deadline past `now`.
                    for _ in 0..2 {
                        if self.sides[x]
                            .core
                            .poll_timeout()
                            .is_some_and(|t| t <= self.now)
                        {
                            self.sides[x].core.handle_timeout(self.now);
                            self.drain(x)?;
                        }
                    }
                    let next = self.sides[x].core.poll_timeout();
                    prop_assert!(next.is_none_or(|t| t > self.now), "a deadline left behind");
                }
            }
            Op::Cut => {
                self.cut = true;
                self.wire = [VecDeque::new(), VecDeque::new()];
            }
            Op::Notice(x) => {
                // EOF comes once the peer is gone and its last bytes were read, or at once
                // when the connection broke.
                let peer_gone = self.sides[1 - x].core.is_down() && self.wire[1 - x].is_empty();
                if self.cut || peer_gone {
                    self.sides[x].core.transport_closed();
                }
            }
            Op::Garbage(x) => {
                if !self.cut {
                    self.wire[1 - x].extend(BAD_FRAME);
                }
            }
        }
        self.drain_both()
    }

    /// Delivers everything in flight, without letting time pass.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        while !self.cut && self.wire.iter().any(|w| !w.is_empty()) {
            for x in 0..2 {
                self.transfer(x, usize::MAX)?;
            }
        }
        Ok(())
    }

    /// Whether `x`'s monitor must have had its real DOWN by now, were the link up.
    fn target_is_gone(&self, x: usize, target: RemoteRef) -> bool {
        is_stale(target.epoch) || self.sides[1 - x].dead.contains_key(&target.pid)
    }

    /// A DOWN other than Noconnection is what the other side reported.
    fn check_real_downs(&self) -> Result<(), TestCaseError> {
        for x in 0..2 {
            for m in self.sides[x].mons.values() {
                let Some(reason) = m.downs.first() else {
                    continue;
                };
                if *reason == DownReason::Noconnection {
                    continue;
                }
                prop_assert!(self.target_is_gone(x, m.target));
                if is_stale(m.target.epoch) {
                    prop_assert_eq!(reason, &DownReason::Noproc);
                } else {
                    let exit = &self.sides[1 - x].dead[&m.target.pid];
                    prop_assert!(reason == exit || *reason == DownReason::Noproc);
                }
            }
        }
        Ok(())
    }
}

fn is_stale(epoch: u64) -> bool {
    epoch != 0 && epoch != EPOCH
}

fn arb_reason() -> impl Strategy<Value = DownReason> {
    prop_oneof![
        Just(DownReason::Normal),
        Just(DownReason::Shutdown),
        Just(DownReason::crashed("boom")),
        Just(DownReason::other("killed")),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    let side = 0..2usize;
    let pid = 1..=PIDS;
    // Epoch 0 next to the current one gives a pid two live targets, both ended by its exit.
    let epoch = prop_oneof![3 => Just(EPOCH), 1 => Just(0), 1 => Just(STALE_EPOCH)];
    prop_oneof![
        6 => (side.clone(), pid.clone(), 0..24usize)
            .prop_map(|(side, pid, filler)| Op::Send { side, pid, filler }),
        4 => (side.clone(), pid.clone(), epoch)
            .prop_map(|(side, pid, epoch)| Op::Monitor { side, pid, epoch }),
        2 => (side.clone(), any::<Index>()).prop_map(|(side, pick)| Op::Demonitor { side, pick }),
        2 => (side.clone(), pid, arb_reason())
            .prop_map(|(side, pid, reason)| Op::Exit { side, pid, reason }),
        12 => (side.clone(), prop_oneof![1..16usize, 16..200usize, Just(usize::MAX)])
            .prop_map(|(side, bytes)| Op::Transfer { side, bytes }),
        // Mostly well inside the silence timeout, so most runs keep a live link to the end;
        // sometimes a stall long enough to lose it.
        3 => prop_oneof![20 => 0..400u64, 2 => 400..2_000u64, 1 => Just(4_000u64)]
            .prop_map(Op::Advance),
        1 => side.prop_map(Op::Notice),
    ]
}

/// At most one fault per run (half the runs have none), so most runs also check a link that
/// stays up to the end.
fn arb_fault() -> impl Strategy<Value = Option<(Index, Op)>> {
    let fault = prop_oneof![Just(Op::Cut), (0..2usize).prop_map(Op::Garbage)];
    proptest::option::of((any::<Index>(), fault))
}

/// Mostly the default; sometimes a bound a few frames deep, so an unread queue overloads.
fn arb_queue_bound() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(LinkConfig::default().max_queue_bytes), 1 => 60..400usize]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn two_links_keep_every_promise(
        mut ops in prop::collection::vec(arb_op(), 0..100),
        fault in arb_fault(),
        max_queue_bytes in arb_queue_bound(),
        right_peer in prop::bool::weighted(0.95),
    ) {
        let config = LinkConfig { max_queue_bytes, ..LinkConfig::default() };
        if let Some((at, op)) = fault {
            ops.insert(at.index(ops.len() + 1), op);
        }
        let mut w = World::new(config, if right_peer { 2 } else { 3 });
        w.drain_both()?;
        for op in ops {
            w.apply(op)?;
        }
        w.settle()?;
        w.check_real_downs()?;
        let up = !w.cut && w.sides.iter().all(|s| !s.core.is_down());
        if up {
            // A settled link that stayed up lost nothing and owes no DOWN.
            for x in 0..2 {
                prop_assert!(w.sides[x].core.is_established());
                prop_assert_eq!(w.sides[x].sent, w.sides[1 - x].received);
                for (mref, m) in &w.sides[x].mons {
                    let want = usize::from(!m.demonitored && w.target_is_gone(x, m.target));
                    let got = m.downs.len() - usize::from(m.demonitored && !m.downs.is_empty());
                    prop_assert_eq!(got, want, "side {} monitor {}: {:?}", x, mref, m);
                }
            }
        }
        // Tear down: every monitor not demonitored has exactly one DOWN.
        for x in 0..2 {
            w.sides[x].core.transport_closed();
            w.drain(x)?;
        }
        w.check_real_downs()?;
        for x in 0..2 {
            for (mref, m) in &w.sides[x].mons {
                if !m.demonitored {
                    prop_assert_eq!(m.downs.len(), 1, "side {} monitor {}", x, mref);
                }
            }
        }
    }
}
