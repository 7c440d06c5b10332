//! Tornadose's Redis demo: a page fed from the Redis channel `tornadose`, which any other
//! program can publish to. This program publishes the time every two seconds too.
//!
//! ```text
//! redis-server &                                     # apt-get install -y redis-server
//! cargo run -p storecast-tornadose-demos --bin redis-channel [-- REDIS_URL [LISTEN]]
//! open http://127.0.0.1:8004/
//! redis-cli PUBLISH tornadose 'hello from redis-cli'
//! ```
//!
//! Start two of them (`-- redis://127.0.0.1:6379 127.0.0.1:8005`): both pages show every
//! message, whoever published it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use storecast::Store;
use storecast_redis::RedisStore;
use storecast_tokio::{EventSource, every, shutdown_signal};

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>Redis channel</title>
<h1>The Redis channel <code>tornadose</code>, live</h1>
<p>Publish with <code>redis-cli PUBLISH tornadose 'hello'</code>.</p>
<p id="status">connecting…</p>
<ul id="messages"></ul>
<script>
  const source = new EventSource('/events');
  source.onopen = () => (document.getElementById('status').textContent = 'connected');
  source.addEventListener('interrupted', () =>
    (document.getElementById('status').textContent = 'Redis was away: messages may have been missed'));
  source.onmessage = (e) => {
    const li = document.createElement('li');
    li.textContent = e.data;
    document.getElementById('messages').prepend(li);
  };
</script>
"#;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8004".into());

    // Like Tornadose's RedisStore, an unreachable Redis is an error at once.
    let store: RedisStore<String> = match RedisStore::connect(&url).await {
        Ok(store) => store,
        Err(e) => {
            eprintln!("redis-channel: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    every(store.clone(), Duration::from_secs(2), || {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("the time is {seconds} s past the epoch")
    });

    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/events", EventSource::new(store.clone()).handler());
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("redis-channel: cannot listen on {listen}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(address) => println!("Redis channel page on http://{address}/"),
        Err(e) => eprintln!("redis-channel: {e}"),
    }
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            store.close();
        })
        .await;
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redis-channel: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
