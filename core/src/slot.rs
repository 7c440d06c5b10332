//! A slot: one shared value that many readers clone while one writer at a time replaces
//! it. Both stores are built from slots: the latest-value store is one slot, the queue a
//! ring of them.
//!
//! Readers never take a lock. Two ways of reading keep them safe from the writer:
//!
//! - **Guarded** ([`Slot::read_guarded`]): the reader announces itself in `readers`, then
//!   checks the position; the writer marks the slot [`WRITING`], then waits for `readers`
//!   to drain before touching the value. Both sides use `SeqCst`, so (as in Dekker's
//!   algorithm) either the writer sees the reader and waits, or the reader sees the mark
//!   and backs off. The wait is for an `Arc` clone in flight, a few nanoseconds.
//! - **Unguarded** ([`Slot::read_unguarded`]): for the lossless queue, where the caller
//!   guarantees the writer cannot replace the value while the reader is counted in the
//!   slot's `unread` (the writer only overwrites a slot whose `unread` is zero).
//!
//! A loom model of both protocols is in `tests/loom.rs`.

use alloc::sync::Arc;

use crate::sync::{AtomicU64, AtomicUsize, Backoff, Ordering, UnsafeCell};

/// The position a slot shows while its value is being replaced.
pub(crate) const WRITING: u64 = u64::MAX;

/// Aligned to a cache line: subscribers on different threads update the counters of
/// neighbouring slots at the same time, and sharing a line would make them wait.
#[repr(align(64))]
pub(crate) struct Slot<T> {
    /// The position of the message held (0: none yet; `WRITING`: being replaced).
    position: AtomicU64,
    /// Guarded readers currently cloning the value.
    readers: AtomicUsize,
    /// Under the lossless queue: subscribers that have yet to read this message.
    pub(crate) unread: AtomicUsize,
    value: UnsafeCell<Option<Arc<T>>>,
}

// SAFETY: the value is an `Option<Arc<T>>` that readers on any thread clone (needs
// `T: Send + Sync`, as for `Arc<T>: Send + Sync`) and the writer replaces and drops on its
// thread; access to it follows the protocols in the module documentation, so there is
// never a write concurrent with another access.
unsafe impl<T: Send + Sync> Sync for Slot<T> {}
// SAFETY: as above; moving a slot moves the `Arc` it owns.
unsafe impl<T: Send + Sync> Send for Slot<T> {}

impl<T> Slot<T> {
    pub(crate) fn new(position: u64, value: Option<Arc<T>>) -> Self {
        Slot {
            position: AtomicU64::new(position),
            readers: AtomicUsize::new(0),
            unread: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Clones the value if the slot holds `wanted` (any position if `None`); otherwise
    /// returns the position it holds ([`WRITING`] while it is being replaced).
    pub(crate) fn read_guarded(&self, wanted: Option<u64>) -> Result<(u64, Arc<T>), u64> {
        self.readers.fetch_add(1, Ordering::SeqCst);
        let position = self.position.load(Ordering::SeqCst);
        let read = if position == WRITING || position == 0 || wanted.is_some_and(|w| w != position)
        {
            Err(position)
        } else {
            // SAFETY: we are counted in `readers` and saw a published position after that,
            // so the writer either has not marked the slot yet (and will wait for us) or
            // finished writing before publishing `position` (which we acquired).
            let value = self.value.with(|v| unsafe { (*v).clone() });
            Ok((position, value.expect("a published slot holds a value")))
        };
        // Releases our clone to a writer waiting for `readers` to drain.
        self.readers.fetch_sub(1, Ordering::Release);
        read
    }

    /// Clones the value held at `position`, without announcing the read.
    ///
    /// # Safety
    ///
    /// The caller must hold a count in `unread` (or otherwise stop writers) from before
    /// this call until after it, and `position` must be published in this slot.
    pub(crate) unsafe fn read_unguarded(&self, position: u64) -> Arc<T> {
        debug_assert_eq!(self.position.load(Ordering::Relaxed), position);
        // SAFETY: per the contract, no writer replaces the value while we read it, and the
        // caller acquired the position (published after the value was written).
        let value = self.value.with(|v| unsafe { (*v).clone() });
        value.expect("a published slot holds a value")
    }

    /// Replaces the value, waiting for guarded readers in flight; returns the old value so
    /// that its destructor can run outside the caller's lock.
    ///
    /// Writers must be serialised by the caller.
    pub(crate) fn write_guarded(&self, position: u64, value: Arc<T>) -> Option<Arc<T>> {
        self.position.store(WRITING, Ordering::SeqCst);
        let mut backoff = Backoff::default();
        while self.readers.load(Ordering::SeqCst) != 0 {
            backoff.snooze();
        }
        // SAFETY: new guarded readers see `WRITING` and back off; those in flight have
        // left (their releasing decrement is acquired by the load above). Writers are
        // serialised by the caller, and unguarded readers only read slots whose `unread`
        // the caller checked to be zero (lossless queue) or never exist (other uses).
        let old = self.value.with_mut(|v| unsafe { (*v).replace(value) });
        self.position.store(position, Ordering::Release);
        old
    }

    /// Replaces the value of a slot no reader can be reading.
    ///
    /// # Safety
    ///
    /// No reader may be reading the value: guarded readers must be impossible for this
    /// slot (the lossless queue reads only unguarded), and every unguarded reader must have
    /// given up its `unread` count (the caller saw `unread == 0` with `Acquire` ordering).
    /// Writers must be serialised by the caller.
    pub(crate) unsafe fn write_exclusive(&self, position: u64, value: Arc<T>) -> Option<Arc<T>> {
        // SAFETY: per the contract, nobody else accesses the value now.
        let old = self.value.with_mut(|v| unsafe { (*v).replace(value) });
        self.position.store(position, Ordering::Release);
        old
    }
}
