//! The conformance suite proves itself: each deliberately broken store below (a real store
//! behind a wrapper that skips, repeats, reorders, hangs on close, resumes one too early,
//! swallows or miscounts a lag report, miscounts subscribers...) must be rejected, and by
//! the check named for that behaviour. A weaker suite fails this test.
// Real threads and timers: loom builds (`--cfg loom`) run only tests/loom.rs.
#![cfg(not(loom))]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::Stream;
use futures_lite::future::block_on;
use storecast::conformance::{self, Harness, LatestFactory, QueueFactory};
use storecast::{
    DataStore, Item, Message, Overflow, Position, QueueStore, RecvError, Start, Store, SubmitError,
    TryRecvError, TrySubmitError,
};

/// What a broken store gets wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    /// Every seventh message never reaches subscribers.
    Skips,
    /// The first message at offset 3 or later a subscriber gets arrives twice.
    Repeats,
    /// The second and third messages arrive swapped.
    Reorders,
    /// A subscriber that waited once never ends after close.
    HangsWhenParked,
    /// After the end of a closed store, the last message comes again.
    RepeatsOnClose,
    /// `Start::After(p)` on a lossy queue delivers `p` again.
    ResumesOneTooEarlyWhenLossy,
    /// A lossy queue's lag reports are dropped.
    SwallowsLagWhenLossy,
    /// Lag reports count one more message than was lost.
    MiscountsLag,
    /// A position ahead of the store is taken as "now", silently (the old behaviour).
    AheadIsNow,
    /// Every store numbers its messages in the same epoch.
    SharesOneEpoch,
    /// Offsets go up by two.
    SkipsOffsets,
    /// Subscribers that went are still counted.
    MiscountsSubscribers,
    /// Something keeps a handle: dropping the user's last one does not close the store.
    NeverClosesOnDrop,
    /// `try_recv` says `Closed` when there is nothing yet.
    EmptyIsClosed,
}

/// A real store with a bug.
#[derive(Clone)]
struct Broken<S> {
    inner: S,
    bug: Bug,
    /// Whether the store's policy is lossy (for bugs that only show there).
    lossy: bool,
    /// Subscribers ever made (for `MiscountsSubscribers`).
    made: Arc<AtomicUsize>,
}

impl<S> Broken<S> {
    fn new(inner: S, bug: Bug, lossy: bool) -> Self
    where
        S: Clone + Send + 'static,
    {
        if bug == Bug::NeverClosesOnDrop {
            std::mem::forget(inner.clone());
        }
        Broken {
            inner,
            bug,
            lossy,
            made: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// What the bug does to a position on its way out.
    fn out(&self, p: Position) -> Position {
        match self.bug {
            Bug::SharesOneEpoch => Position::new(storecast::Epoch::new(1), p.offset()),
            Bug::SkipsOffsets => Position::new(p.epoch(), p.offset() * 2),
            _ => p,
        }
    }
}

trait Inner: Store + Clone {
    fn epoch(&self) -> storecast::Epoch;
    fn newest(&self) -> u64;
}

impl Inner for QueueStore<String> {
    fn epoch(&self) -> storecast::Epoch {
        QueueStore::epoch(self)
    }
    fn newest(&self) -> u64 {
        self.last_position().offset()
    }
}

impl Inner for DataStore<String> {
    fn epoch(&self) -> storecast::Epoch {
        DataStore::epoch(self)
    }
    fn newest(&self) -> u64 {
        self.current().map_or(0, |m| m.position().offset())
    }
}

impl<S: Inner<Value = String>> Store for Broken<S> {
    type Value = String;
    type Subscriber = BrokenSubscriber<S::Subscriber>;

    async fn submit(&self, value: String) -> Result<Position, SubmitError<String>> {
        self.inner.submit(value).await.map(|p| self.out(p))
    }

    fn try_submit(&self, value: String) -> Result<Position, TrySubmitError<String>> {
        self.inner.try_submit(value).map(|p| self.out(p))
    }

    fn subscribe_from(&self, start: Start) -> Self::Subscriber {
        self.made.fetch_add(1, Ordering::Relaxed);
        let start = match (self.bug, start) {
            (Bug::ResumesOneTooEarlyWhenLossy, Start::After(p)) if self.lossy => {
                Start::After(Position::new(p.epoch(), p.offset().saturating_sub(1)))
            }
            (Bug::AheadIsNow, Start::After(p))
                if p.epoch() == self.inner.epoch() && p.offset() > self.inner.newest() =>
            {
                Start::Now
            }
            (Bug::SharesOneEpoch, Start::After(p)) => {
                Start::After(Position::new(self.inner.epoch(), p.offset()))
            }
            (Bug::SkipsOffsets, Start::After(p)) => {
                Start::After(Position::new(p.epoch(), p.offset() / 2))
            }
            (_, start) => start,
        };
        BrokenSubscriber {
            inner: self.inner.subscribe_from(start),
            bug: self.bug,
            lossy: self.lossy,
            parked: false,
            last: None,
            repeated: false,
            held: VecDeque::new(),
            done: false,
        }
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
        match self.bug {
            Bug::MiscountsSubscribers => self.made.load(Ordering::Relaxed),
            _ => self.inner.subscriber_count(),
        }
    }
}

struct BrokenSubscriber<S> {
    inner: S,
    bug: Bug,
    lossy: bool,
    /// It returned `Pending` once.
    parked: bool,
    /// The last message it yielded.
    last: Option<Message<String>>,
    /// `Repeats` or `RepeatsOnClose` did its repeat.
    repeated: bool,
    /// Items to yield before the next from `inner`.
    held: VecDeque<Item<String>>,
    done: bool,
}

impl<S: Stream<Item = Item<String>> + Send + Unpin> storecast::Subscriber for BrokenSubscriber<S> {
    type Value = String;

    fn try_recv(&mut self) -> Result<Message<String>, TryRecvError> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut *self).poll_next(&mut cx) {
            Poll::Ready(Some(item)) => item.map_err(TryRecvError::from),
            Poll::Ready(None) => Err(TryRecvError::Closed),
            Poll::Pending if self.bug == Bug::EmptyIsClosed => Err(TryRecvError::Closed),
            Poll::Pending => Err(TryRecvError::Empty),
        }
    }
}

impl<S: Stream<Item = Item<String>> + Unpin> Stream for BrokenSubscriber<S> {
    type Item = Item<String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item<String>>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.held.pop_front() {
                return Poll::Ready(Some(item));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let item = match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => {
                    this.parked = true;
                    return Poll::Pending;
                }
                Poll::Ready(None) => match this.bug {
                    Bug::HangsWhenParked if this.parked => return Poll::Pending,
                    Bug::RepeatsOnClose if !this.repeated && this.last.is_some() => {
                        this.repeated = true;
                        this.done = true;
                        return Poll::Ready(this.last.clone().map(Ok));
                    }
                    _ => {
                        this.done = true;
                        return Poll::Ready(None);
                    }
                },
                Poll::Ready(Some(item)) => item,
            };
            let item = match (this.bug, item) {
                (Bug::SharesOneEpoch | Bug::SkipsOffsets, Ok(m)) => {
                    let p = m.position();
                    let p = if this.bug == Bug::SkipsOffsets {
                        Position::new(p.epoch(), p.offset() * 2)
                    } else {
                        Position::new(storecast::Epoch::new(1), p.offset())
                    };
                    Ok(Message::from_arc(p, Arc::clone(m.value())))
                }
                (Bug::Skips, Ok(m)) if m.position().offset() % 7 == 0 => continue,
                (Bug::Repeats, Ok(m)) if m.position().offset() >= 3 && !this.repeated => {
                    this.repeated = true;
                    this.held.push_back(Ok(m.clone()));
                    Ok(m)
                }
                (Bug::Reorders, Ok(m)) if m.position().offset() == 2 => {
                    this.last = Some(m);
                    continue;
                }
                (Bug::Reorders, Ok(m)) if m.position().offset() == 3 => {
                    this.held.extend(this.last.take().map(Ok));
                    Ok(m)
                }
                (Bug::SwallowsLagWhenLossy, Err(RecvError::Lagged { .. })) if this.lossy => {
                    continue;
                }
                (Bug::MiscountsLag, Err(RecvError::Lagged { missed })) => {
                    Err(RecvError::Lagged { missed: missed + 1 })
                }
                (_, item) => item,
            };
            if let Ok(m) = &item {
                this.last = Some(m.clone());
            }
            return Poll::Ready(Some(item));
        }
    }
}

/// Makes broken stores for the suite.
struct Factory(Bug);

impl Harness for Factory {
    async fn sleep(&self, duration: Duration) {
        conformance::thread_sleep(duration).await
    }
}

impl QueueFactory for Factory {
    type Store = Broken<QueueStore<String>>;
    async fn queue_store(&self, capacity: usize, overflow: Overflow) -> Self::Store {
        let store = QueueStore::with_overflow(capacity, overflow);
        Broken::new(store, self.0, overflow != Overflow::Wait)
    }
}

impl LatestFactory for Factory {
    type Store = Broken<DataStore<String>>;
    async fn latest_store(&self) -> Self::Store {
        Broken::new(DataStore::new(), self.0, false)
    }
}

fn queue_rejects(bug: Bug) -> String {
    match block_on(conformance::check_queue(&Factory(bug))) {
        Ok(report) => panic!("the queue suite passed a store that {bug:?}: {report:?}"),
        Err(failure) => failure.check,
    }
}

fn latest_rejects(bug: Bug) -> String {
    match block_on(conformance::check_latest(&Factory(bug))) {
        Ok(report) => panic!("the latest-value suite passed a store that {bug:?}: {report:?}"),
        Err(failure) => failure.check,
    }
}

#[test]
fn the_wrapper_without_a_bug_passes_so_each_rejection_is_the_bug_s() {
    // The wrapper itself must not be what the suite rejects.
    struct Honest;
    impl Harness for Honest {
        async fn sleep(&self, duration: Duration) {
            conformance::thread_sleep(duration).await
        }
    }
    impl QueueFactory for Honest {
        type Store = Broken<QueueStore<String>>;
        async fn queue_store(&self, capacity: usize, overflow: Overflow) -> Self::Store {
            // A bug that only shows on a lossy queue, on a lossless one: no bug at all.
            let store = QueueStore::with_overflow(capacity, overflow);
            Broken::new(store, Bug::ResumesOneTooEarlyWhenLossy, false)
        }
    }
    let report = block_on(conformance::check_queue(&Honest)).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.passed.len(), conformance::QUEUE_CHECKS);
}

#[test]
fn a_queue_that_skips_is_rejected() {
    assert_eq!(
        queue_rejects(Bug::Skips),
        "queue_delivers_every_message_in_order_to_every_subscriber (Wait)"
    );
}

#[test]
fn a_queue_that_repeats_is_rejected() {
    assert_eq!(
        queue_rejects(Bug::Repeats),
        "queue_delivers_every_message_in_order_to_every_subscriber (Wait)"
    );
}

#[test]
fn a_queue_that_reorders_is_rejected() {
    assert_eq!(
        queue_rejects(Bug::Reorders),
        "queue_delivers_every_message_in_order_to_every_subscriber (Wait)"
    );
}

#[test]
fn a_queue_whose_parked_subscribers_hang_on_close_is_rejected() {
    assert_eq!(
        queue_rejects(Bug::HangsWhenParked),
        "queue_close_ends_parked_subscribers_without_repeating (Wait)"
    );
}

#[test]
fn a_queue_that_repeats_on_close_is_rejected() {
    assert_eq!(
        queue_rejects(Bug::RepeatsOnClose),
        "queue_close_drains_then_ends (Wait)"
    );
}

#[test]
fn a_lossy_queue_that_resumes_one_too_early_is_rejected() {
    assert_eq!(
        queue_rejects(Bug::ResumesOneTooEarlyWhenLossy),
        "queue_resumes_after_retained_position (DropOldest)"
    );
}

#[test]
fn a_lossy_queue_that_swallows_lag_reports_is_rejected() {
    assert_eq!(
        queue_rejects(Bug::SwallowsLagWhenLossy),
        "queue_resume_from_gone_position_reports_lost (DropOldest)"
    );
}

#[test]
fn a_queue_that_miscounts_lag_is_rejected() {
    assert_eq!(
        queue_rejects(Bug::MiscountsLag),
        "queue_resume_from_gone_position_reports_lost (Wait)"
    );
}

#[test]
fn a_queue_that_takes_a_position_ahead_as_now_is_rejected() {
    assert_eq!(
        queue_rejects(Bug::AheadIsNow),
        "queue_resume_from_ahead_resets_then_oldest (Wait)"
    );
}

#[test]
fn queues_that_share_one_epoch_are_rejected() {
    assert_eq!(
        queue_rejects(Bug::SharesOneEpoch),
        "queue_resume_from_other_epoch_resets_then_oldest (Wait)"
    );
}

#[test]
fn a_queue_whose_offsets_skip_is_rejected() {
    assert_eq!(
        queue_rejects(Bug::SkipsOffsets),
        "queue_positions_are_consecutive_in_one_epoch (Wait)"
    );
}

#[test]
fn a_queue_that_miscounts_subscribers_is_rejected() {
    assert_eq!(
        queue_rejects(Bug::MiscountsSubscribers),
        "queue_subscriber_count_follows_subscribers (Wait)"
    );
}

#[test]
fn a_queue_that_stays_open_when_its_last_handle_goes_is_rejected() {
    assert_eq!(
        queue_rejects(Bug::NeverClosesOnDrop),
        "queue_last_handle_dropped_ends_subscribers (Wait)"
    );
}

#[test]
fn a_latest_store_that_repeats_is_rejected() {
    assert_eq!(
        latest_rejects(Bug::Repeats),
        "latest_never_repeats_never_goes_back_and_ends_with_last"
    );
}

#[test]
fn a_latest_store_whose_parked_subscribers_hang_on_close_is_rejected() {
    assert_eq!(
        latest_rejects(Bug::HangsWhenParked),
        "latest_close_ends_parked_subscribers_without_repeating"
    );
}

#[test]
fn a_latest_store_that_repeats_on_close_is_rejected() {
    assert_eq!(
        latest_rejects(Bug::RepeatsOnClose),
        "latest_close_delivers_last_then_ends"
    );
}

#[test]
fn a_latest_store_that_takes_a_position_ahead_as_now_is_rejected() {
    assert_eq!(
        latest_rejects(Bug::AheadIsNow),
        "latest_resume_from_ahead_resets_then_current"
    );
}

#[test]
fn latest_stores_that_share_one_epoch_are_rejected() {
    assert_eq!(
        latest_rejects(Bug::SharesOneEpoch),
        "latest_resume_from_other_epoch_resets_then_current"
    );
}

#[test]
fn a_latest_store_that_stays_open_when_its_last_handle_goes_is_rejected() {
    assert_eq!(
        latest_rejects(Bug::NeverClosesOnDrop),
        "latest_last_handle_dropped_ends_subscribers"
    );
}

#[test]
fn a_latest_store_that_miscounts_subscribers_is_rejected() {
    assert_eq!(
        latest_rejects(Bug::MiscountsSubscribers),
        "latest_subscriber_count_follows_subscribers"
    );
}

#[test]
fn a_queue_whose_try_recv_takes_empty_for_closed_is_rejected() {
    assert_eq!(
        queue_rejects(Bug::EmptyIsClosed),
        "queue_recv_and_try_recv_tell_empty_from_closed (Wait)"
    );
}

#[test]
fn a_latest_store_whose_try_recv_takes_empty_for_closed_is_rejected() {
    assert_eq!(
        latest_rejects(Bug::EmptyIsClosed),
        "latest_recv_and_try_recv_tell_empty_from_closed"
    );
}
