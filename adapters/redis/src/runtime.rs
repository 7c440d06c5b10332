//! The runtime the stores' background work runs on: Tokio or smol, chosen by feature (and,
//! with both, by whether the caller is inside a Tokio runtime — the rule the `redis` crate
//! follows for its connections).

use core::future::Future;
use core::time::Duration;

#[cfg(not(any(feature = "tokio", feature = "smol")))]
compile_error!("storecast-redis needs a runtime: enable the `tokio` or the `smol` feature");

#[derive(Clone, Copy, Debug)]
enum Runtime {
    #[cfg(feature = "tokio")]
    Tokio,
    #[cfg(feature = "smol")]
    Smol,
}

impl Runtime {
    fn locate() -> Runtime {
        #[cfg(all(feature = "tokio", feature = "smol"))]
        {
            if tokio::runtime::Handle::try_current().is_ok() {
                Runtime::Tokio
            } else {
                Runtime::Smol
            }
        }
        #[cfg(all(feature = "tokio", not(feature = "smol")))]
        {
            Runtime::Tokio
        }
        #[cfg(all(feature = "smol", not(feature = "tokio")))]
        {
            Runtime::Smol
        }
    }
}

/// Runs `task` in the background until it finishes.
pub(crate) fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    match Runtime::locate() {
        #[cfg(feature = "tokio")]
        Runtime::Tokio => drop(tokio::spawn(task)),
        #[cfg(feature = "smol")]
        Runtime::Smol => smol::spawn(task).detach(),
    }
}

/// Waits for `duration`.
pub(crate) async fn sleep(duration: Duration) {
    match Runtime::locate() {
        #[cfg(feature = "tokio")]
        Runtime::Tokio => tokio::time::sleep(duration).await,
        #[cfg(feature = "smol")]
        Runtime::Smol => drop(smol::Timer::after(duration).await),
    }
}

/// `future`'s output, or `None` if it takes longer than `limit`.
pub(crate) async fn timeout<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    futures_lite::future::or(async { Some(future.await) }, async {
        sleep(limit).await;
        None
    })
    .await
}

/// Delays between reconnection attempts: doubling from `min` up to `max`, each one drawn
/// between half and all of that ("equal jitter"), so that the processes a Redis restart
/// disconnected at once do not all come back at the same instants.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// Sleeps for about the current delay and doubles it for next time.
    pub(crate) async fn wait(&mut self) {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        sleep(jittered(delay)).await;
    }

    /// Back to the shortest delay, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A delay between half and all of `delay`, drawn at random.
fn jittered(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A fresh `RandomState` is seeded from the operating system's randomness once per
    // thread and then stepped: plenty for spreading reconnections.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = delay / 2;
    half + half.mul_f64((random >> 11) as f64 / (1u64 << 53) as f64)
}

/// `future` on the heap with its type erased. The `redis` crate's connecting futures are
/// deeply nested types; erased, they keep the types of futures that hold them (a store's
/// open, an application's task) shallow enough for the compiler's limits.
pub(crate) fn erased<'a, T>(
    future: impl std::future::Future<Output = T> + Send + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>> {
    Box::pin(future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_delays_stay_between_half_and_all_and_differ() {
        let delay = Duration::from_millis(800);
        let drawn: Vec<_> = (0..100).map(|_| jittered(delay)).collect();
        assert!(
            drawn.iter().all(|d| *d >= delay / 2 && *d <= delay),
            "{drawn:?}"
        );
        let first = drawn[0];
        assert!(drawn.iter().any(|d| *d != first), "no jitter: {drawn:?}");
    }
}
