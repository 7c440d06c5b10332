//! A fixed-capacity store with nothing submitted keeps its waiting tasks asleep, however
//! many there are: each subscriber has a waker slot of its own, and a subscriber past the
//! limit is refused at subscribe time instead of making the others wake each other.

// Statics need `const fn new`, which loom's locks do not have.
#![cfg(not(loom))]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use futures_lite::StreamExt;
use storecast::fixed::{DataStore, QueueStore, SubscriberLimit};
use storecast::{Overflow, Start};

/// A single-threaded executor that counts polls: a woken task is queued to be polled again.
#[derive(Default)]
struct Counting {
    tasks: Vec<Pin<Box<dyn Future<Output = ()>>>>,
    ready: Arc<Mutex<VecDeque<usize>>>,
}

struct TaskWaker {
    id: usize,
    ready: Arc<Mutex<VecDeque<usize>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.ready.lock().unwrap().push_back(self.id);
    }
}

impl Counting {
    fn spawn(&mut self, task: impl Future<Output = ()> + 'static) {
        self.ready.lock().unwrap().push_back(self.tasks.len());
        self.tasks.push(Box::pin(task));
    }

    /// Polls woken tasks until none is woken (or `budget` polls); returns the poll count.
    fn run_until_quiet(&mut self, budget: usize) -> usize {
        let mut polls = 0;
        while polls < budget {
            let Some(id) = self.ready.lock().unwrap().pop_front() else {
                break;
            };
            let waker = Waker::from(Arc::new(TaskWaker {
                id,
                ready: Arc::clone(&self.ready),
            }));
            polls += 1;
            let _ = self.tasks[id]
                .as_mut()
                .poll(&mut Context::from_waker(&waker));
        }
        polls
    }
}

#[test]
fn parked_subscribers_and_closed_waiters_stay_asleep_with_nothing_submitted() {
    // Sixteen subscribers fill each store, and a task awaits `closed()` on each: more
    // waiting tasks than the stores have subscribers. The waker list this replaced woke
    // every waiter to make room for one more, and they woke each other forever.
    static LATEST: DataStore<u32, 16> = DataStore::new();
    static QUEUE: QueueStore<u32, 4, 16> = QueueStore::new(Overflow::Wait);
    let mut executor = Counting::default();
    for _ in 0..16 {
        let (mut latest, mut queued) = (LATEST.subscribe(), QUEUE.subscribe());
        executor.spawn(async move {
            latest.next().await;
        });
        executor.spawn(async move {
            queued.next().await;
        });
    }
    executor.spawn(LATEST.closed());
    executor.spawn(QUEUE.closed());

    let polls = executor.run_until_quiet(100_000);
    assert_eq!(
        polls, 34,
        "each of the 34 tasks is polled once, then sleeps"
    );

    // A submit wakes each waiting task once.
    LATEST.try_submit(1).unwrap();
    QUEUE.try_submit(1).unwrap();
    let polls = executor.run_until_quiet(100_000);
    assert_eq!(polls, 34);
}

#[test]
fn a_subscriber_past_the_limit_is_refused_at_subscribe_time() {
    static QUEUE: QueueStore<u32, 4, 2> = QueueStore::new(Overflow::DropOldest);
    let first = QUEUE.subscribe();
    let _second = QUEUE.subscribe();
    assert_eq!(
        QUEUE.try_subscribe_from(Start::Now).err(),
        Some(SubscriberLimit { limit: 2 })
    );
    drop(first);
    assert!(QUEUE.try_subscribe_from(Start::Now).is_ok());
}

#[test]
#[should_panic(expected = "already has 1 subscribers, its limit")]
fn subscribe_past_the_limit_panics_naming_the_limit() {
    static LATEST: DataStore<u32, 1> = DataStore::new();
    let _first = LATEST.subscribe();
    let _second = LATEST.subscribe();
}
