//! Different stores behind one type: [`BoxStore`], for a map of topics where some are
//! queues, some latest values and some on Redis.

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use futures_core::Stream;

use crate::recv::Recv;
use crate::{
    Item, Message, Position, Start, Store, SubmitError, Subscriber, TryRecvError, TrySubmitError,
};

/// Any [`Store`] of values `T`, behind one type: `Store` has `async` methods and an
/// associated subscriber type, so it cannot be a `dyn Store`; a `BoxStore` can hold a
/// [`QueueStore`](crate::QueueStore), a [`DataStore`](crate::DataStore), a Redis store or
/// your own, and is a `Store` itself (so every handler and the conformance suite take
/// it). Its futures and subscribers are boxed: one allocation per `submit().await` that has
/// to wait (none for [`try_submit`](BoxStore::try_submit)) and one per subscriber.
///
/// Cloning gives another handle to the same store; the last `BoxStore` to go drops the
/// store inside, which closes it if that was its last handle.
///
/// ```
/// use futures_lite::future::block_on;
/// use storecast::{BoxStore, DataStore, QueueStore};
///
/// let topics: Vec<(&str, BoxStore<String>)> = vec![
///     ("chat", BoxStore::new(QueueStore::new(64))),
///     ("price", BoxStore::new(DataStore::new())),
/// ];
/// for (name, store) in &topics {
///     let mut subscriber = store.subscribe();
///     block_on(async {
///         store.submit(format!("hello, {name}")).await.unwrap();
///         assert_eq!(*subscriber.recv().await.unwrap(), format!("hello, {name}"));
///     });
/// }
/// ```
pub struct BoxStore<T> {
    store: Arc<dyn ErasedStore<T>>,
}

/// What a [`BoxStore`]'s store can do, with futures and subscribers boxed.
trait ErasedStore<T>: Send + Sync {
    fn submit(&self, value: T) -> BoxFuture<'_, Result<Position, SubmitError<T>>>;
    fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>>;
    fn subscribe_from(&self, start: Start) -> BoxSubscriber<T>;
    fn close(&self);
    fn is_closed(&self) -> bool;
    fn closed(&self) -> BoxFuture<'_, ()>;
    fn subscriber_count(&self) -> usize;
}

type BoxFuture<'a, R> = Pin<Box<dyn Future<Output = R> + Send + 'a>>;

impl<S: Store> ErasedStore<S::Value> for S {
    fn submit(&self, value: S::Value) -> BoxFuture<'_, Result<Position, SubmitError<S::Value>>> {
        Box::pin(Store::submit(self, value))
    }
    fn try_submit(&self, value: S::Value) -> Result<Position, TrySubmitError<S::Value>> {
        Store::try_submit(self, value)
    }
    fn subscribe_from(&self, start: Start) -> BoxSubscriber<S::Value> {
        BoxSubscriber::new(Store::subscribe_from(self, start))
    }
    fn close(&self) {
        Store::close(self)
    }
    fn is_closed(&self) -> bool {
        Store::is_closed(self)
    }
    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(Store::closed(self))
    }
    fn subscriber_count(&self) -> usize {
        Store::subscriber_count(self)
    }
}

impl<T: Send + Sync + 'static> BoxStore<T> {
    /// Puts `store` behind the common type.
    pub fn new<S: Store<Value = T> + 'static>(store: S) -> Self {
        BoxStore {
            store: Arc::new(store),
        }
    }

    /// Submits a message; see [`Store::submit`]. Tries without waiting first, so only a
    /// submit that has to wait allocates its future.
    pub async fn submit(&self, value: T) -> Result<Position, SubmitError<T>> {
        match self.store.try_submit(value) {
            Ok(position) => Ok(position),
            Err(TrySubmitError::Closed(value)) => Err(SubmitError::Closed(value)),
            Err(TrySubmitError::OutcomeUnknown(value)) => Err(SubmitError::OutcomeUnknown(value)),
            Err(TrySubmitError::Full(value) | TrySubmitError::WouldBlock(value)) => {
                self.store.submit(value).await
            }
        }
    }

    /// Submits a message if that can be done without waiting; see [`Store::try_submit`].
    pub fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
        self.store.try_submit(value)
    }

    /// Subscribes from `start`; see [`Store::subscribe_from`].
    pub fn subscribe_from(&self, start: Start) -> BoxSubscriber<T> {
        self.store.subscribe_from(start)
    }

    /// Subscribes as a new subscriber ([`Start::Now`]).
    pub fn subscribe(&self) -> BoxSubscriber<T> {
        self.store.subscribe_from(Start::Now)
    }

    /// Closes the store; see [`Store::close`].
    pub fn close(&self) {
        self.store.close()
    }

    /// Whether the store is closed; see [`Store::is_closed`].
    pub fn is_closed(&self) -> bool {
        self.store.is_closed()
    }

    /// Resolves once the store is closed; see [`Store::closed`].
    pub async fn closed(&self) {
        self.store.closed().await
    }

    /// How many subscribers are registered now.
    pub fn subscriber_count(&self) -> usize {
        self.store.subscriber_count()
    }
}

impl<T> Clone for BoxStore<T> {
    fn clone(&self) -> Self {
        BoxStore {
            store: Arc::clone(&self.store),
        }
    }
}

impl<T> fmt::Debug for BoxStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxStore")
            .field("subscribers", &self.store.subscriber_count())
            .field("closed", &self.store.is_closed())
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Store for BoxStore<T> {
    type Value = T;
    type Subscriber = BoxSubscriber<T>;

    fn submit(&self, value: T) -> impl Future<Output = Result<Position, SubmitError<T>>> + Send {
        BoxStore::submit(self, value)
    }
    fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
        BoxStore::try_submit(self, value)
    }
    fn subscribe_from(&self, start: Start) -> BoxSubscriber<T> {
        BoxStore::subscribe_from(self, start)
    }
    fn close(&self) {
        BoxStore::close(self)
    }
    fn is_closed(&self) -> bool {
        BoxStore::is_closed(self)
    }
    fn closed(&self) -> impl Future<Output = ()> + Send {
        BoxStore::closed(self)
    }
    fn subscriber_count(&self) -> usize {
        BoxStore::subscriber_count(self)
    }
}

/// A subscription to a [`BoxStore`]: the store's own subscriber, boxed. The same
/// [`Stream`] and the same calls ([`recv`](BoxSubscriber::recv),
/// [`try_recv`](BoxSubscriber::try_recv)).
pub struct BoxSubscriber<T> {
    subscriber: Pin<Box<dyn Subscriber<Value = T, Item = Item<T>> + 'static>>,
}

impl<T: Send + Sync + 'static> BoxSubscriber<T> {
    /// Puts `subscriber` behind the common type.
    pub fn new<S: Subscriber<Value = T> + 'static>(subscriber: S) -> Self {
        BoxSubscriber {
            subscriber: Box::pin(subscriber),
        }
    }
}

impl<T> BoxSubscriber<T> {
    /// Waits for the next message; see [`Subscriber::recv`].
    ///
    /// ```
    /// use futures_lite::future::block_on;
    /// use storecast::{BoxStore, QueueStore, TryRecvError};
    ///
    /// let store = BoxStore::new(QueueStore::new(4));
    /// let mut subscriber = store.subscribe();
    /// assert_eq!(subscriber.try_recv().unwrap_err(), TryRecvError::Empty);
    /// store.try_submit(1).unwrap();
    /// assert_eq!(*block_on(subscriber.recv()).unwrap(), 1);
    /// ```
    pub fn recv(&mut self) -> Recv<'_, Self> {
        Recv::new(self)
    }

    /// The next message if one is ready; see [`Subscriber::try_recv`].
    pub fn try_recv(&mut self) -> Result<Message<T>, TryRecvError> {
        self.subscriber.try_recv()
    }

    /// [`recv`](BoxSubscriber::recv) for a thread outside any async runtime.
    #[cfg(feature = "std")]
    pub fn recv_blocking(&mut self) -> Result<Message<T>, crate::RecvError> {
        crate::recv::block_on(self.recv())
    }
}

impl<T> Stream for BoxSubscriber<T> {
    type Item = Item<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item<T>>> {
        self.get_mut().subscriber.as_mut().poll_next(cx)
    }
}

impl<T: Send + Sync> Subscriber for BoxSubscriber<T> {
    type Value = T;

    fn try_recv(&mut self) -> Result<Message<T>, TryRecvError> {
        BoxSubscriber::try_recv(self)
    }
}

impl<T> fmt::Debug for BoxSubscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxSubscriber").finish_non_exhaustive()
    }
}
