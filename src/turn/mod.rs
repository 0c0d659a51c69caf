//! The integrated TURN server (UDP) that relay-only browsers reach the SFU through.
//!
//! `@jellyfish-dev/membrane-webrtc-js` hard-codes `iceTransportPolicy: "relay"` and takes its
//! ICE servers only from `offerData.integratedTurnServers`, so every browser leg is a TURN
//! allocation here whose relayed traffic goes to the SFU's own sockets. Nothing else is a
//! legitimate peer of a relay, and nothing else is reachable through one: see [`core`] for the
//! relay policy, [`auth`] for the credentials (one per live peer, revoked when it leaves) and
//! the stateless nonces.
//!
//! The driver (`server`, production builds) runs one task that reads the listening socket and
//! steps the sans-IO [`core::Core`]; each allocation's relay socket (`relay`) has a task that
//! hands what the SFU sends back to the core; a timer expires lifetimes. The core sits behind a
//! mutex held only for one step, never across an await.
//!
//! It must never: relay anywhere but the SFU's sockets (the fabric is the registry of those);
//! bind relay sockets anywhere but the configured relay IP; block the caller.

pub mod auth;
pub mod core;
pub mod stun;

// The driver needs real sockets and the fabric: production builds only. The codec, the
// credentials and the core build everywhere (the fuzz targets and any sans-IO use).
#[cfg(feature = "media-webrtc")]
pub mod batch;
#[cfg(feature = "media-webrtc")]
mod relay;
#[cfg(feature = "media-webrtc")]
mod server;

pub use self::core::{Config as TurnLimits, Stats as TurnStats};
#[cfg(feature = "media-webrtc")]
pub use self::server::{FromClient, TurnConfig, TurnCredentials, TurnError, TurnServer};
