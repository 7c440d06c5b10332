//! The in-memory stores pass the conformance suite on a minimal executor.
// Real threads and timers: loom builds (`--cfg loom`) run only tests/loom.rs.
#![cfg(not(loom))]

use core::time::Duration;

use futures_lite::future::block_on;
use storecast::conformance::{self, Harness, LatestFactory, QueueFactory};
use storecast::{DataStore, Overflow, QueueStore};

struct InMemory;

impl Harness for InMemory {
    async fn sleep(&self, duration: Duration) {
        conformance::thread_sleep(duration).await
    }
}

impl LatestFactory for InMemory {
    type Store = DataStore<String>;
    async fn latest_store(&self) -> Self::Store {
        DataStore::new()
    }
}

impl QueueFactory for InMemory {
    type Store = QueueStore<String>;
    async fn queue_store(&self, capacity: usize, overflow: Overflow) -> Self::Store {
        QueueStore::with_overflow(capacity, overflow)
    }
}

#[test]
fn data_store_passes_the_latest_value_suite() {
    let report = block_on(conformance::check_latest(&InMemory)).unwrap_or_else(|f| panic!("{f}"));
    assert!(report.skipped.is_empty(), "skipped: {:?}", report.skipped);
    assert_eq!(
        report.passed.len(),
        conformance::LATEST_CHECKS,
        "ran only {:?}",
        report.passed
    );
}

#[test]
fn queue_store_passes_the_queue_suite_with_every_policy() {
    let report = block_on(conformance::check_queue(&InMemory)).unwrap_or_else(|f| panic!("{f}"));
    assert!(report.skipped.is_empty(), "skipped: {:?}", report.skipped);
    assert_eq!(
        report.passed.len(),
        conformance::QUEUE_CHECKS,
        "ran only {:?}",
        report.passed
    );
}
