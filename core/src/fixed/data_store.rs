//! The fixed-capacity latest-value store.

use core::fmt;
use core::pin::Pin;
use core::task::{Context, Poll};

use futures_core::Stream;

use super::wakers::WakerList;
use super::{Item, Message};
use crate::position::Seen;
use crate::sync::Mutex;
use crate::{Epoch, Position, Start, SubmitError};

/// A latest-value store with no allocator: the same contract as
/// [`crate::DataStore`] (current value first, then newer ones,
/// maybe skipping some, never repeating or going back, always ending with the last), with
/// the value kept inline and up to `WAKERS` waiting subscribers remembered (see the
/// [module documentation](crate::fixed) for what happens beyond that).
///
/// ```
/// use futures_lite::{future::block_on, StreamExt};
/// use storecast::fixed::DataStore;
///
/// static TEMPERATURE: DataStore<i16> = DataStore::new();
///
/// TEMPERATURE.submit(19).unwrap();
/// let mut display = TEMPERATURE.subscribe();
/// TEMPERATURE.submit(21).unwrap();
/// TEMPERATURE.close();
/// block_on(async {
///     // 19 may be skipped; 21, the last, never is.
///     let mut last = None;
///     while let Some(item) = display.next().await {
///         last = Some(*item.unwrap());
///     }
///     assert_eq!(last, Some(21));
/// });
/// ```
pub struct DataStore<T, const WAKERS: usize = 8> {
    state: Mutex<State<T, WAKERS>>,
    /// The identity every position of this store carries.
    epoch: Epoch,
}

struct State<T, const WAKERS: usize> {
    /// The current value; `None` until the first submit.
    current: Option<T>,
    /// The position of `current` (0: none yet).
    position: u64,
    closed: bool,
    subscribers: usize,
    /// Subscribers waiting for a newer value.
    waiting: WakerList<WAKERS>,
}

impl<T, const WAKERS: usize> State<T, WAKERS> {
    const fn new(current: Option<T>) -> Self {
        State {
            position: if current.is_some() { 1 } else { 0 },
            current,
            closed: false,
            subscribers: 0,
            waiting: WakerList::new(),
        }
    }
}

impl<T, const WAKERS: usize> DataStore<T, WAKERS> {
    /// An empty store of epoch 0 (for a store whose positions never leave the device;
    /// see [`with_epoch`](DataStore::with_epoch)): subscribers wait for the first value.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        DataStore::with_epoch(Epoch::new(0))
    }

    /// An empty store whose positions carry `epoch`: a store without an allocator draws
    /// no randomness, so give each life of it an epoch of its own (from a hardware random
    /// generator, or a boot counter kept in flash).
    #[cfg(not(loom))]
    pub const fn with_epoch(epoch: Epoch) -> Self {
        DataStore {
            state: Mutex::new(State::new(None)),
            epoch,
        }
    }

    /// A store of epoch 0 whose current value is `value`, at offset 1.
    #[cfg(not(loom))]
    pub const fn with_value(value: T) -> Self {
        DataStore {
            state: Mutex::new(State::new(Some(value))),
            epoch: Epoch::new(0),
        }
    }

    /// An empty store (loom's locks cannot be built in a `const fn`).
    #[cfg(loom)]
    pub fn new() -> Self {
        DataStore {
            state: Mutex::new(State::new(None)),
            epoch: Epoch::new(0),
        }
    }

    /// The identity every position of this store carries.
    pub const fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Makes `value` the current value and wakes subscribers. Never waits; fails only on
    /// a closed store, handing the value back.
    pub fn submit(&self, value: T) -> Result<Position, SubmitError<T>> {
        let (position, replaced, to_wake) = {
            let mut state = self.state.lock();
            if state.closed {
                return Err(SubmitError::Closed(value));
            }
            state.position += 1;
            let replaced = state.current.replace(value);
            (state.position, replaced, state.waiting.take())
        };
        drop(replaced);
        to_wake.wake();
        Ok(Position::new(self.epoch, position))
    }

    /// Subscribes as a new subscriber: the current value first, then newer ones.
    pub fn subscribe(&self) -> DataSubscriber<'_, T>
    where
        T: Clone + Send,
    {
        self.subscribe_from(Start::Now)
    }

    /// Subscribes from `start`: [`Start::After`] a position yields only newer values; a
    /// position the store cannot place (another epoch, or ahead) yields
    /// [`RecvError::Reset`](crate::RecvError::Reset) first, then the current value.
    pub fn subscribe_from(&self, start: Start) -> DataSubscriber<'_, T>
    where
        T: Clone + Send,
    {
        let mut state = self.state.lock();
        state.subscribers += 1;
        let placed = start.place_in_latest(self.epoch, state.position);
        DataSubscriber {
            store: self,
            seen: Seen::new(placed),
        }
    }

    /// Closes the store: submits fail from now on; subscribers get the last value if they
    /// have not seen it, then their streams end.
    pub fn close(&self) {
        let to_wake = {
            let mut state = self.state.lock();
            state.closed = true;
            state.waiting.take()
        };
        to_wake.wake();
    }

    /// Whether the store is closed.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Waits until the store is closed.
    pub async fn closed(&self) {
        core::future::poll_fn(|cx| {
            let mut state = self.state.lock();
            if state.closed {
                return Poll::Ready(());
            }
            // Woken with the waiting subscribers (on every submit, and on close).
            let to_wake = state.waiting.register(cx.waker());
            drop(state);
            to_wake.wake();
            Poll::Pending
        })
        .await
    }

    /// How many subscribers are registered now.
    pub fn subscriber_count(&self) -> usize {
        self.state.lock().subscribers
    }

    /// The current value and its position, without subscribing.
    pub fn current(&self) -> Option<Message<T>>
    where
        T: Clone,
    {
        let state = self.state.lock();
        state.current.clone().map(|value| Message {
            position: Position::new(self.epoch, state.position),
            value,
        })
    }
}

impl<T, const WAKERS: usize> fmt::Debug for DataStore<T, WAKERS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("fixed::DataStore")
            .field("epoch", &self.epoch)
            .field("position", &state.position)
            .field("subscribers", &state.subscribers)
            .field("closed", &state.closed)
            .finish()
    }
}

impl<T, const WAKERS: usize> Default for DataStore<T, WAKERS> {
    fn default() -> Self {
        DataStore::new()
    }
}

/// What a subscriber needs of its store, without the store's `WAKERS` in its type.
trait Latest<T>: Sync {
    fn poll_newer(&self, seen: &mut Seen, cx: Option<&mut Context<'_>>) -> Poll<Option<Item<T>>>;
    fn leave(&self);
    fn epoch(&self) -> Epoch;
}

impl<T: Clone + Send, const WAKERS: usize> Latest<T> for DataStore<T, WAKERS> {
    fn poll_newer(&self, seen: &mut Seen, cx: Option<&mut Context<'_>>) -> Poll<Option<Item<T>>> {
        let mut state = self.state.lock();
        if state.position > seen.offset() {
            if let Some(value) = state.current.clone() {
                seen.set(state.position);
                let position = Position::new(self.epoch, state.position);
                return Poll::Ready(Some(Ok(Message { position, value })));
            }
        }
        if state.closed {
            return Poll::Ready(None);
        }
        // Registered under the same lock `submit` takes: no wake-up can slip between.
        let to_wake = match cx {
            Some(cx) => state.waiting.register(cx.waker()),
            None => Default::default(),
        };
        drop(state);
        to_wake.wake();
        Poll::Pending
    }

    fn leave(&self) {
        self.state.lock().subscribers -= 1;
    }

    fn epoch(&self) -> Epoch {
        self.epoch
    }
}

/// A subscription to a fixed-capacity [`DataStore`]: a [`Stream`] of the newest values.
/// Dropping it deregisters it.
pub struct DataSubscriber<'a, T> {
    store: &'a dyn Latest<T>,
    /// The position of the last value yielded (0: none yet).
    seen: Seen,
}

impl<T> DataSubscriber<'_, T> {
    /// The newest value not yet seen (or news to tell first), without waiting.
    pub fn try_next(&mut self) -> Option<Item<T>> {
        if let Some(news) = self.seen.take_news() {
            return Some(Err(news));
        }
        match self.store.poll_newer(&mut self.seen, None) {
            Poll::Ready(item) => item,
            Poll::Pending => None,
        }
    }

    /// The position of the last value this subscriber received.
    pub fn position(&self) -> Position {
        Position::new(self.store.epoch(), self.seen.offset())
    }
}

impl<T> Stream for DataSubscriber<'_, T> {
    type Item = Item<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item<T>>> {
        let this = self.get_mut();
        if let Some(news) = this.seen.take_news() {
            return Poll::Ready(Some(Err(news)));
        }
        this.store.poll_newer(&mut this.seen, Some(cx))
    }
}

impl<T> Drop for DataSubscriber<'_, T> {
    fn drop(&mut self) {
        self.store.leave();
    }
}

impl<T> fmt::Debug for DataSubscriber<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("fixed::DataSubscriber")
            .field("seen", &self.position())
            .finish_non_exhaustive()
    }
}
