//! Shared plumbing of the wire tests: a server per test ([`server::TestServer`]), the Node
//! drivers running the real JS clients ([`driver::Driver`]), raw HTTP requests ([`http`]) and
//! snapshot transcripts ([`transcript::Transcript`]).

pub mod driver;
pub mod etcd;
pub mod http;
pub mod logs;
pub mod node_proc;
pub mod rooms;
pub mod server;
#[cfg(feature = "media-webrtc")]
pub mod sfu_peer;
pub mod transcript;
#[cfg(feature = "media-webrtc")]
pub mod turn_client;

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

/// Held by the tests that push real media over loopback (`media`, `media_server`, `e2e`): each
/// needs the machine's CPU to itself for its few seconds, or a starved receiver on a busy
/// 2-core runner reads as SFU loss. Async tests `lock().await`; sync ones `blocking_lock()`.
#[cfg(feature = "media-webrtc")]
pub static MEDIA_EXCLUSIVE: net_tokio::sync::Mutex<()> = net_tokio::sync::Mutex::const_new(());
