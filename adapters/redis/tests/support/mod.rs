//! A real `redis-server` for the tests: started on a free port in a directory of its own,
//! stopped (and the directory removed) when dropped.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    /// Whether it keeps an append-only file (synced on every write).
    persistent: bool,
    /// The password clients must give (`requirepass`), if any.
    password: Option<String>,
    /// More arguments for `redis-server` (a cluster node's, a replica's).
    extra: Vec<String>,
    /// A configuration file given first (a sentinel's).
    config: Option<PathBuf>,
    child: Option<Child>,
}

const INSTALL: &str = "redis-server was not found: install it with `apt-get install -y redis-server` \
     (ci/test.sh does this on a fresh machine)";

impl RedisServer {
    /// Starts a server with an append-only file synced on every write, so that a restart
    /// (even after `kill -9`) keeps every stream entry.
    pub fn start() -> RedisServer {
        RedisServer::start_with(true, None)
    }

    /// Starts a server that keeps nothing on disk (for benchmarks).
    pub fn start_in_memory() -> RedisServer {
        RedisServer::start_with(false, None)
    }

    /// Starts a server that wants `password` from every client.
    pub fn start_with_password(password: &str) -> RedisServer {
        RedisServer::start_with(true, Some(password.to_owned()))
    }

    /// Starts a server (keeping nothing on disk) with more arguments for `redis-server`.
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        let mut server = RedisServer::prepare(false, None);
        server.extra = args.iter().map(|a| a.to_string()).collect();
        server.launch();
        server
    }

    fn start_with(persistent: bool, password: Option<String>) -> RedisServer {
        let mut server = RedisServer::prepare(persistent, password);
        server.launch();
        server
    }

    fn prepare(persistent: bool, password: Option<String>) -> RedisServer {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!(
            "storecast-redis-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        RedisServer {
            port,
            dir,
            persistent,
            password,
            extra: Vec::new(),
            config: None,
            child: None,
        }
    }

    /// The server's own directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        // A configuration file (a sentinel's, which it rewrites) comes first.
        command
            .args(&self.config)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir);
        if self.config.is_none() {
            command
                .args(["--save", ""])
                .args(if self.persistent {
                    ["--appendonly", "yes", "--appendfsync", "always"]
                } else {
                    ["--appendonly", "no", "--appendfsync", "no"]
                })
                .args(
                    self.password
                        .iter()
                        .flat_map(|password| ["--requirepass", password.as_str()]),
                );
        }
        let child = command
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL} ({e})"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 16];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read(&mut reply).is_ok_and(|n| {
                reply[..n].starts_with(b"+PONG")
                    || reply[..n].starts_with(b"-NOAUTH")
                    || reply[..n].starts_with(b"-CLUSTERDOWN")
            })
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        match &self.password {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
        }
    }

    /// Runs `redis-cli` against this server, as an external program would, and returns
    /// what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(
                self.password
                    .iter()
                    .flat_map(|password| ["--no-auth-warning", "-a", password.as_str()]),
            )
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("redis-cli: {e}; install it with `apt-get install -y redis-tools`")
            });
        assert!(
            output.status.success(),
            "redis-cli {args:?} failed: {output:?}"
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Kills the server at once (no save), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `condition` every 10 ms until it holds, failing after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A Redis Cluster of real `redis-server` processes on free ports, each in a directory of
/// its own: `primaries` primaries (each with all its slots in one range) with `replicas`
/// replicas each. A node is called failed after 1 s without an answer.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// Nodes stopped with SIGSTOP (which answer nothing).
    stopped: std::sync::Mutex<Vec<usize>>,
}

impl RedisCluster {
    /// Three or more primaries are made with `redis-cli --cluster create`, as an operator
    /// would; fewer (which that command refuses) by assigning the slots by hand.
    pub fn start(primaries: usize, replicas: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
            .map(|_| {
                RedisServer::start_with_args(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-replica-validity-factor",
                    "0",
                    "--enable-debug-command",
                    "yes",
                ])
            })
            .collect();
        let cluster = RedisCluster {
            nodes,
            stopped: std::sync::Mutex::new(Vec::new()),
        };
        if primaries >= 3 {
            let addresses: Vec<String> = cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port()))
                .collect();
            let output = Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&addresses)
                .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
                .output()
                .expect("redis-cli");
            assert!(
                output.status.success(),
                "redis-cli --cluster create: {output:?}"
            );
        } else {
            assert_eq!(replicas, 0, "replicas only with three primaries or more");
            let per = 16384 / primaries;
            for (i, node) in cluster.nodes.iter().enumerate() {
                let first = i * per;
                let last = if i + 1 == primaries {
                    16383
                } else {
                    first + per - 1
                };
                node.cli(&[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string(),
                ]);
                if i > 0 {
                    cluster.nodes[0].cli(&[
                        "CLUSTER",
                        "MEET",
                        "127.0.0.1",
                        &node.port().to_string(),
                    ]);
                }
            }
        }
        cluster.wait_until_ok(primaries * (1 + replicas), Duration::from_secs(30));
        cluster
    }

    /// Waits until every running node says the cluster is ok and knows `known` nodes, and
    /// every replica is in sync with its primary.
    pub fn wait_until_ok(&self, known: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self.running().all(|node| {
                let info = node.cli(&["CLUSTER", "INFO"]);
                let role = node.cli(&["ROLE"]);
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{known}"))
                    && (!role.starts_with("slave") || role.contains("connected"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn running(&self) -> impl Iterator<Item = &RedisServer> {
        let stopped = self.stopped.lock().unwrap().clone();
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(i, n)| n.pid().is_some() && !stopped.contains(i))
            .map(|(_, n)| n)
    }

    /// Stops the node `node` with SIGSTOP: its connections stay open and it answers
    /// nothing, as when its host vanishes.
    pub fn stop(&self, node: usize) {
        self.signal(node, "-STOP");
        self.stopped.lock().unwrap().push(node);
    }

    /// Lets a stopped node go on (SIGCONT).
    pub fn resume(&self, node: usize) {
        self.signal(node, "-CONT");
        self.stopped.lock().unwrap().retain(|&n| n != node);
    }

    fn signal(&self, node: usize, signal: &str) {
        let pid = self.nodes[node].pid().expect("a running node").to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .running()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Runs `redis-cli -c` (following redirections) against a running node.
    pub fn cli(&self, args: &[&str]) -> String {
        let node = self.running().next().expect("a running node");
        let output = Command::new("redis-cli")
            .args(["-c", "-p", &node.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The index of the node that serves `key`'s slot as primary now.
    pub fn primary_of(&self, key: &str) -> usize {
        self.try_primary_of(key)
            .unwrap_or_else(|| panic!("no primary serves {key}"))
    }

    /// The index of the node that serves `key`'s slot as primary now, if any does.
    pub fn try_primary_of(&self, key: &str) -> Option<usize> {
        let slot: u16 = self
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot");
        let nodes = self.cli(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let covers = fields[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                    _ => false,
                }
            });
            if covers {
                let port: u16 = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("a node address");
                return self.nodes.iter().position(|n| n.port() == port);
            }
        }
        None
    }

    /// The index of a running replica of the node `primary`.
    pub fn replica_of(&self, primary: usize) -> usize {
        let port = self.nodes[primary].port().to_string();
        (0..self.nodes.len())
            .find(|&n| {
                n != primary
                    && self.nodes[n].pid().is_some()
                    && !self.stopped.lock().unwrap().contains(&n)
                    && self.nodes[n].cli(&["ROLE"]).contains(&port)
            })
            .expect("a replica of the primary")
    }

    /// Waits until the replica of `primary` has every write its primary has.
    pub fn wait_replicated(&self, primary: usize) {
        let offset = |node: usize, field: &str| -> Option<u64> {
            self.nodes[node]
                .cli(&["INFO", "replication"])
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|v| v.trim().parse().ok())
        };
        let replica = self.replica_of(primary);
        let deadline = Instant::now() + Duration::from_secs(15);
        while offset(primary, "master_repl_offset:") != offset(replica, "slave_repl_offset:") {
            assert!(Instant::now() < deadline, "the replica never caught up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The indexes of the primaries now.
    pub fn primaries(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| {
                n.pid().is_some()
                    && !self.stopped.lock().unwrap().contains(i)
                    && n.cli(&["ROLE"]).starts_with("master")
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// A primary, one replica and three sentinels watching the primary as `storecast`
/// (down after 1 s without an answer; a quorum of 2).
pub struct Sentinels {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
}

/// The service name the sentinels watch.
pub const SERVICE: &str = "storecast";

impl Sentinels {
    pub fn start() -> Sentinels {
        let primary = RedisServer::start_with_args(&[]);
        let replica = RedisServer::start_with_args(&[
            "--replicaof",
            "127.0.0.1",
            &primary.port().to_string(),
        ]);
        let sentinels = (0..3)
            .map(|_| {
                let mut sentinel = RedisServer::prepare(false, None);
                let config = sentinel.dir().join("sentinel.conf");
                std::fs::write(
                    &config,
                    format!(
                        "sentinel monitor {SERVICE} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {SERVICE} 1000\n\
                         sentinel failover-timeout {SERVICE} 5000\n",
                        primary.port()
                    ),
                )
                .expect("sentinel.conf");
                // `redis-server <config> --sentinel` is `redis-sentinel <config>`.
                sentinel.config = Some(config);
                sentinel.extra = vec!["--sentinel".into()];
                sentinel.launch();
                sentinel
            })
            .collect();
        let setup = Sentinels {
            primary,
            replica,
            sentinels,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = setup.sentinels.iter().all(|s| {
                let replicas = s.cli(&["SENTINEL", "REPLICAS", SERVICE]);
                let sentinels = s.cli(&["SENTINEL", "SENTINELS", SERVICE]);
                replicas.contains(&setup.replica.port().to_string())
                    && sentinels.matches("127.0.0.1").count() >= 2
            });
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not find each other"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        setup
    }

    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+sentinel://{}/{SERVICE}", sentinels.join(","))
    }

    /// The port the sentinels call the primary's now.
    pub fn primary_port(&self) -> u16 {
        let answer = self.sentinels[0].cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE]);
        answer
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .expect("a primary's port")
    }
}
