//! The fixed-capacity stores pass the conformance suite, through their `Store` impl for
//! `&'static` stores (each check gets a fresh store, leaked for the test's lifetime).
// Real threads and timers: loom builds (`--cfg loom`) run only tests/loom.rs.
#![cfg(not(loom))]

use core::future::Future;
use core::time::Duration;

use futures_lite::future::block_on;
use storecast::conformance::{self, Harness, LatestFactory, QueueFactory};
use storecast::fixed::{self, Shared};
use storecast::{Overflow, Position, Start, Store, SubmitError, TrySubmitError};

struct Fixed;

impl Harness for Fixed {
    async fn sleep(&self, duration: Duration) {
        conformance::thread_sleep(duration).await
    }
}

impl LatestFactory for Fixed {
    type Store = &'static fixed::DataStore<String>;
    async fn latest_store(&self) -> Self::Store {
        Box::leak(Box::new(fixed::DataStore::new()))
    }
}

/// The suite asks for queues of capacity 1, 2, 4 and 8: one type for all of them.
enum AnyQueue {
    C1(&'static fixed::QueueStore<String, 1>),
    C2(&'static fixed::QueueStore<String, 2>),
    C4(&'static fixed::QueueStore<String, 4>),
    C8(&'static fixed::QueueStore<String, 8>),
}

macro_rules! each {
    ($self:expr, $store:ident => $body:expr) => {
        match $self {
            AnyQueue::C1($store) => $body,
            AnyQueue::C2($store) => $body,
            AnyQueue::C4($store) => $body,
            AnyQueue::C8($store) => $body,
        }
    };
}

impl Store for AnyQueue {
    type Value = String;
    type Subscriber = Shared<fixed::QueueSubscriber<'static, String>>;

    fn submit(
        &self,
        value: String,
    ) -> impl Future<Output = Result<Position, SubmitError<String>>> + Send {
        let store = each!(self, s => *s as &'static (dyn Submit + Sync));
        async move { store.submit_boxed(value).await }
    }
    fn try_submit(&self, value: String) -> Result<Position, TrySubmitError<String>> {
        each!(self, s => Store::try_submit(s, value))
    }
    fn subscribe_from(&self, start: Start) -> Self::Subscriber {
        each!(self, s => Store::subscribe_from(s, start))
    }
    fn close(&self) {
        each!(self, s => Store::close(s))
    }
    fn is_closed(&self) -> bool {
        each!(self, s => Store::is_closed(s))
    }
    fn subscriber_count(&self) -> usize {
        each!(self, s => Store::subscriber_count(s))
    }
}

/// Erases the capacity of a submit future.
trait Submit {
    fn submit_boxed(
        &'static self,
        value: String,
    ) -> core::pin::Pin<Box<dyn Future<Output = Result<Position, SubmitError<String>>> + Send>>;
}

impl<const N: usize> Submit for fixed::QueueStore<String, N> {
    fn submit_boxed(
        &'static self,
        value: String,
    ) -> core::pin::Pin<Box<dyn Future<Output = Result<Position, SubmitError<String>>> + Send>>
    {
        Box::pin(self.submit(value))
    }
}

fn leak<const N: usize>(overflow: Overflow) -> &'static fixed::QueueStore<String, N> {
    Box::leak(Box::new(fixed::QueueStore::new(overflow)))
}

impl QueueFactory for Fixed {
    type Store = AnyQueue;
    async fn queue_store(&self, capacity: usize, overflow: Overflow) -> Option<AnyQueue> {
        Some(match capacity {
            1 => AnyQueue::C1(leak(overflow)),
            2 => AnyQueue::C2(leak(overflow)),
            4 => AnyQueue::C4(leak(overflow)),
            8 => AnyQueue::C8(leak(overflow)),
            other => panic!("the suite asked for a capacity this test does not build: {other}"),
        })
    }
}

#[test]
fn fixed_data_store_passes_the_latest_value_suite() {
    let report = block_on(conformance::check_latest(&Fixed)).unwrap_or_else(|f| panic!("{f}"));
    assert!(report.skipped.is_empty(), "skipped: {:?}", report.skipped);
    assert!(report.passed.len() >= 7, "ran only {:?}", report.passed);
}

#[test]
fn fixed_queue_store_passes_the_queue_suite_with_every_policy() {
    let report = block_on(conformance::check_queue(&Fixed)).unwrap_or_else(|f| panic!("{f}"));
    assert!(report.skipped.is_empty(), "skipped: {:?}", report.skipped);
    assert!(report.passed.len() >= 12, "ran only {:?}", report.passed);
}
