//! `drive::forward` and `drive::on_ticks`: they stop when the store closes even while
//! their source is idle, and a value the store's transport could not take is submitted
//! again, never dropped.
// Real threads and timers: loom builds (`--cfg loom`) run only tests/loom.rs.
#![cfg(not(loom))]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use futures_lite::{StreamExt, stream};
use storecast::{
    Position, QueueStore, QueueSubscriber, Start, Store, SubmitError, TrySubmitError, drive,
};

/// A queue whose transport refuses every other submit with `Unavailable`, as a Redis store
/// does while its server is away.
#[derive(Clone)]
struct Flaky {
    inner: QueueStore<u64>,
    attempts: Arc<AtomicUsize>,
}

impl Store for Flaky {
    type Value = u64;
    type Subscriber = QueueSubscriber<u64>;

    async fn submit(&self, value: u64) -> Result<Position, SubmitError<u64>> {
        if self.attempts.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
            return Err(SubmitError::Unavailable(value));
        }
        self.inner.submit(value).await
    }
    fn try_submit(&self, value: u64) -> Result<Position, TrySubmitError<u64>> {
        self.inner.try_submit(value)
    }
    fn subscribe_from(&self, start: Start) -> QueueSubscriber<u64> {
        self.inner.subscribe_from(start)
    }
    fn close(&self) {
        self.inner.close()
    }
    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
    fn closed(&self) -> impl Future<Output = ()> + Send {
        self.inner.closed()
    }
    fn subscriber_count(&self) -> usize {
        self.inner.subscriber_count()
    }
}

#[test]
fn forward_submits_a_refused_value_again_and_loses_nothing() {
    let store = Flaky {
        inner: QueueStore::new(16),
        attempts: Arc::new(AtomicUsize::new(0)),
    };
    let mut sub = store.subscribe();
    let pauses = AtomicUsize::new(0);
    let sent = block_on(drive::forward(&store, stream::iter(1..=5), |_| {
        pauses.fetch_add(1, Ordering::Relaxed);
        async {}
    }));
    assert_eq!(sent, 5);
    assert_eq!(pauses.load(Ordering::Relaxed), 5, "one pause per refusal");
    store.close();
    let got: Vec<u64> = block_on((&mut sub).map(|m| *m.unwrap()).collect());
    assert_eq!(got, [1, 2, 3, 4, 5]);
}

#[test]
fn forward_stops_when_the_store_closes_while_its_source_is_idle() {
    let store = QueueStore::<u64>::new(4);
    let closer = store.clone();
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        closer.close();
    });
    let started = Instant::now();
    let sent = block_on(drive::forward(&store, stream::pending(), |_| async {}));
    assert_eq!(sent, 0);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn on_ticks_stops_when_the_store_closes_between_ticks() {
    let store = QueueStore::<u64>::new(4);
    let closer = store.clone();
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        closer.close();
    });
    let sent = block_on(drive::on_ticks(&store, stream::pending::<()>(), || 1));
    assert_eq!(sent, 0);
}

#[test]
fn on_ticks_keeps_a_refused_value_for_the_next_tick() {
    let store = Flaky {
        inner: QueueStore::new(16),
        attempts: Arc::new(AtomicUsize::new(0)),
    };
    let mut sub = store.subscribe();
    let mut next = 0;
    let sent = block_on(drive::on_ticks(&store, stream::repeat(()).take(6), || {
        next += 1;
        next
    }));
    assert_eq!(sent, 3, "every other tick is refused");
    store.close();
    let got: Vec<u64> = block_on((&mut sub).map(|m| *m.unwrap()).collect());
    assert_eq!(
        got,
        [1, 2, 3],
        "a refused value is kept, not replaced by a new one"
    );
}
