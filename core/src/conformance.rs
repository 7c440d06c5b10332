//! The conformance suite: executor-agnostic checks of the contract every store keeps.
//!
//! Any store can run it from its tests — the in-memory stores on any runtime, the Redis
//! stores against a real server, or a store of your own. You provide a factory that makes
//! fresh stores and a way to sleep on your runtime; the suite runs every check and returns
//! a [`Report`], or the first [`Failure`] with the name of the check and what went wrong.
//!
//! ```
//! use core::time::Duration;
//! use storecast::conformance::{self, Harness, LatestFactory, QueueFactory};
//! use storecast::{DataStore, Overflow, QueueStore};
//!
//! struct InMemory;
//!
//! impl Harness for InMemory {
//!     async fn sleep(&self, duration: Duration) {
//!         // A runtime's harness sleeps on its own timer (`tokio::time::sleep`, ...).
//!         conformance::thread_sleep(duration).await
//!     }
//! }
//! impl LatestFactory for InMemory {
//!     type Store = DataStore<String>;
//!     async fn latest_store(&self) -> Self::Store {
//!         DataStore::new()
//!     }
//! }
//! impl QueueFactory for InMemory {
//!     type Store = QueueStore<String>;
//!     async fn queue_store(&self, capacity: usize, overflow: Overflow) -> Option<Self::Store> {
//!         Some(QueueStore::with_overflow(capacity, overflow))
//!     }
//! }
//!
//! futures_lite::future::block_on(async {
//!     let latest = conformance::check_latest(&InMemory).await.unwrap();
//!     let queue = conformance::check_queue(&InMemory).await.unwrap();
//!     assert!(latest.skipped.is_empty() && queue.skipped.is_empty());
//! });
//! ```
//!
//! The checks run on one task, interleaving submitters and subscribers with joins, so they
//! need nothing from the executor but `sleep` (used for timeouts and for "nothing arrives"
//! checks). Multi-threaded stress belongs in each store's own tests.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::time::Duration;

use futures_lite::StreamExt;
use futures_lite::future::{or, yield_now, zip};

use crate::{Item, Overflow, Position, RecvError, Start, Store, TrySubmitError};

/// How long a check waits for something that should happen before calling it a failure.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long a check waits to be confident that something does *not* happen.
const QUIET: Duration = Duration::from_millis(100);

/// What the suite needs from a runtime.
pub trait Harness {
    /// Sleeps for `duration` on the runtime under test.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()>;
}

/// Makes fresh latest-value stores for the suite.
pub trait LatestFactory: Harness {
    /// The store under test.
    type Store: Store<Value: Sample>;
    /// A new, empty store, used by one check only.
    fn latest_store(&self) -> impl Future<Output = Self::Store>;
}

/// Makes fresh queue stores for the suite.
pub trait QueueFactory: Harness {
    /// The store under test.
    type Store: Store<Value: Sample>;
    /// A new, empty queue retaining `capacity` messages under `overflow`, or `None` if
    /// this kind of store does not offer that policy (the checks that need it are then
    /// reported as skipped).
    fn queue_store(
        &self,
        capacity: usize,
        overflow: Overflow,
    ) -> impl Future<Output = Option<Self::Store>>;
}

/// Values the suite can make and recognise: sample `n` must read back as `n`.
pub trait Sample: Sized {
    /// The `n`th sample value.
    fn sample(n: u64) -> Self;
    /// Which sample this is, if it is one.
    fn number(&self) -> Option<u64>;
}

impl Sample for u64 {
    fn sample(n: u64) -> Self {
        n
    }
    fn number(&self) -> Option<u64> {
        Some(*self)
    }
}

impl Sample for String {
    fn sample(n: u64) -> Self {
        format!("message {n}")
    }
    fn number(&self) -> Option<u64> {
        self.strip_prefix("message ")?.parse().ok()
    }
}

impl Sample for Vec<u8> {
    fn sample(n: u64) -> Self {
        String::sample(n).into_bytes()
    }
    fn number(&self) -> Option<u64> {
        String::from_utf8(self.clone()).ok()?.number()
    }
}

/// The outcome of a suite that passed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// The checks that ran and passed.
    pub passed: Vec<&'static str>,
    /// The checks that did not apply, with the reason.
    pub skipped: Vec<(&'static str, String)>,
}

/// A check that failed: its name and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The name of the check, which states the behaviour expected.
    pub check: &'static str,
    /// What was observed instead.
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conformance check `{}` failed: {}",
            self.check, self.reason
        )
    }
}

impl core::error::Error for Failure {}

/// The result of one check: `Ok(None)` passed, `Ok(Some(reason))` skipped.
type Outcome = Result<Option<String>, String>;
type Check<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;

macro_rules! ensure {
    ($cond:expr, $($reason:tt)+) => {
        if !$cond {
            return Err(format!($($reason)+));
        }
    };
}

async fn run<'a>(checks: Vec<(&'static str, Check<'a>)>) -> Result<Report, Failure> {
    let mut report = Report::default();
    for (check, future) in checks {
        match future.await {
            Ok(None) => report.passed.push(check),
            Ok(Some(reason)) => report.skipped.push((check, reason)),
            Err(reason) => return Err(Failure { check, reason }),
        }
    }
    Ok(report)
}

/// Waits for `future`, failing after [`PATIENCE`].
async fn within<H: Harness, T>(
    h: &H,
    what: &str,
    future: impl Future<Output = T>,
) -> Result<T, String> {
    or(async { Ok(future.await) }, async {
        h.sleep(PATIENCE).await;
        Err(format!("timed out after {PATIENCE:?} waiting for {what}"))
    })
    .await
}

/// Whether `future` stays pending for [`QUIET`].
async fn stays_pending<H: Harness, T>(h: &H, future: impl Future<Output = T>) -> bool {
    or(
        async {
            future.await;
            false
        },
        async {
            h.sleep(QUIET).await;
            true
        },
    )
    .await
}

/// The next item of a subscriber, failing on timeout or on the end of its stream.
async fn next_item<H: Harness, S: Store>(
    h: &H,
    sub: &mut S::Subscriber,
) -> Result<Item<S::Value>, String> {
    within(h, "the next item", sub.next())
        .await?
        .ok_or_else(|| "the stream ended early".to_string())
}

/// The next message's sample number and position, failing on lag reports.
async fn next_number<H: Harness, S: Store<Value: Sample>>(
    h: &H,
    sub: &mut S::Subscriber,
) -> Result<(u64, Position), String> {
    match next_item::<H, S>(h, sub).await? {
        Ok(m) => Ok((number(&*m)?, m.position())),
        Err(e) => Err(format!("expected a message, got `{e}`")),
    }
}

fn number<T: Sample>(value: &T) -> Result<u64, String> {
    value
        .number()
        .ok_or_else(|| "received a value the suite never submitted".to_string())
}

async fn submit<S: Store<Value: Sample>>(store: &S, n: u64) -> Result<Position, String> {
    store
        .submit(S::Value::sample(n))
        .await
        .map_err(|e| format!("submit of message {n} failed: {e}"))
}

/// Submits sample `n` where there is room, without waiting for any: `try_submit`, or for a
/// store whose transport is a network connection (it says
/// [`WouldBlock`](TrySubmitError::WouldBlock)), `submit`, which must finish in time.
async fn submit_now<H: Harness, S: Store<Value: Sample>>(
    h: &H,
    store: &S,
    n: u64,
) -> Result<Position, String> {
    match store.try_submit(S::Value::sample(n)) {
        Ok(position) => Ok(position),
        Err(TrySubmitError::WouldBlock(value)) => {
            within(h, "a submit with room", store.submit(value))
                .await?
                .map_err(|e| format!("submit of message {n} failed: {e}"))
        }
        Err(e) => Err(format!("try_submit of message {n} failed: {e}")),
    }
}

async fn ends<H: Harness, S: Store>(h: &H, sub: &mut S::Subscriber) -> Result<(), String> {
    match within(h, "the end of the stream", sub.next()).await? {
        None => Ok(()),
        Some(Ok(_)) => Err("expected the stream to end, got another message".into()),
        Some(Err(e)) => Err(format!("expected the stream to end, got `{e}`")),
    }
}

/// Sleeps for `duration` without any runtime: a thread waits and wakes the task. Meant for
/// harnesses on minimal executors (`block_on`); on a real runtime use its timer.
#[cfg(feature = "std")]
pub fn thread_sleep(duration: Duration) -> impl Future<Output = ()> + Send {
    use alloc::sync::Arc;
    use core::task::{Poll, Waker};
    use std::sync::Mutex;

    // `None` once the time is up; otherwise the waker of the latest poll.
    let state: Arc<Mutex<Option<Option<Waker>>>> = Arc::new(Mutex::new(Some(None)));
    let mut started = false;
    core::future::poll_fn(move |cx| {
        let mut waiting = state.lock().unwrap();
        let Some(waker) = waiting.as_mut() else {
            return Poll::Ready(());
        };
        *waker = Some(cx.waker().clone());
        if !core::mem::replace(&mut started, true) {
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                std::thread::sleep(duration);
                if let Some(Some(waker)) = state.lock().unwrap().take() {
                    waker.wake();
                }
            });
        }
        Poll::Pending
    })
}

// ---------------------------------------------------------------------------------------
// Latest value
// ---------------------------------------------------------------------------------------

/// Runs every latest-value check against stores from `factory`.
pub async fn check_latest<F: LatestFactory>(factory: &F) -> Result<Report, Failure> {
    run(alloc::vec![
        (
            "late_subscriber_sees_current_value",
            Box::pin(late_subscriber_sees_current_value(factory)) as Check<'_>
        ),
        (
            "empty_store_subscriber_waits_for_first_value",
            Box::pin(empty_store_subscriber_waits_for_first_value(factory))
        ),
        (
            "latest_never_repeats_never_goes_back_and_ends_with_last",
            Box::pin(latest_never_repeats_never_goes_back_and_ends_with_last(
                factory
            ))
        ),
        (
            "latest_submit_never_waits",
            Box::pin(latest_submit_never_waits(factory))
        ),
        (
            "latest_resumes_after_position",
            Box::pin(latest_resumes_after_position(factory))
        ),
        (
            "latest_close_delivers_last_then_ends",
            Box::pin(latest_close_delivers_last_then_ends(factory))
        ),
        (
            "latest_subscriber_count_follows_subscribers",
            Box::pin(subscriber_count_follows_subscribers(
                factory,
                factory.latest_store()
            ))
        ),
    ])
    .await
}

async fn late_subscriber_sees_current_value<F: LatestFactory>(h: &F) -> Outcome {
    let store = h.latest_store().await;
    submit(&store, 1).await?;
    let p2 = submit(&store, 2).await?;
    let mut sub = store.subscribe();
    let (n, p) = next_number::<F, F::Store>(h, &mut sub).await?;
    ensure!(
        n == 2 && p == p2,
        "expected current value 2 at {p2}, got {n} at {p}"
    );
    ensure!(
        stays_pending(h, sub.next()).await,
        "a value arrived that was never submitted"
    );
    Ok(None)
}

async fn empty_store_subscriber_waits_for_first_value<F: LatestFactory>(h: &F) -> Outcome {
    let store = h.latest_store().await;
    let mut sub = store.subscribe();
    ensure!(
        stays_pending(h, sub.next()).await,
        "an empty store yielded a value"
    );
    submit(&store, 1).await?;
    let (n, _) = next_number::<F, F::Store>(h, &mut sub).await?;
    ensure!(n == 1, "expected the first value, got {n}");
    Ok(None)
}

async fn latest_never_repeats_never_goes_back_and_ends_with_last<F: LatestFactory>(
    h: &F,
) -> Outcome {
    const LAST: u64 = 2000;
    let store = h.latest_store().await;
    let mut subs: Vec<_> = (0..3).map(|_| store.subscribe()).collect();
    let publisher = async {
        for n in 1..=LAST {
            submit(&store, n).await?;
            if n % 7 == 0 {
                yield_now().await;
            }
        }
        Ok::<_, String>(())
    };
    let readers = async {
        for sub in &mut subs {
            let mut previous: Option<(u64, Position)> = None;
            loop {
                let (n, p) = next_number::<F, F::Store>(h, sub).await?;
                if let Some((pn, pp)) = previous {
                    ensure!(n > pn && p > pp, "saw {n} at {p} after {pn} at {pp}");
                }
                previous = Some((n, p));
                if n == LAST {
                    break;
                }
            }
        }
        Ok::<_, String>(())
    };
    let (published, read) = zip(publisher, readers).await;
    published?;
    read?;
    for sub in &mut subs {
        ensure!(
            stays_pending(h, sub.next()).await,
            "a value was delivered twice"
        );
    }
    Ok(None)
}

async fn latest_submit_never_waits<F: LatestFactory>(h: &F) -> Outcome {
    let store = h.latest_store().await;
    for n in 1..=100 {
        store
            .try_submit(Sample::sample(n))
            .map_err(|e| format!("try_submit without subscribers failed: {e}"))?;
    }
    let _idle = store.subscribe();
    for n in 101..=200 {
        store
            .try_submit(Sample::sample(n))
            .map_err(|e| format!("try_submit with an idle subscriber failed: {e}"))?;
    }
    Ok(None)
}

async fn latest_resumes_after_position<F: LatestFactory>(h: &F) -> Outcome {
    let store = h.latest_store().await;
    let p1 = submit(&store, 1).await?;
    let p2 = submit(&store, 2).await?;
    let mut behind = store.subscribe_from(Start::After(p1));
    let (n, _) = next_number::<F, F::Store>(h, &mut behind).await?;
    ensure!(n == 2, "resuming after message 1 yielded {n}, expected 2");
    let mut current = store.subscribe_from(Start::After(p2));
    ensure!(
        stays_pending(h, current.next()).await,
        "resuming after the current position yielded a value already seen"
    );
    submit(&store, 3).await?;
    let (n, _) = next_number::<F, F::Store>(h, &mut current).await?;
    ensure!(n == 3, "expected message 3, got {n}");
    Ok(None)
}

async fn latest_close_delivers_last_then_ends<F: LatestFactory>(h: &F) -> Outcome {
    let store = h.latest_store().await;
    let mut sub = store.subscribe();
    submit(&store, 1).await?;
    submit(&store, 2).await?;
    store.close();
    ensure!(store.is_closed(), "is_closed is false after close");
    match store.submit(Sample::sample(3)).await {
        Err(e) => ensure!(
            number(&e.into_inner())? == 3,
            "submit after close handed back another value"
        ),
        Ok(_) => return Err("submit after close was accepted".into()),
    }
    let mut last = 0;
    while let Some(item) = within(h, "the end of the stream", sub.next()).await? {
        last = number(&*item.map_err(|e| format!("unexpected `{e}`"))?)?;
    }
    ensure!(
        last == 2,
        "expected the stream to end with message 2, it ended with {last}"
    );
    Ok(None)
}

async fn subscriber_count_follows_subscribers<S: Store>(
    _: &impl Harness,
    store: impl Future<Output = S>,
) -> Outcome {
    let store = store.await;
    ensure!(
        store.subscriber_count() == 0,
        "a new store counts {} subscribers",
        store.subscriber_count()
    );
    let a = store.subscribe();
    let b = store.subscribe_from(Start::Oldest);
    ensure!(
        store.subscriber_count() == 2,
        "expected 2 subscribers, counted {}",
        store.subscriber_count()
    );
    drop(a);
    ensure!(
        store.subscriber_count() == 1,
        "dropping a subscriber left the count at {}",
        store.subscriber_count()
    );
    drop(b);
    ensure!(
        store.subscriber_count() == 0,
        "dropping all subscribers left the count at {}",
        store.subscriber_count()
    );
    Ok(None)
}

// ---------------------------------------------------------------------------------------
// Queue
// ---------------------------------------------------------------------------------------

/// Runs every queue check against stores from `factory`.
pub async fn check_queue<F: QueueFactory>(factory: &F) -> Result<Report, Failure> {
    run(alloc::vec![
        (
            "queue_delivers_every_message_in_order_to_every_subscriber",
            Box::pin(queue_delivers_every_message_in_order(factory)) as Check<'_>
        ),
        (
            "queue_subscriber_gets_only_messages_after_subscribing",
            Box::pin(queue_subscriber_gets_only_later_messages(factory))
        ),
        (
            "wait_policy_try_submit_reports_full_and_submit_waits",
            Box::pin(wait_policy_full(factory))
        ),
        (
            "wait_policy_close_hands_back_waiting_message",
            Box::pin(wait_policy_close_hands_back(factory))
        ),
        (
            "drop_oldest_reports_missed_then_continues",
            Box::pin(drop_oldest_reports_missed(factory))
        ),
        (
            "disconnect_ends_laggard_with_error_and_spares_others",
            Box::pin(disconnect_ends_laggard(factory))
        ),
        (
            "queue_resumes_after_retained_position",
            Box::pin(queue_resumes_after_position(factory))
        ),
        (
            "queue_resumes_from_oldest_retained",
            Box::pin(queue_resumes_from_oldest(factory))
        ),
        (
            "queue_resume_from_gone_position_reports_lost",
            Box::pin(queue_resume_from_gone_position(factory))
        ),
        (
            "queue_close_drains_then_ends",
            Box::pin(queue_close_drains_then_ends(factory))
        ),
        (
            "dropped_subscriber_does_not_stall_lossless_queue",
            Box::pin(dropped_subscriber_does_not_stall(factory))
        ),
        (
            "queue_subscriber_count_follows_subscribers",
            Box::pin(queue_subscriber_count(factory))
        ),
    ])
    .await
}

fn unsupported(overflow: Overflow) -> Outcome {
    Ok(Some(format!(
        "the store does not offer Overflow::{overflow:?}"
    )))
}

async fn queue_delivers_every_message_in_order<F: QueueFactory>(h: &F) -> Outcome {
    const COUNT: u64 = 500;
    let Some(store) = h.queue_store(8, Overflow::Wait).await else {
        return unsupported(Overflow::Wait);
    };
    let mut subs: Vec<_> = (0..3).map(|_| store.subscribe()).collect();
    let publisher = async {
        for n in 1..=COUNT {
            within(h, "room in the queue", submit(&store, n)).await??;
        }
        Ok::<_, String>(())
    };
    let read_all = |mut sub: <F::Store as Store>::Subscriber| async move {
        let mut previous = Position::ZERO;
        for expected in 1..=COUNT {
            let (n, p) = next_number::<F, F::Store>(h, &mut sub).await?;
            ensure!(n == expected, "expected message {expected}, got {n}");
            ensure!(p > previous, "position {p} after {previous}");
            previous = p;
        }
        Ok::<_, String>(())
    };
    let mut subs = subs.drain(..);
    let (a, b, c) = (
        subs.next().unwrap(),
        subs.next().unwrap(),
        subs.next().unwrap(),
    );
    let (published, (ra, (rb, rc))) =
        zip(publisher, zip(read_all(a), zip(read_all(b), read_all(c)))).await;
    published?;
    ra?;
    rb?;
    rc?;
    Ok(None)
}

async fn queue_subscriber_gets_only_later_messages<F: QueueFactory>(h: &F) -> Outcome {
    let Some(store) = h.queue_store(8, Overflow::Wait).await else {
        return unsupported(Overflow::Wait);
    };
    submit(&store, 1).await?;
    let mut sub = store.subscribe();
    submit(&store, 2).await?;
    let (n, _) = next_number::<F, F::Store>(h, &mut sub).await?;
    ensure!(
        n == 2,
        "a new subscriber got message {n}, submitted before it subscribed"
    );
    ensure!(
        stays_pending(h, sub.next()).await,
        "a message arrived that was never submitted"
    );
    Ok(None)
}

async fn wait_policy_full<F: QueueFactory>(h: &F) -> Outcome {
    let Some(store) = h.queue_store(2, Overflow::Wait).await else {
        return unsupported(Overflow::Wait);
    };
    let mut sub = store.subscribe();
    for n in 1..=2 {
        submit_now(h, &store, n).await?;
    }
    match store.try_submit(Sample::sample(3)) {
        Err(TrySubmitError::Full(v)) => {
            ensure!(number(&v)? == 3, "Full handed back another value")
        }
        other => {
            return Err(format!(
                "try_submit on a full queue gave {:?}, expected Full",
                other.map(|_| ())
            ));
        }
    }
    let mut waiting = Box::pin(submit(&store, 3));
    ensure!(
        stays_pending(h, waiting.as_mut()).await,
        "submit on a full lossless queue did not wait"
    );
    let (n, _) = next_number::<F, F::Store>(h, &mut sub).await?;
    ensure!(n == 1, "expected message 1, got {n}");
    within(
        h,
        "the waiting submit to finish once there was room",
        waiting,
    )
    .await??;
    for expected in 2..=3 {
        let (n, _) = next_number::<F, F::Store>(h, &mut sub).await?;
        ensure!(n == expected, "expected message {expected}, got {n}");
    }
    Ok(None)
}

async fn wait_policy_close_hands_back<F: QueueFactory>(h: &F) -> Outcome {
    let Some(store) = h.queue_store(1, Overflow::Wait).await else {
        return unsupported(Overflow::Wait);
    };
    let _idle = store.subscribe();
    submit(&store, 1).await?;
    let (waiting, ()) = zip(store.submit(Sample::sample(2)), async {
        h.sleep(QUIET).await;
        store.close();
    })
    .await;
    match waiting {
        Err(e) => ensure!(
            number(&e.into_inner())? == 2,
            "close handed back another value"
        ),
        Ok(_) => return Err("a submit waiting on a full queue was accepted after close".into()),
    }
    Ok(None)
}

async fn drop_oldest_reports_missed<F: QueueFactory>(h: &F) -> Outcome {
    let Some(store) = h.queue_store(4, Overflow::DropOldest).await else {
        return unsupported(Overflow::DropOldest);
    };
    let mut sub = store.subscribe();
    for n in 1..=10 {
        submit_now(h, &store, n)
            .await
            .map_err(|e| format!("DropOldest must never refuse a submit: {e}"))?;
    }
    match next_item::<F, F::Store>(h, &mut sub).await? {
        Err(RecvError::Lagged { missed: 6 }) => {}
        other => {
            return Err(format!(
                "expected Lagged {{ missed: 6 }}, got {:?}",
                other.map(|m| m.position())
            ));
        }
    }
    for expected in 7..=10 {
        let (n, _) = next_number::<F, F::Store>(h, &mut sub).await?;
        ensure!(
            n == expected,
            "after the lag report expected message {expected}, got {n}"
        );
    }
    submit(&store, 11).await?;
    let (n, _) = next_number::<F, F::Store>(h, &mut sub).await?;
    ensure!(
        n == 11,
        "a laggard did not go on after its lag report (got {n})"
    );
    Ok(None)
}

async fn disconnect_ends_laggard<F: QueueFactory>(h: &F) -> Outcome {
    let Some(store) = h.queue_store(4, Overflow::Disconnect).await else {
        return unsupported(Overflow::Disconnect);
    };
    let mut laggard = store.subscribe();
    let mut reader = store.subscribe();
    for n in 1..=10 {
        submit_now(h, &store, n)
            .await
            .map_err(|e| format!("Disconnect must never refuse a submit: {e}"))?;
        let (got, _) = next_number::<F, F::Store>(h, &mut reader).await?;
        ensure!(got == n, "a subscriber keeping up got {got}, expected {n}");
    }
    match next_item::<F, F::Store>(h, &mut laggard).await? {
        Err(RecvError::FellBehind { .. }) => {}
        other => {
            return Err(format!(
                "expected FellBehind, got {:?}",
                other.map(|m| m.position())
            ));
        }
    }
    ends::<F, F::Store>(h, &mut laggard).await?;
    ensure!(
        store.subscriber_count() == 1,
        "a disconnected laggard still counts ({} subscribers)",
        store.subscriber_count()
    );
    Ok(None)
}

async fn queue_resumes_after_position<F: QueueFactory>(h: &F) -> Outcome {
    let Some(store) = h.queue_store(8, Overflow::Wait).await else {
        return unsupported(Overflow::Wait);
    };
    let mut positions = Vec::new();
    for n in 1..=5 {
        positions.push(submit(&store, n).await?);
    }
    let mut sub = store.subscribe_from(Start::After(positions[2]));
    for expected in 4..=5 {
        let (n, p) = next_number::<F, F::Store>(h, &mut sub).await?;
        ensure!(
            n == expected,
            "resuming after message 3 expected {expected}, got {n}"
        );
        ensure!(
            p == positions[expected as usize - 1],
            "message {n} came with position {p}"
        );
    }
    ensure!(
        stays_pending(h, sub.next()).await,
        "a message arrived twice or out of nowhere"
    );
    Ok(None)
}

async fn queue_resumes_from_oldest<F: QueueFactory>(h: &F) -> Outcome {
    let Some(store) = h.queue_store(4, Overflow::Wait).await else {
        return unsupported(Overflow::Wait);
    };
    for n in 1..=6 {
        within(h, "submit with no subscribers", submit(&store, n)).await??;
    }
    let mut sub = store.subscribe_from(Start::Oldest);
    for expected in 3..=6 {
        let (n, _) = next_number::<F, F::Store>(h, &mut sub).await?;
        ensure!(
            n == expected,
            "from the oldest expected message {expected}, got {n}"
        );
    }
    Ok(None)
}

async fn queue_resume_from_gone_position<F: QueueFactory>(h: &F) -> Outcome {
    let Some(store) = h.queue_store(4, Overflow::Wait).await else {
        return unsupported(Overflow::Wait);
    };
    let mut positions = Vec::new();
    for n in 1..=10 {
        positions.push(within(h, "submit with no subscribers", submit(&store, n)).await??);
    }
    let mut sub = store.subscribe_from(Start::After(positions[1]));
    match next_item::<F, F::Store>(h, &mut sub).await? {
        Err(RecvError::Lagged { missed: 4 }) => {}
        other => {
            return Err(format!(
                "resuming after a position no longer retained: expected Lagged {{ missed: 4 }}, got {:?}",
                other.map(|m| m.position())
            ));
        }
    }
    for expected in 7..=10 {
        let (n, _) = next_number::<F, F::Store>(h, &mut sub).await?;
        ensure!(
            n == expected,
            "after the loss report expected message {expected}, got {n}"
        );
    }
    Ok(None)
}

async fn queue_close_drains_then_ends<F: QueueFactory>(h: &F) -> Outcome {
    let Some(store) = h.queue_store(8, Overflow::Wait).await else {
        return unsupported(Overflow::Wait);
    };
    let mut sub = store.subscribe();
    for n in 1..=3 {
        submit(&store, n).await?;
    }
    store.close();
    ensure!(store.is_closed(), "is_closed is false after close");
    match store.try_submit(Sample::sample(4)) {
        Err(TrySubmitError::Closed(v)) => {
            ensure!(number(&v)? == 4, "Closed handed back another value")
        }
        other => {
            return Err(format!(
                "try_submit after close gave {:?}, expected Closed",
                other.map(|_| ())
            ));
        }
    }
    for expected in 1..=3 {
        let (n, _) = next_number::<F, F::Store>(h, &mut sub).await?;
        ensure!(
            n == expected,
            "draining a closed queue expected {expected}, got {n}"
        );
    }
    ends::<F, F::Store>(h, &mut sub).await?;
    let mut late = store.subscribe();
    ends::<F, F::Store>(h, &mut late).await?;
    Ok(None)
}

async fn dropped_subscriber_does_not_stall<F: QueueFactory>(h: &F) -> Outcome {
    let Some(store) = h.queue_store(2, Overflow::Wait).await else {
        return unsupported(Overflow::Wait);
    };
    let never_polled = store.subscribe();
    let mut stalled = store.subscribe();
    submit(&store, 1).await?;
    let (n, _) = next_number::<F, F::Store>(h, &mut stalled).await?;
    ensure!(n == 1, "expected message 1, got {n}");
    submit(&store, 2).await?;
    let mut waiting = Box::pin(submit(&store, 3));
    ensure!(
        stays_pending(h, waiting.as_mut()).await,
        "submit on a full lossless queue did not wait"
    );
    drop(never_polled);
    drop(stalled);
    within(h, "a submit held up only by dropped subscribers", waiting).await??;
    for n in 4..=10 {
        within(h, "submits with no subscribers left", submit(&store, n)).await??;
    }
    Ok(None)
}

async fn queue_subscriber_count<F: QueueFactory>(h: &F) -> Outcome {
    let Some(store) = h.queue_store(4, Overflow::Wait).await else {
        return unsupported(Overflow::Wait);
    };
    subscriber_count_follows_subscribers(h, async { store }).await
}
