//! Hubs on a real Redis Cluster (`--redis redis+cluster://...`: three primaries with a
//! replica each) and behind real sentinels (`--redis redis+sentinel://.../service`): they
//! share topics on every shard, and keep serving when a primary is killed.

#[path = "../../../adapters/redis/tests/support/mod.rs"]
mod redis_server;
mod support;

use std::time::Duration;

use redis_server::{RedisCluster, Sentinels};
use support::{Events, Hub};

fn hub_on(url: &str) -> Hub {
    Hub::start(&["--redis", url, "--latest", "prices.*"])
}

/// A topic name `prefix-N` whose stream or channel (`storecast:` + name) the node `node`
/// serves.
fn topic_on(cluster: &RedisCluster, node: usize, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|name| cluster.primary_of(&format!("storecast:{name}")) == node)
        .expect("a name")
}

/// The next message event, passing over `interrupted` notices and failing on any other
/// notice (a reset, a gap).
async fn next_message(events: &mut Events) -> (String, String) {
    loop {
        let event = events
            .try_next(Duration::from_secs(40))
            .await
            .expect("an event");
        match event.event.as_str() {
            "interrupted" => continue,
            "" | "message" => return (event.data, event.id),
            other => panic!("unexpected notice `{other}`: {}", event.data),
        }
    }
}

#[tokio::test]
async fn two_hubs_on_a_cluster_share_topics_on_every_shard_and_ride_out_a_failover() {
    let mut cluster = RedisCluster::start(3, 1);
    let primaries = cluster.primaries();
    let (a, b) = (hub_on(&cluster.url()), hub_on(&cluster.url()));

    // A queue topic and a latest topic on every shard, published on one hub and read on
    // the other with the same ids.
    let mut topics = Vec::new();
    for &primary in &primaries {
        let queue = topic_on(&cluster, primary, "jobs");
        let latest = topic_on(&cluster, primary, "prices.eur");
        let queue_events = b.events(&format!("/events/{queue}"), &[]).await;
        let latest_events = b.events(&format!("/events/{latest}"), &[]).await;
        topics.push((primary, queue, queue_events, latest, latest_events));
    }
    for (_, queue, queue_events, latest, latest_events) in &mut topics {
        let id = a.published(queue, "first").await;
        assert_eq!(next_message(queue_events).await, ("first".into(), id));
        a.published(latest, "1.08").await;
        assert_eq!(next_message(latest_events).await.0, "1.08");
    }
    assert!(
        cluster.cli(&["EXISTS", &format!("{{storecast:{}}}:latest", topics[0].3)]) == "1",
        "the latest value is kept in the channel's slot"
    );

    // The primary of the first shard dies; its replica takes over.
    let (victim, queue, mut queue_events, latest, mut latest_events) = topics.remove(0);
    let (_, calm, mut calm_events, _, _) = topics.remove(0);
    let before = a.published(&queue, "second").await;
    assert_eq!(
        next_message(&mut queue_events).await,
        ("second".into(), before.clone())
    );
    cluster.wait_replicated(victim);
    cluster.nodes[victim].kill();

    // Other shards go on meanwhile.
    let id = a
        .publish_eventually(&calm, "meanwhile", Duration::from_secs(40))
        .await;
    assert_eq!(
        next_message(&mut calm_events).await,
        ("meanwhile".into(), id)
    );

    let id = a
        .publish_eventually(&queue, "third", Duration::from_secs(40))
        .await;
    assert_eq!(
        next_message(&mut queue_events).await,
        ("third".into(), id),
        "nothing lost, nothing reset"
    );
    // The latest topic was interrupted, and recovers on the new primary.
    let told = latest_events
        .try_next(Duration::from_secs(40))
        .await
        .expect("an event");
    assert_eq!(told.event, "interrupted");
    a.publish_eventually(&latest, "1.09", Duration::from_secs(40))
        .await;
    loop {
        let (data, _) = next_message(&mut latest_events).await;
        if data == "1.09" {
            break;
        }
    }
    // A client resumes on the other hub from an id given before the failover.
    let mut resumed = a
        .events(&format!("/events/{queue}"), &[("Last-Event-ID", &before)])
        .await;
    assert_eq!(next_message(&mut resumed).await.0, "third");
}

#[tokio::test]
async fn a_hub_behind_sentinel_keeps_serving_after_the_primary_fails_over() {
    let mut setup = Sentinels::start();
    let hub = hub_on(&setup.url());
    let mut queue = hub.events("/events/jobs", &[]).await;
    let mut latest = hub.events("/events/prices.usd", &[]).await;
    let first = hub.published("jobs", "job 1").await;
    assert_eq!(next_message(&mut queue).await, ("job 1".into(), first));
    hub.published("prices.usd", "1.00").await;
    assert_eq!(next_message(&mut latest).await.0, "1.00");
    let replica_port = setup.replica.port();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while setup.replica.cli(&["XLEN", "storecast:jobs"]) != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never caught up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    setup.primary.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while setup.primary_port() != replica_port {
        assert!(std::time::Instant::now() < deadline, "no failover");
        std::thread::sleep(Duration::from_millis(100));
    }

    let second = hub
        .publish_eventually("jobs", "job 2", Duration::from_secs(40))
        .await;
    assert_eq!(
        next_message(&mut queue).await,
        ("job 2".into(), second),
        "nothing lost, nothing reset"
    );
    let told = latest
        .try_next(Duration::from_secs(40))
        .await
        .expect("an event");
    assert_eq!(told.event, "interrupted");
    hub.publish_eventually("prices.usd", "1.01", Duration::from_secs(40))
        .await;
    loop {
        if next_message(&mut latest).await.0 == "1.01" {
            break;
        }
    }
    assert_eq!(setup.replica.cli(&["XLEN", "storecast:jobs"]), "2");
}
