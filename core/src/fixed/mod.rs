//! Fixed-capacity stores: the same two semantics with no allocator at all.
//!
//! [`DataStore`] and [`QueueStore`] here keep their values inline (a queue's ring is an
//! array of `CAPACITY` slots) and a waker slot for each of up to `SUBSCRIBERS`
//! subscribers, so they can live in a `static`, built by a `const fn new()`. Positions,
//! [`Start`], [`Overflow`] policies, closing and errors are those of the heap-backed
//! stores; the difference is that a subscriber receives a *clone* of each value
//! (`T: Clone`), since there is no `Arc` to share it through, and that subscribers borrow
//! their store.
//!
//! # Locking, and interrupts
//!
//! Each store sits behind one lock, named by its last type parameter `M` (a [`RawMutex`],
//! as in embassy-sync). Every critical section is a few assignments and a clone of `T`;
//! wakers are woken after the lock is released. [`DefaultRawMutex`] is the operating
//! system's lock with `std`, a spin lock without it, and a critical section on targets
//! with no compare-and-swap (Cortex-M0/M0+, `riscv32imc`). A store that an interrupt
//! handler submits to needs `CriticalSectionRawMutex` (feature `critical-section`):
//! with a spin lock, a handler that interrupts the lock's holder would spin forever.
//!
//! ```ignore
//! use storecast::fixed::{CriticalSectionRawMutex, QueueStore};
//! use storecast::Overflow;
//! // 32 readings, up to 2 subscribers, safe to submit to from an interrupt handler.
//! static READINGS: QueueStore<u16, 32, 2, CriticalSectionRawMutex> =
//!     QueueStore::new(Overflow::DropOldest);
//! ```
//!
//! # The subscriber limit
//!
//! A store has room for `SUBSCRIBERS` subscribers (default 8), each with a waker slot of
//! its own, so a parked subscriber is woken only by a submit or a close, and never to make
//! room for another: no number of idle subscribers makes a store busy. One more subscriber
//! is refused: `subscribe` panics with a message naming the limit, and
//! `try_subscribe_from` returns [`SubscriberLimit`]. Other waiting tasks (submitters
//! waiting for room under [`Overflow::Wait`](crate::Overflow::Wait), tasks awaiting `closed()`) share a list of
//! `SUBSCRIBERS` entries; more of those at once than that are woken to make room (spurious
//! wake-ups, never a lost one).
//!
//! ```
//! use futures_lite::{future::block_on, StreamExt};
//! use storecast::fixed::QueueStore;
//! use storecast::Overflow;
//!
//! // A queue of the last 16 readings, in static memory.
//! static READINGS: QueueStore<u32, 16> = QueueStore::new(Overflow::Wait);
//!
//! let mut display = READINGS.subscribe();
//! READINGS.try_submit(21).unwrap();
//! READINGS.try_submit(22).unwrap();
//! block_on(async {
//!     assert_eq!(*display.next().await.unwrap().unwrap(), 21);
//!     assert_eq!(*display.next().await.unwrap().unwrap(), 22);
//! });
//! ```
//!
//! [`Start`]: crate::Start
//! [`Overflow`]: crate::Overflow

mod data_store;
mod mutex;
mod queue_store;
mod wakers;

pub use data_store::{DataStore, DataSubscriber};
#[cfg(any(feature = "critical-section", not(target_has_atomic = "8")))]
pub use mutex::CriticalSectionRawMutex;
#[cfg(loom)]
pub use mutex::LoomRawMutex;
#[cfg(all(not(loom), target_has_atomic = "8"))]
pub use mutex::SpinRawMutex;
#[cfg(all(not(loom), feature = "std"))]
pub use mutex::StdRawMutex;
pub use mutex::{DefaultRawMutex, RawMutex};
pub use queue_store::{QueueStore, QueueSubscriber};

use core::fmt;
use core::ops::Deref;

use crate::{Position, RecvError};

/// A message as a subscriber of a fixed-capacity store receives it: its own clone of the
/// value, and the value's [`Position`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FixedMessage<T> {
    position: Position,
    value: T,
}

impl<T> FixedMessage<T> {
    /// Where this message sits in its store.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The value, giving up the message.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for FixedMessage<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for FixedMessage<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedMessage")
            .field("position", &self.position)
            .field("value", &self.value)
            .finish()
    }
}

/// What a fixed-capacity store's subscriber yields: a message, or news that it missed
/// some.
pub type FixedItem<T> = Result<FixedMessage<T>, RecvError>;

/// A fixed-capacity store refused a subscriber: it already has as many as its
/// `SUBSCRIBERS` parameter allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriberLimit {
    /// The store's `SUBSCRIBERS`.
    pub limit: usize,
}

impl fmt::Display for SubscriberLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this fixed-capacity store already has {} subscribers, its limit: raise its \
             SUBSCRIBERS parameter (QueueStore<T, CAPACITY, SUBSCRIBERS> or \
             DataStore<T, SUBSCRIBERS>), or drop a subscriber first",
            self.limit
        )
    }
}

impl core::error::Error for SubscriberLimit {}

#[cfg(feature = "alloc")]
mod store {
    //! With an allocator, a fixed-capacity store in a `static` is a [`Store`] like any
    //! other, so that the same handlers, adapters and conformance suite serve it. Its
    //! subscribers then wrap each clone in an `Arc`.

    use core::future::Future;
    use core::pin::Pin;
    use core::task::{Context, Poll};

    use futures_core::Stream;

    use super::FixedMessage;
    use super::{DataStore, DataSubscriber, QueueStore, QueueSubscriber, RawMutex};
    use crate::{
        Item, Message, Position, Start, Store, SubmitError, Subscriber, TryRecvError,
        TrySubmitError,
    };

    /// A fixed-capacity subscriber seen through the [`Store`] trait: its clones, shared.
    #[derive(Debug)]
    pub struct Shared<S>(S);

    fn share<T>(message: FixedMessage<T>) -> Message<T> {
        Message::new(message.position(), message.into_inner())
    }

    impl<T, S> Stream for Shared<S>
    where
        S: Stream<Item = super::FixedItem<T>> + Unpin,
    {
        type Item = Item<T>;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item<T>>> {
            Pin::new(&mut self.get_mut().0)
                .poll_next(cx)
                .map(|item| item.map(|item| item.map(share)))
        }
    }

    impl<T: Clone + Send + Sync> Subscriber for Shared<QueueSubscriber<'static, T>> {
        type Value = T;

        fn try_recv(&mut self) -> Result<Message<T>, TryRecvError> {
            self.0.try_recv().map(share)
        }
    }

    impl<T: Clone + Send + Sync> Subscriber for Shared<DataSubscriber<'static, T>> {
        type Value = T;

        fn try_recv(&mut self) -> Result<Message<T>, TryRecvError> {
            self.0.try_recv().map(share)
        }
    }

    impl<T, const CAPACITY: usize, const SUBSCRIBERS: usize, M> Store
        for &'static QueueStore<T, CAPACITY, SUBSCRIBERS, M>
    where
        T: Clone + Send + Sync + 'static,
        M: RawMutex + Send + Sync + 'static,
    {
        type Value = T;
        type Subscriber = Shared<QueueSubscriber<'static, T>>;

        fn submit(
            &self,
            value: T,
        ) -> impl Future<Output = Result<Position, SubmitError<T>>> + Send {
            QueueStore::submit(*self, value)
        }

        fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
            QueueStore::try_submit(*self, value)
        }

        fn subscribe_from(&self, start: Start) -> Self::Subscriber {
            Shared(QueueStore::subscribe_from(*self, start))
        }

        fn close(&self) {
            QueueStore::close(*self)
        }

        fn is_closed(&self) -> bool {
            QueueStore::is_closed(*self)
        }

        fn closed(&self) -> impl Future<Output = ()> + Send {
            QueueStore::closed(*self)
        }

        fn subscriber_count(&self) -> usize {
            QueueStore::subscriber_count(*self)
        }
    }

    impl<T, const SUBSCRIBERS: usize, M> Store for &'static DataStore<T, SUBSCRIBERS, M>
    where
        T: Clone + Send + Sync + 'static,
        M: RawMutex + Send + Sync + 'static,
    {
        type Value = T;
        type Subscriber = Shared<DataSubscriber<'static, T>>;

        fn submit(
            &self,
            value: T,
        ) -> impl Future<Output = Result<Position, SubmitError<T>>> + Send {
            DataStore::submit(*self, value)
        }

        fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
            DataStore::try_submit(*self, value)
        }

        fn subscribe_from(&self, start: Start) -> Self::Subscriber {
            Shared(DataStore::subscribe_from(*self, start))
        }

        fn close(&self) {
            DataStore::close(*self)
        }

        fn is_closed(&self) -> bool {
            DataStore::is_closed(*self)
        }

        fn closed(&self) -> impl Future<Output = ()> + Send {
            DataStore::closed(*self)
        }

        fn subscriber_count(&self) -> usize {
            DataStore::subscriber_count(*self)
        }
    }
}

#[cfg(feature = "alloc")]
pub use store::Shared;
