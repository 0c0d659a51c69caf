//! The registry's core: a name table with generations, no locking, no processes.
//!
//! Invariants: a name maps to at most one holder; a pid holds at most one name (R1, R5); a
//! release carries the generation it was granted, so a late cleanup can never remove a newer
//! registration of the same name.

use std::collections::BTreeMap;

use crate::rt::Pid;

#[derive(Clone, Debug)]
pub(crate) struct Entry<A> {
    pub(crate) pid: Pid,
    pub(crate) gen: u64,
    pub(crate) addr: A,
    /// The exit hook that releases this grant, once attached.
    pub(crate) hook: Option<u64>,
}

#[derive(Debug)]
pub(crate) enum Refused<A> {
    Taken(A),
    PidNamed(String),
}

#[derive(Debug)]
pub(crate) struct Names<A> {
    by_name: BTreeMap<String, Entry<A>>,
    by_pid: BTreeMap<Pid, String>,
    next_gen: u64,
}

impl<A> Default for Names<A> {
    fn default() -> Self {
        Names {
            by_name: BTreeMap::new(),
            by_pid: BTreeMap::new(),
            next_gen: 0,
        }
    }
}

impl<A: Clone> Names<A> {
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Entry<A>> {
        self.by_name.get(name)
    }

    /// Grants `name` to `pid`; returns the generation to release it with.
    pub(crate) fn insert(&mut self, name: &str, pid: Pid, addr: A) -> Result<u64, Refused<A>> {
        if let Some(e) = self.by_name.get(name) {
            return Err(Refused::Taken(e.addr.clone()));
        }
        if let Some(other) = self.by_pid.get(&pid) {
            return Err(Refused::PidNamed(other.clone()));
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        self.by_name.insert(
            name.to_string(),
            Entry {
                pid,
                gen,
                addr,
                hook: None,
            },
        );
        self.by_pid.insert(pid, name.to_string());
        Ok(gen)
    }

    pub(crate) fn set_hook(&mut self, name: &str, gen: u64, hook: u64) {
        if let Some(e) = self.by_name.get_mut(name).filter(|e| e.gen == gen) {
            e.hook = Some(hook);
        }
    }

    /// Removes `name` only if it is still the grant `(pid, gen)`; returns whether it did.
    pub(crate) fn release(&mut self, name: &str, pid: Pid, gen: u64) -> Option<Entry<A>> {
        match self.by_name.get(name) {
            Some(e) if e.pid == pid && e.gen == gen => self.remove(name),
            _ => None,
        }
    }

    /// Removes `name` whoever holds it; returns the removed entry.
    pub(crate) fn remove(&mut self, name: &str) -> Option<Entry<A>> {
        let e = self.by_name.remove(name)?;
        self.by_pid.remove(&e.pid);
        Some(e)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Entry<A>)> {
        self.by_name.iter().map(|(n, e)| (n.as_str(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_release_keeps_newer_grant() {
        let mut n = Names::default();
        let g1 = n.insert("a", Pid(1), 1).unwrap();
        assert!(n.release("a", Pid(1), g1).is_some());
        let g2 = n.insert("a", Pid(2), 2).unwrap();
        assert!(n.release("a", Pid(1), g1).is_none(), "old holder's cleanup");
        assert_eq!(n.get("a").map(|e| e.pid), Some(Pid(2)));
        assert!(n.release("a", Pid(2), g2).is_some());
        assert!(n.get("a").is_none());
    }

    #[test]
    fn same_pid_same_name_new_generation() {
        let mut n = Names::default();
        let g1 = n.insert("a", Pid(1), ()).unwrap();
        n.remove("a");
        let g2 = n.insert("a", Pid(1), ()).unwrap();
        assert!(
            n.release("a", Pid(1), g1).is_none(),
            "first grant's hook must not free the second"
        );
        assert!(n.release("a", Pid(1), g2).is_some());
    }

    #[test]
    fn one_name_per_pid_and_per_name() {
        let mut n = Names::default();
        n.insert("a", Pid(1), 10).unwrap();
        assert!(matches!(n.insert("a", Pid(2), 20), Err(Refused::Taken(10))));
        assert!(matches!(n.insert("b", Pid(1), 10), Err(Refused::PidNamed(ref s)) if s == "a"));
    }
}
