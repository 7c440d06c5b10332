//! SSE subscriptions: each event one HTTP/1.1 chunk, a message's chunk shared by every
//! subscriber.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use futures_lite::StreamExt;
use storecast::sse::{self, encode_item};
use storecast::{Item, RecvError, Start, Store};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};

use super::{BATCH, Served, admitted, client_left, get, params, write_all};
use crate::routes::{self, Hub};
use crate::topics::{self, HubMessage, TopicSubscriber, Wire};

/// Serves `request`, read from `read`, on `stream`: the topic is had (or the routes
/// answer), then the stream runs until it ends.
pub(super) async fn serve(
    hub: &Hub,
    stream: &TcpStream,
    read: Vec<u8>,
    request: Subscription,
    write_timeout: Duration,
) -> Served {
    // Errors (a name over the topic cap, Redis down) are answered by the routes.
    let topic = match super::topic(hub, &request.topic).await {
        Some(topic) => topic,
        None => return Served::Elsewhere(read),
    };
    drop(read);
    let (start, news) = match request.last_event_id.as_deref() {
        // A reconnecting client resumes where it was, whatever it first asked for.
        None if request.oldest => (Start::Oldest, None),
        resume => sse::resume_from(resume),
    };
    let subscriber = topic.subscribe_from(start);
    let mut first = response_head(request.allow_origin.as_ref()).into_bytes();
    // Nothing of the request is kept for the stream's life.
    drop((topic, request));
    if let Some(retry) = hub.config.retry_ms {
        first.extend_from_slice(&chunk(format!("retry: {retry}\n\n").as_bytes()));
    }
    let mut pending = vec![Bytes::from(first)];
    if let Some(news) = news {
        pending.push(frame(&Err(news)));
    }
    if Box::pin(write_all(stream, &mut pending, write_timeout, hub))
        .await
        .is_ok()
    {
        stream_events(hub, stream, subscriber, pending, write_timeout).await;
    }
    Served::Done
}

/// An SSE subscription this path serves: everything the route would check, checked.
pub(super) struct Subscription {
    topic: String,
    last_event_id: Option<String>,
    oldest: bool,
    allow_origin: Option<HeaderValue>,
}

/// The subscription `read` asks for, if it is one that the `events` route would answer
/// with a stream (as far as can be told before its topic is had); `None` for anything
/// else, which the routes then answer.
pub(super) fn subscription(hub: &Hub, read: &[u8]) -> Option<Subscription> {
    let request = get(read)?;
    let topic = request.path.strip_prefix("/events/")?;
    // A protocol switch is not a subscription.
    if !topics::valid_name(topic) || request.headers.contains_key(header::UPGRADE) {
        return None;
    }
    let params = params(request.query)?;
    let oldest = match params.from.as_deref() {
        None | Some("now") => false,
        Some("oldest") => true,
        Some(_) => return None,
    };
    if !admitted(hub, &request.headers, &params) {
        return None;
    }
    let headers = &request.headers;
    Some(Subscription {
        topic: topic.to_owned(),
        last_event_id: storecast_tokio::last_event_id(headers, params.last_event_id.as_deref())
            .map(str::to_owned),
        oldest,
        allow_origin: routes::allowed_origin(&hub.config.cors_origins, headers.get(header::ORIGIN)),
    })
}

/// The head of a stream's response: the `events` route's headers, with the CORS headers
/// its middleware adds.
fn response_head(allow_origin: Option<&HeaderValue>) -> String {
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for (name, value) in sse::HEADERS {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("vary: origin\r\n");
    if let Some(origin) = allow_origin.and_then(|origin| origin.to_str().ok()) {
        head.push_str(&format!("access-control-allow-origin: {origin}\r\n"));
    }
    head.push_str("transfer-encoding: chunked\r\n\r\n");
    head
}

/// `bytes` as one HTTP/1.1 chunk.
fn chunk(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
    out
}

/// The keep-alive comment, as a chunk.
const KEEP_ALIVE: &[u8] = b"3\r\n:\n\n\r\n";

/// The last chunk: the stream has ended.
const END: &[u8] = b"0\r\n\r\n";

/// The chunk for what a subscriber received: a message's is made once and shared (see
/// [`HubMessage::encoded`]); news (`lagged`, `reset`...) is made for its subscriber.
fn frame(item: &Item<HubMessage>) -> Bytes {
    let encode = || {
        let event = match encode_item(item) {
            Ok(event) => event,
            // A type with a line break (only Redis could hold one): said, never mangled.
            Err(e) => sse::comment(&match item {
                Ok(message) => format!("message {} not sent: {e}", message.position()),
                Err(_) => format!("news not sent: {e}"),
            }),
        };
        Bytes::from(chunk(event.as_bytes()))
    };
    match item {
        Ok(message) => message.encoded(Wire::Sse, message.position(), encode),
        Err(_) => encode(),
    }
}

/// Sends `subscriber`'s events until it ends, the client leaves, or the socket accepts
/// nothing for `write_timeout`; a keep-alive comment goes out on every tick that finds
/// the stream idle since the one before.
async fn stream_events(
    hub: &Hub,
    stream: &TcpStream,
    mut subscriber: TopicSubscriber,
    mut pending: Vec<Bytes>,
    write_timeout: Duration,
) {
    let every = hub.config.keep_alive();
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut busy = false;
    loop {
        tokio::select! {
            item = subscriber.next() => {
                let mut ended = !gather(item, &mut pending);
                // Whatever else is ready goes in the same write.
                while !ended && pending.len() < BATCH {
                    match futures_lite::future::poll_once(subscriber.next()).await {
                        Some(item) => ended = !gather(item, &mut pending),
                        None => break,
                    }
                }
                if ended {
                    pending.push(Bytes::from_static(END));
                }
                busy = true;
                if write_all(stream, &mut pending, write_timeout, hub).await.is_err() || ended {
                    return;
                }
            }
            _ = ticks.tick() => {
                if !std::mem::take(&mut busy) {
                    pending.push(Bytes::from_static(KEEP_ALIVE));
                    if write_all(stream, &mut pending, write_timeout, hub).await.is_err() {
                        return;
                    }
                }
            }
            ready = stream.readable() => {
                if ready.is_err() || client_left(stream) {
                    return;
                }
            }
        }
    }
}

/// Adds the chunk for `item` to `pending`; false once the stream ends (the store closed,
/// or the subscriber fell a whole queue behind, whose news is the last chunk).
fn gather(item: Option<Item<HubMessage>>, pending: &mut Vec<Bytes>) -> bool {
    match item {
        None | Some(Err(RecvError::Closed)) => false,
        Some(item) => {
            pending.push(frame(&item));
            !matches!(item, Err(RecvError::FellBehind { .. }))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clap::Parser;

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::stats::Snapshots;
    use crate::topics::Topics;

    fn hub(flags: &[&str]) -> Hub {
        let config =
            Config::parse_from(std::iter::once("storecast-hub").chain(flags.iter().copied()));
        let metrics = Arc::new(Metrics::default());
        Hub {
            topics: Topics::new(config.clone(), Arc::clone(&metrics), None),
            config,
            metrics,
            stats: Snapshots::default(),
        }
    }

    fn served(hub: &Hub, head: &str) -> bool {
        subscription(hub, head.replace('\n', "\r\n").as_bytes()).is_some()
    }

    #[test]
    fn only_plain_subscriptions_the_route_would_stream_are_served_directly() {
        let open = hub(&[]);
        assert!(served(&open, "GET /events/demo HTTP/1.1\nHost: hub\n\n"));
        assert!(served(
            &open,
            "GET /events/demo?from=oldest&lastEventId=1-x HTTP/1.1\n\n"
        ));
        for other in [
            "HEAD /events/demo HTTP/1.1\n\n",
            "GET /events/demo HTTP/1.0\n\n",
            "GET /events/bad%20name HTTP/1.1\n\n",
            "GET /events/demo/more HTTP/1.1\n\n",
            "GET /events/demo?from=yesterday HTTP/1.1\n\n",
            "GET /events/demo HTTP/1.1\nUpgrade: websocket\n\n",
            "GET /events/demo HTTP/1.1\nContent-Length: 3\n\nabc",
            "GET /ws/demo HTTP/1.1\n\n",
            "POST /publish/demo HTTP/1.1\n\n",
        ] {
            assert!(!served(&open, other), "{other:?} was served directly");
        }
        let guarded = hub(&["--subscribe-token", "s3cret"]);
        assert!(served(
            &guarded,
            "GET /events/demo HTTP/1.1\nAuthorization: bearer s3cret\n\n"
        ));
        assert!(served(
            &guarded,
            "GET /events/demo?token=s3cret HTTP/1.1\n\n"
        ));
        assert!(!served(&guarded, "GET /events/demo HTTP/1.1\n\n"));
        assert!(!served(
            &guarded,
            "GET /events/demo?token=s3cret HTTP/1.1\nAuthorization: Basic eDp5\n\n"
        ));
    }

    #[test]
    fn the_allowed_origin_is_named_and_caches_are_told_answers_vary_by_origin() {
        let cors = hub(&["--cors-origin", "https://good.example"]);
        let origin = |head: &str| subscription(&cors, head.replace('\n', "\r\n").as_bytes());
        let good = origin("GET /events/x HTTP/1.1\nOrigin: https://good.example\n\n").unwrap();
        let head = response_head(good.allow_origin.as_ref());
        assert!(head.contains("access-control-allow-origin: https://good.example\r\n"));
        assert!(head.contains("vary: origin\r\n"));
        let other = origin("GET /events/x HTTP/1.1\nOrigin: https://else.example\n\n").unwrap();
        assert_eq!(other.allow_origin, None);
    }
}
