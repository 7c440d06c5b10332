//! Tornadose's Fibonacci demo on async-std: the sequence, one number every half second,
//! to a browser page and to `curl -N`. The store code is the Tokio version's, unchanged;
//! only the adapter differs.
//!
//! ```text
//! cargo run -p storecast-async-std-fibonacci
//! open http://127.0.0.1:8003/        # or: curl -N http://127.0.0.1:8003/numbers
//! ```

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use storecast::{Overflow, QueueStore};
use storecast_async_std::{EventSource, every, serve, shutdown_signal};

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>Fibonacci on async-std</title>
<h1>Fibonacci numbers, as they are computed (async-std)</h1>
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

#[async_std::main]
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

    let source = EventSource::new(numbers.clone());
    let listener = async_std::net::TcpListener::bind("127.0.0.1:8003").await?;
    println!("Fibonacci page on http://{}/", listener.local_addr()?);
    let server = serve(listener, move |request| {
        let response = match request.uri().path() {
            "/numbers" => source.respond(&request),
            "/" => {
                let mut page =
                    Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())).boxed());
                page.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    "text/html; charset=utf-8".parse().unwrap(),
                );
                page
            }
            _ => {
                let mut missing =
                    Response::new(Full::new(Bytes::from_static(b"not found\n")).boxed());
                *missing.status_mut() = StatusCode::NOT_FOUND;
                missing
            }
        };
        async move { response }
    });
    futures_lite::future::or(server, async {
        shutdown_signal().await;
        numbers.close();
        Ok(())
    })
    .await
}
