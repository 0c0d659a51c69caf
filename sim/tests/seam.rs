//! The runtime seam as the simulation runs it (`src/rt`, madsim build): its own watch channel
//! and its deadline waits stand in for tokio's, so they must keep tokio's promises. The worlds
//! lean on only part of them (a watch sender is never dropped while a receiver waits in the
//! worlds, a loop's deadline never moves earlier), and a seam that broke the rest would pass
//! every campaign and mislead the first code that relies on it.

use std::time::Duration;

use videoroom::rt::{sim, time, watch};

const LIMIT: Duration = Duration::from_secs(60);

/// Woken at `deadline`: madsim fires a timer a few nanoseconds after its instant.
fn woke_at(deadline: time::Instant) {
    let now = time::now();
    assert!(
        now >= deadline && now - deadline < Duration::from_millis(1),
        "woke {:?} after the deadline (before it if negative: {})",
        now.saturating_duration_since(deadline),
        now < deadline
    );
}

fn world<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    sim::run(1, LIMIT, f).unwrap_or_else(|panic| panic!("{panic}"));
}

#[test]
fn watch_counts_its_receivers_and_ends_their_waits_when_the_sender_goes() {
    world(|| async {
        let (tx, mut rx) = watch::channel(0u32);
        assert_eq!(tx.receiver_count(), 1);
        let other = tx.subscribe();
        assert_eq!(tx.receiver_count(), 2);
        let third = other.clone();
        assert_eq!(tx.receiver_count(), 3);
        drop((other, third));
        assert_eq!(tx.receiver_count(), 1);
        tx.send(1).unwrap();
        assert_eq!(rx.changed().await, Ok(()));
        let waiter = tokio::spawn(async move { rx.changed().await });
        // The waiter runs first and parks in `changed`, so the drop must wake it.
        tokio::task::yield_now().await;
        drop(tx);
        let ended = time::timeout(Duration::from_secs(1), waiter).await;
        assert!(
            matches!(ended, Some(Ok(Err(_)))),
            "a receiver waiting for a change must fail once the sender is gone: {ended:?}"
        );
    });
}

/// What a log line or an error chain shows of the simulated channel reads as tokio's does
/// (production's), so a message seen in a failing seed means what it means in production.
#[test]
fn watch_errors_read_as_tokios() {
    let (real_tx, real_rx) = tokio::sync::watch::channel(0u32);
    drop(real_rx);
    let real_send = real_tx.send(1).unwrap_err().to_string();
    let (real_tx, real_rx) = tokio::sync::watch::channel(0u32);
    drop(real_tx);
    let real_recv = real_rx.has_changed().unwrap_err().to_string();
    world(move || async move {
        let (tx, rx) = watch::channel(0u32);
        assert_eq!(format!("{tx:?}"), "watch::Sender");
        assert_eq!(format!("{rx:?}"), "watch::Receiver");
        drop(rx);
        let e = tx.send(1).unwrap_err();
        assert_eq!(e.to_string(), real_send);
        assert_eq!(format!("{e:?}"), "SendError(..)");
        let (tx, mut rx) = watch::channel(0u32);
        drop(tx);
        let e = rx.changed().await.unwrap_err();
        assert_eq!(e.to_string(), real_recv);
    });
}

#[test]
fn a_deadline_already_reached_does_not_wait() {
    world(|| async {
        let t0 = time::now();
        time::sleep_until(t0).await;
        time::sleep_until(t0 - Duration::from_millis(3)).await;
        assert_eq!(time::now(), t0, "a deadline that is now must not sleep");
        time::sleep_until(t0 + Duration::from_millis(7)).await;
        woke_at(t0 + Duration::from_millis(7));
    });
}

/// A loop's timer armed for a far deadline, then waited on for an earlier one (a deadline that
/// moved earlier): it wakes at the earlier one, not when the old timer fires.
#[test]
fn a_timer_wakes_at_a_deadline_moved_earlier() {
    world(|| async {
        let t0 = time::now();
        let mut timer = time::Timer::new();
        tokio::select! {
            biased;
            _ = timer.until(Some(t0 + Duration::from_secs(10))) => panic!("woke 10 s early"),
            _ = time::sleep(Duration::from_millis(1)) => {}
        }
        timer.until(Some(t0 + Duration::from_secs(1))).await;
        woke_at(t0 + Duration::from_secs(1));
    });
}
