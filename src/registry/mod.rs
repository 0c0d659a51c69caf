//! The global process registry, with `:global` semantics for one node.
//!
//! Owns the map name → process and its lifecycle: atomic registration (a lost race answers
//! `AlreadyStarted(winner)`), release of a process's name when it exits and before its
//! monitors see DOWN, and generation checks so a late cleanup never removes a newer
//! registration. [`Registry::whereis_or_start`] is the tutorial's join logic.
//!
//! It never holds its lock across an await, and never runs a process's code under it.

mod names;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::rt::probe::{self, Event, RegId, ReleaseBy};
use crate::rt::{self, Addr, Counted, Ctx, ExitReason, Pid, System};
use names::{Names, Refused};

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError<M> {
    /// Another process holds the name: the winner of the race.
    #[error("name already registered to {}", .0.pid())]
    AlreadyStarted(Addr<M>),
    /// The process already holds another name (one name per process).
    #[error("process already registered as {0:?}")]
    AlreadyNamed(String),
    /// The process is not alive.
    #[error("process is not alive")]
    Noproc,
    /// The registry already holds its most names (see [`Registry::bounded`]).
    #[error("the registry holds its limit of {0} names")]
    Full(usize),
}

/// Why starting a named process failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError<M> {
    #[error("already started as {}", .0.pid())]
    AlreadyStarted(Addr<M>),
    /// The registry holds its most names: nothing new may start until one is released.
    #[error("the registry holds its limit of {0} names")]
    Full(usize),
    #[error("failed to start: {0}")]
    Failed(String),
}

/// A start failure other than losing the race, surfaced by [`Registry::whereis_or_start`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The name is not running and the registry is at its limit of names.
    #[error("cannot start {name:?}: the registry holds its limit of {max} names")]
    Full { name: String, max: usize },
    #[error("failed to start {name:?}: {reason}")]
    Failed { name: String, reason: String },
}

/// Names → processes accepting `M`. Cheap to clone; clones share the table.
pub struct Registry<M> {
    sys: System,
    names: Arc<Mutex<Counted<Names<Addr<M>>>>>,
    /// Most names held at once; a registration of a new name beyond it is refused.
    max_names: usize,
    /// Names this registry in probe events.
    id: RegId,
}

impl<M> Clone for Registry<M> {
    fn clone(&self) -> Self {
        Registry {
            sys: self.sys.clone(),
            names: self.names.clone(),
            max_names: self.max_names,
            id: self.id,
        }
    }
}

impl<M> fmt::Debug for Registry<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Registry")
    }
}

impl<M: Send + 'static> Registry<M> {
    pub fn new(sys: &System) -> Self {
        Registry::bounded(sys, usize::MAX)
    }

    /// A registry that holds at most `max_names` names at once: registering one more is
    /// refused with [`RegisterError::Full`] (checked under the table's lock, so racing
    /// registrations never overshoot). A name is freed as usual, when its process exits or
    /// gives it up.
    pub fn bounded(sys: &System, max_names: usize) -> Self {
        Registry {
            sys: sys.clone(),
            names: Arc::new(Mutex::new(Counted::default())),
            max_names,
            id: probe::next_reg(),
        }
    }

    /// How many names are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no name is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A count that moves whenever the names may have changed (see [`Counted`]).
    pub fn changes(&self) -> u64 {
        self.lock().changes()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Counted<Names<Addr<M>>>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process registered under `name`, if any. It may die right after: sends must
    /// tolerate a dead target (R4).
    pub fn whereis(&self, name: &str) -> Option<Addr<M>> {
        self.lock().get(name).map(|e| e.addr.clone())
    }

    /// Registers `addr` under `name`, atomically: of racing registrations exactly one wins,
    /// the others get `AlreadyStarted(winner)`. The name is released when the process exits.
    pub fn register(&self, name: &str, addr: &Addr<M>) -> Result<(), RegisterError<M>> {
        let mut names = self.lock();
        // A held name answers `AlreadyStarted` below whatever the count: only new names count.
        if names.len() >= self.max_names && names.get(name).is_none() {
            return Err(RegisterError::Full(self.max_names));
        }
        let gen = names
            .insert(name, addr.pid(), addr.clone())
            .map_err(|r| match r {
                Refused::Taken(a) => RegisterError::AlreadyStarted(a),
                Refused::PidNamed(n) => RegisterError::AlreadyNamed(n),
            })?;
        // The hook is added under the names lock, so a process exiting concurrently either
        // runs it (and frees the name) or is already dead (and we undo the grant).
        let table = self.names.clone();
        let (n, pid) = (name.to_string(), addr.pid());
        let (sys, reg) = (self.sys.id(), self.id);
        probe::emit(Event::NameRegistered {
            sys,
            reg,
            name,
            pid,
            gen,
        });
        let hook = Box::new(move |_: &crate::rt::ExitReason| {
            let removed = table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .release(&n, pid, gen)
                .map(|e| (e.pid, e.gen));
            probe::emit(Event::NameReleased {
                sys,
                reg,
                name: &n,
                pid,
                gen,
                removed,
                by: ReleaseBy::Exit,
            });
        });
        match self.sys.add_exit_hook(pid, hook) {
            Some(id) => {
                names.set_hook(name, gen, id);
                Ok(())
            }
            None => {
                let removed = names.release(name, pid, gen).map(|e| (e.pid, e.gen));
                probe::emit(Event::NameReleased {
                    sys,
                    reg,
                    name,
                    pid,
                    gen,
                    removed,
                    by: ReleaseBy::Undo,
                });
                Err(RegisterError::Noproc)
            }
        }
    }

    /// The table's own bookkeeping, for the simulation's per-tick check: every grant has the
    /// exit hook that releases it attached to its live holder (a grant without one would
    /// outlive its process; one whose id was not recorded could never be detached). Empty
    /// when sound.
    pub fn audit(&self) -> Vec<String> {
        let names = self.lock();
        names
            .iter()
            .filter_map(|(name, e)| match e.hook {
                None => Some(format!(
                    "{name:?} granted to {} without its exit hook",
                    e.pid
                )),
                Some(id) if !self.sys.has_exit_hook(e.pid, id) => Some(format!(
                    "{name:?} granted to {} records exit hook {id}, which {} does not carry",
                    e.pid, e.pid
                )),
                Some(_) => None,
            })
            .collect()
    }

    /// Removes `name` whoever holds it (idempotent).
    pub fn unregister(&self, name: &str) {
        let removed = self.lock().remove(name);
        probe::emit(Event::NameUnregistered {
            sys: self.sys.id(),
            reg: self.id,
            name,
            removed: removed.as_ref().map(|e| (e.pid, e.gen)),
        });
        self.detach(removed);
    }

    fn detach(&self, removed: Option<names::Entry<Addr<M>>>) {
        if let Some(names::Entry {
            pid,
            hook: Some(id),
            ..
        }) = removed
        {
            self.sys.remove_exit_hook(pid, id);
        }
    }

    /// Removes `name` only if `pid` holds it: a process giving up its own name cannot remove
    /// a successor's.
    pub fn unregister_own(&self, name: &str, pid: Pid) -> bool {
        let removed = {
            let mut names = self.lock();
            match names.get(name) {
                Some(e) if e.pid == pid => {
                    let gen = e.gen;
                    names.release(name, pid, gen).map(|e| (gen, e))
                }
                _ => None,
            }
        };
        if let Some((gen, e)) = &removed {
            probe::emit(Event::NameReleased {
                sys: self.sys.id(),
                reg: self.id,
                name,
                pid,
                gen: *gen,
                removed: Some((e.pid, e.gen)),
                by: ReleaseBy::Owner,
            });
        }
        let removed = removed.map(|(_, e)| e);
        let found = removed.is_some();
        self.detach(removed);
        found
    }

    /// Starts a process registered as `name`: the name is taken before the body first runs,
    /// so a loser of the race never runs at all.
    pub fn start<F, Fut>(
        &self,
        name: &str,
        capacity: usize,
        body: F,
    ) -> Result<Addr<M>, StartError<M>>
    where
        F: FnOnce(Ctx<M>) -> Fut + Send + 'static,
        Fut: Future<Output = ExitReason> + Send + 'static,
    {
        self.start_prepared(name, self.sys.prepare::<M>(capacity), body)
    }

    /// [`Registry::start`] for a process already prepared (its pid known, e.g. written into a
    /// cluster-wide claim first). A loser never runs: the prepared process ends `Normal`.
    pub fn start_prepared<F, Fut>(
        &self,
        name: &str,
        p: rt::Prepared<M>,
        body: F,
    ) -> Result<Addr<M>, StartError<M>>
    where
        F: FnOnce(Ctx<M>) -> Fut + Send + 'static,
        Fut: Future<Output = ExitReason> + Send + 'static,
    {
        let addr = p.addr();
        match self.register(name, &addr) {
            Ok(()) => {
                // The label outlives the name: a process that gave up its name is still a
                // process started as `name` until it exits.
                self.sys.set_label(addr.pid(), name);
                p.start(body);
                Ok(addr)
            }
            Err(RegisterError::AlreadyStarted(winner)) => {
                probe::emit(Event::StartLostRace {
                    sys: self.sys.id(),
                    loser: addr.pid(),
                    winner: winner.pid(),
                });
                Err(StartError::AlreadyStarted(winner))
            }
            Err(RegisterError::Full(max)) => Err(StartError::Full(max)),
            Err(e) => Err(StartError::Failed(e.to_string())),
        }
    }

    /// The tutorial's join logic: look `name` up; if absent, `start` it; if the start loses
    /// the race (`AlreadyStarted(winner)`), use the winner; any other failure (the registry at
    /// its limit included) is an error.
    pub async fn whereis_or_start<F>(&self, name: &str, start: F) -> Result<Addr<M>, JoinError>
    where
        F: FnOnce() -> Result<Addr<M>, StartError<M>>,
    {
        if let Some(addr) = self.whereis(name) {
            return Ok(addr);
        }
        // Another joiner may start the same room between the lookup and our start.
        rt::race_point().await;
        match start() {
            Ok(addr) => Ok(addr),
            Err(StartError::AlreadyStarted(addr)) => {
                tracing::debug!(name, winner = %addr.pid(), "start lost the registration race");
                Ok(addr)
            }
            Err(StartError::Full(max)) => Err(JoinError::Full {
                name: name.to_string(),
                max,
            }),
            Err(StartError::Failed(reason)) => Err(JoinError::Failed {
                name: name.to_string(),
                reason,
            }),
        }
    }

    /// A snapshot of (name, pid), in name order (for oracles and diagnostics).
    pub fn entries(&self) -> Vec<(String, Pid)> {
        self.lock()
            .iter()
            .map(|(n, e)| (n.to_string(), e.pid))
            .collect()
    }
}
