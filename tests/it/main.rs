//! Integration tests on real tokio (one test binary).

mod media;
mod registry_model;
