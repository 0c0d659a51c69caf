//! Client text in log lines: escaped and cut to size ([`Untrusted`]), and warnings a client can
//! trigger at will kept to a budget per peer ([`WarnBudget`]).
//!
//! Owns how bytes that came from a client appear in a log line. Every `tracing` call that logs
//! client-supplied text (SDP, media events, topics, track ids, parse errors that quote input)
//! wraps it in [`Untrusted`], so raw ESC, CR, NUL or bidi controls never reach a terminal or a
//! log file, and one field is never longer than a few hundred bytes. It must never drop a line
//! silently: a budget that suppressed lines says how many at its next line or when it ends.

mod budget;
mod escape;
mod filter;

pub use budget::WarnBudget;
pub use escape::{Untrusted, UntrustedDebug, MAX_FIELD_BYTES};
pub use filter::DEFAULT_FILTER;
