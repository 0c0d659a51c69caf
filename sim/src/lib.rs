//! The deterministic simulation of videoroom (build with `RUSTFLAGS="--cfg madsim"` and its own
//! target dir). Scenarios run the real registry, processes, socket processes, channels and rooms
//! in a madsim world chosen by a seed; every run yields a trace whose digest is identical when
//! the seed is replayed.

pub mod campaign;
pub mod client;
pub mod coverage;
pub mod etcd_node;
pub mod faults;
pub mod knobs;
pub mod leases;
pub mod named;
pub mod oracle;
pub mod ownership;
pub mod registry_race;
pub mod scenarios;
pub mod server;
pub mod streams;
pub mod swarm;
pub mod tabs;
pub mod trace;
pub mod wire;
pub mod world;
