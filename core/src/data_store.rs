//! The latest-value store: subscribers see the newest value, intermediate ones may be
//! skipped.

use alloc::sync::Arc;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use futures_core::Stream;

use crate::notify::{Parking, Published, Wakers};
use crate::slot::{Miss, Slot};
use crate::store::{Item, Message, Store};
use crate::sync::{AtomicBool, AtomicUsize, CachePadded, Mutex, Ordering};
use crate::{Position, Start, SubmitError, TrySubmitError};

/// A latest-value store (Tornadose's `DataStore`): it holds one current value, and its
/// subscribers see the newest one.
///
/// # What a subscriber sees
///
/// A new subscriber first gets the current value (if there is one), then every *newer*
/// value. Values submitted faster than a subscriber reads may be skipped, but a subscriber
/// never sees a value twice, never sees an older value after a newer one, and always ends
/// up with the last value submitted. Each value comes with its [`Position`].
///
/// # Submitting
///
/// [`submit`](DataStore::submit) never waits and never fails for lack of subscribers; it
/// fails only once the store is closed, and then hands the value back.
///
/// # Closing
///
/// After [`close`](DataStore::close), a subscriber that has not yet seen the last value
/// receives it, then its stream ends.
///
/// # Example
///
/// ```
/// use futures_lite::{future::block_on, StreamExt};
/// use storecast::DataStore;
///
/// let store = DataStore::new();
/// store.submit("warming up").unwrap();
///
/// let mut subscriber = store.subscribe();
/// store.submit("ready").unwrap();
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
    /// An empty store: subscribers wait for the first value.
    pub fn new() -> Self {
        DataStore::build(None)
    }

    /// A store whose current value is `value`, at position 1.
    pub fn with_value(value: T) -> Self {
        DataStore::build(Some(Message::new(Position::new(1), value)))
    }

    fn build(current: Option<Message<T>>) -> Self {
        let position = current.as_ref().map_or(0, |m| m.position().get());
        DataStore {
            shared: Arc::new(Shared {
                current: CachePadded(Slot::new(position, current.map(Message::into_arc))),
                position: Published::new(position),
                submitting: Mutex::new(()),
                closed: AtomicBool::new(false),
                wakers: Wakers::new(),
                subscribers: AtomicUsize::new(0),
            }),
        }
    }

    /// Makes `value` the current value and wakes subscribers. Never waits.
    pub fn submit(&self, value: T) -> Result<Position, SubmitError<T>> {
        self.submit_arc(Arc::new(value))
            .map_err(|value| SubmitError::Closed(unwrap_unshared(value)))
    }

    /// Makes an already shared value the current value; on a closed store the value is
    /// handed back.
    pub fn submit_arc(&self, value: Arc<T>) -> Result<Position, Arc<T>> {
        let shared = &*self.shared;
        let (position, replaced, parked) = {
            let _submitting = shared.submitting.lock();
            // Checked under the lock so that no submit lands after `close` has woken
            // everyone for the last time.
            if shared.closed.load(Ordering::Relaxed) {
                return Err(value);
            }
            let position = Position::new(shared.position.load() + 1);
            let replaced = shared.current.write_guarded(position.get(), value);
            // Published after the value is in place: a subscriber that sees the new
            // position finds a value at least this new.
            let parked = shared.position.publish(position.get());
            (position, replaced, parked)
        };
        // The old value's destructor runs outside the lock.
        drop(replaced);
        if parked {
            shared.wakers.wake_all();
        }
        Ok(position)
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
    /// it; [`Start::Now`] and [`Start::Oldest`] begin with the current value.
    pub fn subscribe_from(&self, start: Start) -> DataSubscriber<T> {
        let now = self.shared.position.load();
        let seen = start.latest_seen(now);
        self.shared.subscribers.fetch_add(1, Ordering::Relaxed);
        DataSubscriber {
            shared: Arc::clone(&self.shared),
            seen,
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
        }
    }

    /// Whether the store is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
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

impl<T> Default for DataStore<T> {
    fn default() -> Self {
        DataStore::new()
    }
}

/// Another handle to the same store.
impl<T> Clone for DataStore<T> {
    fn clone(&self) -> Self {
        DataStore {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> fmt::Debug for DataStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataStore")
            .field("position", &Position::new(self.shared.position.load()))
            .field("subscribers", &self.subscriber_count())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T: Send + Sync + 'static> Store for DataStore<T> {
    type Value = T;
    type Subscriber = DataSubscriber<T>;

    fn submit(&self, value: T) -> impl Future<Output = Result<Position, SubmitError<T>>> + Send {
        core::future::ready(DataStore::submit(self, value))
    }

    fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
        DataStore::submit(self, value).map_err(TrySubmitError::from)
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

    fn subscriber_count(&self) -> usize {
        DataStore::subscriber_count(self)
    }
}

/// A subscription to a [`DataStore`]: a [`Stream`] of the newest values. Dropping it
/// deregisters it.
///
/// It yields only `Ok` items: skipping intermediate values is the latest-value contract,
/// not an error.
pub struct DataSubscriber<T> {
    shared: Arc<Shared<T>>,
    /// The position of the last value yielded (0: none yet).
    seen: u64,
    /// Where this subscriber's waker goes while it waits for a change.
    parking: Parking,
}

impl<T> DataSubscriber<T> {
    /// The newest value not yet seen, without waiting; `None` if there is none.
    pub fn try_next(&mut self) -> Option<Message<T>> {
        self.shared.newer_than(&mut self.seen)
    }

    /// The position of the last value this subscriber received.
    pub fn position(&self) -> Position {
        Position::new(self.seen)
    }
}

impl<T> Shared<T> {
    /// The current value, if any.
    fn load(&self) -> Option<Message<T>> {
        loop {
            match self.current.read_guarded(None) {
                Ok((position, value)) => {
                    return Some(Message::from_arc(Position::new(position), value));
                }
                Err(Miss::Writing) => self.current.wait_written(),
                Err(Miss::Holds(_)) => return None,
            }
        }
    }

    /// The current value if it is newer than `seen`, which then moves up to it.
    fn newer_than(&self, seen: &mut u64) -> Option<Message<T>> {
        if self.position.load() <= *seen {
            return None;
        }
        let message = self.load()?;
        *seen = message.position().get();
        Some(message)
    }

    /// Whether a subscriber that has seen `seen` is done: closed, and nothing newer.
    fn finished(&self, seen: u64) -> bool {
        self.closed.load(Ordering::Acquire) && self.position.load() <= seen
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
