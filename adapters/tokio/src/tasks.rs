//! Background work for a store on Tokio tasks: forwarding a source into it, and periodic
//! submits (Tornado's `PeriodicCallback`).

use std::time::Duration;

use futures_lite::Stream;
use storecast::{Store, drive};
use tokio::task::JoinHandle;

use crate::timer::Ticks;

/// Submits every item of `source` to `store`, in order (waiting for room if the store's
/// policy is to wait), until the source ends or the store closes (noticed while the source
/// is idle too). A value the store's transport could not take (Redis away) is submitted
/// again after a pause, never dropped. The task's result is how many items were
/// submitted.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use futures_lite::StreamExt;
/// use storecast::QueueStore;
///
/// let store = QueueStore::new(16);
/// let mut subscriber = store.subscribe();
/// let lines = futures_lite::stream::iter(["a", "b", "c"]);
/// assert_eq!(storecast_tokio::forward(store.clone(), lines).await.unwrap(), 3);
/// assert_eq!(*subscriber.next().await.unwrap().unwrap(), "a");
/// # }
/// ```
pub fn forward<S, St>(store: S, source: St) -> JoinHandle<u64>
where
    S: Store + 'static,
    St: Stream<Item = S::Value> + Send + 'static,
{
    tokio::spawn(async move { drive::forward(&store, source, tokio::time::sleep).await })
}

/// Submits `make()` to `store` every `period` (the first after one period), until the
/// store closes. A tick that comes late (a busy runtime) is not made up with a burst; a
/// value the store's transport could not take is submitted again on the next tick.
/// The task's result is how many values were submitted.
pub fn every<S, F>(store: S, period: Duration, make: F) -> JoinHandle<u64>
where
    S: Store + 'static,
    F: FnMut() -> S::Value + Send + 'static,
{
    tokio::spawn(async move { drive::on_ticks(&store, Ticks::new(period), make).await })
}
