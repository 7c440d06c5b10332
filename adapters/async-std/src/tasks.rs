//! Background work for a store on async-std tasks: forwarding a source into it, and
//! periodic submits (Tornado's `PeriodicCallback`).

use std::time::Duration;

use async_std::task::JoinHandle;
use futures_lite::Stream;
use storecast::{Store, drive};

/// Submits every item of `source` to `store`, in order (waiting for room if the store's
/// policy is to wait), until the source ends or the store closes (noticed while the source
/// is idle too). A value the store's transport could not take (Redis away) is submitted
/// again after a pause, never dropped. The task's result is how many items were
/// submitted.
pub fn forward<S, St>(store: S, source: St) -> JoinHandle<u64>
where
    S: Store + 'static,
    St: Stream<Item = S::Value> + Send + 'static,
{
    async_std::task::spawn(async move {
        let pause = |delay| async move {
            async_io::Timer::after(delay).await;
        };
        drive::forward(&store, source, pause).await
    })
}

/// Submits `make()` to `store` every `period` (the first after one period), until the
/// store closes. A value the store's transport could not take is submitted again on the
/// next tick. The task's result is how many values were submitted.
pub fn every<S, F>(store: S, period: Duration, make: F) -> JoinHandle<u64>
where
    S: Store + 'static,
    F: FnMut() -> S::Value + Send + 'static,
{
    async_std::task::spawn(async move {
        drive::on_ticks(&store, async_io::Timer::interval(period), make).await
    })
}
