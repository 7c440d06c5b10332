//! Topics: named stores, created on first use, each a latest-value store or a queue.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures_lite::Stream;
use storecast::sse::Payload;
use storecast::{
    DataStore, DataSubscriber, Item, Position, QueueStore, QueueSubscriber, RecvError, Start,
    Store, SubmitError, TrySubmitError,
};

use crate::config::Config;
use crate::metrics::Metrics;

/// A published message: its data and, optionally, an event type.
#[derive(Debug)]
pub struct HubMessage {
    pub event: Option<String>,
    pub data: String,
}

impl Payload for HubMessage {
    fn data(&self) -> &str {
        &self.data
    }
    fn event_type(&self) -> Option<&str> {
        self.event.as_deref()
    }
}

/// Why a topic could not be had.
#[derive(Debug)]
pub enum TopicError {
    /// The name is not 1 to 128 of `A-Z a-z 0-9 . _ -`.
    BadName,
    /// `--max-topics` topics exist already.
    TooMany(usize),
}

/// Every topic of the hub.
#[derive(Debug)]
pub struct Topics {
    config: Config,
    metrics: Arc<Metrics>,
    topics: RwLock<HashMap<String, Topic>>,
}

impl Topics {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Self {
        Topics {
            config,
            metrics,
            topics: RwLock::new(HashMap::new()),
        }
    }

    /// The topic called `name`, created if it is new.
    pub fn get(&self, name: &str) -> Result<Topic, TopicError> {
        let valid = (1..=128).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(TopicError::BadName);
        }
        if let Some(topic) = self.topics.read().expect("topics lock").get(name) {
            return Ok(topic.clone());
        }
        let mut topics = self.topics.write().expect("topics lock");
        if let Some(topic) = topics.get(name) {
            return Ok(topic.clone());
        }
        if topics.len() >= self.config.max_topics {
            return Err(TopicError::TooMany(self.config.max_topics));
        }
        let kind = if self.config.is_latest(name) {
            Kind::Latest(DataStore::new())
        } else {
            Kind::Queue(QueueStore::with_overflow(
                self.config.queue_capacity.max(1),
                self.config.overflow.into(),
            ))
        };
        let topic = Topic {
            kind,
            metrics: Arc::clone(&self.metrics),
        };
        topics.insert(name.to_owned(), topic.clone());
        tracing::info!(
            topic = name,
            latest = self.config.is_latest(name),
            "topic created"
        );
        Ok(topic)
    }

    /// Each topic's name and subscriber count, sorted by name.
    pub fn subscriber_counts(&self) -> Vec<(String, usize)> {
        let topics = self.topics.read().expect("topics lock");
        let mut counts: Vec<_> = topics
            .iter()
            .map(|(name, topic)| (name.clone(), topic.subscriber_count()))
            .collect();
        counts.sort();
        counts
    }

    /// Closes every topic: subscribers receive what is left, then their streams end.
    pub fn close_all(&self) {
        for topic in self.topics.read().expect("topics lock").values() {
            topic.close();
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Latest(DataStore<HubMessage>),
    Queue(QueueStore<HubMessage>),
}

/// One topic: a store that counts what it delivers into the hub's metrics.
#[derive(Debug, Clone)]
pub struct Topic {
    kind: Kind,
    metrics: Arc<Metrics>,
}

impl Store for Topic {
    type Value = HubMessage;
    type Subscriber = TopicSubscriber;

    async fn submit(&self, value: HubMessage) -> Result<Position, SubmitError<HubMessage>> {
        let submitted = match &self.kind {
            Kind::Latest(store) => store.submit(value),
            Kind::Queue(store) => store.submit(value).await,
        };
        if submitted.is_ok() {
            self.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
        }
        submitted
    }

    fn try_submit(&self, value: HubMessage) -> Result<Position, TrySubmitError<HubMessage>> {
        match &self.kind {
            Kind::Latest(store) => Store::try_submit(store, value),
            Kind::Queue(store) => store.try_submit(value),
        }
    }

    fn subscribe_from(&self, start: Start) -> TopicSubscriber {
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        TopicSubscriber {
            inner: match &self.kind {
                Kind::Latest(store) => Inner::Latest(store.subscribe_from(start)),
                Kind::Queue(store) => Inner::Queue(store.subscribe_from(start)),
            },
            metrics: Arc::clone(&self.metrics),
        }
    }

    fn close(&self) {
        match &self.kind {
            Kind::Latest(store) => store.close(),
            Kind::Queue(store) => store.close(),
        }
    }

    fn is_closed(&self) -> bool {
        match &self.kind {
            Kind::Latest(store) => store.is_closed(),
            Kind::Queue(store) => store.is_closed(),
        }
    }

    fn subscriber_count(&self) -> usize {
        match &self.kind {
            Kind::Latest(store) => store.subscriber_count(),
            Kind::Queue(store) => store.subscriber_count(),
        }
    }
}

enum Inner {
    Latest(DataSubscriber<HubMessage>),
    Queue(QueueSubscriber<HubMessage>),
}

/// A subscriber of a topic: one SSE or WebSocket connection, counted while it lives.
pub struct TopicSubscriber {
    inner: Inner,
    metrics: Arc<Metrics>,
}

impl Stream for TopicSubscriber {
    type Item = Item<HubMessage>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Latest(sub) => Pin::new(sub).poll_next(cx),
            Inner::Queue(sub) => Pin::new(sub).poll_next(cx),
        };
        if let Poll::Ready(Some(item)) = &polled {
            let counter = match item {
                Ok(_) => &this.metrics.messages_out,
                Err(RecvError::Lagged { missed }) => {
                    this.metrics.dropped.fetch_add(*missed, Ordering::Relaxed);
                    &this.metrics.lagged
                }
                Err(_) => &this.metrics.lagged,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl Drop for TopicSubscriber {
    fn drop(&mut self) {
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
