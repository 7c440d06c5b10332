//! Stores as [`Sink`]s (feature `sink`), so that `stream.forward(sink)` feeds a store.

use alloc::boxed::Box;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use futures_sink::Sink;

use crate::{Position, Store, SubmitError, TrySubmitError};

type Pending<T> = Pin<Box<dyn Future<Output = Result<Position, SubmitError<T>>> + Send>>;

/// A handle to a store that is a [`Sink`] of its values: `stream.forward(StoreSink::new(store))`
/// submits everything a stream yields, in order, waiting for room where the store waits.
///
/// Each message is first tried without waiting ([`Store::try_submit`]); only one that has
/// to wait (a full lossless queue, a Redis store) is submitted through a boxed future, one
/// at a time. The sink's error is the store's [`SubmitError`], which hands back the message
/// that was refused: nothing is lost silently.
///
/// Closing the sink (`poll_close`, as `forward` does when its stream ends) waits for the
/// last submit and then lets go of this handle; the store itself closes only if that was
/// its last handle (other submitters may go on). [`drive::forward`](crate::drive::forward)
/// is the alternative that retries a store that is unavailable for a while.
///
/// ```
/// use futures_lite::future::block_on;
/// use futures_util::{stream, StreamExt};
/// use storecast::sink::StoreSink;
/// use storecast::QueueStore;
///
/// let store = QueueStore::new(2); // lossless: forward waits for the reader
/// let mut reader = store.subscribe();
/// let sink = StoreSink::new(store.clone());
/// drop(store);
/// block_on(async {
///     let feed = stream::iter(1..=5).map(Ok).forward(sink);
///     let read = async {
///         let mut got = Vec::new();
///         while let Ok(message) = reader.recv().await {
///             got.push(*message);
///         }
///         got
///     };
///     let (fed, got) = futures_util::join!(feed, read);
///     fed.unwrap();
///     // The sink held the last handle: closing it closed the store, so the reader ended.
///     assert_eq!(got, [1, 2, 3, 4, 5]);
/// });
/// ```
pub struct StoreSink<S: Store> {
    /// The handle submitted to; `None` once the sink is closed.
    store: Option<S>,
    /// A submit that has to wait, driven by `poll_ready`, `poll_flush` and `poll_close`.
    pending: Option<Pending<S::Value>>,
    /// Where the last message submitted went.
    last: Option<Position>,
}

impl<S: Store> StoreSink<S> {
    /// A sink that submits to `store`.
    pub fn new(store: S) -> Self {
        StoreSink {
            store: Some(store),
            pending: None,
            last: None,
        }
    }

    /// The position of the last message the store took (once its submit completed).
    pub fn last_position(&self) -> Option<Position> {
        self.last
    }

    /// The handle, unless the sink was closed.
    pub fn get_ref(&self) -> Option<&S> {
        self.store.as_ref()
    }

    /// Drives the submit in progress, if any.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SubmitError<S::Value>>> {
        let Some(pending) = &mut self.pending else {
            return Poll::Ready(Ok(()));
        };
        let done = match pending.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(done) => done,
        };
        self.pending = None;
        self.last = Some(done?);
        Poll::Ready(Ok(()))
    }
}

impl<S: Store + Clone + Unpin + 'static> Sink<S::Value> for StoreSink<S> {
    type Error = SubmitError<S::Value>;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_pending(cx)
    }

    fn start_send(self: Pin<&mut Self>, value: S::Value) -> Result<(), Self::Error> {
        let this = self.get_mut();
        debug_assert!(this.pending.is_none(), "start_send without poll_ready");
        let Some(store) = &this.store else {
            return Err(SubmitError::Closed(value));
        };
        match store.try_submit(value) {
            Ok(position) => this.last = Some(position),
            Err(TrySubmitError::Closed(value)) => return Err(SubmitError::Closed(value)),
            Err(TrySubmitError::OutcomeUnknown(value)) => {
                return Err(SubmitError::OutcomeUnknown(value));
            }
            Err(TrySubmitError::Full(value) | TrySubmitError::WouldBlock(value)) => {
                let store = store.clone();
                this.pending = Some(Box::pin(async move { store.submit(value).await }));
            }
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_pending(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let flushed = this.poll_pending(cx);
        if flushed.is_ready() {
            this.store = None;
        }
        flushed
    }
}

impl<S: Store + fmt::Debug> fmt::Debug for StoreSink<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSink")
            .field("store", &self.store)
            .field("waiting", &self.pending.is_some())
            .field("last", &self.last)
            .finish()
    }
}
