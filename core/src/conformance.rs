//! The conformance suite: executor-agnostic checks of the contract every store keeps.
//!
//! Any store can run it from its tests — the in-memory stores on any runtime, the Redis
//! stores against a real server, or a store of your own. You provide a factory that makes
//! fresh stores and a way to sleep on your runtime; the suite runs every check and returns
//! a [`Report`], or the first [`Failure`] with the name of the check and what went wrong.
//!
//! Every queue check that applies to any [`Overflow`] policy runs once per policy, its
//! name followed by the policy (`queue_close_drains_then_ends (DropOldest)`). A factory
//! makes every policy unless [`QueueFactory::offers`] says it does not: only then is a
//! check skipped, and the report says so.
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
//!     async fn queue_store(&self, capacity: usize, overflow: Overflow) -> Self::Store {
//!         QueueStore::with_overflow(capacity, overflow)
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

use crate::{
    Item, Overflow, Position, RecvError, ResetReason, Start, Store, Subscriber, TryRecvError,
    TrySubmitError,
};

/// How long a check waits for something that should happen before calling it a failure.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long a check waits to be confident that something does *not* happen.
const QUIET: Duration = Duration::from_millis(100);

/// Why a check of dropping the last handle is skipped.
const NEVER_DROPPED: &str = "the factory says its stores are never dropped";

/// How many latest-value checks [`check_latest`] runs.
pub const LATEST_CHECKS: usize = 12;
/// How many queue checks [`check_queue`] runs (counting each policy a check runs under).
pub const QUEUE_CHECKS: usize = 14 * 3 + 5;

/// Every overflow policy, in the order the suite runs them.
const POLICIES: [Overflow; 3] = [Overflow::Wait, Overflow::DropOldest, Overflow::Disconnect];

/// What the suite needs from a runtime.
pub trait Harness {
    /// Sleeps for `duration` on the runtime under test.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()>;

    /// Whether dropping the last handle to a store closes it. True of every store but
    /// one that is never dropped (a `&'static` store in a `static`): only a factory of
    /// such stores says false, and the check is then reported as skipped.
    fn closes_when_last_handle_drops(&self) -> bool {
        true
    }
}

/// Makes fresh latest-value stores for the suite.
pub trait LatestFactory: Harness {
    /// The store under test.
    type Store: Store<Value: Sample>;
    /// A new, empty store, used by one check only. Two stores it makes have different
    /// epochs.
    fn latest_store(&self) -> impl Future<Output = Self::Store>;
}

/// Makes fresh queue stores for the suite.
pub trait QueueFactory: Harness {
    /// The store under test.
    type Store: Store<Value: Sample>;

    /// Whether this kind of store offers `overflow` at all. Every policy is assumed
    /// offered: a factory that does not offer one says so here, and the checks that need
    /// it are then reported as skipped (never silently passed).
    fn offers(&self, overflow: Overflow) -> bool {
        let _ = overflow;
        true
    }

    /// A new, empty queue retaining `capacity` messages under `overflow`, used by one
    /// check only. Two stores it makes have different epochs.
    fn queue_store(&self, capacity: usize, overflow: Overflow)
    -> impl Future<Output = Self::Store>;
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
    /// The checks that ran and passed (a queue check's name ends with its policy).
    pub passed: Vec<String>,
    /// The checks that did not apply, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// A check that failed: its name and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The name of the check, which states the behaviour expected (a queue check's ends
    /// with the policy it ran under, as in `queue_close_drains_then_ends (Wait)`).
    pub check: String,
    /// What was observed instead.
    pub reason: String,
}

impl Failure {
    /// The check's name without the policy it ran under.
    pub fn check_name(&self) -> &str {
        self.check
            .split_once(' ')
            .map_or(self.check.as_str(), |(name, _)| name)
    }
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

async fn run(checks: Vec<(String, Check<'_>)>) -> Result<Report, Failure> {
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

/// The next message's sample number and position, failing on news of any kind.
async fn next_number<H: Harness, S: Store<Value: Sample>>(
    h: &H,
    sub: &mut S::Subscriber,
) -> Result<(u64, Position), String> {
    match next_item::<H, S>(h, sub).await? {
        Ok(m) => Ok((number(&*m)?, m.position())),
        Err(e) => Err(format!("expected a message, got `{e}`")),
    }
}

/// Reads messages `from..=to` in order, failing on anything else.
async fn expect_numbers<H: Harness, S: Store<Value: Sample>>(
    h: &H,
    sub: &mut S::Subscriber,
    from: u64,
    to: u64,
    context: &str,
) -> Result<(), String> {
    for expected in from..=to {
        let (n, _) = next_number::<H, S>(h, sub).await?;
        ensure!(
            n == expected,
            "{context}: expected message {expected}, got {n}"
        );
    }
    Ok(())
}

/// The next item must be exactly `news`.
async fn expect_news<H: Harness, S: Store>(
    h: &H,
    sub: &mut S::Subscriber,
    news: RecvError,
    context: &str,
) -> Result<(), String> {
    match next_item::<H, S>(h, sub).await? {
        Err(e) if e == news => Ok(()),
        Err(e) => Err(format!("{context}: expected `{news:?}`, got `{e:?}`")),
        Ok(m) => Err(format!(
            "{context}: expected `{news:?}`, got the message at {}",
            m.position()
        )),
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

/// Submits samples `from..=to` where nothing waits for them (no subscriber, or a lossy
/// policy), each within [`PATIENCE`]; returns their positions.
async fn submit_all<H: Harness, S: Store<Value: Sample>>(
    h: &H,
    store: &S,
    from: u64,
    to: u64,
) -> Result<Vec<Position>, String> {
    let mut positions = Vec::new();
    for n in from..=to {
        positions.push(within(h, "a submit nobody holds up", submit(store, n)).await??);
    }
    Ok(positions)
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
        Some(Ok(m)) => Err(format!(
            "expected the stream to end, got the message at {}",
            m.position()
        )),
        Some(Err(e)) => Err(format!("expected the stream to end, got `{e}`")),
    }
}

/// A position `by` messages past `p`, in its epoch: ahead of a store whose newest is `p`.
fn ahead_of(p: Position, by: u64) -> Position {
    Position::new(p.epoch(), p.offset() + by)
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
// Both
// ---------------------------------------------------------------------------------------

/// `recv` and `try_recv` say what the stream says, and tell "nothing yet" from "nothing
/// ever again".
async fn recv_and_try_recv_tell_empty_from_closed<H: Harness, S: Store<Value: Sample>>(
    h: &H,
    store: S,
) -> Outcome {
    let mut sub = store.subscribe();
    match sub.try_recv() {
        Err(TryRecvError::Empty) => {}
        Err(e) => {
            return Err(format!(
                "try_recv on an open store with nothing new: `{e:?}`"
            ));
        }
        Ok(m) => {
            return Err(format!(
                "try_recv found a message never submitted, at {}",
                m.position()
            ));
        }
    }
    submit(&store, 1).await?;
    match within(h, "recv", sub.recv()).await? {
        Ok(m) => ensure!(number(&*m)? == 1, "recv: expected message 1"),
        Err(e) => return Err(format!("recv: expected message 1, got `{e:?}`")),
    }
    submit(&store, 2).await?;
    // A store with a transport may take a moment to have it here.
    let found = within(h, "try_recv to find message 2", async {
        loop {
            match sub.try_recv() {
                Err(TryRecvError::Empty) => h.sleep(Duration::from_millis(5)).await,
                found => return found,
            }
        }
    })
    .await?;
    match found {
        Ok(m) => ensure!(number(&*m)? == 2, "try_recv: expected message 2"),
        Err(e) => return Err(format!("try_recv: expected message 2, got `{e:?}`")),
    }
    store.close();
    match within(h, "recv after close", sub.recv()).await? {
        Err(RecvError::Closed) => {}
        other => {
            return Err(format!(
                "recv on a closed, drained store: `{:?}`",
                other.map(|m| m.position())
            ));
        }
    }
    match sub.try_recv() {
        Err(TryRecvError::Closed) => {}
        other => {
            return Err(format!(
                "try_recv on a closed, drained store: `{:?}`",
                other.map(|m| m.position())
            ));
        }
    }
    ensure!(
        within(h, "the end of the stream", sub.next())
            .await?
            .is_none(),
        "the stream went on after recv said Closed"
    );
    Ok(None)
}

async fn subscriber_count_follows_subscribers<S: Store>(store: S) -> Outcome {
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

/// A subscriber waiting for a message when the store closes ends, and `closed()` resolves.
async fn close_ends_parked_subscribers<H: Harness, S: Store<Value: Sample>>(
    h: &H,
    store: S,
) -> Outcome {
    let mut parked = store.subscribe();
    let mut read = store.subscribe();
    submit_all(h, &store, 1, 1).await?;
    let (n, _) = next_number::<H, S>(h, &mut read).await?;
    ensure!(n == 1, "expected message 1, got {n}");
    // Catch the first subscriber up too, so that both wait for nothing but the close.
    let (n, _) = next_number::<H, S>(h, &mut parked).await?;
    ensure!(n == 1, "expected message 1, got {n}");
    ensure!(
        stays_pending(h, store.closed()).await,
        "closed() resolved on an open store"
    );
    let (ended, ()) = zip(
        async {
            let ended = within(h, "a parked subscriber to end after close", parked.next()).await;
            (ended, read.next().await)
        },
        async {
            h.sleep(QUIET).await;
            store.close();
        },
    )
    .await;
    match ended {
        (Ok(None), None) => {}
        (Ok(Some(Ok(m))), _) | (_, Some(Ok(m))) => {
            return Err(format!(
                "after close a subscriber that had read everything got the message at {} (again)",
                m.position()
            ));
        }
        (Ok(Some(Err(e))), _) | (_, Some(Err(e))) => {
            return Err(format!("after close a subscriber got `{e}`"));
        }
        (Err(e), _) => return Err(e),
    }
    within(h, "closed() to resolve after close", store.closed()).await?;
    Ok(None)
}

/// Dropping every handle closes the store: its subscribers read what is left (a queue:
/// every message; a latest-value store: at least the last), then end.
async fn last_handle_dropped_ends_subscribers<H: Harness, S: Store<Value: Sample>>(
    h: &H,
    store: S,
    latest: bool,
) -> Outcome {
    let mut sub = store.subscribe();
    submit_all(h, &store, 1, 2).await?;
    drop(store);
    let mut got = Vec::new();
    loop {
        match within(
            h,
            "the end of the stream after the last handle went",
            sub.next(),
        )
        .await?
        {
            None => break,
            Some(Ok(m)) => got.push(number(&*m)?),
            Some(Err(e)) => return Err(format!("unexpected `{e}`")),
        }
    }
    let expected = if latest {
        got.last() == Some(&2) && got.windows(2).all(|w| w[0] < w[1])
    } else {
        got == [1, 2]
    };
    ensure!(
        expected,
        "after the last handle went the subscriber read {got:?} and ended"
    );
    Ok(None)
}

// ---------------------------------------------------------------------------------------
// Latest value
// ---------------------------------------------------------------------------------------

/// Runs every latest-value check against stores from `factory`.
pub async fn check_latest<F: LatestFactory>(f: &F) -> Result<Report, Failure> {
    let checks: Vec<(&'static str, Check<'_>)> = alloc::vec![
        (
            "late_subscriber_sees_current_value",
            Box::pin(late_subscriber_sees_current_value(f))
        ),
        (
            "empty_store_subscriber_waits_for_first_value",
            Box::pin(empty_store_subscriber_waits_for_first_value(f))
        ),
        (
            "latest_never_repeats_never_goes_back_and_ends_with_last",
            Box::pin(latest_never_repeats_never_goes_back_and_ends_with_last(f))
        ),
        (
            "latest_submit_never_waits_and_positions_grow",
            Box::pin(latest_submit_never_waits(f))
        ),
        (
            "latest_resumes_after_position",
            Box::pin(latest_resumes_after_position(f))
        ),
        (
            "latest_resume_from_other_epoch_resets_then_current",
            Box::pin(latest_resume_from_other_epoch(f))
        ),
        (
            "latest_resume_from_ahead_resets_then_current",
            Box::pin(latest_resume_from_ahead(f))
        ),
        (
            "latest_close_delivers_last_then_ends",
            Box::pin(latest_close_delivers_last_then_ends(f))
        ),
        (
            "latest_close_ends_parked_subscribers_without_repeating",
            Box::pin(async { close_ends_parked_subscribers(f, f.latest_store().await).await })
        ),
        (
            "latest_last_handle_dropped_ends_subscribers",
            Box::pin(async {
                if !f.closes_when_last_handle_drops() {
                    return Ok(Some(NEVER_DROPPED.to_string()));
                }
                last_handle_dropped_ends_subscribers(f, f.latest_store().await, true).await
            })
        ),
        (
            "latest_subscriber_count_follows_subscribers",
            Box::pin(async { subscriber_count_follows_subscribers(f.latest_store().await).await })
        ),
        (
            "latest_recv_and_try_recv_tell_empty_from_closed",
            Box::pin(async {
                recv_and_try_recv_tell_empty_from_closed(f, f.latest_store().await).await
            })
        ),
    ];
    run(checks
        .into_iter()
        .map(|(name, check)| (name.to_string(), check))
        .collect())
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
    let mut previous: Option<Position> = None;
    let mut check = |p: Position| {
        if let Some(before) = previous {
            let grew = p.partial_cmp(&before) == Some(core::cmp::Ordering::Greater);
            ensure!(
                grew,
                "submit answered {p} after {before}: positions of one store grow, in one epoch"
            );
        }
        previous = Some(p);
        Ok(())
    };
    for n in 1..=100 {
        check(
            store
                .try_submit(Sample::sample(n))
                .map_err(|e| format!("try_submit without subscribers failed: {e}"))?,
        )?;
    }
    let _idle = store.subscribe();
    for n in 101..=200 {
        check(
            store
                .try_submit(Sample::sample(n))
                .map_err(|e| format!("try_submit with an idle subscriber failed: {e}"))?,
        )?;
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

/// A position of another store is told apart, then the current value follows.
async fn latest_resume_from_other_epoch<F: LatestFactory>(h: &F) -> Outcome {
    let other = h.latest_store().await;
    let elsewhere = submit(&other, 1).await?;
    let store = h.latest_store().await;
    submit(&store, 1).await?;
    let p2 = submit(&store, 2).await?;
    ensure!(
        p2.epoch() != elsewhere.epoch(),
        "two stores share the epoch {}: positions cannot tell them apart",
        p2.epoch()
    );
    let mut sub = store.subscribe_from(Start::After(elsewhere));
    let reset = RecvError::Reset {
        reason: ResetReason::OtherEpoch,
    };
    expect_news::<F, F::Store>(h, &mut sub, reset, "resuming from another store").await?;
    let (n, p) = next_number::<F, F::Store>(h, &mut sub).await?;
    ensure!(
        n == 2 && p == p2,
        "after the reset expected the current value 2 at {p2}, got {n} at {p}"
    );
    Ok(None)
}

/// A position ahead of the store (a client of a server that lost its data) is told
/// apart, then the current value follows.
async fn latest_resume_from_ahead<F: LatestFactory>(h: &F) -> Outcome {
    let store = h.latest_store().await;
    submit(&store, 1).await?;
    let p2 = submit(&store, 2).await?;
    let mut sub = store.subscribe_from(Start::After(ahead_of(p2, 100)));
    let reset = RecvError::Reset {
        reason: ResetReason::Ahead,
    };
    expect_news::<F, F::Store>(h, &mut sub, reset, "resuming from ahead of the store").await?;
    let (n, _) = next_number::<F, F::Store>(h, &mut sub).await?;
    ensure!(
        n == 2,
        "after the reset expected the current value 2, got {n}"
    );
    ensure!(
        stays_pending(h, sub.next()).await,
        "a value arrived twice after a reset"
    );
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
        let n = number(&*item.map_err(|e| format!("unexpected `{e}`"))?)?;
        ensure!(n > last, "got message {n} after {last}");
        last = n;
    }
    ensure!(
        last == 2,
        "expected the stream to end with message 2, it ended with {last}"
    );
    Ok(None)
}

// ---------------------------------------------------------------------------------------
// Queue
// ---------------------------------------------------------------------------------------

/// A queue check run under one policy.
type QueueCheck<'a, F> = fn(&'a F, Overflow) -> Check<'a>;

/// Runs every queue check against stores from `factory`: the checks that apply to any
/// policy once per policy, then those of one policy.
pub async fn check_queue<F: QueueFactory>(f: &F) -> Result<Report, Failure> {
    let every_policy: [(&'static str, QueueCheck<'_, F>); 14] = [
        (
            "queue_delivers_every_message_in_order_to_every_subscriber",
            |f, o| Box::pin(queue_delivers_every_message_in_order(f, o)),
        ),
        ("queue_positions_are_consecutive_in_one_epoch", |f, o| {
            Box::pin(queue_positions_are_consecutive(f, o))
        }),
        (
            "queue_subscriber_gets_only_messages_after_subscribing",
            |f, o| Box::pin(queue_subscriber_gets_only_later_messages(f, o)),
        ),
        ("queue_resumes_after_retained_position", |f, o| {
            Box::pin(queue_resumes_after_position(f, o))
        }),
        ("queue_resumes_from_oldest_retained", |f, o| {
            Box::pin(queue_resumes_from_oldest(f, o))
        }),
        ("queue_resume_from_gone_position_reports_lost", |f, o| {
            Box::pin(queue_resume_from_gone_position(f, o))
        }),
        (
            "queue_resume_from_other_epoch_resets_then_oldest",
            |f, o| Box::pin(queue_resume_from_other_epoch(f, o)),
        ),
        ("queue_resume_from_ahead_resets_then_oldest", |f, o| {
            Box::pin(queue_resume_from_ahead(f, o))
        }),
        ("queue_close_drains_then_ends", |f, o| {
            Box::pin(queue_close_drains_then_ends(f, o))
        }),
        (
            "queue_close_ends_parked_subscribers_without_repeating",
            |f, o| {
                Box::pin(async move {
                    close_ends_parked_subscribers(f, f.queue_store(8, o).await).await
                })
            },
        ),
        ("queue_last_handle_dropped_ends_subscribers", |f, o| {
            Box::pin(async move {
                if !f.closes_when_last_handle_drops() {
                    return Ok(Some(NEVER_DROPPED.to_string()));
                }
                last_handle_dropped_ends_subscribers(f, f.queue_store(8, o).await, false).await
            })
        }),
        ("queue_subscriber_count_follows_subscribers", |f, o| {
            Box::pin(async move {
                subscriber_count_follows_subscribers(f.queue_store(4, o).await).await
            })
        }),
        ("queue_news_is_never_empty", |f, o| {
            Box::pin(queue_news_is_never_empty(f, o))
        }),
        ("queue_recv_and_try_recv_tell_empty_from_closed", |f, o| {
            Box::pin(async move {
                recv_and_try_recv_tell_empty_from_closed(f, f.queue_store(8, o).await).await
            })
        }),
    ];
    let one_policy: [(&'static str, Overflow, QueueCheck<'_, F>); 5] = [
        (
            "wait_policy_try_submit_reports_full_and_submit_waits",
            Overflow::Wait,
            |f, o| Box::pin(wait_policy_full(f, o)),
        ),
        (
            "wait_policy_close_hands_back_waiting_message",
            Overflow::Wait,
            |f, o| Box::pin(wait_policy_close_hands_back(f, o)),
        ),
        (
            "dropped_subscriber_does_not_stall_lossless_queue",
            Overflow::Wait,
            |f, o| Box::pin(dropped_subscriber_does_not_stall(f, o)),
        ),
        (
            "drop_oldest_reports_missed_then_continues",
            Overflow::DropOldest,
            |f, o| Box::pin(drop_oldest_reports_missed(f, o)),
        ),
        (
            "disconnect_ends_laggard_with_error_and_spares_others",
            Overflow::Disconnect,
            |f, o| Box::pin(disconnect_ends_laggard(f, o)),
        ),
    ];
    let named = |name: &str, overflow: Overflow| format!("{name} ({overflow:?})");
    let skip = |overflow: Overflow| -> Check<'_> {
        Box::pin(async move {
            Ok(Some(format!(
                "the factory says it does not offer Overflow::{overflow:?}"
            )))
        })
    };
    let mut checks = Vec::new();
    for overflow in POLICIES {
        for (name, check) in every_policy {
            let check = if f.offers(overflow) {
                check(f, overflow)
            } else {
                skip(overflow)
            };
            checks.push((named(name, overflow), check));
        }
    }
    for (name, overflow, check) in one_policy {
        let check = if f.offers(overflow) {
            check(f, overflow)
        } else {
            skip(overflow)
        };
        checks.push((named(name, overflow), check));
    }
    run(checks).await
}

async fn queue_delivers_every_message_in_order<F: QueueFactory>(
    h: &F,
    overflow: Overflow,
) -> Outcome {
    const COUNT: u64 = 500;
    const CAPACITY: usize = 8;
    let store = h.queue_store(CAPACITY, overflow).await;
    let mut subs: Vec<_> = (0..3).map(|_| store.subscribe()).collect();
    if overflow != Overflow::Wait {
        // Nothing holds the publisher back: read in step with it, half a ring at a time.
        let step = CAPACITY as u64 / 2;
        for first in (1..=COUNT).step_by(step as usize) {
            let last = (first + step - 1).min(COUNT);
            for n in first..=last {
                submit_now(h, &store, n).await?;
            }
            for sub in &mut subs {
                expect_numbers::<F, F::Store>(h, sub, first, last, "a subscriber keeping up")
                    .await?;
            }
        }
        return Ok(None);
    }
    let publisher = async {
        for n in 1..=COUNT {
            within(h, "room in the queue", submit(&store, n)).await??;
        }
        Ok::<_, String>(())
    };
    let read_all = |mut sub: <F::Store as Store>::Subscriber| async move {
        expect_numbers::<F, F::Store>(h, &mut sub, 1, COUNT, "every message in order").await
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

/// Offsets go up by one per message, all in one epoch, and a subscriber receives each
/// message at the position its submit answered.
async fn queue_positions_are_consecutive<F: QueueFactory>(h: &F, overflow: Overflow) -> Outcome {
    let store = h.queue_store(8, overflow).await;
    let mut sub = store.subscribe();
    let mut previous: Option<Position> = None;
    for n in 1..=20 {
        let p = submit_now(h, &store, n).await?;
        if let Some(before) = previous {
            ensure!(
                p.epoch() == before.epoch() && p.offset() == before.offset() + 1,
                "submit answered {p} after {before}: offsets of one store are consecutive"
            );
        }
        previous = Some(p);
        let (got, at) = next_number::<F, F::Store>(h, &mut sub).await?;
        ensure!(
            got == n && at == p,
            "message {n} was submitted at {p}, received as {got} at {at}"
        );
    }
    Ok(None)
}

async fn queue_subscriber_gets_only_later_messages<F: QueueFactory>(
    h: &F,
    overflow: Overflow,
) -> Outcome {
    let store = h.queue_store(8, overflow).await;
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

async fn queue_resumes_after_position<F: QueueFactory>(h: &F, overflow: Overflow) -> Outcome {
    let store = h.queue_store(8, overflow).await;
    let positions = submit_all(h, &store, 1, 5).await?;
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
    let mut caught_up = store.subscribe_from(Start::After(positions[4]));
    submit_all(h, &store, 6, 6).await?;
    let (n, _) = next_number::<F, F::Store>(h, &mut caught_up).await?;
    ensure!(
        n == 6,
        "resuming after the newest message expected the next one, 6, got {n}"
    );
    Ok(None)
}

async fn queue_resumes_from_oldest<F: QueueFactory>(h: &F, overflow: Overflow) -> Outcome {
    let store = h.queue_store(4, overflow).await;
    submit_all(h, &store, 1, 6).await?;
    let mut sub = store.subscribe_from(Start::Oldest);
    expect_numbers::<F, F::Store>(h, &mut sub, 3, 6, "from the oldest retained").await?;
    Ok(None)
}

async fn queue_resume_from_gone_position<F: QueueFactory>(h: &F, overflow: Overflow) -> Outcome {
    let store = h.queue_store(4, overflow).await;
    let positions = submit_all(h, &store, 1, 10).await?;
    let mut sub = store.subscribe_from(Start::After(positions[1]));
    let lost = RecvError::Lagged { missed: 4 };
    expect_news::<F, F::Store>(
        h,
        &mut sub,
        lost,
        "resuming after a position no longer retained",
    )
    .await?;
    expect_numbers::<F, F::Store>(h, &mut sub, 7, 10, "after the loss report").await?;
    Ok(None)
}

async fn queue_resume_from_other_epoch<F: QueueFactory>(h: &F, overflow: Overflow) -> Outcome {
    let other = h.queue_store(4, overflow).await;
    let elsewhere = submit_all(h, &other, 1, 2).await?;
    let store = h.queue_store(4, overflow).await;
    let positions = submit_all(h, &store, 1, 6).await?;
    ensure!(
        positions[0].epoch() != elsewhere[1].epoch(),
        "two stores share the epoch {}: positions cannot tell them apart",
        positions[0].epoch()
    );
    let mut sub = store.subscribe_from(Start::After(elsewhere[1]));
    let reset = RecvError::Reset {
        reason: ResetReason::OtherEpoch,
    };
    expect_news::<F, F::Store>(h, &mut sub, reset, "resuming from another store").await?;
    expect_numbers::<F, F::Store>(h, &mut sub, 3, 6, "after a reset, from the oldest retained")
        .await?;
    Ok(None)
}

async fn queue_resume_from_ahead<F: QueueFactory>(h: &F, overflow: Overflow) -> Outcome {
    let store = h.queue_store(4, overflow).await;
    let positions = submit_all(h, &store, 1, 6).await?;
    let mut sub = store.subscribe_from(Start::After(ahead_of(positions[5], 1)));
    let reset = RecvError::Reset {
        reason: ResetReason::Ahead,
    };
    expect_news::<F, F::Store>(h, &mut sub, reset, "resuming from ahead of the store").await?;
    expect_numbers::<F, F::Store>(h, &mut sub, 3, 6, "after a reset, from the oldest retained")
        .await?;
    ensure!(
        stays_pending(h, sub.next()).await,
        "a message arrived twice after a reset"
    );
    Ok(None)
}

async fn queue_close_drains_then_ends<F: QueueFactory>(h: &F, overflow: Overflow) -> Outcome {
    let store = h.queue_store(8, overflow).await;
    let mut sub = store.subscribe();
    let mut read = store.subscribe();
    submit_all(h, &store, 1, 3).await?;
    expect_numbers::<F, F::Store>(h, &mut read, 1, 3, "before close").await?;
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
    expect_numbers::<F, F::Store>(h, &mut sub, 1, 3, "draining a closed queue").await?;
    ends::<F, F::Store>(h, &mut sub).await?;
    ends::<F, F::Store>(h, &mut read).await?;
    let mut late = store.subscribe();
    ends::<F, F::Store>(h, &mut late).await?;
    Ok(None)
}

/// Every report of lost messages counts at least one: `Lagged { missed: 0 }` is noise a
/// client would show as a gap.
async fn queue_news_is_never_empty<F: QueueFactory>(h: &F, overflow: Overflow) -> Outcome {
    let store = h.queue_store(2, overflow).await;
    let mut sub = store.subscribe();
    // A reader one message behind a ring of 2, so that under the lossy policies it meets
    // slots being overwritten.
    let mut previous = 0;
    for n in 1..=200 {
        submit_now(h, &store, n).await?;
        if n % 3 == 0 && overflow != Overflow::Wait {
            continue;
        }
        match within(h, "the next item", sub.next()).await? {
            None => break,
            Some(Ok(m)) => {
                let got = number(&*m)?;
                ensure!(got > previous, "got message {got} after {previous}");
                previous = got;
            }
            Some(Err(RecvError::Lagged { missed: 0 })) => {
                return Err("reported `Lagged { missed: 0 }`".into());
            }
            Some(Err(RecvError::Lagged { .. } | RecvError::FellBehind { .. })) => {}
            Some(Err(e)) => return Err(format!("unexpected `{e}`")),
        }
    }
    Ok(None)
}

async fn wait_policy_full<F: QueueFactory>(h: &F, overflow: Overflow) -> Outcome {
    let store = h.queue_store(2, overflow).await;
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
    expect_numbers::<F, F::Store>(h, &mut sub, 2, 3, "after room was made").await?;
    Ok(None)
}

async fn wait_policy_close_hands_back<F: QueueFactory>(h: &F, overflow: Overflow) -> Outcome {
    let store = h.queue_store(1, overflow).await;
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

async fn drop_oldest_reports_missed<F: QueueFactory>(h: &F, overflow: Overflow) -> Outcome {
    let store = h.queue_store(4, overflow).await;
    let mut sub = store.subscribe();
    for n in 1..=10 {
        submit_now(h, &store, n)
            .await
            .map_err(|e| format!("DropOldest must never refuse a submit: {e}"))?;
    }
    let lagged = RecvError::Lagged { missed: 6 };
    expect_news::<F, F::Store>(h, &mut sub, lagged, "a laggard 6 behind a ring of 4").await?;
    expect_numbers::<F, F::Store>(h, &mut sub, 7, 10, "after the lag report").await?;
    submit(&store, 11).await?;
    let (n, _) = next_number::<F, F::Store>(h, &mut sub).await?;
    ensure!(
        n == 11,
        "a laggard did not go on after its lag report (got {n})"
    );
    Ok(None)
}

async fn disconnect_ends_laggard<F: QueueFactory>(h: &F, overflow: Overflow) -> Outcome {
    let store = h.queue_store(4, overflow).await;
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

async fn dropped_subscriber_does_not_stall<F: QueueFactory>(h: &F, overflow: Overflow) -> Outcome {
    let store = h.queue_store(2, overflow).await;
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
    submit_all(h, &store, 4, 10).await?;
    Ok(None)
}
