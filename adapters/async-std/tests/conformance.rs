//! The in-memory stores pass the conformance suite on async-std and on smol.

use std::time::Duration;

use storecast::conformance::{self, Harness, LatestFactory, QueueFactory};
use storecast::{DataStore, Overflow, QueueStore};

/// Sleeps on `async-io`'s timer: the one async-std and smol both run on.
struct OnAsyncIo;

impl Harness for OnAsyncIo {
    async fn sleep(&self, duration: Duration) {
        async_io::Timer::after(duration).await;
    }
}

impl LatestFactory for OnAsyncIo {
    type Store = DataStore<String>;
    async fn latest_store(&self) -> Self::Store {
        DataStore::new()
    }
}

impl QueueFactory for OnAsyncIo {
    type Store = QueueStore<String>;
    async fn queue_store(&self, capacity: usize, overflow: Overflow) -> Self::Store {
        QueueStore::with_overflow(capacity, overflow)
    }
}

#[async_std::test]
async fn data_store_passes_the_latest_value_suite_on_async_std() {
    let report = conformance::check_latest(&OnAsyncIo)
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert!(
        report.skipped.is_empty() && report.passed.len() == conformance::LATEST_CHECKS,
        "{report:?}"
    );
}

#[async_std::test]
async fn queue_store_passes_the_queue_suite_on_async_std() {
    let report = conformance::check_queue(&OnAsyncIo)
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert!(
        report.skipped.is_empty() && report.passed.len() == conformance::QUEUE_CHECKS,
        "{report:?}"
    );
}

#[test]
fn data_store_passes_the_latest_value_suite_on_smol() {
    let report =
        smol::block_on(conformance::check_latest(&OnAsyncIo)).unwrap_or_else(|f| panic!("{f}"));
    assert!(
        report.skipped.is_empty() && report.passed.len() == conformance::LATEST_CHECKS,
        "{report:?}"
    );
}

#[test]
fn queue_store_passes_the_queue_suite_on_smol() {
    let report =
        smol::block_on(conformance::check_queue(&OnAsyncIo)).unwrap_or_else(|f| panic!("{f}"));
    assert!(
        report.skipped.is_empty() && report.passed.len() == conformance::QUEUE_CHECKS,
        "{report:?}"
    );
}

#[async_std::test]
async fn periodic_submits_stop_when_the_store_closes() {
    let store = DataStore::new();
    let mut n = 0;
    let task = storecast_async_std::every(store.clone(), Duration::from_millis(5), move || {
        n += 1;
        n
    });
    async_io::Timer::after(Duration::from_millis(60)).await;
    store.close();
    let submitted = task.await;
    assert!(submitted >= 3, "only {submitted} periodic submits in 60 ms");
    assert_eq!(store.current().unwrap().position().offset(), submitted);
}
