//! The Redis stores' subscribers have the same receiving calls as the in-memory ones, and
//! `recv_blocking` works on a plain thread while the stores' tasks run on a runtime.

mod reading;
mod support;

use std::thread;

use reading::{PATIENCE, quick};
use storecast::{RecvError, Store, TryRecvError};
use storecast_redis::{QueueOptions, Redis};
use support::{RedisServer, eventually};

#[test]
fn plain_threads_receive_from_both_redis_stores_with_recv_blocking() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (queue, latest) = runtime.block_on(async {
        let redis = Redis::connect_with(quick(&server.url())).await.unwrap();
        let queue = redis
            .queue_store::<String>("threads:queue", QueueOptions::default())
            .await
            .unwrap();
        let latest = redis.data_store::<String>("threads:latest").await.unwrap();
        (queue, latest)
    });

    let mut on_queue = queue.subscribe();
    let mut on_latest = latest.subscribe();
    assert_eq!(on_queue.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(on_latest.try_recv().unwrap_err(), TryRecvError::Empty);
    let queue_reader = thread::spawn(move || {
        let mut got = Vec::new();
        loop {
            match on_queue.recv_blocking() {
                Ok(message) => got.push(message.to_string()),
                Err(RecvError::Closed) => return got,
                Err(e) => panic!("{e}"),
            }
        }
    });
    let latest_reader = thread::spawn(move || {
        let mut last = None;
        loop {
            match on_latest.recv_blocking() {
                Ok(message) => last = Some(message.to_string()),
                Err(RecvError::Closed) => return last,
                Err(e) => panic!("{e}"),
            }
        }
    });

    runtime.block_on(async {
        for n in 0..100 {
            queue.submit(format!("m{n}")).await.unwrap();
            latest.submit(format!("v{n}")).await.unwrap();
        }
    });
    // Close once everything is here (a close drops what is still on its way from Redis).
    runtime.block_on(eventually(
        "the reading task to take all 100",
        PATIENCE,
        || queue.last_position().offset() == 100,
    ));
    queue.close();
    latest.close();
    assert_eq!(
        queue_reader.join().unwrap(),
        (0..100).map(|n| format!("m{n}")).collect::<Vec<_>>()
    );
    assert_eq!(latest_reader.join().unwrap().as_deref(), Some("v99"));
}
