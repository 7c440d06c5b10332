//! Redis Cluster benchmark: messages per second delivered through sharded channels to
//! `RedisStore`s in this process, on clusters of 1, 2 and 3 primaries (real
//! `redis-server` processes, no replicas), to show how throughput grows with shards.
//!
//! ```text
//! cargo run --release -p storecast-bench --bin cluster [-- --seconds 5 --topics 64 --repeat 3]
//! ```
//!
//! For each cluster: `--topics` latest-value topics (one `RedisStore` each, on one
//! `Redis` handle, one subscriber task each), spread over the slots. Publishers (the
//! benchmark's own clients, since `redis-benchmark` cannot publish sharded): 16 tasks on a
//! cluster connection of their own, each calling a script that `SPUBLISH`es 64 messages of
//! 64 bytes, to one topic after another, at most 50,000 messages ahead of the readers. Delivered: the messages the stores took from Redis per
//! second over the measured window; published: what the publishers had answered. Every
//! published message must be delivered (a subscription that Redis cut off for falling
//! behind shows as an interruption and fails the run).
//!
//! Redis's own CPU time per node is reported as well: on this machine's two cores, the
//! primaries, the publishers and the subscribing process share the CPU.

#[path = "../../../../adapters/redis/tests/support/mod.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use redis_server::RedisCluster;
use storecast::Store;
use storecast_redis::{QueueOptions, Redis, RedisQueueStore, RedisStore};

const PAYLOAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const PUBLISHERS: usize = 16;
const PIPELINE: usize = 64;
const SUBMITTERS_PER_TOPIC: usize = 4;
/// How far the publishers may be ahead of what was delivered.
const IN_FLIGHT: u64 = 50_000;

/// Publishes `ARGV[1]` to the sharded channel `KEYS[1]`, `ARGV[2]` times: the publishers cost
/// this process one command per batch, so that Redis, not the benchmark, does the work
/// of publishing.
static PUBLISH_MANY: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "for i = 1, tonumber(ARGV[2]) do redis.call('SPUBLISH', KEYS[1], ARGV[1]) end",
    )
});

struct Options {
    seconds: f64,
    topics: usize,
    repeat: usize,
    shards: Vec<usize>,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 5.0,
        topics: 64,
        repeat: 3,
        shards: vec![1, 2, 3],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match arg.as_str() {
            "--seconds" => o.seconds = value("--seconds").parse().expect("--seconds S"),
            "--topics" => o.topics = value("--topics").parse().expect("--topics N"),
            "--repeat" => o.repeat = value("--repeat").parse().expect("--repeat N"),
            "--quick" => {
                o.seconds = 0.5;
                o.topics = 16;
                o.repeat = 1;
            }
            other => panic!(
                "unknown argument {other}; use --seconds S, --topics N, --repeat N or --quick"
            ),
        }
    }
    o
}

/// What one run measured.
struct Outcome {
    delivered_per_second: f64,
    published: u64,
    delivered: u64,
    interruptions: u64,
    /// Redis CPU seconds per second of the window, summed over the primaries.
    redis_cores: f64,
}

/// CPU seconds (user and system) a node has used so far.
fn node_cpu(cluster: &RedisCluster, node: usize) -> f64 {
    cluster.nodes[node]
        .cli(&["INFO", "cpu"])
        .lines()
        .filter(|line| line.starts_with("used_cpu_sys:") || line.starts_with("used_cpu_user:"))
        .filter_map(|line| line.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

/// Who reads the sharded channels.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Readers {
    /// A `RedisStore` per topic, on one `Redis` handle, with a subscriber each.
    Stores,
    /// One plain socket per node that subscribes to the node's channels and only counts
    /// the bytes that arrive: what the cluster itself delivers, with next to no reading
    /// cost (a stand-in for many hub processes on other machines).
    Drains,
}

/// A thread per node that subscribes (RESP2) to the node's `channels` and counts the
/// bytes that arrive until `stop`.
fn drain(
    port: u16,
    channels: Vec<String>,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).expect("a node");
        for channel in &channels {
            socket
                .write_all(format!("SSUBSCRIBE {channel}\r\n").as_bytes())
                .expect("SSUBSCRIBE");
        }
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("a timeout");
        let mut buffer = vec![0u8; 1 << 18];
        while !stop.load(Ordering::Relaxed) {
            match socket.read(&mut buffer) {
                Ok(0) => return,
                Ok(n) => {
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => {}
            }
        }
    })
}

fn run(
    cluster: &RedisCluster,
    runtime: &tokio::runtime::Runtime,
    o: &Options,
    round: usize,
    readers: Readers,
) -> Outcome {
    let url = cluster.url();
    let nodes: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("redis://127.0.0.1:{}", n.port()))
        .collect();
    // Fixed-width names: every message a drain gets is one frame of the same length.
    let names: Vec<String> = (0..o.topics)
        .map(|t| format!("bench-{round:04}-{t:04}"))
        .collect();
    let frame = format!(
        "*3\r\n$8\r\nsmessage\r\n${}\r\n{}\r\n$64\r\n{PAYLOAD}\r\n",
        names[0].len(),
        names[0]
    )
    .len() as u64;
    let drained = Arc::new(AtomicU64::new(0));
    let stop_draining = Arc::new(AtomicBool::new(false));
    let mut drains = Vec::new();
    if readers == Readers::Drains {
        for (node, server) in cluster.nodes.iter().enumerate() {
            let mine: Vec<String> = names
                .iter()
                .filter(|name| cluster.primary_of(name) == node)
                .cloned()
                .collect();
            drains.push(drain(
                server.port(),
                mine,
                Arc::clone(&drained),
                Arc::clone(&stop_draining),
            ));
        }
        // The confirmations arrive; what comes after them is messages.
        std::thread::sleep(Duration::from_millis(300));
    }
    let confirmations = drained.load(Ordering::Relaxed);
    runtime.block_on(async {
        let redis = Redis::connect(&url).await.expect("the benchmark's cluster");
        let mut stores: Vec<RedisStore<String>> = Vec::new();
        if readers == Readers::Stores {
            for name in &names {
                let store: RedisStore<String> = redis.data_store(name).await.expect("a store");
                let mut subscriber = store.subscribe();
                tokio::spawn(async move { while let Some(Ok(_)) = subscriber.next().await {} });
                stores.push(store);
            }
        }
        let stores = Arc::new(stores);
        let received: Arc<dyn Fn() -> u64 + Send + Sync> = {
            let (stores, drained) = (Arc::clone(&stores), Arc::clone(&drained));
            Arc::new(move || match readers {
                Readers::Stores => stores.iter().map(|s| s.received()).sum::<u64>(),
                Readers::Drains => {
                    drained
                        .load(Ordering::Relaxed)
                        .saturating_sub(confirmations)
                        / frame
                }
            })
        };
        let channels: Arc<Vec<String>> = Arc::new(names.clone());
        let publishers = redis::cluster::ClusterClient::builder(nodes)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .build()
            .expect("a cluster client")
            .get_async_connection()
            .await
            .expect("a cluster connection");
        let published = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for p in 0..PUBLISHERS {
            let (mut connection, channels) = (publishers.clone(), Arc::clone(&channels));
            let (published, stop) = (Arc::clone(&published), Arc::clone(&stop));
            let received = Arc::clone(&received);
            tasks.push(tokio::spawn(async move {
                let mut t = p;
                while !stop.load(Ordering::Relaxed) {
                    // Flow control: no further ahead of the readers than a window, so that
                    // the rate measured is one they keep up with (a subscriber that falls
                    // far behind is cut off by Redis's output buffer limit).
                    if published.load(Ordering::Relaxed) > received() + IN_FLIGHT {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        continue;
                    }
                    let channel = &channels[t % channels.len()];
                    t += PUBLISHERS;
                    let sent: redis::RedisResult<()> = PUBLISH_MANY
                        .key(channel)
                        .arg(PAYLOAD)
                        .arg(PIPELINE)
                        .invoke_async(&mut connection)
                        .await;
                    sent.expect("SPUBLISH");
                    published.fetch_add(PIPELINE as u64, Ordering::Relaxed);
                }
            }));
        }
        // A moment to get going, then the window.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cpu_before: f64 = (0..cluster.nodes.len()).map(|n| node_cpu(cluster, n)).sum();
        let (start, at_start) = (Instant::now(), received());
        tokio::time::sleep(Duration::from_secs_f64(o.seconds)).await;
        let (window, in_window) = (start.elapsed(), received() - at_start);
        let cpu_after: f64 = (0..cluster.nodes.len()).map(|n| node_cpu(cluster, n)).sum();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("a publisher");
        }
        let published = published.load(Ordering::Relaxed);
        // Everything published arrives.
        let deadline = Instant::now() + Duration::from_secs(30);
        while received() < published && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let outcome = Outcome {
            delivered_per_second: in_window as f64 / window.as_secs_f64(),
            published,
            delivered: received(),
            interruptions: stores.iter().map(|s| s.interruptions()).sum(),
            redis_cores: (cpu_after - cpu_before) / window.as_secs_f64(),
        };
        for store in stores.iter() {
            store.close();
        }
        stop_draining.store(true, Ordering::Relaxed);
        for drain in drains {
            drain.join().expect("a drain");
        }
        outcome
    })
}

/// Queue topics: `SUBMITTERS_PER_TOPIC` tasks per topic submit through `RedisQueueStore`s of
/// one handle (the add script: XADD, the counters, SPUBLISH of the announcement), and one
/// subscriber per topic on a second handle counts what it gets, checking order.
fn run_queue(
    cluster: &RedisCluster,
    runtime: &tokio::runtime::Runtime,
    o: &Options,
    round: usize,
) -> Outcome {
    let url = cluster.url();
    runtime.block_on(async {
        let writer = Redis::connect(&url).await.expect("the benchmark's cluster");
        let reader = Redis::connect(&url).await.expect("the benchmark's cluster");
        let delivered = Arc::new(AtomicU64::new(0));
        let in_order = Arc::new(AtomicBool::new(true));
        let mut producers = Vec::new();
        let mut consumers = Vec::new();
        for t in 0..o.topics {
            let stream = format!("bench-q-{round}-{t}");
            let producer: RedisQueueStore<String> = writer
                .queue_store(&stream, QueueOptions::default())
                .await
                .expect("a queue store");
            let consumer: RedisQueueStore<String> = reader
                .queue_store(&stream, QueueOptions::default().capacity(4096))
                .await
                .expect("a queue store");
            let mut subscriber = consumer.subscribe();
            let (delivered, in_order) = (Arc::clone(&delivered), Arc::clone(&in_order));
            tokio::spawn(async move {
                let mut last = None;
                while let Some(item) = subscriber.next().await {
                    let Ok(message) = item else {
                        in_order.store(false, Ordering::Relaxed);
                        continue;
                    };
                    let offset = message.position().offset();
                    if last.is_some_and(|l| offset != l + 1) {
                        in_order.store(false, Ordering::Relaxed);
                    }
                    last = Some(offset);
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            });
            producers.push(producer);
            consumers.push(consumer);
        }
        let published = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for producer in &producers {
            for _ in 0..SUBMITTERS_PER_TOPIC {
                let producer = producer.clone();
                let (published, stop) = (Arc::clone(&published), Arc::clone(&stop));
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        producer.submit(PAYLOAD.to_owned()).await.expect("a submit");
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cpu_before: f64 = (0..cluster.nodes.len()).map(|n| node_cpu(cluster, n)).sum();
        let (start, at_start) = (Instant::now(), delivered.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_secs_f64(o.seconds)).await;
        let (window, in_window) = (
            start.elapsed(),
            delivered.load(Ordering::Relaxed) - at_start,
        );
        let cpu_after: f64 = (0..cluster.nodes.len()).map(|n| node_cpu(cluster, n)).sum();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("a submitter");
        }
        let published = published.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while delivered.load(Ordering::Relaxed) < published && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let outcome = Outcome {
            delivered_per_second: in_window as f64 / window.as_secs_f64(),
            published,
            delivered: delivered.load(Ordering::Relaxed),
            interruptions: u64::from(!in_order.load(Ordering::Relaxed)),
            redis_cores: (cpu_after - cpu_before) / window.as_secs_f64(),
        };
        for store in producers.iter().chain(&consumers) {
            store.close();
        }
        outcome
    })
}

/// The tables.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Drains,
    Stores,
    Queue,
}

fn main() {
    let o = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    println!(
        "# storecast-redis on Redis Cluster: delivered messages/s by number of primaries\n\n\
         {} latest-value topics (sharded channels) on one Redis handle, one subscriber each; \
         {PUBLISHERS} publisher tasks each calling a script that SPUBLISHes {PIPELINE} messages of 64 bytes, at most {IN_FLIGHT} messages ahead of the readers; \
         {} s windows, medians of {}. Everything on this machine's {} cores.\n",
        o.topics,
        o.seconds,
        o.repeat,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut failed = false;
    let mut round = 0;
    let clusters: Vec<(usize, RedisCluster)> = o
        .shards
        .iter()
        .map(|&shards| (shards, RedisCluster::start(shards, 0)))
        .collect();
    for kind in [Kind::Drains, Kind::Stores, Kind::Queue] {
        let queue = kind == Kind::Queue;
        println!(
            "\n## {}\n\n| primaries | delivered (msg/s) | vs 1 primary | Redis CPU (cores, all primaries) | every message delivered{} | interruptions |\n|---|---|---|---|---|---|",
            match kind {
                Kind::Drains =>
                    "What the cluster delivers: SPUBLISH (in batches, by a script) to plain sockets that only count bytes",
                Kind::Stores =>
                    "Through storecast: SPUBLISH (in batches) to a RedisStore per topic, all in this process",
                Kind::Queue =>
                    "Queue topics: RedisQueueStore::submit (4 at a time per topic) to a subscriber per topic on another handle",
            },
            if queue { ", in order" } else { "" },
        );
        let mut base = None;
        for (shards, cluster) in &clusters {
            let mut outcomes = Vec::new();
            for _ in 0..o.repeat {
                let r = if queue {
                    run_queue(cluster, &runtime, &o, round)
                } else if kind == Kind::Drains {
                    run(cluster, &runtime, &o, round, Readers::Drains)
                } else {
                    run(cluster, &runtime, &o, round, Readers::Stores)
                };
                round += 1;
                failed |= r.delivered != r.published || r.interruptions != 0;
                outcomes.push(r);
            }
            outcomes.sort_by(|a, b| a.delivered_per_second.total_cmp(&b.delivered_per_second));
            let r = &outcomes[outcomes.len() / 2];
            let base = *base.get_or_insert(r.delivered_per_second);
            println!(
                "| {shards} | {:.0} | {:.2}x | {:.2} | {} ({} of {}) | {} |",
                r.delivered_per_second,
                r.delivered_per_second / base,
                r.redis_cores,
                if r.delivered == r.published {
                    "yes"
                } else {
                    "NO"
                },
                r.delivered,
                r.published,
                r.interruptions,
            );
        }
    }
    if failed {
        eprintln!(
            "FAILED: a published message was not delivered, or a subscription was interrupted"
        );
        std::process::exit(1);
    }
}
