//! Waiting for an [`Event`] without losing a wake-up: the one loop both stores' subscribers
//! and the queue's submitters use.

use core::pin::Pin;
use core::task::{Context, Poll};

use event_listener::{Event, EventListener};

/// Polls `attempt` until it yields, parking on `event` in between.
///
/// The listener is registered *before* the second attempt, so a notification that lands
/// between a failed attempt and the registration is not missed: either the attempt sees
/// the new state, or the listener sees the notification.
pub(crate) fn poll_until<R>(
    event: &Event,
    listener: &mut Option<EventListener>,
    cx: &mut Context<'_>,
    mut attempt: impl FnMut() -> Option<R>,
) -> Poll<R> {
    loop {
        if let Some(ready) = attempt() {
            *listener = None;
            return Poll::Ready(ready);
        }
        match listener {
            None => *listener = Some(event.listen()),
            Some(armed) => {
                if Pin::new(armed).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *listener = None;
            }
        }
    }
}
