//! Unit tests of the process layer on real tokio.

use super::*;
use crate::registry::Registry;

#[derive(Debug)]
enum Cmd {
    Monitor(Pid, tokio::sync::oneshot::Sender<MonitorRef>),
    Next(tokio::sync::oneshot::Sender<Option<Received<u32>>>),
    Panic,
    Stop(ExitReason),
}

/// A process that records what it receives only when asked, so tests control ordering.
fn puppet(sys: &System) -> Addr<Cmd> {
    sys.spawn(16, |mut ctx: Ctx<Cmd>| async move {
        let mut held: std::collections::VecDeque<Received<u32>> = Default::default();
        loop {
            match ctx.recv().await {
                Received::Down(d) => held.push_back(Received::Down(d)),
                Received::Msg(Cmd::Monitor(p, tx)) => {
                    let _ = tx.send(ctx.monitor(p));
                }
                Received::Msg(Cmd::Next(tx)) => {
                    let _ = tx.send(held.pop_front());
                }
                Received::Msg(Cmd::Panic) => panic!("asked to"),
                Received::Msg(Cmd::Stop(r)) => return r,
            }
        }
    })
}

async fn ask<T>(a: &Addr<Cmd>, f: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Cmd) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    a.try_send(f(tx)).expect("puppet alive");
    rx.await.expect("puppet answered")
}

async fn next_down(a: &Addr<Cmd>) -> Option<Down> {
    match ask(a, Cmd::Next).await {
        Some(Received::Down(d)) => Some(d),
        Some(Received::Msg(m)) => panic!("unexpected {m:?}"),
        None => None,
    }
}

#[tokio::test]
async fn monitor_of_dead_pid_is_noproc_at_once() {
    let sys = System::new();
    let w = puppet(&sys);
    let t = puppet(&sys);
    t.try_send(Cmd::Stop(ExitReason::Normal)).unwrap();
    assert_eq!(sys.wait_exit(t.pid()).await, ExitReason::Normal);
    let r = ask(&w, |tx| Cmd::Monitor(t.pid(), tx)).await;
    let d = next_down(&w).await.unwrap();
    assert_eq!((d.mref, d.pid, d.reason), (r, t.pid(), ExitReason::Noproc));
    assert_eq!(next_down(&w).await, None);
}

#[tokio::test]
async fn one_down_per_monitor_with_the_exit_reason() {
    for (how, want) in [
        (0, ExitReason::Killed),
        (1, ExitReason::Crashed("asked to".into())),
        (2, ExitReason::Shutdown),
    ] {
        let sys = System::new();
        let w = puppet(&sys);
        let t = puppet(&sys);
        let r1 = ask(&w, |tx| Cmd::Monitor(t.pid(), tx)).await;
        let r2 = ask(&w, |tx| Cmd::Monitor(t.pid(), tx)).await;
        assert_ne!(r1, r2);
        match how {
            0 => assert!(sys.kill(t.pid())),
            1 => t.try_send(Cmd::Panic).unwrap(),
            _ => t.try_send(Cmd::Stop(ExitReason::Shutdown)).unwrap(),
        }
        assert_eq!(sys.wait_exit(t.pid()).await, want);
        let a = next_down(&w).await.unwrap();
        let b = next_down(&w).await.unwrap();
        assert_eq!((a.mref, b.mref), (r1, r2));
        assert_eq!((a.reason, b.reason), (want.clone(), want));
        assert_eq!(next_down(&w).await, None);
        assert!(!sys.kill(t.pid()), "killing a dead pid is a no-op");
    }
}

#[tokio::test]
async fn demonitor_prevents_and_flushes_down() {
    let sys = System::new();
    let t = puppet(&sys);
    let (dead_tx, dead_rx) = tokio::sync::oneshot::channel::<()>();
    let (out_tx, out_rx) = tokio::sync::oneshot::channel();
    let target = t.pid();
    sys.spawn(4, move |mut ctx: Ctx<()>| async move {
        let r1 = ctx.monitor(target);
        let active = ctx.demonitor(r1);
        let r2 = ctx.monitor(target);
        // Wait outside the mailbox, so r2's DOWN stays queued, unreceived.
        let _ = dead_rx.await;
        let flushed_active = ctx.demonitor(r2);
        let again = ctx.demonitor(r2);
        let _ = out_tx.send((active, flushed_active, again, ctx.try_recv().is_none()));
        ExitReason::Normal
    });
    tokio::task::yield_now().await;
    sys.kill(target);
    sys.wait_exit(target).await;
    dead_tx.send(()).unwrap();
    assert_eq!(out_rx.await.unwrap(), (true, false, false, true));
}

#[tokio::test]
async fn name_is_released_before_down_is_seen() {
    let sys = System::new();
    let reg: Registry<Cmd> = Registry::new(&sys);
    let room = reg
        .start("lobby", 4, |mut ctx: Ctx<Cmd>| async move {
            let _ = ctx.recv().await;
            ExitReason::Normal
        })
        .unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let reg2 = reg.clone();
    let room_pid = room.pid();
    sys.spawn(4, move |mut ctx: Ctx<()>| async move {
        ctx.monitor(room_pid);
        let Received::Down(d) = ctx.recv().await else {
            unreachable!()
        };
        let _ = seen_tx.send((d.reason, reg2.whereis("lobby")));
        ExitReason::Normal
    });
    tokio::task::yield_now().await;
    sys.kill(room.pid());
    let (reason, holder) = seen_rx.await.unwrap();
    assert_eq!(reason, ExitReason::Killed);
    assert_eq!(
        holder, None,
        "a watcher that saw DOWN must not find the dead pid"
    );
}

#[tokio::test]
async fn late_cleanup_spares_a_newer_registration() {
    let sys = System::new();
    let reg: Registry<Cmd> = Registry::new(&sys);
    let a = puppet(&sys);
    let b = puppet(&sys);
    reg.register("r", &a).unwrap();
    reg.unregister("r");
    reg.register("r", &b).unwrap();
    sys.kill(a.pid());
    sys.wait_exit(a.pid()).await;
    assert_eq!(reg.whereis("r").map(|x| x.pid()), Some(b.pid()));
    assert!(!reg.unregister_own("r", a.pid()));
    assert!(matches!(
        reg.register("r", &a),
        Err(crate::registry::RegisterError::AlreadyStarted(w)) if w.pid() == b.pid()
    ));
}

/// A bounded registry refuses a new name at its limit (a held name still answers
/// `AlreadyStarted`), and takes new names again once a holder exits.
#[tokio::test]
async fn bounded_registry_refuses_new_names_at_its_limit() {
    use crate::registry::{RegisterError, StartError};
    let sys = System::new();
    let reg: Registry<Cmd> = Registry::bounded(&sys, 2);
    let (a, b, c) = (puppet(&sys), puppet(&sys), puppet(&sys));
    reg.register("a", &a).unwrap();
    reg.register("b", &b).unwrap();
    assert!(matches!(reg.register("c", &c), Err(RegisterError::Full(2))));
    assert!(matches!(
        reg.register("a", &c),
        Err(RegisterError::AlreadyStarted(w)) if w.pid() == a.pid()
    ));
    let started = reg.start("c", 1, |_ctx: Ctx<Cmd>| async { ExitReason::Normal });
    assert!(matches!(started, Err(StartError::Full(2))), "{started:?}");
    assert_eq!(reg.len(), 2);
    sys.kill(a.pid());
    sys.wait_exit(a.pid()).await;
    assert_eq!(reg.len(), 1);
    reg.register("c", &c).unwrap();
    assert_eq!(
        sys.live_count(),
        2,
        "the refused start left no process behind"
    );
}

/// A name given up while its holder lives takes its exit hook with it (no hook piles up on a
/// process that registers and releases names over and over), and the holder keeps running.
#[tokio::test]
async fn released_names_leave_no_exit_hook_behind() {
    let sys = System::new();
    let reg: Registry<Cmd> = Registry::new(&sys);
    let a = puppet(&sys);
    reg.register("r", &a).unwrap();
    assert_eq!(sys.exit_hook_count(a.pid()), 1);
    assert_eq!(reg.audit(), Vec::<String>::new());
    // The audit sees a grant whose hook went missing (a test double of a lost hook id).
    let (pid, id) = {
        let names = reg.lock();
        let e = names.get("r").unwrap();
        (e.pid, e.hook.unwrap())
    };
    sys.remove_exit_hook(pid, id);
    assert_eq!(reg.audit().len(), 1, "{:?}", reg.audit());
    reg.unregister("r");
    reg.register("r", &a).unwrap();
    reg.unregister("r");
    assert_eq!(sys.exit_hook_count(a.pid()), 0, "unregister");
    reg.register("r", &a).unwrap();
    assert!(reg.unregister_own("r", a.pid()));
    assert_eq!(sys.exit_hook_count(a.pid()), 0, "unregister_own");
    assert!(reg.whereis("r").is_none());
    assert!(sys.is_alive(a.pid()));
    // The registry shows in `App`'s Debug output by name only (never its table).
    assert_eq!(format!("{reg:?}"), "Registry");
}

#[tokio::test]
async fn messages_sent_before_death_arrive_before_down() {
    let sys = System::new();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let watcher = sys.spawn(8, move |mut ctx: Ctx<u32>| async move {
        let mut log = Vec::new();
        let Received::Msg(target) = ctx.recv().await else {
            unreachable!()
        };
        ctx.monitor(Pid(target as u64));
        ctx.addr().try_send(0).unwrap(); // "go"
        loop {
            match ctx.recv().await {
                Received::Msg(m) => log.push(format!("msg {m}")),
                Received::Down(d) => {
                    log.push(format!("down {}", d.reason));
                    break;
                }
            }
        }
        let _ = done_tx.send(log);
        ExitReason::Normal
    });
    let w2 = watcher.clone();
    let sender = sys.spawn(1, move |mut ctx: Ctx<()>| async move {
        let _ = ctx.recv().await;
        for i in 1..=3 {
            w2.try_send(i).unwrap();
        }
        ExitReason::Normal
    });
    // The watcher consumes its "go" message itself before the sender runs.
    watcher.try_send(sender.pid().0 as u32).unwrap();
    tokio::task::yield_now().await;
    sender.try_send(()).unwrap();
    let log = done_rx.await.unwrap();
    assert_eq!(log, ["msg 0", "msg 1", "msg 2", "msg 3", "down normal"]);
}

#[tokio::test]
async fn mailbox_is_bounded_and_reports_death() {
    let sys = System::new();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let a = sys.spawn(2, move |_ctx: Ctx<u8>| async move {
        let _ = go_rx.await;
        ExitReason::Normal
    });
    a.try_send(1).unwrap();
    a.try_send(2).unwrap();
    assert_eq!(a.try_send(3), Err(SendError::Full(3)));
    let blocked = {
        let a = a.clone();
        tokio::spawn(async move { a.send(4).await })
    };
    tokio::task::yield_now().await;
    go_tx.send(()).unwrap();
    assert_eq!(sys.wait_exit(a.pid()).await, ExitReason::Normal);
    assert_eq!(blocked.await.unwrap(), Err(SendError::Dead(4)));
    assert_eq!(a.try_send(5), Err(SendError::Dead(5)));
    assert_eq!(sys.live_count(), 0);
}

#[tokio::test]
async fn watcher_exit_removes_its_monitors() {
    let sys = System::new();
    let w = puppet(&sys);
    let t = puppet(&sys);
    ask(&w, |tx| Cmd::Monitor(t.pid(), tx)).await;
    sys.kill(w.pid());
    sys.wait_exit(w.pid()).await;
    assert_eq!(sys.monitor_count(t.pid()), 0);
    sys.kill(t.pid());
    assert_eq!(sys.wait_exit(t.pid()).await, ExitReason::Killed);
}

#[tokio::test]
async fn unstarted_loser_never_runs() {
    let sys = System::new();
    let reg: Registry<()> = Registry::new(&sys);
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = |ran: std::sync::Arc<std::sync::atomic::AtomicUsize>| {
        reg.start("x", 1, move |_ctx: Ctx<()>| async move {
            ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::pending::<ExitReason>().await
        })
    };
    let first = start(ran.clone()).unwrap();
    match start(ran.clone()) {
        Err(crate::registry::StartError::AlreadyStarted(w)) => assert_eq!(w, first),
        other => panic!("{other:?}"),
    }
    tokio::task::yield_now().await;
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        sys.live_count(),
        1,
        "the loser was finished without running"
    );
}

/// A sender waiting on a full mailbox is counted until it is served or its target dies, and a
/// dying process wakes it (`Dead`), so once every process is gone no sender waits.
#[tokio::test]
async fn senders_blocked_on_a_full_mailbox_are_counted_and_freed_when_it_dies() {
    let sys = System::new();
    let deaf: Addr<u32> = sys.spawn(1, |ctx: Ctx<u32>| async move {
        // Holds its mailbox and never reads it.
        let _inbox = ctx;
        std::future::pending::<()>().await;
        ExitReason::Normal
    });
    deaf.try_send(1).expect("room for one");
    let waiting = {
        let deaf = deaf.clone();
        tokio::spawn(async move { deaf.send(2).await })
    };
    for _ in 0..100 {
        if sys.blocked_sends() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(sys.blocked_sends(), 1);
    assert!(sys.kill(deaf.pid()));
    // Bounded: a mailbox that went away without waking its senders would hang here.
    let woken = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("the dying mailbox wakes its waiting sender");
    assert_eq!(woken.expect("sender task"), Err(SendError::Dead(2)));
    assert_eq!(sys.blocked_sends(), 0);
}

/// The process table's audit finds nothing in a table whose monitors were set, fired, and died
/// with their watcher through the API.
#[tokio::test]
async fn the_audit_of_a_consistent_table_is_empty() {
    let sys = System::new();
    let (a, b) = (puppet(&sys), puppet(&sys));
    let target = b.pid();
    ask(&a, |tx| Cmd::Monitor(target, tx)).await;
    assert_eq!(sys.audit(), Vec::<String>::new());
    b.try_send(Cmd::Stop(ExitReason::Normal)).expect("alive");
    sys.wait_exit(target).await;
    assert!(next_down(&a).await.is_some());
    assert_eq!(sys.audit(), Vec::<String>::new());
    // A watcher that exits takes its monitors with it (M7).
    let c = puppet(&sys);
    let c_pid = c.pid();
    ask(&a, |tx| Cmd::Monitor(c_pid, tx)).await;
    a.try_send(Cmd::Stop(ExitReason::Normal)).expect("alive");
    sys.wait_exit(a.pid()).await;
    assert_eq!(sys.audit(), Vec::<String>::new());
}

/// Asserts, each time it is called after a step, that the change count `read` gives has moved
/// since the last call (or since it was made).
fn must_move(read: impl Fn() -> u64) -> impl FnMut(&str) {
    let mut last = read();
    move |step| {
        let now = read();
        assert!(now > last, "{step}: changes stayed at {last}");
        last = now;
    }
}

/// `changes` moves with every change of the names (the simulation audits the registry only when
/// it moved), and `is_empty` follows the names held.
#[tokio::test]
async fn the_registry_change_count_moves_with_its_names() {
    let sys = System::new();
    let reg: Registry<Cmd> = Registry::new(&sys);
    let a = puppet(&sys);
    assert!(reg.is_empty());
    let mut moved = must_move(|| reg.changes());
    reg.register("r", &a).unwrap();
    moved("register");
    assert!(!reg.is_empty());
    assert!(reg.unregister_own("r", a.pid()));
    moved("unregister_own");
    assert!(reg.is_empty());
    reg.register("r", &a).unwrap();
    moved("register again");
    sys.kill(a.pid());
    sys.wait_exit(a.pid()).await;
    moved("holder exit");
    assert!(reg.is_empty());
}

/// Addresses compare by process, report whether their process is gone, and read in logs as
/// the process they reach; send errors read as what went wrong.
#[tokio::test]
async fn addresses_compare_by_process_and_see_its_exit() {
    let sys = System::new();
    let (a, b) = (puppet(&sys), puppet(&sys));
    assert_eq!(a, a.clone());
    assert_ne!(a, b);
    assert_eq!(format!("{a:?}"), format!("Addr({})", a.pid()));
    assert!(!a.is_closed());
    a.try_send(Cmd::Stop(ExitReason::Normal)).unwrap();
    sys.wait_exit(a.pid()).await;
    assert!(a.is_closed());
    assert!(!b.is_closed());
    assert_eq!(SendError::Full(()).to_string(), "mailbox full");
    assert_eq!(SendError::Dead(()).to_string(), "process is dead");
}

/// Two senders wait on a full mailbox and the receiver hands both their slots over before
/// either queues: the slots are theirs, not lost, so the bound check stays quiet.
#[tokio::test]
async fn slots_handed_to_several_waiting_senders_are_not_a_drift() {
    use std::{cell::RefCell, rc::Rc};
    let seen = Rc::new(RefCell::new(Vec::<String>::new()));
    let _sink = {
        let s = seen.clone();
        probe::install(move |e| s.borrow_mut().push(e.to_string()))
    };
    let (addr, mut inbox) = mailbox::mailbox::<u32>(Pid(9), 2, mailbox::Blocked::default());
    addr.try_send(1).unwrap();
    addr.try_send(2).unwrap();
    let (x, y) = (addr.clone(), addr.clone());
    let mut first = Box::pin(x.send(3));
    let mut second = Box::pin(y.send(4));
    assert!(futures::poll!(&mut first).is_pending());
    assert!(futures::poll!(&mut second).is_pending());
    assert!(matches!(inbox.try_recv(), Some(Received::Msg(1))));
    assert!(matches!(inbox.try_recv(), Some(Received::Msg(2))));
    assert!(futures::poll!(&mut first).is_ready());
    assert!(futures::poll!(&mut second).is_ready());
    assert!(matches!(inbox.try_recv(), Some(Received::Msg(3))));
    assert!(matches!(inbox.try_recv(), Some(Received::Msg(4))));
    assert_eq!(*seen.borrow(), ["SendWaited", "SendWaited"]);
}

/// What logs and refusal reasons show of processes: pids as `<n>`, exit reasons in words, the
/// table by its live count.
#[tokio::test]
async fn processes_read_in_logs_as_pids_reasons_and_a_live_count() {
    let sys = System::new();
    assert_eq!(format!("{sys:?}"), "System(0 live)");
    let a = puppet(&sys);
    assert_eq!(format!("{sys:?}"), "System(1 live)");
    assert_eq!(Pid(42).to_string(), "<42>");
    let words = [
        (ExitReason::Normal, "normal"),
        (ExitReason::Shutdown, "shutdown"),
        (ExitReason::Killed, "killed"),
        (ExitReason::Crashed("boom".into()), "crashed: boom"),
        (ExitReason::Error("full".into()), "error: full"),
        (ExitReason::Noproc, "noproc"),
    ];
    for (reason, text) in words {
        assert_eq!(reason.to_string(), text);
    }
    sys.kill(a.pid());
    sys.wait_exit(a.pid()).await;
}

/// `changes` moves with every change of the table (the simulation audits it only when it
/// moved): a spawn, a monitor, an exit.
#[tokio::test]
async fn the_process_table_change_count_moves_with_the_table() {
    let sys = System::new();
    let mut moved = must_move(|| sys.changes());
    let w = puppet(&sys);
    moved("spawn");
    let t = puppet(&sys);
    moved("second spawn");
    ask(&w, |tx| Cmd::Monitor(t.pid(), tx)).await;
    moved("monitor");
    sys.kill(t.pid());
    sys.wait_exit(t.pid()).await;
    moved("exit");
}

/// The table's oracles read what is there: live processes and their monitors, and none once a
/// process exits; `try_recv` takes what is queued without waiting.
#[tokio::test]
async fn the_table_lists_what_lives_and_forgets_what_exited() {
    let sys = System::new();
    let (w, t) = (puppet(&sys), puppet(&sys));
    assert_eq!(sys.live(), [(w.pid(), None), (t.pid(), None)]);
    ask(&w, |tx| Cmd::Monitor(t.pid(), tx)).await;
    assert_eq!(sys.monitor_count(t.pid()), 1);
    assert!(sys.is_alive(t.pid()));
    sys.kill(t.pid());
    sys.wait_exit(t.pid()).await;
    assert!(!sys.is_alive(t.pid()));
    assert_eq!(sys.live(), [(w.pid(), None)]);
    assert_eq!(sys.monitor_count(t.pid()), 0);

    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (out_tx, out_rx) = tokio::sync::oneshot::channel();
    let r = sys.spawn(4, move |mut ctx: Ctx<u32>| async move {
        let _ = go_rx.await;
        let taken: Vec<u32> = std::iter::from_fn(|| match ctx.try_recv() {
            Some(Received::Msg(m)) => Some(m),
            _ => None,
        })
        .collect();
        let _ = out_tx.send(taken);
        ExitReason::Normal
    });
    r.try_send(1).unwrap();
    r.try_send(2).unwrap();
    go_tx.send(()).unwrap();
    assert_eq!(out_rx.await.unwrap(), [1, 2]);
}
