//! The calls a user of tokio's or async-channel's channels expects, from real threads
//! with no runtime: blocking receive and submit, atomic read-modify-write, `closed()`,
//! a `Sink`, and different stores behind one type.
#![cfg(not(loom))]

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use futures_lite::future::block_on;
use futures_util::{SinkExt, StreamExt, stream};
use storecast::conformance::{self, Harness, LatestFactory, QueueFactory};
use storecast::sink::StoreSink;
use storecast::{
    BoxStore, DataStore, Overflow, QueueStore, RecvError, Store, SubmitError, TryRecvError, fixed,
};

const THREADS: u64 = 8;

#[test]
fn blocking_submit_and_recv_pass_every_message_between_plain_threads() {
    // A lossless queue of 4: the writer must block on the readers again and again.
    let store = QueueStore::with_overflow(4, Overflow::Wait);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let mut subscriber = store.subscribe();
            thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    match subscriber.recv_blocking() {
                        Ok(message) => got.push(*message),
                        Err(RecvError::Closed) => return got,
                        Err(e) => panic!("a lossless queue reported {e}"),
                    }
                }
            })
        })
        .collect();
    let writer = {
        let store = store.clone();
        thread::spawn(move || {
            for n in 0..10_000u64 {
                store.submit_blocking(n).unwrap();
            }
        })
    };
    writer.join().unwrap();
    drop(store); // the last handle: readers drain and get Closed
    for reader in readers {
        assert_eq!(reader.join().unwrap(), (0..10_000).collect::<Vec<_>>());
    }
}

#[test]
fn a_blocked_submit_is_released_by_close_with_its_value_handed_back() {
    let store = QueueStore::with_overflow(1, Overflow::Wait);
    let _stalled = store.subscribe();
    store.try_submit(1).unwrap();
    let writer = {
        let store = store.clone();
        thread::spawn(move || store.submit_blocking(2))
    };
    thread::sleep(Duration::from_millis(50));
    assert!(
        !writer.is_finished(),
        "a full lossless queue took a message"
    );
    store.close();
    assert_eq!(writer.join().unwrap(), Err(SubmitError::Closed(2)));
}

#[test]
fn blocking_recv_of_a_latest_value_wakes_on_a_submit_from_another_thread() {
    let store = DataStore::new();
    let mut subscriber = store.subscribe();
    let reader = thread::spawn(move || {
        let first = *subscriber.recv_blocking().unwrap();
        (first, subscriber.recv_blocking().unwrap_err())
    });
    thread::sleep(Duration::from_millis(20));
    store.try_submit("ready").unwrap();
    // Closing may land before the reader saw "ready": it still gets the last value first.
    store.close();
    assert_eq!(reader.join().unwrap(), ("ready", RecvError::Closed));
}

#[test]
fn fixed_stores_block_and_receive_the_same_way() {
    static QUEUE: fixed::QueueStore<u32, 2> = fixed::QueueStore::new(Overflow::Wait);
    let mut subscriber = QUEUE.subscribe();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        while let Ok(message) = subscriber.recv_blocking() {
            got.push(*message);
        }
        got
    });
    for n in 0..1_000 {
        QUEUE.submit_blocking(n).unwrap();
    }
    QUEUE.close();
    assert_eq!(reader.join().unwrap(), (0..1_000).collect::<Vec<_>>());
}

#[test]
fn closed_resolves_on_another_thread_when_the_last_handle_goes() {
    let store = QueueStore::<u8>::new(4);
    let watcher = {
        let store = store.clone();
        let subscriber = store.subscribe();
        // A thread with no runtime waits for another thread's close.
        thread::spawn(move || {
            drop(subscriber);
            block_on(store.closed());
            store.is_closed()
        })
    };
    thread::sleep(Duration::from_millis(20));
    assert!(!watcher.is_finished(), "closed() resolved on an open store");
    store.close();
    assert!(watcher.join().unwrap());

    // And without close(): the last handle going closes the store.
    let store = DataStore::<u8>::new();
    let mut subscriber = store.subscribe();
    let reader = thread::spawn(move || subscriber.recv_blocking().unwrap_err());
    thread::sleep(Duration::from_millis(20));
    drop(store);
    assert_eq!(reader.join().unwrap(), RecvError::Closed);
}

/// Increments a counter from `THREADS` threads at once with `update`; returns how many
/// increments were lost.
fn lost_increments(update: fn(&DataStore<u64>)) -> u64 {
    const EACH: u64 = 20_000;
    let counter = DataStore::new();
    let start = Arc::new(Barrier::new(THREADS as usize));
    let updaters: Vec<_> = (0..THREADS)
        .map(|_| {
            let (counter, start) = (counter.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                for _ in 0..EACH {
                    update(&counter);
                }
            })
        })
        .collect();
    for updater in updaters {
        updater.join().unwrap();
    }
    let last = counter.current().unwrap();
    // Every update is its own submit, whether or not it was lost.
    assert_eq!(last.position().offset(), THREADS * EACH);
    THREADS * EACH - *last
}

#[test]
fn concurrent_submit_modify_never_loses_an_update() {
    let lost = lost_increments(|counter| {
        counter
            .submit_modify(|n| n.copied().unwrap_or(0) + 1)
            .ok()
            .unwrap();
    });
    assert_eq!(lost, 0, "updates were lost");
}

/// What the check above catches: reading `current()` and submitting a change (what a user
/// had to do before `submit_modify`) loses updates under the same load.
#[test]
fn the_check_catches_read_then_submit_losing_updates() {
    let lost = lost_increments(|counter| {
        let now = counter.current().map_or(0, |n| *n);
        counter.try_submit(now + 1).unwrap();
    });
    assert!(
        lost > 0,
        "read-then-submit lost nothing: the check cannot see a race"
    );
}

#[test]
fn concurrent_submit_if_modified_keeps_the_maximum_and_submits_only_raises() {
    let highest = DataStore::new();
    let start = Arc::new(Barrier::new(THREADS as usize));
    let raisers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (highest, start) = (highest.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                let mut raised = 0u64;
                // Interleaved readings: thread t offers t, t + THREADS, ...
                for reading in (t..40_000).step_by(THREADS as usize) {
                    let submitted = highest
                        .submit_if_modified(|now: Option<&u64>| {
                            now.is_none_or(|&n| reading > n).then_some(reading)
                        })
                        .ok()
                        .unwrap();
                    raised += u64::from(submitted.is_some());
                }
                raised
            })
        })
        .collect();
    let raises: u64 = raisers.into_iter().map(|r| r.join().unwrap()).sum();
    let last = highest.current().unwrap();
    assert_eq!(*last, 39_999);
    // Declined updates submitted nothing: the offsets count the raises exactly.
    assert_eq!(last.position().offset(), raises);
}

#[test]
fn submit_modify_on_a_closed_store_hands_the_closure_back_uncalled() {
    let store = DataStore::with_value(1);
    store.close();
    let refused = store.submit_modify(|_: Option<&i32>| -> i32 { panic!("called") });
    assert!(matches!(refused, Err(SubmitError::Closed(_))));
    assert_eq!(*store.current().unwrap(), 1);
}

#[test]
fn try_recv_carries_lag_reports_and_tells_empty_from_closed() {
    let store = QueueStore::with_overflow(2, Overflow::DropOldest);
    let mut subscriber = store.subscribe();
    for n in 1..=5 {
        store.try_submit(n).unwrap();
    }
    assert_eq!(
        subscriber.try_recv().unwrap_err(),
        TryRecvError::Lagged { missed: 3 }
    );
    assert_eq!(*subscriber.try_recv().unwrap(), 4);
    assert_eq!(*subscriber.try_recv().unwrap(), 5);
    assert_eq!(subscriber.try_recv().unwrap_err(), TryRecvError::Empty);
    store.close();
    assert_eq!(subscriber.try_recv().unwrap_err(), TryRecvError::Closed);

    let strict = QueueStore::with_overflow(2, Overflow::Disconnect);
    let mut laggard = strict.subscribe();
    for n in 1..=3 {
        strict.try_submit(n).unwrap();
    }
    assert_eq!(
        laggard.try_recv().unwrap_err(),
        TryRecvError::FellBehind { capacity: 2 }
    );
    // Cut off: nothing ever again, although the store is open.
    assert_eq!(laggard.try_recv().unwrap_err(), TryRecvError::Closed);
    assert_eq!(block_on(laggard.recv()).unwrap_err(), RecvError::Closed);
}

#[test]
fn a_stream_forwarded_into_a_store_arrives_whole_and_in_order() {
    let store = QueueStore::with_overflow(4, Overflow::Wait);
    let mut subscriber = store.subscribe();
    let sink = StoreSink::new(store.clone());
    drop(store);
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        while let Ok(message) = subscriber.recv_blocking() {
            got.push(*message);
        }
        got
    });
    // forward waits for room (capacity 4, 10,000 messages), then closes the sink, which
    // lets go of the last handle: the reader ends.
    block_on(stream::iter(0..10_000u32).map(Ok).forward(sink)).unwrap();
    assert_eq!(reader.join().unwrap(), (0..10_000).collect::<Vec<_>>());
}

#[test]
fn a_sink_on_a_closed_store_hands_the_message_back() {
    let store = DataStore::new();
    let mut sink = StoreSink::new(store.clone());
    block_on(sink.send("taken")).unwrap();
    assert_eq!(sink.last_position().map(|p| p.offset()), Some(1));
    store.close();
    assert_eq!(
        block_on(sink.send("refused")),
        Err(SubmitError::Closed("refused"))
    );
}

struct Boxed;

impl Harness for Boxed {
    async fn sleep(&self, duration: Duration) {
        conformance::thread_sleep(duration).await
    }
}

impl LatestFactory for Boxed {
    type Store = BoxStore<String>;
    async fn latest_store(&self) -> Self::Store {
        BoxStore::new(DataStore::new())
    }
}

impl QueueFactory for Boxed {
    type Store = BoxStore<String>;
    async fn queue_store(&self, capacity: usize, overflow: Overflow) -> Self::Store {
        BoxStore::new(QueueStore::with_overflow(capacity, overflow))
    }
}

#[test]
fn box_store_passes_both_suites_over_either_store() {
    let latest = block_on(conformance::check_latest(&Boxed)).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(latest.passed.len(), conformance::LATEST_CHECKS);
    let queue = block_on(conformance::check_queue(&Boxed)).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(queue.passed.len(), conformance::QUEUE_CHECKS);
}

#[test]
fn box_store_holds_different_stores_in_one_map() {
    let topics: Vec<BoxStore<String>> = vec![
        BoxStore::new(QueueStore::new(8)),
        BoxStore::new(DataStore::new()),
        BoxStore::new(&*Box::leak(Box::new(fixed::QueueStore::<String, 8>::new(
            Overflow::Wait,
        )))),
    ];
    for (i, topic) in topics.iter().enumerate() {
        let mut subscriber = topic.subscribe();
        block_on(Store::submit(topic, format!("to {i}"))).unwrap();
        assert_eq!(*subscriber.try_recv().unwrap(), format!("to {i}"));
    }
}

/// Counts its wake-ups.
struct Counting(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_batch_wakes_a_waiting_subscriber_once_when_flushed_or_dropped() {
    use std::sync::atomic::Ordering::SeqCst;
    use std::task::{Context, Poll, Waker};

    let store = QueueStore::new(8);
    let mut subscriber = store.subscribe();
    let counting = Arc::new(Counting(0.into()));
    let waker = Waker::from(Arc::clone(&counting));
    let mut cx = Context::from_waker(&waker);
    assert!(subscriber.poll_next_unpin(&mut cx).is_pending());

    let mut batch = store.batch();
    for n in 0..3 {
        batch.try_submit(n).unwrap();
    }
    assert_eq!(
        counting.0.load(SeqCst),
        0,
        "woken before the batch was flushed"
    );
    batch.flush();
    assert_eq!(counting.0.load(SeqCst), 1);
    for n in 0..3 {
        assert_eq!(
            subscriber
                .poll_next_unpin(&mut cx)
                .map(|m| *m.unwrap().unwrap()),
            Poll::Ready(n)
        );
    }
    assert!(subscriber.poll_next_unpin(&mut cx).is_pending());

    // Dropped without a flush: still woken.
    batch.try_submit(3).unwrap();
    drop(batch);
    assert_eq!(counting.0.load(SeqCst), 2);
    assert_eq!(*subscriber.try_recv().unwrap(), 3);

    // A full lossless queue hands the value back, as try_submit does.
    let lossless = QueueStore::with_overflow(1, Overflow::Wait);
    let _reader = lossless.subscribe();
    let mut batch = lossless.batch();
    batch.try_submit(0).unwrap();
    assert_eq!(batch.try_submit(1).unwrap_err().into_inner(), 1);
}
