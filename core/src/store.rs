//! The `Store` trait every store implements, and the `Message` its subscribers receive.

use alloc::sync::Arc;
use core::fmt;
use core::future::Future;
use core::ops::Deref;

use futures_core::Stream;

use crate::recv::Recv;
use crate::{Position, RecvError, Start, SubmitError, TryRecvError, TrySubmitError};

/// A message as a subscriber receives it: the value, shared with every other subscriber
/// (never cloned), and its [`Position`].
///
/// ```
/// use storecast::{Epoch, Message, Position};
///
/// let position = Position::new(Epoch::new(1), 7);
/// let m = Message::new(position, "hello");
/// assert_eq!(*m, "hello");
/// assert_eq!(m.position(), position);
/// ```
pub struct Message<T> {
    position: Position,
    value: Arc<T>,
}

impl<T> Message<T> {
    /// A message at `position` holding `value`.
    pub fn new(position: Position, value: T) -> Self {
        Message::from_arc(position, Arc::new(value))
    }

    /// A message at `position` sharing an already shared value.
    pub fn from_arc(position: Position, value: Arc<T>) -> Self {
        Message { position, value }
    }

    /// Where this message sits in its store.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The shared value.
    pub fn value(&self) -> &Arc<T> {
        &self.value
    }

    /// The shared value, giving up the message.
    pub fn into_arc(self) -> Arc<T> {
        self.value
    }
}

impl<T> Clone for Message<T> {
    fn clone(&self) -> Self {
        Message {
            position: self.position,
            value: Arc::clone(&self.value),
        }
    }
}

impl<T> Deref for Message<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Message<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("position", &self.position)
            .field("value", &self.value)
            .finish()
    }
}

impl<T: PartialEq> PartialEq for Message<T> {
    fn eq(&self, other: &Self) -> bool {
        self.position == other.position && self.value == other.value
    }
}

impl<T: Eq> Eq for Message<T> {}

/// What a subscriber's stream yields: a message, or news that it missed some.
pub type Item<T> = Result<Message<T>, RecvError>;

/// A store's subscription, as generic code sees it: a [`Stream`] of [`Item`]s (ending with
/// `None` once the store is closed and drained), plus the calls a channel's receiver has.
///
/// Every subscriber type of this crate and of the adapters implements it, and has the same
/// calls as inherent methods, so they work without importing this trait.
///
/// ```
/// use futures_lite::future::block_on;
/// use storecast::{QueueStore, RecvError, Store, Subscriber, TryRecvError};
///
/// async fn first_word<S: Store<Value = &'static str>>(store: &S) -> &'static str {
///     let mut subscriber = store.subscribe();
///     store.submit("hello").await.unwrap();
///     *subscriber.recv().await.unwrap()
/// }
///
/// let store = QueueStore::new(4);
/// assert_eq!(block_on(first_word(&store)), "hello");
/// let mut late = store.subscribe();
/// assert_eq!(late.try_recv().unwrap_err(), TryRecvError::Empty);
/// store.close();
/// assert_eq!(late.try_recv().unwrap_err(), TryRecvError::Closed);
/// assert_eq!(block_on(late.recv()).unwrap_err(), RecvError::Closed);
/// ```
pub trait Subscriber: Stream<Item = Item<Self::Value>> + Send + Unpin {
    /// The type of the values received.
    type Value;

    /// Waits for the next message; its `Err` is news of what was missed (the stream's
    /// `Err` items), or [`RecvError::Closed`] once the store is closed and drained.
    fn recv(&mut self) -> Recv<'_, Self>
    where
        Self: Sized,
    {
        Recv::new(self)
    }

    /// The next message if one is ready, without waiting; [`TryRecvError`] tells "nothing
    /// yet" ([`Empty`](TryRecvError::Empty)) from "nothing ever again"
    /// ([`Closed`](TryRecvError::Closed)), and carries the same news as `recv`.
    ///
    /// The provided method polls the stream once with a waker that does nothing; the
    /// stores of this crate look without polling.
    fn try_recv(&mut self) -> Result<Message<Self::Value>, TryRecvError> {
        let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
        match core::pin::Pin::new(self).poll_next(&mut cx) {
            core::task::Poll::Ready(Some(item)) => item.map_err(TryRecvError::from),
            core::task::Poll::Ready(None) => Err(TryRecvError::Closed),
            core::task::Poll::Pending => Err(TryRecvError::Empty),
        }
    }
}

/// A store: something that holds data and sends what is submitted to its subscribers
/// (Tornadose's `BaseStore`).
///
/// Two semantics implement it in this crate: latest value ([`DataStore`](crate::DataStore))
/// and queue ([`QueueStore`](crate::QueueStore)); adapters add stores with other transports
/// (Redis). Code written against `Store` — an HTTP handler, a forwarding task, the
/// conformance suite (`storecast::conformance`) — works with any of them.
///
/// Subscribers are [`Stream`]s of [`Item`]s; dropping one deregisters it. After
/// [`close`](Store::close), subscribers receive what is left and then their streams end.
/// Every message's [`Position`] carries the store's [`Epoch`](crate::Epoch), so a position
/// of another store, or of an earlier life of this one, is told apart
/// ([`RecvError::Reset`]).
pub trait Store: Send + Sync {
    /// The type of the values submitted. Shared with subscribers, so it needs no `Clone`.
    type Value: Send + Sync + 'static;

    /// A subscription: a stream of messages (or lag reports) that deregisters on drop.
    type Subscriber: Subscriber<Value = Self::Value> + 'static;

    /// Submits a message, waiting for room if the store's policy is to wait. Returns the
    /// message's position, or hands it back if the store is closed.
    fn submit(
        &self,
        value: Self::Value,
    ) -> impl Future<Output = Result<Position, SubmitError<Self::Value>>> + Send;

    /// Submits a message if that can be done without waiting.
    fn try_submit(&self, value: Self::Value) -> Result<Position, TrySubmitError<Self::Value>>;

    /// Subscribes from `start`; see [`Start`] for what each choice yields first.
    fn subscribe_from(&self, start: Start) -> Self::Subscriber;

    /// Subscribes as a new subscriber ([`Start::Now`]).
    fn subscribe(&self) -> Self::Subscriber {
        self.subscribe_from(Start::Now)
    }

    /// Closes the store: submits are refused from now on; subscribers receive what is left,
    /// then their streams end. Closing twice does nothing.
    fn close(&self);

    /// Whether the store is closed: [`close`](Store::close) was called, or the last
    /// handle to it went.
    fn is_closed(&self) -> bool;

    /// Resolves once the store is closed (at once if it is already).
    fn closed(&self) -> impl Future<Output = ()> + Send;

    /// How many subscribers are registered now.
    fn subscriber_count(&self) -> usize;
}
