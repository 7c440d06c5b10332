//! End to end: the real hub binary on a loopback port, real HTTP and WebSocket clients.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use futures_lite::StreamExt;
use support::{Hub, client};
use tokio_tungstenite::tungstenite::Message as Frame;

#[tokio::test]
async fn a_published_message_reaches_sse_and_websocket_subscribers() {
    let hub = Hub::start(&[]);
    let mut sse = hub.events("/events/demo", &[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/demo", hub.address))
        .await
        .expect("the WebSocket upgrade succeeds");
    // Both subscribed before the publish (the WebSocket one once its upgrade is done).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = hub.published("demo", "hello").await;

    let event = sse.next().await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str(), event.id.as_str()),
        ("message", "hello", id.as_str())
    );
    let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Frame::Text(text) = frame else {
        panic!("expected a text frame, got {frame:?}")
    };
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (json["data"].as_str(), json["id"].as_str()),
        (Some("hello"), Some(id.as_str()))
    );
}

#[tokio::test]
async fn an_event_type_can_be_given_when_publishing() {
    let hub = Hub::start(&[]);
    let mut sse = hub.events("/events/news", &[]).await;
    let response = client()
        .post(hub.url("/publish/news?event=headline"))
        .body("storecast ships")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let event = sse.next().await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("headline", "storecast ships")
    );
}

#[tokio::test]
async fn sse_resumes_after_last_event_id_from_header_or_query() {
    let hub = Hub::start(&[]);
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(hub.published("resume", &format!("m{n}")).await);
    }
    let mut from_header = hub
        .events("/events/resume", &[("Last-Event-ID", &ids[0])])
        .await;
    assert_eq!(from_header.next().await.data, "m2");
    assert_eq!(from_header.next().await.data, "m3");
    let mut from_query = hub
        .events(&format!("/events/resume?lastEventId={}", ids[1]), &[])
        .await;
    assert_eq!(from_query.next().await.data, "m3");
    assert!(
        from_query
            .try_next(Duration::from_millis(300))
            .await
            .is_none(),
        "a message arrived twice"
    );
}

#[tokio::test]
async fn a_new_subscriber_can_start_from_the_oldest_retained_message() {
    let hub = Hub::start(&["--queue-capacity", "4"]);
    let mut ids = Vec::new();
    for n in 1..=6 {
        ids.push(hub.published("kept", &format!("m{n}")).await);
    }
    let mut oldest = hub.events("/events/kept?from=oldest", &[]).await;
    for n in 3..=6 {
        assert_eq!(oldest.next().await.data, format!("m{n}"));
    }
    // A reconnecting EventSource keeps the URL and adds its Last-Event-ID: it resumes.
    let mut resumed = hub
        .events("/events/kept?from=oldest", &[("Last-Event-ID", &ids[4])])
        .await;
    assert_eq!(resumed.next().await.data, "m6");
    let unknown = client()
        .get(hub.url("/events/kept?from=yesterday"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
}

#[tokio::test]
async fn resuming_from_a_position_no_longer_retained_is_told_then_continues() {
    let hub = Hub::start(&["--queue-capacity", "4"]);
    let mut ids = Vec::new();
    for n in 1..=10 {
        ids.push(hub.published("gone", &format!("m{n}")).await);
    }
    let mut sse = hub
        .events("/events/gone", &[("Last-Event-ID", &ids[0])])
        .await;
    let notice = sse.next().await;
    assert_eq!(
        (notice.event.as_str(), notice.data.as_str()),
        ("lagged", r#"{"missed":5}"#)
    );
    for n in 7..=10 {
        assert_eq!(sse.next().await.data, format!("m{n}"));
    }
}

#[tokio::test]
async fn a_client_of_a_hub_that_restarted_is_told_then_gets_what_the_new_one_holds() {
    // The first run: a client saw up to the fifth message.
    let before = Hub::start(&[]);
    let mut last_seen = String::new();
    for n in 1..=5 {
        last_seen = before.published("restarts", &format!("old {n}")).await;
    }
    drop(before);
    // The hub comes back empty, and two messages are published before the client returns.
    let after = Hub::start(&[]);
    let first_new = after.published("restarts", "new 1").await;
    after.published("restarts", "new 2").await;
    assert_ne!(first_new, last_seen);
    assert!(first_new.starts_with("1-"), "{first_new}");

    let mut sse = after
        .events("/events/restarts", &[("Last-Event-ID", &last_seen)])
        .await;
    let notice = sse.next().await;
    assert_eq!(
        (notice.event.as_str(), notice.data.as_str()),
        ("reset", r#"{"reason":"other-epoch"}"#)
    );
    // Neither the new run's messages skipped, nor the old ones pretended.
    assert_eq!(sse.next().await.data, "new 1");
    assert_eq!(sse.next().await.data, "new 2");

    // Over WebSocket too.
    let url = format!("ws://{}/ws/restarts?lastEventId={last_seen}", after.address);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(
        (json["event"].as_str(), json["reason"].as_str()),
        (Some("reset"), Some("other-epoch"))
    );
}

#[tokio::test]
async fn an_unreadable_or_ahead_last_event_id_is_told_never_refused() {
    let hub = Hub::start(&[]);
    let id = hub.published("odd", "only").await;
    // A browser's EventSource stops for good on any answer but 200: never refuse.
    let mut sse = hub
        .events("/events/odd", &[("Last-Event-ID", "not-a-position")])
        .await;
    let notice = sse.next().await;
    assert_eq!(
        (notice.event.as_str(), notice.data.as_str()),
        ("reset", r#"{"reason":"unreadable"}"#)
    );
    assert_eq!(sse.next().await.data, "only");

    let (offset, epoch) = id.split_once('-').unwrap();
    let ahead = format!("{}-{epoch}", offset.parse::<u64>().unwrap() + 10);
    let mut sse = hub
        .events("/events/odd", &[("Last-Event-ID", &ahead)])
        .await;
    let notice = sse.next().await;
    assert_eq!(
        (notice.event.as_str(), notice.data.as_str()),
        ("reset", r#"{"reason":"ahead"}"#)
    );
    assert_eq!(sse.next().await.data, "only");
}

#[tokio::test]
async fn a_publisher_cannot_forge_the_hub_s_own_signals() {
    let hub = Hub::start(&[]);
    for event in ["reset", "lagged", "fell-behind", "interrupted"] {
        let response = client()
            .post(hub.url(&format!("/publish/forged?event={event}")))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "?event={event}");
    }
}

#[tokio::test]
async fn a_message_that_looks_like_events_arrives_as_one_ordinary_event() {
    let hub = Hub::start(&[]);
    let mut sse = hub.events("/events/inject", &[]).await;
    let message = "x\n\nevent: admin\ndata: y\nretry: 1";
    hub.published("inject", message).await;
    hub.published("inject", "after").await;
    let event = sse.next().await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("message", message)
    );
    assert_eq!(sse.next().await.data, "after");
}

#[tokio::test]
async fn latest_value_topics_give_a_new_subscriber_the_current_value() {
    let hub = Hub::start(&["--latest", "prices.*"]);
    for price in ["100", "101", "102"] {
        hub.published("prices.acme", price).await;
    }
    let mut sse = hub.events("/events/prices.acme", &[]).await;
    assert_eq!(sse.next().await.data, "102");
    hub.published("prices.acme", "103").await;
    assert_eq!(sse.next().await.data, "103");
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_nothing_else_is_disturbed() {
    let hub = Hub::start(&["--max-body-bytes", "1024"]);
    let mut sse = hub.events("/events/steady", &[]).await;

    let (status, text) = hub.publish("steady", vec![b'a'; 2048]).await;
    assert_eq!(status, 413, "{text}");
    let (status, text) = hub.publish("steady", vec![0xff, 0xfe, 0x00]).await;
    assert_eq!((status, text.contains("UTF-8")), (400, true), "{text}");
    let (status, text) = hub.publish("bad%20topic!", "x").await;
    assert_eq!((status, text.contains("topic")), (400, true), "{text}");
    let response = client()
        .get(hub.url("/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = client()
        .post(hub.url("/publish/steady?event=a%0Ab"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // The subscriber that was there all along still gets what comes next, and only that.
    hub.published("steady", "still here").await;
    assert_eq!(sse.next().await.data, "still here");
}

#[tokio::test]
async fn tokens_are_required_when_configured() {
    let hub = Hub::start(&[
        "--publish-token",
        "pub-secret",
        "--subscribe-token",
        "sub-secret",
    ]);
    let (status, _) = hub.publish("private", "x").await;
    assert_eq!(status, 401);
    let response = client()
        .post(hub.url("/publish/private"))
        .bearer_auth("wrong")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = client()
        .get(hub.url("/events/private"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let mut sse = hub.events("/events/private?token=sub-secret", &[]).await;
    let response = client()
        .post(hub.url("/publish/private"))
        .bearer_auth("pub-secret")
        .body("secret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(sse.next().await.data, "secret");
}

#[tokio::test]
async fn the_connection_cap_answers_503() {
    let hub = Hub::start(&["--max-connections", "1"]);
    let _first = hub.events("/events/capped", &[]).await;
    let second = client()
        .get(hub.url("/events/capped"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 503);
    drop(_first);
    // Once the first one is gone, there is room again.
    let mut room = false;
    for _ in 0..50 {
        let again = client()
            .get(hub.url("/events/capped"))
            .send()
            .await
            .unwrap();
        if again.status() == 200 {
            room = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(room, "the cap was not released when a subscriber left");
}

#[tokio::test]
async fn cors_allows_the_configured_origin_only() {
    let hub = Hub::start(&["--cors-origin", "https://app.example"]);
    let allowed = client()
        .get(hub.url("/healthz"))
        .header("Origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = client()
        .get(hub.url("/healthz"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let preflight = client()
        .request(reqwest::Method::OPTIONS, hub.url("/publish/x"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert!(
        preflight.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
}

#[tokio::test]
async fn health_and_metrics_report_what_happened() {
    let hub = Hub::start(&[]);
    let health = client().get(hub.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let mut sse = hub.events("/events/counted", &[]).await;
    hub.published("counted", "one").await;
    sse.next().await;
    let metrics = hub.metrics().await;
    for line in [
        "storecast_connections 1",
        "storecast_messages_in_total 1",
        "storecast_messages_out_total 1",
        "storecast_topic_subscribers{topic=\"counted\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_slows_nobody_and_is_told_what_it_missed() {
    let hub = Hub::start(&["--queue-capacity", "16"]);
    // The slow client: asks for the stream, then reads nothing for a while.
    let mut slow = std::net::TcpStream::connect(&hub.address).unwrap();
    write!(slow, "GET /events/firehose HTTP/1.1\r\nHost: hub\r\n\r\n").unwrap();
    let mut fast = hub.events("/events/firehose", &[]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Far more than the kernel's socket buffers hold, so the hub must drop for the slow
    // one; each message is read by the fast one before the next is published.
    const COUNT: usize = 400;
    let payload = "x".repeat(60_000);
    let started = tokio::time::Instant::now();
    for n in 1..=COUNT {
        let id = hub.published("firehose", &format!("{n}:{payload}")).await;
        let event = fast.next().await;
        assert_eq!(event.id, id);
        assert!(
            id.starts_with(&format!("{n}-")),
            "message {n} has the id {id}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "publishing was held up"
    );

    // Now the slow client reads: it is told it lagged, then goes on.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buffer = vec![0; 1 << 20];
    while !String::from_utf8_lossy(&seen).contains("event: lagged") {
        let n = slow
            .read(&mut buffer)
            .expect("the slow client can still read");
        assert!(n > 0, "the stream ended without a lag report");
        seen.extend_from_slice(&buffer[..n]);
    }
}

#[tokio::test]
async fn shutting_down_ends_every_stream_and_exits_cleanly() {
    let mut hub = Hub::start(&[]);
    let mut sse = hub.events("/events/bye", &[]).await;
    let mut stats = hub.events("/stats", &[]).await;
    hub.published("bye", "last words").await;
    assert_eq!(sse.next().await.data, "last words");
    assert_eq!(stats.next().await.event, "stats");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &hub.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(
        sse.ends(Duration::from_secs(10)).await,
        "the stream did not end on shutdown"
    );
    assert!(
        stats.ends(Duration::from_secs(10)).await,
        "the stats stream did not end on shutdown"
    );
    let status = hub.child.wait().unwrap();
    assert!(status.success(), "the hub exited with {status}");
}

#[tokio::test]
async fn an_idle_stream_gets_the_retry_advice_then_keep_alive_comments() {
    let hub = Hub::start(&["--keep-alive-secs", "1", "--retry-ms", "2500"]);
    let mut socket = std::net::TcpStream::connect(&hub.address).unwrap();
    write!(socket, "GET /events/quiet HTTP/1.1\r\nHost: hub\r\n\r\n").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut received = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_millis(2_600);
    let mut buffer = [0u8; 1024];
    while std::time::Instant::now() < deadline {
        if let Ok(n) = socket.read(&mut buffer) {
            received.extend_from_slice(&buffer[..n]);
        }
    }
    let text = String::from_utf8(received).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(text.contains("retry: 2500\n\n"), "{text:?}");
    // Each chunk of the body holds one comment, ignored by clients.
    let comments = text.matches("\r\n:\n\n\r\n").count();
    assert!(
        (1..=3).contains(&comments),
        "{comments} keep-alives: {text:?}"
    );
}

#[tokio::test]
async fn a_publish_retried_with_its_idempotency_key_is_added_once() {
    let hub = Hub::start(&[]);
    let publish = |key, body| hub.publish_keyed("orders", body, key);
    let first = publish(Some("order-7"), "seven").await;
    assert_eq!(first.0, 200, "{}", first.1);
    // The client never saw the answer and publishes again: same id, nothing added.
    assert_eq!(publish(Some("order-7"), "seven").await, first);
    let other = publish(Some("order-8"), "eight").await;
    assert_ne!(other.1, first.1);
    let unkeyed = publish(None, "nine").await;
    assert_eq!(unkeyed.0, 200);
    // A key that is not a header-safe token is refused, with the reason.
    let bad = publish(Some("two words"), "x").await;
    assert_eq!(bad.0, 400, "{}", bad.1);

    let mut events = hub.events("/events/orders?from=oldest", &[]).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(events.next().await.data);
    }
    assert_eq!(got, ["seven", "eight", "nine"]);
    assert!(events.try_next(Duration::from_millis(300)).await.is_none());

    // A repeat retains nothing: the memory budget counts the three bodies alone.
    for _ in 0..5 {
        assert_eq!(publish(Some("order-7"), "seven").await, first);
    }
    let metrics = hub.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|line| line == "storecast_retained_bytes 14"),
        "{metrics}"
    );
}
