//! Topics: named stores, created on first use, each a latest-value store or a queue.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_lite::Stream;
use storecast::sse::Payload;
use storecast::{
    DataStore, DataSubscriber, Item, Position, QueueStore, QueueSubscriber, RecvError, Start,
    Store, SubmitError, Subscriber, TrySubmitError,
};
use storecast_redis::{
    Codec, DecodeError, QueueOptions, Redis, RedisQueueStore, RedisQueueSubscriber, RedisStore,
    RedisSubscriber,
};

use crate::config::Config;
use crate::metrics::Metrics;

/// A published message: its data and, optionally, an event type.
#[derive(Debug)]
pub struct HubMessage {
    pub event: Option<String>,
    pub data: String,
    /// The message as sent at its position, one for each [`Wire`]: made by the first
    /// subscriber that sends it and shared by all the others (see [`HubMessage::encoded`]).
    encoded: [OnceLock<(Position, Bytes)>; 2],
}

/// How a message is sent: what [`HubMessage::encoded`] keeps one of.
#[derive(Debug, Clone, Copy)]
pub enum Wire {
    /// An SSE event, as an HTTP/1.1 chunk.
    Sse,
    /// A WebSocket text frame.
    WebSocket,
}

impl HubMessage {
    /// A message of `data`, of the default type unless `event` names one.
    pub fn new(event: Option<String>, data: String) -> Self {
        HubMessage {
            event,
            data,
            encoded: Default::default(),
        }
    }

    /// The bytes `encode` makes of this message at `position` for `wire`, made once: a message is
    /// sent to every subscriber of its topic, and 1,000 subscribers should not format it
    /// 1,000 times. (A value is only ever at one position; the position is kept anyway,
    /// so that a store that hands out one value at two could not send a wrong id.)
    pub fn encoded(&self, wire: Wire, position: Position, encode: impl Fn() -> Bytes) -> Bytes {
        let (at, bytes) = self.encoded[wire as usize].get_or_init(|| (position, encode()));
        if *at == position {
            bytes.clone()
        } else {
            encode()
        }
    }
}

impl Payload for HubMessage {
    fn data(&self) -> &str {
        &self.data
    }
    fn event_type(&self) -> Option<&str> {
        self.event.as_deref()
    }
}

/// On Redis a message is its data, after a first line `event: TYPE` if it has a type, so
/// that other programs can publish plain text (and typed events too). The type `message`
/// is SSE's default, so it reads back as no type.
impl Codec for HubMessage {
    fn encode(&self) -> Cow<'_, [u8]> {
        match &self.event {
            None if !self.data.starts_with(EVENT_LINE) => Cow::Borrowed(self.data.as_bytes()),
            None => Cow::Owned(format!("{EVENT_LINE}message\n{}", self.data).into_bytes()),
            Some(event) => Cow::Owned(format!("{EVENT_LINE}{event}\n{}", self.data).into_bytes()),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| DecodeError::new("a hub message must be UTF-8 text"))?;
        let typed = text
            .strip_prefix(EVENT_LINE)
            .and_then(|rest| rest.split_once('\n'))
            .filter(|(event, _)| !event.is_empty() && !event.contains('\r'));
        Ok(match typed {
            Some(("message", data)) => HubMessage::new(None, data.to_owned()),
            Some((event, data)) => HubMessage::new(Some(event.to_owned()), data.to_owned()),
            None => HubMessage::new(None, text.to_owned()),
        })
    }
}

const EVENT_LINE: &str = "event: ";

/// A topic's figures for `/metrics` and `/stats`.
#[derive(Debug)]
pub struct TopicStats {
    pub name: String,
    /// Whether it is a latest-value topic (else a queue).
    pub latest: bool,
    pub subscribers: usize,
    /// Messages published to it through this hub.
    pub messages: u64,
    /// The offset of the newest message published through this hub (0: none yet).
    pub last_offset: u64,
    /// Lag reports its subscribers were sent (`lagged`, `fell-behind`).
    pub lagged: u64,
    /// On Redis: whether its connection is up, and how often its subscription was lost.
    pub redis: Option<(bool, u64)>,
}

/// Why a topic could not be had.
#[derive(Debug)]
pub enum TopicError {
    /// The name is not 1 to 128 of `A-Z a-z 0-9 . _ -`.
    BadName,
    /// `--max-topics` topics exist already.
    TooMany(usize),
    /// Its Redis channel or stream could not be opened (the reason is logged, not sent to
    /// clients: it names the Redis server).
    Unavailable,
}

/// Milliseconds since the hub started: the clock topics count their last use in.
fn now() -> u64 {
    static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);
    STARTED.elapsed().as_millis() as u64
}

/// Whether `name` can name a topic: 1 to 128 of `A-Z a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Every topic of the hub.
#[derive(Debug)]
pub struct Topics {
    config: Config,
    metrics: Arc<Metrics>,
    /// Where topics live when not in memory.
    redis: Option<Redis>,
    topics: RwLock<HashMap<String, Topic>>,
    /// Set by `close_all` (under the topics' lock): a topic opened afterwards (by a
    /// request that was under way) is closed at once, not kept open past shutdown.
    closing: std::sync::atomic::AtomicBool,
}

impl Topics {
    pub fn new(config: Config, metrics: Arc<Metrics>, redis: Option<Redis>) -> Self {
        Topics {
            config,
            metrics,
            redis,
            topics: RwLock::new(HashMap::new()),
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Removes the topics that have had no subscriber and no publish for
    /// `--topic-idle-secs`, closing them (what they retain goes with them). Returns how
    /// many went.
    pub fn remove_idle(&self) -> usize {
        let idle = Duration::from_secs(self.config.topic_idle_secs).as_millis() as u64;
        let now = now();
        let mut removed = Vec::new();
        self.topics
            .write()
            .expect("topics lock")
            .retain(|name, topic| {
                let unused = topic.subscriber_count() == 0
                    && now.saturating_sub(topic.last_used.load(Ordering::Relaxed)) >= idle;
                if unused {
                    removed.push((name.clone(), topic.clone()));
                }
                !unused
            });
        for (name, topic) in &removed {
            topic.close();
            let freed: u64 = topic
                .retained
                .lock()
                .expect("retained lock")
                .sizes
                .drain(..)
                .map(|(_, size)| size)
                .sum();
            self.metrics
                .retained_bytes
                .fetch_sub(freed, Ordering::Relaxed);
            tracing::debug!(topic = name.as_str(), "idle topic removed");
        }
        removed.len()
    }

    /// Whether the topic `name` exists now.
    pub fn exists(&self, name: &str) -> bool {
        self.topics.read().expect("topics lock").contains_key(name)
    }

    /// How many topics exist.
    pub fn len(&self) -> usize {
        self.topics.read().expect("topics lock").len()
    }

    /// The topic called `name` if it exists (counted as used), without waiting.
    pub fn existing(&self, name: &str) -> Option<Topic> {
        let topics = self.topics.read().expect("topics lock");
        let topic = topics.get(name)?;
        topic.used(now());
        Some(topic.clone())
    }

    /// The topic called `name`, created if it is new.
    pub async fn get(&self, name: &str) -> Result<Topic, TopicError> {
        if !valid_name(name) {
            return Err(TopicError::BadName);
        }
        if let Some(topic) = self.existing(name) {
            return Ok(topic);
        }
        if self.topics.read().expect("topics lock").len() >= self.config.max_topics {
            return Err(TopicError::TooMany(self.config.max_topics));
        }
        // Opened outside the lock: on Redis that takes round trips. Two requests may both
        // open one; the loser's store is dropped (which closes it).
        let kind = self.open(name).await?;
        let mut topics = self.topics.write().expect("topics lock");
        if let Some(topic) = topics.get(name) {
            return Ok(topic.clone());
        }
        if topics.len() >= self.config.max_topics {
            return Err(TopicError::TooMany(self.config.max_topics));
        }
        let retains = if self.config.is_latest(name) {
            1
        } else {
            self.config.queue_capacity.max(1)
        };
        let topic = Topic {
            kind,
            metrics: Arc::clone(&self.metrics),
            counts: Arc::default(),
            last_used: Arc::new(AtomicU64::new(now())),
            retained: Arc::new(Mutex::new(Retained {
                sizes: VecDeque::new(),
                capacity: retains,
                next: 0,
            })),
            keys: Arc::default(),
        };
        if self.closing.load(Ordering::Acquire) {
            // The hub is shutting down: the request gets a closed topic (its stream ends,
            // its publish is refused) and nothing stays open.
            topic.close();
            return Ok(topic);
        }
        topics.insert(name.to_owned(), topic.clone());
        tracing::debug!(
            topic = name,
            latest = self.config.is_latest(name),
            "topic created"
        );
        Ok(topic)
    }

    /// A new store for the topic `name`.
    async fn open(&self, name: &str) -> Result<Kind, TopicError> {
        let latest = self.config.is_latest(name);
        let capacity = self.config.queue_capacity.max(1);
        let Some(redis) = &self.redis else {
            return Ok(if latest {
                Kind::Latest(DataStore::new())
            } else {
                Kind::Queue(QueueStore::with_overflow(
                    capacity,
                    self.config.overflow.into(),
                ))
            });
        };
        let key = format!("{}{name}", self.config.redis_prefix);
        let opened = if latest {
            redis.data_store(&key).await.map(Kind::RedisLatest)
        } else {
            let options = QueueOptions::default()
                .capacity(capacity)
                .overflow(self.config.overflow.into())
                .max_len(self.config.redis_stream_length);
            redis.queue_store(&key, options).await.map(Kind::RedisQueue)
        };
        opened.map_err(|e| {
            tracing::warn!(topic = name, error = %e, "cannot open the topic on Redis");
            TopicError::Unavailable
        })
    }

    /// The figures of the `limit` topics with the most subscribers, sorted by name (so
    /// that `/metrics` stays small and fast with any number of topics).
    pub fn stats(&self, limit: usize) -> Vec<TopicStats> {
        let mut counted: Vec<_> = {
            let topics = self.topics.read().expect("topics lock");
            topics
                .iter()
                .map(|(name, topic)| (topic.subscriber_count(), name.as_str(), topic.clone()))
                .map(|(subscribers, name, topic)| (subscribers, name.to_owned(), topic))
                .collect()
        };
        if counted.len() > limit {
            counted.select_nth_unstable_by(limit, |a, b| b.0.cmp(&a.0));
            counted.truncate(limit);
        }
        let mut stats: Vec<_> = counted
            .into_iter()
            .map(|(subscribers, name, topic)| TopicStats {
                name,
                latest: matches!(topic.kind, Kind::Latest(_) | Kind::RedisLatest(_)),
                subscribers,
                messages: topic.counts.messages.load(Ordering::Relaxed),
                last_offset: topic.counts.last_offset.load(Ordering::Relaxed),
                lagged: topic.counts.lagged.load(Ordering::Relaxed),
                redis: topic.redis_status(),
            })
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// Closes every topic: subscribers receive what is left, then their streams end.
    pub fn close_all(&self) {
        let topics = self.topics.write().expect("topics lock");
        self.closing.store(true, Ordering::Release);
        for topic in topics.values() {
            topic.close();
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Latest(DataStore<HubMessage>),
    Queue(QueueStore<HubMessage>),
    RedisLatest(RedisStore<HubMessage>),
    RedisQueue(RedisQueueStore<HubMessage>),
}

impl Topic {
    /// On Redis: whether the topic's connection is up, and how often a latest topic's
    /// subscription was lost.
    fn redis_status(&self) -> Option<(bool, u64)> {
        match &self.kind {
            Kind::Latest(_) | Kind::Queue(_) => None,
            Kind::RedisLatest(store) => Some((store.is_connected(), store.interruptions())),
            Kind::RedisQueue(store) => Some((store.is_connected(), 0)),
        }
    }
}

/// One topic: a store that counts what it delivers into the hub's metrics.
#[derive(Debug, Clone)]
pub struct Topic {
    kind: Kind,
    metrics: Arc<Metrics>,
    /// Its own counters, for `/stats`.
    counts: Arc<TopicCounts>,
    /// When it was last asked for (a publish or a subscription), in the hub's clock.
    last_used: Arc<AtomicU64>,
    /// The sizes of the messages it retains, for the hub's memory budget.
    retained: Arc<Mutex<Retained>>,
    /// In memory: the idempotency keys of the last [`KEYS_KEPT`] keyed publishes, and
    /// where each went (`None` while its submit is under way). A Redis queue keeps its
    /// keys in Redis.
    keys: Arc<Mutex<RecentKeys>>,
}

/// Idempotency keys, oldest first, with the position each publish got.
type RecentKeys = VecDeque<(Box<str>, Option<Position>)>;

/// How many idempotency keys an in-memory topic remembers.
pub const KEYS_KEPT: usize = 1024;

/// Why a keyed publish was not made.
#[derive(Debug)]
pub enum KeyedError {
    /// The store's refusal, or its word that the outcome is unknown.
    Store(SubmitError<()>),
    /// A publish with the same key is under way here.
    InProgress,
}

/// A topic's own counters: a few relaxed atomics, so that `/stats` costs publishers
/// nothing they would notice.
#[derive(Debug, Default)]
struct TopicCounts {
    /// Messages published through this hub (rates are derived from it).
    messages: AtomicU64,
    /// The offset of the newest of them.
    last_offset: AtomicU64,
    /// Lag reports sent to its subscribers.
    lagged: AtomicU64,
}

/// What a topic retains, as the memory budget counts it: the bodies of the last
/// `capacity` messages published here (a queue's ring; a latest-value topic's one value).
/// The hub's `retained_bytes` is always the sum over every topic's `sizes`.
#[derive(Debug)]
struct Retained {
    /// Each message's reservation number and size, oldest first.
    sizes: VecDeque<(u64, u64)>,
    capacity: usize,
    /// The next reservation's number.
    next: u64,
}

/// A message's place in the memory budget, taken before it is submitted.
#[derive(Debug)]
pub struct Reservation {
    number: u64,
    /// The oldest message it pushed out of the count, if any.
    evicted: Option<(u64, u64)>,
}

/// A publish that would take retained memory past `--max-retained-bytes`.
#[derive(Debug)]
pub struct OverBudget;

impl Topic {
    fn used(&self, now: u64) {
        self.last_used.fetch_max(now, Ordering::Relaxed);
    }

    /// Counts a message of `size` bytes into the budget of `max` bytes retained across
    /// all topics (the oldest message it replaces leaves the count), or refuses it.
    pub fn reserve(&self, size: u64, max: u64) -> Result<Reservation, OverBudget> {
        let mut retained = self.retained.lock().expect("retained lock");
        let evicted = if retained.sizes.len() >= retained.capacity {
            retained.sizes.front().copied()
        } else {
            None
        };
        let freed = evicted.map_or(0, |(_, size)| size);
        self.metrics
            .retained_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |total| {
                let after = (total + size).saturating_sub(freed);
                (after <= max || after <= total).then_some(after)
            })
            .map_err(|_| OverBudget)?;
        if evicted.is_some() {
            retained.sizes.pop_front();
        }
        let number = retained.next;
        retained.next += 1;
        retained.sizes.push_back((number, size));
        Ok(Reservation { number, evicted })
    }

    /// Takes back a reservation whose message was not submitted after all: its size
    /// leaves the count, and the message it pushed out comes back if there is room.
    pub fn unreserve(&self, reservation: Reservation) {
        let mut retained = self.retained.lock().expect("retained lock");
        let Some(index) = retained
            .sizes
            .iter()
            .position(|&(number, _)| number == reservation.number)
        else {
            // Pushed out already by later messages: counted no more.
            return;
        };
        let (_, size) = retained.sizes.remove(index).expect("found");
        let mut change = -(size as i64);
        if let Some(evicted) = reservation.evicted
            && retained.sizes.len() < retained.capacity
        {
            retained.sizes.push_front(evicted);
            change += evicted.1 as i64;
        }
        let _ = self.metrics.retained_bytes.fetch_update(
            Ordering::AcqRel,
            Ordering::Acquire,
            |total| Some(total.saturating_add_signed(change)),
        );
    }
}

impl Topic {
    /// Publishes `value`, once per idempotency `key`: a publish under a key seen before
    /// answers the first one's position and adds nothing. On a Redis queue the key is
    /// kept in Redis (every hub sees it, and the store retries under it when Redis does
    /// not answer); in memory, the topic remembers its last [`KEYS_KEPT`] keys. Returns
    /// the position, and whether this publish added the message (`false`: an earlier one
    /// under the key did, and nothing was added now).
    pub async fn submit_keyed(
        &self,
        value: HubMessage,
        key: Option<&str>,
    ) -> Result<(Position, bool), KeyedError> {
        let Some(key) = key else {
            return self
                .submit(value)
                .await
                .map(|position| (position, true))
                .map_err(|e| KeyedError::Store(e.map(drop)));
        };
        if let Kind::RedisQueue(store) = &self.kind {
            let submitted = store.submit_with_key(value, key).await;
            if let Ok((position, true)) = &submitted {
                self.counted(*position);
            }
            return submitted.map_err(|e| KeyedError::Store(e.map(drop)));
        }
        {
            let mut keys = self.keys.lock().expect("keys lock");
            match keys.iter().find(|(seen, _)| **seen == *key) {
                Some((_, Some(position))) => return Ok((*position, false)),
                Some((_, None)) => return Err(KeyedError::InProgress),
                None => {
                    if keys.len() == KEYS_KEPT {
                        keys.pop_front();
                    }
                    keys.push_back((key.into(), None));
                }
            }
        }
        let keep = |position: Option<Position>| {
            let mut keys = self.keys.lock().expect("keys lock");
            if let Some(index) = keys.iter().position(|(seen, _)| **seen == *key) {
                match position {
                    Some(position) => keys[index].1 = Some(position),
                    // Not added: a retry may add it.
                    None => drop(keys.remove(index)),
                }
            }
        };
        if let Kind::RedisLatest(store) = &self.kind {
            // Current here at once, then published. Unless Redis refuses it, the value is
            // kept under the key even when Redis's answer did not come (the store goes on
            // publishing it), so that a retry does not bring it back over a newer value.
            let accepted = if store.reachable().await {
                store.try_submit(value).map_err(|_| SubmitError::Closed(()))
            } else {
                Err(SubmitError::Unavailable(()))
            };
            let Ok(position) = accepted.inspect_err(|_| keep(None)) else {
                return Err(KeyedError::Store(accepted.unwrap_err()));
            };
            self.counted(position);
            let published = store.published(position).await;
            keep(match published {
                Err(SubmitError::Unavailable(())) => None,
                _ => Some(position),
            });
            return published
                .map(|()| (position, true))
                .map_err(KeyedError::Store);
        }
        let submitted = self.submit(value).await;
        keep(submitted.as_ref().ok().copied());
        submitted
            .map(|position| (position, true))
            .map_err(|e| KeyedError::Store(e.map(drop)))
    }

    fn counted(&self, position: Position) {
        self.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
        self.counts.messages.fetch_add(1, Ordering::Relaxed);
        self.counts
            .last_offset
            .fetch_max(position.offset(), Ordering::Relaxed);
    }
}

impl Store for Topic {
    type Value = HubMessage;
    type Subscriber = TopicSubscriber;

    async fn submit(&self, value: HubMessage) -> Result<Position, SubmitError<HubMessage>> {
        let submitted = match &self.kind {
            Kind::Latest(store) => store.submit(value).await,
            Kind::Queue(store) => store.submit(value).await,
            Kind::RedisLatest(store) => store.submit(value).await,
            Kind::RedisQueue(store) => store.submit(value).await,
        };
        if let Ok(position) = &submitted {
            self.counted(*position);
        }
        submitted
    }

    fn try_submit(&self, value: HubMessage) -> Result<Position, TrySubmitError<HubMessage>> {
        match &self.kind {
            Kind::Latest(store) => Store::try_submit(store, value),
            Kind::Queue(store) => store.try_submit(value),
            Kind::RedisLatest(store) => Store::try_submit(store, value),
            Kind::RedisQueue(store) => Store::try_submit(store, value),
        }
    }

    fn subscribe_from(&self, start: Start) -> TopicSubscriber {
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        TopicSubscriber {
            inner: match &self.kind {
                Kind::Latest(store) => Inner::Latest(store.subscribe_from(start)),
                Kind::Queue(store) => Inner::Queue(store.subscribe_from(start)),
                Kind::RedisLatest(store) => Inner::RedisLatest(store.subscribe_from(start)),
                Kind::RedisQueue(store) => Inner::RedisQueue(store.subscribe_from(start)),
            },
            metrics: Arc::clone(&self.metrics),
            counts: Arc::clone(&self.counts),
            last_used: Arc::clone(&self.last_used),
        }
    }

    fn close(&self) {
        match &self.kind {
            Kind::Latest(store) => store.close(),
            Kind::Queue(store) => store.close(),
            Kind::RedisLatest(store) => store.close(),
            Kind::RedisQueue(store) => store.close(),
        }
    }

    fn is_closed(&self) -> bool {
        match &self.kind {
            Kind::Latest(store) => store.is_closed(),
            Kind::Queue(store) => store.is_closed(),
            Kind::RedisLatest(store) => store.is_closed(),
            Kind::RedisQueue(store) => store.is_closed(),
        }
    }

    async fn closed(&self) {
        match &self.kind {
            Kind::Latest(store) => store.closed().await,
            Kind::Queue(store) => store.closed().await,
            Kind::RedisLatest(store) => store.closed().await,
            Kind::RedisQueue(store) => store.closed().await,
        }
    }

    fn subscriber_count(&self) -> usize {
        match &self.kind {
            Kind::Latest(store) => store.subscriber_count(),
            Kind::Queue(store) => store.subscriber_count(),
            Kind::RedisLatest(store) => store.subscriber_count(),
            Kind::RedisQueue(store) => store.subscriber_count(),
        }
    }
}

enum Inner {
    Latest(DataSubscriber<HubMessage>),
    Queue(QueueSubscriber<HubMessage>),
    RedisLatest(RedisSubscriber<HubMessage>),
    RedisQueue(RedisQueueSubscriber<HubMessage>),
}

/// A subscriber of a topic: one SSE or WebSocket connection, counted while it lives.
pub struct TopicSubscriber {
    inner: Inner,
    metrics: Arc<Metrics>,
    /// Its topic's counters, where its lag reports count.
    counts: Arc<TopicCounts>,
    /// Its topic's last use, which its leaving renews.
    last_used: Arc<AtomicU64>,
}

impl Stream for TopicSubscriber {
    type Item = Item<HubMessage>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Latest(sub) => Pin::new(sub).poll_next(cx),
            Inner::Queue(sub) => Pin::new(sub).poll_next(cx),
            Inner::RedisLatest(sub) => Pin::new(sub).poll_next(cx),
            Inner::RedisQueue(sub) => Pin::new(sub).poll_next(cx),
        };
        if let Poll::Ready(Some(item)) = &polled {
            let counter = match item {
                Ok(_) => &this.metrics.messages_out,
                Err(RecvError::Lagged { missed }) => {
                    this.metrics.dropped.fetch_add(*missed, Ordering::Relaxed);
                    this.counts.lagged.fetch_add(1, Ordering::Relaxed);
                    &this.metrics.lagged
                }
                Err(RecvError::Reset { .. }) => &this.metrics.resets,
                Err(_) => {
                    this.counts.lagged.fetch_add(1, Ordering::Relaxed);
                    &this.metrics.lagged
                }
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

/// `try_recv` is the provided one, through `poll_next`, so that it is counted too.
impl Subscriber for TopicSubscriber {
    type Value = HubMessage;
}

impl Drop for TopicSubscriber {
    fn drop(&mut self) {
        self.last_used.fetch_max(now(), Ordering::Relaxed);
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[tokio::test]
    async fn a_topic_opened_after_shutdown_began_is_closed_and_not_kept() {
        let config = Config::parse_from(["storecast-hub"]);
        let topics = Topics::new(config, Arc::new(Metrics::default()), None);
        let before = topics.get("before").await.unwrap();
        topics.close_all();
        assert!(before.is_closed());
        // A request that was under way when shutdown began.
        let after = topics.get("after").await.unwrap();
        assert!(after.is_closed(), "a topic stayed open past shutdown");
        assert!(!topics.exists("after"));
    }
}
