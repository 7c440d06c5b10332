//! The latest-value store: subscribers see the newest value, intermediate ones may be
//! skipped.

use alloc::sync::Arc;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use event_listener::Event;
use futures_core::Stream;

use crate::notify::{Parking, Published, Wakers};
use crate::position::Seen;
use crate::recv::Recv;
use crate::slot::{Miss, Slot};
use crate::store::{Item, Message, Store, Subscriber};
use crate::sync::{AtomicBool, AtomicUsize, CachePadded, Mutex, Ordering};
use crate::wait::poll_until;
use crate::{Epoch, Position, Start, SubmitError, TryRecvError, TrySubmitError};

/// A latest-value store (Tornadose's `DataStore`): it holds one current value, and its
/// subscribers see the newest one.
///
/// # What a subscriber sees
///
/// A new subscriber first gets the current value (if there is one), then every *newer*
/// value. Values submitted faster than a subscriber reads may be skipped, but a subscriber
/// never sees a value twice, never sees an older value after a newer one, and always ends
/// up with the last value submitted. Each value comes with its [`Position`], which
/// carries the store's [`Epoch`] (random, unless given with
/// [`with_epoch`](DataStore::with_epoch)): a subscriber resuming after a position of
/// another epoch, or ahead of the store, first gets [`RecvError::Reset`](crate::RecvError::Reset), then the
/// current value.
///
/// # Submitting
///
/// [`try_submit`](DataStore::try_submit) never waits and never fails for lack of
/// subscribers; it fails only once the store is closed, and then hands the value back.
/// [`submit`](DataStore::submit) is the same call as a future that is ready at once, with
/// the signature of [`Store::submit`] and of the queue's `submit`.
/// [`submit_modify`](DataStore::submit_modify) and
/// [`submit_if_modified`](DataStore::submit_if_modified) make the new value from the
/// current one, atomically.
///
/// # Closing
///
/// After [`close`](DataStore::close), a subscriber that has not yet seen the last value
/// receives it, then its stream ends. Dropping the last handle to the store (not
/// counting subscribers) closes it.
///
/// # Example
///
/// ```
/// use futures_lite::{future::block_on, StreamExt};
/// use storecast::DataStore;
///
/// let store = DataStore::new();
/// store.try_submit("warming up").unwrap();
///
/// let mut subscriber = store.subscribe();
/// store.try_submit("ready").unwrap();
/// store.close();
///
/// block_on(async {
///     // Values submitted before the subscriber polled may be skipped; the last never is.
///     let last = subscriber.next().await.unwrap().unwrap();
///     assert_eq!(*last, "ready");
///     assert!(subscriber.next().await.is_none());
/// });
/// assert_eq!(*store.current().unwrap(), "ready");
/// ```
pub struct DataStore<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    /// The identity every position of this store carries.
    epoch: Epoch,
    /// Handles to the store (not subscribers): the last one to go closes it.
    handles: AtomicUsize,
    /// Notified once, when the store closes (for `closed()`).
    closing: Event,
    /// The current value and its position (0 until the first submit). Readers clone it
    /// without a lock (see `slot.rs`). On a cache line of its own: every read updates its
    /// reader count, and the fields next to it would otherwise miss in every subscriber's
    /// cache.
    current: CachePadded<Slot<T>>,
    /// The position of `current`, published after the value is in place, so that a
    /// subscriber can tell whether anything is new with a single load.
    position: Published,
    /// Serialises submitters with each other and with `close`.
    submitting: Mutex<()>,
    /// Set once by `close`; checked by subscribers after they find nothing new.
    closed: AtomicBool,
    /// Parked subscribers, woken when a value is submitted or the store closes.
    wakers: Wakers,
    /// Live subscribers, for `subscriber_count`.
    subscribers: AtomicUsize,
}

impl<T> DataStore<T> {
    /// An empty store with a random epoch: subscribers wait for the first value.
    #[cfg(feature = "std")]
    pub fn new() -> Self {
        DataStore::with_epoch(Epoch::random())
    }

    /// A store with a random epoch whose current value is `value`, at offset 1.
    #[cfg(feature = "std")]
    pub fn with_value(value: T) -> Self {
        DataStore::build(Epoch::random(), Some(Arc::new(value)))
    }

    /// An empty store whose positions carry `epoch`. Without `std` this is how a store is
    /// made: give each life of the store an epoch of its own.
    ///
    /// ```
    /// use storecast::{DataStore, Epoch};
    ///
    /// let store = DataStore::with_epoch(Epoch::new(7));
    /// assert_eq!(store.try_submit("x").unwrap().epoch(), Epoch::new(7));
    /// ```
    pub fn with_epoch(epoch: Epoch) -> Self {
        DataStore::build(epoch, None)
    }

    fn build(epoch: Epoch, current: Option<Arc<T>>) -> Self {
        let position = u64::from(current.is_some());
        DataStore {
            shared: Arc::new(Shared {
                epoch,
                handles: AtomicUsize::new(1),
                closing: Event::new(),
                current: CachePadded(Slot::new(position, current)),
                position: Published::new(position),
                submitting: Mutex::new(()),
                closed: AtomicBool::new(false),
                wakers: Wakers::new(),
                subscribers: AtomicUsize::new(0),
            }),
        }
    }

    /// Makes `value` the current value and wakes subscribers. Never waits: the future is
    /// ready at once (the same call as [`Store::submit`], for code that also serves
    /// queues); [`try_submit`](DataStore::try_submit) is the same without the `.await`.
    ///
    /// ```
    /// use futures_lite::future::block_on;
    /// use storecast::DataStore;
    ///
    /// let store = DataStore::new();
    /// let position = block_on(store.submit("hello")).unwrap();
    /// assert_eq!(position.offset(), 1);
    /// ```
    pub async fn submit(&self, value: T) -> Result<Position, SubmitError<T>> {
        self.try_submit(value)
            .map_err(|e| SubmitError::Closed(e.into_inner()))
    }

    /// Makes `value` the current value and wakes subscribers, from any thread, inside a
    /// runtime or not (for interrupt handlers, see [`fixed`](crate::fixed)). Fails only
    /// once the store is closed
    /// ([`TrySubmitError::Closed`], with the value handed back): a latest-value store is
    /// never full.
    ///
    /// ```
    /// use storecast::DataStore;
    ///
    /// let store = DataStore::new();
    /// store.try_submit(21).unwrap();
    /// assert_eq!(*store.current().unwrap(), 21);
    /// store.close();
    /// assert_eq!(store.try_submit(22).unwrap_err().into_inner(), 22);
    /// ```
    pub fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
        self.try_submit_arc(Arc::new(value))
            .map_err(|e| TrySubmitError::Closed(unwrap_unshared(e.into_inner())))
    }

    /// Makes an already shared value the current value; see
    /// [`submit`](DataStore::submit).
    pub async fn submit_arc(&self, value: Arc<T>) -> Result<Position, SubmitError<Arc<T>>> {
        self.try_submit_arc(value)
            .map_err(|e| SubmitError::Closed(e.into_inner()))
    }

    /// Makes an already shared value the current value; see
    /// [`try_submit`](DataStore::try_submit).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use storecast::DataStore;
    ///
    /// let config = Arc::new(String::from("v2"));
    /// let store = DataStore::new();
    /// store.try_submit_arc(Arc::clone(&config)).unwrap();
    /// assert!(Arc::ptr_eq(store.current().unwrap().value(), &config));
    /// ```
    pub fn try_submit_arc(&self, value: Arc<T>) -> Result<Position, TrySubmitError<Arc<T>>> {
        let shared = &*self.shared;
        let (position, replaced, parked) = {
            let _submitting = shared.submitting.lock();
            // Checked under the lock so that no submit lands after `close` has woken
            // everyone for the last time.
            if shared.closed.load(Ordering::Relaxed) {
                return Err(TrySubmitError::Closed(value));
            }
            shared.publish(value)
        };
        shared.published(replaced, parked);
        Ok(position)
    }

    /// Replaces the current value with one made from it, atomically: no other submit
    /// comes between reading the current value and submitting the new one, so concurrent
    /// updaters never lose each other's changes (tokio's `watch::Sender::send_modify`).
    /// `modify` gets the current value (`None` before the first) and returns the new one.
    ///
    /// `modify` runs under the lock that orders submitters, so keep it short; subscribers
    /// never take that lock, so they are not held up. `modify` must not submit to or
    /// close this store (or a clone of it): it would wait for its own lock. On a closed
    /// store `modify` is not called and is handed back.
    ///
    /// ```
    /// use storecast::DataStore;
    ///
    /// let counter = DataStore::new();
    /// let threads: Vec<_> = (0..4)
    ///     .map(|_| {
    ///         let counter = counter.clone();
    ///         std::thread::spawn(move || {
    ///             for _ in 0..1000 {
    ///                 counter.submit_modify(|n| n.copied().unwrap_or(0) + 1).ok().unwrap();
    ///             }
    ///         })
    ///     })
    ///     .collect();
    /// threads.into_iter().for_each(|t| t.join().unwrap());
    /// assert_eq!(*counter.current().unwrap(), 4000);
    /// ```
    pub fn submit_modify<F>(&self, modify: F) -> Result<Position, SubmitError<F>>
    where
        F: FnOnce(Option<&T>) -> T,
    {
        let mut modify = Some(modify);
        let made = self.submit_with(|current| {
            let modify = modify.take().expect("called once");
            Some(Arc::new(modify(current)))
        });
        match made {
            Ok(position) => Ok(position.expect("a value was made")),
            Err(()) => Err(SubmitError::Closed(modify.take().expect("not called"))),
        }
    }

    /// Like [`submit_modify`](DataStore::submit_modify), but `modify` may decline:
    /// returning `None` leaves the current value as it is, submits nothing and wakes
    /// nobody (tokio's `send_if_modified`). Returns the new value's position, or `None`
    /// if `modify` declined.
    ///
    /// ```
    /// use storecast::DataStore;
    ///
    /// let highest = DataStore::with_value(10);
    /// let raise = |reading: u32| {
    ///     highest
    ///         .submit_if_modified(|now| now.is_none_or(|&n| reading > n).then_some(reading))
    ///         .ok()
    ///         .unwrap()
    /// };
    /// assert!(raise(7).is_none()); // not higher: nothing submitted
    /// assert!(raise(12).is_some());
    /// assert_eq!(*highest.current().unwrap(), 12);
    /// ```
    pub fn submit_if_modified<F>(&self, modify: F) -> Result<Option<Position>, SubmitError<F>>
    where
        F: FnOnce(Option<&T>) -> Option<T>,
    {
        let mut modify = Some(modify);
        self.submit_with(|current| {
            let modify = modify.take().expect("called once");
            modify(current).map(Arc::new)
        })
        .map_err(|()| SubmitError::Closed(modify.take().expect("not called")))
    }

    /// Under the submitters' lock: hands `make` the current value, and submits what it
    /// returns (if anything). `Err` if the store is closed (`make` not called).
    fn submit_with(
        &self,
        make: impl FnOnce(Option<&T>) -> Option<Arc<T>>,
    ) -> Result<Option<Position>, ()> {
        let shared = &*self.shared;
        let (position, replaced, parked) = {
            let _submitting = shared.submitting.lock();
            if shared.closed.load(Ordering::Relaxed) {
                return Err(());
            }
            // Read under the lock: no other submit can come between this read and ours.
            let current = shared.load();
            let Some(value) = make(current.as_deref()) else {
                return Ok(None);
            };
            drop(current);
            shared.publish(value)
        };
        shared.published(replaced, parked);
        Ok(Some(position))
    }

    /// The identity every position of this store carries.
    pub fn epoch(&self) -> Epoch {
        self.shared.epoch
    }

    /// The current value and its position, without subscribing.
    pub fn current(&self) -> Option<Message<T>> {
        self.shared.load()
    }

    /// Subscribes as a new subscriber: the current value first, then newer ones.
    pub fn subscribe(&self) -> DataSubscriber<T> {
        self.subscribe_from(Start::Now)
    }

    /// Subscribes from `start`. [`Start::After`] a position yields only values newer than
    /// it; [`Start::Now`] and [`Start::Oldest`] begin with the current value. A position
    /// the store cannot place (another epoch, or ahead) yields [`RecvError::Reset`](crate::RecvError::Reset) first,
    /// then the current value.
    pub fn subscribe_from(&self, start: Start) -> DataSubscriber<T> {
        let now = self.shared.position.load();
        let placed = start.place_in_latest(self.shared.epoch, now);
        self.shared.subscribers.fetch_add(1, Ordering::Relaxed);
        DataSubscriber {
            shared: Arc::clone(&self.shared),
            seen: Seen::new(placed),
            parking: self.shared.wakers.parking(),
        }
    }

    /// Wakes every waiting subscriber although nothing new was submitted; a subscriber
    /// that finds nothing new waits again.
    ///
    /// For a store built on this one that has news of its own to tell: a Redis store wakes
    /// its subscribers to report [`RecvError::Interrupted`](crate::RecvError::Interrupted).
    pub fn wake_subscribers(&self) {
        self.shared.wakers.wake_all();
    }

    /// Closes the store: submits fail from now on; subscribers get the last value if they
    /// have not seen it, then their streams end.
    pub fn close(&self) {
        let shared = &*self.shared;
        let _submitting = shared.submitting.lock();
        if !shared.closed.swap(true, Ordering::Release) {
            shared.wakers.wake_all();
            shared.closing.notify(usize::MAX);
        }
    }

    /// Whether the store is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Waits until the store is closed (by [`close`](DataStore::close), or by its last
    /// handle going).
    pub async fn closed(&self) {
        let mut listener = None;
        core::future::poll_fn(|cx| {
            poll_until(&self.shared.closing, &mut listener, cx, || {
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

/// Recovers a value that was never shared with anyone.
fn unwrap_unshared<T>(value: Arc<T>) -> T {
    Arc::try_unwrap(value)
        .ok()
        .expect("a value refused by a closed store was never shared")
}

#[cfg(feature = "std")]
impl<T> Default for DataStore<T> {
    fn default() -> Self {
        DataStore::new()
    }
}

/// Another handle to the same store.
impl<T> Clone for DataStore<T> {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        DataStore {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The last handle to go closes the store: nobody can submit any more, so subscribers
/// get the last value if they have not seen it and end, as every channel's receivers do
/// when its senders are gone.
impl<T> Drop for DataStore<T> {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.close();
        }
    }
}

impl<T> fmt::Debug for DataStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataStore")
            .field(
                "position",
                &Position::new(self.shared.epoch, self.shared.position.load()),
            )
            .field("subscribers", &self.subscriber_count())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T: Send + Sync + 'static> Store for DataStore<T> {
    type Value = T;
    type Subscriber = DataSubscriber<T>;

    fn submit(&self, value: T) -> impl Future<Output = Result<Position, SubmitError<T>>> + Send {
        DataStore::submit(self, value)
    }

    fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
        DataStore::try_submit(self, value)
    }

    fn subscribe_from(&self, start: Start) -> DataSubscriber<T> {
        DataStore::subscribe_from(self, start)
    }

    fn close(&self) {
        DataStore::close(self)
    }

    fn is_closed(&self) -> bool {
        DataStore::is_closed(self)
    }

    fn closed(&self) -> impl Future<Output = ()> + Send {
        DataStore::closed(self)
    }

    fn subscriber_count(&self) -> usize {
        DataStore::subscriber_count(self)
    }
}

/// A subscription to a [`DataStore`]: a [`Stream`] of the newest values. Dropping it
/// deregisters it.
///
/// Skipping intermediate values is the latest-value contract, not an error: the only
/// `Err` item is a [`RecvError::Reset`](crate::RecvError::Reset) first, when it resumed from a position the store
/// could not place.
pub struct DataSubscriber<T> {
    shared: Arc<Shared<T>>,
    /// The offset of the last value yielded (0: none yet), and a reset to tell first.
    seen: Seen,
    /// Where this subscriber's waker goes while it waits for a change.
    parking: Parking,
}

impl<T> DataSubscriber<T> {
    /// Waits for a value newer than the last one received (the current value, first),
    /// or [`RecvError::Closed`](crate::RecvError::Closed) once the store is closed and the last value was received.
    ///
    /// ```
    /// use futures_lite::future::block_on;
    /// use storecast::{DataStore, RecvError};
    ///
    /// let store = DataStore::with_value("first");
    /// let mut subscriber = store.subscribe();
    /// block_on(async {
    ///     assert_eq!(*subscriber.recv().await.unwrap(), "first");
    ///     store.close();
    ///     assert_eq!(subscriber.recv().await.unwrap_err(), RecvError::Closed);
    /// });
    /// ```
    pub fn recv(&mut self) -> Recv<'_, Self> {
        Recv::new(self)
    }

    /// The newest value not yet received, without waiting: [`TryRecvError::Empty`] when
    /// there is none yet, [`TryRecvError::Closed`] when none will come.
    ///
    /// ```
    /// use storecast::{DataStore, TryRecvError};
    ///
    /// let store = DataStore::new();
    /// let mut subscriber = store.subscribe();
    /// assert_eq!(subscriber.try_recv().unwrap_err(), TryRecvError::Empty);
    /// store.try_submit(1).unwrap();
    /// store.try_submit(2).unwrap();
    /// assert_eq!(*subscriber.try_recv().unwrap(), 2); // the newest; 1 was skipped
    /// ```
    pub fn try_recv(&mut self) -> Result<Message<T>, TryRecvError> {
        if let Some(news) = self.seen.take_news() {
            return Err(news.into());
        }
        if let Some(message) = self.shared.newer_than(&mut self.seen) {
            return Ok(message);
        }
        if self.shared.finished(self.seen) {
            Err(TryRecvError::Closed)
        } else {
            Err(TryRecvError::Empty)
        }
    }

    /// [`recv`](DataSubscriber::recv) for a thread outside any async runtime: parks the
    /// thread until a newer value comes. Inside a runtime's task it would block the
    /// runtime's thread: use `recv().await` there.
    ///
    /// ```
    /// use storecast::DataStore;
    ///
    /// let store = DataStore::new();
    /// let mut subscriber = store.subscribe();
    /// let reader = std::thread::spawn(move || *subscriber.recv_blocking().unwrap());
    /// store.try_submit("ready").unwrap();
    /// assert_eq!(reader.join().unwrap(), "ready");
    /// ```
    #[cfg(feature = "std")]
    pub fn recv_blocking(&mut self) -> Result<Message<T>, crate::RecvError> {
        crate::recv::block_on(self.recv())
    }

    /// The position of the last value this subscriber received.
    pub fn position(&self) -> Position {
        Position::new(self.shared.epoch, self.seen.offset())
    }
}

impl<T> Shared<T> {
    /// Makes `value` the current value; called under `submitting`, on an open store.
    /// Returns its position, the value it replaced and whether anyone is parked.
    fn publish(&self, value: Arc<T>) -> (Position, Option<Arc<T>>, bool) {
        let position = Position::new(self.epoch, self.position.load() + 1);
        let replaced = self.current.write_guarded(position.offset(), value);
        // Published after the value is in place: a subscriber that sees the new
        // position finds a value at least this new.
        let parked = self.position.publish(position.offset());
        (position, replaced, parked)
    }

    /// After `publish`, outside the lock: the old value's destructor runs, and parked
    /// subscribers wake.
    fn published(&self, replaced: Option<Arc<T>>, parked: bool) {
        drop(replaced);
        if parked {
            self.wakers.wake_all();
        }
    }

    /// The current value, if any.
    fn load(&self) -> Option<Message<T>> {
        loop {
            match self.current.read_guarded(None) {
                Ok((position, value)) => {
                    return Some(Message::from_arc(
                        Position::new(self.epoch, position),
                        value,
                    ));
                }
                Err(Miss::Writing) => self.current.wait_written(),
                Err(Miss::Holds(_)) => return None,
            }
        }
    }

    /// The current value if it is newer than `seen`, which then moves up to it.
    fn newer_than(&self, seen: &mut Seen) -> Option<Message<T>> {
        if self.position.load() <= seen.offset() {
            return None;
        }
        let message = self.load()?;
        seen.set(message.position().offset());
        Some(message)
    }

    /// Whether a subscriber that has seen `seen` is done: closed, and nothing newer.
    fn finished(&self, seen: Seen) -> bool {
        self.closed.load(Ordering::Acquire) && self.position.load() <= seen.offset()
    }
}

impl<T> Stream for DataSubscriber<T> {
    type Item = Item<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item<T>>> {
        let DataSubscriber {
            shared,
            seen,
            parking,
        } = self.get_mut();
        if let Some(news) = seen.take_news() {
            return Poll::Ready(Some(Err(news)));
        }
        let mut parked = false;
        loop {
            if let Some(message) = shared.newer_than(seen) {
                return Poll::Ready(Some(Ok(message)));
            }
            if shared.finished(*seen) {
                return Poll::Ready(None);
            }
            if parked {
                return Poll::Pending;
            }
            // Registered before the second look, so nothing submitted in between goes
            // unnoticed (see `notify.rs`).
            shared.wakers.park(parking, cx.waker(), &shared.position);
            parked = true;
        }
    }
}

impl<T: Send + Sync> Subscriber for DataSubscriber<T> {
    type Value = T;

    fn try_recv(&mut self) -> Result<Message<T>, TryRecvError> {
        DataSubscriber::try_recv(self)
    }
}

impl<T> Drop for DataSubscriber<T> {
    fn drop(&mut self) {
        self.shared.wakers.leave(&mut self.parking);
        self.shared.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T> fmt::Debug for DataSubscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataSubscriber")
            .field("seen", &self.position())
            .finish_non_exhaustive()
    }
}
