//! Driving a store from elsewhere, as executor-agnostic futures: forwarding a stream into
//! it, and submitting on every tick of a timer (Tornado's `PeriodicCallback`). Runtime
//! adapters spawn these on their tasks, with their timers.
//!
//! Both stop as soon as the store closes, even while their source is idle. A submit the
//! store's transport could not take ([`SubmitError::Unavailable`]: Redis away) is not
//! dropped: the same value is submitted again after a pause, so the source waits.

use core::future::{Future, poll_fn};
use core::pin::pin;
use core::task::Poll;
use core::time::Duration;

use futures_core::Stream;

use crate::{Store, SubmitError};

/// The first pause before submitting a value again after [`SubmitError::Unavailable`];
/// it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(50);
/// The longest pause between two attempts to submit the same value.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// Submits every item of `source` to `store`, in order (waiting for room if the store's
/// policy is to wait), until the source ends or the store closes. A value the store's
/// transport could not take is submitted again after `pause(delay)` (the runtime's
/// sleep), with the delay doubling from [`RETRY_FIRST`] to [`RETRY_MAX`]. Returns how
/// many items were submitted.
///
/// ```
/// use futures_lite::{future::block_on, stream};
/// use storecast::{QueueStore, drive};
///
/// let store = QueueStore::new(8);
/// let sleep = |_| async {}; // a runtime's adapter passes its timer
/// let sent = block_on(drive::forward(&store, stream::iter(["a", "b"]), sleep));
/// assert_eq!((sent, store.last_position().offset()), (2, 2));
/// ```
pub async fn forward<S, St, P, F>(store: &S, source: St, mut pause: P) -> u64
where
    S: Store,
    St: Stream<Item = S::Value>,
    P: FnMut(Duration) -> F,
    F: Future<Output = ()>,
{
    let mut source = pin!(source);
    let mut closed = pin!(store.closed());
    let mut submitted = 0;
    loop {
        // The store's closing ends the wait for the next item.
        let next = poll_fn(|cx| {
            if closed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            source.as_mut().poll_next(cx)
        })
        .await;
        let Some(value) = next else {
            return submitted;
        };
        if !submit_retrying(store, value, &mut pause).await {
            return submitted;
        }
        submitted += 1;
    }
}

/// Submits `make()` to `store` on every tick of `ticks`, until the ticks end or the store
/// closes (noticed between ticks too). A value the store's transport could not take is
/// kept and submitted again on the next tick, instead of a new one. Returns how many
/// values were submitted.
pub async fn on_ticks<S, K, F>(store: &S, ticks: K, mut make: F) -> u64
where
    S: Store,
    K: Stream,
    F: FnMut() -> S::Value,
{
    let mut ticks = pin!(ticks);
    let mut closed = pin!(store.closed());
    let mut submitted = 0;
    let mut held = None;
    loop {
        let tick = poll_fn(|cx| {
            if closed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            ticks.as_mut().poll_next(cx)
        })
        .await;
        if tick.is_none() {
            return submitted;
        }
        let value = held.take().unwrap_or_else(&mut make);
        match store.submit(value).await {
            Ok(_) => submitted += 1,
            Err(SubmitError::Unavailable(value)) => held = Some(value),
            Err(_) => return submitted,
        }
    }
}

/// Submits `value`, pausing and trying again while the transport is unavailable; false
/// once the store is closed, or when the store cannot tell whether it took the value
/// ([`SubmitError::OutcomeUnknown`]: trying again could add it twice, so forwarding stops
/// and the caller decides).
async fn submit_retrying<S, P, F>(store: &S, mut value: S::Value, pause: &mut P) -> bool
where
    S: Store,
    P: FnMut(Duration) -> F,
    F: Future<Output = ()>,
{
    let mut delay = RETRY_FIRST;
    loop {
        match store.submit(value).await {
            Ok(_) => return true,
            Err(SubmitError::Unavailable(again)) if !store.is_closed() => {
                value = again;
                pause(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
            Err(_) => return false,
        }
    }
}
