//! The in-memory stores pass the conformance suite on Tokio (multi-threaded runtime,
//! Tokio's timer).

use std::time::Duration;

use storecast::conformance::{self, Harness, LatestFactory, QueueFactory};
use storecast::{DataStore, Overflow, QueueStore};

struct OnTokio;

impl Harness for OnTokio {
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await
    }
}

impl LatestFactory for OnTokio {
    type Store = DataStore<String>;
    async fn latest_store(&self) -> Self::Store {
        DataStore::new()
    }
}

impl QueueFactory for OnTokio {
    type Store = QueueStore<String>;
    async fn queue_store(&self, capacity: usize, overflow: Overflow) -> Self::Store {
        QueueStore::with_overflow(capacity, overflow)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_store_passes_the_latest_value_suite_on_tokio() {
    let report = conformance::check_latest(&OnTokio)
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert!(
        report.skipped.is_empty() && report.passed.len() == conformance::LATEST_CHECKS,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_store_passes_the_queue_suite_on_tokio() {
    let report = conformance::check_queue(&OnTokio)
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert!(
        report.skipped.is_empty() && report.passed.len() == conformance::QUEUE_CHECKS,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_submits_stop_when_the_store_closes() {
    let store = DataStore::new();
    let mut n = 0;
    let task = storecast_tokio::every(store.clone(), Duration::from_millis(5), move || {
        n += 1;
        n
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    store.close();
    let submitted = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(submitted >= 3, "only {submitted} periodic submits in 60 ms");
    assert_eq!(store.current().unwrap().position().offset(), submitted);
}
