//! Fan-out benchmark: one publisher, N subscribers, 64-byte messages, on a 2-worker Tokio
//! runtime; storecast's stores against `tokio::sync::broadcast`, `async-broadcast` and
//! `tokio::sync::watch` in the same run.
//!
//! Every run checks what it measures: each queue subscriber must receive every message in
//! order (a lossy run would be no comparison, so tokio broadcast's publisher yields while
//! the channel is full), and each latest-value subscriber must see only increasing values
//! ending with the last. Figures are medians over `--repeat` runs.
//!
//! ```text
//! cargo run --release -p storecast-bench -- [--repeat 5] [--subscribers 1,16,256,4096] [--quick]
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use storecast::{DataStore, QueueStore, RecvError};

/// Counts live heap bytes, for the memory-per-subscriber figure.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Queue capacity for every queue under test.
const CAPACITY: usize = 256;

type Payload = [u8; 64];

fn payload(seq: u64) -> Payload {
    let mut p = [0u8; 64];
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p
}

fn seq(p: &Payload) -> u64 {
    u64::from_le_bytes(p[..8].try_into().unwrap())
}

struct Options {
    repeat: usize,
    subscribers: Vec<usize>,
    deliveries: u64,
    /// Run only contenders whose name contains this (for profiling one of them).
    only: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        repeat: 5,
        subscribers: vec![1, 16, 256, 4096],
        deliveries: 4_000_000,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--repeat" => {
                o.repeat = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--repeat N")
            }
            "--subscribers" => {
                o.subscribers = args
                    .next()
                    .expect("--subscribers 1,16,...")
                    .split(',')
                    .map(|n| n.parse().expect("a subscriber count"))
                    .collect()
            }
            "--only" => o.only = Some(args.next().expect("--only NAME")),
            "--quick" => {
                o.repeat = 1;
                o.deliveries = 400_000;
            }
            "--help" | "-h" => {
                println!(
                    "usage: storecast-bench [--repeat N] [--subscribers 1,16,256,4096] [--quick] [--only NAME]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?}; try --help"),
        }
    }
    o
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Lets other tasks run, the way each runtime does it (Tokio's puts the task at the back of
/// the queue; a bare self-wake would be polled again at once).
async fn yield_on(rt: Runtime) {
    match rt {
        Runtime::Tokio => tokio::task::yield_now().await,
        Runtime::AsyncStd => async_std::task::yield_now().await,
        Runtime::Smol => futures_lite::future::yield_now().await,
    }
}

/// The runtimes the stores are measured on: each with two worker threads.
#[derive(Clone, Copy)]
enum Runtime {
    Tokio,
    AsyncStd,
    Smol,
}

/// Runs `publisher` and the subscriber tasks on a fresh runtime; returns the elapsed time
/// from the first submit until every subscriber finished, and what each one received.
fn fan_out<S, SF, P>(
    runtime_kind: Runtime,
    subscribers: Vec<S>,
    read: fn(S) -> SF,
    publisher: P,
) -> (Duration, Vec<u64>)
where
    S: Send + 'static,
    SF: Future<Output = u64> + Send + 'static,
    P: Future<Output = ()> + Send + 'static,
{
    match runtime_kind {
        Runtime::Tokio => runtime().block_on(async move {
            let readers: Vec<_> = subscribers
                .into_iter()
                .map(|s| tokio::spawn(read(s)))
                .collect();
            // Let every reader reach its first wait before the clock starts.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let start = Instant::now();
            tokio::spawn(publisher).await.unwrap();
            let mut received = Vec::with_capacity(readers.len());
            for r in readers {
                received.push(r.await.unwrap());
            }
            (start.elapsed(), received)
        }),
        // async-std's global executor runs one thread per core: two here.
        Runtime::AsyncStd => async_std::task::block_on(async move {
            let readers: Vec<_> = subscribers
                .into_iter()
                .map(|s| async_std::task::spawn(read(s)))
                .collect();
            async_io::Timer::after(Duration::from_millis(20)).await;
            let start = Instant::now();
            async_std::task::spawn(publisher).await;
            let mut received = Vec::with_capacity(readers.len());
            for r in readers {
                received.push(r.await);
            }
            (start.elapsed(), received)
        }),
        Runtime::Smol => {
            let executor = std::sync::Arc::new(smol::Executor::new());
            let (stop, stopped) = smol::channel::unbounded::<()>();
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let (executor, stopped) = (executor.clone(), stopped.clone());
                    std::thread::spawn(move || smol::block_on(executor.run(stopped.recv())))
                })
                .collect();
            let result = smol::block_on(async {
                let readers: Vec<_> = subscribers
                    .into_iter()
                    .map(|s| executor.spawn(read(s)))
                    .collect();
                async_io::Timer::after(Duration::from_millis(20)).await;
                let start = Instant::now();
                executor.spawn(publisher).await;
                let mut received = Vec::with_capacity(readers.len());
                for r in readers {
                    received.push(r.await);
                }
                (start.elapsed(), received)
            });
            drop(stop);
            for w in workers {
                let _ = w.join();
            }
            result
        }
    }
}

// --- Queue: lossless fan-out ------------------------------------------------------------

fn storecast_queue(n: usize, m: u64) -> (Duration, Vec<u64>) {
    storecast_queue_on(Runtime::Tokio, n, m)
}

fn storecast_queue_async_std(n: usize, m: u64) -> (Duration, Vec<u64>) {
    storecast_queue_on(Runtime::AsyncStd, n, m)
}

fn storecast_queue_smol(n: usize, m: u64) -> (Duration, Vec<u64>) {
    storecast_queue_on(Runtime::Smol, n, m)
}

fn storecast_queue_on(rt: Runtime, n: usize, m: u64) -> (Duration, Vec<u64>) {
    let store = QueueStore::<Payload>::new(CAPACITY);
    let subs: Vec<_> = (0..n).map(|_| store.subscribe()).collect();
    fan_out(
        rt,
        subs,
        |mut sub| async move {
            let mut got = 0;
            // `recv`, not the `Stream`: it must cost no more than `next()`.
            loop {
                let message = match sub.recv().await {
                    Ok(message) => message,
                    Err(RecvError::Closed) => break,
                    Err(e) => panic!("a lossless queue reports no lag: {e}"),
                };
                got += 1;
                assert_eq!(seq(&message), got, "out of order");
            }
            got
        },
        async move {
            for i in 1..=m {
                store.submit(payload(i)).await.unwrap();
            }
            store.close();
        },
    )
}

fn tokio_broadcast(n: usize, m: u64) -> (Duration, Vec<u64>) {
    let (tx, rx) = tokio::sync::broadcast::channel::<Payload>(CAPACITY);
    let subs: Vec<_> = (0..n).map(|_| tx.subscribe()).collect();
    drop(rx);
    fan_out(
        Runtime::Tokio,
        subs,
        |mut rx| async move {
            let mut got = 0;
            loop {
                match rx.recv().await {
                    Ok(p) => {
                        got += 1;
                        assert_eq!(seq(&p), got, "out of order (lagged?)");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break got,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                        panic!("tokio broadcast subscriber lagged by {k}")
                    }
                }
            }
        },
        async move {
            for i in 1..=m {
                // Made lossless: never send into a full channel.
                while tx.len() >= CAPACITY {
                    tokio::task::yield_now().await;
                }
                tx.send(payload(i)).unwrap();
            }
        },
    )
}

fn async_broadcast(n: usize, m: u64) -> (Duration, Vec<u64>) {
    let (tx, rx) = async_broadcast::broadcast::<Payload>(CAPACITY);
    let subs: Vec<_> = (0..n).map(|_| rx.clone()).collect();
    drop(rx);
    fan_out(
        Runtime::Tokio,
        subs,
        |mut rx| async move {
            let mut got = 0;
            while let Ok(p) = rx.recv_direct().await {
                got += 1;
                assert_eq!(seq(&p), got, "out of order");
            }
            got
        },
        async move {
            for i in 1..=m {
                tx.broadcast_direct(payload(i)).await.unwrap();
            }
        },
    )
}

// --- Latest value ------------------------------------------------------------------------

/// How often the latest-value publishers let other tasks run on their worker.
const YIELD_EVERY: u64 = 16;

fn storecast_latest(n: usize, m: u64) -> (Duration, Vec<u64>) {
    storecast_latest_on(Runtime::Tokio, n, m)
}

fn storecast_latest_async_std(n: usize, m: u64) -> (Duration, Vec<u64>) {
    storecast_latest_on(Runtime::AsyncStd, n, m)
}

fn storecast_latest_smol(n: usize, m: u64) -> (Duration, Vec<u64>) {
    storecast_latest_on(Runtime::Smol, n, m)
}

fn storecast_latest_on(rt: Runtime, n: usize, m: u64) -> (Duration, Vec<u64>) {
    let store = DataStore::<Payload>::new();
    let subs: Vec<_> = (0..n).map(|_| store.subscribe()).collect();
    fan_out(
        rt,
        subs,
        |mut sub| async move {
            let (mut got, mut last) = (0, 0);
            loop {
                let message = match sub.recv().await {
                    Ok(message) => message,
                    Err(RecvError::Closed) => break,
                    Err(e) => panic!("a latest-value store reports nothing here: {e}"),
                };
                let s = seq(&message);
                assert!(s > last, "went back or repeated");
                (got, last) = (got + 1, s);
            }
            got
        },
        async move {
            for i in 1..=m {
                store.try_submit(payload(i)).unwrap();
                if i % YIELD_EVERY == 0 {
                    yield_on(rt).await;
                }
            }
            store.close();
        },
    )
}

fn tokio_watch(n: usize, m: u64) -> (Duration, Vec<u64>) {
    let (tx, rx) = tokio::sync::watch::channel::<Payload>(payload(0));
    let subs: Vec<_> = (0..n).map(|_| rx.clone()).collect();
    drop(rx);
    fan_out(
        Runtime::Tokio,
        subs,
        |mut rx| async move {
            let (mut got, mut last) = (0, 0);
            while rx.changed().await.is_ok() {
                let s = seq(&rx.borrow_and_update());
                assert!(s > last, "went back or repeated");
                (got, last) = (got + 1, s);
            }
            // The last value is still there after the sender is gone.
            let s = seq(&rx.borrow_and_update());
            if s > last {
                got += 1;
            }
            got
        },
        async move {
            for i in 1..=m {
                tx.send(payload(i)).unwrap();
                if i % YIELD_EVERY == 0 {
                    tokio::task::yield_now().await;
                }
            }
        },
    )
}

// --- Reporting ---------------------------------------------------------------------------

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Contender {
    name: &'static str,
    run: fn(usize, u64) -> (Duration, Vec<u64>),
}

/// Runs the contenders in turn, `repeat` times, and prints median rates; `rate` turns one
/// run into the figure compared.
fn compare(title: &str, contenders: &[Contender], o: &Options, lossless: bool) {
    let contenders: Vec<&Contender> = contenders
        .iter()
        .filter(|c| {
            o.only
                .as_ref()
                .is_none_or(|only| c.name.contains(only.as_str()))
        })
        .collect();
    if contenders.is_empty() {
        return;
    }
    println!("\n## {title}\n");
    print!("| subscribers | messages |");
    for c in &contenders {
        print!(" {} |", c.name);
    }
    println!(" ratios |");
    print!("|---|---|");
    for _ in &contenders {
        print!("---|");
    }
    println!("---|");
    for &n in &o.subscribers {
        let m = (o.deliveries / n as u64).clamp(5_000, 200_000);
        let mut rates = vec![Vec::new(); contenders.len()];
        for _ in 0..o.repeat {
            for (c, rate) in contenders.iter().zip(&mut rates) {
                let (elapsed, received) = (c.run)(n, m);
                let total: u64 = received.iter().sum();
                if lossless {
                    assert!(
                        received.iter().all(|&r| r == m),
                        "{} lost messages: a subscriber got {:?} of {m}",
                        c.name,
                        received.iter().min()
                    );
                    rate.push(total as f64 / elapsed.as_secs_f64());
                } else {
                    assert!(
                        received.iter().all(|&r| r >= 1),
                        "{}: a subscriber saw nothing",
                        c.name
                    );
                    // Latest value: how many updates per second reach every subscriber.
                    rate.push(m as f64 / elapsed.as_secs_f64());
                }
            }
        }
        let medians: Vec<f64> = rates.into_iter().map(median).collect();
        print!("| {n} | {m} |");
        for r in &medians {
            print!(" {:.2} M/s |", r / 1e6);
        }
        let ratios: Vec<String> = medians[1..]
            .iter()
            .zip(&contenders[1..])
            .map(|(r, c)| format!("{:.2}x {}", medians[0] / r, c.name))
            .collect();
        println!(" {} |", ratios.join(", "));
    }
}

fn bytes_per_subscriber<S>(n: usize, subscribe: impl Fn() -> S) -> f64 {
    let before = LIVE.load(Ordering::Relaxed);
    let subs: Vec<S> = (0..n).map(|_| subscribe()).collect();
    let after = LIVE.load(Ordering::Relaxed);
    drop(subs);
    (after - before) as f64 / n as f64
}

fn bytes_per_parked_subscriber<S: futures_lite::Stream + Unpin>(
    n: usize,
    subscribe: impl Fn() -> S,
) -> f64 {
    let before = LIVE.load(Ordering::Relaxed);
    let mut subs: Vec<S> = (0..n).map(|_| subscribe()).collect();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    for s in &mut subs {
        assert!(s.poll_next(&mut cx).is_pending());
    }
    let after = LIVE.load(Ordering::Relaxed);
    drop(subs);
    (after - before) as f64 / n as f64
}

fn memory() {
    const N: usize = 10_000;
    let queue = QueueStore::<Payload>::new(CAPACITY);
    let latest = DataStore::<Payload>::new();
    let (btx, _brx) = tokio::sync::broadcast::channel::<Payload>(CAPACITY);
    let (_wtx, wrx) = tokio::sync::watch::channel::<Payload>(payload(0));
    println!("\n## Memory per idle subscriber ({N} subscribers)\n");
    println!("| store | subscribed | subscribed and parked (polled, waiting) |");
    println!("|---|---|---|");
    println!(
        "| storecast QueueStore | {:.0} B | {:.0} B |",
        bytes_per_subscriber(N, || queue.subscribe()),
        bytes_per_parked_subscriber(N, || queue.subscribe())
    );
    println!(
        "| storecast DataStore | {:.0} B | {:.0} B |",
        bytes_per_subscriber(N, || latest.subscribe()),
        bytes_per_parked_subscriber(N, || latest.subscribe())
    );
    println!(
        "| tokio broadcast Receiver | {:.0} B | - |",
        bytes_per_subscriber(N, || btx.subscribe())
    );
    println!(
        "| tokio watch Receiver | {:.0} B | - |",
        bytes_per_subscriber(N, || wrx.clone())
    );
}

fn main() {
    let o = options();
    println!(
        "# storecast fan-out benchmark\n\n2 worker threads (Tokio unless named), 64-byte messages, queue capacity {CAPACITY}, \
         median of {} run(s); figures are deliveries per second for queues and updates per \
         second reaching every subscriber for latest-value stores.",
        o.repeat
    );
    compare(
        "Queue, lossless: messages delivered per second (every subscriber gets every message in order)",
        &[
            Contender {
                name: "storecast QueueStore",
                run: storecast_queue,
            },
            Contender {
                name: "tokio broadcast",
                run: tokio_broadcast,
            },
            Contender {
                name: "async-broadcast",
                run: async_broadcast,
            },
            Contender {
                name: "QueueStore on async-std",
                run: storecast_queue_async_std,
            },
            Contender {
                name: "QueueStore on smol",
                run: storecast_queue_smol,
            },
        ],
        &o,
        true,
    );
    compare(
        "Latest value: updates per second reaching every subscriber",
        &[
            Contender {
                name: "storecast DataStore",
                run: storecast_latest,
            },
            Contender {
                name: "tokio watch",
                run: tokio_watch,
            },
            Contender {
                name: "DataStore on async-std",
                run: storecast_latest_async_std,
            },
            Contender {
                name: "DataStore on smol",
                run: storecast_latest_smol,
            },
        ],
        &o,
        false,
    );
    memory();
}
