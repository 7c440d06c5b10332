//! The shared subscription on a Redis Cluster: sharded channels (`SSUBSCRIBE`), so that a
//! message goes only to the node that holds its channel's slot, not to every node.
//!
//! One cluster connection (one connection per node) per [`Redis`](crate::Redis) handle
//! carries every channel, in RESP3: messages arrive as pushes. Each channel is paired with
//! a sync channel of this handle in the same slot (`{channel}:storecast-sync:<random>`),
//! on which [`SYNC`] tells where the latest-value key's value falls among the channel's
//! messages: both come from the same node, in order.
//!
//! When a node's connection drops, or a node stops serving a channel's slot (a failover
//! or a resharding: the server says `sunsubscribe`), the channel's listeners are told it
//! was lost; the channel and its sync channel are subscribed again (the `redis` crate
//! routes them to the slot's new owner), and once both are confirmed the listeners are
//! told it is back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use event_listener::Event;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, ProtocolVersion, PushInfo, PushKind, RedisError, Value};

use crate::Options;
use crate::runtime;
use crate::shutdown::Shutdown;
use crate::subscription::{Heard, Listener, Listeners, deliver, parse_sync};

/// Most pushes handed out in one batch.
const MAX_BATCH: usize = 1024;

/// Publishes a channel's latest-value key (KEYS[1]) to the channel's sync channel
/// (ARGV[1], in the same slot): [`crate::subscription`]'s `SYNC`, with `SPUBLISH`.
static SYNC_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(&crate::subscription::SYNC.replace("'PUBLISH'", "'SPUBLISH'"))
});

/// What the subscription knows of a channel it was told it lost.
#[derive(Default)]
struct Regaining {
    /// `SSUBSCRIBE` confirmed for the channel since it was lost.
    channel: bool,
    /// And for its sync channel.
    sync: bool,
    /// Whether an `SSUBSCRIBE` for the pair is under way.
    asked: bool,
}

/// Pushes from the cluster connection, waiting for the dispatching task.
#[derive(Default)]
struct Inbox {
    pushes: Mutex<VecDeque<PushInfo>>,
    arrived: Event,
}

/// The sharded subscription of one `Redis` handle on a Cluster.
pub(crate) struct ShardedSubscription {
    nodes: Vec<redis::ConnectionInfo>,
    options: Options,
    /// The suffix of this handle's sync channels for channels without a hash tag
    /// (`{channel}` + suffix)...
    sync_suffix: String,
    /// ... and for channels with one (`channel` + suffix): different, so that the
    /// channels `eu` and `{eu}` never share a sync channel.
    tagged_sync_suffix: String,
    listeners: Listeners,
    /// Channels lost and not yet confirmed again.
    regaining: Mutex<HashMap<String, Regaining>>,
    /// Channels nobody listens on any more, to unsubscribe.
    leaving: Mutex<Vec<String>>,
    /// Notified when `regaining` or `leaving` has work.
    work: Event,
    connection: Mutex<Option<ClusterConnection>>,
    opening: async_lock::Mutex<()>,
    inbox: Arc<Inbox>,
    started: AtomicBool,
    pub(crate) shutdown: Shutdown,
}

impl ShardedSubscription {
    pub(crate) fn new(nodes: Vec<redis::ConnectionInfo>, options: &Options) -> Self {
        let random = storecast::Epoch::random();
        ShardedSubscription {
            nodes,
            options: options.clone(),
            sync_suffix: format!(":storecast-sync:{random}"),
            tagged_sync_suffix: format!(":storecast-tsync:{random}"),
            listeners: Listeners::default(),
            regaining: Mutex::new(HashMap::new()),
            leaving: Mutex::new(Vec::new()),
            work: Event::new(),
            connection: Mutex::new(None),
            opening: async_lock::Mutex::new(()),
            inbox: Arc::new(Inbox::default()),
            started: AtomicBool::new(false),
            shutdown: Shutdown::default(),
        }
    }

    /// The sync channel paired with `channel` (same slot; a channel with braces but no
    /// hash tag is refused before it gets here).
    fn sync_channel(&self, channel: &str) -> String {
        if channel.contains(['{', '}']) {
            format!("{channel}{}", self.tagged_sync_suffix)
        } else {
            format!("{{{channel}}}{}", self.sync_suffix)
        }
    }

    /// The channel a sync channel of this handle is paired with.
    fn synced_channel<'a>(&self, sync: &'a str) -> Option<&'a str> {
        if let Some(channel) = sync.strip_suffix(self.tagged_sync_suffix.as_str()) {
            return Some(channel);
        }
        sync.strip_suffix(self.sync_suffix.as_str())?
            .strip_prefix('{')?
            .strip_suffix('}')
    }

    /// Drops the cluster connection and opens another, then has every channel subscribed
    /// on it (its listeners are told they were lost). Whether the new one opened.
    async fn reopen(self: &Arc<Self>) -> bool {
        *self.connection.lock().expect("connection lock") = None;
        self.lose(self.listeners.channels());
        let _opening = self.opening.lock().await;
        match self.connect(true).await {
            Ok(connection) => {
                *self.connection.lock().expect("connection lock") = Some(connection);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not connect to the Redis Cluster; retrying");
                false
            }
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.connection.lock().expect("connection lock").is_some()
    }

    /// A new cluster connection whose pushes go to the inbox.
    /// With `probe`, only through the nodes that answer now (the crate would wait on one
    /// that does not).
    async fn connect(&self, probe: bool) -> Result<ClusterConnection, RedisError> {
        let inbox = Arc::downgrade(&self.inbox);
        let nodes = if probe {
            crate::connection::answering_nodes(&self.nodes, &self.options).await
        } else {
            self.nodes.clone()
        };
        let client = ClusterClientBuilder::new(nodes)
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(self.options.connect_timeout_value())
            .response_timeout(self.options.response_timeout_value())
            .retries(4)
            .push_sender(move |push: PushInfo| -> Result<(), ()> {
                let Some(inbox) = inbox.upgrade() else {
                    return Err(());
                };
                inbox.pushes.lock().expect("inbox lock").push_back(push);
                inbox.arrived.notify(1);
                Ok(())
            })
            .build()?;
        let connection = runtime::timeout(
            self.options.connect_timeout_value(),
            // Boxed: the crate's connecting future is deeply nested.
            runtime::erased(client.get_async_connection()),
        )
        .await
        .unwrap_or_else(|| Err(RedisError::from((ErrorKind::Io, "connecting timed out"))))?;
        Ok(connection)
    }

    /// The cluster connection, opened (and its dispatching task started) on first use.
    async fn open(self: &Arc<Self>) -> Result<ClusterConnection, RedisError> {
        if let Some(connection) = self.connection.lock().expect("connection lock").clone() {
            return Ok(connection);
        }
        let _opening = self.opening.lock().await;
        if let Some(connection) = self.connection.lock().expect("connection lock").clone() {
            return Ok(connection);
        }
        let connection = self.connect(false).await?;
        *self.connection.lock().expect("connection lock") = Some(connection.clone());
        if !self.started.swap(true, Ordering::AcqRel) {
            runtime::spawn(dispatch(Arc::clone(self)));
            runtime::spawn(maintain(Arc::clone(self)));
        }
        Ok(connection)
    }

    /// Starts delivering `channel`'s messages to `listener`; returns once Redis has
    /// confirmed the subscription.
    pub(crate) async fn add(
        self: &Arc<Self>,
        channel: &str,
        listener: Weak<dyn Listener>,
    ) -> Result<(), RedisError> {
        let mut connection = runtime::erased(self.open()).await?;
        self.listeners.add(channel, listener.clone());
        let pair = [channel.to_owned(), self.sync_channel(channel)];
        let subscribed = runtime::timeout(
            self.options.response_timeout_value(),
            connection.ssubscribe(&pair),
        )
        .await;
        let failure = match subscribed {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => e,
            None => RedisError::from((ErrorKind::Io, "SSUBSCRIBE timed out")),
        };
        self.remove(channel, &listener);
        Err(failure)
    }

    /// Stops delivering to `listener`; the channel is unsubscribed once nobody listens.
    pub(crate) fn remove(&self, channel: &str, listener: &Weak<dyn Listener>) {
        if !self.listeners.remove(channel, listener) {
            return;
        }
        self.regaining
            .lock()
            .expect("regaining lock")
            .remove(channel);
        self.leaving
            .lock()
            .expect("leaving lock")
            .push(channel.to_owned());
        self.work.notify(usize::MAX);
    }

    /// Has `key`'s value delivered to `channel`'s listeners in order with the channel's
    /// messages, through the channel's sync channel.
    pub(crate) async fn sync(
        &self,
        commands: &mut crate::endpoint::Commands,
        channel: &str,
        key: &str,
        tag: u64,
    ) -> Result<i64, RedisError> {
        SYNC_SCRIPT
            .key(key)
            .arg(self.sync_channel(channel))
            .arg(crate::subscription::sync_label(channel, tag))
            .invoke_async(commands)
            .await
    }

    /// Tells the listeners of `channels` (those still listened on) they were lost, and
    /// has them subscribed again.
    fn lose(&self, channels: Vec<String>) {
        let channels: Vec<String> = {
            // Under the listeners' lock: a channel removed meanwhile is not regained.
            let listeners = self.listeners.lock();
            let mut regaining = self.regaining.lock().expect("regaining lock");
            channels
                .into_iter()
                .filter(|channel| listeners.contains_key(channel))
                .inspect(|channel| {
                    regaining.insert(channel.clone(), Regaining::default());
                })
                .collect()
        };
        if channels.is_empty() {
            return;
        }
        for channel in &channels {
            for listener in self.listeners.of(channel) {
                listener.lost();
            }
        }
        self.work.notify(usize::MAX);
    }

    /// A confirmation of `SSUBSCRIBE` for `name`: once a lost channel and its sync channel
    /// are both confirmed, its listeners are told.
    fn confirmed(&self, name: &str) {
        let (channel, is_sync) = match self.synced_channel(name) {
            Some(channel) => (channel, true),
            None => (name, false),
        };
        let back = {
            let mut regaining = self.regaining.lock().expect("regaining lock");
            let Some(state) = regaining.get_mut(channel) else {
                return;
            };
            if is_sync {
                state.sync = true;
            } else {
                state.channel = true;
            }
            let back = state.channel && state.sync;
            if back {
                regaining.remove(channel);
            }
            back
        };
        if back {
            tracing::info!(channel, "subscribed to the sharded channel again");
            for listener in self.listeners.of(channel) {
                listener.resubscribed();
            }
        }
    }
}

/// The text of a push's `index`th item.
fn text(data: &[Value], index: usize) -> Option<&[u8]> {
    match data.get(index)? {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// Hands out the pushes: messages by channel, in order; confirmations and losses as they
/// come (after the messages before them).
async fn dispatch(subscription: Arc<ShardedSubscription>) {
    let inbox = Arc::clone(&subscription.inbox);
    let mut batch: Vec<PushInfo> = Vec::new();
    loop {
        let listener = inbox.arrived.listen();
        {
            let mut pushes = inbox.pushes.lock().expect("inbox lock");
            let n = pushes.len().min(MAX_BATCH);
            batch.extend(pushes.drain(..n));
        }
        if batch.is_empty() {
            if subscription.shutdown.unless(listener).await.is_none() {
                return;
            }
            continue;
        }
        let mut messages: Vec<(&str, &[u8])> = Vec::new();
        for push in &batch {
            match push.kind {
                PushKind::SMessage => {
                    let channel = text(&push.data, 0).and_then(|c| std::str::from_utf8(c).ok());
                    if let (Some(channel), Some(payload)) = (channel, text(&push.data, 1)) {
                        messages.push((channel, payload));
                    }
                }
                PushKind::SSubscribe => {
                    hand_out(&subscription, &mut messages);
                    if let Some(name) =
                        text(&push.data, 0).and_then(|c| std::str::from_utf8(c).ok())
                    {
                        subscription.confirmed(name);
                    }
                }
                PushKind::SUnsubscribe => {
                    hand_out(&subscription, &mut messages);
                    // The server dropped a channel we still listen on (its slot moved).
                    let Some(name) = text(&push.data, 0).and_then(|c| std::str::from_utf8(c).ok())
                    else {
                        continue;
                    };
                    let channel = subscription.synced_channel(name).unwrap_or(name);
                    let listened = subscription.listeners.has(channel);
                    if listened {
                        tracing::warn!(
                            channel,
                            "Redis Cluster moved a sharded channel; subscribing again"
                        );
                        subscription.lose(vec![channel.to_owned()]);
                    }
                }
                PushKind::Disconnection => {
                    hand_out(&subscription, &mut messages);
                    // Some node's connection dropped (which one, the crate does not say):
                    // every channel is read again.
                    tracing::warn!("lost a Redis Cluster node's connection; subscribing again");
                    subscription.lose(subscription.listeners.channels());
                }
                _ => {}
            }
        }
        hand_out(&subscription, &mut messages);
        batch.clear();
    }
}

/// Delivers the messages gathered so far (sync messages as the key's value).
fn hand_out(subscription: &ShardedSubscription, messages: &mut Vec<(&str, &[u8])>) {
    if messages.is_empty() {
        return;
    }
    let heard = messages.drain(..).filter_map(|(channel, payload)| {
        if subscription.synced_channel(channel).is_some() {
            let (of, value, tag) = parse_sync(payload)?;
            Some((of, Heard::Key { value, tag }))
        } else {
            Some((channel, Heard::Message(payload)))
        }
    });
    deliver(heard, |channel| subscription.listeners.of(channel));
}

/// Subscribes lost channels again (retrying with backoff until Redis confirms),
/// unsubscribes channels nobody listens on, and pings every node each health-check
/// interval: a node that stopped answering without closing its connection (a host gone,
/// a partition) is noticed, and the cluster connection is opened anew (the crate does not
/// reconnect on a timeout).
async fn maintain(subscription: Arc<ShardedSubscription>) {
    let mut backoff = subscription.options.backoff();
    let mut next_ping = std::time::Instant::now() + subscription.options.health_check_value();
    loop {
        let listener = subscription.work.listen();
        let current = subscription
            .connection
            .lock()
            .expect("connection lock")
            .clone();
        let Some(mut connection) = current else {
            // A reconnection failed: again, after a while.
            if subscription.shutdown.unless(backoff.wait()).await.is_none() {
                return;
            }
            if subscription.reopen().await {
                backoff.reset();
            }
            continue;
        };
        if std::time::Instant::now() >= next_ping {
            next_ping = std::time::Instant::now() + subscription.options.health_check_value();
            if !answers(&subscription, &mut connection).await {
                tracing::warn!("a Redis Cluster node stopped answering; connecting anew");
                subscription.reopen().await;
                continue;
            }
        }
        let mut failed = false;
        let leaving = std::mem::take(&mut *subscription.leaving.lock().expect("leaving lock"));
        for channel in leaving {
            let listened = subscription.listeners.has(&channel);
            if listened || failed {
                if failed {
                    subscription
                        .leaving
                        .lock()
                        .expect("leaving lock")
                        .push(channel);
                }
                continue;
            }
            let pair = [channel.clone(), subscription.sync_channel(&channel)];
            let left = runtime::timeout(
                subscription.options.response_timeout_value(),
                connection.sunsubscribe(&pair),
            )
            .await;
            if !matches!(left, Some(Ok(()))) {
                failed = true;
                subscription
                    .leaving
                    .lock()
                    .expect("leaving lock")
                    .push(channel);
            }
        }
        let asking: Vec<String> = {
            let mut regaining = subscription.regaining.lock().expect("regaining lock");
            regaining
                .iter_mut()
                .filter(|(_, state)| !state.asked)
                .map(|(channel, state)| {
                    state.asked = true;
                    channel.clone()
                })
                .collect()
        };
        for channel in asking {
            let listened = subscription.listeners.has(&channel);
            // After a failure, the rest waits for the next round.
            let subscribed = if !listened {
                subscription
                    .regaining
                    .lock()
                    .expect("regaining lock")
                    .remove(&channel);
                continue;
            } else if failed {
                None
            } else {
                let pair = [channel.clone(), subscription.sync_channel(&channel)];
                runtime::timeout(
                    subscription.options.response_timeout_value(),
                    connection.ssubscribe(&pair),
                )
                .await
            };
            if !matches!(subscribed, Some(Ok(()))) {
                failed = true;
                if let Some(state) = subscription
                    .regaining
                    .lock()
                    .expect("regaining lock")
                    .get_mut(&channel)
                {
                    state.asked = false;
                }
            }
        }
        if failed {
            tracing::warn!("subscribing to sharded channels again failed; retrying");
            if subscription.shutdown.unless(backoff.wait()).await.is_none() {
                return;
            }
            continue;
        }
        backoff.reset();
        let wait = next_ping.saturating_duration_since(std::time::Instant::now());
        let woken = futures_lite::future::or(
            async {
                listener.await;
            },
            runtime::sleep(wait),
        );
        if subscription.shutdown.unless(woken).await.is_none() {
            return;
        }
    }
}

/// Whether every node answers a `PING` within the response timeout. A node refusing
/// connections (it died, and said so) is not this check's business: the drop was pushed.
async fn answers(subscription: &ShardedSubscription, connection: &mut ClusterConnection) -> bool {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
    let ping = connection.route_command(
        redis::cmd("PING"),
        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None)),
    );
    match runtime::timeout(subscription.options.response_timeout_value(), ping).await {
        None => false,
        Some(Ok(_)) => true,
        Some(Err(e)) => !e.is_timeout(),
    }
}
