//! What both programs share: a one-future executor that sleeps with `WFI` until an
//! interrupt wakes it, the `SysTick` set-up, and exiting QEMU through semihosting.

#![no_std]

use core::future::Future;
use core::pin::pin;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use core::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_semihosting::{debug, hprintln};

/// Set by the waker (from an interrupt handler), cleared before each poll.
static WOKEN: AtomicBool = AtomicBool::new(false);

/// How many times the core slept in `WFI` (written by the main loop only: no
/// read-modify-write, which the Cortex-M0 does not have).
static SLEEPS: AtomicU32 = AtomicU32::new(0);

const VTABLE: RawWakerVTable = RawWakerVTable::new(
    |data| RawWaker::new(data, &VTABLE),
    |_| WOKEN.store(true, Ordering::Release),
    |_| WOKEN.store(true, Ordering::Release),
    |_| {},
);

/// Runs `future` to completion, sleeping between polls until it is woken.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    // SAFETY: the vtable's functions ignore the data pointer and only touch a static.
    let waker = unsafe { Waker::from_raw(RawWaker::new(core::ptr::null(), &VTABLE)) };
    let mut cx = Context::from_waker(&waker);
    loop {
        WOKEN.store(false, Ordering::Release);
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        sleep_until(|| WOKEN.load(Ordering::Acquire));
    }
}

/// Sleeps in `WFI` until `done()` holds (checked after every interrupt).
pub fn sleep_until(mut done: impl FnMut() -> bool) {
    loop {
        // Interrupts are masked between the check and `WFI`, so one that comes in
        // between stays pending and ends the `WFI` at once instead of being slept through.
        cortex_m::interrupt::disable();
        let ready = done();
        if !ready {
            cortex_m::asm::wfi();
            SLEEPS.store(SLEEPS.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        // SAFETY: not inside a critical section; the handlers may run again.
        unsafe { cortex_m::interrupt::enable() };
        if ready {
            return;
        }
    }
}

/// How many times the core has slept.
pub fn sleeps() -> u32 {
    SLEEPS.load(Ordering::Relaxed)
}

/// Starts `SysTick` interrupts every `cycles` core clock cycles.
pub fn start_ticks(mut syst: cortex_m::peripheral::SYST, cycles: u32) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(cycles - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// Stops `SysTick` interrupts (from its own handler).
pub fn stop_ticks() {
    // SAFETY: only the `SysTick` handler calls this, and the main loop no longer uses
    // the peripheral once it has started it.
    let mut syst = unsafe { cortex_m::Peripherals::steal() }.SYST;
    syst.disable_interrupt();
    syst.disable_counter();
}

/// Fails the run: QEMU exits with a non-zero status.
pub fn fail(check: &str) -> ! {
    hprintln!("FAILED: {}", check);
    exit(debug::EXIT_FAILURE)
}

/// Ends the run with `status`.
pub fn exit(status: debug::ExitStatus) -> ! {
    debug::exit(status);
    // Without a debugger or QEMU, semihosting returns: stop here.
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("panic: {}", info);
    exit(debug::EXIT_FAILURE)
}
