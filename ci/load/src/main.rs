//! Load benchmark for a running hub (see `ci/load.sh`, which starts one):
//!
//! 1. **Idle connections**: opens `--idle` SSE connections, reads the hub's resident memory
//!    before and after, reports memory per connection (the hub's, and the client's own),
//!    then publishes `--last` timestamped messages to them, one a second, and reports how
//!    many connections each reached and how long it took to reach the last of them.
//! 2. **Fan-out**: opens `--connections` SSE connections and publishes `--rate` 64-byte
//!    messages per second for `--seconds`; each message carries its send time, so every
//!    client measures delivery latency. Reports delivered events/s, p50/p99/max latency,
//!    and how many deliveries were missed (reported as `lagged`).
//!
//! On loopback the client's sockets are spread over `--sources` source addresses
//! (127.0.0.2, 127.0.0.3, ...): one address has some 28,000 ephemeral ports. The load
//! generator shares the machine with the hub, so the figures include its cost.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

struct Options {
    hub: String,
    hub_pid: Option<u32>,
    idle: usize,
    /// Messages published to the idle connections, one a second, each timed to the last
    /// client it reaches.
    last: u64,
    /// Source addresses the client's sockets are spread over (127.0.0.2, 127.0.0.3, ...),
    /// each good for some 28,000 ports; 0 for the system's choice.
    sources: u8,
    connections: usize,
    rate: u64,
    seconds: u64,
}

fn options() -> Options {
    let mut o = Options {
        hub: "127.0.0.1:8000".into(),
        hub_pid: None,
        idle: 10_000,
        last: 20,
        sources: 8,
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
            "--last" => o.last = value().parse().expect("a count"),
            "--sources" => o.sources = value().parse().expect("a count up to 250"),
            "--connections" => o.connections = value().parse().expect("a count"),
            "--rate" => o.rate = value().parse().expect("messages per second"),
            "--seconds" => o.seconds = value().parse().expect("seconds"),
            other => panic!(
                "unknown argument {other:?}; usage: storecast-load --hub ADDR --hub-pid PID \
                 [--idle N] [--last N] [--sources N] [--connections N] [--rate MSG_PER_S] \
                 [--seconds S]"
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

/// CPU time a process has used in user space and in the kernel, in milliseconds.
fn cpu_ms(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses: utime and stime are
    // the 12th and 13th of them.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    // SAFETY: `sysconf` only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((
        user as f64 * 1000.0 / per_second,
        system as f64 * 1000.0 / per_second,
    ))
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Where connections go, and where they come from.
#[derive(Clone)]
struct Target {
    hub: SocketAddr,
    /// Source addresses to spread connections over (none: the system's choice).
    sources: Arc<[IpAddr]>,
    next: Arc<AtomicUsize>,
}

impl Target {
    async fn new(hub: &str, sources: u8) -> Target {
        let hub = tokio::net::lookup_host(hub)
            .await
            .expect("the hub's address resolves")
            .next()
            .expect("an address");
        // One source address has some 28,000 ephemeral ports: more connections to one hub
        // need more sources, which the loopback range has.
        let sources: Vec<IpAddr> = if hub.ip().is_loopback() && hub.is_ipv4() {
            (0..sources)
                .map(|n| Ipv4Addr::new(127, 0, 0, 2 + n).into())
                .collect()
        } else {
            Vec::new()
        };
        Target {
            hub,
            sources: sources.into(),
            next: Arc::default(),
        }
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        if self.sources.is_empty() {
            return TcpStream::connect(self.hub).await;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(self.sources[n % self.sources.len()], 0))?;
        socket.connect(self.hub).await
    }
}

/// Opens an SSE connection and waits for the response head; returns the stream and
/// what arrived after the head.
async fn subscribe(target: &Target, topic: &str) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let mut stream = target.connect().await?;
    stream
        .write_all(
            format!(
                "GET /events/{topic} HTTP/1.1\r\nHost: hub\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 512];
    let end = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the headers"));
        }
        head.extend_from_slice(&chunk[..n]);
    };
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&head[..end]).into_owned(),
        ));
    }
    Ok((stream, head.split_off(end)))
}

/// Reads SSE events from `stream`, calling `each` with every message's `data:` bytes,
/// until `target` messages were received or reported missed, the deadline passes, or the
/// stream ends. Returns the number of lag reports and of messages they said were missed.
async fn read_events(
    mut stream: TcpStream,
    leftover: Vec<u8>,
    mut each: impl FnMut(&[u8]),
    target: u64,
    deadline: tokio::time::Instant,
) -> (u64, u64) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = leftover;
    let (mut reports, mut missed, mut received) = (0, 0, 0);
    let mut lag_data_next = false;
    // What came with the head is parsed before anything is read.
    let mut parse_first = !pending.is_empty();
    while received + missed < target {
        let n = if std::mem::take(&mut parse_first) {
            0
        } else {
            match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => break,
            }
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

async fn idle_phase(o: &Options, target: &Target) {
    println!("\n## {} idle SSE connections\n", o.idle);
    let before = o.hub_pid.and_then(rss_kib);
    let client_before = rss_kib(std::process::id());
    let arrivals = Arc::new(Arrivals::new(o.last + 1));
    let mut opened = 0;
    let mut held = Vec::new();
    for chunk in 0..o.idle.div_ceil(500) {
        let batch: Vec<_> = (0..500.min(o.idle - chunk * 500))
            .map(|_| {
                let target = target.clone();
                tokio::spawn(async move { subscribe(&target, "idle").await })
            })
            .collect();
        for task in batch {
            match task.await.unwrap() {
                Ok((stream, leftover)) => {
                    opened += 1;
                    held.push(tokio::spawn(hold(stream, leftover, Arc::clone(&arrivals))));
                }
                Err(e) => eprintln!("connection failed: {e}"),
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = o.hub_pid.and_then(rss_kib);
    let client_after = rss_kib(std::process::id());
    println!("- connections held: {opened} of {}", o.idle);
    let per_connection = |before: u64, after: u64| {
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / opened.max(1) as f64;
        format!(
            "{before} KiB before, {after} KiB with them: {per:.0} bytes per connection ({:.2} KiB)",
            per / 1024.0
        )
    };
    if let (Some(before), Some(after)) = (before, after) {
        println!("- hub resident memory: {}", per_connection(before, after));
    }
    if let (Some(before), Some(after)) = (client_before, client_after) {
        println!(
            "- load client's resident memory: {}",
            per_connection(before, after)
        );
    }
    // Message 0 at once, then one a second: each is timed to the last client it reaches.
    let mut conn = target.connect().await.expect("publisher connects");
    conn.set_nodelay(true).expect("TCP_NODELAY");
    let cpu = |pid| cpu_ms(pid).unwrap_or_default();
    let cpu_before = (
        o.hub_pid.map(cpu).unwrap_or_default(),
        cpu(std::process::id()),
    );
    let started = tokio::time::Instant::now();
    for seq in 0..=o.last {
        tokio::time::sleep_until(started + Duration::from_secs(seq)).await;
        let body = format!("{seq} {:020}", unix_nanos());
        publish(&mut conn, "idle", body.as_bytes())
            .await
            .expect("publish");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while arrivals.reached().min().unwrap_or(0) < opened as u64
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_after = (
        o.hub_pid.map(cpu).unwrap_or_default(),
        cpu(std::process::id()),
    );
    for connection in held {
        connection.abort();
    }
    let reached: Vec<u64> = arrivals.reached().collect();
    println!(
        "- each of {} messages published to them reached at least {} of {opened}",
        reached.len(),
        reached.iter().min().unwrap_or(&0)
    );
    let mut last: Vec<u64> = arrivals.slots[1..]
        .iter()
        .map(|(_, latest)| latest.load(Ordering::Relaxed))
        .collect();
    last.sort_unstable();
    if let Some(&max) = last.last() {
        let at = |q: f64| last[((last.len() as f64 * q).ceil() as usize).clamp(1, last.len()) - 1];
        println!(
            "- publish to the last client, {} messages at 1/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            last.len(),
            at(0.50) as f64 / 1000.0,
            at(0.99) as f64 / 1000.0,
            max as f64 / 1000.0
        );
        // What one message costs the two processes sharing the machine: with C cores, it
        // cannot reach the last client sooner than their CPU time over C.
        let messages = (o.last + 1) as f64;
        let per_message = |before: (f64, f64), after: (f64, f64)| {
            format!(
                "{:.1} ms ({:.1} user, {:.1} kernel)",
                (after.0 + after.1 - before.0 - before.1) / messages,
                (after.0 - before.0) / messages,
                (after.1 - before.1) / messages
            )
        };
        println!(
            "- CPU time per message sent to all of them: hub {}, load client {}",
            per_message(cpu_before.0, cpu_after.0),
            per_message(cpu_before.1, cpu_after.1)
        );
    }
}

/// What idle connections received of the timed messages (`data: SEQ NANOS`): for each,
/// how many clients got it, and the latest arrival after its sending, in microseconds.
struct Arrivals {
    slots: Vec<(AtomicU64, AtomicU64)>,
}

impl Arrivals {
    fn new(messages: u64) -> Self {
        Arrivals {
            slots: (0..messages).map(|_| Default::default()).collect(),
        }
    }

    fn reached(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots
            .iter()
            .map(|(count, _)| count.load(Ordering::Relaxed))
    }

    /// Counts the messages in `bytes`; `carry` holds a line split between reads.
    fn scan(&self, carry: &mut Vec<u8>, bytes: &[u8]) {
        let now = unix_nanos();
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            if carry.is_empty() {
                self.line(&rest[..end], now);
            } else {
                carry.extend_from_slice(&rest[..end]);
                self.line(carry, now);
                carry.clear();
            }
            rest = &rest[end + 1..];
        }
        carry.extend_from_slice(rest);
        if carry.is_empty() {
            // Nothing kept between messages: the client's memory is the hub's to measure.
            *carry = Vec::new();
        }
    }

    fn line(&self, line: &[u8], now: u64) {
        let Some(data) = line.strip_prefix(b"data: ") else {
            return;
        };
        let text = std::str::from_utf8(data).unwrap_or("");
        let Some((seq, sent)) = text.split_once(' ') else {
            return;
        };
        let (Ok(seq), Ok(sent)) = (seq.parse::<usize>(), sent.parse::<u64>()) else {
            return;
        };
        if let Some((count, latest)) = self.slots.get(seq) {
            count.fetch_add(1, Ordering::Relaxed);
            latest.fetch_max(now.saturating_sub(sent) / 1000, Ordering::Relaxed);
        }
    }
}

/// Holds an idle connection, counting what it receives, with no buffer of its own between
/// reads.
async fn hold(stream: TcpStream, leftover: Vec<u8>, arrivals: Arc<Arrivals>) {
    let mut carry = Vec::new();
    arrivals.scan(&mut carry, &leftover);
    drop(leftover);
    while stream.readable().await.is_ok() && drain(&stream, &mut carry, &arrivals) {}
}

/// Reads what `stream` has; false once it ended.
fn drain(stream: &TcpStream, carry: &mut Vec<u8>, arrivals: &Arrivals) -> bool {
    let mut buffer = [0u8; 2048];
    loop {
        match stream.try_read(&mut buffer) {
            Ok(0) => return false,
            Ok(n) => arrivals.scan(carry, &buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

/// Raises the soft limit of open files to the hard limit (each connection is one);
/// returns the limit now in force.
fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through a valid pointer to a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: `setrlimit` reads one `rlimit` through a valid pointer to a local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        limit = raised;
    }
    Some(limit.rlim_cur)
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

async fn fan_out_phase(o: &Options, target: &Target) {
    println!(
        "\n## {} SSE connections, {} messages/s of 64 bytes for {} s\n",
        o.connections, o.rate, o.seconds
    );
    let mut streams = Vec::new();
    for _ in 0..o.connections {
        streams.push(subscribe(target, "load").await.expect("subscribe"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(o.seconds * 3 + 10);
    let wanted = o.rate * o.seconds / 8 * 8;
    let readers: Vec<_> = streams
        .into_iter()
        .map(|(stream, leftover)| {
            tokio::spawn(async move {
                let mut histogram = Histogram::new();
                let mut received = 0u64;
                let (lagged, missed) = read_events(
                    stream,
                    leftover,
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
            let target = target.clone();
            tokio::spawn(async move {
                let mut conn = target.connect().await.expect("publisher connects");
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
    let open_files = raise_open_files_limit().unwrap_or(0);
    if open_files < (o.idle.max(o.connections) + 100) as u64 {
        eprintln!(
            "warning: this process may open {open_files} files, fewer than the connections \
             asked for (raise the hard limit, ulimit -Hn)"
        );
    }
    let target = Target::new(&o.hub, o.sources).await;
    if o.idle > 0 {
        idle_phase(&o, &target).await;
    }
    if o.connections > 0 {
        fan_out_phase(&o, &target).await;
    }
}
