//! The deterministic simulation of videoroom (build with `RUSTFLAGS="--cfg madsim"` and its own
//! target dir). Scenarios run the real registry, processes and (later) channels and rooms in a
//! madsim world chosen by a seed; every run yields a trace whose digest must be identical when
//! the seed is replayed.

pub mod registry_race;
pub mod trace;
