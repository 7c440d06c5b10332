//! A slot: one shared value that many readers clone while one writer at a time replaces
//! it. Both stores are built from slots: the latest-value store is one slot, the queue a
//! ring of them.
//!
//! Readers never block on a lock. Two ways of reading keep them safe from the writer:
//!
//! - **Guarded** ([`Slot::read_guarded`]): one atomic word, `guard`, holds the number of
//!   readers cloning the value and a [`WRITER`] bit. A reader adds itself; if the bit was
//!   set it backs off, otherwise it clones and removes itself. The writer sets the bit,
//!   waits for the count to drain (a clone in flight: nanoseconds), replaces the value and
//!   clears the bit. All of these are read-modify-writes of the same word, so they are
//!   totally ordered: either a reader came first and the writer waits for it, or the
//!   writer came first and the reader sees the bit. No `SeqCst` reasoning is needed.
//! - **Unguarded** ([`Slot::read_unguarded`]): for the lossless queue, where the caller
//!   guarantees the writer cannot replace the value while the reader is counted as having
//!   it still to read (see `backpressure.rs`). No write to the slot at all.
//!
//! Loom models of both protocols are in `tests/loom.rs`.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::marker::PhantomData;

use crate::sync::{AtomicPtr, AtomicU64, AtomicUsize, Backoff, Ordering, UnsafeCell};

/// The bit of `guard` a writer holds while it replaces the value.
const WRITER: usize = 1 << (usize::BITS - 1);

/// Why a guarded read found no value to clone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    /// A writer is replacing the value (with a newer one).
    Writing,
    /// The slot holds another position (0: nothing yet).
    Holds(u64),
}

pub(crate) struct Slot<T> {
    /// Guarded readers cloning the value, plus the `WRITER` bit.
    guard: AtomicUsize,
    /// The position of the message held (0: none yet). Changed only under the `WRITER`
    /// bit (or, for the lossless queue, once every subscriber has read the message).
    position: AtomicU64,
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
            guard: AtomicUsize::new(0),
            position: AtomicU64::new(position),
            value: UnsafeCell::new(value),
        }
    }

    /// Clones the value if the slot holds `wanted` (any position if `None`).
    pub(crate) fn read_guarded(&self, wanted: Option<u64>) -> Result<(u64, Arc<T>), Miss> {
        // Acquire: if no writer holds the bit, the last writer's release of it happened
        // before, so its position and value are visible.
        if self.guard.fetch_add(1, Ordering::Acquire) & WRITER != 0 {
            self.guard.fetch_sub(1, Ordering::Relaxed);
            return Err(Miss::Writing);
        }
        let position = self.position.load(Ordering::Relaxed);
        let read = if position == 0 || wanted.is_some_and(|w| w != position) {
            Err(Miss::Holds(position))
        } else {
            // SAFETY: we are counted in `guard` and no writer held it when we joined, so
            // the next writer waits for us before touching the value.
            let value = self.value.with(|v| unsafe { (*v).clone() });
            Ok((position, value.expect("a written slot holds a value")))
        };
        // Release: our clone happens before the waiting writer's replacement.
        self.guard.fetch_sub(1, Ordering::Release);
        read
    }

    /// Waits until no writer holds the slot. A guarded reader that got
    /// [`Miss::Writing`] calls this before trying again, rather than re-announcing itself
    /// in a loop that could keep the writer waiting.
    pub(crate) fn wait_written(&self) {
        let mut backoff = Backoff::default();
        while self.guard.load(Ordering::Relaxed) & WRITER != 0 {
            backoff.snooze();
        }
    }

    /// Clones the value held at `position`, without announcing the read.
    ///
    /// # Safety
    ///
    /// The caller must keep writers away from this slot (be counted as having `position`
    /// still to read) from before this call until after it, and must have acquired the
    /// publication of `position` in this slot.
    pub(crate) unsafe fn read_unguarded(&self, position: u64) -> Arc<T> {
        debug_assert_eq!(self.position.load(Ordering::Relaxed), position);
        // SAFETY: per the contract, no writer replaces the value while we read it, and the
        // value was written before its position was published.
        let value = self.value.with(|v| unsafe { (*v).clone() });
        value.expect("a published slot holds a value")
    }

    /// Replaces the value, waiting for guarded readers in flight; returns the old value so
    /// that its destructor can run outside the caller's lock.
    ///
    /// Writers must be serialised by the caller.
    pub(crate) fn write_guarded(&self, position: u64, value: Arc<T>) -> Option<Arc<T>> {
        self.guard.fetch_or(WRITER, Ordering::Relaxed);
        let mut backoff = Backoff::default();
        // Acquire: each reader's clone happened before its releasing decrement.
        while self.guard.load(Ordering::Acquire) != WRITER {
            backoff.snooze();
        }
        // SAFETY: readers that joined before the bit have left, and later ones see the
        // bit and do not touch the value. Writers are serialised by the caller, and
        // unguarded readers never read a slot that is written with this method.
        let old = self.value.with_mut(|v| unsafe { (*v).replace(value) });
        self.position.store(position, Ordering::Relaxed);
        // Release: the new value and position are visible to readers that join next.
        self.guard.fetch_and(!WRITER, Ordering::Release);
        old
    }

    /// Replaces the value of a slot no reader can be reading, then publishes its position
    /// (`Release`); the caller publishes it further (the queue's `last`).
    ///
    /// # Safety
    ///
    /// Guarded readers must be impossible for this slot (the lossless queue reads only
    /// unguarded), and every unguarded reader must be done with the old value (the
    /// caller acquired their releasing "read it" counts). Writers must be serialised by
    /// the caller.
    pub(crate) unsafe fn write_exclusive(&self, position: u64, value: Arc<T>) -> Option<Arc<T>> {
        // SAFETY: per the contract, nobody else accesses the value now.
        let old = self.value.with_mut(|v| unsafe { (*v).replace(value) });
        self.position.store(position, Ordering::Release);
        old
    }
}

/// How many slots of a [`Ring`] are allocated together.
const CHUNK: usize = 64;

/// The slots of a queue, allocated a chunk at a time as messages first reach them: a
/// store that has seen few messages holds few slots, however large its capacity (an idle
/// topic of a hub with 10,000 of them, say).
///
/// A writer (serialised by the caller) allocates a chunk before it writes the chunk's
/// first slot and publishes the chunk with `Release`; a reader only asks for a slot whose
/// position it acquired the publication of (the queue's `last`), which the writer
/// published after the chunk, so the reader finds the chunk.
pub(crate) struct Ring<T> {
    chunks: Box<[AtomicPtr<Slot<T>>]>,
    len: usize,
    /// Owns slots, as the `Box<[Slot<T>]>` each chunk is (for `Send`, `Sync` and drop).
    _slots: PhantomData<Box<[Slot<T>]>>,
}

impl<T> Ring<T> {
    pub(crate) fn new(len: usize) -> Self {
        Ring {
            chunks: (0..len.div_ceil(CHUNK))
                .map(|_| AtomicPtr::new(core::ptr::null_mut()))
                .collect(),
            len,
            _slots: PhantomData,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn chunk_len(&self, chunk: usize) -> usize {
        CHUNK.min(self.len - chunk * CHUNK)
    }

    /// The slot at `index`, for a writer: its chunk is allocated if it was not yet.
    /// Writers must be serialised by the caller.
    pub(crate) fn slot_to_write(&self, index: usize) -> &Slot<T> {
        let chunk = index / CHUNK;
        let mut slots = self.chunks[chunk].load(Ordering::Acquire);
        if slots.is_null() {
            let fresh: Box<[Slot<T>]> = (0..self.chunk_len(chunk))
                .map(|_| Slot::new(0, None))
                .collect::<Vec<_>>()
                .into_boxed_slice();
            slots = Box::into_raw(fresh).cast::<Slot<T>>();
            // Release: the empty slots are visible to whoever acquires the pointer.
            self.chunks[chunk].store(slots, Ordering::Release);
        }
        // SAFETY: `slots` points to a live chunk of `chunk_len(chunk)` slots (freed only
        // on drop), and `index % CHUNK` is within it.
        unsafe { &*slots.add(index % CHUNK) }
    }

    /// The slot at `index`, for a reader of a position published in it.
    pub(crate) fn slot(&self, index: usize) -> &Slot<T> {
        // Acquire: pairs with the writer's release of the chunk, which happened before the
        // position the caller acquired was published.
        let slots = self.chunks[index / CHUNK].load(Ordering::Acquire);
        assert!(!slots.is_null(), "a slot read before it was written");
        // SAFETY: as in `slot_to_write`.
        unsafe { &*slots.add(index % CHUNK) }
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        for (chunk, slots) in self.chunks.iter().enumerate() {
            let slots = slots.load(Ordering::Acquire);
            if !slots.is_null() {
                let len = self.chunk_len(chunk);
                // SAFETY: made by `Box::into_raw` of a boxed slice of `len` slots in
                // `slot_to_write`, and freed only here.
                drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(slots, len)) });
            }
        }
    }
}
