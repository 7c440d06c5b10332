//! storecast-hub: publish over HTTP, subscribe over Server-Sent Events and WebSocket.
//!
//! ```text
//! cargo run --release -p storecast-hub            # http://127.0.0.1:8000
//! curl -d 'hello' http://127.0.0.1:8000/publish/demo
//! curl -N http://127.0.0.1:8000/events/demo
//! ```

mod config;
mod direct;
mod metrics;
mod routes;
mod server;
mod stats;
mod topics;

use std::sync::Arc;

use clap::Parser;
use storecast_redis::{Options, Redis};
use tracing_subscriber::EnvFilter;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::routes::Hub;
use crate::stats::Snapshots;
use crate::topics::Topics;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let open_files = server::raise_open_files_limit();
    // Every socket takes a descriptor: keep some for Redis, logs and the listener, refuse
    // connections (503) well before descriptors run out, and keep a tenth of the sockets
    // for publishers and other requests.
    let max_sockets = open_files.map_or(usize::MAX, |limit| {
        usize::try_from(limit.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX)
    });
    let subscribers_fit = max_sockets - max_sockets / 10;
    if config.max_connections > subscribers_fit {
        config.max_connections = subscribers_fit;
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("storecast-hub: cannot listen on {}: {e}", config.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let address = listener.local_addr().expect("a bound address");
    let redis = match &config.redis {
        None => None,
        Some(url) => match connect_redis(url, config.redis_ca_file.as_deref()).await {
            Ok(redis) => {
                tracing::info!(redis = redis.address(), "topics live on Redis");
                Some(redis)
            }
            Err(e) => {
                eprintln!("storecast-hub: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(Hub {
        topics: Topics::new(config.clone(), Arc::clone(&metrics), redis),
        config,
        metrics,
        stats: Snapshots::default(),
    });
    // Printed on stdout (logs go to stderr) so that scripts and tests can find the port.
    println!("listening on http://{address}");
    tracing::info!(%address, "storecast hub started; open http://{address}/ in a browser");

    tracing::info!(
        open_files = open_files.map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
        max_sockets,
        max_subscribers = hub.config.max_connections,
        "connection limits (raise the hard open-file limit, ulimit -Hn, for more)"
    );
    // Topics nobody uses go, with what they retain.
    let sweeping = Arc::clone(&hub);
    tokio::spawn(async move {
        let every =
            std::time::Duration::from_secs((sweeping.config.topic_idle_secs / 4).clamp(1, 30));
        loop {
            tokio::time::sleep(every).await;
            let removed = sweeping.topics.remove_idle();
            if removed > 0 {
                tracing::debug!(removed, "idle topics removed");
            }
        }
    });
    // One snapshot a second for every `/stats` stream, taken only while one listens.
    let snapshots = Arc::clone(&hub);
    tokio::spawn(async move {
        let hub = &*snapshots;
        hub.stats
            .run(&hub.topics, &hub.metrics, routes::TOPIC_SERIES)
            .await;
    });
    let app = routes::router(Arc::clone(&hub));
    let closing = Arc::clone(&hub);
    let direct = (!hub.config.no_direct).then(|| Arc::clone(&hub));
    server::serve(
        listener,
        app,
        direct,
        hub.config.timeouts(),
        Arc::clone(&hub.metrics),
        max_sockets,
        async {
            storecast_tokio::shutdown_signal().await;
            tracing::info!("shutting down: ending every stream");
        },
        // Subscribers get what is left, then their streams end, so connections close.
        move || {
            closing.topics.close_all();
            closing.stats.close();
        },
    )
    .await;
    tracing::info!("stopped");
    std::process::ExitCode::SUCCESS
}

/// Descriptors kept for other uses than client sockets (Redis connections, the listener,
/// logs).
const RESERVED_FILES: u64 = 64;

/// Connects to the hub's Redis, trusting `ca_file` for TLS if given.
async fn connect_redis(url: &str, ca_file: Option<&std::path::Path>) -> Result<Redis, String> {
    let mut options = Options::new(url);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read --redis-ca-file {}: {e}", path.display()))?;
        options = options.root_certificate(pem);
    }
    Redis::connect_with(options)
        .await
        .map_err(|e| e.to_string())
}
