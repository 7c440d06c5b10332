//! Starting a real hub process on a loopback port, and real clients for it.

#![allow(dead_code)] // each test file uses part of this

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use storecast::sse::{Parser, Received};

/// A hub process, killed when dropped.
pub struct Hub {
    pub child: Child,
    /// `127.0.0.1:PORT`
    pub address: String,
}

impl Hub {
    /// Starts the hub binary on a free loopback port with extra flags.
    pub fn start(args: &[&str]) -> Hub {
        let mut child = Command::new(env!("CARGO_BIN_EXE_storecast-hub"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("HUB_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the hub binary starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("the hub prints its address");
        let address = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Hub { child, address }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Publishes `body` to `topic`; returns the status and the response text.
    pub async fn publish(&self, topic: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        let response = client()
            .post(self.url(&format!("/publish/{topic}")))
            .body(body)
            .send()
            .await
            .expect("the hub answers");
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Publishes until the hub takes it (while it reconnects to Redis, or Redis fails
    /// over, a publish gets 503), failing after `patience`; returns the id.
    pub async fn publish_eventually(&self, topic: &str, body: &str, patience: Duration) -> String {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let (status, text) = self.publish(topic, body.to_owned()).await;
            if status == 200 {
                let json: serde_json::Value = serde_json::from_str(&text).unwrap();
                return json["id"].as_str().unwrap().to_owned();
            }
            assert_eq!(status, 503, "{text}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishing never recovered: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Publishes and expects success; returns the message id.
    pub async fn published(&self, topic: &str, body: &str) -> String {
        let (status, text) = self.publish(topic, body.to_owned()).await;
        assert_eq!(status, 200, "publish failed: {text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["id"].as_str().unwrap().to_owned()
    }

    /// Publishes `body` to `topic` with an `Idempotency-Key` (if any); returns the status
    /// and the response text.
    pub async fn publish_keyed(&self, topic: &str, body: &str, key: Option<&str>) -> (u16, String) {
        let mut request = client()
            .post(self.url(&format!("/publish/{topic}")))
            .body(body.to_owned());
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("the hub answers");
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("the hub answers")
            .text()
            .await
            .unwrap()
    }

    /// Opens an SSE stream (with optional extra headers).
    pub async fn events(&self, path: &str, headers: &[(&str, &str)]) -> Events {
        let mut request = client().get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the hub answers");
        assert_eq!(
            response.status(),
            200,
            "GET {path}: {:?}",
            response.status()
        );
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        Events {
            response,
            parser: Parser::new(),
            ready: Default::default(),
            partial: Vec::new(),
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// An SSE stream read with the spec-following parser from the core crate.
pub struct Events {
    pub response: reqwest::Response,
    parser: Parser,
    ready: std::collections::VecDeque<Received>,
    /// Bytes of a character split between chunks.
    partial: Vec<u8>,
}

impl Events {
    /// The next event, failing after 10 s.
    pub async fn next(&mut self) -> Received {
        self.try_next(Duration::from_secs(10))
            .await
            .expect("an event within 10 s")
    }

    /// The next event within `patience`, or `None` (also when the stream ends).
    pub async fn try_next(&mut self, patience: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .expect("the stream reads")?;
            self.partial.extend_from_slice(&chunk);
            let valid = match std::str::from_utf8(&self.partial) {
                Ok(_) => self.partial.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(e) => panic!("the stream is not UTF-8: {e}"),
            };
            let text = String::from_utf8(self.partial.drain(..valid).collect()).unwrap();
            self.ready.extend(self.parser.feed(&text));
        }
    }

    /// Whether the stream ends (the server closed it) within `patience`.
    pub async fn ends(&mut self, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return false,
                Ok(Ok(None)) | Ok(Err(_)) => return true,
                Ok(Ok(Some(_))) => continue,
            }
        }
    }
}
