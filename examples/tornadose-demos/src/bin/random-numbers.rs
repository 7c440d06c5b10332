//! Tornadose's README demo: a random number every second, to every client listening.
//!
//! ```text
//! cargo run -p storecast-tornadose-demos --bin random-numbers
//! curl -N http://127.0.0.1:8001/
//! ```

use std::time::{Duration, SystemTime};

use axum::Router;
use storecast::DataStore;
use storecast_tokio::{EventSource, every, shutdown_signal};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // Latest value: a client that connects gets the current number at once.
    let numbers = DataStore::new();
    let mut state = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        | 1;
    every(numbers.clone(), Duration::from_secs(1), move || {
        // xorshift: good enough for a demo, and no dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 1000).to_string()
    });

    let app = Router::new().route("/", EventSource::new(numbers.clone()).handler());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8001").await?;
    println!(
        "random numbers on http://{}/ (curl -N it)",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            numbers.close();
        })
        .await
}
