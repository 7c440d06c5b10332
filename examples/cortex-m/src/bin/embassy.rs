//! The scenario of `storecast.rs`, done with embassy-sync instead, for the size comparison
//! that `ci/embedded.sh` prints: a `PubSubChannel` of 8 readings (published immediately,
//! dropping the oldest, as `Overflow::DropOldest`) and a `Watch` for the latest reading,
//! both behind `CriticalSectionRawMutex`, fed by the `SysTick` interrupt, awaited by the
//! main loop with the same executor and the same checks.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprintln};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::pubsub::{PubSubChannel, WaitResult};
use embassy_sync::watch::Watch;
use storecast_cortex_m_example::{
    block_on, exit, fail, sleep_until, sleeps, start_ticks, stop_ticks,
};

/// The last 8 readings, one subscriber, no counted publisher (the interrupt publishes
/// immediately).
static READINGS: PubSubChannel<CriticalSectionRawMutex, u32, 8, 1, 0> = PubSubChannel::new();

/// The latest reading, one receiver.
static LATEST: Watch<CriticalSectionRawMutex, u32, 1> = Watch::new();

static TICKS: AtomicU32 = AtomicU32::new(0);

const TOTAL: u32 = 48;
const STALL_AFTER: u32 = 16;
const STALL_UNTIL: u32 = STALL_AFTER + 8 + 5;

#[exception]
fn SysTick() {
    let reading = TICKS.load(Ordering::Relaxed) + 1;
    READINGS.immediate_publisher().publish_immediate(reading);
    LATEST.sender().send(reading);
    TICKS.store(reading, Ordering::Release);
    if reading == TOTAL {
        stop_ticks();
    }
}

#[entry]
fn main() -> ! {
    let Ok(mut readings) = READINGS.subscriber() else {
        fail("subscribe")
    };
    let Some(mut latest) = LATEST.receiver() else {
        fail("receiver")
    };
    if READINGS.subscriber().is_ok() {
        fail("a second subscriber is refused (the limit is 1)");
    }
    let peripherals = cortex_m::Peripherals::take().unwrap();
    start_ticks(peripherals.SYST, 100_000);

    for expected in 1..=STALL_AFTER {
        match block_on(readings.next_message()) {
            WaitResult::Message(m) if m == expected => {}
            _ => fail("readings arrive in order"),
        }
    }

    sleep_until(|| TICKS.load(Ordering::Acquire) >= STALL_UNTIL);
    let missed = match block_on(readings.next_message()) {
        WaitResult::Lagged(missed) => missed,
        _ => fail("a stalled subscriber is told it lagged"),
    };
    if missed < u64::from(STALL_UNTIL - 8 - STALL_AFTER) {
        fail("the lag report counts at least what was overwritten");
    }
    let mut expected = STALL_AFTER + 1 + missed as u32;
    loop {
        match block_on(readings.next_message()) {
            WaitResult::Message(m) if m == expected => {}
            _ => fail("after the lag report, readings go on in order"),
        }
        if expected == TOTAL {
            break;
        }
        expected += 1;
    }

    let mut previous = 0;
    while previous < TOTAL {
        let value = block_on(latest.changed());
        if value <= previous {
            fail("latest values only move forward");
        }
        previous = value;
    }
    if LATEST.try_get() != Some(TOTAL) {
        fail("the current value is the last reading");
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
