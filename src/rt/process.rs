//! Processes with Erlang semantics: pids, monitors, exit reasons and the crash boundary.
//!
//! A [`System`] is one node's process table. Its rules (research/dst.md, M1–M7):
//! - `monitor` returns a fresh ref and yields exactly one DOWN per monitor; monitoring a pid that
//!   is already dead yields DOWN `noproc` at once.
//! - after `demonitor` returns no DOWN for that ref is ever received (queued ones are flushed).
//! - when a process exits, its exit hooks (registry names) run first, then its monitors' DOWNs
//!   are sent, so a watcher that sees DOWN never finds the dead pid under a name.
//! - a watcher's own monitors die with it.
//! - a panic inside a process is caught at its boundary and becomes `Crashed(message)`.
//!
//! This module never blocks while holding its lock and never runs user code under it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use tokio::sync::oneshot;

use super::counted::Counted;
use super::mailbox::{mailbox, Addr, Blocked, DownSink, Inbox, Received};
use super::probe::{self, Event, SysId};

/// A process id, unique within its [`System`] and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pid(pub u64);

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.0)
    }
}

/// A monitor reference, unique within its [`System`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonitorRef(pub u64);

/// Why a process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// Its body returned normally.
    Normal,
    /// It was asked to stop and did.
    Shutdown,
    /// It was killed from outside ([`System::kill`]) or its task was dropped.
    Killed,
    /// It panicked; the panic message.
    Crashed(String),
    /// It chose to stop abnormally (its watchers should treat it as a failure).
    Error(String),
    /// It did not exist when the monitor was set up.
    Noproc,
}

impl ExitReason {
    /// Normal and Shutdown are clean stops; everything else is a failure.
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, ExitReason::Normal | ExitReason::Shutdown)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::Crashed(m) => write!(f, "crashed: {m}"),
            ExitReason::Error(m) => write!(f, "error: {m}"),
            ExitReason::Noproc => f.write_str("noproc"),
        }
    }
}

/// The notice a watcher gets when a monitored process ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Down {
    pub mref: MonitorRef,
    pub pid: Pid,
    pub reason: ExitReason,
}

/// Run when its process exits, with the reason (registry names, metrics).
pub(crate) type ExitHook = Box<dyn FnOnce(&ExitReason) + Send>;

struct Proc {
    sink: DownSink,
    kill: Option<oneshot::Sender<ExitReason>>,
    /// What the process is, for observers (e.g. the registered name it was started under).
    label: Option<String>,
    /// Monitors on this process: ref → watcher.
    monitors: BTreeMap<MonitorRef, Pid>,
    /// Monitors this process holds: ref → target.
    watching: BTreeMap<MonitorRef, Pid>,
    hooks: BTreeMap<u64, ExitHook>,
    waiters: Vec<oneshot::Sender<ExitReason>>,
}

#[derive(Default)]
struct Kernel {
    next_pid: u64,
    next_ref: u64,
    next_hook: u64,
    procs: BTreeMap<Pid, Proc>,
}

/// One node's process table. Cheap to clone; all clones share it.
#[derive(Clone)]
pub struct System {
    kernel: Arc<Mutex<Counted<Kernel>>>,
    /// Senders waiting for room in one of this table's mailboxes.
    blocked: Blocked,
    /// Names this table in probe events (per world).
    id: SysId,
}

impl Default for System {
    fn default() -> Self {
        let id = probe::next_sys();
        probe::emit(Event::SystemStarted { sys: id });
        System {
            kernel: Arc::default(),
            blocked: Blocked::default(),
            id,
        }
    }
}

impl fmt::Debug for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "System({} live)", self.live_count())
    }
}

impl System {
    pub fn new() -> Self {
        Self::default()
    }

    /// This table's id in probe events.
    pub fn id(&self) -> SysId {
        self.id
    }

    /// A count that moves whenever the table may have changed (see [`Counted`]).
    pub fn changes(&self) -> u64 {
        self.lock().changes()
    }

    fn lock(&self) -> MutexGuard<'_, Counted<Kernel>> {
        // A panic under this lock is a bug in this module, not in a process; keep going so the
        // crash boundary can still report it.
        self.kernel.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates a live process with an empty mailbox of `capacity` messages, not yet running.
    /// Registering a name before the body runs is what makes start-and-register atomic.
    pub fn prepare<M: Send + 'static>(&self, capacity: usize) -> Prepared<M> {
        let (kill_tx, kill_rx) = oneshot::channel();
        let mut k = self.lock();
        k.next_pid += 1;
        let pid = Pid(k.next_pid);
        let (addr, inbox) = mailbox(pid, capacity, self.blocked.clone());
        k.procs.insert(
            pid,
            Proc {
                sink: addr.down_sink(),
                kill: Some(kill_tx),
                label: None,
                monitors: BTreeMap::new(),
                watching: BTreeMap::new(),
                hooks: BTreeMap::new(),
                waiters: Vec::new(),
            },
        );
        drop(k);
        probe::emit(Event::ProcessPrepared { sys: self.id, pid });
        Prepared {
            sys: self.clone(),
            ctx: Some(Ctx {
                sys: self.clone(),
                me: addr,
                inbox,
                pending: BTreeSet::new(),
                flushed: BTreeSet::new(),
                #[cfg(madsim)]
                woken: None,
            }),
            kill_rx: Some(kill_rx),
        }
    }

    /// Spawns a process running `body`; returns its address.
    pub fn spawn<M, F, Fut>(&self, capacity: usize, body: F) -> Addr<M>
    where
        M: Send + 'static,
        F: FnOnce(Ctx<M>) -> Fut + Send + 'static,
        Fut: Future<Output = ExitReason> + Send + 'static,
    {
        let p = self.prepare(capacity);
        let addr = p.addr();
        p.start(body);
        addr
    }

    /// Ends `pid` with reason `Killed` (its body is dropped at its next poll). Returns false if
    /// it was not alive. Its monitors get DOWN once it has actually stopped.
    pub fn kill(&self, pid: Pid) -> bool {
        self.exit(pid, ExitReason::Killed)
    }

    /// Ends `pid` from outside with `reason` (Erlang's `exit/2` with an untrappable signal):
    /// its body is dropped at its next poll and its monitors get DOWN with `reason`. Returns
    /// false if it was not alive (or is already being ended).
    pub fn exit(&self, pid: Pid, reason: ExitReason) -> bool {
        let tx = self.lock().procs.get_mut(&pid).and_then(|p| p.kill.take());
        match tx {
            Some(tx) => {
                let _ = tx.send(reason);
                true
            }
            None => false,
        }
    }

    /// Tags a live process for observers (see [`System::labelled`]).
    pub fn set_label(&self, pid: Pid, label: &str) {
        if let Some(p) = self.lock().procs.get_mut(&pid) {
            p.label = Some(label.to_string());
        }
        probe::emit(Event::ProcessLabelled {
            sys: self.id,
            pid,
            label,
        });
    }

    /// Live processes carrying `label`, in pid order (an oracle: e.g. rooms of one name).
    pub fn labelled(&self, label: &str) -> Vec<Pid> {
        self.lock()
            .procs
            .iter()
            .filter(|(_, p)| p.label.as_deref() == Some(label))
            .map(|(pid, _)| *pid)
            .collect()
    }

    pub fn is_alive(&self, pid: Pid) -> bool {
        self.lock().procs.contains_key(&pid)
    }

    /// Number of live processes (an oracle for leaks).
    pub fn live_count(&self) -> usize {
        self.lock().procs.len()
    }

    /// Live processes with their labels, in pid order (names what a leak left behind).
    pub fn live(&self) -> Vec<(Pid, Option<String>)> {
        let k = self.lock();
        k.procs
            .iter()
            .map(|(pid, p)| (*pid, p.label.clone()))
            .collect()
    }

    /// `send`s waiting for room in a full mailbox of this table (an oracle: once every process
    /// has exited, a waiting sender waits forever).
    pub fn blocked_sends(&self) -> usize {
        self.blocked.count()
    }

    /// Checks the process table's own bookkeeping (an oracle, cheap enough to run often): every
    /// monitor on a live process belongs to a live watcher that holds it for that target, and
    /// every monitor a live process holds is on a live target that lists it. A dead watcher's
    /// monitors left on their targets (M7) or a half-removed monitor shows up here.
    pub fn audit(&self) -> Vec<String> {
        let k = self.lock();
        let mut bad = Vec::new();
        for (pid, p) in &k.procs {
            for (mref, watcher) in &p.monitors {
                let held = k.procs.get(watcher).and_then(|w| w.watching.get(mref));
                if held != Some(pid) {
                    let state = if k.procs.contains_key(watcher) {
                        "live"
                    } else {
                        "dead"
                    };
                    bad.push(format!(
                        "monitor {} on {pid} belongs to {watcher} ({state}), which does not hold it",
                        mref.0
                    ));
                }
            }
            for (mref, target) in &p.watching {
                let on = k.procs.get(target).and_then(|t| t.monitors.get(mref));
                if on != Some(pid) {
                    bad.push(format!(
                        "{pid} holds monitor {} on {target}, which does not list it",
                        mref.0
                    ));
                }
            }
        }
        bad
    }

    /// Number of monitors on `pid` (an oracle for leaked monitors).
    pub fn monitor_count(&self, pid: Pid) -> usize {
        self.lock().procs.get(&pid).map_or(0, |p| p.monitors.len())
    }

    /// Resolves with the exit reason once `pid` has exited (its names released and its DOWNs
    /// sent); at once with `Noproc` if it is not alive.
    pub async fn wait_exit(&self, pid: Pid) -> ExitReason {
        let rx = {
            let mut k = self.lock();
            match k.procs.get_mut(&pid) {
                None => return ExitReason::Noproc,
                Some(p) => {
                    let (tx, rx) = oneshot::channel();
                    p.waiters.push(tx);
                    rx
                }
            }
        };
        rx.await.unwrap_or(ExitReason::Killed)
    }

    /// Adds a hook run when `pid` exits, before its DOWNs are sent. `None` if `pid` is dead.
    pub(crate) fn add_exit_hook(&self, pid: Pid, hook: ExitHook) -> Option<u64> {
        let mut k = self.lock();
        k.next_hook += 1;
        let id = k.next_hook;
        let p = k.procs.get_mut(&pid)?;
        p.hooks.insert(id, hook);
        Some(id)
    }

    /// How many exit hooks `pid` carries (tests: a released name leaves no hook behind).
    #[cfg(test)]
    pub(crate) fn exit_hook_count(&self, pid: Pid) -> usize {
        self.lock().procs.get(&pid).map_or(0, |p| p.hooks.len())
    }

    /// Whether live `pid` carries the exit hook `id` (the registry's audit).
    pub(crate) fn has_exit_hook(&self, pid: Pid, id: u64) -> bool {
        self.lock()
            .procs
            .get(&pid)
            .is_some_and(|p| p.hooks.contains_key(&id))
    }

    pub(crate) fn remove_exit_hook(&self, pid: Pid, id: u64) {
        if let Some(p) = self.lock().procs.get_mut(&pid) {
            p.hooks.remove(&id);
        }
    }

    fn monitor(&self, watcher: &Addr<impl Send + 'static>, target: Pid) -> MonitorRef {
        let mut k = self.lock();
        k.next_ref += 1;
        let mref = MonitorRef(k.next_ref);
        let set = Event::MonitorSet {
            sys: self.id,
            mref,
            watcher: watcher.pid(),
            target,
        };
        if let Some(t) = k.procs.get_mut(&target) {
            t.monitors.insert(mref, watcher.pid());
            if let Some(w) = k.procs.get_mut(&watcher.pid()) {
                w.watching.insert(mref, target);
            }
            drop(k);
            probe::emit(set);
        } else {
            drop(k);
            probe::emit(set);
            probe::emit(Event::DownSent {
                sys: self.id,
                mref,
                watcher: watcher.pid(),
                pid: target,
            });
            (watcher.down_sink())(Down {
                mref,
                pid: target,
                reason: ExitReason::Noproc,
            });
        }
        mref
    }

    /// Removes the monitor; true if it was still active (so no DOWN was sent for it).
    fn demonitor(&self, watcher: Pid, mref: MonitorRef) -> bool {
        let mut k = self.lock();
        let Some(target) = k
            .procs
            .get_mut(&watcher)
            .and_then(|w| w.watching.remove(&mref))
        else {
            return false;
        };
        k.procs
            .get_mut(&target)
            .is_some_and(|t| t.monitors.remove(&mref).is_some())
    }

    /// Ends `pid`: forgets it, runs its exit hooks, then sends its DOWNs and wakes its waiters.
    fn finish(&self, pid: Pid, reason: ExitReason) {
        let mut k = self.lock();
        let Some(proc) = k.procs.remove(&pid) else {
            return;
        };
        // Its own monitors die with it (M7).
        for (mref, target) in &proc.watching {
            if let Some(t) = k.procs.get_mut(target) {
                t.monitors.remove(mref);
            }
        }
        let mut downs = Vec::new();
        for (mref, watcher) in &proc.monitors {
            if let Some(w) = k.procs.get_mut(watcher) {
                w.watching.remove(mref);
                downs.push((*mref, *watcher));
            }
        }
        drop(k);
        for hook in proc.hooks.into_values() {
            hook(&reason);
        }
        for (mref, watcher) in downs {
            let k = self.lock();
            // The watcher may have exited since; then its mailbox is gone with it.
            if let Some(w) = k.procs.get(&watcher) {
                probe::emit(Event::DownSent {
                    sys: self.id,
                    mref,
                    watcher,
                    pid,
                });
                (w.sink)(Down {
                    mref,
                    pid,
                    reason: reason.clone(),
                });
            }
        }
        for w in proc.waiters {
            let _ = w.send(reason.clone());
        }
        probe::emit(Event::ProcessExited {
            sys: self.id,
            pid,
            reason: &reason,
        });
    }
}

/// A process that exists (it has a pid, can be monitored and named) but is not running yet.
/// Dropping it without [`start`](Prepared::start) ends it with reason `Normal`.
pub struct Prepared<M: Send + 'static> {
    sys: System,
    ctx: Option<Ctx<M>>,
    kill_rx: Option<oneshot::Receiver<ExitReason>>,
}

impl<M: Send + 'static> Prepared<M> {
    pub fn pid(&self) -> Pid {
        self.addr().pid()
    }

    pub fn addr(&self) -> Addr<M> {
        self.ctx.as_ref().expect("not started").me.clone()
    }

    /// Runs `body` as this process. Its return value is the exit reason; a panic becomes
    /// `Crashed`, a kill `Killed` (or the reason given to [`System::exit`]).
    pub fn start<F, Fut>(mut self, body: F)
    where
        F: FnOnce(Ctx<M>) -> Fut + Send + 'static,
        Fut: Future<Output = ExitReason> + Send + 'static,
    {
        let ctx = self.ctx.take().expect("started once");
        let kill_rx = self.kill_rx.take().expect("started once");
        let guard = ExitGuard {
            sys: self.sys.clone(),
            pid: ctx.pid(),
            reason: None,
        };
        let (sys, pid) = (self.sys.id, ctx.pid());
        tokio::spawn(async move {
            let mut guard = guard;
            let run = AssertUnwindSafe(async move {
                probe::emit(Event::ProcessStarted { sys, pid });
                body(ctx).await
            })
            .catch_unwind();
            // Pinned here, the body is dropped when this task ends, just before the exit guard
            // (declared first, dropped last): a kill drops it in the same step as the exit
            // (hooks run, the name is freed, DOWNs go out), so no one ever finds the process
            // registered with its mailbox already closed.
            let mut run = std::pin::pin!(run);
            let reason = tokio::select! {
                biased;
                r = kill_rx => {
                    // Simulation: a killed process is scheduled late like any woken one (a
                    // loaded machine): until then it runs nothing, its mailbox still takes
                    // messages, and its exit comes a while after the kill was sent.
                    #[cfg(madsim)]
                    super::sim::lag().await;
                    r.unwrap_or(ExitReason::Killed)
                }
                r = &mut run => match r {
                    Ok(reason) => reason,
                    Err(panic) => {
                        let message = panic_message(&*panic);
                        // Every panic is a bug (injected faults use `exit`/`kill`): an observer
                        // must hear of it even though the boundary contains it.
                        probe::emit(Event::ProcessPanicked {
                            sys,
                            pid,
                            message: &message,
                        });
                        ExitReason::Crashed(message)
                    }
                },
            };
            guard.reason = Some(reason);
        });
    }
}

impl<M: Send + 'static> Drop for Prepared<M> {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            let pid = ctx.pid();
            drop(ctx);
            self.sys.finish(pid, ExitReason::Normal);
        }
    }
}

/// Finishes the process when its task ends, however it ends: returned, panicked, killed, or
/// dropped by the runtime (a madsim node kill drops futures without polling them again).
struct ExitGuard {
    sys: System,
    pid: Pid,
    reason: Option<ExitReason>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let reason = self.reason.take().unwrap_or(ExitReason::Killed);
        self.sys.finish(self.pid, reason);
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// A running process's view of itself: its mailbox, its address and its monitors.
pub struct Ctx<M> {
    sys: System,
    me: Addr<M>,
    inbox: Inbox<M>,
    /// Refs this process monitors whose DOWN it has not received yet.
    pending: BTreeSet<MonitorRef>,
    /// Refs demonitored after their DOWN was already queued: dropped when they come out.
    flushed: BTreeSet<MonitorRef>,
    /// Simulation: the envelope that woke an idle process, held while it is not yet scheduled
    /// (see `rt::sim::set_lag`); it comes out first, so an interrupted `recv` loses nothing.
    #[cfg(madsim)]
    woken: Option<Received<M>>,
}

impl<M: Send + 'static> Ctx<M> {
    pub fn pid(&self) -> Pid {
        self.me.pid()
    }

    pub fn addr(&self) -> Addr<M> {
        self.me.clone()
    }

    pub fn system(&self) -> &System {
        &self.sys
    }

    /// The next message or DOWN, in arrival order. Cancel-safe (usable in `select!`).
    pub async fn recv(&mut self) -> Received<M> {
        loop {
            #[cfg(madsim)]
            let r = self.next_lagged().await;
            #[cfg(not(madsim))]
            let r = self.inbox.recv().await;
            if let Some(r) = self.admit(r) {
                return r;
            }
        }
    }

    /// Simulation: a backlog is worked through at once, but an idle process woken by an
    /// envelope runs only after a scheduling delay (`rt::sim::set_lag`), as on a loaded
    /// machine; meanwhile more can queue behind it. Cancel-safe: the waking envelope is held in
    /// `woken` until taken.
    #[cfg(madsim)]
    async fn next_lagged(&mut self) -> Received<M> {
        if let Some(r) = self.woken.take().or_else(|| self.inbox.try_recv()) {
            return r;
        }
        let r = self.inbox.recv().await;
        self.woken = Some(r);
        super::sim::lag().await;
        self.woken.take().expect("held while lagging")
    }

    /// The next message or DOWN if one is queued.
    pub fn try_recv(&mut self) -> Option<Received<M>> {
        loop {
            #[cfg(madsim)]
            let r = match self.woken.take() {
                Some(r) => r,
                None => self.inbox.try_recv()?,
            };
            #[cfg(not(madsim))]
            let r = self.inbox.try_recv()?;
            if let Some(r) = self.admit(r) {
                return Some(r);
            }
        }
    }

    /// Monitors `target`: exactly one DOWN for the returned ref will arrive (at once, with
    /// `Noproc`, if `target` is not alive), unless [`demonitor`](Ctx::demonitor) is called.
    pub fn monitor(&mut self, target: Pid) -> MonitorRef {
        let mref = self.sys.monitor(&self.me, target);
        self.pending.insert(mref);
        mref
    }

    /// Cancels a monitor; afterwards no DOWN for `mref` is received, even one already queued.
    /// Returns true if the monitor was still active (its target had not exited).
    pub fn demonitor(&mut self, mref: MonitorRef) -> bool {
        if !self.pending.remove(&mref) {
            // Already received, already demonitored, or never ours: nothing can arrive.
            return false;
        }
        let active = self.sys.demonitor(self.pid(), mref);
        probe::emit(Event::Demonitored {
            sys: self.sys.id,
            mref,
            watcher: self.pid(),
            active,
        });
        if !active {
            // The target exited first: its DOWN is queued (or being queued) for us.
            self.flushed.insert(mref);
        }
        active
    }

    fn admit(&mut self, r: Received<M>) -> Option<Received<M>> {
        let (sys, me) = (self.sys.id, self.pid());
        match &r {
            Received::Down(d) => {
                if self.flushed.remove(&d.mref) {
                    return None;
                }
                if !self.pending.remove(&d.mref) {
                    probe::emit(Event::DownForUnknownMonitor {
                        sys,
                        mref: d.mref,
                        watcher: me,
                    });
                }
                probe::emit(Event::DownReceived {
                    sys,
                    mref: d.mref,
                    watcher: me,
                });
            }
            Received::Msg(_) => probe::emit(Event::MessageReceived { sys, pid: me }),
        }
        Some(r)
    }
}
