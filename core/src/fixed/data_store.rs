//! The fixed-capacity latest-value store.

use core::fmt;
use core::pin::Pin;
use core::task::{Context, Poll};

use futures_core::Stream;

use super::mutex::{DefaultRawMutex, Locked, RawMutex};
use super::wakers::{SubscriberWakers, WakerList};
use super::{FixedItem, FixedMessage, SubscriberLimit};
use crate::position::Seen;
use crate::recv::Recv;
use crate::{Epoch, Position, Start, SubmitError, TryRecvError, TrySubmitError};

/// A latest-value store with no allocator: the same contract as
/// [`crate::DataStore`] (current value first, then newer ones,
/// maybe skipping some, never repeating or going back, always ending with the last), with
/// the value kept inline, up to `SUBSCRIBERS` subscribers (each with a waker slot of its
/// own; one more is refused at subscribe time), and the lock `M` (see the
/// [module documentation](crate::fixed)).
///
/// ```
/// use futures_lite::{future::block_on, StreamExt};
/// use storecast::fixed::DataStore;
///
/// static TEMPERATURE: DataStore<i16> = DataStore::new();
///
/// TEMPERATURE.try_submit(19).unwrap();
/// let mut display = TEMPERATURE.subscribe();
/// TEMPERATURE.try_submit(21).unwrap();
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
pub struct DataStore<T, const SUBSCRIBERS: usize = 8, M: RawMutex = DefaultRawMutex> {
    state: Locked<M, State<T, SUBSCRIBERS>>,
    /// The identity every position of this store carries.
    epoch: Epoch,
}

struct State<T, const SUBSCRIBERS: usize> {
    /// The current value; `None` until the first submit.
    current: Option<T>,
    /// The position of `current` (0: none yet).
    position: u64,
    closed: bool,
    /// Subscribers, and the wakers of those waiting for a newer value.
    subscribers: SubscriberWakers<SUBSCRIBERS>,
    /// Tasks awaiting `closed()`.
    others: WakerList<SUBSCRIBERS>,
}

impl<T, const SUBSCRIBERS: usize> State<T, SUBSCRIBERS> {
    const fn new(current: Option<T>) -> Self {
        State {
            position: if current.is_some() { 1 } else { 0 },
            current,
            closed: false,
            subscribers: SubscriberWakers::new(),
            others: WakerList::new(),
        }
    }
}

impl<T, const SUBSCRIBERS: usize, M: RawMutex> DataStore<T, SUBSCRIBERS, M> {
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
            state: Locked::new(State::new(None)),
            epoch,
        }
    }

    /// A store of epoch 0 whose current value is `value`, at offset 1.
    #[cfg(not(loom))]
    pub const fn with_value(value: T) -> Self {
        DataStore {
            state: Locked::new(State::new(Some(value))),
            epoch: Epoch::new(0),
        }
    }

    /// An empty store (loom's locks cannot be built in a `const fn`).
    #[cfg(loom)]
    pub fn new() -> Self {
        DataStore {
            state: Locked::new(State::new(None)),
            epoch: Epoch::new(0),
        }
    }

    /// The identity every position of this store carries.
    pub const fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Makes `value` the current value and wakes subscribers, from any context (an
    /// interrupt handler too, with a [`CriticalSectionRawMutex`](crate::fixed)). Never
    /// waits; fails only on a closed store ([`TrySubmitError::Closed`]), handing the
    /// value back.
    pub fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
        let (position, replaced, readers, others) = self.state.lock(|state| {
            if state.closed {
                return Err(TrySubmitError::Closed(value));
            }
            state.position += 1;
            let replaced = state.current.replace(value);
            Ok((
                state.position,
                replaced,
                state.subscribers.take(),
                state.others.take(),
            ))
        })?;
        drop(replaced);
        readers.wake();
        others.wake();
        Ok(Position::new(self.epoch, position))
    }

    /// [`try_submit`](DataStore::try_submit) as a future that is ready at once: the
    /// signature of the queue's `submit` and of [`Store::submit`](crate::Store::submit).
    pub async fn submit(&self, value: T) -> Result<Position, SubmitError<T>> {
        self.try_submit(value)
            .map_err(|e| SubmitError::Closed(e.into_inner()))
    }

    /// Subscribes as a new subscriber: the current value first, then newer ones.
    ///
    /// # Panics
    ///
    /// If the store already has `SUBSCRIBERS` subscribers (see
    /// [`try_subscribe_from`](DataStore::try_subscribe_from)).
    pub fn subscribe(&self) -> DataSubscriber<'_, T>
    where
        T: Clone + Send,
        M: Sync,
    {
        self.subscribe_from(Start::Now)
    }

    /// Subscribes from `start`: [`Start::After`] a position yields only newer values; a
    /// position the store cannot place (another epoch, or ahead) yields
    /// [`RecvError::Reset`](crate::RecvError::Reset) first, then the current value.
    ///
    /// # Panics
    ///
    /// If the store already has `SUBSCRIBERS` subscribers (see
    /// [`try_subscribe_from`](DataStore::try_subscribe_from)).
    pub fn subscribe_from(&self, start: Start) -> DataSubscriber<'_, T>
    where
        T: Clone + Send,
        M: Sync,
    {
        self.try_subscribe_from(start)
            .unwrap_or_else(|limit| panic!("{limit}"))
    }

    /// Subscribes from `start`, or says that the store already has `SUBSCRIBERS`
    /// subscribers.
    pub fn try_subscribe_from(&self, start: Start) -> Result<DataSubscriber<'_, T>, SubscriberLimit>
    where
        T: Clone + Send,
        M: Sync,
    {
        let (slot, placed) = self.state.lock(|state| {
            let slot = state
                .subscribers
                .join()
                .ok_or(SubscriberLimit { limit: SUBSCRIBERS })?;
            Ok((slot, start.place_in_latest(self.epoch, state.position)))
        })?;
        Ok(DataSubscriber {
            store: self,
            slot,
            seen: Seen::new(placed),
        })
    }

    /// Closes the store: submits fail from now on; subscribers get the last value if they
    /// have not seen it, then their streams end.
    pub fn close(&self) {
        let (readers, others) = self.state.lock(|state| {
            state.closed = true;
            (state.subscribers.take(), state.others.take())
        });
        readers.wake();
        others.wake();
    }

    /// Whether the store is closed.
    pub fn is_closed(&self) -> bool {
        self.state.lock(|state| state.closed)
    }

    /// Waits until the store is closed.
    pub async fn closed(&self) {
        core::future::poll_fn(|cx| {
            let to_wake = self.state.lock(|state| {
                // Woken on every submit, and on close.
                (!state.closed).then(|| state.others.register(cx.waker()))
            });
            match to_wake {
                None => Poll::Ready(()),
                Some(to_wake) => {
                    to_wake.wake();
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// How many subscribers are registered now.
    pub fn subscriber_count(&self) -> usize {
        self.state.lock(|state| state.subscribers.count())
    }

    /// The current value and its position, without subscribing.
    pub fn current(&self) -> Option<FixedMessage<T>>
    where
        T: Clone,
    {
        self.state.lock(|state| {
            state.current.clone().map(|value| FixedMessage {
                position: Position::new(self.epoch, state.position),
                value,
            })
        })
    }
}

impl<T, const SUBSCRIBERS: usize, M: RawMutex> fmt::Debug for DataStore<T, SUBSCRIBERS, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (position, subscribers, closed) = self
            .state
            .lock(|state| (state.position, state.subscribers.count(), state.closed));
        f.debug_struct("fixed::DataStore")
            .field("epoch", &self.epoch)
            .field("position", &position)
            .field("subscribers", &subscribers)
            .field("closed", &closed)
            .finish()
    }
}

impl<T, const SUBSCRIBERS: usize, M: RawMutex> Default for DataStore<T, SUBSCRIBERS, M> {
    fn default() -> Self {
        DataStore::new()
    }
}

/// What a subscriber needs of its store, without the store's sizes and lock in its type.
trait Latest<T>: Sync {
    fn poll_newer(
        &self,
        slot: usize,
        seen: &mut Seen,
        cx: Option<&mut Context<'_>>,
    ) -> Poll<Option<FixedItem<T>>>;
    fn leave(&self, slot: usize);
    fn epoch(&self) -> Epoch;
}

impl<T: Clone + Send, const SUBSCRIBERS: usize, M: RawMutex + Sync> Latest<T>
    for DataStore<T, SUBSCRIBERS, M>
{
    fn poll_newer(
        &self,
        slot: usize,
        seen: &mut Seen,
        cx: Option<&mut Context<'_>>,
    ) -> Poll<Option<FixedItem<T>>> {
        self.state.lock(|state| {
            if state.position > seen.offset() {
                if let Some(value) = state.current.clone() {
                    seen.set(state.position);
                    let position = Position::new(self.epoch, state.position);
                    return Poll::Ready(Some(Ok(FixedMessage { position, value })));
                }
            }
            if state.closed {
                return Poll::Ready(None);
            }
            // Registered under the same lock `submit` takes: no wake-up can slip between.
            // The slot is this subscriber's own: registering never evicts another.
            if let Some(cx) = cx {
                state.subscribers.register(slot, cx.waker());
            }
            Poll::Pending
        })
    }

    fn leave(&self, slot: usize) {
        let waker = self.state.lock(|state| state.subscribers.leave(slot));
        drop(waker);
    }

    fn epoch(&self) -> Epoch {
        self.epoch
    }
}

/// A subscription to a fixed-capacity [`DataStore`]: a [`Stream`] of the newest values.
/// Dropping it deregisters it.
pub struct DataSubscriber<'a, T> {
    store: &'a dyn Latest<T>,
    /// This subscriber's waker slot in the store.
    slot: usize,
    /// The position of the last value yielded (0: none yet).
    seen: Seen,
}

impl<T> DataSubscriber<'_, T> {
    /// Waits for a value newer than the last one received (the current value, first),
    /// or [`RecvError::Closed`](crate::RecvError::Closed) once the store is closed and the last
    /// value was received.
    ///
    /// ```
    /// use storecast::fixed::DataStore;
    ///
    /// static MODE: DataStore<u8> = DataStore::new();
    /// let mut subscriber = MODE.subscribe();
    /// let reader = std::thread::spawn(move || *subscriber.recv_blocking().unwrap());
    /// MODE.try_submit(2).unwrap();
    /// assert_eq!(reader.join().unwrap(), 2);
    /// ```
    pub fn recv(&mut self) -> Recv<'_, Self> {
        Recv::new(self)
    }

    /// The newest value not yet received, without waiting: [`TryRecvError::Empty`] when
    /// there is none yet, [`TryRecvError::Closed`] when none will come.
    ///
    /// ```
    /// use storecast::fixed::DataStore;
    /// use storecast::TryRecvError;
    ///
    /// static LEVEL: DataStore<u8> = DataStore::new();
    /// let mut subscriber = LEVEL.subscribe();
    /// assert_eq!(subscriber.try_recv().unwrap_err(), TryRecvError::Empty);
    /// LEVEL.try_submit(3).unwrap();
    /// assert_eq!(*subscriber.try_recv().unwrap(), 3);
    /// ```
    pub fn try_recv(&mut self) -> Result<FixedMessage<T>, TryRecvError> {
        if let Some(news) = self.seen.take_news() {
            return Err(news.into());
        }
        match self.store.poll_newer(self.slot, &mut self.seen, None) {
            Poll::Ready(Some(item)) => item.map_err(TryRecvError::from),
            Poll::Ready(None) => Err(TryRecvError::Closed),
            Poll::Pending => Err(TryRecvError::Empty),
        }
    }

    /// [`recv`](DataSubscriber::recv) for a thread outside any async runtime: parks the
    /// thread until a newer value comes.
    #[cfg(feature = "std")]
    pub fn recv_blocking(&mut self) -> Result<FixedMessage<T>, crate::RecvError> {
        crate::recv::block_on(self.recv())
    }

    /// The position of the last value this subscriber received.
    pub fn position(&self) -> Position {
        Position::new(self.store.epoch(), self.seen.offset())
    }
}

impl<T> Stream for DataSubscriber<'_, T> {
    type Item = FixedItem<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FixedItem<T>>> {
        let this = self.get_mut();
        if let Some(news) = this.seen.take_news() {
            return Poll::Ready(Some(Err(news)));
        }
        this.store.poll_newer(this.slot, &mut this.seen, Some(cx))
    }
}

impl<T> Drop for DataSubscriber<'_, T> {
    fn drop(&mut self) {
        self.store.leave(self.slot);
    }
}

impl<T> fmt::Debug for DataSubscriber<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("fixed::DataSubscriber")
            .field("seen", &self.position())
            .finish_non_exhaustive()
    }
}
