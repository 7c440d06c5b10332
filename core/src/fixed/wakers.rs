//! Waiting tasks of a fixed-capacity store, in fixed memory.

use core::task::Waker;

/// Up to `N` wakers of tasks waiting on a store.
///
/// When a task registers while the list is full, every registered task is woken to make
/// room (each re-registers when it is polled again). So a full list costs spurious
/// wake-ups, never a lost one. With `N == 0` a waiting task is woken at once and keeps
/// polling.
#[derive(Debug)]
pub(crate) struct WakerList<const N: usize> {
    wakers: heapless::Vec<Waker, N>,
}

/// Wakers taken out of a list under its store's lock, to be woken after it is released.
#[must_use = "wake them once the lock is released"]
#[derive(Debug, Default)]
pub(crate) struct ToWake<const N: usize>(heapless::Vec<Waker, N>);

impl<const N: usize> ToWake<N> {
    pub(crate) fn wake(self) {
        for waker in self.0 {
            waker.wake();
        }
    }
}

impl<const N: usize> WakerList<N> {
    pub(crate) const fn new() -> Self {
        WakerList {
            wakers: heapless::Vec::new(),
        }
    }

    /// Registers `waker` (once, however often its task polls); returns the wakers to wake
    /// when room had to be made.
    pub(crate) fn register(&mut self, waker: &Waker) -> ToWake<N> {
        if self.wakers.iter().any(|w| w.will_wake(waker)) {
            return ToWake::default();
        }
        let evicted = if self.wakers.is_full() {
            self.take()
        } else {
            ToWake::default()
        };
        if self.wakers.push(waker.clone()).is_err() {
            // Only when N == 0: nowhere to wait, so poll again.
            waker.wake_by_ref();
        }
        evicted
    }

    /// Takes every registered waker.
    pub(crate) fn take(&mut self) -> ToWake<N> {
        ToWake(core::mem::take(&mut self.wakers))
    }
}
