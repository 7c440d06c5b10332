//! Load benchmark for a running hub (see `ci/load.sh`, which starts one):
//!
//! 1. **Idle connections**: opens `--idle` SSE connections, reads the hub's resident memory
//!    before and after, reports memory per connection, then checks every connection is
//!    really held by publishing one message and counting who receives it.
//! 2. **Fan-out**: opens `--connections` SSE connections and publishes `--rate` 64-byte
//!    messages per second for `--seconds`; each message carries its send time, so every
//!    client measures delivery latency. Reports delivered events/s, p50/p99/max latency,
//!    and how many deliveries were missed (reported as `lagged`).
//!
//! The load generator shares the machine with the hub, so the figures include its cost.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

struct Options {
    hub: String,
    hub_pid: Option<u32>,
    idle: usize,
    connections: usize,
    rate: u64,
    seconds: u64,
}

fn options() -> Options {
    let mut o = Options {
        hub: "127.0.0.1:8000".into(),
        hub_pid: None,
        idle: 10_000,
        connections: 1_000,
        rate: 1_000,
        seconds: 10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--hub" => o.hub = value(),
            "--hub-pid" => o.hub_pid = Some(value().parse().expect("a pid")),
            "--idle" => o.idle = value().parse().expect("a count"),
            "--connections" => o.connections = value().parse().expect("a count"),
            "--rate" => o.rate = value().parse().expect("messages per second"),
            "--seconds" => o.seconds = value().parse().expect("seconds"),
            other => panic!(
                "unknown argument {other:?}; usage: storecast-load --hub ADDR --hub-pid PID \
                 [--idle N] [--connections N] [--rate MSG_PER_S] [--seconds S]"
            ),
        }
    }
    o
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Opens an SSE connection and waits for the response headers.
async fn subscribe(hub: &str, topic: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(hub).await?;
    stream
        .write_all(
            format!(
                "GET /events/{topic} HTTP/1.1\r\nHost: hub\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other("closed before the headers"));
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    Ok(stream)
}

/// Reads SSE events from `stream`, calling `each` with every message's `data:` bytes,
/// until `target` messages were received or reported missed, the deadline passes, or the
/// stream ends. Returns the number of lag reports and of messages they said were missed.
async fn read_events(
    mut stream: TcpStream,
    mut each: impl FnMut(&[u8]),
    target: u64,
    deadline: tokio::time::Instant,
) -> (u64, u64) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let (mut reports, mut missed, mut received) = (0, 0, 0);
    let mut lag_data_next = false;
    while received + missed < target {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        pending.extend_from_slice(&buffer[..n]);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + end];
            if line == b"event: lagged" {
                reports += 1;
                lag_data_next = true;
            } else if let Some(data) = line.strip_prefix(b"data: ") {
                if std::mem::take(&mut lag_data_next) {
                    // {"missed":N}
                    let digits: String = data
                        .iter()
                        .filter(|b| b.is_ascii_digit())
                        .map(|&b| b as char)
                        .collect();
                    missed += digits.parse::<u64>().unwrap_or(0);
                } else {
                    each(data);
                    received += 1;
                }
            }
            start += end + 1;
        }
        pending.drain(..start);
    }
    (reports, missed)
}

/// Publishes over one keep-alive connection; returns the connection for the next one.
async fn publish(conn: &mut TcpStream, topic: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: hub\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // One write: a request split over two small writes waits out Nagle and delayed ACKs.
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    conn.write_all(&request).await?;
    // Read the whole response (small, with Content-Length).
    let mut response = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other(
                "the hub closed the publishing connection",
            ));
        }
        response.extend_from_slice(&chunk[..n]);
        let Some(head_end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&response[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if response.len() >= head_end + 4 + length {
            if !head.starts_with("http/1.1 200") {
                return Err(std::io::Error::other(head));
            }
            return Ok(());
        }
    }
}

async fn idle_phase(o: &Options) {
    println!("\n## {} idle SSE connections\n", o.idle);
    let before = o.hub_pid.and_then(rss_kib);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut opened = 0;
    let mut held = Vec::new();
    for chunk in 0..o.idle.div_ceil(500) {
        let batch: Vec<_> = (0..500.min(o.idle - chunk * 500))
            .map(|_| {
                let hub = o.hub.clone();
                tokio::spawn(async move { subscribe(&hub, "idle").await })
            })
            .collect();
        for task in batch {
            match task.await.unwrap() {
                Ok(stream) => {
                    opened += 1;
                    let tx = tx.clone();
                    held.push(tokio::spawn(async move {
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
                        let mut told = false;
                        read_events(
                            stream,
                            |_| {
                                if !std::mem::replace(&mut told, true) {
                                    let _ = tx.send(());
                                }
                            },
                            u64::MAX,
                            deadline,
                        )
                        .await;
                    }));
                }
                Err(e) => eprintln!("connection failed: {e}"),
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = o.hub_pid.and_then(rss_kib);
    println!("- connections held: {opened} of {}", o.idle);
    if let (Some(before), Some(after)) = (before, after) {
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / opened.max(1) as f64;
        println!(
            "- hub resident memory: {before} KiB before, {after} KiB with them: {per:.0} bytes per connection ({:.2} KiB)",
            per / 1024.0
        );
    }
    // Every held connection receives a message published now.
    let mut conn = TcpStream::connect(&o.hub)
        .await
        .expect("publisher connects");
    publish(&mut conn, "idle", b"ping").await.expect("publish");
    drop(tx);
    let mut delivered = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while delivered < opened {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(())) => delivered += 1,
            _ => break,
        }
    }
    for connection in held {
        connection.abort();
    }
    println!("- a message published to them reached {delivered} of {opened}");
}

/// Latency histogram with 1 µs resolution up to 1 s, and an overflow count.
struct Histogram {
    micros: Vec<u64>,
    over: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            micros: vec![0; 1_000_000],
            over: 0,
            max: 0,
        }
    }
    fn record(&mut self, micros: u64) {
        self.max = self.max.max(micros);
        match self.micros.get_mut(micros as usize) {
            Some(count) => *count += 1,
            None => self.over += 1,
        }
    }
    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.micros.iter_mut().zip(&other.micros) {
            *a += b;
        }
        self.over += other.over;
        self.max = self.max.max(other.max);
    }
    fn count(&self) -> u64 {
        self.micros.iter().sum::<u64>() + self.over
    }
    fn quantile(&self, q: f64) -> Option<u64> {
        let target = (self.count() as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (micros, count) in self.micros.iter().enumerate() {
            seen += count;
            if seen >= target && target > 0 {
                return Some(micros as u64);
            }
        }
        None // beyond a second
    }
}

async fn fan_out_phase(o: &Options) {
    println!(
        "\n## {} SSE connections, {} messages/s of 64 bytes for {} s\n",
        o.connections, o.rate, o.seconds
    );
    let mut streams = Vec::new();
    for _ in 0..o.connections {
        streams.push(subscribe(&o.hub, "load").await.expect("subscribe"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(o.seconds * 3 + 10);
    let wanted = o.rate * o.seconds / 8 * 8;
    let readers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            tokio::spawn(async move {
                let mut histogram = Histogram::new();
                let mut received = 0u64;
                let (lagged, missed) = read_events(
                    stream,
                    |data| {
                        let sent: u64 = std::str::from_utf8(&data[..20.min(data.len())])
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .expect("a timestamped message");
                        histogram.record(unix_nanos().saturating_sub(sent) / 1000);
                        received += 1;
                    },
                    wanted,
                    deadline,
                )
                .await;
                (histogram, received, lagged, missed)
            })
        })
        .collect();

    // Several publishing connections, so that one request's round trip does not cap the
    // rate; together they publish `rate` per second.
    const PUBLISHERS: u64 = 8;
    let per_publisher = o.rate * o.seconds / PUBLISHERS;
    let total = per_publisher * PUBLISHERS;
    let period = Duration::from_nanos(1_000_000_000 * PUBLISHERS / o.rate);
    let started = tokio::time::Instant::now();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let hub = o.hub.clone();
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(&hub).await.expect("publisher connects");
                conn.set_nodelay(true).expect("TCP_NODELAY");
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for _ in 0..per_publisher {
                    ticks.tick().await;
                    let mut body = format!("{:020}", unix_nanos()).into_bytes();
                    body.resize(64, b'x');
                    publish(&mut conn, "load", &body).await.expect("publish");
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let publishing = started.elapsed();

    let mut histogram = Histogram::new();
    let (mut received, mut lagged, mut missed) = (0u64, 0u64, 0u64);
    for reader in readers {
        let (h, r, l, m) = reader.await.unwrap();
        histogram.merge(&h);
        received += r;
        lagged += l;
        missed += m;
    }
    let expected = total * o.connections as u64;
    let show = |q: Option<u64>| {
        q.map_or("over 1 s".to_string(), |us| {
            format!("{:.2} ms", us as f64 / 1000.0)
        })
    };
    println!(
        "- published {total} messages in {:.2} s ({:.0}/s)",
        publishing.as_secs_f64(),
        total as f64 / publishing.as_secs_f64()
    );
    println!(
        "- delivered {received} of {expected} ({:.0} events/s over the publishing time); {lagged} lag reports for {missed} missed",
        received as f64 / publishing.as_secs_f64()
    );
    println!(
        "- latency, publish to client: p50 {}, p99 {}, max {:.2} ms",
        show(histogram.quantile(0.50)),
        show(histogram.quantile(0.99)),
        histogram.max as f64 / 1000.0
    );
}

#[tokio::main]
async fn main() {
    let o = options();
    println!("# storecast hub load benchmark against {}", o.hub);
    if o.idle > 0 {
        idle_phase(&o).await;
    }
    if o.connections > 0 {
        fan_out_phase(&o).await;
    }
}
