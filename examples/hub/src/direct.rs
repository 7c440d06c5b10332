//! Subscriptions served directly on the socket, at about 2.5 KiB an idle connection instead
//! of hyper's 16 KiB of buffers.
//!
//! The accept loop reads each connection's first request head with `httparse` into a
//! small buffer. A plain, successful SSE subscription (`GET /events/{topic}`, see [`sse`])
//! or WebSocket subscription (`GET /ws/{topic}`, see [`websocket`]) is answered here: the
//! response head, then each message written straight from the store. Once the head is read
//! the connection holds no read buffer (what a client sends is read a few bytes at a time
//! on the stack) and no write buffer: a message's frame is encoded once, by the first
//! subscriber that sends it, and shared by every other subscriber's write (see
//! [`HubMessage::encoded`](crate::topics::HubMessage::encoded)).
//!
//! Everything else, and every request this path would answer with anything but a stream
//! (a refused token, a bad topic name, the subscriber cap, `HEAD`, HTTP/1.0, a body, a
//! foreign origin...), goes to hyper with the bytes already read replayed ([`Replay`]),
//! so that the routes answer it exactly as they always did.

mod sse;
mod websocket;

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::routes::{self, Hub, Params};

/// The largest request head read here; a longer one goes to hyper (which reads the rest).
const MAX_HEAD: usize = 8 * 1024;

/// The most headers a request read here may have; more go to hyper.
const MAX_HEADERS: usize = 48;

/// The most ready frames gathered into one write.
const BATCH: usize = 32;

/// What became of a connection's first request.
pub enum Served {
    /// Served here (the stream has ended), or closed: a head timeout, or the client left.
    Done,
    /// For hyper, with the bytes read so far.
    Elsewhere(Vec<u8>),
}

/// Reads the first request head of `stream` and serves it if it is a subscription this
/// path can answer.
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
    // Each boxed, so that an SSE connection holds no room for a WebSocket's state, nor
    // the other way round.
    if let Some(request) = sse::subscription(hub, &read) {
        Box::pin(sse::serve(hub, stream, read, request, write_timeout)).await
    } else if let Some(request) = websocket::subscription(hub, &read) {
        Box::pin(websocket::serve(hub, stream, read, request, write_timeout)).await
    } else {
        Served::Elsewhere(read)
    }
}

/// The topic `name`, opened if need be; `None` if it cannot be (the routes answer why).
/// Opening is boxed, as every step that is over once a stream starts: a connection's
/// task is as large as the largest of its steps for as long as it lives.
async fn topic(hub: &Hub, name: &str) -> Option<crate::topics::Topic> {
    match hub.topics.existing(name) {
        Some(topic) => Some(topic),
        None => Box::pin(hub.topics.get(name)).await.ok(),
    }
}

/// A `GET` over HTTP/1.1 without a body, as this path reads it.
struct Get<'a> {
    path: &'a str,
    query: &'a str,
    headers: HeaderMap,
}

/// `read` as a [`Get`]; `None` for any other request, or one it cannot read.
fn get(read: &[u8]) -> Option<Get<'_>> {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut parsed);
    let httparse::Status::Complete(_) = request.parse(read).ok()? else {
        return None;
    };
    if request.method != Some("GET") || request.version != Some(1) {
        return None;
    }
    let target = request.path?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for parsed in request.headers.iter() {
        let name = HeaderName::from_bytes(parsed.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(parsed.value).ok()?;
        headers.append(name, value);
    }
    let body = [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::EXPECT,
    ];
    if body.iter().any(|name| headers.contains_key(name)) {
        return None;
    }
    Some(Get {
        path,
        query,
        headers,
    })
}

/// The query parameters, as the routes read them; `None` where they would refuse them.
fn params(query: &str) -> Option<Params> {
    serde_urlencoded::from_str(query).ok()
}

/// Whether a subscription passes the checks of the routes' `admit`: its token, and the
/// subscriber cap.
fn admitted(hub: &Hub, headers: &HeaderMap, params: &Params) -> bool {
    routes::authorized(&hub.config.subscribe_token, headers, params)
        && hub.metrics.connections.load(Ordering::Relaxed) < hub.config.max_connections
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

/// Whether the client closed its side (or the socket failed); anything it sends after
/// its request is read and dropped.
pub(crate) fn client_left(stream: &TcpStream) -> bool {
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
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn hyper_reads_the_bytes_already_read_then_the_socket() {
        let mut replay = Replay::new(b"GET / HTTP/1.1\r\n".to_vec(), &b"Host: hub\r\n\r\n"[..]);
        let mut all = String::new();
        replay.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1\r\nHost: hub\r\n\r\n");
    }
}
