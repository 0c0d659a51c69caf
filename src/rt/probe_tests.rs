//! Unit tests of the probe sink and of the promise model: the real runtime keeps its promises
//! under observation, and test doubles that break one (events in the wrong order) are caught.

use std::cell::RefCell;
use std::rc::Rc;

use super::probe::{self, Event, RegId, ReleaseBy, SysId};
use super::promises::{Promises, Violation};
use super::*;
use crate::registry::Registry;

type Shared<T> = Rc<RefCell<T>>;

/// Installs a sink that feeds a fresh model and keeps every event name, in order.
fn observe() -> (probe::SinkGuard, Shared<Promises>, Shared<Vec<String>>) {
    let model = Rc::new(RefCell::new(Promises::default()));
    let names = Rc::new(RefCell::new(Vec::new()));
    let (m, n) = (model.clone(), names.clone());
    let guard = probe::install(move |e| {
        m.borrow_mut().observe(e);
        n.borrow_mut().push(e.name().to_string());
    });
    (guard, model, names)
}

const S: SysId = SysId(1);
const R: RegId = RegId(2);

fn feed(events: &[Event<'_>]) -> Vec<Violation> {
    let mut p = Promises::default();
    for e in events {
        p.observe(e);
    }
    p.violations().to_vec()
}

#[tokio::test]
async fn the_runtime_keeps_its_promises_under_observation() {
    let (_g, model, names) = observe();
    let sys = System::new();
    let reg: Registry<u32> = Registry::new(&sys);
    let room = reg
        .start("lobby", 4, |mut ctx: Ctx<u32>| async move {
            let _ = ctx.recv().await;
            ExitReason::Normal
        })
        .unwrap();
    // A second start of the same name loses the race and must never run.
    assert!(reg
        .start("lobby", 4, |_ctx: Ctx<u32>| async move {
            panic!("the loser ran")
        })
        .is_err());
    let room_pid = room.pid();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    sys.spawn(4, move |mut ctx: Ctx<()>| async move {
        ctx.monitor(room_pid);
        let r = ctx.monitor(room_pid);
        ctx.demonitor(r);
        let _ = ctx.recv().await;
        let _ = done_tx.send(());
        ExitReason::Normal
    });
    tokio::task::yield_now().await;
    room.try_send(1).unwrap();
    done_rx.await.unwrap();
    let model = model.borrow();
    assert_eq!(model.violations(), &[]);
    assert!(model.panics().is_empty());
    let names = names.borrow();
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
    assert!(names.iter().any(|n| n == "StartLostRace"), "{names:?}");
    assert!(pos("NameReleased") < pos("DownSent"), "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "DownSent").count(), 1);
}

#[tokio::test]
async fn a_contained_panic_reaches_the_sink_with_its_label_and_message() {
    let (_g, model, _) = observe();
    let sys = System::new();
    let reg: Registry<()> = Registry::new(&sys);
    let a = reg
        .start("r1", 4, |_ctx: Ctx<()>| async move {
            panic!("invariant broken: {}", 42)
        })
        .unwrap();
    assert_eq!(
        sys.wait_exit(a.pid()).await,
        ExitReason::Crashed("invariant broken: 42".into())
    );
    let panics = model.borrow().panics().to_vec();
    assert_eq!(panics.len(), 1);
    assert_eq!(panics[0].pid, a.pid());
    assert_eq!(panics[0].label.as_deref(), Some("r1"));
    assert_eq!(
        panics[0].to_string(),
        format!("{} (r1) panicked: invariant broken: 42", a.pid())
    );
}

#[test]
fn each_install_starts_a_fresh_world() {
    let seen = Rc::new(RefCell::new(0));
    {
        let s = seen.clone();
        let _g = probe::install(move |_| *s.borrow_mut() += 1);
        assert_eq!(System::new().id(), SysId(1));
        assert_eq!(System::new().id(), SysId(2));
    }
    let ids_after = System::new().id();
    assert_eq!(*seen.borrow(), 2, "no delivery once the guard dropped");
    let _g = probe::install(|_| {});
    assert_eq!(System::new().id(), SysId(1), "ids restart per world");
    assert_eq!(ids_after, SysId(0), "no world, no ids");
}

#[test]
fn a_down_sent_before_the_name_is_released_is_caught() {
    let (p, w) = (Pid(1), Pid(2));
    let mref = MonitorRef(1);
    let v = feed(&[
        Event::ProcessPrepared { sys: S, pid: p },
        Event::NameRegistered {
            sys: S,
            reg: R,
            name: "r",
            pid: p,
            gen: 1,
        },
        Event::MonitorSet {
            sys: S,
            mref,
            watcher: w,
            target: p,
        },
        // The reordering under test: the DOWN goes out first.
        Event::DownSent {
            sys: S,
            mref,
            watcher: w,
            pid: p,
        },
        Event::NameReleased {
            sys: S,
            reg: R,
            name: "r",
            pid: p,
            gen: 1,
            removed: Some((p, 1)),
            by: ReleaseBy::Exit,
        },
        Event::ProcessExited {
            sys: S,
            pid: p,
            reason: &ExitReason::Killed,
        },
    ]);
    assert_eq!(
        v,
        vec![Violation::DownWhileNamed {
            pid: p,
            name: "r".into(),
            watcher: w
        }]
    );
}

#[test]
fn one_down_per_monitor_and_none_after_demonitor() {
    let (p, w) = (Pid(1), Pid(2));
    let (m1, m2, m3) = (MonitorRef(1), MonitorRef(2), MonitorRef(3));
    let set = |mref| Event::MonitorSet {
        sys: S,
        mref,
        watcher: w,
        target: p,
    };
    let sent = |mref| Event::DownSent {
        sys: S,
        mref,
        watcher: w,
        pid: p,
    };
    let got = |mref| Event::DownReceived {
        sys: S,
        mref,
        watcher: w,
    };
    let v = feed(&[
        Event::ProcessPrepared { sys: S, pid: p },
        set(m1),
        set(m2),
        set(m3),
        Event::Demonitored {
            sys: S,
            mref: m2,
            watcher: w,
            active: true,
        },
        sent(m1),
        sent(m1),
        sent(m2),
        Event::ProcessExited {
            sys: S,
            pid: p,
            reason: &ExitReason::Normal,
        },
        got(m1),
        got(m1),
    ]);
    let s = |state| Violation::DownForInactiveMonitor {
        mref: if state == "already fired" { m1 } else { m2 },
        pid: p,
        state,
    };
    assert_eq!(
        v,
        vec![
            s("already fired"),
            s("demonitored"),
            Violation::MonitorWithoutDown {
                mref: m3,
                watcher: w,
                pid: p
            },
            Violation::DownReceivedTwice {
                mref: m1,
                watcher: w
            },
        ]
    );
    let v = feed(&[
        set(m1),
        sent(m1),
        Event::Demonitored {
            sys: S,
            mref: m1,
            watcher: w,
            active: false,
        },
        got(m1),
    ]);
    assert_eq!(
        v,
        vec![Violation::DownReceivedAfterDemonitor {
            mref: m1,
            watcher: w
        }]
    );
}

#[test]
fn a_start_race_loser_that_runs_or_receives_is_caught() {
    let (winner, loser) = (Pid(1), Pid(2));
    let v = feed(&[
        Event::ProcessPrepared { sys: S, pid: loser },
        Event::StartLostRace {
            sys: S,
            loser,
            winner,
        },
        Event::ProcessStarted { sys: S, pid: loser },
        Event::MessageReceived { sys: S, pid: loser },
    ]);
    assert_eq!(
        v,
        vec![
            Violation::LoserRan { pid: loser },
            Violation::LoserReceived { pid: loser }
        ]
    );
}

#[test]
fn a_stale_cleanup_that_removes_a_newer_owner_is_caught() {
    let (old, new) = (Pid(1), Pid(2));
    let reg = |pid, gen| Event::NameRegistered {
        sys: S,
        reg: R,
        name: "r",
        pid,
        gen,
    };
    let v = feed(&[
        reg(old, 1),
        Event::NameUnregistered {
            sys: S,
            reg: R,
            name: "r",
            removed: Some((old, 1)),
        },
        reg(new, 2),
        // The old grant's exit hook runs late and removes the new one.
        Event::NameReleased {
            sys: S,
            reg: R,
            name: "r",
            pid: old,
            gen: 1,
            removed: Some((new, 2)),
            by: ReleaseBy::Exit,
        },
        reg(old, 3),
    ]);
    assert_eq!(
        v,
        vec![Violation::StaleReleaseRemovedNewer {
            name: "r".into(),
            by: (old, 1),
            removed: (new, 2)
        }]
    );
}

#[test]
fn a_room_that_stops_or_exits_named_and_a_message_after_exit_are_caught() {
    let p = Pid(1);
    let v = feed(&[
        Event::ProcessPrepared { sys: S, pid: p },
        Event::NameRegistered {
            sys: S,
            reg: R,
            name: "r",
            pid: p,
            gen: 1,
        },
        Event::RoomStoppedEmpty { sys: S, pid: p },
        Event::ProcessExited {
            sys: S,
            pid: p,
            reason: &ExitReason::Normal,
        },
        Event::MessageReceived { sys: S, pid: p },
    ]);
    assert_eq!(
        v,
        vec![
            Violation::RoomStoppedHoldingName {
                name: "r".into(),
                pid: p
            },
            Violation::NameOutlivedProcess {
                name: "r".into(),
                pid: p
            },
            Violation::MessageAfterExit { pid: p },
        ]
    );
}

#[test]
fn never_events_are_violations_and_ordinary_ones_are_not() {
    let v = feed(&[
        Event::StaleFrameIgnored,
        Event::JoinRetriedAfterRoomStop,
        Event::SecondJoinOutcome,
    ]);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].to_string(), "never-event reached: SecondJoinOutcome");
}

#[test]
fn a_monitor_on_a_dead_pid_must_yield_its_noproc_down_at_once() {
    let (dead, w, m) = (Pid(9), Pid(2), MonitorRef(1));
    let set = || Event::MonitorSet {
        sys: S,
        mref: m,
        watcher: w,
        target: dead,
    };
    let sent = Event::DownSent {
        sys: S,
        mref: m,
        watcher: w,
        pid: dead,
    };
    assert_eq!(feed(&[set(), sent]), vec![]);
    assert_eq!(
        feed(&[
            set(),
            Event::ProcessPrepared {
                sys: S,
                pid: Pid(10)
            }
        ]),
        vec![Violation::NoNoprocDown { mref: m, pid: dead }]
    );
}

#[test]
fn held_candidates_may_reach_their_bound_but_not_pass_it() {
    let at_bound = Event::HeldCandidatesFlushed { held: 32, max: 32 };
    assert_eq!(at_bound.name(), "HeldCandidatesAtTheBound");
    assert!(feed(&[at_bound, Event::HeldCandidatesFlushed { held: 3, max: 32 }]).is_empty());
    let v = feed(&[Event::HeldCandidatesFlushed { held: 33, max: 32 }]);
    assert_eq!(
        v.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["candidates held for an outstanding answer: 33 held, over the bound of 32"]
    );
}
