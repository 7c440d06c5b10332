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
use redis::{ErrorKind, Msg, RedisError, Value};

use crate::Options;
use crate::runtime;
use crate::shutdown::Shutdown;

/// Most messages taken from the connection before they are handed out.
const MAX_BATCH: usize = 1024;

/// What the shared subscription heard for a channel.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Heard<'a> {
    /// A message published to the channel.
    Message(&'a [u8]),
    /// The channel's latest-value key as it was at this point of the channel's messages
    /// (`None`: no key), read by [`Subscription::sync`]: everything published before the
    /// read came before this, everything after comes after. `tag` is the caller's.
    Key {
        /// The key's value.
        value: Option<&'a [u8]>,
        /// The tag the sync was sent with.
        tag: u64,
    },
}

/// A store listening on a channel of the shared subscription.
pub(crate) trait Listener: Send + Sync + 'static {
    /// Messages on its channel, and reads of its key, oldest first.
    fn heard(&self, batch: &[Heard<'_>]);
    /// The connection was lost: messages published from now until `resubscribed` are gone.
    fn lost(&self);
    /// Subscribed again on a new connection.
    fn resubscribed(self: Arc<Self>);
}

/// Who listens on which channel of a shared subscription (one server's or a Cluster's).
#[derive(Default)]
pub(crate) struct Listeners(Mutex<HashMap<String, Vec<Weak<dyn Listener>>>>);

impl Listeners {
    /// The map itself, for a caller that must decide under the lock.
    pub(crate) fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Weak<dyn Listener>>>> {
        self.0.lock().expect("listeners lock")
    }

    pub(crate) fn add(&self, channel: &str, listener: Weak<dyn Listener>) {
        self.lock()
            .entry(channel.to_owned())
            .or_default()
            .push(listener);
    }

    /// Takes `listener` (and any gone) off `channel`; whether nobody listens on it any
    /// more (it is then forgotten).
    pub(crate) fn remove(&self, channel: &str, listener: &Weak<dyn Listener>) -> bool {
        let mut listeners = self.lock();
        let Some(on_channel) = listeners.get_mut(channel) else {
            return false;
        };
        on_channel.retain(|l| !Weak::ptr_eq(l, listener) && l.strong_count() > 0);
        if !on_channel.is_empty() {
            return false;
        }
        listeners.remove(channel);
        true
    }

    pub(crate) fn has(&self, channel: &str) -> bool {
        self.lock().contains_key(channel)
    }

    /// The live listeners of `channel`.
    pub(crate) fn of(&self, channel: &str) -> Vec<Arc<dyn Listener>> {
        self.lock()
            .get(channel)
            .map(|on_channel| on_channel.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// Every live listener.
    pub(crate) fn all(&self) -> Vec<Arc<dyn Listener>> {
        self.lock()
            .values()
            .flatten()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Every channel listened on.
    pub(crate) fn channels(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

/// Reads a channel's latest-value key (KEYS[1]) and publishes what it holds to the
/// subscription's own sync channel (ARGV[1]), prefixed with the channel and the caller's
/// tag (ARGV[2], `LEN:CHANNEL#TAG`): `=` and the value, or `-` for no key. Read and publish are one step for Redis, so the sync
/// message comes through the subscription exactly between the channel's messages
/// published before the read and those published after.
pub(crate) const SYNC: &str = r"
local value = redis.call('GET', KEYS[1])
if value then
  return redis.call('PUBLISH', ARGV[1], ARGV[2] .. '=' .. value)
end
return redis.call('PUBLISH', ARGV[1], ARGV[2] .. '-')
";

static SYNC_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(SYNC));

/// The shared subscription of one `Redis` handle.
pub(crate) struct Subscription {
    /// Where to connect (for Sentinel, the primary is looked up again on every connect).
    endpoint: Arc<crate::endpoint::Endpoint>,
    /// This subscription's own channel, on which [`SYNC`] tells where a key's value falls
    /// among the channel's messages.
    sync_channel: String,
    options: Options,
    /// Who listens on which channel.
    listeners: Listeners,
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
    pub(crate) fn new(endpoint: Arc<crate::endpoint::Endpoint>, options: &Options) -> Self {
        Subscription {
            endpoint,
            sync_channel: format!("storecast:sync:{}", storecast::Epoch::random()),
            options: options.clone(),
            listeners: Listeners::default(),
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
        self.listeners.add(channel, listener.clone());
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

    /// Whether the subscription connection is open now.
    pub(crate) fn is_open(&self) -> bool {
        self.current_sink().is_some()
    }

    /// Stops delivering to `listener`; the channel is unsubscribed once nobody listens.
    pub(crate) fn remove(&self, channel: &str, listener: &Weak<dyn Listener>) {
        if !self.listeners.remove(channel, listener) {
            return;
        }
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

    /// Has the value of `key`, `channel`'s latest-value key, delivered to `channel`'s
    /// listeners as [`Heard::Key`], in order with the channel's messages. Runs on
    /// `commands`; the answer says whether the subscription heard it (1).
    pub(crate) async fn sync(
        &self,
        commands: &mut crate::endpoint::Commands,
        channel: &str,
        key: &str,
        tag: u64,
    ) -> Result<i64, RedisError> {
        SYNC_SCRIPT
            .key(key)
            .arg(&self.sync_channel)
            .arg(sync_label(channel, tag))
            .invoke_async(commands)
            .await
    }

    fn current_sink(&self) -> Option<PubSubSink> {
        self.sink.lock().expect("sink lock").clone()
    }

    /// A new connection, subscribed to `channels`, within the connect timeout.
    async fn connect(&self, channels: &[String]) -> Result<(PubSubSink, PubSubStream), RedisError> {
        let attempt = async {
            let client = self.endpoint.client(true).await?;
            let pubsub = client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            let mut all = channels.to_vec();
            all.push(self.sync_channel.clone());
            sink.subscribe(all).await?;
            Ok((sink, stream))
        };
        runtime::timeout(self.options.connect_timeout_value(), attempt)
            .await
            .unwrap_or_else(|| Err(RedisError::from((ErrorKind::Io, "connecting timed out"))))
    }

    /// Hands a batch to the listeners of each channel in it, in order.
    fn deliver(&self, batch: &[Msg]) {
        let heard = batch.iter().filter_map(|message| {
            let channel = message.get_channel_name();
            if channel == self.sync_channel {
                let (of, value, tag) = parse_sync(message.get_payload_bytes())?;
                return Some((of, Heard::Key { value, tag }));
            }
            Some((channel, Heard::Message(message.get_payload_bytes())))
        });
        deliver(heard, |channel| self.listeners.of(channel));
    }
}

/// Hands what was heard to the listeners of each channel, grouped by channel, in order.
pub(crate) fn deliver<'a>(
    heard: impl Iterator<Item = (&'a str, Heard<'a>)>,
    listeners_of: impl Fn(&str) -> Vec<Arc<dyn Listener>>,
) {
    let mut by_channel: Vec<(&str, Vec<Heard<'_>>)> = Vec::new();
    for (channel, heard) in heard {
        match by_channel.iter_mut().find(|(c, _)| *c == channel) {
            Some((_, heard_there)) => heard_there.push(heard),
            None => by_channel.push((channel, vec![heard])),
        }
    }
    for (channel, payloads) in by_channel {
        for listener in listeners_of(channel) {
            listener.heard(&payloads);
        }
    }
}

/// The label a sync message starts with, `LEN:CHANNEL#TAG` (read by [`parse_sync`]).
pub(crate) fn sync_label(channel: &str, tag: u64) -> String {
    format!("{}:{channel}#{tag}", channel.len())
}

/// A sync message: `LEN:CHANNEL#TAG` then `=VALUE` or `-`.
pub(crate) fn parse_sync(payload: &[u8]) -> Option<(&str, Option<&[u8]>, u64)> {
    let colon = payload.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&payload[..colon]).ok()?.parse().ok()?;
    let rest = &payload[colon + 1..];
    let channel = std::str::from_utf8(rest.get(..len)?).ok()?;
    let rest = rest.get(len..)?.strip_prefix(b"#")?;
    let end = rest.iter().position(|&b| b == b'=' || b == b'-')?;
    let tag = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    match &rest[end..] {
        [b'=', value @ ..] => Some((channel, Some(value), tag)),
        [b'-'] => Some((channel, None, tag)),
        _ => None,
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
                    if !subscription.listeners.has(&channel)
                        && sink.unsubscribe(&channel).await.is_err()
                    {
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
        for listener in subscription.listeners.all() {
            listener.lost();
        }
        stream = loop {
            let channels = subscription.listeners.channels();
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
                    for listener in subscription.listeners.all() {
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
