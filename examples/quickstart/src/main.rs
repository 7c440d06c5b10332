//! storecast in one minute, with no async runtime at all: plain threads and
//! `futures_lite::future::block_on`.
//!
//! ```text
//! cargo run -p storecast-quickstart
//! ```

use std::thread;
use std::time::Duration;

use futures_lite::StreamExt;
use futures_lite::future::block_on;
use storecast::{DataStore, Overflow, QueueStore, Start, TryRecvError};

fn main() {
    latest_value();
    queue();
    overflow();
    resume();
}

/// A latest-value store: a ticker price. Readers see the newest price, may skip some, and
/// always end with the last one.
fn latest_value() {
    println!("== DataStore: the latest price");
    let price = DataStore::with_value(100.0_f64);
    let mut watcher = price.subscribe();
    let reader = thread::spawn(move || {
        let mut seen = 0;
        let mut last = 0.0;
        while let Some(item) = block_on(watcher.next()) {
            let quote = item.expect("a latest-value store never reports lag");
            (seen, last) = (seen + 1, *quote);
        }
        println!("   the watcher saw {seen} of 10001 prices, ending with {last:.2}");
    });
    for tick in 1..=10_000 {
        price.try_submit(100.0 + tick as f64 / 100.0).unwrap();
    }
    price.close();
    reader.join().unwrap();
    let current = price.current().unwrap();
    println!(
        "   current price {:.2} at position {}",
        *current,
        current.position()
    );
}

/// A lossless queue: every subscriber gets every line, in order; a slow one holds the
/// publisher back instead of losing anything.
fn queue() {
    println!("== QueueStore (Overflow::Wait): every line to everyone");
    let log = QueueStore::new(4);
    let readers: Vec<_> = [("fast", 0), ("slow", 2)]
        .into_iter()
        .map(|(name, pause_ms)| {
            let mut lines = log.subscribe();
            thread::spawn(move || {
                let mut count = 0;
                while let Some(item) = block_on(lines.next()) {
                    let line: storecast::Message<String> = item.unwrap();
                    count += 1;
                    assert_eq!(line.position().offset(), count, "in order, none missed");
                    thread::sleep(Duration::from_millis(pause_ms));
                }
                println!("   {name} reader got all {count} lines in order");
            })
        })
        .collect();
    block_on(async {
        for n in 1..=50 {
            // Waits whenever the slow reader is 4 lines behind.
            log.submit(format!("line {n}")).await.unwrap();
        }
    });
    log.close();
    for r in readers {
        r.join().unwrap();
    }
}

/// The other overflow policies never wait, and never lose silently.
fn overflow() {
    println!("== Overflow::DropOldest and Overflow::Disconnect: the laggard is told");
    let ticks = QueueStore::with_overflow(4, Overflow::DropOldest);
    let mut laggard = ticks.subscribe();
    for n in 1..=10 {
        ticks.try_submit(n).unwrap();
    }
    match laggard.try_recv() {
        Err(TryRecvError::Lagged { missed }) => {
            println!("   DropOldest: missed {missed}, then goes on")
        }
        other => panic!("expected a lag report, got {other:?}"),
    }
    let rest: Vec<u32> = std::iter::from_fn(|| laggard.try_recv().ok())
        .map(|m| *m)
        .collect();
    println!("   ...with {rest:?}");

    let strict = QueueStore::with_overflow(4, Overflow::Disconnect);
    let mut laggard = strict.subscribe();
    for n in 1..=10 {
        strict.try_submit(n).unwrap();
    }
    if let Err(e) = laggard.try_recv() {
        println!("   Disconnect: {e}");
    }
}

/// Resuming after the last position a client saw (what SSE's Last-Event-ID carries).
fn resume() {
    println!("== Resume after a position");
    let events = QueueStore::new(16);
    let mut seen = None;
    for n in 1..=5 {
        let position = events.try_submit(format!("event {n}")).unwrap();
        if n == 3 {
            seen = Some(position);
        }
    }
    let seen = seen.expect("three submits");
    let mut again = events.subscribe_from(Start::After(seen));
    events.close();
    let missed: Vec<String> = block_on(async {
        let mut out = Vec::new();
        while let Some(item) = again.next().await {
            out.push(item.unwrap().to_string());
        }
        out
    });
    println!("   a client that saw position {seen} gets {missed:?}");
}
