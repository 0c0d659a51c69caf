//! The node's table of what other nodes can reach here: local rooms by pid with their epoch
//! (and the claim behind each), room proxies by pid with their inbox, and which proxy holds each
//! monitor set across a link.
//!
//! Owns the lookups a link's consumer makes for every frame. It never runs process code and
//! never holds its lock across an await; entries leave through exit hooks, so a process that
//! exits (however it exits) is unreachable before its DOWNs go out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::wire::{ToProxy, ToRoom};
use crate::cluster::claims::RoomRecord;
use crate::cluster::dist::DownReason;
use crate::messages::RoomMsg;
use crate::rt::Addr;

/// A room this node owns through a claim.
#[derive(Debug, Clone)]
pub struct LocalRoom {
    pub name: String,
    pub epoch: u64,
    pub addr: Addr<RoomMsg>,
    /// What the claim wrote, for the release's compare.
    pub record: RoomRecord,
    /// The lease the claim is on.
    pub lease: i64,
}

/// What a proxy takes from its link, in the link's order: a message for it, or the DOWN of a
/// monitor it holds across the link, by its ref (after the messages that preceded it on the
/// link, so a DOWN never overtakes what the same far process sent before it exited).
#[derive(Debug)]
pub enum Inbound<T> {
    Msg(T),
    Down { mref: u64, reason: DownReason },
}

/// Where frames for a proxy go.
#[derive(Debug, Clone)]
pub enum Inbox {
    /// A room proxy, standing for a remote room.
    Room(mpsc::Sender<Inbound<ToProxy>>),
    /// A channel proxy, standing in a local room for a remote channel.
    Channel(mpsc::Sender<Inbound<ToRoom>>),
}

impl Inbox {
    /// Queues the DOWN of the proxy's link monitor `mref`; false if the inbox is full or gone.
    pub fn down(&self, mref: u64, reason: DownReason) -> bool {
        match self {
            Inbox::Room(tx) => tx.try_send(Inbound::Down { mref, reason }).is_ok(),
            Inbox::Channel(tx) => tx.try_send(Inbound::Down { mref, reason }).is_ok(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    rooms: BTreeMap<u64, LocalRoom>,
    proxies: BTreeMap<u64, Inbox>,
    /// Link monitor ref → the local proxy that holds it.
    monitors: BTreeMap<u64, u64>,
    /// The node drains: no room is added any more.
    draining: bool,
}

/// Cheap to clone; clones share the table.
#[derive(Debug, Clone, Default)]
pub struct Exports(Arc<Mutex<Inner>>);

impl Exports {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a room this node has claimed; false once the node drains. A claim in flight when
    /// the drain began can be won after it, and its room must then not start: the drain ends
    /// only the rooms [`Exports::drain`] listed.
    pub fn add_room(&self, pid: u64, room: LocalRoom) -> bool {
        let mut t = self.lock();
        if !t.draining {
            t.rooms.insert(pid, room);
        }
        !t.draining
    }

    /// Takes no room from now on, and lists those held (in pid order), in one step: no room
    /// is added after the list is taken.
    pub fn drain(&self) -> Vec<(u64, LocalRoom)> {
        let mut t = self.lock();
        t.draining = true;
        t.rooms.iter().map(|(p, r)| (*p, r.clone())).collect()
    }

    pub fn draining(&self) -> bool {
        self.lock().draining
    }

    /// Removes the room exported as `pid`, returning it (once).
    pub fn remove_room(&self, pid: u64) -> Option<LocalRoom> {
        self.lock().rooms.remove(&pid)
    }

    pub fn room(&self, pid: u64) -> Option<LocalRoom> {
        self.lock().rooms.get(&pid).cloned()
    }

    /// The lease `pid`'s claim is on, if `pid` is a room this node owns.
    pub fn room_lease(&self, pid: u64) -> Option<i64> {
        self.lock().rooms.get(&pid).map(|r| r.lease)
    }

    /// Every room exported now (fencing ends them all).
    pub fn rooms(&self) -> Vec<(u64, LocalRoom)> {
        let mut all: Vec<_> = self
            .lock()
            .rooms
            .iter()
            .map(|(p, r)| (*p, r.clone()))
            .collect();
        all.sort_by_key(|(p, _)| *p);
        all
    }

    pub fn room_count(&self) -> usize {
        self.lock().rooms.len()
    }

    pub fn add_proxy(&self, pid: u64, inbox: Inbox) {
        self.lock().proxies.insert(pid, inbox);
    }

    pub fn proxy(&self, pid: u64) -> Option<Inbox> {
        self.lock().proxies.get(&pid).cloned()
    }

    /// Forgets proxy `pid` and every monitor it holds; returns those monitor refs.
    pub fn remove_proxy(&self, pid: u64) -> Vec<u64> {
        let mut inner = self.lock();
        inner.proxies.remove(&pid);
        let mrefs: Vec<u64> = inner
            .monitors
            .iter()
            .filter(|(_, p)| **p == pid)
            .map(|(m, _)| *m)
            .collect();
        for m in &mrefs {
            inner.monitors.remove(m);
        }
        mrefs
    }

    pub fn add_monitor(&self, mref: u64, pid: u64) {
        self.lock().monitors.insert(mref, pid);
    }

    /// The proxy holding monitor `mref`, forgotten with it (a monitor ends once).
    pub fn take_monitor(&self, mref: u64) -> Option<u64> {
        self.lock().monitors.remove(&mref)
    }

    /// Entries held now: (rooms, proxies, monitors), for leak checks.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        (inner.rooms.len(), inner.proxies.len(), inner.monitors.len())
    }
}
