//! The hub on the open internet: each attack or unlucky client, tried with a raw socket
//! against the real binary, leaves it serving everyone else within its limits.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::{Hub, client};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The value of an unlabelled metric.
async fn metric(hub: &Hub, name: &str) -> u64 {
    let text = hub.metrics().await;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .parse()
        .unwrap()
}

/// Whether the hub closes `socket` within `limit` (reads until end of stream).
fn closed_within(socket: &mut TcpStream, limit: Duration) -> bool {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        match socket.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test]
async fn a_half_sent_head_and_an_idle_keep_alive_are_closed_after_the_head_timeout() {
    let hub = Hub::start(&["--head-timeout-secs", "1"]);
    let mut half = TcpStream::connect(&hub.address).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n")
        .unwrap();
    let mut silent = TcpStream::connect(&hub.address).unwrap();
    let mut idle = TcpStream::connect(&hub.address).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n")
        .unwrap();
    for socket in [&mut half, &mut silent, &mut idle] {
        assert!(
            closed_within(socket, Duration::from_secs(5)),
            "a connection outlived the head timeout"
        );
    }
    assert!(metric(&hub, "storecast_head_timeouts_total").await >= 2);
    // The hub still answers.
    let health = client().get(hub.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_body_promised_and_never_sent_gets_408_and_creates_no_topic() {
    let hub = Hub::start(&["--body-timeout-secs", "1"]);
    let mut slow = TcpStream::connect(&hub.address).unwrap();
    slow.write_all(
        b"POST /publish/never HTTP/1.1\r\nHost: hub\r\nContent-Length: 1000000000\r\n\r\nabc",
    )
    .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = [0u8; 64];
    let n = slow.read(&mut answer).expect("an answer in time");
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert_eq!(metric(&hub, "storecast_body_timeouts_total").await, 1);
    assert_eq!(metric(&hub, "storecast_topics").await, 0);
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_dropped_and_slows_nobody() {
    let hub = Hub::start(&["--write-timeout-secs", "1", "--overflow", "wait"]);
    // The stalled client asks for the stream, then never reads.
    let mut stalled = TcpStream::connect(&hub.address).unwrap();
    write!(stalled, "GET /events/flood HTTP/1.1\r\nHost: hub\r\n\r\n").unwrap();
    let mut reader = hub.events("/events/flood", &[]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Far more than the kernel buffers hold: the stalled socket fills, stops accepting,
    // and is dropped; with `--overflow wait`, publishers wait on it only until then.
    let payload = "x".repeat(60_000);
    let started = Instant::now();
    for n in 1..=300 {
        hub.published("flood", &format!("{n}:{payload}")).await;
        assert!(reader.next().await.data.starts_with(&format!("{n}:")));
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "publishing waited on the stalled subscriber"
    );
    assert!(metric(&hub, "storecast_write_timeouts_total").await >= 1);
    assert_eq!(metric(&hub, "storecast_connections").await, 1);
}

#[tokio::test]
async fn shutdown_ends_within_its_deadline_whatever_the_clients_do() {
    let mut hub = Hub::start(&["--shutdown-timeout-secs", "2"]);
    let mut half_head = TcpStream::connect(&hub.address).unwrap();
    half_head.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let mut half_body = TcpStream::connect(&hub.address).unwrap();
    half_body
        .write_all(b"POST /publish/x HTTP/1.1\r\nHost: hub\r\nContent-Length: 100\r\n\r\nab")
        .unwrap();
    let mut stalled = TcpStream::connect(&hub.address).unwrap();
    write!(stalled, "GET /events/x HTTP/1.1\r\nHost: hub\r\n\r\n").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &hub.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = hub.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn websocket_messages_from_clients_are_small_and_closes_are_answered() {
    let hub = Hub::start(&[]);
    // A message past the limit (fragments count together): closed with 1009.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/chat", hub.address))
        .await
        .unwrap();
    ws.send(Frame::text("y".repeat(64 * 1024))).await.unwrap();
    let mut code = None;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Ok(Frame::Close(frame)) = frame {
            code = frame.map(|f| f.code);
            break;
        }
    }
    assert_eq!(code, Some(CloseCode::Size));

    // A client's close is answered (a browser would otherwise report 1006).
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/chat", hub.address))
        .await
        .unwrap();
    ws.send(Frame::Close(None)).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = ws.next().await {
            if let Ok(Frame::Close(_)) = frame {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(answered, Ok(true), "the close was not answered");
}

#[tokio::test]
async fn other_origins_cannot_publish_or_open_websockets() {
    let hub = Hub::start(&["--cors-origin", "https://good.example"]);
    let evil = client()
        .post(hub.url("/publish/x"))
        .header("Origin", "https://evil.example")
        .body("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);
    assert_eq!(evil.headers()["vary"], "origin");
    let good = client()
        .post(hub.url("/publish/x"))
        .header("Origin", "https://good.example")
        .body("fine")
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 200);
    assert_eq!(good.headers()["vary"], "origin");
    let request = tokio_tungstenite::tungstenite::ClientRequestBuilder::new(
        format!("ws://{}/ws/x", hub.address).parse().unwrap(),
    )
    .with_header("Origin", "https://evil.example");
    let refused = tokio_tungstenite::connect_async(request).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 403),
        "{refused:?}"
    );
    // Nothing was published by the forged request.
    assert_eq!(metric(&hub, "storecast_messages_in_total").await, 1);
}

#[tokio::test]
async fn tokens_are_matched_as_http_says() {
    let hub = Hub::start(&["--publish-token", "secret"]);
    let lower = client()
        .post(hub.url("/publish/t"))
        .header("Authorization", "bearer secret")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200, "the scheme is case-insensitive");
    // A query token counts only when there is no Authorization header.
    let mixed = client()
        .post(hub.url("/publish/t?token=secret"))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(mixed.status(), 401);
}

#[tokio::test]
async fn refused_requests_and_head_create_no_topic_and_idle_topics_go() {
    let hub = Hub::start(&["--topic-idle-secs", "1"]);
    let (status, _) = hub.publish("bad-body", vec![0xff, 0xfe]).await;
    assert_eq!(status, 400);
    let bad_event = client()
        .post(hub.url("/publish/bad-event?event=%FF"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_event.status(), 400);
    let empty_event = client()
        .post(hub.url("/publish/bad-event?event="))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(empty_event.status(), 400);
    let head = client()
        .head(hub.url("/events/looked-at"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(metric(&hub, "storecast_topics").await, 0);

    hub.published("brief", "hello").await;
    assert_eq!(metric(&hub, "storecast_topics").await, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&hub, "storecast_topics").await != 0 {
        assert!(Instant::now() < deadline, "an idle topic was never removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric(&hub, "storecast_retained_bytes").await, 0);
    // A topic with a subscriber stays, however quiet.
    let _listening = hub.events("/events/kept", &[]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric(&hub, "storecast_topics").await, 1);
}

#[tokio::test]
async fn retained_memory_stays_within_its_budget() {
    let hub = Hub::start(&["--max-retained-bytes", "1000", "--queue-capacity", "4"]);
    let body = "b".repeat(200);
    for _ in 0..4 {
        hub.published("full", &body).await;
    }
    assert_eq!(metric(&hub, "storecast_retained_bytes").await, 800);
    // Another topic would take it past the budget: refused, and nothing is kept of it.
    let (status, text) = hub.publish("other", "c".repeat(300)).await;
    assert_eq!(status, 507, "{text}");
    // A full topic replaces its oldest message: publishing there keeps working.
    for _ in 0..10 {
        hub.published("full", &body).await;
    }
    assert_eq!(metric(&hub, "storecast_retained_bytes").await, 800);
    assert_eq!(metric(&hub, "storecast_over_budget_total").await, 1);
}

#[tokio::test]
async fn metrics_stay_small_with_many_topics_and_can_require_a_token() {
    let hub = Hub::start(&["--metrics-token", "look"]);
    let refused = client().get(hub.url("/metrics")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    for n in 0..150 {
        hub.published(&format!("t{n}"), "x").await;
    }
    let text = client()
        .get(hub.url("/metrics"))
        .bearer_auth("look")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.lines().any(|l| l == "storecast_topics 150"), "{text}");
    let series = text
        .lines()
        .filter(|l| l.starts_with("storecast_topic_subscribers{"))
        .count();
    assert_eq!(series, 100, "per-topic series are bounded");
}

#[tokio::test]
async fn without_cors_origins_only_the_hub_s_own_pages_may_publish() {
    let hub = Hub::start(&[]);
    let elsewhere = client()
        .post(hub.url("/publish/x"))
        .header("Origin", "https://elsewhere.example")
        .body("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 403);
    let own = client()
        .post(hub.url("/publish/x"))
        .header("Origin", format!("http://{}", hub.address))
        .body("from the hub's page")
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    // Programs that send no Origin (curl, servers) are not browsers' pages.
    assert_eq!(hub.publish("x", "from curl").await.0, 200);
}

#[tokio::test]
async fn an_upgraded_websocket_still_counts_as_a_socket() {
    let hub = Hub::start(&[]);
    let (_ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/counted", hub.address))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The WebSocket, and the connection asking for the metrics.
    assert_eq!(metric(&hub, "storecast_sockets").await, 2);
}

#[tokio::test]
async fn stats_need_the_metrics_token_and_stream_each_topic_s_counts() {
    let hub = Hub::start(&["--metrics-token", "look", "--latest", "prices"]);
    let refused = client().get(hub.url("/stats")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let wrong = client()
        .get(hub.url("/stats?token=guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    for n in 1..=3 {
        hub.published("orders", &format!("order {n}")).await;
    }
    hub.published("prices", "1.25").await;

    // An EventSource cannot send headers: the token goes in the query.
    let mut stats = hub.events("/stats?token=look", &[]).await;
    let first = stats.next().await;
    assert_eq!(first.event, "stats");
    let snapshot: serde_json::Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(snapshot["topics"], 2);
    assert_eq!(snapshot["messages_in"], 4);
    let list = snapshot["list"].as_array().unwrap();
    let orders = list.iter().find(|t| t["name"] == "orders").unwrap();
    assert_eq!(
        (&orders["kind"], &orders["messages"], &orders["last"]),
        (&"queue".into(), &3.into(), &3.into())
    );
    let prices = list.iter().find(|t| t["name"] == "prices").unwrap();
    assert_eq!(
        (&prices["kind"], &prices["messages"]),
        (&"latest".into(), &1.into())
    );

    // A second a snapshot, never faster, with the counts as they grow.
    hub.published("orders", "order 4").await;
    let mut last = snapshot;
    for _ in 0..3 {
        let next: serde_json::Value = serde_json::from_str(&stats.next().await.data).unwrap();
        assert!(
            next["time"].as_u64().unwrap() >= last["time"].as_u64().unwrap() + 900,
            "snapshots are a second apart: {last} then {next}"
        );
        let orders = &next["list"].as_array().unwrap()[0];
        assert_eq!(orders["name"], "orders", "{next}");
        if orders["messages"] == 4 {
            return;
        }
        last = next;
    }
    panic!("the count never grew to 4: {last}");
}

/// The resident memory of process `pid`, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends `request` on a raw socket and waits for a response head of `status`.
async fn answered(hub: &Hub, request: &str, status: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(&hub.address).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the response head");
        head.extend_from_slice(&chunk[..n]);
    }
    assert!(
        head.starts_with(format!("HTTP/1.1 {status}").as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    socket
}

/// Opens an SSE stream on a raw socket.
async fn subscribed(hub: &Hub, topic: &str) -> tokio::net::TcpStream {
    let request = format!("GET /events/{topic} HTTP/1.1\r\nHost: hub\r\n\r\n");
    answered(hub, &request, "200").await
}

/// Opens a WebSocket on a raw socket.
async fn upgraded(hub: &Hub, topic: &str) -> tokio::net::TcpStream {
    let request = format!(
        "GET /ws/{topic} HTTP/1.1\r\nHost: hub\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    answered(hub, &request, "101").await
}

/// The hub's resident memory per subscriber, in bytes, over 2,000 subscribers that
/// `open` opens.
async fn memory_per_subscriber<F>(hub: &Hub, open: impl Fn() -> F) -> u64
where
    F: std::future::Future<Output = tokio::net::TcpStream>,
{
    const CONNECTIONS: u64 = 2_000;
    // The first subscriber makes the topic; what it costs is not a connection's.
    let _first = open().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = resident_kib(hub.child.id());
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        held.push(open().await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = resident_kib(hub.child.id());
    assert_eq!(metric(hub, "storecast_connections").await, CONNECTIONS + 1);
    after.saturating_sub(before) * 1024 / CONNECTIONS
}

#[tokio::test]
async fn an_idle_sse_subscriber_costs_the_hub_at_most_6_kib() {
    let hub = Hub::start(&[]);
    let bytes = memory_per_subscriber(&hub, || subscribed(&hub, "idle")).await;
    assert!(bytes <= 6 * 1024, "{bytes} bytes per idle SSE connection");
}

#[tokio::test]
async fn an_idle_websocket_subscriber_costs_the_hub_at_most_6_kib() {
    let hub = Hub::start(&[]);
    let bytes = memory_per_subscriber(&hub, || upgraded(&hub, "idle")).await;
    assert!(bytes <= 6 * 1024, "{bytes} bytes per idle WebSocket");
}

#[tokio::test]
async fn a_stalled_sse_subscriber_is_dropped_after_the_write_timeout() {
    let hub = Hub::start(&["--write-timeout-secs", "1"]);
    let mut stalled = TcpStream::connect(&hub.address).unwrap();
    write!(stalled, "GET /events/stall HTTP/1.1\r\nHost: hub\r\n\r\n").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metric(&hub, "storecast_connections").await, 1);
    // Far more than the kernel buffers hold, and the client reads none of it.
    let payload = "x".repeat(60_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&hub, "storecast_write_timeouts_total").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the stalled subscriber was never dropped"
        );
        for _ in 0..20 {
            hub.published("stall", &payload).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(metric(&hub, "storecast_connections").await, 0);
    assert!(
        closed_within(&mut stalled, Duration::from_secs(10)),
        "the stalled socket was not closed"
    );
}
