//! The synchronisation primitives the stores are built from, in one place so that the
//! same code runs on the OS (`std`), on bare metal (`alloc` only: a spin lock), and under
//! the `loom` model checker (`--cfg loom`), as tokio does with its `loom` shim.
//!
//! Positions are 64-bit everywhere. Where the target has 64-bit atomics (every host) they
//! are `core`'s; on 32-bit microcontrollers (Cortex-M3/M4, which have 32-bit
//! compare-and-swap) they are `portable-atomic`'s, which guards each 64-bit operation
//! with a global lock, or a critical section with the `critical-section` feature. Only
//! the heap-backed stores use atomics; the fixed stores use a lock of the user's choice
//! (`crate::fixed::RawMutex`).

// The heap-backed stores use all of this; without `alloc`, the fixed ones only the cell.
#![cfg_attr(not(feature = "alloc"), allow(unused_imports, dead_code))]

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

#[cfg(all(not(loom), feature = "alloc"))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

#[cfg(all(not(loom), feature = "alloc", target_has_atomic = "64"))]
pub(crate) use core::sync::atomic::AtomicU64;

#[cfg(all(not(loom), feature = "alloc", not(target_has_atomic = "64")))]
pub(crate) use portable_atomic::AtomicU64;

#[cfg(feature = "alloc")]
pub(crate) use lock::Mutex;

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `core::cell::UnsafeCell` with loom's closure-based access, so that the same code
/// compiles against both.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(core::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Keeps a hot, often-written value on a cache line of its own, so that writing it does
/// not slow down threads reading its neighbours (128 bytes: x86 prefetches lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> core::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A short busy wait (for a reader to finish cloning an `Arc`): spins first, then, with an
/// operating system, yields the thread in case the reader was preempted.
#[derive(Debug, Default)]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct Backoff(u32);

impl Backoff {
    pub(crate) fn snooze(&mut self) {
        #[cfg(loom)]
        loom::thread::yield_now();
        #[cfg(not(loom))]
        {
            self.0 = self.0.saturating_add(1);
            if cfg!(feature = "std") && self.0 > 64 {
                #[cfg(feature = "std")]
                std::thread::yield_now();
            } else {
                core::hint::spin_loop();
            }
        }
    }
}

#[cfg(loom)]
mod lock {
    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap()
        }
    }
}

#[cfg(all(not(loom), feature = "std"))]
mod lock {
    pub(crate) type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;

    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(std::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) const fn new(value: T) -> Self {
            Mutex(std::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            // The stores never panic while holding a lock in a way that breaks their
            // invariants (every critical section is a few plain assignments), so a
            // poisoned lock still guards consistent state.
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }
    }
}

#[cfg(all(not(loom), feature = "alloc", not(feature = "std")))]
mod lock {
    //! Without an operating system there is nothing to park on, so the lock spins. Every
    //! critical section in the stores is a few assignments and an `Arc` clone, never
    //! user code, so the wait is short.

    use core::cell::UnsafeCell;
    use core::ops::{Deref, DerefMut};
    use core::sync::atomic::{AtomicBool, Ordering};

    pub(crate) struct Mutex<T> {
        locked: AtomicBool,
        value: UnsafeCell<T>,
    }

    // SAFETY: the lock hands out at most one `MutexGuard` at a time (the `locked` flag is
    // taken with an acquiring compare-exchange and given back with a releasing store), so
    // `&Mutex<T>` gives exclusive access to `T` across threads exactly like
    // `std::sync::Mutex`, which is `Sync` when `T: Send`.
    unsafe impl<T: Send> Sync for Mutex<T> {}
    // SAFETY: moving the lock moves the `T` it owns.
    unsafe impl<T: Send> Send for Mutex<T> {}

    impl<T> core::fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("Mutex { .. }")
        }
    }

    impl<T> Mutex<T> {
        pub(crate) const fn new(value: T) -> Self {
            Mutex {
                locked: AtomicBool::new(false),
                value: UnsafeCell::new(value),
            }
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            loop {
                if self
                    .locked
                    .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return MutexGuard { lock: self };
                }
                while self.locked.load(Ordering::Relaxed) {
                    core::hint::spin_loop();
                }
            }
        }
    }

    pub(crate) struct MutexGuard<'a, T> {
        lock: &'a Mutex<T>,
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            // SAFETY: a guard exists only while `locked` is held by it, so no other
            // reference to the value exists.
            unsafe { &*self.lock.value.get() }
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: as in `deref`, and `&mut self` makes this the only use of the guard.
            unsafe { &mut *self.lock.value.get() }
        }
    }

    impl<T> Drop for MutexGuard<'_, T> {
        fn drop(&mut self) {
            self.lock.locked.store(false, Ordering::Release);
        }
    }
}
