//! videoroom: a video-conferencing server after the Membrane videoroom tutorial.
//!
//! Decisions live in sans-IO cores (`phoenix`, `engine`, `registry` core); actors are thin drivers
//! around them; `rt` is the one runtime seam (tokio in production, madsim under `--cfg madsim`).

pub mod engine;
pub mod phoenix;
pub mod registry;
pub mod rt;
