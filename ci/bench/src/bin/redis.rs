//! Redis fan-out benchmark: messages per second from Redis to N in-process subscribers
//! through one `RedisStore`, against `redis-benchmark`'s PUBLISH rate on the same server in
//! the same run.
//!
//! ```text
//! cargo run --release -p storecast-bench --bin redis [-- --messages 200000 --subscribers 1,100,10000]
//! ```
//!
//! For each N: a fresh store on a channel, N subscriber tasks (Tokio, 2 workers) that read
//! until they see the final message, then `redis-benchmark` publishes M 64-byte messages
//! (its defaults: 50 connections, no pipelining). The store's rate is the messages it took
//! from Redis per second, first to last; every message must arrive (none lost to a slow
//! subscription) and every subscriber must end with the final value. A latest-value
//! subscriber may skip values, so how many each one saw is reported too.

#[path = "../../../../adapters/redis/tests/support/mod.rs"]
mod redis_server;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use redis_server::RedisServer;
use storecast::Store;
use storecast_redis::{QueueOptions, Redis, RedisQueueStore, RedisStore};

const PAYLOAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const END: &str = "end";

struct Options {
    messages: u64,
    subscribers: Vec<usize>,
    queue_subscribers: Vec<usize>,
    repeat: usize,
}

fn options() -> Options {
    let mut o = Options {
        messages: 200_000,
        subscribers: vec![1, 100, 10_000],
        queue_subscribers: vec![1, 100],
        repeat: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--messages" => {
                o.messages = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--messages N")
            }
            "--subscribers" => {
                o.subscribers = args
                    .next()
                    .expect("--subscribers N,N,...")
                    .split(',')
                    .map(|n| n.parse().expect("a number of subscribers"))
                    .collect();
            }
            "--repeat" => {
                o.repeat = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--repeat N")
            }
            "--quick" => {
                o.messages = 20_000;
                o.subscribers = vec![1, 100];
                o.queue_subscribers = vec![1];
                o.repeat = 1;
            }
            other => panic!(
                "unknown argument {other}; use --messages N, --subscribers N,N, --repeat N or --quick"
            ),
        }
    }
    o
}

/// Where the processes run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Anywhere: redis-server, redis-benchmark and this process share every core.
    Shared,
    /// redis-server and redis-benchmark on core 0, this process on core 1: the store keeps
    /// up or not without taking CPU from the server it listens to.
    Pinned,
}

impl Placement {
    /// Moves redis-server (`server`) and this process (every thread) where they belong.
    fn apply(self, server: &RedisServer) {
        let (theirs, ours) = match self {
            Placement::Shared => ("0-1", "0-1"),
            Placement::Pinned => ("0", "1"),
        };
        let pin = |cpus: &str, pid: u32| {
            let status = Command::new("taskset")
                .args(["-a", "-p", "-c", cpus, &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .status()
                .expect("taskset runs (util-linux)");
            assert!(status.success(), "taskset -p -c {cpus} {pid} failed");
        };
        pin(theirs, server.pid().expect("a running server"));
        pin(ours, std::process::id());
    }

    /// How redis-benchmark is started.
    fn command(self) -> Command {
        match self {
            Placement::Shared => Command::new("redis-benchmark"),
            Placement::Pinned => {
                let mut command = Command::new("taskset");
                command.args(["-c", "0", "redis-benchmark"]);
                command
            }
        }
    }
}

/// Runs `redis-benchmark` sending `command` `messages` times; returns its requests per second.
fn redis_benchmark(placement: Placement, port: u16, command: &[&str], messages: u64) -> f64 {
    let output = placement
        .command()
        .args(["-p", &port.to_string(), "-q", "-n", &messages.to_string()])
        .args(command)
        .output()
        .expect("redis-benchmark runs (apt-get install -y redis-tools)");
    assert!(
        output.status.success(),
        "redis-benchmark failed: {output:?}"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    // The last line: "PUBLISH ...: 123456.79 requests per second, p50=0.199 msec"
    text.rsplit('\r')
        .flat_map(|part| part.lines())
        .filter_map(|line| {
            let before = line.split(" requests per second").next()?;
            before.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .next_back()
        .unwrap_or_else(|| panic!("no rate in redis-benchmark's output: {text}"))
}

struct Outcome {
    /// CPU this process used while the store took the messages, in cores.
    cores: f64,
    store_rate: f64,
    received: u64,
    seen_per_subscriber: f64,
    all_ended_with_last: bool,
    interruptions: u64,
}

fn run(
    placement: Placement,
    server: &RedisServer,
    runtime: &tokio::runtime::Runtime,
    n: usize,
    messages: u64,
    round: usize,
) -> Outcome {
    let channel = format!("bench-{round}");
    let (store, seen, done) = runtime.block_on(async {
        let redis = Redis::connect(&server.url())
            .await
            .expect("the benchmark's server");
        let store: RedisStore<String> = redis.data_store(&channel).await.expect("a store");
        let seen = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        for _ in 0..n {
            let mut subscriber = store.subscribe();
            let (seen, done) = (Arc::clone(&seen), Arc::clone(&done));
            tokio::spawn(async move {
                let mut count = 0;
                while let Some(Ok(message)) = subscriber.next().await {
                    if *message == END {
                        done.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    count += 1;
                }
                seen.fetch_add(count, Ordering::Relaxed);
            });
        }
        (store, seen, done)
    });

    let cpu_before = cpu_seconds();
    // Watches the store's count from a thread of its own: first and last arrival.
    let watcher = {
        let store = store.clone();
        watch(move || store.received(), messages)
    };
    redis_benchmark(
        placement,
        server.port(),
        &["PUBLISH", &channel, PAYLOAD],
        messages,
    );
    let (first, last, received) = watcher.join().expect("the watcher");
    let cpu = cpu_seconds() - cpu_before;
    server.cli(&["PUBLISH", &channel, END]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < n as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let all_ended_with_last = done.load(Ordering::Relaxed) == n as u64;
    std::thread::sleep(Duration::from_millis(50));
    let outcome = Outcome {
        cores: cpu / last.duration_since(first).as_secs_f64().max(1e-9),
        store_rate: received as f64 / last.duration_since(first).as_secs_f64().max(1e-9),
        received,
        seen_per_subscriber: seen.load(Ordering::Relaxed) as f64 / n as f64,
        all_ended_with_last,
        interruptions: store.interruptions(),
    };
    store.close();
    outcome
}

/// What a queue run measured.
struct QueueOutcome {
    /// Entries per second the store read from the stream, first to last.
    store_rate: f64,
    /// Whether every subscriber got every entry, in order, positions consecutive.
    all_in_order: bool,
    cores: f64,
}

/// `redis-benchmark` adds `messages` entries to a stream that a `RedisQueueStore` with `n`
/// subscribers follows; each subscriber must get every one, in order.
fn run_queue(
    placement: Placement,
    server: &RedisServer,
    runtime: &tokio::runtime::Runtime,
    n: usize,
    messages: u64,
    round: usize,
) -> QueueOutcome {
    let stream = format!("queue-bench-{round}");
    let (store, in_order) = runtime.block_on(async {
        let redis = Redis::connect(&server.url())
            .await
            .expect("the benchmark's server");
        let store: RedisQueueStore<String> = redis
            .queue_store(&stream, QueueOptions::default())
            .await
            .expect("a store");
        let in_order = Arc::new(AtomicU64::new(0));
        for _ in 0..n {
            let mut subscriber = store.subscribe();
            let in_order = Arc::clone(&in_order);
            tokio::spawn(async move {
                let mut previous = None;
                for _ in 0..messages {
                    let Some(Ok(message)) = subscriber.next().await else {
                        return;
                    };
                    let position = message.position().offset();
                    if previous.is_some_and(|p| p + 1 != position) || *message != PAYLOAD {
                        return;
                    }
                    previous = Some(position);
                }
                in_order.fetch_add(1, Ordering::Relaxed);
            });
        }
        (store, in_order)
    });
    let start = store.last_position().offset();
    let cpu_before = cpu_seconds();
    let watcher = {
        let store = store.clone();
        watch(move || store.last_position().offset() - start, messages)
    };
    redis_benchmark(
        placement,
        server.port(),
        &["XADD", &stream, "*", "data", PAYLOAD],
        messages,
    );
    let (first, last, read) = watcher.join().expect("the watcher");
    let cpu = cpu_seconds() - cpu_before;
    let deadline = Instant::now() + Duration::from_secs(60);
    while in_order.load(Ordering::Relaxed) < n as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = last.duration_since(first).as_secs_f64().max(1e-9);
    let outcome = QueueOutcome {
        store_rate: read as f64 / elapsed,
        all_in_order: read == messages && in_order.load(Ordering::Relaxed) == n as u64,
        cores: cpu / elapsed,
    };
    store.close();
    server.cli(&["DEL", &stream]);
    outcome
}

/// Watches a count from a thread of its own until it reaches `target` (or stops moving
/// for 5 s): returns when it first moved, when it last moved, and where it ended.
fn watch(
    count: impl Fn() -> u64 + Send + 'static,
    target: u64,
) -> std::thread::JoinHandle<(Instant, Instant, u64)> {
    std::thread::spawn(move || {
        let mut first = None;
        let mut last = Instant::now();
        let mut seen = count();
        loop {
            std::thread::sleep(Duration::from_micros(200));
            let now = count();
            if now != seen {
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                seen = now;
            }
            if seen >= target || (first.is_some() && last.elapsed() > Duration::from_secs(5)) {
                return (first.unwrap_or(last), last, seen);
            }
        }
    })
}

/// User and system CPU time of this process so far, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

fn main() {
    let o = options();
    let server = RedisServer::start_in_memory();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let pinnable = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
        && Command::new("taskset").arg("-V").output().is_ok();
    println!(
        "# storecast-redis fan-out benchmark\n\n{} messages of 64 bytes published by redis-benchmark \
         (50 connections, no pipelining) to one RedisStore in this process (Tokio, 2 workers). \
         Each run is paired with a raw PUBLISH run (no subscribers) just before it, in the same \
         placement; medians of {} pairs.",
        o.messages, o.repeat
    );
    let mut failed = false;
    let mut round = 0;
    let placements: &[Placement] = if pinnable {
        &[Placement::Shared, Placement::Pinned]
    } else {
        &[Placement::Shared]
    };
    for &placement in placements {
        placement.apply(&server);
        println!(
            "\n## {}\n",
            match placement {
                Placement::Shared =>
                    "Shared: redis-server, redis-benchmark and this process on the same cores",
                Placement::Pinned =>
                    "Pinned: redis-server and redis-benchmark on core 0, this process on core 1",
            }
        );
        println!(
            "| subscribers | raw PUBLISH (msg/s) | store took from Redis (msg/s) | store vs raw | received | values seen per subscriber | all ended with the last | interruptions | this process's CPU |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for &n in &o.subscribers {
            let mut pairs = Vec::new();
            for _ in 0..o.repeat {
                let raw = redis_benchmark(
                    placement,
                    server.port(),
                    &["PUBLISH", "nobody-listens", PAYLOAD],
                    o.messages,
                );
                let r = run(placement, &server, &runtime, n, o.messages, round);
                round += 1;
                failed |=
                    r.received != o.messages || !r.all_ended_with_last || r.interruptions != 0;
                pairs.push((raw, r));
            }
            pairs.sort_by(|a, b| (a.1.store_rate / a.0).total_cmp(&(b.1.store_rate / b.0)));
            let (raw, r) = &pairs[pairs.len() / 2];
            println!(
                "| {n} | {raw:.0} | {:.0} | {:.2}x | {} of {} | {:.0} ({:.1}%) | {} | {} | {:.2} cores |",
                r.store_rate,
                r.store_rate / raw,
                r.received,
                o.messages,
                r.seen_per_subscriber,
                100.0 * r.seen_per_subscriber / o.messages as f64,
                if r.all_ended_with_last { "yes" } else { "NO" },
                r.interruptions,
                r.cores,
            );
        }
    }
    println!(
        "\n# RedisQueueStore: every entry to every subscriber\n\n{} entries of 64 bytes added by \
         redis-benchmark (`XADD`, 50 connections, no pipelining) to a stream one \
         RedisQueueStore follows (capacity 1024, Overflow::Wait); each subscriber must get \
         every entry in order. Raw: the same XADDs with nobody reading.",
        o.messages
    );
    for &placement in placements {
        placement.apply(&server);
        println!(
            "\n| placement | subscribers | raw XADD (msg/s) | store read from Redis (msg/s) | store vs raw | every entry to every subscriber, in order | this process's CPU |"
        );
        println!("|---|---|---|---|---|---|---|");
        for &n in &o.queue_subscribers {
            let mut pairs = Vec::new();
            for _ in 0..o.repeat {
                let raw_stream = format!("raw-{round}");
                let raw = redis_benchmark(
                    placement,
                    server.port(),
                    &["XADD", &raw_stream, "*", "data", PAYLOAD],
                    o.messages,
                );
                server.cli(&["DEL", &raw_stream]);
                let r = run_queue(placement, &server, &runtime, n, o.messages, round);
                round += 1;
                failed |= !r.all_in_order;
                pairs.push((raw, r));
            }
            pairs.sort_by(|a, b| (a.1.store_rate / a.0).total_cmp(&(b.1.store_rate / b.0)));
            let (raw, r) = &pairs[pairs.len() / 2];
            println!(
                "| {} | {n} | {raw:.0} | {:.0} | {:.2}x | {} | {:.2} cores |",
                match placement {
                    Placement::Shared => "shared",
                    Placement::Pinned => "pinned",
                },
                r.store_rate,
                r.store_rate / raw,
                if r.all_in_order { "yes" } else { "NO" },
                r.cores,
            );
        }
    }
    if failed {
        eprintln!(
            "FAILED: a message was lost, a subscriber did not end with the last value, the subscription was interrupted, or a queue subscriber missed an entry"
        );
        std::process::exit(1);
    }
}
