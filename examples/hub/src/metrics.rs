//! Counters, rendered in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::topics::TopicStats;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Open SSE and WebSocket subscribers.
    pub connections: AtomicUsize,
    /// Messages accepted by `POST /publish`.
    pub messages_in: AtomicU64,
    /// Messages delivered to subscribers.
    pub messages_out: AtomicU64,
    /// Lag reports sent (`lagged`, `fell-behind` events).
    pub lagged: AtomicU64,
    /// Messages subscribers missed, as counted in `lagged` reports.
    pub dropped: AtomicU64,
    /// Subscribers told `reset`: their position could not be placed (a client of an
    /// earlier run of the hub, say).
    pub resets: AtomicU64,
    /// Requests refused (4xx and 5xx answers).
    pub rejected: AtomicU64,
    /// Bytes of message bodies the topics retain (what `--max-retained-bytes` bounds).
    pub retained_bytes: AtomicU64,
    /// Publishes refused because they would take retained memory past the budget.
    pub over_budget: AtomicU64,
    /// Open TCP connections (subscribers, publishers, idle keep-alives).
    pub sockets: AtomicUsize,
    /// Connections refused at once because the hub had as many as it can hold.
    pub refused_sockets: AtomicU64,
    /// Connections closed because a request head did not arrive in time (or an idle
    /// keep-alive connection sent nothing).
    pub head_timeouts: AtomicU64,
    /// Requests whose body did not arrive in time (408).
    pub body_timeouts: AtomicU64,
    /// Connections dropped because the peer accepted nothing for the write timeout (a
    /// subscriber that stopped reading).
    pub write_timeouts: AtomicU64,
}

impl Metrics {
    /// The Prometheus text exposition of these counters and each topic's figures.
    /// `topics` are the figures of some topics (those with the most subscribers) out of
    /// `all`.
    pub fn render(&self, all: usize, topics: &[TopicStats]) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        gauge(
            "storecast_connections",
            "gauge",
            "Open SSE and WebSocket subscribers.",
            self.connections.load(Ordering::Relaxed) as u64,
        );
        gauge(
            "storecast_messages_in_total",
            "counter",
            "Messages published.",
            self.messages_in.load(Ordering::Relaxed),
        );
        gauge(
            "storecast_messages_out_total",
            "counter",
            "Messages delivered to subscribers.",
            self.messages_out.load(Ordering::Relaxed),
        );
        gauge(
            "storecast_lagged_total",
            "counter",
            "Lag reports sent to subscribers that fell behind.",
            self.lagged.load(Ordering::Relaxed),
        );
        gauge(
            "storecast_dropped_total",
            "counter",
            "Messages subscribers missed because they fell behind.",
            self.dropped.load(Ordering::Relaxed),
        );
        gauge(
            "storecast_resets_total",
            "counter",
            "Subscribers told their last id could not be placed (another epoch, ahead, or unreadable).",
            self.resets.load(Ordering::Relaxed),
        );
        gauge(
            "storecast_retained_bytes",
            "gauge",
            "Bytes of message bodies the topics retain (bounded by --max-retained-bytes).",
            self.retained_bytes.load(Ordering::Relaxed),
        );
        gauge(
            "storecast_over_budget_total",
            "counter",
            "Publishes refused (507) because they would take retained memory past the budget.",
            self.over_budget.load(Ordering::Relaxed),
        );
        gauge(
            "storecast_sockets",
            "gauge",
            "Open TCP connections.",
            self.sockets.load(Ordering::Relaxed) as u64,
        );
        for (name, help, counter) in [
            (
                "storecast_refused_sockets_total",
                "Connections refused at once: the hub held as many as it can.",
                &self.refused_sockets,
            ),
            (
                "storecast_head_timeouts_total",
                "Connections closed: no complete request head in time (slow or idle clients).",
                &self.head_timeouts,
            ),
            (
                "storecast_body_timeouts_total",
                "Requests answered 408: the body did not arrive in time.",
                &self.body_timeouts,
            ),
            (
                "storecast_write_timeouts_total",
                "Connections dropped: the peer accepted nothing for the write timeout.",
                &self.write_timeouts,
            ),
        ] {
            gauge(name, "counter", help, counter.load(Ordering::Relaxed));
        }
        gauge(
            "storecast_topics",
            "gauge",
            "Topics the hub holds (per-topic series below cover those with the most subscribers).",
            all as u64,
        );
        gauge(
            "storecast_rejected_total",
            "counter",
            "Requests refused with a 4xx or 5xx status.",
            self.rejected.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP storecast_topic_subscribers Subscribers per topic.\n# TYPE storecast_topic_subscribers gauge"
        );
        // Topic names are limited to [A-Za-z0-9._-], safe inside a label.
        for topic in topics {
            let _ = writeln!(
                out,
                "storecast_topic_subscribers{{topic=\"{}\"}} {}",
                topic.name, topic.subscribers
            );
        }
        let on_redis: Vec<_> = topics
            .iter()
            .filter_map(|t| Some((&t.name, t.redis?)))
            .collect();
        if !on_redis.is_empty() {
            let _ = writeln!(
                out,
                "# HELP storecast_topic_redis_connected Whether the topic's Redis connection is up (1) or reconnecting (0).\n# TYPE storecast_topic_redis_connected gauge"
            );
            for (name, (connected, _)) in &on_redis {
                let _ = writeln!(
                    out,
                    "storecast_topic_redis_connected{{topic=\"{name}\"}} {}",
                    u8::from(*connected)
                );
            }
            let _ = writeln!(
                out,
                "# HELP storecast_topic_redis_interruptions_total Times a latest-value topic's Redis subscription was lost (its subscribers were told).\n# TYPE storecast_topic_redis_interruptions_total counter"
            );
            for (name, (_, interruptions)) in &on_redis {
                let _ = writeln!(
                    out,
                    "storecast_topic_redis_interruptions_total{{topic=\"{name}\"}} {interruptions}"
                );
            }
        }
        out
    }
}
