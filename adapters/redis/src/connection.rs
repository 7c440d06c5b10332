//! One Redis server, its connection settings, and what goes wrong connecting to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, ProtocolVersion, RedisError};

use crate::endpoint::{Commands, Deployment, Endpoint};
use crate::sharded::ShardedSubscription;

use crate::runtime;
use crate::subscription::{Listener, Subscription};
use crate::tail::Tails;

/// How the stores connect to Redis and how hard they try when it goes away.
///
/// The URL is the `redis` crate's: `redis://[user:password@]host[:port][/db]`,
/// `rediss://` for TLS (feature `tls`; the system's trust store unless
/// `root_certificate` says otherwise), `unix:///path`; a Redis Cluster is
/// `redis+cluster://[user:password@]host:port[,host:port...]` (any of its nodes), and a
/// primary watched by Sentinel `redis+sentinel://[user:password@]host:port[,...]/service[/db]`
/// (the sentinels, and the name they watch it under; the credentials are the primary's).
/// TLS is for one server only so far. Connections speak RESP3 (Redis 6
/// or later), so a connection the server closed is noticed when it closes, not by the
/// next command; `?protocol=resp2` in the URL keeps the older protocol (and a server
/// that does not know RESP3 is spoken to in RESP2). An application that builds its own
/// [`redis::ConnectionInfo`] passes it with
/// [`from_connection_info`](Options::from_connection_info).
#[derive(Clone)]
pub struct Options {
    target: Target,
    /// PEM certificates to trust instead of the system's (TLS only).
    root_certificate: Option<Vec<u8>>,
    /// PEM certificate and key to present to the server (TLS only).
    client_certificate: Option<(Vec<u8>, Vec<u8>)>,
    connect_timeout: Duration,
    response_timeout: Duration,
    health_check: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    stream_readers: usize,
}

/// Where the server is.
#[derive(Clone)]
enum Target {
    /// A URL, in RESP3 unless it says which protocol.
    Url(String),
    /// Connection settings the application built, used as they are.
    Info(Box<redis::ConnectionInfo>),
}

impl Options {
    /// Defaults for the server at `url`: 5 s to connect, 5 s for an answer, a health check
    /// of idle subscriptions every 5 s, reconnection delays doubling from 100 ms to 5 s.
    pub fn new(url: impl Into<String>) -> Self {
        Options::with_target(Target::Url(url.into()))
    }

    /// Defaults (as [`new`](Options::new)) for a server described by `info`, which is
    /// used as it is: its address, credentials, database and protocol (choose
    /// [`redis::ProtocolVersion::RESP3`] there for what RESP3 brings).
    ///
    /// ```
    /// use redis::{IntoConnectionInfo, ProtocolVersion};
    /// use storecast_redis::Options;
    ///
    /// let info = "redis://127.0.0.1:6379".into_connection_info().unwrap();
    /// let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    /// let options = Options::from_connection_info(info.set_redis_settings(settings));
    /// # drop(options);
    /// ```
    pub fn from_connection_info(info: redis::ConnectionInfo) -> Self {
        Options::with_target(Target::Info(Box::new(info)))
    }

    fn with_target(target: Target) -> Self {
        Options {
            target,
            root_certificate: None,
            client_certificate: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            health_check: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            stream_readers: 2,
        }
    }

    /// How many connections read the queue stores' streams (default 2, at least 1). Each
    /// waits in one `XREAD BLOCK` over the streams that hash to it, however many there
    /// are; it is opened with the first queue store and closed a health-check interval
    /// after the last one goes.
    pub fn stream_readers(mut self, readers: usize) -> Self {
        self.stream_readers = readers.max(1);
        self
    }

    /// How long to wait for a connection to open before giving up on this attempt.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the answer to a command before calling the connection lost.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How often a subscription pings the server (on a Cluster, every node), so that a
    /// connection that died silently is noticed (and replaced) within about this long;
    /// also how long a queue's reader blocks in one `XREAD`, and on a Cluster how soon a
    /// caught-up queue looks for entries other programs added with a plain `XADD`. At
    /// least 10 ms.
    pub fn health_check(mut self, interval: Duration) -> Self {
        self.health_check = interval.max(Duration::from_millis(10));
        self
    }

    /// The shortest (at least 1 ms) and longest delay between reconnection attempts; each
    /// failed attempt doubles the delay.
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min.max(Duration::from_millis(1));
        self.reconnect_max = max.max(self.reconnect_min);
        self
    }

    /// Trusts the CA certificate(s) in `pem` for `rediss://` connections, instead of the
    /// system's trust store (for a server with a private CA).
    #[cfg(feature = "tls")]
    pub fn root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificate = Some(pem.into());
        self
    }

    /// Presents this certificate and key (PEM) to a server that asks for one (mutual TLS).
    #[cfg(feature = "tls")]
    pub fn client_certificate(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_certificate = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// The connection settings: the URL's, in RESP3 unless it names a protocol (or
    /// `resp2` is asked for, for a server that does not know RESP3).
    fn connection_info(&self, resp2: bool) -> Result<redis::ConnectionInfo, RedisError> {
        let url = match &self.target {
            Target::Info(info) => return Ok((**info).clone()),
            Target::Url(url) => url,
        };
        let info = url.as_str().into_connection_info()?;
        if resp2 || url.contains("protocol=") {
            return Ok(info);
        }
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        Ok(info.set_redis_settings(settings))
    }

    /// The client for these options: the address and protocol, and the certificates if any.
    fn client(&self, resp2: bool) -> Result<Client, RedisError> {
        let info = self.connection_info(resp2)?;
        #[cfg(feature = "tls")]
        {
            // rustls needs a process-wide crypto provider; another may be installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
            if self.root_certificate.is_some() || self.client_certificate.is_some() {
                let certificates = redis::TlsCertificates {
                    client_tls: self
                        .client_certificate
                        .clone()
                        .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                            client_cert,
                            client_key,
                        }),
                    root_cert: self.root_certificate.clone(),
                };
                return Client::build_with_tls(info, certificates);
            }
        }
        Client::open(info)
    }

    pub(crate) fn backoff(&self) -> runtime::Backoff {
        runtime::Backoff::new(self.reconnect_min, self.reconnect_max)
    }

    pub(crate) fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    pub(crate) fn response_timeout_value(&self) -> Duration {
        self.response_timeout
    }

    pub(crate) fn health_check_value(&self) -> Duration {
        self.health_check
    }
}

/// Shows where, never the URL's password or the certificates.
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let address = match &self.target {
            Target::Url(url) => match crate::endpoint::deployment(url) {
                Ok(Deployment::Cluster(nodes)) => format!(
                    "cluster of {}",
                    nodes
                        .iter()
                        .map(|node| node.addr().to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Ok(Deployment::Sentinel { service, .. }) => format!("{service} (by Sentinel)"),
                _ => self
                    .connection_info(true)
                    .map(|info| info.addr().to_string())
                    .unwrap_or_else(|_| "(invalid URL)".into()),
            },
            Target::Info(info) => info.addr().to_string(),
        };
        f.debug_struct("Options")
            .field("address", &address)
            .field("custom_root_certificate", &self.root_certificate.is_some())
            .field("client_certificate", &self.client_certificate.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("health_check", &self.health_check)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("stream_readers", &self.stream_readers)
            .finish()
    }
}

/// Why a store (or a [`Redis`] handle) could not be made: Tornadose's `ConnectionError`,
/// with the reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(#[source] RedisError),
    /// The server could not be reached, refused the connection or the credentials.
    #[error("cannot connect to Redis at {address}: {source}")]
    Unreachable {
        /// Where the server was expected (without credentials).
        address: String,
        /// What the connection attempt ran into.
        #[source]
        source: RedisError,
    },
    /// The server did not answer within the connect timeout.
    #[error("Redis at {address} did not answer within {timeout:?}")]
    Timeout {
        /// Where the server was expected (without credentials).
        address: String,
        /// The connect timeout that ran out.
        timeout: Duration,
    },
    /// The server answered but cannot host this store (for a stream queue: a Redis older
    /// than 7.0, or a key of another type under the stream's name).
    #[error("Redis at {address} cannot host this store: {source}")]
    Unsupported {
        /// Where the server is.
        address: String,
        /// The server's refusal.
        #[source]
        source: RedisError,
    },
}

/// A Redis server, and the connections the stores made from this handle share.
///
/// One command connection serves every store made from the same handle, and one
/// subscription connection every store, whatever their channels; a few shared readers
/// ([`Options::stream_readers`]) watch the queue stores' streams. On a Redis Cluster the
/// command connection and the subscription hold one connection per node (and there are
/// no stream readers). Connections reconnect on their own; behind Sentinel they go to
/// the primary the sentinels name at the time.
///
/// ```no_run
/// # async fn run() -> Result<(), storecast_redis::ConnectError> {
/// use storecast_redis::Redis;
///
/// // Any nodes of a Redis Cluster (the others are found), or the sentinels of a primary.
/// let cluster = Redis::connect("redis+cluster://10.0.0.1:7000,10.0.0.2:7000").await?;
/// let watched = Redis::connect("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/orders").await?;
/// # Ok(()) }
/// ```
///
/// ```no_run
/// # async fn run() -> Result<(), storecast_redis::ConnectError> {
/// use storecast_redis::{QueueOptions, Redis};
///
/// let redis = Redis::connect("redis://127.0.0.1:6379").await?;
/// let prices = redis.data_store::<String>("prices").await?;
/// let orders = redis.queue_store::<String>("orders", QueueOptions::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where connections go.
    endpoint: Arc<Endpoint>,
    /// The shared command connection; replaced when it stops answering (see `failed`).
    commands: Mutex<Commands>,
    /// Set while a replacement for `commands` is being opened.
    replacing: AtomicBool,
    options: Options,
    /// The server's address for messages: never the URL, which may hold a password.
    address: String,
    /// The one subscription the stores share.
    subscription: Subscriptions,
    /// The connections that read the queue stores' streams.
    tails: Tails,
}

/// The shared subscription: one connection to one server, or sharded channels on a
/// Cluster (one connection per node).
enum Subscriptions {
    Single(Arc<Subscription>),
    Sharded(Arc<ShardedSubscription>),
}

impl Drop for Inner {
    fn drop(&mut self) {
        match &self.subscription {
            Subscriptions::Single(subscription) => {
                subscription.shutdown.trigger();
            }
            Subscriptions::Sharded(subscription) => {
                subscription.shutdown.trigger();
            }
        }
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("address", &self.inner.address)
            .finish_non_exhaustive()
    }
}

/// Whether a command's error means its connection must be replaced: it stopped answering
/// (a response timeout; the `redis` crate reconnects only when the socket reports it
/// closed, which a half-open connection never does), or a failover left it on a replica.
pub(crate) fn needs_new_connection(error: &RedisError) -> bool {
    error.is_timeout() || error.code() == Some("READONLY")
}

impl Redis {
    /// Connects to the server at `url` with default [`Options`]; an unreachable server is
    /// an error here, not later.
    pub async fn connect(url: &str) -> Result<Redis, ConnectError> {
        Redis::connect_with(Options::new(url)).await
    }

    /// Connects with `options`, and checks the server answers a `PING`.
    ///
    /// Besides one server's URL, `options` may name a Redis Cluster
    /// (`redis+cluster://[user:password@]host:port[,host:port...]`: any of its nodes; the
    /// others are found) or a primary watched by Sentinel
    /// (`redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`: the
    /// sentinels' addresses, and the name they watch the primary under; the credentials
    /// are the primary's).
    pub async fn connect_with(options: Options) -> Result<Redis, ConnectError> {
        let deployment = match &options.target {
            Target::Url(url) => {
                crate::endpoint::deployment(url).map_err(ConnectError::InvalidUrl)?
            }
            Target::Info(_) => Deployment::Single,
        };
        let (endpoint, mut commands) = match deployment {
            Deployment::Single => {
                let client = options.client(false).map_err(ConnectError::InvalidUrl)?;
                let address = client.get_connection_info().addr().to_string();
                let (client, commands) =
                    match open_manager(&client, &options, &address, Duration::ZERO).await {
                        Err(ConnectError::Unreachable { source, .. })
                            if knows_no_resp3(&source) =>
                        {
                            // A server older than Redis 6 (or one that refuses HELLO): RESP2.
                            let client = options.client(true).map_err(ConnectError::InvalidUrl)?;
                            let commands =
                                open_manager(&client, &options, &address, Duration::ZERO).await?;
                            (client, commands)
                        }
                        opened => (client, opened?),
                    };
                (Endpoint::Single(client), Commands::Single(commands))
            }
            Deployment::Sentinel {
                sentinels,
                service,
                node,
            } => {
                let address = format!("the primary of {service} (by Sentinel)");
                let found = runtime::timeout(
                    options.connect_timeout,
                    runtime::erased(Endpoint::sentinel(sentinels, &service, node)),
                )
                .await;
                let endpoint = match found {
                    None => {
                        return Err(ConnectError::Timeout {
                            address,
                            timeout: options.connect_timeout,
                        });
                    }
                    Some(Err(source)) => return Err(ConnectError::Unreachable { address, source }),
                    Some(Ok(endpoint)) => endpoint,
                };
                let client =
                    endpoint
                        .client(false)
                        .await
                        .map_err(|source| ConnectError::Unreachable {
                            address: address.clone(),
                            source,
                        })?;
                let commands = open_manager(&client, &options, &address, Duration::ZERO).await?;
                (endpoint, Commands::Single(commands))
            }
            Deployment::Cluster(nodes) => {
                let address = "the Redis Cluster".to_owned();
                let client =
                    cluster_client(nodes.clone(), &options).map_err(ConnectError::InvalidUrl)?;
                let connected = runtime::timeout(
                    options.connect_timeout,
                    runtime::erased(client.get_async_connection()),
                )
                .await;
                let commands = match connected {
                    None => {
                        return Err(ConnectError::Timeout {
                            address,
                            timeout: options.connect_timeout,
                        });
                    }
                    Some(Err(source)) => return Err(ConnectError::Unreachable { address, source }),
                    Some(Ok(connection)) => connection,
                };
                (Endpoint::Cluster(nodes), Commands::Cluster(commands))
            }
        };
        let address = endpoint.address();
        let pong: Result<String, RedisError> = redis::cmd("PING").query_async(&mut commands).await;
        if let Err(source) = pong {
            return Err(ConnectError::Unreachable { address, source });
        }
        let endpoint = Arc::new(endpoint);
        let subscription = match &*endpoint {
            Endpoint::Cluster(nodes) => {
                Subscriptions::Sharded(Arc::new(ShardedSubscription::new(nodes.clone(), &options)))
            }
            _ => {
                Subscriptions::Single(Arc::new(Subscription::new(Arc::clone(&endpoint), &options)))
            }
        };
        Ok(Redis {
            inner: Arc::new(Inner {
                subscription,
                tails: Tails::new(options.stream_readers),
                endpoint,
                commands: Mutex::new(commands),
                replacing: AtomicBool::new(false),
                options,
                address,
            }),
        })
    }

    /// The server's address (host and port, never the credentials); behind Sentinel, the
    /// primary's when the handle connected.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The options these stores were made with.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The readers of the queue stores' streams.
    pub(crate) fn tails(&self) -> &Tails {
        &self.inner.tails
    }

    /// How many connections this handle has open to Redis now: the command connection,
    /// the subscription (while any latest-value store listens) and the stream readers
    /// (while any queue store reads). However many stores there are, at most
    /// [`Options::stream_readers`] + 2.
    ///
    /// On a Redis Cluster, the command connection and the subscription each hold one
    /// connection per node (and no stream readers), so this counts per node.
    pub fn connections(&self) -> usize {
        let subscribed = match &self.inner.subscription {
            Subscriptions::Single(subscription) => subscription.is_open(),
            Subscriptions::Sharded(subscription) => subscription.is_open(),
        };
        1 + usize::from(subscribed) + self.inner.tails.open_readers()
    }

    /// Whether this handle is on a Redis Cluster: names derived from a channel or stream
    /// carry a hash tag, channels are sharded, and streams have no shared readers.
    pub fn is_cluster(&self) -> bool {
        self.inner.endpoint.is_cluster()
    }

    /// A key or channel named `base` + `suffix`, in `base`'s hash slot on a Cluster
    /// (`{base}` + `suffix`, unless `base` has a hash tag of its own); on one server,
    /// just `base` + `suffix`.
    pub(crate) fn derived(&self, base: &str, suffix: &str) -> Result<String, ConnectError> {
        if !self.is_cluster() {
            return Ok(format!("{base}{suffix}"));
        }
        crate::endpoint::same_slot(base, suffix).ok_or_else(|| {
            self.unsupported(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "on a Redis Cluster, a name with braces must hold a hash tag ({tag})",
                base.to_owned(),
            )))
        })
    }

    /// On a Cluster: an error unless `key` is in the hash slot of the channel `channel`.
    pub(crate) async fn check_same_slot(
        &self,
        channel: &str,
        key: &str,
    ) -> Result<(), ConnectError> {
        let mut commands = self.commands();
        let slots: Result<(i64, i64), RedisError> = redis::pipe()
            .cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(channel)
            .cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut commands)
            .await;
        let (of_channel, of_key) = slots.map_err(|e| self.unreachable(e))?;
        if of_channel == of_key {
            return Ok(());
        }
        Err(self.unsupported(RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "on a Redis Cluster the latest-value key must be in its channel's hash slot (give both one hash tag)",
            format!("{channel} is in slot {of_channel}, {key} in {of_key}"),
        ))))
    }

    /// The shared command connection; cloning it is cheap.
    pub(crate) fn commands(&self) -> Commands {
        self.inner.commands.lock().expect("commands lock").clone()
    }

    /// Takes note of an error from the shared command connection: if the connection must
    /// be replaced, a new one is opened in the background and used from then on.
    ///
    /// Behind Sentinel, a connection that fails to reach the server is replaced too, with
    /// one to the primary the sentinels name now (after a failover, the old address may
    /// never answer again). A Cluster connection follows the cluster on its own.
    pub(crate) fn failed(&self, error: &RedisError) {
        let endpoint = &self.inner.endpoint;
        let replace = match **endpoint {
            // The crate follows moved slots and dropped connections, but not a node that
            // stopped answering (a host gone): a new connection learns the slots anew.
            Endpoint::Cluster(_) => error.is_timeout(),
            Endpoint::Single(_) => needs_new_connection(error),
            Endpoint::Sentinel { .. } => {
                needs_new_connection(error)
                    || error.is_io_error()
                    || error.is_connection_refusal()
                    || error.is_connection_dropped()
            }
        };
        if !replace || self.inner.replacing.swap(true, Ordering::AcqRel) {
            return;
        }
        let redis = self.clone();
        runtime::spawn(async move {
            let inner = &redis.inner;
            if let Endpoint::Cluster(nodes) = &*inner.endpoint {
                // From the nodes that answer now: the crate would wait on one that does not.
                let connected = runtime::timeout(inner.options.connect_timeout * 2, async {
                    let answering = answering_nodes(nodes, &inner.options).await;
                    let client = cluster_client(answering, &inner.options)?;
                    runtime::erased(client.get_async_connection()).await
                })
                .await;
                match connected {
                    Some(Ok(fresh)) => {
                        *inner.commands.lock().expect("commands lock") = Commands::Cluster(fresh);
                        tracing::info!(
                            "replaced a Redis Cluster connection that stopped answering"
                        );
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "could not replace the Redis Cluster connection; will try again")
                    }
                    None => tracing::warn!(
                        "could not replace the Redis Cluster connection in time; will try again"
                    ),
                }
                inner.replacing.store(false, Ordering::Release);
                return;
            }
            let opened = match inner.endpoint.client(inner.endpoint.is_sentinel()).await {
                Ok(client) => {
                    open_manager(&client, &inner.options, &inner.address, Duration::ZERO).await
                }
                Err(source) => Err(ConnectError::Unreachable {
                    address: inner.address.clone(),
                    source,
                }),
            };
            match opened {
                Ok(fresh) => {
                    *inner.commands.lock().expect("commands lock") = Commands::Single(fresh);
                    tracing::info!(redis = %inner.address, "replaced a command connection that stopped answering");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not replace the command connection; will try again")
                }
            }
            inner.replacing.store(false, Ordering::Release);
        });
    }

    /// A connection of its own, for commands that block (`XREAD BLOCK`). It reconnects on
    /// its own; its answers may take up to `block` longer than the response timeout.
    /// `dropped` is called when the connection drops (it reconnects on its own, with a
    /// new client id), even if no command was under way.
    pub(crate) async fn dedicated(
        &self,
        block: Duration,
        dropped: impl Fn() + Send + Sync + 'static,
    ) -> Result<ConnectionManager, ConnectError> {
        let inner = &self.inner;
        let client = inner
            .endpoint
            .client(inner.endpoint.is_sentinel())
            .await
            .map_err(|e| self.unreachable(e))?;
        let config = manager_config(&inner.options, block).set_push_sender(
            move |push: redis::PushInfo| -> Result<(), ()> {
                if push.kind == redis::PushKind::Disconnection {
                    dropped();
                }
                Ok(())
            },
        );
        open_with(&client, &inner.options, &inner.address, config).await
    }

    /// Delivers `channel`'s messages to `listener` over the shared subscription; returns
    /// once Redis has confirmed it.
    pub(crate) async fn listen(
        &self,
        channel: &str,
        listener: Weak<dyn Listener>,
    ) -> Result<(), ConnectError> {
        // Boxed: what the stores' futures hold stays shallow (the crate's are deep).
        let added = match &self.inner.subscription {
            Subscriptions::Single(subscription) => {
                runtime::erased(subscription.add(channel, listener)).await
            }
            Subscriptions::Sharded(subscription) => {
                runtime::erased(subscription.add(channel, listener)).await
            }
        };
        added.map_err(|e| self.unreachable(e))
    }

    /// Has the subscription deliver `key`'s value to `channel`'s listeners in its place
    /// among the channel's messages (see `Subscription::sync`).
    pub(crate) async fn sync(
        &self,
        commands: &mut Commands,
        channel: &str,
        key: &str,
        tag: u64,
    ) -> Result<i64, RedisError> {
        match &self.inner.subscription {
            Subscriptions::Single(subscription) => {
                subscription.sync(commands, channel, key, tag).await
            }
            Subscriptions::Sharded(subscription) => {
                subscription.sync(commands, channel, key, tag).await
            }
        }
    }

    /// Stops delivering `channel`'s messages to `listener`.
    pub(crate) fn stop_listening(&self, channel: &str, listener: &Weak<dyn Listener>) {
        match &self.inner.subscription {
            Subscriptions::Single(subscription) => subscription.remove(channel, listener),
            Subscriptions::Sharded(subscription) => subscription.remove(channel, listener),
        }
    }

    /// Why opening a store failed: Redis away or in a failover (worth trying again), or
    /// Redis refusing what the store needs.
    pub(crate) fn open_error(&self, source: RedisError) -> ConnectError {
        if source.kind() == redis::ErrorKind::Io || is_passing(&source) {
            self.unreachable(source)
        } else {
            self.unsupported(source)
        }
    }

    pub(crate) fn unreachable(&self, source: RedisError) -> ConnectError {
        ConnectError::Unreachable {
            address: self.inner.address.clone(),
            source,
        }
    }

    pub(crate) fn unsupported(&self, source: RedisError) -> ConnectError {
        ConnectError::Unsupported {
            address: self.inner.address.clone(),
            source,
        }
    }
}

/// A client for the Cluster reached through `nodes`. No retries inside the crate: a
/// command it sent again after a dropped connection could run twice (a queue entry added
/// twice), and its last error would hide that the first may have run. The stores retry
/// where that is safe; a redirection still updates the slot map.
pub(crate) fn cluster_client(
    nodes: Vec<redis::ConnectionInfo>,
    options: &Options,
) -> Result<redis::cluster::ClusterClient, RedisError> {
    redis::cluster::ClusterClientBuilder::new(nodes)
        .use_protocol(ProtocolVersion::RESP3)
        .connection_timeout(options.connect_timeout)
        .response_timeout(options.response_timeout)
        .retries(0)
        .build()
}

/// Those of `nodes` that answer a `PING` within the response timeout, asked one after
/// another (all of them if none does, to fail with the crate's own error).
pub(crate) async fn answering_nodes(
    nodes: &[redis::ConnectionInfo],
    options: &Options,
) -> Vec<redis::ConnectionInfo> {
    let mut answering = Vec::new();
    for node in nodes {
        let probe = async {
            let client = Client::open(node.clone())?;
            let mut connection = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        };
        if let Some(Ok(_)) =
            runtime::timeout(options.response_timeout, runtime::erased(probe)).await
        {
            answering.push(node.clone());
        }
    }
    if answering.is_empty() {
        nodes.to_vec()
    } else {
        answering
    }
}

/// Whether `error` is a failure of the connection: it dropped, was refused, or no answer
/// came in time.
pub(crate) fn is_connection_failure(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
}

/// Whether `error` is one of the way rather than the server's refusal of the command: the
/// connection failed, or the server is passing through a state (loading, busy with a
/// script, failing over) in which it runs nothing.
pub(crate) fn is_transient(error: &RedisError) -> bool {
    is_connection_failure(error)
        || is_passing(error)
        || matches!(error.code(), Some("LOADING" | "BUSY"))
}

/// Whether `error` is a Cluster's passing state: a slot moved or moving, the cluster or a
/// shard down during a failover, or no connection to a slot's node yet. The command did
/// not run; it may be sent again.
pub(crate) fn is_passing(error: &RedisError) -> bool {
    error.is_cluster_error()
        || matches!(error.code(), Some("MASTERDOWN" | "READONLY"))
        || error.kind() == redis::ErrorKind::ClusterConnectionNotFound
}

/// Whether a connection attempt failed because the server does not speak RESP3.
fn knows_no_resp3(error: &RedisError) -> bool {
    let text = error.to_string();
    text.contains("HELLO") || text.contains("RESP3") || text.contains("unknown command")
}

/// Opens a command connection that reconnects on its own; its answers may take `extra`
/// longer than the response timeout (for blocking commands).
async fn open_manager(
    client: &Client,
    options: &Options,
    address: &str,
    extra: Duration,
) -> Result<ConnectionManager, ConnectError> {
    open_with(client, options, address, manager_config(options, extra)).await
}

/// The settings of a connection whose answers may take `extra` longer than the response
/// timeout.
fn manager_config(options: &Options, extra: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.response_timeout + extra))
        .set_min_delay(options.reconnect_min)
        .set_max_delay(options.reconnect_max)
        .set_number_of_retries(1)
}

async fn open_with(
    client: &Client,
    options: &Options,
    address: &str,
    config: ConnectionManagerConfig,
) -> Result<ConnectionManager, ConnectError> {
    let opened = runtime::timeout(
        options.connect_timeout,
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await;
    match opened {
        None => Err(ConnectError::Timeout {
            address: address.to_owned(),
            timeout: options.connect_timeout,
        }),
        Some(Err(source)) => Err(ConnectError::Unreachable {
            address: address.to_owned(),
            source,
        }),
        Some(Ok(connection)) => Ok(connection),
    }
}
