//! The fixed-capacity queue store.

use core::fmt;
use core::pin::Pin;
use core::task::{Context, Poll};

use futures_core::Stream;

use super::mutex::{DefaultRawMutex, Locked, RawMutex};
use super::wakers::{SubscriberWakers, ToWake, WakerList};
use super::{FixedItem, FixedMessage, SubscriberLimit};
use crate::position::oldest_retained;
use crate::recv::Recv;
use crate::{
    Epoch, Overflow, Position, RecvError, ResetReason, Start, SubmitError, TryRecvError,
    TrySubmitError,
};

/// A queue store with no allocator: the same contract as
/// [`crate::QueueStore`] (every message after subscribing, in
/// order, none twice; the last `CAPACITY` messages retained; an [`Overflow`] policy for a
/// subscriber `CAPACITY` behind; resume from a retained position), with the ring inline
/// inline, up to `SUBSCRIBERS` subscribers (each with a waker slot of its own; one more is
/// refused at subscribe time), and the lock `M` (see the
/// [module documentation](crate::fixed)).
///
/// Under [`Overflow::Wait`] a submitter waits exactly when the slowest subscriber is
/// `CAPACITY` messages behind.
///
/// ```
/// use futures_lite::{future::block_on, StreamExt};
/// use storecast::fixed::QueueStore;
/// use storecast::{Overflow, RecvError};
///
/// static EVENTS: QueueStore<u8, 4> = QueueStore::new(Overflow::DropOldest);
///
/// let mut late = EVENTS.subscribe();
/// for n in 1..=6 {
///     EVENTS.try_submit(n).unwrap();
/// }
/// block_on(async {
///     assert_eq!(late.next().await.unwrap(), Err(RecvError::Lagged { missed: 2 }));
///     assert_eq!(*late.next().await.unwrap().unwrap(), 3);
/// });
/// ```
pub struct QueueStore<
    T,
    const CAPACITY: usize,
    const SUBSCRIBERS: usize = 8,
    M: RawMutex = DefaultRawMutex,
> {
    state: Locked<M, State<T, CAPACITY, SUBSCRIBERS>>,
    overflow: Overflow,
    /// The identity every position of this store carries.
    epoch: Epoch,
}

struct State<T, const CAPACITY: usize, const SUBSCRIBERS: usize> {
    /// The ring: message at position `p` lives in slot `p % CAPACITY`.
    slots: [Slot<T>; CAPACITY],
    /// The position of the newest message.
    last: u64,
    /// How many subscribers the slots' `unread` counts are for.
    subscribers: usize,
    closed: bool,
    /// Subscribers, and the wakers of those waiting for a message.
    readers: SubscriberWakers<SUBSCRIBERS>,
    /// Submitters waiting for room (under `Wait`), and tasks awaiting `closed()`.
    others: WakerList<SUBSCRIBERS>,
}

struct Slot<T> {
    /// The position of the message held (0: never written).
    position: u64,
    value: Option<T>,
    /// Under `Wait`: subscribers yet to read it; the slot is reused only at zero.
    unread: usize,
}

impl<T> Slot<T> {
    const EMPTY: Slot<T> = Slot {
        position: 0,
        value: None,
        unread: 0,
    };
}

impl<T, const CAPACITY: usize, const SUBSCRIBERS: usize> State<T, CAPACITY, SUBSCRIBERS> {
    const fn new() -> Self {
        assert!(CAPACITY > 0, "a QueueStore needs a capacity of at least 1");
        State {
            slots: [const { Slot::EMPTY }; CAPACITY],
            last: 0,
            subscribers: 0,
            closed: false,
            readers: SubscriberWakers::new(),
            others: WakerList::new(),
        }
    }

    fn slot(&mut self, position: u64) -> &mut Slot<T> {
        &mut self.slots[(position % CAPACITY as u64) as usize]
    }
}

impl<T, const CAPACITY: usize, const SUBSCRIBERS: usize, M: RawMutex>
    QueueStore<T, CAPACITY, SUBSCRIBERS, M>
{
    /// An empty queue with the given overflow policy, of epoch 0: for a store whose
    /// positions never leave the device. Positions that outlive a restart (sent to
    /// another machine, kept in flash) need [`with_epoch`](QueueStore::with_epoch).
    ///
    /// # Panics
    ///
    /// If `CAPACITY` is zero (at compile time, in a `static`).
    #[cfg(not(loom))]
    pub const fn new(overflow: Overflow) -> Self {
        QueueStore::with_epoch(overflow, Epoch::new(0))
    }

    /// An empty queue with the given overflow policy whose positions carry `epoch`: a
    /// store without an allocator draws no randomness, so give each life of it an epoch
    /// of its own (from a hardware random generator, or a boot counter kept in flash).
    ///
    /// # Panics
    ///
    /// If `CAPACITY` is zero (at compile time, in a `static`).
    #[cfg(not(loom))]
    pub const fn with_epoch(overflow: Overflow, epoch: Epoch) -> Self {
        QueueStore {
            state: Locked::new(State::new()),
            overflow,
            epoch,
        }
    }

    /// An empty queue (loom's locks cannot be built in a `const fn`).
    #[cfg(loom)]
    pub fn new(overflow: Overflow) -> Self {
        QueueStore {
            state: Locked::new(State::new()),
            overflow,
            epoch: Epoch::new(0),
        }
    }

    /// The identity every position of this store carries.
    pub const fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// How many messages the ring retains.
    pub const fn capacity(&self) -> usize {
        CAPACITY
    }

    /// The store's overflow policy.
    pub const fn overflow(&self) -> Overflow {
        self.overflow
    }

    /// The position of the newest message (offset 0 if none yet).
    pub fn last_position(&self) -> Position {
        Position::new(self.epoch, self.state.lock(|state| state.last))
    }

    /// Submits a message if there is room now; under [`Overflow::Wait`] a full queue hands
    /// it back in [`TrySubmitError::Full`].
    pub fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
        let (position, replaced, readers, others) = self.state.lock(|state| {
            if state.closed {
                return Err(TrySubmitError::Closed(value));
            }
            let position = state.last + 1;
            let subscribers = state.subscribers;
            let slot = state.slot(position);
            if self.overflow == Overflow::Wait && slot.unread > 0 {
                return Err(TrySubmitError::Full(value));
            }
            slot.position = position;
            slot.unread = subscribers;
            let replaced = slot.value.replace(value);
            state.last = position;
            // `closed()` waiters are woken too: they cannot tell a submit from a close.
            Ok((
                position,
                replaced,
                state.readers.take(),
                state.others.take(),
            ))
        })?;
        drop(replaced);
        readers.wake();
        others.wake();
        Ok(Position::new(self.epoch, position))
    }

    /// Submits a message, waiting for room under [`Overflow::Wait`]; hands it back once
    /// the store is closed.
    pub async fn submit(&self, value: T) -> Result<Position, SubmitError<T>> {
        let mut value = Some(value);
        core::future::poll_fn(|cx| {
            match self.try_submit(value.take().expect("polled after completion")) {
                Ok(position) => Poll::Ready(Ok(position)),
                Err(TrySubmitError::Closed(v)) => Poll::Ready(Err(SubmitError::Closed(v))),
                Err(TrySubmitError::OutcomeUnknown(v)) => {
                    Poll::Ready(Err(SubmitError::OutcomeUnknown(v)))
                }
                Err(TrySubmitError::Full(v) | TrySubmitError::WouldBlock(v)) => {
                    let to_wake = self.state.lock(|state| {
                        let position = state.last + 1;
                        let still_full = !state.closed && state.slot(position).unread > 0;
                        still_full.then(|| state.others.register(cx.waker()))
                    });
                    match to_wake {
                        Some(to_wake) => to_wake.wake(),
                        // Room was made (or the store closed) since: try again now.
                        None => cx.waker().wake_by_ref(),
                    }
                    value = Some(v);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// [`submit`](QueueStore::submit) for a thread outside any async runtime: parks the
    /// thread while a lossless queue is full.
    ///
    /// ```
    /// use storecast::fixed::QueueStore;
    /// use storecast::Overflow;
    ///
    /// static SAMPLES: QueueStore<u16, 2> = QueueStore::new(Overflow::Wait);
    /// let mut subscriber = SAMPLES.subscribe();
    /// let reader = std::thread::spawn(move || {
    ///     (0..10).map(|_| *subscriber.recv_blocking().unwrap()).collect::<Vec<_>>()
    /// });
    /// for n in 0..10 {
    ///     SAMPLES.submit_blocking(n).unwrap(); // waits while the reader is 2 behind
    /// }
    /// assert_eq!(reader.join().unwrap(), (0..10).collect::<Vec<_>>());
    /// ```
    #[cfg(feature = "std")]
    pub fn submit_blocking(&self, value: T) -> Result<Position, SubmitError<T>> {
        crate::recv::block_on(self.submit(value))
    }

    /// Subscribes as a new subscriber: messages submitted from now on.
    ///
    /// # Panics
    ///
    /// If the store already has `SUBSCRIBERS` subscribers (see
    /// [`try_subscribe_from`](QueueStore::try_subscribe_from)).
    pub fn subscribe(&self) -> QueueSubscriber<'_, T>
    where
        T: Clone + Send,
        M: Sync,
    {
        self.subscribe_from(Start::Now)
    }

    /// Subscribes from `start`: now, the oldest retained message, or right after a
    /// position. A position no longer retained yields [`RecvError::Lagged`] first; one
    /// the store cannot place (another epoch, or ahead) [`RecvError::Reset`].
    ///
    /// # Panics
    ///
    /// If the store already has `SUBSCRIBERS` subscribers (see
    /// [`try_subscribe_from`](QueueStore::try_subscribe_from)).
    pub fn subscribe_from(&self, start: Start) -> QueueSubscriber<'_, T>
    where
        T: Clone + Send,
        M: Sync,
    {
        self.try_subscribe_from(start)
            .unwrap_or_else(|limit| panic!("{limit}"))
    }

    /// Subscribes from `start`, or says that the store already has `SUBSCRIBERS`
    /// subscribers.
    pub fn try_subscribe_from(
        &self,
        start: Start,
    ) -> Result<QueueSubscriber<'_, T>, SubscriberLimit>
    where
        T: Clone + Send,
        M: Sync,
    {
        let (slot, placed) = self.state.lock(|state| {
            let slot = state
                .readers
                .join()
                .ok_or(SubscriberLimit { limit: SUBSCRIBERS })?;
            let last = state.last;
            let placed = start.place_in_queue(self.epoch, last, CAPACITY as u64);
            if self.overflow == Overflow::Wait {
                // The backlog this subscriber will read must wait for it too.
                for position in placed.next..=last {
                    state.slot(position).unread += 1;
                }
            }
            state.subscribers += 1;
            Ok((slot, placed))
        })?;
        Ok(QueueSubscriber {
            store: self,
            cursor: Cursor {
                slot,
                next: placed.next,
                missed: placed.missed,
                reset: placed.reset,
                ended: false,
                registered: true,
            },
        })
    }

    /// Closes the store: submits are refused from now on (waiting ones too); subscribers
    /// read what is left, then their streams end.
    pub fn close(&self) {
        let (readers, others) = self.state.lock(|state| {
            state.closed = true;
            (state.readers.take(), state.others.take())
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
        self.state.lock(|state| state.subscribers)
    }

    /// Removes a subscriber from the accounting (once); returns the submitters to wake.
    fn deregister(
        &self,
        state: &mut State<T, CAPACITY, SUBSCRIBERS>,
        cursor: &mut Cursor,
    ) -> ToWake<SUBSCRIBERS> {
        if !core::mem::replace(&mut cursor.registered, false) {
            return ToWake::default();
        }
        state.subscribers -= 1;
        // Dropped under the lock: a waker of this subscriber's own, nobody is woken.
        drop(state.readers.leave(cursor.slot));
        if self.overflow == Overflow::Wait {
            for position in cursor.next..=state.last {
                let slot = state.slot(position);
                if slot.position == position {
                    slot.unread -= 1;
                }
            }
        }
        state.others.take()
    }
}

impl<T, const CAPACITY: usize, const SUBSCRIBERS: usize, M: RawMutex> fmt::Debug
    for QueueStore<T, CAPACITY, SUBSCRIBERS, M>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (last, subscribers, closed) = self
            .state
            .lock(|state| (state.last, state.subscribers, state.closed));
        f.debug_struct("fixed::QueueStore")
            .field("epoch", &self.epoch)
            .field("capacity", &CAPACITY)
            .field("overflow", &self.overflow)
            .field("last", &last)
            .field("subscribers", &subscribers)
            .field("closed", &closed)
            .finish()
    }
}

/// Where a subscriber is in the ring.
#[derive(Debug)]
struct Cursor {
    /// This subscriber's waker slot in the store.
    slot: usize,
    /// The position this subscriber reads next.
    next: u64,
    /// Messages lost before `next` that have not been reported yet.
    missed: u64,
    /// Why its position could not be placed, not reported yet (before `missed`).
    reset: Option<ResetReason>,
    /// The stream has ended (drained a closed store, or fell behind).
    ended: bool,
    /// Still counted by the store.
    registered: bool,
}

/// What a subscriber needs of its store, without the store's sizes in its type.
trait Ring<T>: Sync {
    fn poll_read(
        &self,
        cursor: &mut Cursor,
        cx: Option<&mut Context<'_>>,
    ) -> Poll<Option<FixedItem<T>>>;
    fn leave(&self, cursor: &mut Cursor);
    fn epoch(&self) -> Epoch;
}

impl<T: Clone + Send, const CAPACITY: usize, const SUBSCRIBERS: usize, M: RawMutex + Sync> Ring<T>
    for QueueStore<T, CAPACITY, SUBSCRIBERS, M>
{
    fn poll_read(
        &self,
        cursor: &mut Cursor,
        cx: Option<&mut Context<'_>>,
    ) -> Poll<Option<FixedItem<T>>> {
        if cursor.ended {
            return Poll::Ready(None);
        }
        if let Some(reason) = cursor.reset.take() {
            return Poll::Ready(Some(Err(RecvError::Reset { reason })));
        }
        if cursor.missed > 0 {
            let missed = core::mem::take(&mut cursor.missed);
            return Poll::Ready(Some(Err(RecvError::Lagged { missed })));
        }
        let (item, to_wake) = self.state.lock(|state| {
            if cursor.next > state.last {
                if state.closed {
                    cursor.ended = true;
                    return (Poll::Ready(None), ToWake::default());
                }
                // Registered under the lock `try_submit` takes: no wake-up slips between.
                // The slot is this subscriber's own: registering never evicts another.
                if let Some(cx) = cx {
                    state.readers.register(cursor.slot, cx.waker());
                }
                return (Poll::Pending, ToWake::default());
            }
            let next = cursor.next;
            let overflow = self.overflow;
            let slot = state.slot(next);
            if slot.position == next {
                let value = slot.value.clone().expect("a written slot holds a value");
                let freed = overflow == Overflow::Wait && {
                    slot.unread -= 1;
                    slot.unread == 0
                };
                let to_wake = if freed {
                    state.others.take()
                } else {
                    ToWake::default()
                };
                cursor.next += 1;
                let position = Position::new(self.epoch, next);
                return (
                    Poll::Ready(Some(Ok(FixedMessage { position, value }))),
                    to_wake,
                );
            }
            // Overwritten: under a lossy policy the ring moved on without this subscriber.
            match overflow {
                Overflow::DropOldest => {
                    let oldest = oldest_retained(state.last, CAPACITY as u64);
                    cursor.next = oldest;
                    let missed = oldest - next;
                    (
                        Poll::Ready(Some(Err(RecvError::Lagged { missed }))),
                        ToWake::default(),
                    )
                }
                Overflow::Disconnect => {
                    cursor.ended = true;
                    let to_wake = self.deregister(state, cursor);
                    let fell_behind = RecvError::FellBehind { capacity: CAPACITY };
                    (Poll::Ready(Some(Err(fell_behind))), to_wake)
                }
                Overflow::Wait => {
                    unreachable!("a lossless ring never overwrites an unread message")
                }
            }
        });
        to_wake.wake();
        item
    }

    fn leave(&self, cursor: &mut Cursor) {
        let to_wake = self.state.lock(|state| self.deregister(state, cursor));
        to_wake.wake();
    }

    fn epoch(&self) -> Epoch {
        self.epoch
    }
}

/// A subscription to a fixed-capacity [`QueueStore`]: a [`Stream`] of every message in
/// order, with lag reported as [`RecvError`] items. Dropping it deregisters it.
pub struct QueueSubscriber<'a, T> {
    store: &'a dyn Ring<T>,
    cursor: Cursor,
}

impl<T> QueueSubscriber<'_, T> {
    /// Waits for the next message, with news of any it missed as `Err`, and
    /// [`RecvError::Closed`] once the store is closed and everything is read.
    ///
    /// ```
    /// use futures_lite::future::block_on;
    /// use storecast::fixed::QueueStore;
    /// use storecast::{Overflow, RecvError};
    ///
    /// static KEYS: QueueStore<char, 4> = QueueStore::new(Overflow::Wait);
    /// let mut subscriber = KEYS.subscribe();
    /// KEYS.try_submit('a').unwrap();
    /// KEYS.close();
    /// block_on(async {
    ///     assert_eq!(*subscriber.recv().await.unwrap(), 'a');
    ///     assert_eq!(subscriber.recv().await.unwrap_err(), RecvError::Closed);
    /// });
    /// ```
    pub fn recv(&mut self) -> Recv<'_, Self> {
        Recv::new(self)
    }

    /// The next message if one is ready, without waiting: [`TryRecvError::Empty`] when
    /// nothing is new yet, [`TryRecvError::Closed`] when nothing more will come.
    ///
    /// ```
    /// use storecast::fixed::QueueStore;
    /// use storecast::{Overflow, TryRecvError};
    ///
    /// static EVENTS: QueueStore<u8, 4> = QueueStore::new(Overflow::Wait);
    /// let mut subscriber = EVENTS.subscribe();
    /// assert_eq!(subscriber.try_recv().unwrap_err(), TryRecvError::Empty);
    /// EVENTS.try_submit(1).unwrap();
    /// assert_eq!(*subscriber.try_recv().unwrap(), 1);
    /// EVENTS.close();
    /// assert_eq!(subscriber.try_recv().unwrap_err(), TryRecvError::Closed);
    /// ```
    pub fn try_recv(&mut self) -> Result<FixedMessage<T>, TryRecvError> {
        match self.store.poll_read(&mut self.cursor, None) {
            Poll::Ready(Some(item)) => item.map_err(TryRecvError::from),
            Poll::Ready(None) => Err(TryRecvError::Closed),
            Poll::Pending => Err(TryRecvError::Empty),
        }
    }

    /// [`recv`](QueueSubscriber::recv) for a thread outside any async runtime: parks the
    /// thread until a message comes.
    #[cfg(feature = "std")]
    pub fn recv_blocking(&mut self) -> Result<FixedMessage<T>, RecvError> {
        crate::recv::block_on(self.recv())
    }

    /// The position of the next message this subscriber will read.
    pub fn next_position(&self) -> Position {
        Position::new(self.store.epoch(), self.cursor.next)
    }
}

impl<T> Stream for QueueSubscriber<'_, T> {
    type Item = FixedItem<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FixedItem<T>>> {
        let this = self.get_mut();
        this.store.poll_read(&mut this.cursor, Some(cx))
    }
}

impl<T> Drop for QueueSubscriber<'_, T> {
    fn drop(&mut self) {
        self.store.leave(&mut self.cursor);
    }
}

impl<T> fmt::Debug for QueueSubscriber<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("fixed::QueueSubscriber")
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}
