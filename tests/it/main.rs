//! Integration tests on real tokio (one test binary).

mod registry_model;
mod support;
