//! The heap-backed stores (`storecast` with `alloc` and without `std`) in a `#![no_std]`
//! binary whose only heap is a small bump allocator over a static array. `ci/no-std.sh`
//! builds it, checks that nothing in it is Rust's std, runs it and expects exit code 0.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::pin::Pin;
use core::sync::atomic::{AtomicUsize, Ordering};
use core::task::{Context, Poll, Waker};

use futures_core::Stream;
use storecast::{DataStore, Epoch, Overflow, Position, QueueStore, RecvError, ResetReason, Start};

/// 64 KiB of heap, handed out front to back and never reused: enough for this program.
struct Bump {
    heap: UnsafeCell<[u8; 64 * 1024]>,
    used: AtomicUsize,
}

// SAFETY: `used` is advanced atomically, so each allocation gets a range of `heap` no
// other allocation overlaps.
unsafe impl Sync for Bump {}

// SAFETY: returns properly aligned, non-overlapping ranges of the static array, or null
// when it is exhausted; `dealloc` does nothing, which is allowed.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.heap.get() as usize;
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let start = (base + used).next_multiple_of(layout.align()) - base;
            let end = start + layout.size();
            if end > 64 * 1024 {
                return core::ptr::null_mut();
            }
            match self
                .used
                .compare_exchange_weak(used, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => used = now,
            }
        }
    }

    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
}

#[global_allocator]
static HEAP: Bump = Bump {
    heap: UnsafeCell::new([0; 64 * 1024]),
    used: AtomicUsize::new(0),
};

fn poll<S: Stream + Unpin>(stream: &mut S) -> Poll<Option<S::Item>> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(stream).poll_next(&mut cx)
}

fn run() -> Result<(), i32> {
    // No std, so no randomness: each store is given its epoch.
    let latest = DataStore::with_epoch(Epoch::new(1));
    latest.try_submit(String::from("first")).map_err(|_| 1)?;
    let mut sub = latest.subscribe();
    match poll(&mut sub) {
        Poll::Ready(Some(Ok(m))) if *m == "first" => {}
        _ => return Err(2),
    }
    if poll(&mut sub).is_ready() {
        return Err(3);
    }

    let queue = QueueStore::with_epoch(4, Overflow::DropOldest, Epoch::new(2));
    let mut laggard = queue.subscribe();
    for n in 0..10u32 {
        queue.try_submit(n).map_err(|_| 4)?;
    }
    match poll(&mut laggard) {
        Poll::Ready(Some(Err(RecvError::Lagged { missed: 6 }))) => {}
        _ => return Err(5),
    }
    match poll(&mut laggard) {
        Poll::Ready(Some(Ok(m))) if *m == 6 => {}
        _ => return Err(6),
    }
    let mut resumed = queue.subscribe_from(Start::After(queue.last_position()));
    queue.try_submit(99).map_err(|_| 7)?;
    match poll(&mut resumed) {
        Poll::Ready(Some(Ok(m))) if *m == 99 => {}
        _ => return Err(8),
    }
    // A position of another store is told apart, then the oldest retained follows.
    let mut elsewhere = queue.subscribe_from(Start::After(Position::new(Epoch::new(1), 3)));
    match poll(&mut elsewhere) {
        Poll::Ready(Some(Err(RecvError::Reset {
            reason: ResetReason::OtherEpoch,
        }))) => {}
        _ => return Err(9),
    }
    match poll(&mut elsewhere) {
        Poll::Ready(Some(Ok(m))) if *m == 7 => {}
        _ => return Err(10),
    }
    queue.close();
    Ok(())
}

// On the host, the C runtime starts the program and provides `memcpy`; no Rust std.
#[link(name = "c")]
unsafe extern "C" {}

#[unsafe(no_mangle)]
extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    match run() {
        Ok(()) => 0,
        Err(check) => check,
    }
}

/// The host's prebuilt `core` names this in its unwind tables; with `panic = "abort"`
/// nothing calls it.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
