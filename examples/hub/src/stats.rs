//! `/stats`: the hub's figures as Server-Sent Events, one JSON snapshot a second, for
//! the page's live view of the topics.
//!
//! One task renders a snapshot each second, and only while someone listens; every
//! `/stats` stream sends that same snapshot. However many pages are open, the topics
//! are walked once a second at most, and no client can ask for more.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::HeaderValue;
use axum::response::Response;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::topics::{TopicStats, Topics};

/// How often a snapshot is taken: the fastest `/stats` ever sends.
pub const EVERY: Duration = Duration::from_secs(1);

/// The SSE event type of a snapshot.
const EVENT: &str = "stats";

/// What the `/stats` streams send next.
#[derive(Debug, Clone)]
enum Frame {
    /// No snapshot yet (nobody listened before).
    Waiting,
    /// The newest snapshot, encoded as an SSE event.
    Snapshot(Bytes),
    /// The hub is shutting down: streams end.
    Closed,
}

/// The snapshots every `/stats` stream shares.
#[derive(Debug)]
pub struct Snapshots {
    frames: watch::Sender<Frame>,
}

impl Default for Snapshots {
    fn default() -> Self {
        Snapshots {
            frames: watch::channel(Frame::Waiting).0,
        }
    }
}

impl Snapshots {
    /// Takes a snapshot of `topics` (the `limit` with the most subscribers) every
    /// [`EVERY`] while a stream listens, until [`close`](Self::close).
    pub async fn run(&self, topics: &Topics, metrics: &Metrics, limit: usize) {
        let mut ticks = tokio::time::interval(EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if matches!(*self.frames.borrow(), Frame::Closed) {
                return;
            }
            if self.frames.receiver_count() == 0 {
                // A snapshot from before would make the next listener's first rate wrong.
                self.frames.send_replace(Frame::Waiting);
                continue;
            }
            let json = render(topics.len(), &topics.stats(limit), metrics);
            let mut event = String::new();
            storecast::sse::Event::new(&json)
                .event(EVENT)
                .expect("a fixed event type")
                .encode_into(&mut event);
            self.frames
                .send_replace(Frame::Snapshot(Bytes::from(event)));
        }
    }

    /// Ends every stream (at shutdown).
    pub fn close(&self) {
        self.frames.send_replace(Frame::Closed);
    }

    /// A `/stats` response: the newest snapshot, if any, then each new one.
    pub fn respond(&self) -> Response {
        let mut frames = self.frames.subscribe();
        // The snapshot of up to a second ago is sent at once, so a page shows something.
        frames.mark_changed();
        let body = futures_lite::stream::unfold(frames, |mut frames| async move {
            loop {
                frames.changed().await.ok()?;
                let frame = frames.borrow_and_update().clone();
                match frame {
                    Frame::Waiting => continue,
                    Frame::Snapshot(bytes) => return Some((Ok::<_, Infallible>(bytes), frames)),
                    Frame::Closed => return None,
                }
            }
        });
        let mut response = Response::new(Body::from_stream(body));
        for (name, value) in storecast::sse::HEADERS {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

/// A snapshot as JSON: the hub's totals and each listed topic's figures.
///
/// Topic names are limited to `[A-Za-z0-9._-]`, so they need no escaping.
fn render(all: usize, topics: &[TopicStats], metrics: &Metrics) -> String {
    let time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut out = format!(
        "{{\"time\":{time},\"topics\":{all},\"subscribers\":{},\"messages_in\":{},\"messages_out\":{},\"lagged\":{},\"dropped\":{},\"list\":[",
        metrics.connections.load(Ordering::Relaxed),
        metrics.messages_in.load(Ordering::Relaxed),
        metrics.messages_out.load(Ordering::Relaxed),
        metrics.lagged.load(Ordering::Relaxed),
        metrics.dropped.load(Ordering::Relaxed),
    );
    for (n, topic) in topics.iter().enumerate() {
        let _ = write!(
            out,
            "{}{{\"name\":\"{}\",\"kind\":\"{}\",\"subscribers\":{},\"messages\":{},\"last\":{},\"lagged\":{}}}",
            if n == 0 { "" } else { "," },
            topic.name,
            if topic.latest { "latest" } else { "queue" },
            topic.subscribers,
            topic.messages,
            topic.last_offset,
            topic.lagged,
        );
    }
    out.push_str("]}");
    out
}
