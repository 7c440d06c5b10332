//! storecast stores whose transport is a Redis server: what other programs publish to
//! Redis reaches every subscriber, and several processes share one store.
//!
//! Two stores, the two semantics of [`storecast`]:
//!
//! - [`RedisStore`] — the latest value, over `PUBLISH`/`SUBSCRIBE` on a channel
//!   (Tornadose's `RedisStore`; the default channel is `tornadose`). Anyone can publish
//!   with `redis-cli PUBLISH tornadose hello`. At most once: a subscriber is told with
//!   [`RecvError::Interrupted`](storecast::RecvError::Interrupted) when the connection was
//!   lost and values may have been missed.
//! - [`RedisQueueStore`] — every message, in order, over a Redis stream (`XADD`, read in
//!   batches). Lossless across reconnects and restarts; a message's position is its ordinal
//!   in the stream, the same in every process, so an SSE client resumes with
//!   `Last-Event-ID` on any server.
//!
//! Each store listens once per process and fans out in memory through the core's stores.
//! The stores made from one [`Redis`] handle share its connections, however many stores
//! (topics) there are: one for commands, one subscription for the latest-value stores
//! whatever their channels, and a few (see [`Options::stream_readers`]) that read the
//! queue stores' streams, each blocked in one `XREAD` over many streams. An idle store
//! costs Redis no commands of its own. Connecting to an unreachable server is a
//! [`ConnectError`]; losing it later is not fatal: the stores reconnect with backoff.
//!
//! The same stores run on a Redis Cluster (`redis+cluster://host:port,...`: sharded
//! channels, each topic's keys in its slot by hash tags, one command connection and one
//! subscription per node, no stream readers) and on a primary watched by Sentinel
//! (`redis+sentinel://host:port,.../service`: the primary looked up again whenever a
//! connection is opened again). See [`Redis::connect_with`].
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `tokio` (default) | runs on Tokio |
//! | `smol` | runs on smol and async-std (whose tasks run on smol's building blocks) |
//! | `tls` | `rediss://` URLs, with rustls: the system's CAs or `Options::root_certificate`, and client certificates |
//!
//! With both runtimes enabled, a store opened inside a Tokio runtime uses Tokio, and
//! otherwise smol.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use futures_lite::StreamExt;
//! use storecast::Store;
//! use storecast_redis::{QueueOptions, Redis};
//!
//! let redis = Redis::connect("redis://127.0.0.1:6379").await?;
//! let latest = redis.data_store::<String>("tornadose").await?;
//! let queue = redis.queue_store::<String>("jobs", QueueOptions::default()).await?;
//!
//! let mut subscriber = latest.subscribe();
//! latest.try_submit("hello".to_string())?;
//! assert_eq!(*subscriber.next().await.unwrap()?, "hello");
//! queue.submit("job 1".to_string()).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod codec;
mod connection;
mod data_store;
mod endpoint;
mod queue_store;
mod runtime;
mod sharded;
mod shutdown;
mod subscription;
mod tail;

pub use codec::{Codec, DecodeError};
pub use connection::{ConnectError, Options, Redis};
pub use data_store::{DEFAULT_CHANNEL, RedisStore, RedisSubscriber};
pub use queue_store::{QueueOptions, RedisQueueStore, RedisQueueSubscriber};

impl Redis {
    /// Opens a [`RedisStore`] on `channel` (latest value in the key `<channel>:latest`).
    pub async fn data_store<T: Codec>(&self, channel: &str) -> Result<RedisStore<T>, ConnectError> {
        RedisStore::open(self, channel).await
    }

    /// Opens a [`RedisQueueStore`] on the stream `stream`.
    pub async fn queue_store<T: Codec>(
        &self,
        stream: &str,
        options: QueueOptions,
    ) -> Result<RedisQueueStore<T>, ConnectError> {
        RedisQueueStore::open(self, stream, options).await
    }
}
