//! Driving a store from elsewhere, as executor-agnostic futures: forwarding a stream into
//! it, and submitting on every tick of a timer (Tornado's `PeriodicCallback`). Runtime
//! adapters spawn these on their tasks, with their timers.

use core::future::poll_fn;
use core::pin::pin;

use futures_core::Stream;

use crate::Store;

/// Submits every item of `source` to `store`, in order (waiting for room if the store's
/// policy is to wait), until the source ends or the store closes. Returns how many items
/// were submitted.
///
/// ```
/// use futures_lite::{future::block_on, stream};
/// use storecast::{QueueStore, drive};
///
/// let store = QueueStore::new(8);
/// let sent = block_on(drive::forward(&store, stream::iter(["a", "b"])));
/// assert_eq!((sent, store.last_position().get()), (2, 2));
/// ```
pub async fn forward<S, St>(store: &S, source: St) -> u64
where
    S: Store,
    St: Stream<Item = S::Value>,
{
    let mut source = pin!(source);
    let mut submitted = 0;
    while let Some(value) = poll_fn(|cx| source.as_mut().poll_next(cx)).await {
        if store.submit(value).await.is_err() {
            break;
        }
        submitted += 1;
    }
    submitted
}

/// Submits `make()` to `store` on every tick of `ticks`, until the ticks end or the store
/// closes. Returns how many values were submitted.
pub async fn on_ticks<S, K, F>(store: &S, ticks: K, mut make: F) -> u64
where
    S: Store,
    K: Stream,
    F: FnMut() -> S::Value,
{
    let mut ticks = pin!(ticks);
    let mut submitted = 0;
    while !store.is_closed() {
        if poll_fn(|cx| ticks.as_mut().poll_next(cx)).await.is_none() {
            break;
        }
        if store.submit(make()).await.is_err() {
            break;
        }
        submitted += 1;
    }
    submitted
}
