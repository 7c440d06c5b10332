//! Tokio's timer as a stream of ticks, for keep-alives and periodic submits.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::Stream;
use tokio::time::{Interval, MissedTickBehavior};

/// Ticks every `period`, the first one period from now; a late tick is not made up with
/// a burst.
pub(crate) struct Ticks(Interval);

impl Ticks {
    pub(crate) fn new(period: Duration) -> Self {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticks(interval)
    }
}

impl Stream for Ticks {
    type Item = ();

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        self.get_mut().0.poll_tick(cx).map(|_| Some(()))
    }
}
