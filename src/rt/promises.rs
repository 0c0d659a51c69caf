//! The runtime's and the registry's promises (README, "Semantics the rest of the code relies
//! on"; research/dst.md M1–M7, R1–R5), checked against the [`probe`](super::probe) event stream
//! at the moment each one is relied upon.
//!
//! [`Promises`] is a shadow model fed every event in emission order: it keeps which names map
//! to which pids, which monitors are active, which processes live, and flags a broken promise
//! as a typed [`Violation`] the moment the event that breaks it is emitted, so an ordering that
//! is only wrong inside one synchronous step is still seen. It also keeps the panics caught at
//! crash boundaries and the "never" events reached.
//!
//! It only observes: it never touches the processes it models, and formats text only when it
//! records a violation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::probe::{Event, RegId, ReleaseBy, SysId};
use super::{MonitorRef, Pid};

/// A broken promise of the runtime, the registry or the room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A DOWN for `pid` went out while a name still mapped to it (names are released first).
    DownWhileNamed {
        pid: Pid,
        name: String,
        watcher: Pid,
    },
    /// A DOWN was sent for a monitor that was demonitored, already fired, or never set.
    DownForInactiveMonitor {
        mref: MonitorRef,
        pid: Pid,
        state: &'static str,
    },
    /// A monitor set on a process already dead did not yield its DOWN `noproc` at once.
    NoNoprocDown { mref: MonitorRef, pid: Pid },
    /// A watcher received a DOWN after `demonitor` returned for its ref.
    DownReceivedAfterDemonitor { mref: MonitorRef, watcher: Pid },
    /// A watcher received a second DOWN for one monitor.
    DownReceivedTwice { mref: MonitorRef, watcher: Pid },
    /// A monitored process exited and its live watcher was never sent the DOWN.
    MonitorWithoutDown {
        mref: MonitorRef,
        watcher: Pid,
        pid: Pid,
    },
    /// The loser of a start race ran its body.
    LoserRan { pid: Pid },
    /// The loser of a start race handled a message.
    LoserReceived { pid: Pid },
    /// A process took a message out of its mailbox after it exited.
    MessageAfterExit { pid: Pid },
    /// A release asked for by one grant removed another (a stale cleanup removed a newer owner).
    StaleReleaseRemovedNewer {
        name: String,
        by: (Pid, u64),
        removed: (Pid, u64),
    },
    /// A name was granted while another process held it.
    NameGrantedTwice { name: String, holder: Pid, pid: Pid },
    /// A process finished exiting with a name still mapped to it.
    NameOutlivedProcess { name: String, pid: Pid },
    /// A room stopped (about to exit) without having given up its name.
    RoomStoppedHoldingName { name: String, pid: Pid },
    /// A room that had decided to stop took a message while its name still mapped to it.
    StoppingRoomReceivedWhileNamed { name: String, pid: Pid },
    /// A bounded buffer gave out more than its bound (README "Limits": every queue is bounded).
    OverBound {
        what: &'static str,
        held: usize,
        max: usize,
    },
    /// A branch that must never run was reached.
    Never { event: String },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::DownWhileNamed { pid, name, watcher } => write!(
                f,
                "DOWN for {pid} sent to {watcher} while name {name:?} still maps to it"
            ),
            Violation::DownForInactiveMonitor { mref, pid, state } => {
                write!(
                    f,
                    "DOWN for {pid} sent on monitor {} that is {state}",
                    mref.0
                )
            }
            Violation::DownReceivedAfterDemonitor { mref, watcher } => write!(
                f,
                "{watcher} received the DOWN of monitor {} after demonitoring it",
                mref.0
            ),
            Violation::DownReceivedTwice { mref, watcher } => {
                write!(f, "{watcher} received two DOWNs for monitor {}", mref.0)
            }
            Violation::MonitorWithoutDown { mref, watcher, pid } => write!(
                f,
                "{pid} exited but its live watcher {watcher} got no DOWN for monitor {}",
                mref.0
            ),
            Violation::LoserRan { pid } => write!(f, "start-race loser {pid} ran its body"),
            Violation::LoserReceived { pid } => {
                write!(f, "start-race loser {pid} handled a message")
            }
            Violation::MessageAfterExit { pid } => {
                write!(f, "{pid} took a message out of its mailbox after exiting")
            }
            Violation::StaleReleaseRemovedNewer { name, by, removed } => write!(
                f,
                "a release of {name:?} by <{}> gen {} removed the grant of <{}> gen {}",
                by.0 .0, by.1, removed.0 .0, removed.1
            ),
            Violation::NameGrantedTwice { name, holder, pid } => {
                write!(f, "name {name:?} granted to {pid} while {holder} holds it")
            }
            Violation::NameOutlivedProcess { name, pid } => {
                write!(f, "{pid} exited still registered as {name:?}")
            }
            Violation::RoomStoppedHoldingName { name, pid } => {
                write!(f, "room {pid} stopped still registered as {name:?}")
            }
            Violation::StoppingRoomReceivedWhileNamed { name, pid } => write!(
                f,
                "room {pid} took a message after deciding to stop, still registered as {name:?}"
            ),
            Violation::NoNoprocDown { mref, pid } => write!(
                f,
                "monitor {} on dead {pid} gave no DOWN noproc at once",
                mref.0
            ),
            Violation::OverBound { what, held, max } => {
                write!(f, "{what}: {held} held, over the bound of {max}")
            }
            Violation::Never { event } => write!(f, "never-event reached: {event}"),
        }
    }
}

/// A panic caught at a process's crash boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Panicked {
    pub pid: Pid,
    pub label: Option<String>,
    pub message: String,
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.label {
            Some(l) => write!(f, "{} ({l}) panicked: {}", self.pid, self.message),
            None => write!(f, "{} panicked: {}", self.pid, self.message),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MonState {
    Active,
    Sent,
    Received,
}

#[derive(Clone, Copy, Debug)]
struct Mon {
    watcher: Pid,
    target: Pid,
    state: MonState,
    demonitored: bool,
}

/// The shadow model; feed it every event with [`Promises::observe`].
#[derive(Default)]
pub struct Promises {
    names: BTreeMap<(SysId, RegId, String), (Pid, u64)>,
    /// pid → the names it holds (one per registry).
    held: BTreeMap<(SysId, Pid), Vec<(RegId, String)>>,
    monitors: BTreeMap<(SysId, MonitorRef), Mon>,
    live: BTreeSet<(SysId, Pid)>,
    losers: BTreeSet<(SysId, Pid)>,
    /// A monitor just set on a dead process: its DOWN `noproc` must be the very next event.
    noproc_due: Option<(SysId, MonitorRef, Pid)>,
    /// Rooms that decided to stop (and must give up their name before taking a message).
    stopping: BTreeSet<(SysId, Pid)>,
    labels: BTreeMap<(SysId, Pid), String>,
    violations: Vec<Violation>,
    panics: Vec<Panicked>,
}

impl Promises {
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    pub fn panics(&self) -> &[Panicked] {
        &self.panics
    }

    fn held_name(&self, sys: SysId, pid: Pid) -> Option<&str> {
        self.held
            .get(&(sys, pid))
            .and_then(|v| v.first())
            .map(|(_, n)| n.as_str())
    }

    fn unhold(&mut self, sys: SysId, reg: RegId, name: &str, pid: Pid) {
        if let Some(v) = self.held.get_mut(&(sys, pid)) {
            v.retain(|(r, n)| !(*r == reg && n == name));
            if v.is_empty() {
                self.held.remove(&(sys, pid));
            }
        }
    }

    fn release(&mut self, sys: SysId, reg: RegId, name: &str, removed: (Pid, u64)) {
        let key = (sys, reg, name.to_string());
        if self.names.get(&key) == Some(&removed) {
            self.names.remove(&key);
        }
        self.unhold(sys, reg, name, removed.0);
    }

    pub fn observe(&mut self, e: &Event<'_>) {
        if let Some((due_sys, due, pid)) = self.noproc_due.take() {
            let sent =
                matches!(*e, Event::DownSent { sys, mref, .. } if sys == due_sys && mref == due);
            if !sent {
                self.violations
                    .push(Violation::NoNoprocDown { mref: due, pid });
            }
        }
        if e.is_never() {
            self.violations.push(Violation::Never {
                event: e.to_string(),
            });
            return;
        }
        match *e {
            Event::HeldCandidatesFlushed { held, max } if held > max => {
                self.violations.push(Violation::OverBound {
                    what: "candidates held for an outstanding answer",
                    held,
                    max,
                });
            }
            Event::FrameHeld {
                frames,
                max_frames,
                bytes,
                max_bytes,
            } if frames > max_frames || bytes > max_bytes => {
                let (what, held, max) = if frames > max_frames {
                    ("frames held for a pending join", frames, max_frames)
                } else {
                    ("bytes held for a pending join", bytes, max_bytes)
                };
                self.violations
                    .push(Violation::OverBound { what, held, max });
            }
            Event::ProcessPrepared { sys, pid } => {
                self.live.insert((sys, pid));
            }
            Event::ProcessStarted { sys, pid } if self.losers.contains(&(sys, pid)) => {
                self.violations.push(Violation::LoserRan { pid });
            }
            Event::ProcessLabelled { sys, pid, label } => {
                self.labels.insert((sys, pid), label.to_string());
            }
            Event::ProcessPanicked { sys, pid, message } => self.panics.push(Panicked {
                pid,
                label: self.labels.get(&(sys, pid)).cloned(),
                message: message.to_string(),
            }),
            Event::MessageReceived { sys, pid } => {
                if self.losers.contains(&(sys, pid)) {
                    self.violations.push(Violation::LoserReceived { pid });
                } else if !self.live.contains(&(sys, pid)) {
                    self.violations.push(Violation::MessageAfterExit { pid });
                } else if self.stopping.contains(&(sys, pid)) {
                    if let Some(name) = self.held_name(sys, pid) {
                        self.violations
                            .push(Violation::StoppingRoomReceivedWhileNamed {
                                name: name.to_string(),
                                pid,
                            });
                    }
                }
            }
            Event::ProcessExited { sys, pid, .. } => {
                if let Some(name) = self.held_name(sys, pid) {
                    self.violations.push(Violation::NameOutlivedProcess {
                        name: name.to_string(),
                        pid,
                    });
                }
                let mut missed = Vec::new();
                self.monitors.retain(|&(s, mref), m| {
                    if s != sys {
                        return true;
                    }
                    if m.target == pid && m.state == MonState::Active && !m.demonitored {
                        missed.push(Violation::MonitorWithoutDown {
                            mref,
                            watcher: m.watcher,
                            pid,
                        });
                    }
                    // A watcher's monitors die with it (M7); a fired or cancelled monitor on the
                    // dead target is done too, except where its watcher may still receive it.
                    m.watcher != pid && !(m.target == pid && m.state == MonState::Active)
                });
                self.violations.extend(missed);
                self.live.remove(&(sys, pid));
                self.labels.remove(&(sys, pid));
            }
            Event::MonitorSet {
                sys,
                mref,
                watcher,
                target,
            } => {
                if !self.live.contains(&(sys, target)) {
                    self.noproc_due = Some((sys, mref, target));
                }
                self.monitors.insert(
                    (sys, mref),
                    Mon {
                        watcher,
                        target,
                        state: MonState::Active,
                        demonitored: false,
                    },
                );
            }
            Event::Demonitored { sys, mref, .. } => {
                if let Some(m) = self.monitors.get_mut(&(sys, mref)) {
                    m.demonitored = true;
                }
            }
            Event::DownSent {
                sys,
                mref,
                watcher,
                pid,
            } => {
                if let Some(name) = self.held_name(sys, pid) {
                    self.violations.push(Violation::DownWhileNamed {
                        pid,
                        name: name.to_string(),
                        watcher,
                    });
                }
                match self.monitors.get_mut(&(sys, mref)) {
                    Some(m) if m.state == MonState::Active && !m.demonitored => {
                        m.state = MonState::Sent
                    }
                    Some(m) => {
                        let state = if m.state != MonState::Active {
                            "already fired"
                        } else {
                            "demonitored"
                        };
                        self.violations.push(Violation::DownForInactiveMonitor {
                            mref,
                            pid,
                            state,
                        });
                    }
                    None => self.violations.push(Violation::DownForInactiveMonitor {
                        mref,
                        pid,
                        state: "unknown",
                    }),
                }
            }
            Event::DownReceived { sys, mref, watcher } => {
                if let Some(m) = self.monitors.get_mut(&(sys, mref)) {
                    if m.demonitored {
                        self.violations
                            .push(Violation::DownReceivedAfterDemonitor { mref, watcher });
                    } else if m.state == MonState::Received {
                        self.violations
                            .push(Violation::DownReceivedTwice { mref, watcher });
                    }
                    m.state = MonState::Received;
                }
            }
            Event::NameRegistered {
                sys,
                reg,
                name,
                pid,
                gen,
            } => {
                let key = (sys, reg, name.to_string());
                if let Some(&(holder, _)) = self.names.get(&key) {
                    self.violations.push(Violation::NameGrantedTwice {
                        name: name.to_string(),
                        holder,
                        pid,
                    });
                    self.unhold(sys, reg, name, holder);
                }
                self.names.insert(key, (pid, gen));
                self.held
                    .entry((sys, pid))
                    .or_default()
                    .push((reg, name.to_string()));
            }
            Event::NameReleased {
                sys,
                reg,
                name,
                pid,
                gen,
                removed: Some(removed),
                by,
            } => {
                // An undo removes what the same call just granted; nothing stale about it.
                if removed != (pid, gen) && by != ReleaseBy::Undo {
                    self.violations.push(Violation::StaleReleaseRemovedNewer {
                        name: name.to_string(),
                        by: (pid, gen),
                        removed,
                    });
                }
                self.release(sys, reg, name, removed);
            }
            Event::NameUnregistered {
                sys,
                reg,
                name,
                removed: Some(removed),
            } => self.release(sys, reg, name, removed),
            Event::StartLostRace { sys, loser, .. } => {
                self.losers.insert((sys, loser));
            }
            Event::RoomStopping { sys, pid } => {
                self.stopping.insert((sys, pid));
            }
            Event::RoomStoppedEmpty { sys, pid } => {
                if let Some(name) = self.held_name(sys, pid) {
                    self.violations.push(Violation::RoomStoppedHoldingName {
                        name: name.to_string(),
                        pid,
                    });
                }
            }
            _ => {}
        }
    }
}
