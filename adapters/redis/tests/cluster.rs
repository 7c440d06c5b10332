//! The stores on a real Redis Cluster (three primaries with a replica each, made with
//! `redis-cli --cluster create`) and on a primary watched by three real sentinels: topics
//! on every shard, sharded channels, a constant number of connections per node, positions
//! that agree across processes, and the failover of a primary (killed) survived with
//! nothing lost that the replica had and every loss reported.

mod reading;
mod support;

use std::time::Duration;

use reading::{PATIENCE, next, next_value, quick, submit_eventually};
use storecast::{Epoch, Position, RecvError, ResetReason, Store};
use storecast_redis::{ConnectError, QueueOptions, Redis, RedisQueueStore, RedisStore};
use support::{RedisCluster, Sentinels, eventually};

/// Names `prefix-N`, the first one whose slot the node `node` serves.
fn name_on(cluster: &RedisCluster, node: usize, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|name| cluster.primary_of(name) == node)
        .expect("a name")
}

/// The next message, skipping the news that a connection was interrupted (and failing on
/// any other news: a gap or a reset).
async fn next_skipping_interruptions<S>(subscriber: &mut S) -> (String, Position)
where
    S: futures_lite::Stream<Item = storecast::Item<String>> + Unpin,
{
    loop {
        match next(subscriber).await {
            Ok(message) => return ((*message).clone(), message.position()),
            Err(RecvError::Interrupted) => continue,
            Err(e) => panic!("expected a message, got `{e}`"),
        }
    }
}

/// Ten entries `before-N` submitted and read in order, and the latest value `old` seen:
/// what a failover must keep.
async fn before_the_failover<S, W>(
    producer: &RedisQueueStore<String>,
    reader: &mut S,
    publisher: &RedisStore<String>,
    watcher: &mut W,
) where
    S: futures_lite::Stream<Item = storecast::Item<String>> + Unpin,
    W: futures_lite::Stream<Item = storecast::Item<String>> + Unpin,
{
    let mut expected = Vec::new();
    for n in 0..10 {
        let text = format!("before-{n}");
        expected.push((text.clone(), producer.submit(text).await.unwrap()));
    }
    publisher.try_submit("old".into()).unwrap();
    assert_eq!(next_value(watcher).await.0, "old");
    for (text, position) in &expected {
        assert_eq!(&next_value(reader).await, &(text.clone(), *position));
    }
}

/// Ten entries `after-N` submitted while a failover settles: numbered in `epoch` (nothing
/// was lost) and read in order, past any interruption.
async fn after_the_failover<S>(producer: &RedisQueueStore<String>, reader: &mut S, epoch: Epoch)
where
    S: futures_lite::Stream<Item = storecast::Item<String>> + Unpin,
{
    let mut expected = Vec::new();
    for n in 0..10 {
        let text = format!("after-{n}");
        expected.push((
            text.clone(),
            submit_eventually(producer, &text, PATIENCE * 2).await,
        ));
    }
    assert_eq!(
        producer.epoch(),
        epoch,
        "nothing was lost: the same identity"
    );
    for (text, position) in &expected {
        assert_eq!(
            &next_skipping_interruptions(reader).await,
            &(text.clone(), *position)
        );
    }
}

/// Submits `value` to `publisher` until `watcher` shows it (while a failover settles),
/// failing after twice the patience; whether `watcher` was told of an interruption
/// meanwhile.
async fn recovers<S>(publisher: &RedisStore<String>, watcher: &mut S, value: &str) -> bool
where
    S: futures_lite::Stream<Item = storecast::Item<String>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    let mut interrupted = false;
    loop {
        publisher.try_submit(value.into()).unwrap();
        match tokio::time::timeout(
            Duration::from_millis(500),
            futures_lite::StreamExt::next(watcher),
        )
        .await
        {
            Ok(Some(Ok(message))) if *message == value => return interrupted,
            Ok(Some(Err(RecvError::Interrupted))) => interrupted = true,
            Ok(None) => panic!("the subscriber ended"),
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the latest topic never recovered"
        );
    }
}

/// The same stream's queue store on two handles (two processes, as far as Redis can tell).
async fn queue_pair(
    here: &Redis,
    there: &Redis,
    stream: &str,
) -> (RedisQueueStore<String>, RedisQueueStore<String>) {
    let open = |redis: &Redis| {
        let redis = redis.clone();
        let stream = stream.to_owned();
        async move {
            redis
                .queue_store::<String>(&stream, QueueOptions::default())
                .await
                .unwrap()
        }
    };
    (open(here).await, open(there).await)
}

/// Normal and pub/sub clients connected to node `node` now, but for `redis-cli` itself.
fn clients(cluster: &RedisCluster, node: usize) -> usize {
    let list = cluster.nodes[node].cli(&["CLIENT", "LIST"]);
    list.lines()
        .filter(|line| !line.contains("cmd=client|list") && !line.contains("flags=S"))
        .filter(|line| !line.contains("flags=M"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_on_every_shard_agree_across_processes_on_sharded_channels_and_few_connections() {
    let cluster = RedisCluster::start(3, 1);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    let here = Redis::connect_with(quick(&cluster.url())).await.unwrap();
    let there = Redis::connect_with(quick(&cluster.url())).await.unwrap();
    assert!(here.is_cluster());
    let baseline: Vec<usize> = primaries.iter().map(|&p| clients(&cluster, p)).collect();

    // Twenty topics of each kind, spread over the slots; at least one on every primary.
    let names: Vec<String> = (0..20).map(|n| format!("topic-{n}")).collect();
    for &primary in &primaries {
        assert!(
            names.iter().any(|name| cluster.primary_of(name) == primary),
            "a topic on every shard"
        );
    }
    let mut latest = Vec::new();
    let mut queues = Vec::new();
    for name in &names {
        let a: RedisStore<String> = here.data_store(name).await.unwrap();
        let b: RedisStore<String> = there.data_store(name).await.unwrap();
        let watcher = b.subscribe();
        latest.push((a, b, watcher));
        let stream = format!("{name}-q");
        let a = here
            .queue_store::<String>(&stream, QueueOptions::default())
            .await
            .unwrap();
        let b = there
            .queue_store::<String>(&stream, QueueOptions::default())
            .await
            .unwrap();
        let reader = b.subscribe();
        queues.push((a, b, reader));
    }
    for (n, (a, _, watcher)) in latest.iter_mut().enumerate() {
        a.try_submit(format!("v{n}")).unwrap();
        assert_eq!(next_value(watcher).await.0, format!("v{n}"));
    }
    for (n, (a, b, reader)) in queues.iter_mut().enumerate() {
        assert_eq!(a.epoch(), b.epoch(), "one epoch per stream, kept in Redis");
        for m in 0..3 {
            let position = a.submit(format!("e{n}.{m}")).await.unwrap();
            assert_eq!(next_value(reader).await, (format!("e{n}.{m}"), position));
        }
    }

    // Sharded: each channel is known only to the node of its slot, as a shard channel.
    let channel = &names[0];
    let owner = cluster.primary_of(channel);
    let shard = cluster.nodes[owner].cli(&["PUBSUB", "SHARDNUMSUB", channel]);
    assert!(shard.ends_with('2'), "two processes listen: {shard}");
    for &primary in &primaries {
        let plain = cluster.nodes[primary].cli(&["PUBSUB", "NUMSUB", channel]);
        assert!(plain.ends_with('0'), "no plain subscription: {plain}");
    }
    assert_eq!(
        cluster.cli(&["GET", &format!("{{{channel}}}:latest")]),
        "v0"
    );

    // Forty stores in each process, and each holds two connections per node: commands and
    // the subscription.
    for (&primary, before) in primaries.iter().zip(baseline) {
        let now = clients(&cluster, primary);
        assert!(
            now <= before + 4,
            "node {primary}: {now} clients, {before} before the stores"
        );
    }
    assert_eq!(here.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_other_programs_add_with_a_plain_xadd_reach_subscribers_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let redis = Redis::connect_with(quick(&cluster.url())).await.unwrap();
    let store = redis
        .queue_store::<String>("plain", QueueOptions::default())
        .await
        .unwrap();
    let mut reader = store.subscribe();
    // Announced: at once. Not announced (redis-cli XADD): at the reader's next look.
    let position = store.submit("announced".into()).await.unwrap();
    assert_eq!(
        next_value(&mut reader).await,
        ("announced".into(), position)
    );
    for n in 0..3 {
        cluster.cli(&["XADD", "plain", "*", "data", &format!("plain-{n}")]);
        let (text, at) = next_value(&mut reader).await;
        assert_eq!(text, format!("plain-{n}"));
        assert_eq!(at.offset(), position.offset() + 1 + n);
    }
    // An announcement by hand (any payload) has it read at once too.
    cluster.cli(&["XADD", "plain", "*", "data", "told"]);
    cluster.cli(&["SPUBLISH", "{plain}:added", "?"]);
    assert_eq!(next_value(&mut reader).await.0, "told");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_key_outside_its_channels_slot_is_refused_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let redis = Redis::connect_with(quick(&cluster.url())).await.unwrap();
    let refused = RedisStore::<String>::open_with_key(&redis, "prices", "elsewhere").await;
    assert!(matches!(refused, Err(ConnectError::Unsupported { .. })));
    let tagged = RedisStore::<String>::open_with_key(&redis, "{eu}prices", "{eu}latest").await;
    assert!(tagged.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_its_topics_resume_with_nothing_lost() {
    let mut cluster = RedisCluster::start(3, 1);
    let primaries = cluster.primaries();
    let victim = primaries[0];
    let other = primaries[1];
    let stream = name_on(&cluster, victim, "orders");
    let channel = name_on(&cluster, victim, "prices");
    let calm = name_on(&cluster, other, "calm");

    let here = Redis::connect_with(quick(&cluster.url())).await.unwrap();
    let there = Redis::connect_with(quick(&cluster.url())).await.unwrap();
    let (producer, consumer) = queue_pair(&here, &there, &stream).await;
    let (calm_producer, calm_consumer) = queue_pair(&here, &there, &calm).await;
    let publisher: RedisStore<String> = here.data_store(&channel).await.unwrap();
    let watched: RedisStore<String> = there.data_store(&channel).await.unwrap();
    let mut reader = consumer.subscribe();
    let mut calm_reader = calm_consumer.subscribe();
    let mut watcher = watched.subscribe();

    let epoch = producer.epoch();
    before_the_failover(&producer, &mut reader, &publisher, &mut watcher).await;
    cluster.wait_replicated(victim);

    cluster.nodes[victim].kill();
    // The other shards go on serving while the failed one is replaced.
    let calm_position = submit_eventually(&calm_producer, "meanwhile", PATIENCE * 2).await;
    assert_eq!(
        next_skipping_interruptions(&mut calm_reader).await,
        ("meanwhile".to_string(), calm_position)
    );
    eventually("a replica to take over", PATIENCE * 2, || {
        cluster.try_primary_of(&stream).is_some_and(|p| p != victim)
    })
    .await;

    after_the_failover(&producer, &mut reader, epoch).await;
    assert_eq!(consumer.epoch(), epoch);

    // The latest-value topic was interrupted (its subscription went with the node) and
    // recovers on the new primary.
    let interrupted = recovers(&publisher, &mut watcher, "new").await;
    assert!(interrupted, "the subscriber was told of the interruption");
    eventually("the key on the new primary", PATIENCE, || {
        cluster.cli(&["GET", &format!("{{{channel}}}:latest")]) == "new"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_stops_answering_without_closing_is_noticed_and_its_topics_recover() {
    // SIGSTOP: the connections stay open and nothing answers, as when a host vanishes.
    let cluster = RedisCluster::start(3, 1);
    let victim = cluster.primaries()[0];
    let channel = name_on(&cluster, victim, "silent");
    let stream = name_on(&cluster, victim, "silent-q");
    let here = Redis::connect_with(quick(&cluster.url())).await.unwrap();
    let there = Redis::connect_with(quick(&cluster.url())).await.unwrap();
    let publisher: RedisStore<String> = here.data_store(&channel).await.unwrap();
    let watched: RedisStore<String> = there.data_store(&channel).await.unwrap();
    let (producer, consumer) = queue_pair(&here, &there, &stream).await;
    let mut watcher = watched.subscribe();
    let mut reader = consumer.subscribe();
    publisher.try_submit("old".into()).unwrap();
    assert_eq!(next_value(&mut watcher).await.0, "old");
    let first = producer.submit("first".into()).await.unwrap();
    assert_eq!(next_value(&mut reader).await, ("first".into(), first));
    cluster.wait_replicated(victim);

    cluster.stop(victim);
    eventually("the replica to take over", PATIENCE * 2, || {
        cluster.try_primary_of(&stream).is_some_and(|p| p != victim)
    })
    .await;

    let second = submit_eventually(&producer, "second", PATIENCE * 2).await;
    assert_eq!(
        next_skipping_interruptions(&mut reader).await,
        ("second".to_string(), second)
    );
    let interrupted = recovers(&publisher, &mut watcher, "new").await;
    assert!(interrupted, "the subscriber was told of the interruption");
    cluster.resume(victim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_replica_that_was_behind_changes_the_identity_and_tells_subscribers() {
    let mut cluster = RedisCluster::start(3, 1);
    let victim = cluster.primaries()[0];
    let stream = name_on(&cluster, victim, "behind");
    let here = Redis::connect_with(quick(&cluster.url())).await.unwrap();
    let there = Redis::connect_with(quick(&cluster.url())).await.unwrap();
    let (producer, consumer) = queue_pair(&here, &there, &stream).await;
    let mut reader = consumer.subscribe();
    for n in 0..5 {
        let text = format!("kept-{n}");
        let position = producer.submit(text.clone()).await.unwrap();
        assert_eq!(next_value(&mut reader).await, (text, position));
    }
    cluster.wait_replicated(victim);
    let old = producer.epoch();

    // The replica stops (SIGSTOP) and its link is cut; the primary takes three more
    // entries, then dies: the replica, going on, never had them.
    let replica = cluster.replica_of(victim);
    cluster.stop(replica);
    cluster.nodes[victim].cli(&["CLIENT", "KILL", "TYPE", "replica"]);
    for n in 0..3 {
        let text = format!("lost-{n}");
        let position = producer.submit(text.clone()).await.unwrap();
        assert_eq!(next_value(&mut reader).await, (text, position));
    }
    cluster.nodes[victim].kill();
    cluster.resume(replica);

    eventually("the replica to take over", PATIENCE * 2, || {
        cluster.try_primary_of(&stream).is_some_and(|p| p != victim)
    })
    .await;
    let position = submit_eventually(&producer, "next", PATIENCE * 2).await;
    // Both processes moved to a new epoch; the subscriber was told its stream was reset.
    assert_ne!(position.epoch(), old);
    eventually("both processes in the new epoch", PATIENCE, || {
        producer.epoch() == consumer.epoch() && consumer.epoch() != old
    })
    .await;
    let mut reset = false;
    loop {
        match next(&mut reader).await {
            Err(RecvError::Reset {
                reason: ResetReason::Lost,
            }) => reset = true,
            Err(RecvError::Interrupted) => {}
            Ok(message) => {
                assert_eq!((*message).clone(), "next");
                assert_eq!(message.position(), position);
                break;
            }
            Err(e) => panic!("unexpected news: {e}"),
        }
    }
    assert!(reset, "the subscriber was told entries were lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_the_stores_follow_the_primary_through_a_failover() {
    let mut setup = Sentinels::start();
    let here = Redis::connect_with(quick(&setup.url())).await.unwrap();
    let there = Redis::connect_with(quick(&setup.url())).await.unwrap();
    assert!(here.address().contains(&setup.primary.port().to_string()));
    let (producer, consumer) = queue_pair(&here, &there, "orders").await;
    let publisher: RedisStore<String> = here.data_store("prices").await.unwrap();
    let watched: RedisStore<String> = there.data_store("prices").await.unwrap();
    let mut reader = consumer.subscribe();
    let mut watcher = watched.subscribe();
    let epoch = producer.epoch();
    before_the_failover(&producer, &mut reader, &publisher, &mut watcher).await;
    let replica_port = setup.replica.port();
    eventually("the replica to catch up", PATIENCE, || {
        setup.replica.cli(&["XLEN", "orders"]) == "10"
    })
    .await;

    setup.primary.kill();
    eventually("the sentinels to promote the replica", PATIENCE * 2, || {
        setup.primary_port() == replica_port
    })
    .await;
    after_the_failover(&producer, &mut reader, epoch).await;
    assert_eq!(setup.replica.cli(&["XLEN", "orders"]), "20");

    recovers(&publisher, &mut watcher, "new").await;
    assert_eq!(setup.replica.cli(&["GET", "prices:latest"]), "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_latest_topics_all_recover_after_a_primary_is_killed() {
    let mut cluster = RedisCluster::start(3, 1);
    let victim = cluster.primaries()[0];
    let here = Redis::connect_with(quick(&cluster.url())).await.unwrap();
    let there = Redis::connect_with(quick(&cluster.url())).await.unwrap();
    let mut publishers = Vec::new();
    let mut watched = Vec::new();
    for n in 0..1000 {
        let channel = format!("many-{n}");
        publishers.push(here.data_store::<String>(&channel).await.unwrap());
        watched.push(there.data_store::<String>(&channel).await.unwrap());
    }
    let on_victim = watched
        .iter()
        .filter(|store| cluster.primary_of(store.channel()) == victim)
        .count();
    assert!(
        on_victim > 100,
        "a third of the topics on the victim: {on_victim}"
    );
    for publisher in &publishers {
        publisher.try_submit("before".into()).unwrap();
    }
    eventually("every topic to show its value", PATIENCE, || {
        watched
            .iter()
            .all(|s| s.current().is_some_and(|m| *m == "before"))
    })
    .await;

    cluster.nodes[victim].kill();
    eventually("a replica to take over", PATIENCE * 2, || {
        cluster.primaries().len() == 3
    })
    .await;
    let started = std::time::Instant::now();
    // Published until every topic shows it: the publishers' own retries cover the failover.
    eventually("every topic to recover", PATIENCE * 2, || {
        for publisher in &publishers {
            if publisher.current().is_none_or(|m| *m != "after") {
                publisher.try_submit("after".into()).unwrap();
            }
        }
        watched
            .iter()
            .all(|s| s.current().is_some_and(|m| *m == "after"))
    })
    .await;
    println!(
        "1,000 latest topics ({on_victim} on the killed primary) recovered {:?} after the failover",
        started.elapsed()
    );
    assert!(
        watched.iter().any(|s| s.interruptions() > 0),
        "subscribers were told of the interruption"
    );
}
