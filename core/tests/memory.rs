//! What a queue holds in memory: its ring is allocated as messages first reach it, so an
//! idle queue of a large capacity (one of a hub's 10,000 topics) costs little, and a busy
//! one no more than before.
#![cfg(not(loom))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use storecast::{Overflow, QueueStore};

/// The system allocator, counting the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes still allocated after `make` ran, with what it returned kept alive.
fn held<R>(make: impl FnOnce() -> R) -> (isize, R) {
    let before = LIVE.load(Ordering::SeqCst);
    let made = make();
    (LIVE.load(Ordering::SeqCst) - before, made)
}

// One test, so that no other test allocates while it counts.
#[test]
fn a_queue_holds_slots_for_the_messages_it_has_seen_not_for_its_capacity() {
    for overflow in [Overflow::Wait, Overflow::DropOldest] {
        // 1,024 slots of 24 bytes each, if allocated up front.
        let (idle, store) = held(|| {
            let store = QueueStore::with_overflow(1024, overflow);
            store.try_submit(1u64).unwrap();
            store
        });
        assert!(
            idle < 8 * 1024,
            "{overflow:?}: an idle queue of 1,024 with one message holds {idle} bytes"
        );

        // Filled once around, it holds its whole ring, and no more after that.
        let (full, ()) = held(|| {
            for n in 0..2048 {
                store.try_submit(n).unwrap();
            }
        });
        let (again, ()) = held(|| {
            for n in 0..2048 {
                store.try_submit(n).unwrap();
            }
        });
        assert!(full >= 1024 * 24, "{overflow:?}: {full} bytes for the ring");
        assert_eq!(again, 0, "{overflow:?}: a full ring allocates nothing more");

        let (freed, ()) = held(|| drop(store));
        assert!(
            freed <= -(full + idle),
            "{overflow:?}: dropping the store freed {} of {} bytes",
            -freed,
            full + idle
        );
    }
}
