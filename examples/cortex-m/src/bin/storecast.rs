//! A sensor on a microcontroller: the `SysTick` interrupt takes a reading and submits it
//! into two stores in `static`s, a queue of the last 8 readings and the latest reading;
//! the main loop awaits them, sleeping in `WFI` between interrupts.
//!
//! It checks that the readings arrive in order, stalls on purpose until the queue has
//! overwritten some and checks the lag report (exact: the next reading is the one after
//! the ones reported missed), and checks that the latest-value subscriber ends on the last
//! reading. It exits QEMU through semihosting with status 0, or 1 on any failure.
//!
//! ```text
//! ci/embedded.sh      # builds it for the Cortex-M3 and M0 and runs it in QEMU
//! ```

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprintln};
use futures_core::Stream;
use storecast::fixed::{CriticalSectionRawMutex, DataStore, QueueStore};
use storecast::{Epoch, Overflow, RecvError, Start};
use storecast_cortex_m_example::{
    block_on, exit, fail, sleep_until, sleeps, start_ticks, stop_ticks,
};

/// The last 8 readings, for one subscriber; a subscriber that falls further behind is
/// told how many it missed. The critical-section lock makes it safe to submit from an
/// interrupt handler while the main loop reads.
static READINGS: QueueStore<u32, 8, 1, CriticalSectionRawMutex> =
    QueueStore::with_epoch(Overflow::DropOldest, Epoch::new(1));

/// The latest reading, for one subscriber.
static LATEST: DataStore<u32, 1, CriticalSectionRawMutex> = DataStore::with_epoch(Epoch::new(1));

/// How many readings the interrupt has taken (written by the interrupt handler only).
static TICKS: AtomicU32 = AtomicU32::new(0);

/// Set by the interrupt handler if a store refused a reading.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// How many readings the run takes.
const TOTAL: u32 = 48;

/// Where the main loop stalls on purpose, and until which reading.
const STALL_AFTER: u32 = 16;
const STALL_UNTIL: u32 = STALL_AFTER + 8 + 5;

#[exception]
fn SysTick() {
    let reading = TICKS.load(Ordering::Relaxed) + 1;
    if READINGS.try_submit(reading).is_err() || LATEST.try_submit(reading).is_err() {
        REFUSED.store(true, Ordering::Relaxed);
    }
    TICKS.store(reading, Ordering::Release);
    if reading == TOTAL {
        stop_ticks();
    }
}

/// The next item of a subscriber, sleeping until there is one.
fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    block_on(core::future::poll_fn(|cx| {
        core::pin::Pin::new(&mut *stream).poll_next(cx)
    }))
}

#[entry]
fn main() -> ! {
    let mut readings = READINGS.subscribe();
    let mut latest = LATEST.subscribe();
    if READINGS.try_subscribe_from(Start::Now).is_ok() {
        fail("a second subscriber is refused (the limit is 1)");
    }
    let peripherals = cortex_m::Peripherals::take().unwrap();
    // About a hundred interrupts a second on QEMU's boards.
    start_ticks(peripherals.SYST, 100_000);

    // Every reading, in order, with its position.
    for expected in 1..=STALL_AFTER {
        match next(&mut readings) {
            Some(Ok(m)) if *m == expected && m.position().offset() == u64::from(expected) => {}
            _ => fail("readings arrive in order"),
        }
    }

    // Stall on purpose while more readings come in than the queue keeps.
    sleep_until(|| TICKS.load(Ordering::Acquire) >= STALL_UNTIL);
    let missed = match next(&mut readings) {
        Some(Err(RecvError::Lagged { missed })) => missed,
        _ => fail("a stalled subscriber is told it lagged"),
    };
    if missed < u64::from(STALL_UNTIL - 8 - STALL_AFTER) {
        fail("the lag report counts at least what was overwritten");
    }
    // Then it goes on from the oldest reading kept, which is exactly after those missed.
    let mut expected = STALL_AFTER + 1 + missed as u32;
    loop {
        match next(&mut readings) {
            Some(Ok(m)) if *m == expected => {}
            _ => fail("after the lag report, readings go on in order"),
        }
        if expected == TOTAL {
            break;
        }
        expected += 1;
    }

    // The latest value: never back, never twice, ending with the last reading.
    let mut previous = 0;
    while previous < TOTAL {
        match next(&mut latest) {
            Some(Ok(m)) if *m > previous && m.position().offset() == u64::from(*m) => previous = *m,
            _ => fail("latest values only move forward"),
        }
    }
    match LATEST.current() {
        Some(m) if *m == TOTAL => {}
        _ => fail("the current value is the last reading"),
    }
    if REFUSED.load(Ordering::Relaxed) {
        fail("the stores took every reading");
    }
    if sleeps() == 0 {
        fail("the main loop slept between interrupts");
    }
    hprintln!(
        "ok: {} readings from the SysTick interrupt, in order; stalled and told {} missed; latest {}; slept {} times",
        TOTAL,
        missed,
        previous,
        sleeps()
    );
    exit(debug::EXIT_SUCCESS)
}
