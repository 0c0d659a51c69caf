//! The log filter the binary starts with when `RUST_LOG` is not set.

/// `info` for this server; nothing from the webrtc crates (`rtc`, `rtc_ice`, `rtc_dtls`, …
/// and `webrtc`: a directive matches every target it prefixes). They log client input (a
/// trickled `.local` candidate's name, a STUN datagram a client relayed to its own SFU socket)
/// verbatim and unbudgeted: 2,000 candidates made 120 MB of log in 5 s. What the media plane
/// needs to say, it says itself, escaped and budgeted ([`super::Untrusted`],
/// [`super::WarnBudget`]). `RUST_LOG=info,rtc=warn` brings them back for a diagnosis.
pub const DEFAULT_FILTER: &str = "info,rtc=off,webrtc=off";

#[cfg(test)]
mod tests {
    use tracing::subscriber::with_default;
    use tracing_subscriber::layer::SubscriberExt;

    use super::DEFAULT_FILTER;

    /// Counts the events that pass the filter.
    #[derive(Clone, Default)]
    struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn the_webrtc_crates_are_silent_and_the_server_is_not() {
        let passed = |f: &dyn Fn()| {
            let count = Count::default();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_subscriber::EnvFilter::new(DEFAULT_FILTER))
                .with(count.clone());
            with_default(subscriber, f);
            count.0.load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(passed(&|| tracing::warn!(target: "rtc_ice::agent", "x")), 0);
        assert_eq!(
            passed(&|| tracing::error!(target: "rtc_dtls::conn", "x")),
            0
        );
        assert_eq!(
            passed(&|| tracing::warn!(target: "rtc::peer_connection", "x")),
            0
        );
        assert_eq!(passed(&|| tracing::warn!(target: "webrtc::driver", "x")), 0);
        assert_eq!(
            passed(&|| tracing::info!(target: "videoroom::room", "x")),
            1
        );
        assert_eq!(
            passed(&|| tracing::warn!(target: "videoroom::engine", "x")),
            1
        );
        assert_eq!(
            passed(&|| tracing::debug!(target: "videoroom::room", "x")),
            0
        );
    }
}
