//! etcd as the cluster's coordination engine, spoken over its v3 JSON gateway (plain HTTP/1.1,
//! no gRPC codegen, so a fresh machine builds the server with nothing new installed).
//!
//! `gateway` holds the wire bodies, shared with the simulation's etcd model.

pub mod gateway;
