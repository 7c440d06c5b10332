//! Fixed-capacity stores: the same two semantics with no allocator at all.
//!
//! [`DataStore`] and [`QueueStore`] here keep their values inline (a queue's ring is an
//! array of `CAPACITY` slots) and their waiting tasks in a fixed list of `WAKERS` entries,
//! so they can live in a `static`, built by a `const fn new()`. Positions, [`Start`],
//! [`Overflow`] policies, closing and errors are those of the heap-backed stores; the
//! difference is that a subscriber receives a *clone* of each value (`T: Clone`), since
//! there is no `Arc` to share it through, and that subscribers borrow their store.
//!
//! Each store sits behind one lock (a spin lock without `std`; every critical section is
//! a few assignments and a clone of `T`), which keeps them small and obviously correct:
//! on the targets they are for, contention is rare.
//!
//! # When the waker list is full
//!
//! A store remembers at most `WAKERS` waiting tasks (subscribers waiting for a message,
//! submitters waiting for room). When one more task waits, every remembered task is woken
//! to make room, and each registers again when it is polled. A full list therefore costs
//! spurious wake-ups, never a lost one. Size `WAKERS` to the number of tasks that wait at
//! once to avoid them.
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
mod queue_store;
mod wakers;

pub use data_store::{DataStore, DataSubscriber};
pub use queue_store::{QueueStore, QueueSubscriber};

use core::fmt;
use core::ops::Deref;

use crate::{Position, RecvError};

/// A message as a subscriber of a fixed-capacity store receives it: its own clone of the
/// value, and the value's [`Position`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Message<T> {
    position: Position,
    value: T,
}

impl<T> Message<T> {
    /// Where this message sits in its store.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The value, giving up the message.
    pub fn into_inner(self) -> T {
        self.value
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

/// What a fixed-capacity store's subscriber yields: a message, or news that it missed
/// some.
pub type Item<T> = Result<Message<T>, RecvError>;

#[cfg(feature = "alloc")]
mod store {
    //! With an allocator, a fixed-capacity store in a `static` is a [`Store`] like any
    //! other, so that the same handlers, adapters and conformance suite serve it. Its
    //! subscribers then wrap each clone in an `Arc`.

    use core::future::Future;
    use core::pin::Pin;
    use core::task::{Context, Poll};

    use futures_core::Stream;

    use super::{DataStore, DataSubscriber, QueueStore, QueueSubscriber};
    use crate::{Item, Message, Position, Start, Store, SubmitError, TrySubmitError};

    /// A fixed-capacity subscriber seen through the [`Store`] trait: its clones, shared.
    #[derive(Debug)]
    pub struct Shared<S>(S);

    impl<T, S> Stream for Shared<S>
    where
        S: Stream<Item = super::Item<T>> + Unpin,
    {
        type Item = Item<T>;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item<T>>> {
            Pin::new(&mut self.get_mut().0).poll_next(cx).map(|item| {
                item.map(|item| item.map(|m| Message::new(m.position(), m.into_inner())))
            })
        }
    }

    impl<T, const CAPACITY: usize, const WAKERS: usize> Store
        for &'static QueueStore<T, CAPACITY, WAKERS>
    where
        T: Clone + Send + Sync + 'static,
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

    impl<T, const WAKERS: usize> Store for &'static DataStore<T, WAKERS>
    where
        T: Clone + Send + Sync + 'static,
    {
        type Value = T;
        type Subscriber = Shared<DataSubscriber<'static, T>>;

        fn submit(
            &self,
            value: T,
        ) -> impl Future<Output = Result<Position, SubmitError<T>>> + Send {
            core::future::ready(DataStore::submit(*self, value))
        }

        fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
            DataStore::submit(*self, value).map_err(TrySubmitError::from)
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
