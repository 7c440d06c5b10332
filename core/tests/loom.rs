//! Loom models of the stores' synchronisation: every interleaving of the threads below
//! (up to loom's preemption bound) is explored.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p storecast --release --test loom
//! ```
#![cfg(loom)]

use futures_lite::StreamExt;
use loom::future::block_on;
use loom::thread;
use storecast::{DataStore, Message, Overflow, QueueStore, RecvError, TryRecvError};

/// Runs a loom model (up to 3 preemptions) and checks that it explored more than one
/// interleaving (a model that explores one proves nothing).
fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(3, f)
}

fn model_bounded(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    builder.check(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        f()
    });
    let runs = runs.load(Ordering::Relaxed);
    eprintln!("explored {runs} interleavings");
    assert!(runs > 1, "the model explored a single interleaving");
}

fn number(item: Result<Message<u64>, RecvError>) -> u64 {
    *item.expect("a lossless queue reports no lag")
}

#[test]
fn lossless_queue_delivers_everything_in_order_while_submitter_waits() {
    model(|| {
        let store = QueueStore::new(1);
        let mut sub = store.subscribe();
        let submitter = {
            let store = store.clone();
            thread::spawn(move || {
                block_on(store.submit(1)).unwrap();
                block_on(store.submit(2)).unwrap();
            })
        };
        let first = number(block_on(sub.next()).unwrap());
        let second = number(block_on(sub.next()).unwrap());
        submitter.join().unwrap();
        assert_eq!((first, second), (1, 2));
    });
}

#[test]
fn lossless_queue_blocks_wrap_without_overwriting_unread_messages() {
    // Capacity 2 counts reads in blocks of 1 even under loom; capacity 4 in blocks of 2
    // (a ring of 5 slots), so 7 messages wrap the ring, overwriting a finished block.
    // Two preemptions keep this model to about a minute.
    model_bounded(2, || {
        let store = QueueStore::new(4);
        let mut sub = store.subscribe();
        let submitter = {
            let store = store.clone();
            thread::spawn(move || {
                for n in 1..=7 {
                    block_on(store.submit(n)).unwrap();
                }
            })
        };
        for n in 1..=7 {
            assert_eq!(number(block_on(sub.next()).unwrap()), n);
        }
        submitter.join().unwrap();
    });
}

#[test]
fn parked_subscriber_is_woken_by_submit() {
    model(|| {
        let store = QueueStore::new(2);
        let mut sub = store.subscribe();
        let submitter = {
            let store = store.clone();
            thread::spawn(move || store.try_submit(7).unwrap())
        };
        // A lost wake-up would leave this blocked forever, which loom reports.
        assert_eq!(number(block_on(sub.next()).unwrap()), 7);
        submitter.join().unwrap();
    });
}

#[test]
fn close_racing_a_reader_drains_then_ends() {
    model(|| {
        let store = QueueStore::new(2);
        let mut sub = store.subscribe();
        let closer = {
            let store = store.clone();
            thread::spawn(move || {
                store.try_submit(1).unwrap();
                store.close();
            })
        };
        let mut got = Vec::new();
        while let Some(item) = block_on(sub.next()) {
            got.push(number(item));
        }
        closer.join().unwrap();
        assert_eq!(got, [1]);
    });
}

#[test]
fn dropping_a_stalled_subscriber_releases_a_waiting_submitter() {
    model(|| {
        let store = QueueStore::new(1);
        let stalled = store.subscribe();
        let mut reader = store.subscribe();
        store.try_submit(1).unwrap();
        let submitter = {
            let store = store.clone();
            thread::spawn(move || block_on(store.submit(2)).unwrap())
        };
        assert_eq!(number(block_on(reader.next()).unwrap()), 1);
        drop(stalled);
        submitter.join().unwrap();
        assert_eq!(number(block_on(reader.next()).unwrap()), 2);
    });
}

#[test]
fn drop_oldest_overwrite_racing_a_read_is_reported_never_torn() {
    model(|| {
        let store = QueueStore::with_overflow(1, Overflow::DropOldest);
        let mut sub = store.subscribe();
        let submitter = {
            let store = store.clone();
            thread::spawn(move || {
                store.try_submit(1).unwrap();
                store.try_submit(2).unwrap();
            })
        };
        // The first read races the submits (it may land between them, or see both).
        let mut seen = vec![block_on(sub.next()).unwrap()];
        submitter.join().unwrap();
        loop {
            match sub.try_recv() {
                Ok(m) => seen.push(Ok(m)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged { missed }) => {
                    seen.push(Err(RecvError::Lagged { missed }))
                }
                Err(other) => panic!("unexpected {other}"),
            }
        }
        // Every message is either received intact at its own position, or counted as
        // missed; together they account for both messages exactly once.
        let mut accounted = 0;
        for item in &seen {
            match item {
                Ok(m) => {
                    assert_eq!(**m, m.position().offset());
                    accounted += 1;
                }
                Err(RecvError::Lagged { missed }) => accounted += missed,
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert_eq!(accounted, 2, "items: {seen:?}");
        assert_eq!(**seen.last().unwrap().as_ref().unwrap(), 2);
    });
}

#[test]
fn latest_value_write_racing_a_read_never_goes_back_and_ends_with_last() {
    model(|| {
        let store = DataStore::new();
        let mut sub = store.subscribe();
        let submitter = {
            let store = store.clone();
            thread::spawn(move || {
                store.try_submit(1u64).unwrap();
                store.try_submit(2).unwrap();
            })
        };
        // The first read races the submits (it may land between them, or see both).
        let mut seen = vec![*block_on(sub.next()).unwrap().unwrap()];
        submitter.join().unwrap();
        while let Ok(m) = sub.try_recv() {
            seen.push(*m);
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "went back: {seen:?}");
        assert_eq!(seen.last(), Some(&2));
    });
}

#[test]
fn latest_value_parked_subscriber_is_woken_and_close_ends_it() {
    model(|| {
        let store = DataStore::new();
        let mut sub = store.subscribe();
        let submitter = {
            let store = store.clone();
            thread::spawn(move || {
                store.try_submit(5u64).unwrap();
                store.close();
            })
        };
        let mut last = None;
        while let Some(item) = block_on(sub.next()) {
            last = Some(*item.unwrap());
        }
        submitter.join().unwrap();
        assert_eq!(last, Some(5));
    });
}

// The fixed-capacity stores (no allocator): one lock each, and a waker list that must
// never lose a wake-up, even when it is full.

#[test]
fn fixed_lossless_queue_delivers_everything_in_order_while_submitter_waits() {
    model(|| {
        let store =
            std::sync::Arc::new(storecast::fixed::QueueStore::<u64, 1>::new(Overflow::Wait));
        let mut sub = store.subscribe();
        let submitter = {
            let store = std::sync::Arc::clone(&store);
            thread::spawn(move || {
                block_on(store.submit(1)).unwrap();
                block_on(store.submit(2)).unwrap();
                store.close();
            })
        };
        let mut got = Vec::new();
        while let Some(item) = block_on(sub.next()) {
            got.push(*item.unwrap());
        }
        submitter.join().unwrap();
        assert_eq!(got, [1, 2]);
    });
}

#[test]
fn fixed_parked_subscribers_are_all_woken_by_submit() {
    model(|| {
        // (A full waker list makes waiting tasks wake each other until the submit comes:
        // an unbounded loop loom cannot explore, so that case is in tests/stress.rs.)
        let store = std::sync::Arc::new(storecast::fixed::DataStore::<u64, 2>::new());
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let store = std::sync::Arc::clone(&store);
                thread::spawn(move || {
                    let mut sub = store.subscribe();
                    *block_on(sub.next()).unwrap().unwrap()
                })
            })
            .collect();
        store.try_submit(7).unwrap();
        for r in readers {
            assert_eq!(r.join().unwrap(), 7);
        }
    });
}

#[test]
fn fixed_drop_oldest_overwrite_racing_a_read_is_reported() {
    model(|| {
        let store = std::sync::Arc::new(storecast::fixed::QueueStore::<u64, 1>::new(
            Overflow::DropOldest,
        ));
        let mut sub = store.subscribe();
        let submitter = {
            let store = std::sync::Arc::clone(&store);
            thread::spawn(move || {
                store.try_submit(1).unwrap();
                store.try_submit(2).unwrap();
                store.close();
            })
        };
        let mut accounted = 0;
        let mut last = 0;
        while let Some(item) = block_on(sub.next()) {
            match item {
                Ok(m) => {
                    assert_eq!(*m, m.position().offset());
                    (accounted, last) = (accounted + 1, *m);
                }
                Err(RecvError::Lagged { missed }) => accounted += missed,
                Err(other) => panic!("unexpected {other}"),
            }
        }
        submitter.join().unwrap();
        assert_eq!((accounted, last), (2, 2));
    });
}
