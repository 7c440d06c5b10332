//! The fixed-capacity stores pass the conformance suite, through their `Store` impl for
//! `&'static` stores (each check gets a fresh store of a new epoch, leaked for the test's
//! lifetime; a store in a `static` is never dropped, which the factory says).
// Real threads and timers: loom builds (`--cfg loom`) run only tests/loom.rs.
#![cfg(not(loom))]

use core::future::Future;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use futures_lite::future::block_on;
use storecast::conformance::{self, Harness, LatestFactory, QueueFactory};
use storecast::fixed::{self, Shared};
use storecast::{Epoch, Overflow, Position, Start, Store, SubmitError, TrySubmitError};

struct Fixed;

impl Harness for Fixed {
    async fn sleep(&self, duration: Duration) {
        conformance::thread_sleep(duration).await
    }

    fn closes_when_last_handle_drops(&self) -> bool {
        false
    }
}

/// A new epoch for each store: a fixed store cannot draw one.
fn epoch() -> Epoch {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Epoch::new(NEXT.fetch_add(1, Ordering::Relaxed))
}

impl LatestFactory for Fixed {
    type Store = &'static fixed::DataStore<String>;
    async fn latest_store(&self) -> Self::Store {
        Box::leak(Box::new(fixed::DataStore::with_epoch(epoch())))
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
    fn closed(&self) -> impl Future<Output = ()> + Send {
        let store = each!(self, s => *s as &'static (dyn Submit + Sync));
        store.closed_boxed()
    }
    fn subscriber_count(&self) -> usize {
        each!(self, s => Store::subscriber_count(s))
    }
}

/// Erases the capacity of a submit (or closed) future.
trait Submit {
    fn submit_boxed(
        &'static self,
        value: String,
    ) -> core::pin::Pin<Box<dyn Future<Output = Result<Position, SubmitError<String>>> + Send>>;
    fn closed_boxed(&'static self) -> core::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl<const N: usize> Submit for fixed::QueueStore<String, N> {
    fn submit_boxed(
        &'static self,
        value: String,
    ) -> core::pin::Pin<Box<dyn Future<Output = Result<Position, SubmitError<String>>> + Send>>
    {
        Box::pin(self.submit(value))
    }
    fn closed_boxed(&'static self) -> core::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.closed())
    }
}

fn leak<const N: usize>(overflow: Overflow) -> &'static fixed::QueueStore<String, N> {
    Box::leak(Box::new(fixed::QueueStore::with_epoch(overflow, epoch())))
}

impl QueueFactory for Fixed {
    type Store = AnyQueue;
    async fn queue_store(&self, capacity: usize, overflow: Overflow) -> AnyQueue {
        match capacity {
            1 => AnyQueue::C1(leak(overflow)),
            2 => AnyQueue::C2(leak(overflow)),
            4 => AnyQueue::C4(leak(overflow)),
            8 => AnyQueue::C8(leak(overflow)),
            other => panic!("the suite asked for a capacity this test does not build: {other}"),
        }
    }
}

#[test]
fn fixed_data_store_passes_the_latest_value_suite() {
    let report = block_on(conformance::check_latest(&Fixed)).unwrap_or_else(|f| panic!("{f}"));
    assert_only_drop_checks_skipped(&report.skipped, 1);
    assert_eq!(
        report.passed.len(),
        conformance::LATEST_CHECKS - 1,
        "ran only {:?}",
        report.passed
    );
}

#[test]
fn fixed_queue_store_passes_the_queue_suite_with_every_policy() {
    let report = block_on(conformance::check_queue(&Fixed)).unwrap_or_else(|f| panic!("{f}"));
    assert_only_drop_checks_skipped(&report.skipped, 3);
    assert_eq!(
        report.passed.len(),
        conformance::QUEUE_CHECKS - 3,
        "ran only {:?}",
        report.passed
    );
}

/// A store in a `static` is never dropped: only the checks of dropping the last handle
/// are skipped, and only because the factory said so.
fn assert_only_drop_checks_skipped(skipped: &[(String, String)], expected: usize) {
    assert_eq!(skipped.len(), expected, "skipped: {skipped:?}");
    for (check, _) in skipped {
        assert!(
            check.contains("_last_handle_dropped_"),
            "skipped: {skipped:?}"
        );
    }
}
