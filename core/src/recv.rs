//! Receiving without a `StreamExt`: the future `recv` returns, and, with `std`, waiting on
//! a plain thread.

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use futures_core::Stream;

use crate::RecvError;

/// The future of a subscriber's `recv`: its next message, its news, or
/// [`RecvError::Closed`] once the store is closed and drained.
///
/// It polls the subscriber's [`Stream`] once per wake-up, so `recv().await` costs what
/// `next().await` does. Dropping it loses nothing: a message is taken only when the
/// future completes.
#[must_use = "futures do nothing unless polled"]
pub struct Recv<'a, S: ?Sized> {
    subscriber: &'a mut S,
}

impl<'a, S: ?Sized> Recv<'a, S> {
    /// The next message of `subscriber`: how a subscriber type of another crate gives
    /// itself a `recv` method.
    pub fn new(subscriber: &'a mut S) -> Self {
        Recv { subscriber }
    }
}

impl<S, M> Future for Recv<'_, S>
where
    S: Stream<Item = Result<M, RecvError>> + Unpin + ?Sized,
{
    type Output = Result<M, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut *self.get_mut().subscriber)
            .poll_next(cx)
            .map(|item| item.unwrap_or(Err(RecvError::Closed)))
    }
}

impl<S: ?Sized> fmt::Debug for Recv<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recv").finish_non_exhaustive()
    }
}

/// Runs `future` to completion on this thread, parking it between wake-ups: the
/// `*_blocking` calls, for threads outside any async runtime.
///
/// Inside a runtime's task this blocks the runtime's thread; the `*_blocking` calls say
/// so.
#[cfg(feature = "std")]
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    use std::thread::{self, Thread};

    struct Unpark(Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }

    std::thread_local! {
        // One waker per thread, made once: a loop of `recv_blocking` allocates nothing.
        static WAKER: Waker = Waker::from(Arc::new(Unpark(thread::current())));
    }

    let mut future = core::pin::pin!(future);
    WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            // A wake-up between the poll and here leaves a token: `park` returns at once.
            thread::park();
        }
    })
}
