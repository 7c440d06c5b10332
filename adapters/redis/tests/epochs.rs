//! A queue's positions mean the same in every process and across restarts, and when Redis
//! loses entries (a crash without `appendfsync always`, a failover to a replica that was
//! behind) every process moves to a new epoch together: live subscribers are told, a
//! client holding an old id is told, and nobody is skipped silently or handed duplicates.

mod reading;
mod support;

use std::time::Duration;

use reading::{PATIENCE, next, next_value, quick, submit_eventually};
use storecast::{Epoch, Position, RecvError, ResetReason, Start, Store};
use storecast_redis::{QueueOptions, Redis, RedisQueueStore, RedisQueueSubscriber};
use support::{RedisServer, eventually};

/// Two processes' stores on the stream `stream` (each with its own connections).
async fn two_processes(server: &RedisServer, stream: &str) -> [RedisQueueStore<String>; 2] {
    let mut stores = Vec::new();
    for _ in 0..2 {
        let redis = Redis::connect_with(quick(&server.url())).await.unwrap();
        stores.push(
            redis
                .queue_store::<String>(stream, QueueOptions::default())
                .await
                .unwrap(),
        );
    }
    stores.try_into().ok().unwrap()
}

/// Both stores are in one epoch, other than `old`.
async fn both_move_on(stores: &[RedisQueueStore<String>; 2], old: Epoch) -> Epoch {
    eventually("both processes to move to a new epoch", PATIENCE, || {
        stores.iter().all(|s| s.epoch() != old) && stores[0].epoch() == stores[1].epoch()
    })
    .await;
    stores[0].epoch()
}

/// `m1` to `m3` submitted on `a` and read by `live`.
async fn three_read(a: &RedisQueueStore<String>, live: &mut RedisQueueSubscriber<String>) {
    for n in 1..=3 {
        a.submit(format!("m{n}")).await.unwrap();
    }
    for n in 1..=3 {
        assert_eq!(next_value(live).await.0, format!("m{n}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_agree_across_processes_and_survive_a_restart_of_the_process() {
    let server = RedisServer::start();
    let [a, b] = two_processes(&server, "agree").await;
    assert_eq!(a.epoch(), b.epoch(), "one epoch per stream, kept in Redis");
    let mut on_b = b.subscribe();
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(a.submit(format!("m{n}")).await.unwrap());
    }
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(next_value(&mut on_b).await, (format!("m{}", n + 1), *id));
    }
    // A process started later (a restarted hub) knows the same ids.
    drop((a, b));
    let later = Redis::connect_with(quick(&server.url())).await.unwrap();
    let later = later
        .queue_store::<String>("agree", QueueOptions::default())
        .await
        .unwrap();
    assert_eq!(later.epoch(), ids[0].epoch());
    let mut resumed = later.subscribe_from(Start::After(ids[0]));
    for (n, id) in ids.iter().enumerate().skip(1) {
        assert_eq!(next_value(&mut resumed).await, (format!("m{}", n + 1), *id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_that_loses_entries_moves_every_process_to_a_new_epoch_and_tells_everyone() {
    // No append-only file: a restart brings back the last snapshot, as a crash of a server
    // without `appendfsync always` loses its last writes.
    let mut server = RedisServer::start_in_memory();
    let stores = two_processes(&server, "crash").await;
    let [a, b] = &stores;
    let mut live = [a.subscribe(), b.subscribe()];
    let mut kept = Vec::new();
    for n in 1..=5 {
        kept.push(a.submit(format!("m{n}")).await.unwrap());
    }
    server.cli(&["SAVE"]);
    let mut lost = Vec::new();
    for n in 6..=8 {
        lost.push(a.submit(format!("m{n}")).await.unwrap());
    }
    for sub in &mut live {
        for n in 1..=8 {
            let (text, _) = next_value(sub).await;
            assert_eq!(text, format!("m{n}"));
        }
    }
    let old = a.epoch();

    server.restart();
    let new = both_move_on(&stores, old).await;
    let p9 = submit_eventually(a, "m9", PATIENCE).await;
    assert_eq!(p9, Position::new(new, 6), "m9 follows what Redis kept");
    for sub in &mut live {
        assert_eq!(
            next(sub).await.unwrap_err(),
            RecvError::Reset {
                reason: ResetReason::Lost
            }
        );
        // Nothing handed out twice, nothing skipped: the next is the entry after what
        // Redis kept, in the new epoch.
        assert_eq!(next_value(sub).await, ("m9".to_string(), p9));
    }
    assert_eq!((a.resets(), b.resets()), (1, 1));

    // A client holding an id of the old epoch, kept or lost, is told, then gets what the
    // stream holds.
    for id in [kept[2], lost[1]] {
        let mut client = b.subscribe_from(Start::After(id));
        assert_eq!(
            next(&mut client).await.unwrap_err(),
            RecvError::Reset {
                reason: ResetReason::OtherEpoch
            }
        );
        for (n, expected) in ["m1", "m2", "m3", "m4", "m5", "m9"].iter().enumerate() {
            assert_eq!(
                next_value(&mut client).await,
                (expected.to_string(), Position::new(new, n as u64 + 1))
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_an_older_copy_moves_every_process_to_a_new_epoch() {
    let server = RedisServer::start();
    let stores = two_processes(&server, "failover").await;
    let [a, b] = &stores;
    let mut live = b.subscribe();
    for n in 1..=5 {
        a.submit(format!("m{n}")).await.unwrap();
    }
    // A replica that had only the first five: simulated with DUMP, then RESTORE REPLACE.
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let copy: Vec<u8> = redis::cmd("DUMP")
        .arg("failover")
        .query(&mut connection)
        .unwrap();
    for n in 6..=8 {
        a.submit(format!("m{n}")).await.unwrap();
    }
    for n in 1..=8 {
        assert_eq!(next_value(&mut live).await.0, format!("m{n}"));
    }
    let old = a.epoch();
    let _: () = redis::cmd("RESTORE")
        .arg("failover")
        .arg(0)
        .arg(copy)
        .arg("REPLACE")
        .query(&mut connection)
        .unwrap();
    // A failover also ends every connection to the old primary.
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut connection)
        .unwrap();

    let new = both_move_on(&stores, old).await;
    assert_eq!(
        next(&mut live).await.unwrap_err(),
        RecvError::Reset {
            reason: ResetReason::Lost
        }
    );
    let p9 = a.submit("m9".to_string()).await.unwrap();
    assert_eq!(p9, Position::new(new, 6));
    assert_eq!(next_value(&mut live).await, ("m9".to_string(), p9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_in_place_with_connections_kept_is_found_at_the_next_entry() {
    // Rolled back under idle readers whose connections stay up (nothing tells them): the
    // next submit, by a process that had read past the rollback, begins the new epoch, and
    // the entry is numbered in it everywhere.
    let server = RedisServer::start();
    let stores = two_processes(&server, "in-place").await;
    let [a, b] = &stores;
    let mut live = b.subscribe();
    for n in 1..=3 {
        a.submit(format!("m{n}")).await.unwrap();
    }
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let copy: Vec<u8> = redis::cmd("DUMP")
        .arg("in-place")
        .query(&mut connection)
        .unwrap();
    for n in 4..=5 {
        a.submit(format!("m{n}")).await.unwrap();
    }
    for n in 1..=5 {
        assert_eq!(next_value(&mut live).await.0, format!("m{n}"));
    }
    let old = a.epoch();
    let _: () = redis::cmd("RESTORE")
        .arg("in-place")
        .arg(0)
        .arg(copy)
        .arg("REPLACE")
        .query(&mut connection)
        .unwrap();
    let p6 = a.submit("m6".to_string()).await.unwrap();
    assert_ne!(
        p6.epoch(),
        old,
        "the entry after the loss is numbered in a new epoch"
    );
    assert_eq!(p6.offset(), 4);
    let new = both_move_on(&stores, old).await;
    assert_eq!(p6.epoch(), new);
    assert_eq!(
        next(&mut live).await.unwrap_err(),
        RecvError::Reset {
            reason: ResetReason::Lost
        }
    );
    assert_eq!(next_value(&mut live).await, ("m6".to_string(), p6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_added_after_a_loss_before_anyone_looked_are_numbered_in_the_new_epoch() {
    // The stream is rolled back and then grows past where it was before any reader could
    // see its count drop: the entry a reader read last is gone, which gives it away.
    let server = RedisServer::start();
    let stores = two_processes(&server, "regrown").await;
    let [a, b] = &stores;
    let mut live = b.subscribe();
    for n in 1..=3 {
        a.submit(format!("m{n}")).await.unwrap();
    }
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let copy: Vec<u8> = redis::cmd("DUMP")
        .arg("regrown")
        .query(&mut connection)
        .unwrap();
    for n in 4..=5 {
        a.submit(format!("m{n}")).await.unwrap();
    }
    for n in 1..=5 {
        assert_eq!(next_value(&mut live).await.0, format!("m{n}"));
    }
    let old = a.epoch();
    // Rolled back to three entries, then five more added at once by another program.
    let mut rollback = redis::pipe();
    rollback
        .atomic()
        .cmd("RESTORE")
        .arg("regrown")
        .arg(0)
        .arg(copy)
        .arg("REPLACE")
        .ignore();
    for n in 1..=5 {
        rollback
            .cmd("XADD")
            .arg("regrown")
            .arg("*")
            .arg("data")
            .arg(format!("x{n}"))
            .ignore();
    }
    let _: () = rollback.query(&mut connection).unwrap();

    let new = both_move_on(&stores, old).await;
    assert_eq!(
        next(&mut live).await.unwrap_err(),
        RecvError::Reset {
            reason: ResetReason::Lost
        }
    );
    // The entries added after the rollback, at their ordinals in the new epoch.
    for n in 1..=5 {
        assert_eq!(
            next_value(&mut live).await,
            (format!("x{n}"), Position::new(new, 3 + n))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_deleted_with_xdel_is_not_taken_for_a_loss() {
    let server = RedisServer::start();
    let stores = two_processes(&server, "consumed").await;
    let [a, b] = &stores;
    let mut live = b.subscribe();
    three_read(a, &mut live).await;
    // A consumer deletes what it processed, the newest entry included.
    let newest = server.cli(&["XREVRANGE", "consumed", "+", "-", "COUNT", "1"]);
    let id = newest.lines().next().unwrap().to_owned();
    assert_eq!(server.cli(&["XDEL", "consumed", &id]), "1");
    // Past a check of both readers (every second), nothing is reset.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let p4 = a.submit("m4".to_string()).await.unwrap();
    assert_eq!(next_value(&mut live).await, ("m4".to_string(), p4));
    assert_eq!((a.resets(), b.resets()), (0, 0));
    assert_eq!(p4.epoch(), a.epoch());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_another_process_began_reaches_idle_readers_with_no_entry_added() {
    // Another process found a loss and began a new epoch, and no entry has come since:
    // nothing is announced, so only the readers' audit of the epoch keys (every 6
    // health-check intervals) can tell these processes.
    let server = RedisServer::start();
    let stores = two_processes(&server, "audited").await;
    let [a, b] = &stores;
    let mut live = b.subscribe();
    three_read(a, &mut live).await;
    let old = a.epoch();
    let began = Epoch::random();
    server.cli(&["SET", "audited:epoch", &began.to_string()]);
    assert_eq!(both_move_on(&stores, old).await, began);
    assert!(matches!(
        next(&mut live).await.unwrap_err(),
        RecvError::Reset { .. }
    ));
    // And the next entry is numbered in it, after the last.
    let p4 = a.submit("m4".to_string()).await.unwrap();
    assert_eq!((p4.epoch(), p4.offset()), (began, 4));
    assert_eq!(next_value(&mut live).await, ("m4".to_string(), p4));
}
