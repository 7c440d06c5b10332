//! Tornadose's Fibonacci demo: the sequence, one number every half second, to a browser
//! page that shows each as it arrives. A queue this time: every client sees every number
//! in order, and a reload resumes where it left off (the browser sends `Last-Event-ID`).
//!
//! ```text
//! cargo run -p storecast-tornadose-demos --bin fibonacci
//! open http://127.0.0.1:8002/
//! ```

use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use storecast::{Overflow, QueueStore};
use storecast_tokio::{EventSource, every, shutdown_signal};

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>Fibonacci</title>
<h1>Fibonacci numbers, as they are computed</h1>
<ol id="numbers"></ol>
<script>
  const source = new EventSource('/numbers');
  source.onmessage = (e) => {
    const li = document.createElement('li');
    li.value = Number(e.lastEventId);
    li.textContent = e.data;
    document.getElementById('numbers').append(li);
  };
</script>
"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let numbers = QueueStore::with_overflow(256, Overflow::DropOldest);
    let (mut a, mut b) = (0u128, 1u128);
    every(numbers.clone(), Duration::from_millis(500), move || {
        let next = a;
        (a, b) = (b, a.checked_add(b).unwrap_or(0));
        if a == 0 {
            (a, b) = (0, 1); // u128 overflowed: start over
        }
        next.to_string()
    });

    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/numbers", EventSource::new(numbers.clone()).handler());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8002").await?;
    println!("Fibonacci page on http://{}/", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            numbers.close();
        })
        .await
}
