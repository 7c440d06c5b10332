//! Waiting tasks of a fixed-capacity store, in fixed memory.
//!
//! Each subscriber gets a waker slot of its own when it subscribes, so a parked subscriber
//! is never evicted by another and never woken for nothing: `SUBSCRIBERS` is a limit,
//! checked at subscribe time. Other waiting tasks (a submitter waiting for room, a task
//! awaiting `closed()`) share a second list of the same size.

use core::task::Waker;

/// A waker slot for each of up to `N` subscribers.
#[derive(Debug)]
pub(crate) struct SubscriberWakers<const N: usize> {
    /// Which slots belong to a subscriber.
    taken: [bool; N],
    /// The waker of each parked subscriber, registered when it found nothing to read.
    wakers: [Option<Waker>; N],
}

impl<const N: usize> SubscriberWakers<N> {
    pub(crate) const fn new() -> Self {
        SubscriberWakers {
            taken: [false; N],
            wakers: [const { None }; N],
        }
    }

    /// A slot for a new subscriber; `None` when all `N` are taken.
    pub(crate) fn join(&mut self) -> Option<usize> {
        let slot = self.taken.iter().position(|taken| !taken)?;
        self.taken[slot] = true;
        Some(slot)
    }

    /// Gives back a subscriber's slot.
    pub(crate) fn leave(&mut self, slot: usize) -> Option<Waker> {
        self.taken[slot] = false;
        self.wakers[slot].take()
    }

    /// How many subscribers hold a slot.
    pub(crate) fn count(&self) -> usize {
        self.taken.iter().filter(|taken| **taken).count()
    }

    /// Remembers `waker` as the one to wake for the subscriber in `slot`.
    pub(crate) fn register(&mut self, slot: usize, waker: &Waker) {
        let entry = &mut self.wakers[slot];
        if !entry.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *entry = Some(waker.clone());
        }
    }

    /// Takes the waker of every parked subscriber.
    pub(crate) fn take(&mut self) -> ToWake<N> {
        let mut to_wake = ToWake::default();
        for waker in self.wakers.iter_mut().filter_map(Option::take) {
            // At most one waker per slot, and there are N slots.
            let _ = to_wake.0.push(waker);
        }
        to_wake
    }
}

/// Up to `N` wakers of other tasks waiting on a store (submitters, `closed()`).
///
/// When one more task registers while the list is full, every registered task is woken
/// to make room (each re-registers when polled), so more than `N` such tasks at once cost
/// spurious wake-ups, never a lost one.
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
