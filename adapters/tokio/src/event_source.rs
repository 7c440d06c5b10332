//! Serving a store as Server-Sent Events.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{MethodRouter, get};
use futures_lite::StreamExt;
use storecast::sse::{self, EventStream, Payload};
use storecast::{Start, Store};

use crate::timer::Ticks;

/// Tornadose's `EventSource` handler: serves a store's subscribers as Server-Sent Events.
///
/// Each message is one event whose `id` is its position (`OFFSET-EPOCH`); a client that
/// reconnects with `Last-Event-ID` (or `?lastEventId=` for clients that cannot set headers)
/// resumes right after it. A subscriber that missed messages gets an explicit `lagged`
/// event, one cut off by a [`Disconnect`](storecast::Overflow::Disconnect) queue a
/// `fell-behind` event before the stream ends; a resume from a position no longer retained
/// gets `lagged` and continues from the oldest message. An id the store cannot place (of
/// another epoch: a server that restarted; ahead; or not an id at all) gets a `reset`
/// event, then what the store holds: never a refusal, which would stop a browser's
/// `EventSource` for good. Idle streams get a keep-alive comment (every 15 s
/// by default), which is also how a dead connection is noticed and its subscriber
/// dropped.
#[derive(Debug, Clone)]
pub struct EventSource<S> {
    store: S,
    keep_alive: Duration,
    retry: Option<Duration>,
}

impl<S> EventSource<S>
where
    S: Store + Clone + 'static,
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

    /// The response to a client whose `Last-Event-ID` is `last_event_id`: the event
    /// stream, led by a `reset` event if the id cannot be placed (see
    /// [`sse::subscribe`]).
    pub fn respond(&self, last_event_id: Option<&str>) -> Response {
        self.stream(sse::subscribe(&self.store, last_event_id))
    }

    /// The event stream for a subscriber starting at `start`.
    pub fn stream_from(&self, start: Start) -> Response {
        self.stream(self.store.subscribe_from(start))
    }

    fn stream<Sub>(&self, subscriber: Sub) -> Response
    where
        Sub: futures_lite::Stream<Item = storecast::Item<S::Value>> + Send + Unpin + 'static,
    {
        let retry = self.retry.map(|r| r.as_millis() as u64);
        let body = EventStream::new(subscriber, Ticks::new(self.keep_alive), retry)
            .map(|chunk| Ok::<_, Infallible>(Bytes::from(chunk)));
        let mut response = Response::new(Body::from_stream(body));
        for (name, value) in sse::HEADERS {
            response
                .headers_mut()
                .insert(name, value.parse().expect("a valid header"));
        }
        response
    }

    /// An axum GET route serving this store (reads `Last-Event-ID` itself).
    pub fn handler(self) -> MethodRouter {
        get(move |headers: HeaderMap, query: Query<LastEventIdQuery>| {
            let source = self.clone();
            async move { source.respond(last_event_id(&headers, query.0.last_event_id.as_deref())) }
        })
    }
}

/// The query parameter a client that cannot set headers resumes with.
#[derive(Debug, Default, serde::Deserialize)]
pub struct LastEventIdQuery {
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

/// The client's `Last-Event-ID`: the header, or else the `lastEventId` query parameter.
pub fn last_event_id<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query)
}
