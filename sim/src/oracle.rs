//! Safety oracles and coverage counters shared by the world's tasks. A violation is recorded
//! (not panicked) so the run can finish its trace and report every broken promise with the
//! seed that replays it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Inner {
    violations: Vec<String>,
    checks: u64,
    /// (client, join_ref) that must get exactly one phx_error (their room crashed).
    expected_errors: BTreeMap<(usize, String), bool>,
    /// Client-side branches reached (coverage the server's logs cannot see).
    reached: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Default)]
pub struct Oracles(Arc<Mutex<Inner>>);

impl Oracles {
    pub fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        let mut i = self.0.lock().unwrap();
        i.checks += 1;
        if !ok {
            i.violations.push(what());
        }
    }

    /// Counts a client-side branch reached (an Antithesis-style "sometimes" assertion).
    pub fn reached(&self, what: &'static str) {
        *self.0.lock().unwrap().reached.entry(what).or_default() += 1;
    }

    pub fn reached_counts(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap().reached.clone()
    }

    pub fn fail(&self, what: String) {
        self.check(false, || what);
    }

    pub fn expect_error(&self, client: usize, join_ref: String) {
        self.0
            .lock()
            .unwrap()
            .expected_errors
            .insert((client, join_ref), false);
    }

    pub fn errored(&self, client: usize, join_ref: &str) {
        if let Some(seen) = self
            .0
            .lock()
            .unwrap()
            .expected_errors
            .get_mut(&(client, join_ref.to_string()))
        {
            *seen = true;
        }
    }

    /// Expected errors not seen, excluding channels the client let go of meanwhile.
    pub fn missing_errors(&self, excused: impl Fn(usize, &str) -> bool) -> Vec<(usize, String)> {
        let i = self.0.lock().unwrap();
        i.expected_errors
            .iter()
            .filter(|((c, jr), seen)| !**seen && !excused(*c, jr))
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.0.lock().unwrap().violations.clone()
    }

    pub fn checks(&self) -> u64 {
        self.0.lock().unwrap().checks
    }
}
