//! The queue store: every subscriber gets every message, in order, from a bounded ring
//! shared by all of them.

use alloc::sync::Arc;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use event_listener::Event;
use futures_core::Stream;

use crate::backpressure::Backpressure;
use crate::notify::{Parking, Published, Wakers};
use crate::position::oldest_retained;
use crate::recv::Recv;
use crate::slot::{Miss, Ring, Slot};
use crate::store::{Item, Message, Store, Subscriber};
use crate::sync::{AtomicBool, AtomicUsize, CachePadded, Mutex, Ordering};
use crate::wait::poll_until;
use crate::{
    Epoch, Overflow, Position, RecvError, ResetReason, Start, SubmitError, TryRecvError,
    TrySubmitError,
};

/// A queue store (Tornadose's `QueueStore`, with bounded memory): every subscriber gets
/// every message submitted after it subscribed, in order, none twice.
///
/// # Memory
///
/// A ring keeps the last `capacity` messages, shared by all subscribers: a value is stored
/// once (in an `Arc`) however many subscribers read it, so `T` needs no `Clone`.
///
/// # Overflow
///
/// When the slowest subscriber is `capacity` messages behind, the store's [`Overflow`]
/// policy decides, and never silently:
///
/// - [`Overflow::Wait`] (the default, lossless): [`submit`](QueueStore::submit) waits for
///   room; [`try_submit`](QueueStore::try_submit) reports [`TrySubmitError::Full`].
/// - [`Overflow::DropOldest`]: the oldest message is overwritten; the laggard's next item
///   is [`RecvError::Lagged`] with how many it missed, then it goes on.
/// - [`Overflow::Disconnect`]: the laggard's next item is [`RecvError::FellBehind`], then
///   its stream ends.
///
/// A dropped subscriber is deregistered at once: it never holds up a waiting submitter.
///
/// Under `Wait`, "`capacity` behind" is exact for capacities up to 15. Larger rings track
/// readers in blocks of `capacity / 8` messages (one shared write per block rather than
/// per message), and have `capacity / 8 - 1` slots more: a submitter never waits while the
/// slowest subscriber has fewer than `capacity` messages unread, and always waits once it
/// has `capacity + capacity / 8 - 1` (1,151 at 1,024), depending on where that subscriber
/// is within its block.
///
/// # Positions and resuming
///
/// Every store draws a random [`Epoch`] when it is made ([`QueueStore::with_epoch`]
/// takes one instead); its messages' [`Position`]s carry it, and their offsets are
/// consecutive from 1. [`subscribe_from`](QueueStore::subscribe_from) starts at a retained
/// position, or at the oldest retained message; asking for a position that is gone yields
/// [`RecvError::Lagged`] with the number lost first, then the oldest retained message. A
/// position of another epoch (a client of an earlier run of the server), or ahead of the
/// store, yields [`RecvError::Reset`] first, then the oldest retained message.
///
/// # Closing
///
/// After [`close`](QueueStore::close), submits are refused (waiting ones too, with their
/// message handed back); subscribers read what is left, then their streams end. Dropping
/// the last handle to the store (not counting subscribers) closes it.
///
/// # Example
///
/// ```
/// use futures_lite::{future::block_on, StreamExt};
/// use storecast::{Overflow, QueueStore};
///
/// let store = QueueStore::with_overflow(16, Overflow::Wait);
/// let mut subscriber = store.subscribe();
///
/// block_on(async {
///     for word in ["every", "message", "in", "order"] {
///         store.submit(word).await.unwrap();
///     }
///     store.close();
///
///     let mut words = Vec::new();
///     while let Some(item) = subscriber.next().await {
///         words.push(*item.unwrap());
///     }
///     assert_eq!(words, ["every", "message", "in", "order"]);
/// });
/// ```
pub struct QueueStore<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    /// The identity every position of this store carries.
    epoch: Epoch,
    /// Handles to the store (not subscribers): the last one to go closes it.
    handles: AtomicUsize,
    /// The ring: message at position `p` lives in slot `p % slots.len()` (allocated as
    /// messages first reach it). Under `Wait`,
    /// subscribers read slots unguarded: `backpressure` keeps submitters from overwriting
    /// a message someone has yet to read. Under the lossy policies they read guarded
    /// (see `slot.rs`).
    slots: Ring<T>,
    /// How many messages are retained (and, under `Wait`, may be unread) at most.
    capacity: usize,
    /// Under `Wait`: which blocks of the ring every subscriber has read.
    backpressure: Option<Backpressure>,
    /// The position of the newest message. Written only under `state`; read without a
    /// lock by subscribers to tell whether anything is new.
    /// On a cache line of its own: every submit writes it, and the read-mostly fields
    /// around it would otherwise miss in every subscriber's cache each time.
    last: Published,
    /// Serialises submitters with (de)registration of subscribers, so that the
    /// back-pressure counts always match the subscribers that still have to read.
    state: CachePadded<Mutex<State>>,
    /// Mirrors `State::closed` for lock-free checks by subscribers.
    closed: AtomicBool,
    /// Parked subscribers, woken when a message is published or the store closes.
    wakers: Wakers,
    /// Wakes waiting submitters: a slot was freed, a subscriber left, or the store closed.
    freed: Event,
    /// What happens when the slowest subscriber is `capacity` behind.
    overflow: Overflow,
    /// Live subscribers, for `subscriber_count` without the lock.
    subscribers: AtomicUsize,
}

struct State {
    /// Subscribers that every newly submitted message must wait for (under `Wait`).
    subscribers: usize,
    /// Under `Wait`: the first block of the ring not known to be read by everyone.
    oldest_open: u64,
    /// Set once by `close`.
    closed: bool,
}

impl<T> QueueStore<T> {
    /// A lossless queue ([`Overflow::Wait`]) retaining the last `capacity` messages, with
    /// a random epoch.
    ///
    /// # Panics
    ///
    /// If `capacity` is zero.
    #[cfg(feature = "std")]
    pub fn new(capacity: usize) -> Self {
        QueueStore::with_overflow(capacity, Overflow::Wait)
    }

    /// A queue retaining the last `capacity` messages, with the given overflow policy and
    /// a random epoch.
    ///
    /// # Panics
    ///
    /// If `capacity` is zero.
    #[cfg(feature = "std")]
    pub fn with_overflow(capacity: usize, overflow: Overflow) -> Self {
        QueueStore::with_epoch(capacity, overflow, Epoch::random())
    }

    /// A queue retaining the last `capacity` messages, with the given overflow policy,
    /// whose positions carry `epoch`. Without `std` this is how a queue is made: give each
    /// life of the store an epoch of its own (from a hardware random generator, or a boot
    /// counter kept in flash), so that a client of an earlier life is told to start over.
    ///
    /// ```
    /// use storecast::{Epoch, Overflow, QueueStore};
    ///
    /// let store = QueueStore::<u8>::with_epoch(8, Overflow::Wait, Epoch::new(7));
    /// assert_eq!(store.epoch(), Epoch::new(7));
    /// ```
    ///
    /// # Panics
    ///
    /// If `capacity` is zero.
    pub fn with_epoch(capacity: usize, overflow: Overflow, epoch: Epoch) -> Self {
        assert!(capacity > 0, "a QueueStore needs a capacity of at least 1");
        let backpressure = (overflow == Overflow::Wait).then(|| Backpressure::new(capacity));
        let ring = backpressure
            .as_ref()
            .map_or(capacity, Backpressure::ring_len);
        QueueStore {
            shared: Arc::new(Shared {
                epoch,
                handles: AtomicUsize::new(1),
                slots: Ring::new(ring),
                capacity,
                backpressure,
                last: Published::new(0),
                state: CachePadded(Mutex::new(State {
                    subscribers: 0,
                    oldest_open: 0,
                    closed: false,
                })),
                closed: AtomicBool::new(false),
                wakers: Wakers::new(),
                freed: Event::new(),
                overflow,
                subscribers: AtomicUsize::new(0),
            }),
        }
    }

    /// The identity every position of this store carries.
    pub fn epoch(&self) -> Epoch {
        self.shared.epoch
    }

    /// How many messages the ring retains.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// The store's overflow policy.
    pub fn overflow(&self) -> Overflow {
        self.shared.overflow
    }

    /// The position of the newest message (offset 0 if none yet).
    pub fn last_position(&self) -> Position {
        Position::new(self.shared.epoch, self.shared.last.load())
    }

    /// Submits a message, waiting for room under [`Overflow::Wait`]; never waits under the
    /// other policies. Returns the message's position, or hands it back once the store is
    /// closed.
    pub async fn submit(&self, value: T) -> Result<Position, SubmitError<T>> {
        self.submit_arc(Arc::new(value))
            .await
            .map_err(|e| SubmitError::Closed(unwrap_unshared(e.into_inner())))
    }

    /// Submits an already shared value; see [`submit`](QueueStore::submit).
    pub async fn submit_arc(&self, value: Arc<T>) -> Result<Position, SubmitError<Arc<T>>> {
        let mut value = Some(value);
        let mut listener = None;
        core::future::poll_fn(|cx| {
            poll_until(&self.shared.freed, &mut listener, cx, || {
                let v = value.take().expect("polled after completion");
                match self.shared.try_publish(v) {
                    Ok(position) => Some(Ok(position)),
                    Err(TrySubmitError::Closed(v)) => Some(Err(SubmitError::Closed(v))),
                    Err(TrySubmitError::OutcomeUnknown(v)) => {
                        Some(Err(SubmitError::OutcomeUnknown(v)))
                    }
                    Err(TrySubmitError::Full(v) | TrySubmitError::WouldBlock(v)) => {
                        value = Some(v);
                        None
                    }
                }
            })
        })
        .await
    }

    /// Submits a message if there is room now; under [`Overflow::Wait`] a full queue hands
    /// it back in [`TrySubmitError::Full`].
    pub fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
        self.shared
            .try_publish(Arc::new(value))
            .map_err(unwrap_refused)
    }

    /// Submits an already shared value if there is room now; see
    /// [`try_submit`](QueueStore::try_submit).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use storecast::QueueStore;
    ///
    /// let big = Arc::new(vec![0u8; 1 << 20]);
    /// let (a, b) = (QueueStore::new(4), QueueStore::new(4));
    /// let mut on_b = b.subscribe();
    /// a.try_submit_arc(Arc::clone(&big)).unwrap();
    /// b.try_submit_arc(Arc::clone(&big)).unwrap(); // one megabyte, in both stores
    /// assert!(Arc::ptr_eq(on_b.try_recv().unwrap().value(), &big));
    /// ```
    pub fn try_submit_arc(&self, value: Arc<T>) -> Result<Position, TrySubmitError<Arc<T>>> {
        self.shared.try_publish(value)
    }

    /// [`submit`](QueueStore::submit) for a thread outside any async runtime: parks the
    /// thread while a lossless queue is full. Inside a runtime's task it would block the
    /// runtime's thread: use `submit().await` there.
    ///
    /// ```
    /// use storecast::QueueStore;
    ///
    /// let store = QueueStore::new(1);
    /// let mut subscriber = store.subscribe();
    /// let writer = {
    ///     let store = store.clone();
    ///     std::thread::spawn(move || {
    ///         for n in 0..100 {
    ///             store.submit_blocking(n).unwrap(); // waits for the reader each time
    ///         }
    ///     })
    /// };
    /// for n in 0..100 {
    ///     assert_eq!(*subscriber.recv_blocking().unwrap(), n);
    /// }
    /// writer.join().unwrap();
    /// ```
    #[cfg(feature = "std")]
    pub fn submit_blocking(&self, value: T) -> Result<Position, SubmitError<T>> {
        crate::recv::block_on(self.submit(value))
    }

    /// Submits through the returned [`Batch`] to wake waiting subscribers once for many
    /// messages: a producer that has several at hand (a batch read from the network)
    /// spares its subscribers a wake-up for each.
    ///
    /// ```
    /// use storecast::QueueStore;
    ///
    /// let store = QueueStore::new(8);
    /// let mut subscriber = store.subscribe();
    /// let mut batch = store.batch();
    /// for n in 0..3 {
    ///     batch.try_submit(n).unwrap();
    /// }
    /// batch.flush(); // or drop it
    /// assert_eq!(*subscriber.try_recv().unwrap(), 0);
    /// ```
    pub fn batch(&self) -> Batch<'_, T> {
        Batch {
            store: self,
            parked: false,
        }
    }

    /// Whether a message could be submitted now without waiting: always under
    /// [`Overflow::DropOldest`] and [`Overflow::Disconnect`]; under [`Overflow::Wait`], when
    /// the slowest subscriber is less than `capacity` behind. A closed store has no room.
    pub fn has_room(&self) -> bool {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        if state.closed {
            return false;
        }
        let position = shared.last.load() + 1;
        match &shared.backpressure {
            Some(backpressure) => backpressure.has_room(position, &mut state.oldest_open),
            None => true,
        }
    }

    /// Waits until there is room for a message (see [`has_room`](QueueStore::has_room)),
    /// or fails once the store is closed.
    ///
    /// For a store that writes a message elsewhere before it arrives here (a Redis queue
    /// waits for room, then adds to its stream): nothing is reserved, so concurrent callers
    /// may all see the same room.
    pub async fn room(&self) -> Result<(), SubmitError<()>> {
        let mut listener = None;
        core::future::poll_fn(|cx| {
            poll_until(&self.shared.freed, &mut listener, cx, || {
                if self.is_closed() {
                    Some(Err(SubmitError::Closed(())))
                } else if self.has_room() {
                    Some(Ok(()))
                } else {
                    None
                }
            })
        })
        .await
    }

    /// Subscribes as a new subscriber: messages submitted from now on.
    pub fn subscribe(&self) -> QueueSubscriber<T> {
        self.subscribe_from(Start::Now)
    }

    /// Subscribes from `start`: now, the oldest retained message, or right after a
    /// position. A position no longer retained yields [`RecvError::Lagged`] first; one
    /// the store cannot place (another epoch, or ahead) [`RecvError::Reset`].
    pub fn subscribe_from(&self, start: Start) -> QueueSubscriber<T> {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        let last = shared.last.load();
        let placed = start.place_in_queue(shared.epoch, last, shared.capacity as u64);
        let next = placed.next;
        if let Some(backpressure) = &shared.backpressure {
            // The backlog this subscriber will read must wait for it too.
            backpressure.join(next, last, &mut state.oldest_open);
        }
        state.subscribers += 1;
        shared.subscribers.fetch_add(1, Ordering::Relaxed);
        drop(state);
        QueueSubscriber {
            shared: Arc::clone(&self.shared),
            cursor: Cursor {
                next,
                missed: placed.missed,
                reset: placed.reset,
                ended: false,
                registered: true,
            },
            parking: shared.wakers.parking(),
        }
    }

    /// Closes the store: submits are refused from now on (waiting ones too); subscribers
    /// read what is left, then their streams end.
    pub fn close(&self) {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        if state.closed {
            return;
        }
        state.closed = true;
        shared.closed.store(true, Ordering::Release);
        drop(state);
        shared.wakers.wake_all();
        shared.freed.notify(usize::MAX);
    }

    /// Whether the store is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Waits until the store is closed (by [`close`](QueueStore::close), or by its last
    /// handle going).
    pub async fn closed(&self) {
        let mut listener = None;
        core::future::poll_fn(|cx| {
            poll_until(&self.shared.freed, &mut listener, cx, || {
                self.is_closed().then_some(())
            })
        })
        .await
    }

    /// How many subscribers are registered now.
    pub fn subscriber_count(&self) -> usize {
        self.shared.subscribers.load(Ordering::Relaxed)
    }
}

impl<T> Shared<T> {
    /// The slot of a published position.
    fn slot(&self, position: u64) -> &Slot<T> {
        self.slots
            .slot((position % self.slots.len() as u64) as usize)
    }

    fn try_publish(&self, value: Arc<T>) -> Result<Position, TrySubmitError<Arc<T>>> {
        let (position, parked) = self.try_publish_quietly(value)?;
        if parked {
            self.wakers.wake_all();
        }
        Ok(position)
    }

    /// [`try_publish`](Shared::try_publish) without waking parked subscribers: says
    /// whether any was, and the caller must then wake them.
    fn try_publish_quietly(
        &self,
        value: Arc<T>,
    ) -> Result<(Position, bool), TrySubmitError<Arc<T>>> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if state.closed {
            return Err(TrySubmitError::Closed(value));
        }
        let position = self.last.load() + 1;
        let slot = self
            .slots
            .slot_to_write((position % self.slots.len() as u64) as usize);
        let replaced = match &self.backpressure {
            Some(backpressure) => {
                if !backpressure.has_room(position, &mut state.oldest_open) {
                    return Err(TrySubmitError::Full(value));
                }
                backpressure.starting(position, state.subscribers);
                // SAFETY: `has_room` acquired every subscriber's "read it" for the message
                // this one replaces; under `Wait` nobody reads guarded; submitters are
                // serialised by `state`.
                unsafe { slot.write_exclusive(position, value) }
            }
            None => slot.write_guarded(position, value),
        };
        // Published after the slot is written, so a subscriber that sees `last` finds it.
        let parked = self.last.publish(position);
        drop(guard);
        // The overwritten value's destructor runs outside the locks.
        drop(replaced);
        Ok((Position::new(self.epoch, position), parked))
    }
}

/// Submits several messages to a [`QueueStore`] and wakes waiting subscribers once for
/// all of them, when it is [flushed](Batch::flush) or dropped, rather than once for each
/// (see [`QueueStore::batch`]).
#[derive(Debug)]
pub struct Batch<'a, T> {
    store: &'a QueueStore<T>,
    /// Whether a subscriber waits for a message already submitted.
    parked: bool,
}

impl<T> Batch<'_, T> {
    /// [`QueueStore::try_submit_arc`], without waking anyone yet.
    pub fn try_submit_arc(&mut self, value: Arc<T>) -> Result<Position, TrySubmitError<Arc<T>>> {
        let (position, parked) = self.store.shared.try_publish_quietly(value)?;
        self.parked |= parked;
        Ok(position)
    }

    /// [`QueueStore::try_submit`], without waking anyone yet.
    pub fn try_submit(&mut self, value: T) -> Result<Position, TrySubmitError<T>> {
        self.try_submit_arc(Arc::new(value)).map_err(unwrap_refused)
    }

    /// Wakes the subscribers waiting for what was submitted so far. Call it before
    /// waiting for anything (room in a lossless queue, above all: the subscribers who would
    /// make it may be the ones waiting).
    pub fn flush(&mut self) {
        if core::mem::take(&mut self.parked) {
            self.store.shared.wakers.wake_all();
        }
    }
}

impl<T> Drop for Batch<'_, T> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A refusal of a value that was never shared, with the value recovered.
fn unwrap_refused<T>(refused: TrySubmitError<Arc<T>>) -> TrySubmitError<T> {
    match refused {
        TrySubmitError::Full(v) => TrySubmitError::Full(unwrap_unshared(v)),
        TrySubmitError::Closed(v) => TrySubmitError::Closed(unwrap_unshared(v)),
        TrySubmitError::WouldBlock(v) => TrySubmitError::WouldBlock(unwrap_unshared(v)),
        TrySubmitError::OutcomeUnknown(v) => TrySubmitError::OutcomeUnknown(unwrap_unshared(v)),
    }
}

/// Recovers a value that was never shared with anyone.
fn unwrap_unshared<T>(value: Arc<T>) -> T {
    Arc::try_unwrap(value)
        .ok()
        .expect("a value refused by the store was never shared")
}

/// Another handle to the same store.
impl<T> Clone for QueueStore<T> {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        QueueStore {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The last handle to go closes the store: nobody can submit any more, so subscribers
/// read what is left and end, as every channel's receivers do when its senders are gone.
impl<T> Drop for QueueStore<T> {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.close();
        }
    }
}

impl<T> fmt::Debug for QueueStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueStore")
            .field("epoch", &self.epoch())
            .field("capacity", &self.capacity())
            .field("overflow", &self.overflow())
            .field("last", &self.last_position())
            .field("subscribers", &self.subscriber_count())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T: Send + Sync + 'static> Store for QueueStore<T> {
    type Value = T;
    type Subscriber = QueueSubscriber<T>;

    fn submit(&self, value: T) -> impl Future<Output = Result<Position, SubmitError<T>>> + Send {
        QueueStore::submit(self, value)
    }

    fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
        QueueStore::try_submit(self, value)
    }

    fn subscribe_from(&self, start: Start) -> QueueSubscriber<T> {
        QueueStore::subscribe_from(self, start)
    }

    fn close(&self) {
        QueueStore::close(self)
    }

    fn is_closed(&self) -> bool {
        QueueStore::is_closed(self)
    }

    fn closed(&self) -> impl Future<Output = ()> + Send {
        QueueStore::closed(self)
    }

    fn subscriber_count(&self) -> usize {
        QueueStore::subscriber_count(self)
    }
}

/// A subscription to a [`QueueStore`]: a [`Stream`] of every message in order, with lag
/// reported as [`RecvError`] items. Dropping it deregisters it.
pub struct QueueSubscriber<T> {
    shared: Arc<Shared<T>>,
    cursor: Cursor,
    /// Where this subscriber's waker goes while it waits for a message.
    parking: Parking,
}

/// Where a subscriber is in the ring.
#[derive(Debug)]
struct Cursor {
    /// The position this subscriber reads next.
    next: u64,
    /// Messages lost before `next` that have not been reported yet.
    missed: u64,
    /// Why its position could not be placed, not reported yet (before `missed`).
    reset: Option<ResetReason>,
    /// The stream has ended (drained a closed store, or fell behind).
    ended: bool,
    /// Still counted by the store (false once it fell behind and was cut off).
    registered: bool,
}

/// What one read attempt found.
enum Read<T> {
    Item(Item<T>),
    Empty,
    Ended,
}

impl<T> QueueSubscriber<T> {
    /// Waits for the next message: every message in order, with news of any it missed as
    /// `Err` ([`RecvError::Lagged`], [`RecvError::FellBehind`], [`RecvError::Reset`]),
    /// and [`RecvError::Closed`] once the store is closed and everything is read.
    ///
    /// ```
    /// use futures_lite::future::block_on;
    /// use storecast::{QueueStore, RecvError};
    ///
    /// let store = QueueStore::new(4);
    /// let mut subscriber = store.subscribe();
    /// store.try_submit("one").unwrap();
    /// store.close();
    /// block_on(async {
    ///     assert_eq!(*subscriber.recv().await.unwrap(), "one");
    ///     assert_eq!(subscriber.recv().await.unwrap_err(), RecvError::Closed);
    /// });
    /// ```
    pub fn recv(&mut self) -> Recv<'_, Self> {
        Recv::new(self)
    }

    /// The next message if one is ready, without waiting:
    /// [`TryRecvError::Empty`] when nothing is new yet, [`TryRecvError::Closed`] when
    /// nothing more will come, and the same news as [`recv`](QueueSubscriber::recv).
    ///
    /// ```
    /// use storecast::{QueueStore, TryRecvError};
    ///
    /// let store = QueueStore::new(4);
    /// let mut subscriber = store.subscribe();
    /// assert_eq!(subscriber.try_recv().unwrap_err(), TryRecvError::Empty);
    /// store.try_submit(7).unwrap();
    /// assert_eq!(*subscriber.try_recv().unwrap(), 7);
    /// store.close();
    /// assert_eq!(subscriber.try_recv().unwrap_err(), TryRecvError::Closed);
    /// ```
    pub fn try_recv(&mut self) -> Result<Message<T>, TryRecvError> {
        match self.shared.read(&mut self.cursor) {
            Read::Item(item) => item.map_err(TryRecvError::from),
            Read::Empty => Err(TryRecvError::Empty),
            Read::Ended => Err(TryRecvError::Closed),
        }
    }

    /// [`recv`](QueueSubscriber::recv) for a thread outside any async runtime: parks the
    /// thread until a message comes. Inside a runtime's task it would block the runtime's
    /// thread: use `recv().await` there.
    ///
    /// ```
    /// use storecast::QueueStore;
    ///
    /// let store = QueueStore::new(4);
    /// let mut subscriber = store.subscribe();
    /// let reader = std::thread::spawn(move || *subscriber.recv_blocking().unwrap());
    /// store.submit_blocking(42).unwrap();
    /// assert_eq!(reader.join().unwrap(), 42);
    /// ```
    #[cfg(feature = "std")]
    pub fn recv_blocking(&mut self) -> Result<Message<T>, RecvError> {
        crate::recv::block_on(self.recv())
    }

    /// The position of the next message this subscriber will read.
    pub fn next_position(&self) -> Position {
        Position::new(self.shared.epoch, self.cursor.next)
    }
}

impl<T> Shared<T> {
    fn read(&self, cursor: &mut Cursor) -> Read<T> {
        if cursor.ended {
            return Read::Ended;
        }
        if let Some(reason) = cursor.reset.take() {
            return Read::Item(Err(RecvError::Reset { reason }));
        }
        if cursor.missed > 0 {
            let missed = core::mem::take(&mut cursor.missed);
            return Read::Item(Err(RecvError::Lagged { missed }));
        }
        if cursor.next > self.last.load() {
            // Closed is checked before `last` is read again: `close` happens after every
            // accepted submit, so closed-then-nothing-new means nothing more will come.
            if self.closed.load(Ordering::Acquire) && cursor.next > self.last.load() {
                cursor.ended = true;
                return Read::Ended;
            }
            return Read::Empty;
        }
        let slot = self.slot(cursor.next);
        let value = if let Some(backpressure) = &self.backpressure {
            // SAFETY: this subscriber is counted in `cursor.next`'s block until it reads
            // the block's last message, so no submitter overwrites it meanwhile; and
            // `cursor.next <= last` (acquired) is published in the slot.
            let value = unsafe { slot.read_unguarded(cursor.next) };
            if backpressure.read(cursor.next) {
                self.freed.notify(usize::MAX);
            }
            value
        } else {
            loop {
                match slot.read_guarded(Some(cursor.next)) {
                    Ok((_, value)) => break value,
                    // Being overwritten, by a newer message (`cursor.next <= last` was
                    // written here already): wait for the new one to learn how far the
                    // ring moved on.
                    Err(Miss::Writing) => slot.wait_written(),
                    Err(Miss::Holds(held)) => {
                        debug_assert!(held > cursor.next);
                        return self.lagged(cursor, held);
                    }
                }
            }
        };
        let message = Message::from_arc(Position::new(self.epoch, cursor.next), value);
        cursor.next += 1;
        Read::Item(Ok(message))
    }

    /// The slot `cursor` wants now holds the newer message `held`: under a lossy policy
    /// the ring moved on without this subscriber.
    fn lagged(&self, cursor: &mut Cursor, held: u64) -> Read<T> {
        match self.overflow {
            Overflow::DropOldest => {
                // `held` may not be published in `last` yet, but it is written: the ring
                // retains nothing older than `capacity` before it.
                let newest = self.last.load().max(held);
                let oldest = oldest_retained(newest, self.capacity as u64);
                let missed = oldest - cursor.next;
                cursor.next = oldest;
                Read::Item(Err(RecvError::Lagged { missed }))
            }
            Overflow::Disconnect => {
                cursor.ended = true;
                self.deregister(cursor);
                Read::Item(Err(RecvError::FellBehind {
                    capacity: self.capacity,
                }))
            }
            Overflow::Wait => unreachable!("a lossless ring never overwrites an unread message"),
        }
    }

    /// Removes a subscriber from the store's accounting (once).
    fn deregister(&self, cursor: &mut Cursor) {
        if !core::mem::replace(&mut cursor.registered, false) {
            return;
        }
        let mut state = self.state.lock();
        state.subscribers -= 1;
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
        if let Some(backpressure) = &self.backpressure {
            // Release the blocks this subscriber was counted in but will never finish.
            backpressure.leave(cursor.next, self.last.load());
        }
        drop(state);
        self.freed.notify(usize::MAX);
    }
}

impl<T> Stream for QueueSubscriber<T> {
    type Item = Item<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item<T>>> {
        let QueueSubscriber {
            shared,
            cursor,
            parking,
        } = self.get_mut();
        let mut parked = false;
        loop {
            match shared.read(cursor) {
                Read::Item(item) => return Poll::Ready(Some(item)),
                Read::Ended => return Poll::Ready(None),
                Read::Empty if parked => return Poll::Pending,
                Read::Empty => {
                    // Registered before the second look, so nothing published in between
                    // goes unnoticed (see `notify.rs`).
                    shared.wakers.park(parking, cx.waker(), &shared.last);
                    parked = true;
                }
            }
        }
    }
}

impl<T: Send + Sync> Subscriber for QueueSubscriber<T> {
    type Value = T;

    fn try_recv(&mut self) -> Result<Message<T>, TryRecvError> {
        QueueSubscriber::try_recv(self)
    }
}

impl<T> Drop for QueueSubscriber<T> {
    fn drop(&mut self) {
        self.shared.wakers.leave(&mut self.parking);
        self.shared.deregister(&mut self.cursor);
    }
}

impl<T> fmt::Debug for QueueSubscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueSubscriber")
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}
