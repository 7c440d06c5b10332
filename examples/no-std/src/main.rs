//! A store in a `static`, with no `std` and no allocator.
//!
//! On a microcontroller, the sensor would submit from its task (or interrupt handler's
//! task) and the display would await `next()` in its own task, under an executor such as
//! Embassy. This program is built for the host so that CI can link and run it: it drives
//! the futures by hand with a no-op waker, checks what it receives, and exits 0.
//!
//! ```text
//! ci/no-std.sh        # builds, checks and runs this and the alloc-only twin
//! ```

#![no_std]
#![no_main]

use core::pin::Pin;
use core::task::{Context, Poll, Waker};

use futures_core::Stream;
use storecast::fixed::{DataStore, QueueStore};
use storecast::{Epoch, Overflow, Position, RecvError, ResetReason, Start};

/// The latest temperature reading (tenths of a degree): anyone can read the current one.
/// A device draws no randomness here, so its stores take their epoch from the firmware
/// (a boot counter kept in flash would tell apart every run).
static TEMPERATURE: DataStore<i16> = DataStore::with_epoch(Epoch::new(7));

/// Every button press, in order. Eight are kept; a display that falls further behind is
/// told how many it missed.
static PRESSES: QueueStore<u8, 8> = QueueStore::with_epoch(Overflow::DropOldest, Epoch::new(7));

/// Polls a stream once (an executor would wait for the waker instead).
fn poll<S: Stream + Unpin>(stream: &mut S) -> Poll<Option<S::Item>> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(stream).poll_next(&mut cx)
}

/// Runs the scenario; the error is the number of the check that failed.
fn run() -> Result<(), i32> {
    // Latest value: a display that subscribes late still gets the current reading.
    TEMPERATURE.try_submit(215).map_err(|_| 1)?;
    let mut display = TEMPERATURE.subscribe();
    match poll(&mut display) {
        Poll::Ready(Some(Ok(reading))) if *reading == 215 => {}
        _ => return Err(2),
    }
    if poll(&mut display).is_ready() {
        return Err(3); // nothing newer yet: it waits
    }
    TEMPERATURE.try_submit(221).map_err(|_| 4)?;
    match poll(&mut display) {
        Poll::Ready(Some(Ok(reading))) if *reading == 221 => {}
        _ => return Err(5),
    }

    // Queue: every press in order...
    let mut presses = PRESSES.subscribe();
    for button in [1, 2, 3] {
        PRESSES.try_submit(button).map_err(|_| 6)?;
    }
    for button in [1, 2, 3] {
        match poll(&mut presses) {
            Poll::Ready(Some(Ok(press))) if *press == button => {}
            _ => return Err(7),
        }
    }
    // ...and a burst the display could not keep up with is reported, not hidden.
    for button in 0..12 {
        PRESSES.try_submit(button).map_err(|_| 8)?;
    }
    match poll(&mut presses) {
        Poll::Ready(Some(Err(RecvError::Lagged { missed: 4 }))) => {}
        _ => return Err(9),
    }
    // A display that restarts resumes after the last press it saw.
    let seen = PRESSES.last_position();
    PRESSES.try_submit(42).map_err(|_| 10)?;
    let mut resumed = PRESSES.subscribe_from(Start::After(seen));
    match poll(&mut resumed) {
        Poll::Ready(Some(Ok(press))) if *press == 42 => {}
        _ => return Err(11),
    }

    // A position from an earlier run (another epoch) is told apart, never taken as now.
    let mut stale = PRESSES.subscribe_from(Start::After(Position::new(Epoch::new(6), 3)));
    match poll(&mut stale) {
        Poll::Ready(Some(Err(RecvError::Reset {
            reason: ResetReason::OtherEpoch,
        }))) => {}
        _ => return Err(13),
    }

    // Closing ends every stream once it is drained.
    TEMPERATURE.close();
    if !matches!(poll(&mut display), Poll::Ready(None)) {
        return Err(12);
    }
    Ok(())
}

// On the host, the C runtime starts the program (it calls `main`) and provides `memcpy`;
// on a device, the board's runtime crate does. Neither brings in Rust's std or a heap.
#[link(name = "c")]
unsafe extern "C" {}

#[unsafe(no_mangle)]
extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    match run() {
        Ok(()) => 0,
        Err(check) => check,
    }
}

/// The host's prebuilt `core` is compiled with unwind tables that name this symbol; with
/// `panic = "abort"` nothing ever calls it. Bare-metal targets do not need it.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // No std to unwind or print with: stop. (On a device: reset, or blink an LED.)
    loop {
        core::hint::spin_loop();
    }
}
