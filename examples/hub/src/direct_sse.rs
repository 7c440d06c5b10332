//! SSE subscriptions served directly on the socket, at a few hundred bytes an idle
//! connection instead of hyper's 16 KiB of buffers.
//!
//! The accept loop reads each connection's first request head with `httparse` into a
//! small buffer. A plain, successful `GET /events/{topic}` is answered here: the response
//! head, then each event as one HTTP/1.1 chunk, written straight from the store. Once the
//! head is read the connection holds no read buffer (a client's end of stream is noticed
//! with a few bytes on the stack) and no write buffer: a message's chunk is encoded once,
//! by the first subscriber that sends it, and shared by every other subscriber's write
//! (see [`HubMessage::encoded`]).
//!
//! Everything else, and every request this path would answer with anything but a stream
//! (a refused token, a bad topic name, the subscriber cap, `HEAD`, HTTP/1.0, an upgrade,
//! a body...), goes to hyper with the bytes already read replayed ([`Replay`]), so that
//! the routes answer it exactly as they always did.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use futures_lite::StreamExt;
use storecast::sse::{self, encode_item};
use storecast::{Item, RecvError, Start, Store};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::routes::{self, Hub, Params};
use crate::topics::{self, HubMessage, TopicSubscriber};

/// The largest request head read here; a longer one goes to hyper (which reads the rest).
const MAX_HEAD: usize = 8 * 1024;

/// The most headers a request read here may have; more go to hyper.
const MAX_HEADERS: usize = 48;

/// The most ready events gathered into one write.
const BATCH: usize = 32;

/// What became of a connection's first request.
pub enum Served {
    /// Served here (the stream has ended), or closed: a head timeout, or the client left.
    Done,
    /// For hyper, with the bytes read so far.
    Elsewhere(Vec<u8>),
}

/// Reads the first request head of `stream` and serves it if it is an SSE subscription
/// this path can answer.
pub async fn serve(
    hub: &Hub,
    stream: &TcpStream,
    head_timeout: Duration,
    write_timeout: Duration,
    stop: &mut watch::Receiver<()>,
) -> Served {
    let read = match Box::pin(read_head(stream, head_timeout, stop)).await {
        Head::Complete(read) => read,
        Head::Other(read) => return Served::Elsewhere(read),
        Head::TimedOut => {
            hub.metrics.head_timeouts.fetch_add(1, Ordering::Relaxed);
            return Served::Done;
        }
        Head::Closed => return Served::Done,
    };
    let Some(request) = subscription(hub, &read) else {
        return Served::Elsewhere(read);
    };
    // Errors (a name over the topic cap, Redis down) are answered by the routes. Boxed,
    // as every step that is over once the stream starts: the connection's task is as
    // large as the largest of its steps for as long as it lives.
    let Ok(topic) = Box::pin(hub.topics.get(&request.topic)).await else {
        return Served::Elsewhere(read);
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

/// A request head read, or why there is none.
enum Head {
    /// A complete head (and whatever followed it).
    Complete(Vec<u8>),
    /// Not a request this path reads to the end (too long, too many headers, not HTTP):
    /// hyper reads on and answers.
    Other(Vec<u8>),
    TimedOut,
    /// The client left, or the hub is shutting down.
    Closed,
}

async fn read_head(stream: &TcpStream, limit: Duration, stop: &mut watch::Receiver<()>) -> Head {
    let deadline = Instant::now() + limit;
    let mut read = Vec::with_capacity(1024);
    loop {
        tokio::select! {
            ready = tokio::time::timeout_at(deadline, stream.readable()) => match ready {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Head::Closed,
                Err(_) => return Head::TimedOut,
            },
            _ = stop.changed() => return Head::Closed,
        }
        if read.len() == read.capacity() {
            read.reserve(read.len());
        }
        match stream.try_read_buf(&mut read) {
            Ok(0) => return Head::Closed,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Head::Closed,
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::Request::new(&mut headers).parse(&read) {
            Ok(httparse::Status::Complete(_)) => return Head::Complete(read),
            Ok(httparse::Status::Partial) if read.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) | Err(_) => return Head::Other(read),
        }
    }
}

/// An SSE subscription this path serves: everything the route would check, checked.
struct Subscription {
    topic: String,
    last_event_id: Option<String>,
    oldest: bool,
    allow_origin: Option<HeaderValue>,
}

/// The subscription `read` asks for, if it is one that the `events` route would answer
/// with a stream (as far as can be told before its topic is had); `None` for anything
/// else, which the routes then answer.
fn subscription(hub: &Hub, read: &[u8]) -> Option<Subscription> {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut parsed);
    let httparse::Status::Complete(_) = request.parse(read).ok()? else {
        return None;
    };
    if request.method != Some("GET") || request.version != Some(1) {
        return None;
    }
    let (path, query) = match request.path?.split_once('?') {
        Some((path, query)) => (path, query),
        None => (request.path?, ""),
    };
    let topic = path.strip_prefix("/events/")?;
    if !topics::valid_name(topic) {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for parsed in request.headers.iter() {
        let name = HeaderName::from_bytes(parsed.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(parsed.value).ok()?;
        headers.append(name, value);
    }
    // A body, or a protocol switch: not a plain subscription.
    let unusual = [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::EXPECT,
    ];
    if unusual.iter().any(|name| headers.contains_key(name)) {
        return None;
    }
    let params: Params = serde_urlencoded::from_str(query).ok()?;
    let oldest = match params.from.as_deref() {
        None | Some("now") => false,
        Some("oldest") => true,
        Some(_) => return None,
    };
    if !routes::authorized(&hub.config.subscribe_token, &headers, &params) {
        return None;
    }
    if hub.metrics.connections.load(Ordering::Relaxed) >= hub.config.max_connections {
        return None;
    }
    Some(Subscription {
        topic: topic.to_owned(),
        last_event_id: storecast_tokio::last_event_id(&headers, params.last_event_id.as_deref())
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
        Ok(message) => message.encoded(message.position(), encode),
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

/// Whether the client closed its side (or the socket failed); anything it sends after
/// its request is read and dropped.
fn client_left(stream: &TcpStream) -> bool {
    let mut scratch = [0u8; 64];
    match stream.try_read(&mut scratch) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// Writes every byte of `pending` (emptying it), failing with `TimedOut` when the socket
/// accepts nothing for `limit`.
async fn write_all(
    stream: &TcpStream,
    pending: &mut Vec<Bytes>,
    limit: Duration,
    hub: &Hub,
) -> io::Result<()> {
    let mut first = 0;
    while first < pending.len() {
        match try_write(stream, &pending[first..]) {
            Ok(mut written) => {
                while written > 0 {
                    let bytes = &mut pending[first];
                    let taken = written.min(bytes.len());
                    let _ = bytes.split_to(taken);
                    written -= taken;
                    if bytes.is_empty() {
                        first += 1;
                    }
                }
                while first < pending.len() && pending[first].is_empty() {
                    first += 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Boxed: a timer inline would stay in every connection's memory.
                let writable = Box::pin(tokio::time::timeout(limit, stream.writable()));
                if writable.await.is_err() {
                    hub.metrics.write_timeouts.fetch_add(1, Ordering::Relaxed);
                    pending.clear();
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer accepted nothing within the write timeout",
                    ));
                }
            }
            Err(e) => {
                pending.clear();
                return Err(e);
            }
        }
    }
    pending.clear();
    Ok(())
}

/// One vectored write of (the first [`BATCH`] of) `pending`.
fn try_write(stream: &TcpStream, pending: &[Bytes]) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); BATCH];
    let count = pending.len().min(BATCH);
    for (slice, bytes) in slices.iter_mut().zip(&pending[..count]) {
        *slice = IoSlice::new(bytes);
    }
    stream.try_write_vectored(&slices[..count])
}

/// A connection for hyper whose first bytes are those already read from it.
pub struct Replay<T> {
    read: Vec<u8>,
    /// How much of `read` was handed on.
    at: usize,
    inner: T,
}

impl<T> Replay<T> {
    /// `inner`, read from after `read`.
    pub fn new(read: Vec<u8>, inner: T) -> Self {
        Replay { read, at: 0, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Replay<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.at);
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                // Replayed: not kept for the connection's life.
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Replay<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clap::Parser;
    use tokio::io::AsyncReadExt;

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

    #[tokio::test]
    async fn hyper_reads_the_bytes_already_read_then_the_socket() {
        let mut replay = Replay::new(b"GET / HTTP/1.1\r\n".to_vec(), &b"Host: hub\r\n\r\n"[..]);
        let mut all = String::new();
        replay.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1\r\nHost: hub\r\n\r\n");
    }
}
