//! Hubs on Redis (`--redis`): topics shared by several hub processes and by other programs
//! that publish straight to Redis, against a real `redis-server`.

#[path = "../../../adapters/redis/tests/support/mod.rs"]
mod redis_server;
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use redis_server::RedisServer;
use support::Hub;

fn hub_on(server: &RedisServer) -> Hub {
    Hub::start(&["--redis", &server.url(), "--latest", "prices.*"])
}

#[tokio::test]
async fn a_message_published_to_one_hub_reaches_subscribers_of_both() {
    let server = RedisServer::start();
    let (a, b) = (hub_on(&server), hub_on(&server));
    let mut on_a = a.events("/events/news", &[]).await;
    let mut on_b = b.events("/events/news", &[]).await;

    let id = a.published("news", "hello").await;
    for events in [&mut on_a, &mut on_b] {
        let event = events.next().await;
        assert_eq!(
            (event.data.as_str(), event.id.as_str()),
            ("hello", id.as_str())
        );
    }

    // A typed event keeps its type through Redis.
    let response = support::client()
        .post(b.url("/publish/news?event=alert"))
        .body("careful")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for events in [&mut on_a, &mut on_b] {
        let event = events.next().await;
        assert_eq!(
            (event.event.as_str(), event.data.as_str()),
            ("alert", "careful")
        );
    }
}

#[tokio::test]
async fn programs_that_publish_straight_to_redis_reach_every_hub() {
    let server = RedisServer::start();
    let (a, b) = (hub_on(&server), hub_on(&server));
    let mut queue_a = a.events("/events/news", &[]).await;
    let mut queue_b = b.events("/events/news", &[]).await;
    let mut latest_a = a.events("/events/prices.eur", &[]).await;
    let mut latest_b = b.events("/events/prices.eur", &[]).await;

    server.cli(&["XADD", "storecast:news", "*", "data", "from a script"]);
    for events in [&mut queue_a, &mut queue_b] {
        assert_eq!(events.next().await.data, "from a script");
    }
    assert_eq!(
        server.cli(&["PUBLISH", "storecast:prices.eur", "1.08"]),
        "2",
        "one subscription per hub"
    );
    for events in [&mut latest_a, &mut latest_b] {
        assert_eq!(events.next().await.data, "1.08");
    }
}

#[tokio::test]
async fn a_client_resumes_on_another_hub_with_last_event_id() {
    let server = RedisServer::start();
    let (a, b) = (hub_on(&server), hub_on(&server));
    let first = a.published("orders", "one").await;
    let second = a.published("orders", "two").await;
    let third = a.published("orders", "three").await;

    let mut resumed = b
        .events("/events/orders", &[("Last-Event-ID", &first)])
        .await;
    for (data, id) in [("two", &second), ("three", &third)] {
        let event = resumed.next().await;
        assert_eq!(
            (event.data.as_str(), event.id.as_str()),
            (data, id.as_str())
        );
    }
}

#[tokio::test]
async fn a_queue_topic_loses_nothing_across_a_redis_restart_and_latest_topics_say_so() {
    let mut server = RedisServer::start();
    let hub = hub_on(&server);
    let mut queue = hub.events("/events/jobs", &[]).await;
    let mut latest = hub.events("/events/prices.usd", &[]).await;
    hub.published("jobs", "job 1").await;
    assert_eq!(queue.next().await.data, "job 1");

    server.restart();

    // While the hub reconnects a publish may be refused with 503 (and nothing is lost).
    hub.publish_eventually("jobs", "job 2", Duration::from_secs(20))
        .await;
    assert_eq!(queue.next().await.data, "job 2");
    let told = latest
        .try_next(Duration::from_secs(20))
        .await
        .expect("an event");
    assert_eq!(told.event, "interrupted");
}

#[tokio::test]
async fn when_redis_loses_entries_every_hub_says_reset_and_old_ids_are_told() {
    // No append-only file: a crash brings back the last snapshot, losing what came after.
    let mut server = RedisServer::start_in_memory();
    let (a, b) = (hub_on(&server), hub_on(&server));
    let mut on_a = a.events("/events/ledger", &[]).await;
    let mut on_b = b.events("/events/ledger", &[]).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(a.published("ledger", &format!("kept {n}")).await);
    }
    server.cli(&["SAVE"]);
    for n in 1..=2 {
        ids.push(a.published("ledger", &format!("lost {n}")).await);
    }
    for events in [&mut on_a, &mut on_b] {
        for id in &ids {
            assert_eq!(&events.next().await.id, id, "the same id on both hubs");
        }
    }

    server.restart();
    let after = a
        .publish_eventually("ledger", "after", Duration::from_secs(20))
        .await;
    let (offset, epoch) = after.split_once('-').unwrap();
    assert_eq!(offset, "4", "numbered after what Redis kept");
    assert!(!ids[0].ends_with(&format!("-{epoch}")), "a new epoch");
    for events in [&mut on_a, &mut on_b] {
        let notice = events.next().await;
        assert_eq!(
            (notice.event.as_str(), notice.data.as_str()),
            ("reset", r#"{"reason":"lost"}"#)
        );
        let event = events.next().await;
        assert_eq!(
            (event.data.as_str(), event.id.as_str()),
            ("after", after.as_str())
        );
    }

    // A client that saw a lost message, coming back to the other hub: told, then
    // everything the stream holds, under the new ids.
    let mut client = b
        .events("/events/ledger", &[("Last-Event-ID", &ids[4])])
        .await;
    let notice = client.next().await;
    assert_eq!(
        (notice.event.as_str(), notice.data.as_str()),
        ("reset", r#"{"reason":"other-epoch"}"#)
    );
    for (n, data) in ["kept 1", "kept 2", "kept 3", "after"].iter().enumerate() {
        let event = client.next().await;
        assert_eq!(
            (event.data.as_str(), event.id.as_str()),
            (*data, format!("{}-{epoch}", n + 1).as_str())
        );
    }
}

#[test]
fn the_hub_refuses_to_start_without_its_redis() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_storecast-hub"))
        .args(["--listen", "127.0.0.1:0"])
        .args(["--redis", &format!("redis://:secret@127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("the hub binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("Redis"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}

#[tokio::test]
async fn metrics_show_each_redis_topics_connection_and_its_interruptions() {
    let server = RedisServer::start();
    let hub = hub_on(&server);
    let mut latest = hub.events("/events/prices.gbp", &[]).await;
    let metrics = || async {
        support::client()
            .get(hub.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let text = metrics().await;
    for line in [
        "storecast_topic_redis_connected{topic=\"prices.gbp\"} 1",
        "storecast_topic_redis_interruptions_total{topic=\"prices.gbp\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }

    assert_eq!(server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "1");
    assert_eq!(latest.next().await.event, "interrupted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics().await;
        if text
            .lines()
            .any(|l| l == "storecast_topic_redis_interruptions_total{topic=\"prices.gbp\"} 1")
            && text
                .lines()
                .any(|l| l == "storecast_topic_redis_connected{topic=\"prices.gbp\"} 1")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never showed the reconnection:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_redis_answers_too_late_is_a_503_that_says_so_and_a_keyed_retry_adds_once() {
    let server = RedisServer::start();
    // Redis answers BUSY to others only after 10 s of a script, so that commands wait.
    server.cli(&["CONFIG", "SET", "busy-reply-threshold", "10000"]);
    let (a, b) = (hub_on(&server), hub_on(&server));
    a.published("orders", "first").await;

    // Redis busy for 7 s, longer than the hubs' 5 s response timeout.
    let port = server.port().to_string();
    let busy = std::thread::spawn(move || {
        let status = Command::new("redis-cli")
            .args(["-p", &port, "EVAL"])
            .arg(
                "local s = tonumber(redis.call('TIME')[1]) \
                 while tonumber(redis.call('TIME')[1]) - s < 7 do end",
            )
            .arg("0")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, text) = a.publish_keyed("orders", "unkeyed", None).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("MAY HAVE BEEN PUBLISHED"), "{text}");
    busy.join().unwrap();

    // A client that retries with its key, on either hub, gets one entry and one id.
    let (status, first) = a.publish_keyed("orders", "keyed", Some("order-42")).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = b.publish_keyed("orders", "keyed", Some("order-42")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(first, again);
    // first, unkeyed (it was published after all) and keyed once.
    assert_eq!(server.cli(&["XLEN", "storecast:orders"]), "3");
}

#[tokio::test]
async fn a_latest_publish_while_redis_is_away_is_a_503_not_a_200() {
    let mut server = RedisServer::start();
    let hub = hub_on(&server);
    let mut latest = hub.events("/events/prices.eur", &[]).await;
    hub.published("prices.eur", "1.08").await;
    assert_eq!(latest.next().await.data, "1.08");

    server.kill();
    // The first publish fails under way (it may still reach Redis later); then the hub
    // knows Redis is away and says the message was not published.
    let (status, text) = hub
        .publish_keyed("prices.eur", "1.09", Some("tick-9"))
        .await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("MAY HAVE BEEN PUBLISHED"), "{text}");
    let (status, text) = hub.publish_keyed("prices.eur", "1.10", None).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("was not published"), "{text}");

    server.restart();
    hub.publish_eventually("prices.eur", "1.11", Duration::from_secs(20))
        .await;
    assert_eq!(server.cli(&["GET", "storecast:prices.eur:latest"]), "1.11");
    // The client retries its first publish under its key, as the 503 told it to: the
    // value was accepted then, so it is not published again over the newer one.
    let (status, text) = hub
        .publish_keyed("prices.eur", "1.09", Some("tick-9"))
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(server.cli(&["GET", "storecast:prices.eur:latest"]), "1.11");
}

/// How many clients of `kind` (`normal`, `pubsub`) Redis has, redis-cli's own included.
fn clients(server: &RedisServer, kind: &str) -> usize {
    server
        .cli(&["CLIENT", "LIST", "TYPE", kind])
        .lines()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_topics_closed_after_idling_release_their_connections() {
    let server = RedisServer::start();
    let idle_hub = || clients(&server, "normal");
    let baseline = idle_hub();
    let hub = Hub::start(&[
        "--redis",
        &server.url(),
        "--latest",
        "prices.*",
        "--topic-idle-secs",
        "1",
    ]);
    for n in 0..20 {
        hub.published(&format!("queue{n}"), "x").await;
        hub.published(&format!("prices.{n}"), "1").await;
    }
    // The hub's command connection and its stream readers, not one per topic.
    let open = idle_hub();
    assert!(
        (baseline + 2..=baseline + 3).contains(&open),
        "{open} clients (baseline {baseline}) with 20 queue topics open"
    );
    // Unused for the idle time, every topic goes, and what it held with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = idle_hub();
        let pubsub_channels = server.cli(&["PUBSUB", "NUMSUB", "prices.0"]);
        if now <= baseline + 2 && pubsub_channels.ends_with("\n0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{now} clients (baseline {baseline}) and prices.0 subscriptions `{pubsub_channels}` after the topics idled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = hub.metrics().await;
    assert!(metrics.contains("storecast_topics 0"), "{metrics}");
}

/// A field of `INFO` (`section`), as a number.
fn info(server: &RedisServer, section: &str, field: &str) -> u64 {
    let text = server.cli(&["INFO", section]);
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("INFO {section} has no {field}: {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// A process's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Publishes `body(n)` to `topic(n)` for every `n` in `range` on `hub`, 64 at a time over
/// one client.
async fn publish_all(
    hub: &Hub,
    range: std::ops::Range<usize>,
    topic: impl Fn(usize) -> String,
    body: impl Fn(usize) -> String,
) {
    use futures_util::StreamExt;
    let client = support::client();
    let client = &client;
    futures_util::stream::iter(range)
        .map(|n| {
            let url = hub.url(&format!("/publish/{}", topic(n)));
            let body = body(n);
            async move {
                let response = client.post(url).body(body).send().await.unwrap();
                let status = response.status();
                assert_eq!(status, 200, "{}", response.text().await.unwrap());
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
}

/// The issue's scale test: two hubs on one default-configured Redis each hold the same
/// 10,000 queue topics on a constant handful of connections, idle topics cost Redis no
/// commands of their own, and a message to each of a sample of them arrives on the other
/// hub, in order and numbered alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_hold_ten_thousand_queue_topics_on_a_handful_of_connections() {
    let topics: usize = std::env::var("SCALE_TOPICS").map_or(10_000, |n| n.parse().unwrap());
    let server = RedisServer::start_in_memory();
    let baseline = clients(&server, "normal") + clients(&server, "pubsub");
    let start = || Hub::start(&["--redis", &server.url(), "--max-topics", "10000"]);
    let (a, b) = (start(), start());
    let topic = |n: usize| format!("scale.{n}");
    let opening = std::time::Instant::now();
    publish_all(&a, 0..topics, topic, |n| format!("a{n}")).await;
    publish_all(&b, 0..topics, topic, |n| format!("b{n}")).await;
    let opened_in = opening.elapsed();
    for hub in [&a, &b] {
        let metrics = hub.metrics().await;
        assert!(
            metrics.contains(&format!("storecast_topics {topics}")),
            "{metrics}"
        );
    }

    // Connections: each hub has its command connection and its stream readers (two by
    // default), whatever the number of topics.
    let connections = clients(&server, "normal") + clients(&server, "pubsub") - baseline;
    assert!(
        connections <= 2 * 4,
        "{connections} Redis connections for two hubs with {topics} topics each"
    );

    // Idle: a few XREADs and audits per reader, not per topic. The INFO calls that
    // measure it count too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = info(&server, "stats", "total_commands_processed");
    let idle = Duration::from_secs(10);
    tokio::time::sleep(idle).await;
    let commands = info(&server, "stats", "total_commands_processed") - before;
    let per_second = commands as f64 / idle.as_secs_f64();
    assert!(
        per_second < 5.0,
        "{commands} commands in {idle:?} with {topics} idle topics on each of two hubs"
    );

    // A sample of topics, one subscriber each on hub A: a message published on hub B
    // arrives there, after the two published while opening.
    let sample: Vec<usize> = (0..topics).step_by(topics / 100).collect();
    let mut streams = Vec::new();
    for &n in &sample {
        streams.push(
            a.events(&format!("/events/{}?from=oldest", topic(n)), &[])
                .await,
        );
    }
    publish_all(
        &b,
        0..sample.len(),
        |i| topic(sample[i]),
        |i| format!("late{}", sample[i]),
    )
    .await;
    for (events, &n) in streams.iter_mut().zip(&sample) {
        let got: Vec<String> = [
            events.next().await,
            events.next().await,
            events.next().await,
        ]
        .into_iter()
        .map(|event| event.data)
        .collect();
        assert_eq!(got, [format!("a{n}"), format!("b{n}"), format!("late{n}")]);
    }
    let redis_memory = info(&server, "memory", "used_memory");
    eprintln!(
        "two hubs, {topics} queue topics each: {connections} Redis connections, {per_second:.1} idle commands/s, \
         opened in {opened_in:?}, Redis {} MiB, hub RSS {} and {} MiB",
        redis_memory >> 20,
        rss_kib(a.child.id()) >> 10,
        rss_kib(b.child.id()) >> 10,
    );
    // An idle topic's memory: its ring holds slots only for the messages it has seen
    // (about 12 KiB a topic here, debug build; 34 KiB with a ring allocated up front).
    for hub in [&a, &b] {
        let rss = rss_kib(hub.child.id());
        let limit = 32 * 1024 + 16 * topics as u64;
        assert!(rss <= limit, "hub RSS {rss} KiB with {topics} idle topics");
    }
}
