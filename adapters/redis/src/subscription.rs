//! One Redis subscription per [`Redis`](crate::Redis) handle, shared by the latest-value
//! stores made from it: one connection however many channels. Messages are handed to each
//! store by channel; when the connection is lost every store is told, and all channels are
//! subscribed again together on a new connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use event_listener::Event;
use futures_lite::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Client, ErrorKind, Msg, RedisError, Value};

use crate::Options;
use crate::runtime;
use crate::shutdown::Shutdown;

/// Most messages taken from the connection before they are handed out.
const MAX_BATCH: usize = 1024;

/// A store listening on a channel of the shared subscription.
pub(crate) trait Listener: Send + Sync + 'static {
    /// Messages on its channel, oldest first.
    fn heard(&self, batch: &[&[u8]]);
    /// The connection was lost: messages published from now until `resubscribed` are gone.
    fn lost(&self);
    /// Subscribed again on a new connection.
    fn resubscribed(self: Arc<Self>);
}

/// The shared subscription of one `Redis` handle.
pub(crate) struct Subscription {
    client: Client,
    options: Options,
    /// Who listens on which channel.
    listeners: Mutex<HashMap<String, Vec<Weak<dyn Listener>>>>,
    /// For subscribing and pinging; `None` before the first connection and while
    /// reconnecting.
    sink: Mutex<Option<PubSubSink>>,
    /// Serialises opening the first connection.
    opening: async_lock::Mutex<()>,
    /// Set once the dispatching task runs: from then on it alone (re)connects.
    started: AtomicBool,
    /// Channels nobody listens on any more, for the dispatching task to unsubscribe.
    leaving: Mutex<Vec<String>>,
    /// Notified when `leaving` grows.
    left: Event,
    /// Given when the `Redis` handle goes: the dispatching task ends.
    pub(crate) shutdown: Shutdown,
}

impl Subscription {
    pub(crate) fn new(client: Client, options: &Options) -> Self {
        Subscription {
            client,
            options: options.clone(),
            listeners: Mutex::new(HashMap::new()),
            sink: Mutex::new(None),
            opening: async_lock::Mutex::new(()),
            started: AtomicBool::new(false),
            leaving: Mutex::new(Vec::new()),
            left: Event::new(),
            shutdown: Shutdown::default(),
        }
    }

    /// Starts delivering `channel`'s messages to `listener`; returns once Redis has
    /// confirmed the subscription, so that nothing published afterwards is missed.
    pub(crate) async fn add(
        self: &Arc<Self>,
        channel: &str,
        listener: Weak<dyn Listener>,
    ) -> Result<(), RedisError> {
        let mut sink = self.open().await?;
        self.listeners
            .lock()
            .expect("listeners lock")
            .entry(channel.to_owned())
            .or_default()
            .push(listener.clone());
        let subscribed = runtime::timeout(
            self.options.response_timeout_value(),
            sink.subscribe(channel),
        )
        .await;
        let failure = match subscribed {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => e,
            None => RedisError::from((ErrorKind::Io, "SUBSCRIBE timed out")),
        };
        self.remove(channel, &listener);
        Err(failure)
    }

    /// Stops delivering to `listener`; the channel is unsubscribed once nobody listens.
    pub(crate) fn remove(&self, channel: &str, listener: &Weak<dyn Listener>) {
        let mut listeners = self.listeners.lock().expect("listeners lock");
        let Some(on_channel) = listeners.get_mut(channel) else {
            return;
        };
        on_channel.retain(|l| !Weak::ptr_eq(l, listener) && l.strong_count() > 0);
        if !on_channel.is_empty() {
            return;
        }
        listeners.remove(channel);
        drop(listeners);
        // The dispatching task sends the UNSUBSCRIBE: this may run outside any runtime (a
        // store dropped in synchronous code).
        self.leaving
            .lock()
            .expect("leaving lock")
            .push(channel.to_owned());
        self.left.notify(usize::MAX);
    }

    /// The sink of the current connection, opening the first one (and starting the task
    /// that dispatches its messages) if need be.
    async fn open(self: &Arc<Self>) -> Result<PubSubSink, RedisError> {
        if let Some(sink) = self.current_sink() {
            return Ok(sink);
        }
        let down = || {
            RedisError::from((
                ErrorKind::Io,
                "the subscription connection is down, and did not come back within the connect timeout",
            ))
        };
        // While the dispatching task reconnects, wait for it (a store opened then would
        // otherwise fail at once), up to the connect timeout.
        let opened = runtime::timeout(self.options.connect_timeout_value(), async {
            loop {
                let opening = self.opening.lock().await;
                if let Some(sink) = self.current_sink() {
                    return Ok(sink);
                }
                if self.shutdown.is_triggered() {
                    return Err(down());
                }
                if !self.started.load(Ordering::Acquire) {
                    let (sink, stream) = self.connect(&[]).await?;
                    *self.sink.lock().expect("sink lock") = Some(sink.clone());
                    self.started.store(true, Ordering::Release);
                    runtime::spawn(dispatch(Arc::clone(self), stream));
                    return Ok(sink);
                }
                drop(opening);
                runtime::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        opened.unwrap_or_else(|| Err(down()))
    }

    fn current_sink(&self) -> Option<PubSubSink> {
        self.sink.lock().expect("sink lock").clone()
    }

    /// A new connection, subscribed to `channels`, within the connect timeout.
    async fn connect(&self, channels: &[String]) -> Result<(PubSubSink, PubSubStream), RedisError> {
        let attempt = async {
            let pubsub = self.client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            if !channels.is_empty() {
                sink.subscribe(channels).await?;
            }
            Ok((sink, stream))
        };
        runtime::timeout(self.options.connect_timeout_value(), attempt)
            .await
            .unwrap_or_else(|| Err(RedisError::from((ErrorKind::Io, "connecting timed out"))))
    }

    /// Every live listener.
    fn all_listeners(&self) -> Vec<Arc<dyn Listener>> {
        let listeners = self.listeners.lock().expect("listeners lock");
        listeners
            .values()
            .flatten()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Hands a batch to the listeners of each channel in it, in order.
    fn deliver(&self, batch: &[Msg]) {
        let mut by_channel: Vec<(&str, Vec<&[u8]>)> = Vec::new();
        for message in batch {
            let channel = message.get_channel_name();
            let payload = message.get_payload_bytes();
            match by_channel.iter_mut().find(|(c, _)| *c == channel) {
                Some((_, payloads)) => payloads.push(payload),
                None => by_channel.push((channel, vec![payload])),
            }
        }
        for (channel, payloads) in by_channel {
            let listeners: Vec<_> = {
                let listeners = self.listeners.lock().expect("listeners lock");
                listeners
                    .get(channel)
                    .map(|on_channel| on_channel.iter().filter_map(Weak::upgrade).collect())
                    .unwrap_or_default()
            };
            for listener in listeners {
                listener.heard(&payloads);
            }
        }
    }
}

/// The dispatching task: reads the shared connection and hands out its messages; when it
/// is lost, tells every listener, reconnects with backoff and subscribes every channel
/// again.
async fn dispatch(subscription: Arc<Subscription>, mut stream: PubSubStream) {
    let mut backoff = subscription.options.backoff();
    loop {
        let receive = async {
            let mut batch = Vec::new();
            while let Some(message) = stream.next().await {
                batch.push(message);
                // Whatever else has arrived already: latest-value stores show only the
                // newest of each channel's batch.
                while batch.len() < MAX_BATCH {
                    match futures_lite::future::poll_once(stream.next()).await {
                        Some(Some(message)) => batch.push(message),
                        _ => break,
                    }
                }
                subscription.deliver(&batch);
                batch.clear();
            }
        };
        let health = async {
            loop {
                runtime::sleep(subscription.options.health_check_value()).await;
                let Some(mut sink) = subscription.current_sink() else {
                    return;
                };
                let pong = runtime::timeout(
                    subscription.options.response_timeout_value(),
                    sink.ping::<Value>(),
                )
                .await;
                if !matches!(pong, Some(Ok(_))) {
                    return;
                }
            }
        };
        let unsubscribe = async {
            loop {
                let listener = subscription.left.listen();
                let leaving =
                    std::mem::take(&mut *subscription.leaving.lock().expect("leaving lock"));
                if leaving.is_empty() {
                    listener.await;
                    continue;
                }
                let Some(mut sink) = subscription.current_sink() else {
                    return;
                };
                for channel in leaving {
                    // Unless somebody listens again already.
                    let listened = subscription
                        .listeners
                        .lock()
                        .expect("listeners lock")
                        .contains_key(&channel);
                    if !listened && sink.unsubscribe(&channel).await.is_err() {
                        return;
                    }
                }
            }
        };
        subscription
            .shutdown
            .unless(futures_lite::future::or(
                receive,
                futures_lite::future::or(health, unsubscribe),
            ))
            .await;
        if subscription.shutdown.is_triggered() {
            return;
        }
        *subscription.sink.lock().expect("sink lock") = None;
        tracing::warn!("lost the Redis subscription; reconnecting");
        for listener in subscription.all_listeners() {
            listener.lost();
        }
        stream = loop {
            let channels: Vec<String> = subscription
                .listeners
                .lock()
                .expect("listeners lock")
                .keys()
                .cloned()
                .collect();
            match subscription
                .shutdown
                .unless(subscription.connect(&channels))
                .await
            {
                None => return,
                Some(Ok((sink, stream))) => {
                    *subscription.sink.lock().expect("sink lock") = Some(sink);
                    backoff.reset();
                    tracing::info!(channels = channels.len(), "resubscribed to Redis");
                    for listener in subscription.all_listeners() {
                        listener.resubscribed();
                    }
                    break stream;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "resubscribing failed; retrying");
                    subscription.shutdown.unless(backoff.wait()).await;
                }
            }
        };
    }
}
