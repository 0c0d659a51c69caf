//! Shared plumbing of the wire tests: a server per test ([`server::TestServer`]), the Node
//! drivers running the real JS clients ([`driver::Driver`]), raw HTTP requests ([`http`]) and
//! snapshot transcripts ([`transcript::Transcript`]).

pub mod driver;
pub mod http;
pub mod server;
pub mod transcript;

/// Held by the tests that push real media over loopback UDP (`media`, `e2e`): the lossless
/// forwarding check must not share two cores with a browser run, or the kernel drops packets.
pub fn media_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `body` with insta writing to `snapshots/` at the repo root, without a module prefix.
#[macro_export]
macro_rules! with_snapshot_dir {
    ($body:block) => {
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"),
            prepend_module_to_snapshot => false,
        }, $body)
    };
}
