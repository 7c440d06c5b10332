//! A store's stop signal: given once, by `close` or by dropping the store's last handle;
//! its background tasks end when they see it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use event_listener::Event;

#[derive(Debug, Default)]
pub(crate) struct Shutdown {
    stopped: AtomicBool,
    /// Notified once, when `stopped` is set.
    event: Event,
}

impl Shutdown {
    /// Gives the signal; true the first time.
    pub(crate) fn trigger(&self) -> bool {
        let first = !self.stopped.swap(true, Ordering::SeqCst);
        if first {
            self.event.notify(usize::MAX);
        }
        first
    }

    pub(crate) fn is_triggered(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Resolves once the signal is given.
    pub(crate) async fn wait(&self) {
        loop {
            if self.is_triggered() {
                return;
            }
            let listener = self.event.listen();
            if self.is_triggered() {
                return;
            }
            listener.await;
        }
    }

    /// `work`'s output, or `None` if the signal comes first.
    pub(crate) async fn unless<F: Future>(&self, work: F) -> Option<F::Output> {
        futures_lite::future::or(async { Some(work.await) }, async {
            self.wait().await;
            None
        })
        .await
    }
}
