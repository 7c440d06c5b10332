//! `RedisStore`: the latest value, carried by a Redis channel.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures_lite::{Stream, StreamExt};
use redis::{RedisError, Script};
use storecast::{
    DataStore, DataSubscriber, Item, Message, Position, Recv, RecvError, Start, Store, SubmitError,
    Subscriber, TryRecvError, TrySubmitError,
};

use crate::codec::Codec;
use crate::connection::{ConnectError, Redis};
use crate::runtime;
use crate::shutdown::Shutdown;
use crate::subscription::{Heard, Listener};

/// Tornadose's default channel, so that its publishers keep working.
pub const DEFAULT_CHANNEL: &str = "tornadose";

/// Sets the latest-value key and publishes, in one step, so that every process agrees on
/// which value came last.
const PUBLISH: &str = r"
redis.call('SET', KEYS[1], ARGV[2])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
";

/// The latest value, carried by a Redis channel (Tornadose's `RedisStore`): anything any
/// program publishes to the channel reaches every subscriber, in every process.
///
/// A subscriber first gets the current value, then newer ones; like
/// [`storecast::DataStore`] it may skip values, never sees a position twice and always
/// ends up with the last. (When two processes publish at once, a value can be shown again
/// at a newer position, so that every process ends on the value Redis ordered last.)
///
/// A value submitted here reaches this process's subscribers at once and is published
/// (with `SET` of the latest-value key and `PUBLISH`, as one script) by a background task.
/// [`try_submit`](RedisStore::try_submit) never waits for it;
/// [`submit`](RedisStore::submit) waits for Redis's answer and says if it did not come.
///
/// # One subscription per process
///
/// The store listens on one Redis subscription and fans it out in memory, so a thousand
/// subscribers cost one Redis connection; the latest-value stores made from one
/// [`Redis`] handle share that connection, whatever their channels. Values published by other programs
/// (`redis-cli PUBLISH tornadose hello`) arrive through it; this process's own values are
/// recognised when they come back and not delivered twice.
///
/// # A process that starts later
///
/// Every submit also sets a key (`<channel>:latest` unless told otherwise), and a new
/// store starts from it, so subscribers get the current value at once. A program that
/// only `PUBLISH`es does not set the key; set it too if late joiners should see its value.
///
/// # When Redis goes away
///
/// Connecting to an unreachable server is an error from [`open`](RedisStore::open).
/// Losing the server later is not fatal: the store reconnects with backoff and
/// resubscribes, and every subscriber receives [`RecvError::Interrupted`] — Redis channels
/// keep nothing for absent listeners, so values published meanwhile may be lost. On
/// reconnecting the store reads the latest-value key, so it catches up with the newest
/// value a storecast process submitted.
///
/// # Positions
///
/// Positions are this store's, in this process: they order what its subscribers saw, and
/// carry an epoch drawn when the store was opened. A subscriber resuming ([`Start::After`])
/// with a position from another process, or from before a restart, is told
/// [`RecvError::Reset`] and gets the current value, which is all a latest-value store
/// promises anyway. For positions that mean the same in every process, use
/// [`RedisQueueStore`](crate::RedisQueueStore).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use futures_lite::StreamExt;
/// use storecast::Store;
/// use storecast_redis::RedisStore;
///
/// // The channel `tornadose`, as Tornadose names it.
/// let store: RedisStore<String> = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let mut subscriber = store.subscribe();
/// store.try_submit("from this process".to_string())?;
/// // `redis-cli PUBLISH tornadose "from elsewhere"` arrives here too.
/// while let Some(Ok(message)) = subscriber.next().await {
///     println!("{} at {}", *message, message.position());
/// }
/// # Ok(()) }
/// ```
pub struct RedisStore<T> {
    handle: Arc<Handle<T>>,
}

/// The user's side of the store: the background tasks stop when the last one goes.
struct Handle<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    /// Itself, as the shared subscription knows it.
    me: Weak<dyn Listener>,
    redis: Redis,
    channel: String,
    key: String,
    /// What subscribers read: every value, submitted here or heard from Redis, in the
    /// order this process learnt of it.
    local: DataStore<T>,
    /// Values submitted here, for the publishing task, which skips superseded ones.
    outbox: DataStore<Outgoing<T>>,
    /// Makes a submit to `local` and to `outbox` one step, so both order values alike.
    submitting: Mutex<()>,
    /// Published from here, not yet heard back: how this process's own messages are told
    /// from other publishers' when the subscription delivers them.
    in_flight: Mutex<VecDeque<Outgoing<T>>>,
    /// `in_flight.len()`, read without the lock by the listener.
    in_flight_len: AtomicUsize,
    /// Position (in `local`) of the newest value submitted here.
    last_own: AtomicU64,
    /// Position (in `local`) of the newest value heard from another publisher.
    last_foreign: AtomicU64,
    /// How many times the subscription was lost: subscribers compare it with what they
    /// last saw to report `Interrupted`.
    interruptions: AtomicU64,
    connected: AtomicBool,
    /// Messages delivered by the subscription (own echoes included).
    received: AtomicU64,
    undecodable: AtomicU64,
    shutdown: Shutdown,
    /// Reads of the key the subscription has delivered (see `Heard::Key`), and an event
    /// for each: opening waits for the first.
    syncs: AtomicU64,
    synced: event_listener::Event,
    /// The newest of this process's values that Redis has taken (its publish answered).
    published_own: AtomicU64,
    /// The newest of this process's values whose publish failed on the way (it is tried
    /// again, unless a newer value supersedes it).
    failed_own: AtomicU64,
    /// The newest of this process's values Redis refused with an error (not tried again).
    refused_own: AtomicU64,
    /// The last publish failed on the way and none has been answered since: Redis cannot
    /// be reached now, and `submit` says so.
    unreachable: AtomicBool,
    /// Notified after every publish, answered or not; and how many there were.
    attempted: event_listener::Event,
    attempts: AtomicU64,
    /// Set (and notified) by a submit that found Redis unreachable: the publishing task
    /// tries again at once rather than at the end of its backoff.
    nudged: AtomicBool,
    nudge: event_listener::Event,
    /// Syncs sent and not heard yet: each one's tag, and `published_own` when it was sent
    /// (on the command connection, after those publishes: its read comes after them).
    sync_marks: Mutex<VecDeque<(u64, u64)>>,
    /// The tag of the last sync sent.
    sync_tag: AtomicU64,
}

/// A value submitted here, on its way to Redis.
struct Outgoing<T> {
    /// Its position in `local`.
    position: Position,
    value: Arc<T>,
    /// Its encoding, once published (what the echo is compared with).
    bytes: Vec<u8>,
}

impl<T: Codec> RedisStore<T> {
    /// Connects to `url` with default options and opens the store on Tornadose's channel,
    /// `tornadose`.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        let redis = Redis::connect(url).await?;
        RedisStore::open(&redis, DEFAULT_CHANNEL).await
    }

    /// Opens the store on `channel`, keeping its latest value in the key
    /// `<channel>:latest` (on a Redis Cluster `{<channel>}:latest`, in the channel's hash
    /// slot, unless the channel has a hash tag of its own).
    pub async fn open(redis: &Redis, channel: &str) -> Result<Self, ConnectError> {
        let key = redis.derived(channel, ":latest")?;
        RedisStore::open_with_key(redis, channel, &key).await
    }

    /// Opens the store on `channel`, keeping its latest value in `key`.
    ///
    /// Subscribes before it returns, so nothing published afterwards is missed, and starts
    /// from the value in `key`, if any. On a Redis Cluster the channel is a sharded one
    /// (`SPUBLISH`/`SSUBSCRIBE`), and `key` must be in its hash slot (give both the same
    /// hash tag): a key elsewhere is [`ConnectError::Unsupported`].
    pub async fn open_with_key(
        redis: &Redis,
        channel: &str,
        key: &str,
    ) -> Result<Self, ConnectError> {
        if redis.is_cluster() {
            // A channel with braces but no hash tag has no name in its slot to sync on.
            redis.derived(channel, "")?;
            redis.check_same_slot(channel, key).await?;
        }
        let shared = Arc::new_cyclic(|me: &Weak<Shared<T>>| Shared {
            me: me.clone() as Weak<dyn Listener>,
            redis: redis.clone(),
            channel: channel.to_owned(),
            key: key.to_owned(),
            local: DataStore::new(),
            outbox: DataStore::new(),
            submitting: Mutex::new(()),
            in_flight: Mutex::new(VecDeque::new()),
            in_flight_len: AtomicUsize::new(0),
            last_own: AtomicU64::new(0),
            last_foreign: AtomicU64::new(0),
            interruptions: AtomicU64::new(0),
            connected: AtomicBool::new(true),
            received: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            shutdown: Shutdown::default(),
            syncs: AtomicU64::new(0),
            synced: event_listener::Event::new(),
            published_own: AtomicU64::new(0),
            failed_own: AtomicU64::new(0),
            refused_own: AtomicU64::new(0),
            unreachable: AtomicBool::new(false),
            attempted: event_listener::Event::new(),
            attempts: AtomicU64::new(0),
            nudged: AtomicBool::new(false),
            nudge: event_listener::Event::new(),
            sync_marks: Mutex::new(VecDeque::new()),
            sync_tag: AtomicU64::new(0),
        });
        redis.listen(channel, shared.me.clone()).await?;
        // The command connection may be reconnecting too (a store opened right after
        // Redis came back): a failure of the connection is tried again, within the
        // connect timeout.
        let deadline = std::time::Instant::now() + redis.options().connect_timeout_value();
        let mut backoff = redis.options().backoff();
        let syncs = shared.syncs.load(Ordering::Acquire);
        let mut caught_up = shared.sync_from_key().await;
        while let Err(e) = &caught_up {
            let passing = e.is_io_error() || e.is_timeout() || crate::connection::is_passing(e);
            if !passing || std::time::Instant::now() >= deadline {
                break;
            }
            backoff.wait().await;
            caught_up = shared.sync_from_key().await;
        }
        if caught_up.is_ok() {
            // The key's value comes through the subscription, in its place among the
            // channel's messages: wait for it (a while), so that the store starts from it.
            let arrived = || shared.syncs.load(Ordering::Acquire) > syncs;
            let waited = runtime::timeout(redis.options().response_timeout_value(), async {
                while !arrived() {
                    let listener = shared.synced.listen();
                    if arrived() {
                        break;
                    }
                    listener.await;
                }
            })
            .await;
            if waited.is_none() {
                tracing::warn!(channel = %channel, "the latest-value key's value did not come through the subscription in time; it will");
            }
        }
        caught_up.map_err(|e| {
            shared.stop();
            redis.open_error(e)
        })?;
        let outgoing = shared.outbox.subscribe();
        runtime::spawn(publish(Arc::clone(&shared), outgoing));
        Ok(RedisStore {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// Makes `value` the current value here at once, then waits until Redis has taken it
    /// (or a newer value submitted here, which supersedes it).
    ///
    /// - [`SubmitError::Unavailable`]: Redis cannot be reached now (the publish of an
    ///   earlier value failed on the way and is being tried again): nothing was done with
    ///   `value`. Or Redis refused it with an error: it is not published (though this
    ///   process's subscribers may have seen it).
    /// - [`SubmitError::OutcomeUnknown`]: Redis did not answer in time (twice the
    ///   response timeout), or the connection failed under the publish. The value is
    ///   current here and the store goes on trying to publish it (unless a newer one
    ///   supersedes it), so it may reach Redis later. The value handed back is decoded
    ///   from its encoding (the store shares the original with this process's
    ///   subscribers), so the codec must read back what it writes; to learn the outcome
    ///   without it, use [`try_submit`](RedisStore::try_submit) and
    ///   [`published`](RedisStore::published).
    /// - [`SubmitError::Closed`]: the store is closed.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use storecast::SubmitError;
    /// use storecast_redis::RedisStore;
    ///
    /// let store: RedisStore<String> = RedisStore::connect("redis://127.0.0.1:6379").await?;
    /// match store.submit("21.5".to_string()).await {
    ///     Ok(position) => println!("Redis has it, at {position}"),
    ///     Err(SubmitError::OutcomeUnknown(_)) => println!("Redis did not answer; it may have it"),
    ///     Err(e) => println!("not submitted: {e}"),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    ///
    /// On an unknown outcome, if the codec cannot decode the value's own encoding.
    pub async fn submit(&self, value: T) -> Result<Position, SubmitError<T>> {
        if !self.reachable().await {
            return Err(SubmitError::Unavailable(value));
        }
        let value = Arc::new(value);
        let Some(position) = self.submit_arc(&value) else {
            let value = Arc::try_unwrap(value)
                .ok()
                .expect("a refused value was never shared");
            return Err(SubmitError::Closed(value));
        };
        let Err(failed) = self.published(position).await else {
            return Ok(position);
        };
        let value = Arc::try_unwrap(value)
            .or_else(|shared_value| T::decode(&shared_value.encode()))
            .expect("the store's codec decodes its own encoding");
        Err(match failed {
            SubmitError::Unavailable(()) => SubmitError::Unavailable(value),
            _ => SubmitError::OutcomeUnknown(value),
        })
    }

    /// Waits until Redis has taken the value submitted here at `position` (with
    /// [`try_submit`](RedisStore::try_submit)), or a newer value submitted here, which
    /// supersedes it. `Unavailable`: Redis refused it with an error. `OutcomeUnknown`: no
    /// answer came within twice the response timeout, or the connection failed under the
    /// publish (the store tries again), or the store closed first.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use storecast_redis::RedisStore;
    ///
    /// let store: RedisStore<String> = RedisStore::connect("redis://127.0.0.1:6379").await?;
    /// let position = store.try_submit("21.5".to_string())?; // current here at once
    /// if store.published(position).await.is_ok() {
    ///     println!("and Redis has it");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn published(&self, position: Position) -> Result<(), SubmitError<()>> {
        let shared = &*self.handle.shared;
        shared
            .after_publishes(|| shared.outcome(position))
            .await
            .unwrap_or(Err(SubmitError::OutcomeUnknown(())))
    }

    /// Whether Redis can be reached, as far as the store knows: false from a publish
    /// that failed on the way until one is answered.
    pub fn is_reachable(&self) -> bool {
        let shared = &*self.handle.shared;
        !shared.unreachable.load(Ordering::Acquire) || shared.shutdown.is_triggered()
    }

    /// Whether Redis can be reached: if the last publish failed on the way, the store
    /// tries it again now (rather than at the end of its backoff) and says whether that
    /// was answered, waiting at most twice the response timeout.
    pub async fn reachable(&self) -> bool {
        if self.is_reachable() {
            return true;
        }
        let shared = &*self.handle.shared;
        let before = shared.attempts.load(Ordering::Acquire);
        shared.nudged.store(true, Ordering::Release);
        shared.nudge.notify(usize::MAX);
        shared
            .after_publishes(|| (shared.attempts.load(Ordering::Acquire) != before).then_some(()))
            .await;
        self.is_reachable()
    }

    /// Makes `value` the current value here at once and publishes it in the background.
    /// Never waits; fails only on a closed store ([`TrySubmitError::Closed`]).
    pub fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
        let value = Arc::new(value);
        self.submit_arc(&value).ok_or_else(|| {
            TrySubmitError::Closed(
                Arc::try_unwrap(value)
                    .ok()
                    .expect("a refused value was never shared"),
            )
        })
    }

    /// Submits here and hands the value to the publishing task; `None` if the store is
    /// closed.
    fn submit_arc(&self, value: &Arc<T>) -> Option<Position> {
        let shared = &*self.handle.shared;
        let _submitting = shared.submitting.lock().expect("submit lock");
        let position = shared.local.try_submit_arc(Arc::clone(value)).ok()?;
        shared.last_own.store(position.offset(), Ordering::Release);
        // Fails only if the store closed meanwhile; the value was delivered here anyway.
        let _ = shared.outbox.try_submit(Outgoing {
            position,
            value: Arc::clone(value),
            bytes: Vec::new(),
        });
        Some(position)
    }
}

impl<T> RedisStore<T> {
    /// The current value and its position, without subscribing.
    pub fn current(&self) -> Option<Message<T>> {
        self.handle.shared.local.current()
    }

    /// The channel the store publishes to and listens on.
    pub fn channel(&self) -> &str {
        &self.handle.shared.channel
    }

    /// The key holding the latest value.
    pub fn key(&self) -> &str {
        &self.handle.shared.key
    }

    /// Whether the subscription is up now (false while reconnecting).
    pub fn is_connected(&self) -> bool {
        self.handle.shared.connected.load(Ordering::Relaxed)
    }

    /// How many times the subscription was lost (and subscribers were told).
    pub fn interruptions(&self) -> u64 {
        self.handle.shared.interruptions.load(Ordering::Relaxed)
    }

    /// How many messages this process has heard on the channel (its own included).
    pub fn received(&self) -> u64 {
        self.handle.shared.received.load(Ordering::Relaxed)
    }

    /// How many messages heard on the channel were skipped because they did not decode.
    pub fn undecodable(&self) -> u64 {
        self.handle.shared.undecodable.load(Ordering::Relaxed)
    }
}

impl<T: Codec> Store for RedisStore<T> {
    type Value = T;
    type Subscriber = RedisSubscriber<T>;

    async fn submit(&self, value: T) -> Result<Position, SubmitError<T>> {
        RedisStore::submit(self, value).await
    }

    fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
        RedisStore::try_submit(self, value)
    }

    fn subscribe_from(&self, start: Start) -> RedisSubscriber<T> {
        let shared = &self.handle.shared;
        RedisSubscriber {
            interruptions: shared.interruptions.load(Ordering::SeqCst),
            inner: shared.local.subscribe_from(start),
            shared: Arc::clone(shared),
        }
    }

    fn close(&self) {
        self.handle.shared.stop();
    }

    fn is_closed(&self) -> bool {
        self.handle.shared.local.is_closed()
    }

    fn closed(&self) -> impl std::future::Future<Output = ()> + Send {
        self.handle.shared.local.closed()
    }

    fn subscriber_count(&self) -> usize {
        self.handle.shared.local.subscriber_count()
    }
}

impl<T> Clone for RedisStore<T> {
    fn clone(&self) -> Self {
        RedisStore {
            handle: Arc::clone(&self.handle),
        }
    }
}

impl<T> fmt::Debug for RedisStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.handle.shared.redis.address())
            .field("channel", &self.handle.shared.channel)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl<T> Drop for Handle<T> {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

/// A subscriber of a [`RedisStore`]: the store's values, and
/// [`RecvError::Interrupted`] when its subscription was lost. Dropping it deregisters it.
pub struct RedisSubscriber<T> {
    inner: DataSubscriber<T>,
    shared: Arc<Shared<T>>,
    /// The store's interruption count when this subscriber last looked.
    interruptions: u64,
}

impl<T> RedisSubscriber<T> {
    /// Waits for a value newer than the last one received, or news
    /// ([`RecvError::Interrupted`] after the connection to Redis was lost), or
    /// [`RecvError::Closed`] once the store is closed and the last value was received.
    ///
    /// ```no_run
    /// use storecast::{RecvError, Store};
    /// use storecast_redis::RedisStore;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let prices: RedisStore<String> = RedisStore::connect("redis://127.0.0.1:6379").await?;
    /// let mut subscriber = prices.subscribe();
    /// while let Ok(price) = subscriber.recv().await {
    ///     println!("now {}", *price);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv(&mut self) -> Recv<'_, Self> {
        Recv::new(self)
    }

    /// The newest value not yet received, without waiting: [`TryRecvError::Empty`] when
    /// there is none yet, [`TryRecvError::Closed`] when none will come.
    pub fn try_recv(&mut self) -> Result<Message<T>, TryRecvError> {
        if let Some(Err(news)) = self.interrupted() {
            return Err(news.into());
        }
        self.inner.try_recv()
    }

    /// [`recv`](RedisSubscriber::recv) for a thread outside any async runtime (the
    /// store's tasks run on the runtime it was opened on): parks the thread until a
    /// newer value comes.
    pub fn recv_blocking(&mut self) -> Result<Message<T>, RecvError> {
        futures_lite::future::block_on(self.recv())
    }

    /// `Interrupted`, if the subscription was lost since this subscriber last looked.
    fn interrupted(&mut self) -> Option<Item<T>> {
        let now = self.shared.interruptions.load(Ordering::SeqCst);
        (now != self.interruptions).then(|| {
            self.interruptions = now;
            Err(RecvError::Interrupted)
        })
    }
}

impl<T> Stream for RedisSubscriber<T> {
    type Item = Item<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item<T>>> {
        let this = self.get_mut();
        if let Some(news) = this.interrupted() {
            return Poll::Ready(Some(news));
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            // Checked again after parking: an interruption counted before the listener
            // woke everyone is seen here, one counted after wakes this task.
            Poll::Pending => this
                .interrupted()
                .map_or(Poll::Pending, |news| Poll::Ready(Some(news))),
            ready => ready,
        }
    }
}

impl<T: Send + Sync> Subscriber for RedisSubscriber<T> {
    type Value = T;

    fn try_recv(&mut self) -> Result<Message<T>, TryRecvError> {
        RedisSubscriber::try_recv(self)
    }
}

impl<T> fmt::Debug for RedisSubscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSubscriber")
            .field("channel", &self.shared.channel)
            .finish_non_exhaustive()
    }
}

impl<T> Shared<T> {
    fn stop(&self) {
        if self.shutdown.trigger() {
            self.redis.stop_listening(&self.channel, &self.me);
        }
        self.local.close();
        self.outbox.close();
    }

    /// Tells every subscriber that messages may have been missed.
    fn interrupt(&self) {
        self.interruptions.fetch_add(1, Ordering::SeqCst);
        self.local.wake_subscribers();
    }
}

impl<T: Codec> Shared<T> {
    /// Has the subscription deliver the latest-value key's value in its place among the
    /// channel's messages (`Heard::Key`): a `GET` on another connection could answer after
    /// messages published later, and an older value would be shown after a newer one.
    async fn sync_from_key(&self) -> Result<(), RedisError> {
        let mut commands = self.redis.commands();
        let tag = self.sync_tag.fetch_add(1, Ordering::AcqRel) + 1;
        {
            let mut marks = self.sync_marks.lock().expect("sync marks lock");
            if marks.len() >= 64 {
                marks.pop_front();
            }
            marks.push_back((tag, self.published_own.load(Ordering::Acquire)));
        }
        self.redis
            .sync(&mut commands, &self.channel, &self.key, tag)
            .await
            .inspect_err(|e| self.redis.failed(e))?;
        Ok(())
    }

    /// The key's value, heard in its place (read by the sync tagged `tag`): taken unless
    /// it is the current value already, or this process has a value newer than anything
    /// Redis had taken from it when the sync was sent (on its way, or being retried):
    /// that value is newer than the key's.
    fn take_key(&self, bytes: &[u8], tag: u64) {
        let taken_before = {
            let mut marks = self.sync_marks.lock().expect("sync marks lock");
            let mark = marks.iter().find(|(t, _)| *t == tag).map(|(_, own)| *own);
            marks.retain(|(t, _)| *t > tag);
            mark
        };
        // A sync this store did not send (another store on the channel): nothing known.
        let Some(taken_before) = taken_before else {
            return;
        };
        if self.last_own.load(Ordering::Acquire) > taken_before {
            return;
        }
        let current = self.local.current();
        if current.is_some_and(|m| m.value().encode() == bytes) {
            return;
        }
        self.take_foreign(bytes);
    }

    /// This process's own message, if `bytes` is the echo of one.
    fn own_echo(&self, bytes: &[u8]) -> Option<Outgoing<T>> {
        if self.in_flight_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        let index = in_flight.iter().position(|out| out.bytes == bytes)?;
        // Anything published before it whose echo never came was lost with a connection;
        // it was delivered here already.
        let own = in_flight.drain(..=index).next_back();
        self.in_flight_len.store(in_flight.len(), Ordering::Release);
        own
    }

    /// A value from another publisher (or from the key).
    fn take_foreign(&self, bytes: &[u8]) {
        match T::decode(bytes) {
            Ok(value) => {
                if let Ok(position) = self.local.try_submit(value) {
                    self.last_foreign
                        .store(position.offset(), Ordering::Release);
                }
            }
            Err(e) => {
                self.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel = %self.channel, error = %e, "skipped a message");
            }
        }
    }

    fn expect_echo(&self, out: Outgoing<T>) {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        in_flight.push_back(out);
        self.in_flight_len.store(in_flight.len(), Ordering::Release);
    }

    /// What became of the value submitted here at `position`, if known yet: taken by
    /// Redis (with it or a newer value from here), refused, or failed on the way (or
    /// superseded by a newer value that was refused: not published, but not refused).
    fn outcome(&self, position: Position) -> Option<Result<(), SubmitError<()>>> {
        let reached = |newest: &AtomicU64| newest.load(Ordering::Acquire) >= position.offset();
        if reached(&self.published_own) {
            Some(Ok(()))
        } else if self.refused_own.load(Ordering::Acquire) == position.offset() {
            Some(Err(SubmitError::Unavailable(())))
        } else if reached(&self.failed_own) || reached(&self.refused_own) {
            // Failed on the way, or superseded by a newer value that was refused.
            Some(Err(SubmitError::OutcomeUnknown(())))
        } else {
            None
        }
    }

    /// Waits until `check` says something (asked again after each publish), at most twice
    /// the response timeout; once the store closes, asks it a last time.
    async fn after_publishes<R>(&self, check: impl Fn() -> Option<R>) -> Option<R> {
        let patience = self
            .redis
            .options()
            .response_timeout_value()
            .saturating_mul(2);
        runtime::timeout(patience, async {
            loop {
                let listener = self.attempted.listen();
                if let Some(said) = check() {
                    return Some(said);
                }
                if self.shutdown.unless(listener).await.is_none() {
                    return check();
                }
            }
        })
        .await
        .flatten()
    }

    /// Records what became of a publish of the value at `offset`, and tells who waits.
    fn attempted(&self, offset: u64, outcome: &AtomicU64, reachable: bool) {
        outcome.fetch_max(offset, Ordering::AcqRel);
        self.unreachable.store(!reachable, Ordering::Release);
        self.attempts.fetch_add(1, Ordering::AcqRel);
        self.attempted.notify(usize::MAX);
    }

    fn forget_echo(&self, position: Position) {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        in_flight.retain(|out| out.position != position);
        self.in_flight_len.store(in_flight.len(), Ordering::Release);
    }

    /// Shows the newest of a batch: the key's value, a message of another publisher, or
    /// this process's own message again when Redis put it after another's.
    fn take_newest(&self, newest: Option<Heard<'_>>) {
        let newest = match newest {
            None => return,
            Some(Heard::Key { value, tag }) => {
                self.take_key(value.expect("only a key with a value stands"), tag);
                return;
            }
            Some(Heard::Message(bytes)) => bytes,
        };
        match self.own_echo(newest) {
            // A value from another publisher was shown after this one, but Redis put this
            // one later: show it again, so that this process ends with Redis's last value
            // (unless a newer value of ours is on its way anyway).
            Some(own) => {
                // Under the submit lock, so that a submit in progress counts as newer.
                let _submitting = self.submitting.lock().expect("submit lock");
                let position = own.position.offset();
                if self.last_foreign.load(Ordering::Acquire) > position
                    && self.last_own.load(Ordering::Acquire) == position
                {
                    let _ = self.local.try_submit_arc(own.value);
                }
            }
            None => self.take_foreign(newest),
        }
    }

    fn forget_all_echoes(&self) {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        in_flight.clear();
        self.in_flight_len.store(0, Ordering::Release);
    }
}

/// The shared subscription's side of the store.
impl<T: Codec> Listener for Shared<T> {
    /// Messages delivered by the subscription, oldest first. A latest-value store shows
    /// only the newest of a batch; the others are only matched with this process's own
    /// (not decoded, not delivered).
    fn heard(&self, batch: &[Heard<'_>]) {
        let mut newest = None;
        let mut syncs = 0;
        for &heard in batch {
            match heard {
                Heard::Message(_) => {
                    self.received.fetch_add(1, Ordering::Relaxed);
                    if let Some(Heard::Message(older)) = newest.replace(heard) {
                        self.own_echo(older);
                    }
                }
                Heard::Key { value, .. } => {
                    syncs += 1;
                    // A key with a value stands for it; no key leaves the newest message.
                    if value.is_some() {
                        if let Some(Heard::Message(older)) = newest.replace(heard) {
                            self.own_echo(older);
                        }
                    }
                }
            }
        }
        self.take_newest(newest);
        // Only once the key's value is taken: a store being opened waits for this, then
        // shows its current value.
        if syncs > 0 {
            self.syncs.fetch_add(syncs, Ordering::AcqRel);
            self.synced.notify(usize::MAX);
        }
    }

    fn lost(&self) {
        self.connected.store(false, Ordering::Relaxed);
        // Echoes of what was published meanwhile will not come.
        self.forget_all_echoes();
        self.interrupt();
    }

    fn resubscribed(self: Arc<Self>) {
        self.connected.store(true, Ordering::Relaxed);
        runtime::spawn(async move {
            // What was published meanwhile is in the key. The command connection may come
            // back later than the subscription: tried again until it answers, unless the
            // subscription is lost again (its next resubscribe syncs) or the store closes.
            let mut backoff = self.redis.options().backoff();
            while let Err(e) = self.sync_from_key().await {
                tracing::warn!(channel = %self.channel, error = %e, "could not read the latest-value key; trying again");
                if self.shutdown.unless(backoff.wait()).await.is_none()
                    || !self.connected.load(Ordering::Relaxed)
                {
                    return;
                }
            }
        });
    }
}

/// The publishing task: publishes what is submitted here, newest first when it falls
/// behind (a latest-value store may skip values), retrying with backoff while Redis is
/// away.
async fn publish<T: Codec>(shared: Arc<Shared<T>>, mut outgoing: DataSubscriber<Outgoing<T>>) {
    let script = if shared.redis.is_cluster() {
        Script::new(&PUBLISH.replace("'PUBLISH'", "'SPUBLISH'"))
    } else {
        Script::new(PUBLISH)
    };
    let mut commands = shared.redis.commands();
    let mut backoff = shared.redis.options().backoff();
    let mut retry: Option<Message<Outgoing<T>>> = None;
    // Failures in a row of the value tried again, and its position.
    let (mut failures, mut failing) = (0, 0);
    loop {
        let next = match retry.take() {
            Some(message) => Some(message),
            None => outgoing.next().await.and_then(Result::ok),
        };
        let Some(message) = next else { return };
        // Newer values waiting supersede this one.
        let message = outgoing.try_recv().unwrap_or(message);
        let out = message.value();
        let bytes = out.value.encode().into_owned();
        shared.expect_echo(Outgoing {
            position: out.position,
            value: Arc::clone(&out.value),
            bytes: bytes.clone(),
        });
        let published: Result<i64, RedisError> = script
            .key(&shared.key)
            .arg(&shared.channel)
            .arg(bytes)
            .invoke_async(&mut commands)
            .await;
        let offset = out.position.offset();
        let e = match published {
            Ok(_) => {
                shared.attempted(offset, &shared.published_own, true);
                backoff.reset();
                failures = 0;
                continue;
            }
            Err(e) => e,
        };
        shared.forget_echo(out.position);
        if shared.shutdown.is_triggered() {
            shared.attempted(offset, &shared.failed_own, true);
            return;
        }
        if !crate::connection::is_transient(&e) {
            tracing::error!(channel = %shared.channel, error = %e, "Redis refused a value; it is not published");
            shared.attempted(offset, &shared.refused_own, true);
            failures = 0;
            continue;
        }
        shared.redis.failed(&e);
        commands = shared.redis.commands();
        if crate::connection::is_connection_failure(&e) {
            // The connection failed under the value while Redis answers another command
            // on it (in the key's slot): the value itself may break the connection (over
            // a size limit, say). Three times in a row, and it is given up rather than
            // retried for ever (which would keep every submit refused). Failures while
            // Redis is away do not count.
            let answered = shared
                .shutdown
                .unless(
                    redis::cmd("EXISTS")
                        .arg(&shared.key)
                        .query_async::<i64>(&mut commands),
                )
                .await
                .is_some_and(|answer| answer.is_ok());
            failures = match (answered, failing == offset) {
                (false, _) => 0,
                (true, true) => failures + 1,
                (true, false) => 1,
            };
            failing = offset;
            if failures >= 3 {
                tracing::error!(channel = %shared.channel, error = %e, "a value broke the connection 3 times while Redis answered; it is not published");
                shared.attempted(offset, &shared.refused_own, true);
                failures = 0;
                continue;
            }
        }
        shared.attempted(offset, &shared.failed_own, false);
        tracing::warn!(channel = %shared.channel, error = %e, "publishing failed; retrying");
        retry = Some(message);
        shared.nudged.store(false, Ordering::Release);
        let nudged = async {
            loop {
                let listener = shared.nudge.listen();
                if shared.nudged.swap(false, Ordering::AcqRel) {
                    return;
                }
                listener.await;
            }
        };
        shared
            .shutdown
            .unless(futures_lite::future::or(backoff.wait(), nudged))
            .await;
        // The connection may have been replaced meanwhile.
        commands = shared.redis.commands();
    }
}
