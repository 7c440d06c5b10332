//! Both Redis stores pass the conformance suite against a real `redis-server`, on Tokio
//! and (with the `smol` feature) on smol and on async-std.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use storecast::Overflow;
use storecast::conformance::{self, Harness, LatestFactory, QueueFactory};
use storecast_redis::{QueueOptions, Redis, RedisQueueStore, RedisStore};
use support::{RedisCluster, RedisServer};

/// Makes each check a store on a channel or stream of its own.
struct OnRedis {
    redis: Redis,
    names: AtomicU32,
    sleep: fn(Duration) -> futures_lite::future::Boxed<()>,
}

impl OnRedis {
    fn name(&self, kind: &str) -> String {
        format!("{kind}-{}", self.names.fetch_add(1, Ordering::Relaxed))
    }
}

impl Harness for OnRedis {
    async fn sleep(&self, duration: Duration) {
        (self.sleep)(duration).await
    }
}

impl LatestFactory for OnRedis {
    type Store = RedisStore<String>;
    async fn latest_store(&self) -> Self::Store {
        self.redis
            .data_store(&self.name("channel"))
            .await
            .expect("a RedisStore")
    }
}

impl QueueFactory for OnRedis {
    type Store = RedisQueueStore<String>;
    async fn queue_store(&self, capacity: usize, overflow: Overflow) -> Self::Store {
        // The stream keeps exactly what the suite expects to be retained.
        let options = QueueOptions::default()
            .capacity(capacity)
            .overflow(overflow)
            .max_len(capacity)
            .exact_trim(true);
        self.redis
            .queue_store(&self.name("stream"), options)
            .await
            .expect("a RedisQueueStore")
    }
}

async fn run_both_suites(url: String, sleep: fn(Duration) -> futures_lite::future::Boxed<()>) {
    let factory = OnRedis {
        redis: Redis::connect(&url).await.expect("the test server"),
        names: AtomicU32::new(0),
        sleep,
    };
    let latest = conformance::check_latest(&factory)
        .await
        .unwrap_or_else(|f| panic!("RedisStore: {f}"));
    assert!(
        latest.skipped.is_empty() && latest.passed.len() == conformance::LATEST_CHECKS,
        "{latest:?}"
    );
    let queue = conformance::check_queue(&factory)
        .await
        .unwrap_or_else(|f| panic!("RedisQueueStore: {f}"));
    assert!(
        queue.skipped.is_empty() && queue.passed.len() == conformance::QUEUE_CHECKS,
        "{queue:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stores_pass_the_suites_on_tokio() {
    let server = RedisServer::start();
    run_both_suites(server.url(), |d| Box::pin(tokio::time::sleep(d))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stores_pass_the_suites_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3, 0);
    run_both_suites(cluster.url(), |d| Box::pin(tokio::time::sleep(d))).await;
}

#[cfg(feature = "smol")]
#[test]
fn redis_stores_pass_the_suites_on_smol() {
    let server = RedisServer::start();
    smol::block_on(run_both_suites(server.url(), |d| {
        Box::pin(async move {
            smol::Timer::after(d).await;
        })
    }));
}

#[cfg(feature = "smol")]
#[test]
fn redis_stores_pass_the_suites_on_async_std() {
    let server = RedisServer::start();
    async_std::task::block_on(run_both_suites(server.url(), |d| {
        Box::pin(async_std::task::sleep(d))
    }));
}
