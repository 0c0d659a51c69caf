//! A watch channel: one value, observers woken when it changes (shutdown flags, the
//! simulation's phases). Production uses tokio's. Under simulation tokio's cannot be used: it
//! spreads waiters over eight `Notify`s chosen by tokio's thread-local RNG, and that RNG is
//! seeded from a process-global counter, so a process that had already run one world woke the
//! next world's observers in another order than a fresh process did (the leak that made
//! in-process replays diverge). The simulated channel below has one `Notify` and wakes its
//! observers in the order they started waiting; it must never draw randomness or touch state
//! shared between worlds.

#[cfg(not(madsim))]
pub use tokio::sync::watch::*;

#[cfg(madsim)]
pub use sim::*;

#[cfg(madsim)]
mod sim {
    use std::fmt;
    use std::ops::Deref;
    use std::sync::{Arc, Mutex, MutexGuard};

    use tokio::sync::Notify;

    pub mod error {
        use std::fmt;

        /// The sender is gone and no change is left to see.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct RecvError(pub(super) ());

        impl fmt::Display for RecvError {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("channel closed")
            }
        }

        impl std::error::Error for RecvError {}

        /// Every receiver is gone; the value is handed back.
        #[derive(PartialEq, Eq, Clone, Copy)]
        pub struct SendError<T>(pub T);

        impl<T> fmt::Debug for SendError<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("SendError(..)")
            }
        }

        impl<T> fmt::Display for SendError<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("channel closed")
            }
        }

        impl<T> std::error::Error for SendError<T> {}
    }

    use error::{RecvError, SendError};

    struct State<T> {
        value: T,
        version: u64,
        sender_gone: bool,
        receivers: usize,
    }

    struct Shared<T> {
        state: Mutex<State<T>>,
        notify: Notify,
    }

    impl<T> Shared<T> {
        fn lock(&self) -> MutexGuard<'_, State<T>> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    pub struct Sender<T> {
        shared: Arc<Shared<T>>,
    }

    pub struct Receiver<T> {
        shared: Arc<Shared<T>>,
        seen: u64,
    }

    /// A borrowed value; holds the channel's lock, so keep it short.
    pub struct Ref<'a, T> {
        guard: MutexGuard<'a, State<T>>,
    }

    impl<T> Deref for Ref<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.guard.value
        }
    }

    pub fn channel<T>(init: T) -> (Sender<T>, Receiver<T>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                value: init,
                version: 0,
                sender_gone: false,
                receivers: 1,
            }),
            notify: Notify::new(),
        });
        (
            Sender {
                shared: shared.clone(),
            },
            Receiver { shared, seen: 0 },
        )
    }

    impl<T> Sender<T> {
        /// Sets the value and wakes every observer; fails if no receiver is left.
        pub fn send(&self, value: T) -> Result<(), SendError<T>> {
            if self.shared.lock().receivers == 0 {
                return Err(SendError(value));
            }
            self.send_replace(value);
            Ok(())
        }

        /// Sets the value whether or not anyone observes it, returning the old one.
        pub fn send_replace(&self, value: T) -> T {
            let old = {
                let mut s = self.shared.lock();
                s.version += 1;
                std::mem::replace(&mut s.value, value)
            };
            self.shared.notify.notify_waiters();
            old
        }

        pub fn borrow(&self) -> Ref<'_, T> {
            Ref {
                guard: self.shared.lock(),
            }
        }

        /// A new receiver that has seen the current value.
        pub fn subscribe(&self) -> Receiver<T> {
            let mut s = self.shared.lock();
            s.receivers += 1;
            Receiver {
                shared: self.shared.clone(),
                seen: s.version,
            }
        }

        pub fn receiver_count(&self) -> usize {
            self.shared.lock().receivers
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            self.shared.lock().sender_gone = true;
            self.shared.notify.notify_waiters();
        }
    }

    impl<T> Receiver<T> {
        pub fn borrow(&self) -> Ref<'_, T> {
            Ref {
                guard: self.shared.lock(),
            }
        }

        pub fn borrow_and_update(&mut self) -> Ref<'_, T> {
            let guard = self.shared.lock();
            self.seen = guard.version;
            Ref { guard }
        }

        /// Waits for a value this receiver has not seen; fails once the sender is gone
        /// without one.
        pub async fn changed(&mut self) -> Result<(), RecvError> {
            loop {
                let notified = self.shared.notify.notified();
                tokio::pin!(notified);
                // Registered before looking, so a change in between is not missed.
                notified.as_mut().enable();
                {
                    let s = self.shared.lock();
                    if s.version != self.seen {
                        self.seen = s.version;
                        return Ok(());
                    }
                    if s.sender_gone {
                        return Err(RecvError(()));
                    }
                }
                notified.await;
            }
        }

        /// Waits until the value satisfies `f` (checking the current one first).
        pub async fn wait_for(
            &mut self,
            mut f: impl FnMut(&T) -> bool,
        ) -> Result<Ref<'_, T>, RecvError> {
            loop {
                let ok = {
                    let s = self.shared.lock();
                    self.seen = s.version;
                    f(&s.value)
                };
                if ok {
                    break;
                }
                self.changed().await?;
            }
            Ok(self.borrow())
        }
    }

    impl<T> Clone for Receiver<T> {
        fn clone(&self) -> Self {
            self.shared.lock().receivers += 1;
            Receiver {
                shared: self.shared.clone(),
                seen: self.seen,
            }
        }
    }

    impl<T> Drop for Receiver<T> {
        fn drop(&mut self) {
            self.shared.lock().receivers -= 1;
        }
    }

    impl<T> fmt::Debug for Sender<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("watch::Sender")
        }
    }

    impl<T> fmt::Debug for Receiver<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("watch::Receiver")
        }
    }
}
