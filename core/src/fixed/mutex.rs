//! The lock that guards a fixed-capacity store, chosen by its user (as embassy-sync's
//! `RawMutex`).
//!
//! A store's last type parameter names it. [`DefaultRawMutex`] is the operating system's
//! lock with `std`, a spin lock without it, and a critical section on targets with no
//! compare-and-swap (Cortex-M0/M0+, `riscv32imc`). A store that an interrupt handler
//! submits to must use [`CriticalSectionRawMutex`] (feature `critical-section`): a spin
//! lock taken by the handler while the code it interrupted holds it would spin forever.

use crate::sync::UnsafeCell;

/// A lock that runs a closure with every other holder of the same lock excluded.
///
/// # Safety
///
/// While `lock` runs `f`, no other call to `lock` on the same value may run `f` from any
/// context that can reach the value (another thread, an interrupt handler, another core).
/// It may run `f` again *inside* `f` (a critical section nests): the stores refuse that
/// themselves.
pub unsafe trait RawMutex {
    /// An unlocked lock, so that a store can be built in a `const fn`.
    #[cfg(not(loom))]
    const INIT: Self;

    /// An unlocked lock (loom's locks cannot be built in a `const fn`).
    #[cfg(loom)]
    fn new() -> Self;

    /// Runs `f` holding the lock.
    fn lock<R>(&self, f: impl FnOnce() -> R) -> R;
}

/// The lock a store gets when its type does not name one: the operating system's with
/// `std`, a spin lock on bare metal, a critical section where there is no compare-and-swap.
#[cfg(all(not(loom), feature = "std"))]
pub type DefaultRawMutex = StdRawMutex;

/// The lock a store gets when its type does not name one: the operating system's with
/// `std`, a spin lock on bare metal, a critical section where there is no compare-and-swap.
#[cfg(all(not(loom), not(feature = "std"), target_has_atomic = "8"))]
pub type DefaultRawMutex = SpinRawMutex;

/// The lock a store gets when its type does not name one: the operating system's with
/// `std`, a spin lock on bare metal, a critical section where there is no compare-and-swap.
#[cfg(all(not(loom), not(feature = "std"), not(target_has_atomic = "8")))]
pub type DefaultRawMutex = CriticalSectionRawMutex;

/// The lock a store gets under loom: loom's mutex, so that the model sees it.
#[cfg(loom)]
pub type DefaultRawMutex = LoomRawMutex;

/// Disables interrupts (through the `critical-section` crate) while the store is used:
/// safe to share between the main loop and interrupt handlers, and on a multi-core chip
/// whose critical-section implementation takes a hardware lock. Costs an interrupt
/// disable and restore (a few cycles on a Cortex-M) per operation.
///
/// The program must link one critical-section implementation, such as `cortex-m`'s
/// feature `critical-section-single-core`.
#[cfg(any(feature = "critical-section", not(target_has_atomic = "8")))]
#[derive(Debug)]
pub struct CriticalSectionRawMutex(());

// SAFETY: a critical section excludes every other context that could take one.
#[cfg(any(feature = "critical-section", not(target_has_atomic = "8")))]
unsafe impl RawMutex for CriticalSectionRawMutex {
    #[cfg(not(loom))]
    const INIT: Self = CriticalSectionRawMutex(());

    #[cfg(loom)]
    fn new() -> Self {
        CriticalSectionRawMutex(())
    }

    fn lock<R>(&self, f: impl FnOnce() -> R) -> R {
        critical_section::with(|_| f())
    }
}

/// Spins until the lock is free. For threads (or executors on several cores) that never
/// preempt each other while holding it; **not** for a store an interrupt handler uses.
#[cfg(all(not(loom), target_has_atomic = "8"))]
#[derive(Debug)]
pub struct SpinRawMutex(core::sync::atomic::AtomicBool);

// SAFETY: `f` runs only after an acquiring compare-exchange turned the flag from false to
// true, and the flag turns false (releasing) only after `f` returns.
#[cfg(all(not(loom), target_has_atomic = "8"))]
unsafe impl RawMutex for SpinRawMutex {
    const INIT: Self = SpinRawMutex(core::sync::atomic::AtomicBool::new(false));

    fn lock<R>(&self, f: impl FnOnce() -> R) -> R {
        use core::sync::atomic::Ordering;
        while self
            .0
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.0.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
        struct Unlock<'a>(&'a core::sync::atomic::AtomicBool);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                self.0.store(false, core::sync::atomic::Ordering::Release);
            }
        }
        let _unlock = Unlock(&self.0);
        f()
    }
}

/// The operating system's mutex (`std::sync::Mutex`): waiting threads sleep.
#[cfg(all(not(loom), feature = "std"))]
#[derive(Debug)]
pub struct StdRawMutex(std::sync::Mutex<()>);

// SAFETY: `f` runs while the `std` mutex's guard is held.
#[cfg(all(not(loom), feature = "std"))]
unsafe impl RawMutex for StdRawMutex {
    const INIT: Self = StdRawMutex(std::sync::Mutex::new(()));

    fn lock<R>(&self, f: impl FnOnce() -> R) -> R {
        // A panic in `f` (a panicking `Clone`) unwinds through `Locked`, which leaves
        // the state consistent, so a poisoned lock is still good.
        let _guard = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f()
    }
}

/// loom's mutex, so that the model checker explores the stores' locking.
#[cfg(loom)]
#[derive(Debug)]
pub struct LoomRawMutex(loom::sync::Mutex<()>);

// SAFETY: `f` runs while loom's guard is held.
#[cfg(loom)]
unsafe impl RawMutex for LoomRawMutex {
    fn new() -> Self {
        LoomRawMutex(loom::sync::Mutex::new(()))
    }

    fn lock<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.0.lock().unwrap();
        f()
    }
}

/// A store's state behind its [`RawMutex`].
pub(crate) struct Locked<M, T> {
    raw: M,
    /// Set while a closure holds the state, so that a re-entrant lock (a critical section
    /// inside a critical section, say from a `Clone` that uses the same store) is refused
    /// instead of handing out a second `&mut`.
    busy: UnsafeCell<bool>,
    state: UnsafeCell<T>,
}

// SAFETY: the raw lock gives one context at a time access to `state` (the `RawMutex`
// contract), and `busy` refuses a nested one, so `&Locked` shares `T` like
// `std::sync::Mutex<T>`, which is `Sync` when `T: Send`.
unsafe impl<M: RawMutex + Sync, T: Send> Sync for Locked<M, T> {}

impl<M: RawMutex, T> Locked<M, T> {
    #[cfg(not(loom))]
    pub(crate) const fn new(state: T) -> Self {
        Locked {
            raw: M::INIT,
            busy: UnsafeCell::new(false),
            state: UnsafeCell::new(state),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new(state: T) -> Self {
        Locked {
            raw: M::new(),
            busy: UnsafeCell::new(false),
            state: UnsafeCell::new(state),
        }
    }

    /// Runs `f` on the state, holding the lock. `f` never runs user code other than
    /// `T::clone` and drops; wakers are woken after it returns.
    ///
    /// # Panics
    ///
    /// If called again inside `f` for the same store.
    pub(crate) fn lock<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        self.raw.lock(|| {
            // SAFETY: the raw lock is held, so no other context touches `busy`.
            let was_busy = self
                .busy
                .with_mut(|busy| unsafe { core::mem::replace(&mut *busy, true) });
            assert!(
                !was_busy,
                "a storecast fixed store was used from inside its own lock (a `Clone` of \
                 its values that uses the store?)"
            );
            struct Release<'a>(&'a UnsafeCell<bool>);
            impl Drop for Release<'_> {
                fn drop(&mut self) {
                    // SAFETY: still under the raw lock (dropped before it is released).
                    self.0.with_mut(|busy| unsafe { *busy = false });
                }
            }
            let _release = Release(&self.busy);
            // SAFETY: the raw lock excludes other contexts and `busy` (just set) excludes
            // this one, so this is the only reference to the state until `f` returns.
            self.state.with_mut(|state| f(unsafe { &mut *state }))
        })
    }
}
