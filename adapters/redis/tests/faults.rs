//! What happens when Redis misbehaves or other programs use it: connections killed, the
//! server restarted, external publishers, undecodable messages, several processes.

mod reading;
mod support;

use std::time::Duration;

use futures_lite::StreamExt;
use reading::{PATIENCE, next, next_value, quick};
use storecast::{Position, RecvError, ResetReason, Start, Store, SubmitError};
use storecast_redis::{ConnectError, QueueOptions, Redis, RedisStore};
use support::{RedisServer, eventually};

/// Publishes `text` with redis-cli until a subscriber of `store` has it (a channel keeps
/// nothing for a subscription that is still being re-established).
async fn publish_until_heard(server: &RedisServer, store: &RedisStore<String>, text: &str) {
    let mut subscriber = store.subscribe_from(
        store
            .current()
            .map_or(Start::Now, |m| Start::After(m.position())),
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        server.cli(&["PUBLISH", store.channel(), text]);
        match tokio::time::timeout(Duration::from_millis(200), subscriber.next()).await {
            Ok(Some(Ok(message))) if *message == text => return,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "`{text}` never arrived"
            ),
        }
    }
}

#[tokio::test]
async fn unreachable_redis_is_a_clear_error_at_construction() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = RedisStore::<String>::connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .expect_err("nothing listens there");
    assert!(
        matches!(
            error,
            ConnectError::Unreachable { .. } | ConnectError::Timeout { .. }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains(&port.to_string()), "{error}");

    let error = Redis::connect("http://example.com")
        .await
        .expect_err("not a Redis URL");
    assert!(matches!(error, ConnectError::InvalidUrl(_)), "{error:?}");
}

#[tokio::test]
async fn the_password_never_appears_in_errors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = Redis::connect(&format!("redis://user:hunter2@127.0.0.1:{port}"))
        .await
        .expect_err("nothing listens there");
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_publish_reaches_every_subscriber_on_the_tornadose_channel() {
    let server = RedisServer::start();
    let store = RedisStore::<String>::connect(&server.url()).await.unwrap();
    assert_eq!(store.channel(), "tornadose");
    let mut subscribers: Vec<_> = (0..3).map(|_| store.subscribe()).collect();
    assert_eq!(
        server.cli(&["PUBLISH", "tornadose", "hello"]),
        "1",
        "one subscription per process"
    );
    for subscriber in &mut subscribers {
        assert_eq!(next_value(subscriber).await.0, "hello");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_opened_later_starts_from_the_latest_value_key() {
    let server = RedisServer::start();
    let redis = Redis::connect(&server.url()).await.unwrap();
    let first = redis.data_store::<String>("prices").await.unwrap();
    let mut watcher = first.subscribe();
    first.try_submit("42".to_string()).unwrap();
    assert_eq!(next_value(&mut watcher).await.0, "42");
    eventually("the key to be set", PATIENCE, || {
        server.cli(&["GET", "prices:latest"]) == "42"
    })
    .await;

    // Many times: the value must be there as soon as the open returns (it once came a
    // moment later, from the subscription's thread).
    for _ in 0..20 {
        let later = redis.data_store::<String>("prices").await.unwrap();
        assert_eq!(later.current().map(|m| (*m).clone()).as_deref(), Some("42"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_submitted_in_one_process_reaches_another_once() {
    let server = RedisServer::start();
    // Two handles: two processes as far as Redis can tell.
    let here = Redis::connect(&server.url())
        .await
        .unwrap()
        .data_store::<String>("news")
        .await
        .unwrap();
    let there = Redis::connect(&server.url())
        .await
        .unwrap()
        .data_store::<String>("news")
        .await
        .unwrap();
    let mut local = here.subscribe();
    let mut remote = there.subscribe();
    here.try_submit("one".to_string()).unwrap();
    assert_eq!(next_value(&mut remote).await.0, "one");
    assert_eq!(next_value(&mut local).await.0, "one");
    // Its own echo is not delivered a second time.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), local.next())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_publishing_at_once_end_with_the_same_value() {
    let server = RedisServer::start();
    let a = Redis::connect(&server.url())
        .await
        .unwrap()
        .data_store::<String>("race")
        .await
        .unwrap();
    let b = Redis::connect(&server.url())
        .await
        .unwrap()
        .data_store::<String>("race")
        .await
        .unwrap();
    let (ra, rb) = (a.clone(), b.clone());
    let publish_a = tokio::spawn(async move {
        for n in 0..500 {
            ra.try_submit(format!("a{n}")).unwrap();
            tokio::task::yield_now().await;
        }
    });
    let publish_b = tokio::spawn(async move {
        for n in 0..500 {
            rb.try_submit(format!("b{n}")).unwrap();
            tokio::task::yield_now().await;
        }
    });
    publish_a.await.unwrap();
    publish_b.await.unwrap();
    let value = |s: &RedisStore<String>| s.current().map(|m| (*m).clone());
    eventually("both processes to agree with the key", PATIENCE, || {
        let key = server.cli(&["GET", "race:latest"]);
        value(&a).as_deref() == Some(key.as_str()) && value(&b).as_deref() == Some(key.as_str())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_skipped_and_counted() {
    let server = RedisServer::start();
    let store = RedisStore::<String>::connect(&server.url()).await.unwrap();
    let mut subscriber = store.subscribe();
    // Not UTF-8: redis-cli sends the bytes of the escape.
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "PUBLISH", "tornadose"])
        .arg(std::ffi::OsStr::new(unsafe_free_invalid_utf8()))
        .output()
        .expect("redis-cli");
    assert!(output.status.success());
    eventually("the bad message to be counted", PATIENCE, || {
        store.undecodable() == 1
    })
    .await;
    server.cli(&["PUBLISH", "tornadose", "fine"]);
    assert_eq!(next_value(&mut subscriber).await.0, "fine");
    assert_eq!(store.received(), 2);
}

/// An argument that is not UTF-8.
fn unsafe_free_invalid_utf8() -> &'static std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(b"\xff\xfe")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_subscription_is_reported_and_receiving_goes_on() {
    let server = RedisServer::start();
    let redis = Redis::connect_with(quick(&server.url())).await.unwrap();
    let store = redis.data_store::<String>("tornadose").await.unwrap();
    let mut subscriber = store.subscribe();
    server.cli(&["PUBLISH", "tornadose", "before"]);
    assert_eq!(next_value(&mut subscriber).await.0, "before");

    assert_eq!(server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "1");
    assert_eq!(
        next(&mut subscriber).await.unwrap_err(),
        RecvError::Interrupted
    );
    assert_eq!(store.interruptions(), 1);

    publish_until_heard(&server, &store, "after").await;
    assert_eq!(next_value(&mut subscriber).await.0, "after");
    assert!(store.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_reported_and_both_stores_carry_on() {
    let mut server = RedisServer::start();
    let redis = Redis::connect_with(quick(&server.url())).await.unwrap();
    let latest = redis.data_store::<String>("tornadose").await.unwrap();
    let queue = redis
        .queue_store::<String>("jobs", QueueOptions::default())
        .await
        .unwrap();
    let mut latest_subscriber = latest.subscribe();
    let mut queue_subscriber = queue.subscribe();
    for n in 1..=3 {
        queue.submit(format!("job {n}")).await.unwrap();
    }

    server.restart();

    assert_eq!(
        next(&mut latest_subscriber).await.unwrap_err(),
        RecvError::Interrupted
    );
    publish_until_heard(&server, &latest, "back").await;
    assert_eq!(next_value(&mut latest_subscriber).await.0, "back");

    // Submits fail while the command connection is re-established, then succeed.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut n = 4;
    while n <= 6 {
        match queue.submit(format!("job {n}")).await {
            Ok(_) => n += 1,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "submits never recovered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    for n in 1..=6 {
        let (value, position) = next_value(&mut queue_subscriber).await;
        assert_eq!(
            (value.as_str(), position),
            (format!("job {n}").as_str(), Position::new(queue.epoch(), n))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_loses_nothing_when_its_connections_are_killed_mid_stream() {
    const COUNT: u64 = 2_000;
    let server = RedisServer::start();
    let redis = Redis::connect_with(quick(&server.url())).await.unwrap();
    let queue = redis
        .queue_store::<String>("orders", QueueOptions::default().capacity(64))
        .await
        .unwrap();
    let mut subscriber = queue.subscribe();
    // An external program adds the entries, so that killing this process's connections
    // does not stop the flow.
    let url = server.url();
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_connection().unwrap();
    let producer_id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query(&mut connection)
        .unwrap();
    let producer = tokio::task::spawn_blocking(move || {
        for n in 1..=COUNT {
            let _: String = redis::cmd("XADD")
                .arg("orders")
                .arg("*")
                .arg("data")
                .arg(format!("order {n}"))
                .query(&mut connection)
                .unwrap();
        }
    });
    let killer = async {
        let mut killed = 0;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Every normal client but the producer's (and redis-cli's) is this process's.
            let clients = server.cli(&["CLIENT", "LIST", "TYPE", "normal"]);
            let ids = clients
                .lines()
                .filter_map(|line| {
                    line.strip_prefix("id=")?
                        .split(' ')
                        .next()?
                        .parse::<i64>()
                        .ok()
                })
                .filter(|id| *id != producer_id);
            for id in ids {
                let id = id.to_string();
                killed += server
                    .cli(&["CLIENT", "KILL", "ID", &id, "SKIPME", "yes"])
                    .parse::<u32>()
                    .unwrap();
            }
        }
        killed
    };
    let reader = async {
        for n in 1..=COUNT {
            let (value, position) = next_value(&mut subscriber).await;
            assert_eq!(value, format!("order {n}"));
            assert_eq!(position, Position::new(queue.epoch(), n));
        }
    };
    let (killed, ()) = futures_lite::future::zip(killer, reader).await;
    producer.await.unwrap();
    assert!(killed >= 3, "only {killed} connections were killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_xadd_reaches_queue_subscribers_and_positions_agree_across_processes() {
    let server = RedisServer::start();
    let first = Redis::connect(&server.url()).await.unwrap();
    let second = Redis::connect(&server.url()).await.unwrap();
    let here = first
        .queue_store::<String>("events", QueueOptions::default())
        .await
        .unwrap();
    let mut subscriber = here.subscribe();
    let p1 = here.submit("one".to_string()).await.unwrap();
    server.cli(&["XADD", "events", "*", "data", "two"]);
    assert_eq!(next_value(&mut subscriber).await, ("one".to_string(), p1));
    let (two, p2) = next_value(&mut subscriber).await;
    assert_eq!(
        (two.as_str(), p2),
        ("two", Position::new(p1.epoch(), p1.offset() + 1))
    );

    // Another process resumes after `one` by position, as an SSE client with
    // Last-Event-ID would on another hub.
    let there = second
        .queue_store::<String>("events", QueueOptions::default())
        .await
        .unwrap();
    let mut resumed = there.subscribe_from(Start::After(p1));
    assert_eq!(next_value(&mut resumed).await, ("two".to_string(), p2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_a_trimmed_position_reports_exactly_how_many_were_lost() {
    let server = RedisServer::start();
    let redis = Redis::connect(&server.url()).await.unwrap();
    let options = QueueOptions::default().max_len(10).exact_trim(true);
    let queue = redis.queue_store::<String>("short", options).await.unwrap();
    for n in 1..=25 {
        queue.submit(format!("m{n}")).await.unwrap();
    }
    let mut resumed = queue.subscribe_from(Start::After(Position::new(queue.epoch(), 5)));
    assert_eq!(
        next(&mut resumed).await.unwrap_err(),
        RecvError::Lagged { missed: 10 }
    );
    for n in 16..=25 {
        assert_eq!(
            next_value(&mut resumed).await,
            (format!("m{n}"), Position::new(queue.epoch(), n))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_a_stream_is_a_clear_error() {
    let server = RedisServer::start();
    server.cli(&["SET", "not-a-stream", "x"]);
    let redis = Redis::connect(&server.url()).await.unwrap();
    let error = redis
        .queue_store::<String>("not-a-stream", QueueOptions::default())
        .await
        .expect_err("a string key cannot host a queue");
    assert!(
        matches!(error, ConnectError::Unsupported { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("WRONGTYPE"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_while_the_reader_waits_are_reported_exactly() {
    let server = RedisServer::start();
    let redis = Redis::connect(&server.url()).await.unwrap();
    let options = QueueOptions::default()
        .capacity(4)
        .max_len(10)
        .exact_trim(true);
    let queue = redis
        .queue_store::<String>("trimmed", options)
        .await
        .unwrap();
    let mut subscriber = queue.subscribe();
    // Another program adds 30 entries keeping 10, while the subscriber (and so the
    // reader, under Overflow::Wait) is stuck after the first 4.
    for n in 1..=30 {
        let n = n.to_string();
        server.cli(&[
            "XADD",
            "trimmed",
            "MAXLEN",
            "=",
            "10",
            "*",
            "data",
            &format!("m{n}"),
        ]);
    }
    let mut expected = 1;
    let mut lagged = false;
    while expected <= 30 {
        match next(&mut subscriber).await {
            Ok(message) => {
                assert_eq!(
                    (message.as_str(), message.position()),
                    (
                        format!("m{expected}").as_str(),
                        Position::new(queue.epoch(), expected)
                    )
                );
                expected += 1;
            }
            Err(RecvError::Lagged { missed }) => {
                assert!(expected > 4, "the first four were in memory already");
                lagged = true;
                expected += missed;
                assert_eq!(expected, 21, "after the gap comes the oldest entry kept");
            }
            Err(e) => panic!("unexpected `{e}`"),
        }
    }
    assert!(lagged, "10 of 30 kept, yet nothing was reported lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_url_is_used_and_a_wrong_one_is_a_clear_error() {
    let server = RedisServer::start_with_password("s3cret");
    let store = RedisStore::<String>::connect(&server.url()).await.unwrap();
    let mut subscriber = store.subscribe();
    server.cli(&["PUBLISH", "tornadose", "authenticated"]);
    assert_eq!(next_value(&mut subscriber).await.0, "authenticated");

    let wrong = format!("redis://:wrong@127.0.0.1:{}", server.port());
    let error = Redis::connect(&wrong).await.expect_err("a wrong password");
    assert!(
        matches!(error, ConnectError::Unreachable { .. }),
        "{error:?}"
    );
    // RESP3's HELLO says WRONGPASS; RESP2's AUTH said "authentication failed".
    let message = error.to_string().to_lowercase();
    assert!(
        message.contains("wrongpass") || message.contains("authentication failed"),
        "{message}"
    );
    assert!(!message.contains("wrong@"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_reconnecting_with_its_last_position_misses_nothing() {
    const COUNT: u64 = 3_000;
    let server = RedisServer::start();
    let redis = Redis::connect(&server.url()).await.unwrap();
    let queue = redis
        .queue_store::<String>("resumed", QueueOptions::default())
        .await
        .unwrap();
    let url = server.url();
    let producer = tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(url).unwrap();
        let mut connection = client.get_connection().unwrap();
        for n in 1..=COUNT {
            let _: String = redis::cmd("XADD")
                .arg("resumed")
                .arg("*")
                .arg("data")
                .arg(format!("m{n}"))
                .query(&mut connection)
                .unwrap();
        }
    });
    // Like an SSE client that drops its connection every few events and comes back with
    // Last-Event-ID, racing the entries as they arrive.
    let mut last = Position::new(queue.epoch(), 0);
    let mut reconnections = 0;
    while last.offset() < COUNT {
        let mut subscriber = queue.subscribe_from(Start::After(last));
        for _ in 0..7 {
            if last.offset() == COUNT {
                break;
            }
            let (value, position) = next_value(&mut subscriber).await;
            assert_eq!(
                position.offset(),
                last.offset() + 1,
                "after {last} came {position} ({value}) at reconnection {reconnections}"
            );
            assert_eq!(value, format!("m{}", position.offset()));
            last = position;
        }
        reconnections += 1;
    }
    producer.await.unwrap();
    assert!(reconnections > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_the_memory_ring_left_behind_gets_the_rest_from_the_stream() {
    let server = RedisServer::start();
    let redis = Redis::connect(&server.url()).await.unwrap();
    let options = QueueOptions::default()
        .capacity(4)
        .overflow(storecast::Overflow::DropOldest);
    let queue = redis
        .queue_store::<String>("behind", options)
        .await
        .unwrap();
    let mut slow = queue.subscribe();
    for n in 1..=50 {
        queue.submit(format!("m{n}")).await.unwrap();
    }
    // Only 4 are kept in memory, but the stream has all 50: nothing is reported lost.
    for n in 1..=50 {
        assert_eq!(
            next_value(&mut slow).await,
            (format!("m{n}"), Position::new(queue.epoch(), n))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_after_a_position_the_stream_never_reached_is_reset_to_the_oldest() {
    let server = RedisServer::start();
    let redis = Redis::connect(&server.url()).await.unwrap();
    let queue = redis
        .queue_store::<String>("short-lived", QueueOptions::default())
        .await
        .unwrap();
    for n in 1..=3 {
        queue.submit(format!("m{n}")).await.unwrap();
    }
    let ahead = Position::new(queue.epoch(), 10_000);
    let mut from_elsewhere = queue.subscribe_from(Start::After(ahead));
    assert_eq!(
        next(&mut from_elsewhere).await.unwrap_err(),
        RecvError::Reset {
            reason: ResetReason::Ahead
        }
    );
    for n in 1..=3 {
        assert_eq!(
            next_value(&mut from_elsewhere).await,
            (format!("m{n}"), Position::new(queue.epoch(), n))
        );
    }
    let p4 = queue.submit("m4".to_string()).await.unwrap();
    assert_eq!(
        next_value(&mut from_elsewhere).await,
        ("m4".to_string(), p4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_spans_many_reads_delivers_everything_once_in_order() {
    let server = RedisServer::start();
    let redis = Redis::connect(&server.url()).await.unwrap();
    let options = QueueOptions::default().batch(10);
    let queue = redis.queue_store::<String>("long", options).await.unwrap();
    for n in 1..=95 {
        queue.submit(format!("m{n}")).await.unwrap();
    }
    let mut resumed = queue.subscribe_from(Start::After(Position::new(queue.epoch(), 3)));
    let mut oldest = queue.subscribe_from(Start::Oldest);
    for n in 1..=95 {
        assert_eq!(
            next_value(&mut oldest).await,
            (format!("m{n}"), Position::new(queue.epoch(), n))
        );
        if n > 3 {
            assert_eq!(
                next_value(&mut resumed).await,
                (format!("m{n}"), Position::new(queue.epoch(), n))
            );
        }
    }
    let p96 = queue.submit("m96".to_string()).await.unwrap();
    assert_eq!(next_value(&mut resumed).await, ("m96".to_string(), p96));
    assert_eq!(next_value(&mut oldest).await, ("m96".to_string(), p96));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_stores_of_one_handle_share_one_subscription_connection() {
    let server = RedisServer::start();
    let redis = Redis::connect_with(quick(&server.url())).await.unwrap();
    let mut stores: Vec<RedisStore<String>> = Vec::new();
    for channel in ["one", "two", "three"] {
        stores.push(redis.data_store(channel).await.unwrap());
    }
    let pubsub_clients = || {
        server
            .cli(&["CLIENT", "LIST", "TYPE", "pubsub"])
            .lines()
            .filter(|l| l.starts_with("id="))
            .count()
    };
    assert_eq!(pubsub_clients(), 1);
    let mut subscribers: Vec<_> = stores.iter().map(|s| s.subscribe()).collect();
    for (store, subscriber) in stores.iter().zip(&mut subscribers) {
        server.cli(&[
            "PUBLISH",
            store.channel(),
            &format!("to {}", store.channel()),
        ]);
        assert_eq!(
            next_value(subscriber).await.0,
            format!("to {}", store.channel())
        );
    }

    // One connection lost: every store is told, and all of them receive again.
    assert_eq!(server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "1");
    for subscriber in &mut subscribers {
        assert_eq!(next(subscriber).await.unwrap_err(), RecvError::Interrupted);
    }
    for store in &stores {
        publish_until_heard(&server, store, "again").await;
    }
    assert_eq!(pubsub_clients(), 1);

    // A store that goes stops listening, even when it goes outside any runtime.
    drop(subscribers);
    let gone = stores.into_iter().next().unwrap();
    std::thread::spawn(move || drop(gone)).join().unwrap();
    eventually("`one` to be unsubscribed", PATIENCE, || {
        server.cli(&["PUBSUB", "NUMSUB", "one"]).lines().nth(1) == Some("0")
    })
    .await;
}

#[tokio::test]
async fn the_first_submit_after_the_server_closed_an_idle_connection_succeeds() {
    // What load balancers and managed Redis do to idle connections: close them. The next
    // submit must not be the one that finds out.
    let server = RedisServer::start();
    let redis = Redis::connect_with(quick(&server.url())).await.unwrap();
    let queue = redis
        .queue_store::<String>("idle", QueueOptions::default())
        .await
        .unwrap();
    queue.submit("before".to_owned()).await.unwrap();
    for round in 0..3 {
        let killed: u32 = server
            .cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            .parse()
            .unwrap();
        assert!(killed >= 1, "round {round}: nothing to kill");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let submitted = queue.submit(format!("after {round}")).await;
        assert!(
            submitted.is_ok(),
            "round {round}: the first submit after the close failed: {submitted:?}"
        );
    }
    assert_eq!(server.cli(&["XLEN", "idle"]), "4", "each submit added once");
}

/// Keeps Redis busy with a script for 2 to 3 s (under its 5 s limit, after which it
/// would answer BUSY): every command waits, then runs.
fn keep_busy(server: &RedisServer) -> std::thread::JoinHandle<()> {
    let url = server.url();
    std::thread::spawn(move || {
        let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
        let _: () = redis::cmd("EVAL")
            .arg(
                "local s = tonumber(redis.call('TIME')[1]) \
                 while tonumber(redis.call('TIME')[1]) - s < 3 do end",
            )
            .arg(0)
            .query(&mut connection)
            .unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_redis_answers_too_late_for_is_outcome_unknown_and_a_keyed_one_adds_once() {
    let server = RedisServer::start();
    // Answers within 1 s, or the outcome is unknown.
    let redis = Redis::connect_with(quick(&server.url())).await.unwrap();
    let queue = redis
        .queue_store::<String>("busy", QueueOptions::default())
        .await
        .unwrap();
    let before = queue.submit("before".to_owned()).await.unwrap();

    // Redis busy for 3 s (under its 5 s limit, after which it would answer BUSY): every
    // command waits, then runs.
    let busy = keep_busy(&server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (unkeyed, keyed) = futures_lite::future::zip(
        queue.submit("unkeyed".to_owned()),
        queue.submit_with_key("keyed".to_owned(), "request-1"),
    )
    .await;
    busy.join().unwrap();
    // Not "not submitted": it was.
    assert!(
        matches!(unkeyed, Err(SubmitError::OutcomeUnknown(_))),
        "{unkeyed:?}"
    );
    // The store retried under the key until Redis answered, and the key kept the retries
    // from adding it again.
    let (keyed, _) = keyed.expect("a keyed submit retries until Redis answers");
    assert_eq!(
        queue
            .submit_with_key("keyed".to_owned(), "request-1")
            .await
            .unwrap(),
        (keyed, false),
        "a client's retry gets the first position back, and adds nothing"
    );
    let entries = server.cli(&["XRANGE", "busy", "-", "+"]);
    assert_eq!(server.cli(&["XLEN", "busy"]), "3", "{entries}");
    assert_eq!(entries.matches("keyed").count(), 2, "{entries}"); // "unkeyed" and "keyed"
    assert!(keyed.offset() > before.offset());
    // A retry is not a loss: nobody was moved to a new epoch.
    assert_eq!(
        (keyed.epoch(), queue.epoch()),
        (before.epoch(), before.epoch())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_submit_says_what_redis_did_with_the_value() {
    let mut server = RedisServer::start();
    // Answers within 1 s, or the outcome is unknown.
    let redis = Redis::connect_with(quick(&server.url())).await.unwrap();
    let store = redis.data_store::<String>("said").await.unwrap();
    // A submit returns once Redis has the value.
    for n in 0..50 {
        store.submit(format!("v{n}")).await.unwrap();
        assert_eq!(server.cli(&["GET", "said:latest"]), format!("v{n}"));
    }

    // Redis busy for 3 s: no answer in time, so the outcome is unknown; the value stays
    // current here and is published once Redis answers.
    let busy = keep_busy(&server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = store.submit("late".to_owned()).await;
    assert!(
        matches!(&late, Err(SubmitError::OutcomeUnknown(value)) if value == "late"),
        "{late:?}"
    );
    busy.join().unwrap();
    eventually("the late value to reach Redis", PATIENCE, || {
        server.cli(&["GET", "said:latest"]) == "late"
    })
    .await;
    store.submit("answered".to_owned()).await.unwrap();

    // Redis gone: the first publish fails (outcome unknown: it is tried again), and from
    // then on a submit is refused at once, leaving the current value as it was.
    server.kill();
    let lost = store.submit("lost".to_owned()).await;
    assert!(
        matches!(lost, Err(SubmitError::OutcomeUnknown(_))),
        "{lost:?}"
    );
    let refused = store.submit("refused".to_owned()).await;
    assert!(
        matches!(&refused, Err(SubmitError::Unavailable(value)) if value == "refused"),
        "{refused:?}"
    );
    assert_eq!(*store.current().unwrap(), "lost");
    // Away for a while: the failures while it is away do not make the store give the
    // value up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart();
    // The failed value is published when Redis is back; submits are taken again.
    eventually("the store to publish again", PATIENCE, || {
        server.cli(&["GET", "said:latest"]) == "lost"
    })
    .await;
    store.submit("back".to_owned()).await.unwrap();
    assert_eq!(server.cli(&["GET", "said:latest"]), "back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_value_redis_can_never_take_is_given_up_and_submits_go_on() {
    let server = RedisServer::start();
    // Redis drops the connection of a client whose query is over 1 MB, without a reply.
    server.cli(&["CONFIG", "SET", "client-query-buffer-limit", "1mb"]);
    let redis = Redis::connect_with(quick(&server.url())).await.unwrap();
    let store = redis.data_store::<String>("huge").await.unwrap();
    store.submit("small".to_owned()).await.unwrap();

    let huge = store.submit("x".repeat(2 << 20)).await;
    assert!(
        matches!(huge, Err(SubmitError::OutcomeUnknown(_))),
        "{huge:?}"
    );
    // Tried again while Redis answers a PING: given up, not retried for ever (which kept
    // every later submit refused as Unavailable).
    eventually("the value to be given up", PATIENCE, || {
        store.is_reachable()
    })
    .await;
    store.submit("after".to_owned()).await.unwrap();
    assert_eq!(server.cli(&["GET", "huge:latest"]), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_store_opened_while_redis_comes_back_waits_for_it() {
    let mut server = RedisServer::start();
    let redis = Redis::connect_with(quick(&server.url())).await.unwrap();
    let first = redis.data_store::<String>("first").await.unwrap();
    server.kill();
    eventually("the subscription to notice", PATIENCE, || {
        !first.is_connected()
    })
    .await;
    let opening = tokio::spawn({
        let redis = redis.clone();
        async move { redis.data_store::<String>("second").await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    let opened = opening.await.unwrap();
    assert!(opened.is_ok(), "opening failed at once: {opened:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_value_never_goes_back_while_its_subscription_is_killed_over_and_over() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let server = RedisServer::start();
    let redis = Redis::connect_with(quick(&server.url())).await.unwrap();
    let store = redis.data_store::<String>("counter").await.unwrap();
    let mut subscriber = store.subscribe();
    // Another program publishes increasing integers the way the store does (SET of the key
    // and PUBLISH in one script), as fast as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = std::thread::spawn({
        let (url, stop) = (server.url(), Arc::clone(&stop));
        move || {
            let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let _: i64 = redis::cmd("EVAL")
                    .arg("redis.call('SET', KEYS[1], ARGV[2]) return redis.call('PUBLISH', ARGV[1], ARGV[2])")
                    .arg(1)
                    .arg("counter:latest")
                    .arg("counter")
                    .arg(n.to_string())
                    .query(&mut connection)
                    .unwrap();
            }
            n
        }
    });
    let killer = async {
        let mut killed = 0;
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            killed += server
                .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
                .parse::<u32>()
                .unwrap_or(0);
        }
        stop.store(true, Ordering::Relaxed);
        killed
    };
    let reader = async {
        let (mut seen, mut back, mut twice, mut interrupted) = (0u64, Vec::new(), 0, 0);
        loop {
            match tokio::time::timeout(Duration::from_secs(2), subscriber.next()).await {
                Ok(Some(Ok(message))) => {
                    let n: u64 = message.parse().unwrap();
                    if n < seen {
                        back.push((seen, n));
                    } else if n == seen {
                        twice += 1;
                    }
                    seen = seen.max(n);
                }
                Ok(Some(Err(RecvError::Interrupted))) => interrupted += 1,
                Ok(other) => panic!("unexpected {other:?}"),
                // Quiet for 2 s: the publisher has stopped and everything is in.
                Err(_) if stop.load(Ordering::Relaxed) => return (seen, back, twice, interrupted),
                Err(_) => {}
            }
        }
    };
    let (killed, (seen, back, twice, interrupted)) =
        futures_lite::future::zip(killer, reader).await;
    let last = publisher.join().unwrap();
    assert!(killed >= 20, "only {killed} kills");
    assert!(interrupted >= 1);
    assert_eq!(back, [], "the value went back (newest seen, then older)");
    assert_eq!(twice, 0, "a value was shown twice");
    assert_eq!(seen, last, "did not end with the last value");
    assert_eq!(*store.current().unwrap(), last.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_submitted_while_redis_is_away_is_not_followed_by_the_older_key() {
    let mut server = RedisServer::start();
    let redis = Redis::connect_with(quick(&server.url())).await.unwrap();
    let store = redis.data_store::<String>("mine").await.unwrap();
    let mut subscriber = store.subscribe();
    store.try_submit("v1".to_owned()).unwrap();
    eventually("v1 in the key", PATIENCE, || {
        server.cli(&["GET", "mine:latest"]) == "v1"
    })
    .await;
    server.cli(&["SAVE"]);
    server.kill();
    eventually("the store to notice", PATIENCE, || !store.is_connected()).await;
    // Shown here at once; published once Redis is back.
    store.try_submit("v2".to_owned()).unwrap();
    server.restart(); // with v1 in the key, from the snapshot
    eventually("v2 in the key", PATIENCE, || {
        server.cli(&["GET", "mine:latest"]) == "v2"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    store.close();
    let mut seen = Vec::new();
    while let Some(item) = subscriber.next().await {
        if let Ok(message) = item {
            seen.push(message.to_string());
        }
    }
    assert_eq!(seen.last().map(String::as_str), Some("v2"), "{seen:?}");
    let first_v2 = seen.iter().position(|v| v == "v2").unwrap();
    assert!(
        seen[first_v2..].iter().all(|v| v == "v2"),
        "the key's older value came after v2: {seen:?}"
    );
}
