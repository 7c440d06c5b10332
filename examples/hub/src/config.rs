//! The hub's settings: command-line flags, each also readable from an environment
//! variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use storecast::Overflow;

/// storecast hub: publish messages over HTTP; subscribe over Server-Sent Events or
/// WebSocket. Topics are created on first use and live in memory, or on Redis (--redis).
///
/// Endpoints:
///   POST /publish/{topic}[?event=TYPE]   body = the message (UTF-8); answers {"topic","id"}
///   GET  /events/{topic}                 SSE; resumes after Last-Event-ID (or ?lastEventId=)
///   GET  /ws/{topic}                     WebSocket; frames {"data": ..., "id": ...}
///   GET  /                               a page that shows a topic live and publishes to it
///   GET  /healthz, GET /metrics          health, and Prometheus metrics
///
/// Tokens are sent as `Authorization: Bearer TOKEN`, or `?token=TOKEN` where a client
/// cannot set headers (a browser's EventSource).
#[derive(Debug, Clone, Parser)]
#[command(name = "storecast-hub", version, verbatim_doc_comment)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "STORECAST_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// Topics that hold the latest value instead of a queue: exact names, or prefixes
    /// ending in `*` (`prices.*`). Repeat the flag or separate with commas.
    #[arg(long = "latest", env = "STORECAST_LATEST", value_delimiter = ',')]
    pub latest: Vec<String>,

    /// How many messages each queue topic retains (for slow subscribers and resume).
    #[arg(long, env = "STORECAST_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,

    /// What a queue topic does with a subscriber a whole queue behind: tell it how many
    /// it missed and go on (drop-oldest), cut it off (disconnect), or hold publishers
    /// until it catches up (wait; one stalled client then slows everyone).
    #[arg(
        long,
        env = "STORECAST_OVERFLOW",
        value_enum,
        default_value = "drop-oldest"
    )]
    pub overflow: OverflowArg,

    /// Largest message body accepted, in bytes (larger ones get 413).
    #[arg(long, env = "STORECAST_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Most bytes of message bodies all topics together may retain (a queue topic its
    /// last --queue-capacity messages, a latest-value topic its value). A publish that would
    /// go past it is refused with 507; one to a full topic pushes its oldest message out, so
    /// it needs only the difference.
    #[arg(long, env = "STORECAST_MAX_RETAINED_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_retained_bytes: u64,

    /// Most topics that may exist (publishing to a new one beyond that gets 503).
    #[arg(long, env = "STORECAST_MAX_TOPICS", default_value_t = 10_000)]
    pub max_topics: usize,

    /// Most SSE and WebSocket subscribers at once (more get 503).
    #[arg(long, env = "STORECAST_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Token required to publish (none: anyone may publish).
    #[arg(long, env = "STORECAST_PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,

    /// Token required to subscribe (none: anyone may subscribe).
    #[arg(long, env = "STORECAST_SUBSCRIBE_TOKEN", hide_env_values = true)]
    pub subscribe_token: Option<String>,

    /// Token required to read /metrics (none: anyone may). Prefer the environment
    /// variable for tokens: flags are visible in `ps`.
    #[arg(long, env = "STORECAST_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Seconds a topic with no subscriber and no publish is kept; then it is removed with
    /// what it retains (on Redis, the stream stays; only this hub lets go of it).
    #[arg(long, env = "STORECAST_TOPIC_IDLE_SECS", default_value_t = 300)]
    pub topic_idle_secs: u64,

    /// Origins allowed to call the hub from a browser page (CORS); `*` allows any. With
    /// origins given, a publish or a WebSocket upgrade from any other origin gets 403.
    /// Repeat the flag or separate with commas.
    #[arg(
        long = "cors-origin",
        env = "STORECAST_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Seconds between keep-alives on idle SSE streams and pings on WebSockets.
    #[arg(long, env = "STORECAST_KEEP_ALIVE_SECS", default_value_t = 15)]
    pub keep_alive_secs: u64,

    /// Seconds a client has to send a complete request head, counted from the connection's
    /// opening or the end of its previous response: slow clients, and idle keep-alive
    /// connections, are closed after it.
    #[arg(long, env = "STORECAST_HEAD_TIMEOUT_SECS", default_value_t = 10)]
    pub head_timeout_secs: u64,

    /// Seconds a client has to send a request body (a publish) once its head arrived
    /// (slower ones get 408).
    #[arg(long, env = "STORECAST_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub body_timeout_secs: u64,

    /// Seconds a connection may accept no byte before it is dropped: a subscriber that
    /// stopped reading (SSE or WebSocket) goes, and nobody waits on it longer.
    #[arg(long, env = "STORECAST_WRITE_TIMEOUT_SECS", default_value_t = 30)]
    pub write_timeout_secs: u64,

    /// Seconds after SIGTERM or SIGINT before connections that are still open are
    /// dropped and the hub exits (streams are ended properly first).
    #[arg(long, env = "STORECAST_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,

    /// Serve SSE and WebSocket subscriptions through hyper, as every other request,
    /// instead of directly on the socket (which holds an idle subscriber in far less
    /// memory).
    #[arg(long, env = "STORECAST_NO_DIRECT")]
    pub no_direct: bool,

    /// Milliseconds an SSE client should wait before reconnecting (the `retry` field).
    #[arg(long, env = "STORECAST_RETRY_MS")]
    pub retry_ms: Option<u64>,

    /// Put every topic on this Redis server (`redis://[:password@]host:port[/db]`, or
    /// `rediss://` for TLS), on the primary that Sentinel names
    /// (`redis+sentinel://host:port[,host:port...]/service[/db]`), or on a Redis Cluster
    /// (`redis+cluster://host:port[,host:port...]`), so that
    /// several hubs share topics and other programs can publish: latest-value topics on
    /// the channel `<prefix><topic>`, queue topics on the stream `<prefix><topic>`.
    #[arg(long, env = "STORECAST_REDIS", hide_env_values = true)]
    pub redis: Option<String>,

    /// PEM file of the CA to trust for a `rediss://` (TLS) Redis, instead of the system's
    /// trust store.
    #[arg(long, env = "STORECAST_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Prefix of the Redis channel and stream names of topics: the hub's clients reach no
    /// other key (`""` for none).
    #[arg(long, env = "STORECAST_REDIS_PREFIX", default_value = "storecast:")]
    pub redis_prefix: String,

    /// How many entries each queue topic's Redis stream keeps (about; `MAXLEN ~`): how far
    /// back a client can resume, on any hub.
    #[arg(long, env = "STORECAST_REDIS_STREAM_LENGTH", default_value_t = 10_000)]
    pub redis_stream_length: usize,
}

/// The `--overflow` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OverflowArg {
    /// Tell the laggard how many it missed, then go on.
    DropOldest,
    /// Cut the laggard off with a `fell-behind` event.
    Disconnect,
    /// Hold publishers until the slowest subscriber catches up (lossless).
    Wait,
}

impl From<OverflowArg> for Overflow {
    fn from(arg: OverflowArg) -> Self {
        match arg {
            OverflowArg::DropOldest => Overflow::DropOldest,
            OverflowArg::Disconnect => Overflow::Disconnect,
            OverflowArg::Wait => Overflow::Wait,
        }
    }
}

impl Config {
    /// Whether `topic` is a latest-value topic.
    pub fn is_latest(&self, topic: &str) -> bool {
        self.latest
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => topic == pattern,
            })
    }

    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs.max(1))
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs.max(1))
    }

    pub fn timeouts(&self) -> crate::server::Timeouts {
        crate::server::Timeouts {
            head: Duration::from_secs(self.head_timeout_secs.max(1)),
            write: Duration::from_secs(self.write_timeout_secs.max(1)),
            shutdown: Duration::from_secs(self.shutdown_timeout_secs),
        }
    }
}
