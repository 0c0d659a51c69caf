//! The registry and monitors against a reference model (proptest-state-machine).
//!
//! The system under test is the real `System` + `Registry` with real processes ("puppets")
//! on a current-thread tokio runtime; each step is awaited to completion (exits are awaited
//! with `wait_exit`, which resolves after names are released and DOWNs are queued), then
//! every invariant is compared with the model.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use tokio::sync::oneshot;
use videoroom::registry::{RegisterError, Registry};
use videoroom::rt::{Addr, Ctx, Down, ExitReason, MonitorRef, Pid, Received, System};

const NAMES: u8 = 3;
const CRASH_MESSAGE: &str = "puppet crash (planned)";

#[derive(Clone, Debug)]
enum Op {
    Spawn,
    Register(usize, u8),
    Unregister(u8),
    /// `unregister_own(name, pid of process)`: frees the name only if that process holds it.
    UnregisterOwn(usize, u8),
    Whereis(u8),
    Monitor {
        watcher: usize,
        target: usize,
    },
    Demonitor(usize),
    Kill(usize),
    Crash(usize),
    Stop(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Killed,
    Crashed,
    Shutdown,
    Noproc,
}

#[derive(Clone, Debug)]
struct Mon {
    watcher: usize,
    target: usize,
    active: bool,
}

#[derive(Clone, Debug, Default)]
struct Model {
    alive: Vec<bool>,
    names: BTreeMap<u8, usize>,
    monitors: Vec<Mon>,
    /// Per process: the DOWNs it received, as (monitor index, reason).
    downs: Vec<Vec<(usize, Why)>>,
    /// What the last `UnregisterOwn` must have answered.
    freed_own: bool,
}

impl Model {
    fn exit(&mut self, p: usize, why: Why) {
        if !self.alive[p] {
            return;
        }
        self.alive[p] = false;
        self.names.retain(|_, holder| *holder != p);
        for (i, m) in self.monitors.iter_mut().enumerate() {
            if !m.active {
                continue;
            }
            if m.target == p {
                m.active = false;
                if self.alive[m.watcher] {
                    self.downs[m.watcher].push((i, why));
                }
            } else if m.watcher == p {
                m.active = false;
            }
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.alive.len()).filter(|&i| self.alive[i]).collect()
    }
}

struct RefMachine;

impl ReferenceStateMachine for RefMachine {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(s: &Model) -> BoxedStrategy<Op> {
        let n = s.alive.len();
        let name = 0..NAMES;
        if n == 0 {
            return prop_oneof![Just(Op::Spawn), name.prop_map(Op::Whereis)].boxed();
        }
        let mons = s.monitors.len();
        let mut ops = vec![
            Just(Op::Spawn).boxed(),
            (0..n, name.clone())
                .prop_map(|(p, x)| Op::Register(p, x))
                .boxed(),
            name.clone().prop_map(Op::Unregister).boxed(),
            (0..n, name.clone())
                .prop_map(|(p, x)| Op::UnregisterOwn(p, x))
                .boxed(),
            name.prop_map(Op::Whereis).boxed(),
            (0..n, 0..n)
                .prop_map(|(watcher, target)| Op::Monitor { watcher, target })
                .boxed(),
            (0..n).prop_map(Op::Kill).boxed(),
            (0..n).prop_map(Op::Crash).boxed(),
            (0..n).prop_map(Op::Stop).boxed(),
        ];
        if mons > 0 {
            ops.push((0..mons).prop_map(Op::Demonitor).boxed());
        }
        proptest::strategy::Union::new(ops).boxed()
    }

    fn preconditions(s: &Model, op: &Op) -> bool {
        let n = s.alive.len();
        match *op {
            Op::Spawn | Op::Unregister(_) | Op::Whereis(_) => true,
            Op::Register(p, _) | Op::UnregisterOwn(p, _) | Op::Kill(p) => p < n,
            // Commands go through the puppet's mailbox, so it must be alive to act.
            Op::Crash(p) | Op::Stop(p) => p < n && s.alive[p],
            Op::Monitor { watcher, target } => watcher < n && target < n && s.alive[watcher],
            Op::Demonitor(m) => m < s.monitors.len() && s.alive[s.monitors[m].watcher],
        }
    }

    fn apply(mut s: Model, op: &Op) -> Model {
        match *op {
            Op::Spawn => {
                s.alive.push(true);
                s.downs.push(Vec::new());
            }
            Op::Register(p, x) => {
                let named = s.names.values().any(|&h| h == p);
                if !s.names.contains_key(&x) && s.alive[p] && !named {
                    s.names.insert(x, p);
                }
            }
            Op::Unregister(x) => {
                s.names.remove(&x);
            }
            Op::UnregisterOwn(p, x) => {
                s.freed_own = s.names.get(&x) == Some(&p);
                if s.freed_own {
                    s.names.remove(&x);
                }
            }
            Op::Whereis(_) => {}
            Op::Monitor { watcher, target } => {
                let active = s.alive[target];
                s.monitors.push(Mon {
                    watcher,
                    target,
                    active,
                });
                if !active {
                    let i = s.monitors.len() - 1;
                    s.downs[watcher].push((i, Why::Noproc));
                }
            }
            Op::Demonitor(m) => s.monitors[m].active = false,
            Op::Kill(p) => s.exit(p, Why::Killed),
            Op::Crash(p) => s.exit(p, Why::Crashed),
            Op::Stop(p) => s.exit(p, Why::Shutdown),
        }
        s
    }
}

enum Cmd {
    Monitor(Pid, oneshot::Sender<MonitorRef>),
    Demonitor(MonitorRef, oneshot::Sender<bool>),
    Report(oneshot::Sender<Vec<Down>>),
    Crash,
    Stop,
}

fn puppet(sys: &System) -> Addr<Cmd> {
    sys.spawn(8, |mut ctx: Ctx<Cmd>| async move {
        let mut downs = Vec::new();
        loop {
            match ctx.recv().await {
                Received::Down(d) => downs.push(d),
                Received::Msg(Cmd::Monitor(p, tx)) => {
                    let _ = tx.send(ctx.monitor(p));
                }
                Received::Msg(Cmd::Demonitor(r, tx)) => {
                    let _ = tx.send(ctx.demonitor(r));
                }
                Received::Msg(Cmd::Report(tx)) => {
                    let _ = tx.send(downs.clone());
                }
                Received::Msg(Cmd::Crash) => panic!("{CRASH_MESSAGE}"),
                Received::Msg(Cmd::Stop) => return ExitReason::Shutdown,
            }
        }
    })
}

struct Sut {
    rt: tokio::runtime::Runtime,
    sys: System,
    reg: Registry<Cmd>,
    procs: Vec<Addr<Cmd>>,
    mrefs: Vec<MonitorRef>,
}

impl Sut {
    fn ask<T>(&self, p: usize, f: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> T {
        let (tx, rx) = oneshot::channel();
        if self.procs[p].try_send(f(tx)).is_err() {
            panic!("puppet {p} refused a command");
        }
        self.rt.block_on(rx).expect("puppet answered")
    }

    fn end(&self, p: usize, cmd: Option<Cmd>) -> ExitReason {
        let pid = self.procs[p].pid();
        match cmd {
            None => {
                self.sys.kill(pid);
            }
            Some(c) => {
                if self.procs[p].try_send(c).is_err() {
                    panic!("puppet {p} refused");
                }
            }
        }
        self.rt.block_on(self.sys.wait_exit(pid))
    }
}

struct RegistryTest;

impl StateMachineTest for RegistryTest {
    type SystemUnderTest = Sut;
    type Reference = RefMachine;

    fn init_test(_: &Model) -> Sut {
        quiet_planned_panics();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let sys = System::new();
        let reg = Registry::new(&sys);
        Sut {
            rt,
            sys,
            reg,
            procs: Vec::new(),
            mrefs: Vec::new(),
        }
    }

    fn apply(mut sut: Sut, before_after: &Model, op: Op) -> Sut {
        let s = before_after;
        match op {
            Op::Spawn => {
                let _guard = sut.rt.enter();
                let p = puppet(&sut.sys);
                sut.procs.push(p);
            }
            Op::Register(p, x) => {
                let r = sut.reg.register(&name(x), &sut.procs[p]);
                match (r, s.names.get(&x)) {
                    (Ok(()), Some(&h)) => assert_eq!(h, p, "registered but model holder differs"),
                    (Ok(()), None) => panic!("registered but the model refused"),
                    (Err(RegisterError::AlreadyStarted(w)), Some(&h)) => {
                        // The holder may be `p` itself: a name is granted once.
                        assert_eq!(
                            w.pid(),
                            sut.procs[h].pid(),
                            "AlreadyStarted names the winner"
                        );
                    }
                    (Err(RegisterError::Noproc), holder) => {
                        assert!(!s.alive[p]);
                        assert_ne!(holder, Some(&p));
                    }
                    (Err(RegisterError::AlreadyNamed(_)), holder) => assert_ne!(holder, Some(&p)),
                    (Err(RegisterError::Full(_)), _) => {
                        panic!("an unbounded registry is never full")
                    }
                    (Err(e), None) => panic!("refused ({e}) but the model has no holder"),
                }
            }
            Op::Unregister(x) => sut.reg.unregister(&name(x)),
            Op::UnregisterOwn(p, x) => {
                let freed = sut.reg.unregister_own(&name(x), sut.procs[p].pid());
                assert_eq!(freed, s.freed_own, "unregister_own's answer");
            }
            Op::Whereis(x) => {
                let got = sut.reg.whereis(&name(x)).map(|a| a.pid());
                let want = s.names.get(&x).map(|&h| sut.procs[h].pid());
                assert_eq!(got, want, "whereis");
            }
            Op::Monitor { watcher, target } => {
                let t = sut.procs[target].pid();
                let r = sut.ask(watcher, |tx| Cmd::Monitor(t, tx));
                assert!(!sut.mrefs.contains(&r), "monitor refs are fresh");
                sut.mrefs.push(r);
            }
            Op::Demonitor(m) => {
                let w = s.monitors[m].watcher;
                let r = sut.mrefs[m];
                sut.ask(w, |tx| Cmd::Demonitor(r, tx));
            }
            Op::Kill(p) => {
                let r = sut.end(p, None);
                let want = if sut.sys.is_alive(sut.procs[p].pid()) {
                    unreachable!("wait_exit returned")
                } else if r == ExitReason::Noproc {
                    ExitReason::Noproc
                } else {
                    ExitReason::Killed
                };
                assert_eq!(r, want);
            }
            Op::Crash(p) => {
                assert_eq!(
                    sut.end(p, Some(Cmd::Crash)),
                    ExitReason::Crashed(CRASH_MESSAGE.into())
                );
            }
            Op::Stop(p) => assert_eq!(sut.end(p, Some(Cmd::Stop)), ExitReason::Shutdown),
        }
        sut
    }

    fn check_invariants(sut: &Sut, s: &Model) {
        for (i, a) in sut.procs.iter().enumerate() {
            assert_eq!(sut.sys.is_alive(a.pid()), s.alive[i], "liveness of {i}");
        }
        let want: Vec<(String, Pid)> = s
            .names
            .iter()
            .map(|(&x, &h)| (name(x), sut.procs[h].pid()))
            .collect();
        assert_eq!(sut.reg.entries(), want, "registry contents");
        for (n, pid) in sut.reg.entries() {
            assert!(sut.sys.is_alive(pid), "{n} names a dead pid");
        }
        for p in s.live() {
            let got: Vec<(usize, Why)> = sut
                .ask(p, Cmd::Report)
                .into_iter()
                .map(|d| {
                    let m = sut
                        .mrefs
                        .iter()
                        .position(|&r| r == d.mref)
                        .expect("DOWN for a ref this test made");
                    assert_eq!(
                        d.pid,
                        sut.procs[s.monitors[m].target].pid(),
                        "DOWN names its target"
                    );
                    (m, why(&d.reason))
                })
                .collect();
            assert_eq!(got, s.downs[p], "DOWNs received by {p}");
        }
        let active_on = |t: usize| {
            s.monitors
                .iter()
                .filter(|m| m.active && m.target == t)
                .count()
        };
        for p in s.live() {
            assert_eq!(
                sut.sys.monitor_count(sut.procs[p].pid()),
                active_on(p),
                "monitors on {p}"
            );
        }
        assert_eq!(sut.sys.live_count(), s.live().len(), "no leaked processes");
    }
}

fn name(x: u8) -> String {
    format!("room:{x}")
}

fn why(r: &ExitReason) -> Why {
    match r {
        ExitReason::Killed => Why::Killed,
        ExitReason::Crashed(_) => Why::Crashed,
        ExitReason::Shutdown => Why::Shutdown,
        ExitReason::Noproc => Why::Noproc,
        other => panic!("unexpected exit reason {other}"),
    }
}

/// Puppets panic on purpose; keep their panics out of the test output.
fn quiet_planned_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let planned = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m == CRASH_MESSAGE);
            if !planned {
                default(info);
            }
        }));
    });
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn registry_and_monitors_match_the_model(sequential 1..40 => RegistryTest);
}
