//! videoroom: a video-conferencing server after the Membrane videoroom tutorial.
//!
//! Decisions live in sans-IO cores (`phoenix`, `engine`, the registry's name table); actors
//! (`conn`, `channel`, `room`) are thin drivers around them; `rt` is the one runtime seam
//! (tokio in production, madsim under `--cfg madsim`). `http` and `server` are the production
//! edge and are never used by the simulation.

pub mod app;
pub mod channel;
pub mod cluster;
pub mod conn;
pub mod engine;
#[cfg(feature = "media-webrtc")]
pub mod fabric;
pub mod http;
pub mod join_token;
pub mod logsafe;
pub mod messages;
pub mod metrics;
pub mod per_source;
pub mod phoenix;
pub mod plain_json;
pub mod registry;
pub mod room;
pub mod rt;
pub mod server;
pub mod shared_text;
pub mod turn;
