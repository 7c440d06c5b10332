//! The Redis demo against a real `redis-server`: what `redis-cli PUBLISH tornadose`
//! sends reaches the demo's SSE clients, and without Redis it refuses to start.

#[path = "../../../adapters/redis/tests/support/mod.rs"]
mod redis_server;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis_server::RedisServer;
use storecast::sse::Parser;

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn redis_cli_publish_reaches_the_pages_event_stream() {
    let server = RedisServer::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_redis-channel"))
        .args([server.url().as_str(), "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the demo starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _demo = Demo(child);
    let address = line
        .trim()
        .strip_prefix("Redis channel page on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let page = reqwest::get(&address).await.unwrap().text().await.unwrap();
    assert!(page.contains("EventSource('/events')"), "{page}");

    let mut events = reqwest::get(format!("{address}events")).await.unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    server.cli(&["PUBLISH", "tornadose", "hello from redis-cli"]);
    let mut parser = Parser::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let chunk = events.chunk().await.unwrap().expect("the stream goes on");
            let text = String::from_utf8(chunk.to_vec()).unwrap();
            if parser
                .feed(&text)
                .any(|event| event.data == "hello from redis-cli")
            {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "the published message never arrived");
}

#[test]
fn without_redis_the_demo_says_so_and_exits() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_redis-channel"))
        .args([format!("redis://127.0.0.1:{port}").as_str(), "127.0.0.1:0"])
        .output()
        .expect("the demo runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect to Redis"), "{stderr}");
}
