//! Coverage from the server's own log events: every `tracing` event the real code emits inside
//! a world is counted by its message, so a campaign can show which interesting branches it
//! reached (a lost registration race, a join racing a room's stop, a slow consumer...) without
//! any test hook in production code.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

#[derive(Clone, Default)]
pub struct Counts(pub Arc<Mutex<BTreeMap<String, u64>>>);

struct Message(Option<String>);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_string());
        }
    }
}

struct Counter(Counts);

impl<S: Subscriber> Layer<S> for Counter {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        // Only the product's own branches; the simulator's internals are not coverage.
        if !event.metadata().target().starts_with("videoroom") {
            return;
        }
        let mut m = Message(None);
        event.record(&mut m);
        if let Some(msg) = m.0 {
            *self.0 .0.lock().unwrap().entry(msg).or_default() += 1;
        }
    }
}

/// Counts events on this thread until the guard drops (a world runs on one thread).
pub fn install(counts: &Counts) -> tracing::subscriber::DefaultGuard {
    // Events only: with spans filtered out, madsim's per-task spans are never built, which
    // otherwise cost every task poll a trip through the registry.
    let only_events = tracing_subscriber::filter::filter_fn(|m| m.is_event());
    let subscriber =
        tracing_subscriber::registry().with(Counter(counts.clone()).with_filter(only_events));
    tracing::subscriber::set_default(subscriber)
}
