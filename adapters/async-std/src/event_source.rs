//! Serving a store as Server-Sent Events.

use std::time::{Duration, Instant};

use hyper::{Request, Response};
use storecast::sse::{self, EventStream, Payload};
use storecast::{Start, Store};

use crate::http::{Body, streamed};

/// Tornadose's `EventSource` handler on async-std: serves a store's subscribers as
/// Server-Sent Events, exactly as `storecast_tokio::EventSource` does (same framing from
/// the core crate): positions as ids, `Last-Event-ID` (or `?lastEventId=`) resumes,
/// `lagged` / `fell-behind` / `reset` events, keep-alive comments (every 15 s by
/// default).
#[derive(Debug, Clone)]
pub struct EventSource<S> {
    store: S,
    keep_alive: Duration,
    retry: Option<Duration>,
}

impl<S> EventSource<S>
where
    S: Store + Clone + 'static,
    S::Subscriber: Sync,
    S::Value: Payload,
{
    /// Serves `store` with a keep-alive every 15 s and no `retry` advice.
    pub fn new(store: S) -> Self {
        EventSource {
            store,
            keep_alive: Duration::from_millis(sse::DEFAULT_KEEP_ALIVE_MS),
            retry: None,
        }
    }

    /// Sets how long an idle stream waits before a keep-alive comment.
    pub fn keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = every;
        self
    }

    /// Tells clients how long to wait before reconnecting (the `retry` field).
    pub fn retry(mut self, after: Duration) -> Self {
        self.retry = Some(after);
        self
    }

    /// The response to `request`: the event stream from its `Last-Event-ID`, led by a
    /// `reset` event if the id cannot be placed (see [`sse::subscribe`]).
    pub fn respond<B>(&self, request: &Request<B>) -> Response<Body> {
        self.stream(sse::subscribe(
            &self.store,
            last_event_id(request).as_deref(),
        ))
    }

    /// The event stream for a subscriber starting at `start`.
    pub fn stream_from(&self, start: Start) -> Response<Body> {
        self.stream(self.store.subscribe_from(start))
    }

    fn stream<Sub>(&self, subscriber: Sub) -> Response<Body>
    where
        Sub: futures_lite::Stream<Item = storecast::Item<S::Value>> + Send + Sync + Unpin + 'static,
    {
        let ticks = async_io::Timer::interval_at(Instant::now() + self.keep_alive, self.keep_alive);
        let retry = self.retry.map(|r| r.as_millis() as u64);
        let mut response = Response::new(streamed(EventStream::new(subscriber, ticks, retry)));
        for (name, value) in sse::HEADERS {
            response
                .headers_mut()
                .insert(name, value.parse().expect("a valid header"));
        }
        response
    }
}

/// The client's `Last-Event-ID`: the header, or else the `lastEventId` query parameter.
pub fn last_event_id<B>(request: &Request<B>) -> Option<String> {
    if let Some(id) = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
    {
        return Some(id.to_owned());
    }
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("lastEventId=").map(str::to_owned))
}
