//! etcd as the cluster's coordination engine, spoken over its v3 JSON gateway (plain HTTP/1.1,
//! no gRPC codegen, so a fresh machine builds the server with nothing new installed).
//!
//! `gateway` holds the wire bodies, shared with the simulation's etcd model.

/// Gateway calls with endpoint fallback and a per-call timeout; never retries an unknown fate.
pub mod client;
/// The scripted scenario and transcript normaliser that hold the model to real etcd.
pub mod conformance;
pub mod gateway;
/// HTTP/1.1 framing for one request per connection, both sides (the simulation serves the model).
pub mod http;
/// etcd 3.4's semantics, sans-IO, for the deterministic simulation (never in the server binary).
#[cfg(any(test, feature = "etcd-model"))]
pub mod model;
