//! Serving a store over WebSocket.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use futures_lite::future::or;
use futures_lite::{AsyncRead, AsyncWrite, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::rt::ReadBuf;
use hyper::{Request, Response, StatusCode};
use storecast::sse::{self, Payload};
use storecast::{RecvError, Store, websocket};

use crate::http::{Body, text};

/// Tornadose's `WebSocketSubscriber` on async-std: one JSON text frame per message,
/// `{"data": ..., "id": ...}` (see [`storecast::websocket`]), pings every 15 s by default,
/// a peer silent for three intervals dropped; the socket is closed normally when the
/// store closes, and with code 1008 after a `fell-behind` frame. As in the Tokio
/// adapter, client messages are limited to 4 KiB by default (1009 beyond), protocol errors
/// close with 1002, and a client's close is answered.
#[derive(Debug, Clone)]
pub struct WebSocketSubscriber<S> {
    store: S,
    ping: Duration,
    max_message_bytes: usize,
}

enum Turn<T> {
    Item(Option<storecast::Item<T>>),
    Received(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
    Ping,
}

impl<S> WebSocketSubscriber<S>
where
    S: Store + Clone + 'static,
    S::Value: Payload,
{
    /// Serves `store`, pinging every 15 s.
    pub fn new(store: S) -> Self {
        WebSocketSubscriber {
            store,
            ping: Duration::from_secs(15),
            max_message_bytes: 4 * 1024,
        }
    }

    /// Sets the largest message (or frame) a client may send.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Sets how often the server pings.
    pub fn ping_every(mut self, every: Duration) -> Self {
        self.ping = every;
        self
    }

    /// Answers an upgrade request (`101 Switching Protocols`), then streams the store on
    /// the upgraded connection, resuming after `last_event_id` (the client's last `"id"`,
    /// if it has one; an id the store cannot place gets a `reset` frame first, see
    /// [`sse::subscribe`]); a request that is not a WebSocket handshake gets `400 Bad
    /// Request`.
    pub fn upgrade<B>(
        self,
        mut request: Request<B>,
        last_event_id: Option<&str>,
    ) -> Response<Body> {
        let headers = request.headers();
        let wants_upgrade = headers
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let Some(key) = headers.get(SEC_WEBSOCKET_KEY).filter(|_| wants_upgrade) else {
            return text(StatusCode::BAD_REQUEST, "expected a WebSocket handshake");
        };
        let accept = derive_accept_key(key.as_bytes());
        let subscriber = sse::subscribe(&self.store, last_event_id);
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(self.max_message_bytes);
        config.max_frame_size = Some(self.max_message_bytes);
        let upgrading = hyper::upgrade::on(&mut request);
        async_std::task::spawn(async move {
            match upgrading.await {
                Ok(upgraded) => {
                    let socket = WebSocketStream::from_raw_socket(
                        HyperIo(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    self.serve(socket, subscriber).await;
                }
                Err(e) => tracing::debug!("WebSocket upgrade failed: {e}"),
            }
        });
        let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(UPGRADE, "websocket".parse().expect("a header"));
        headers.insert(CONNECTION, "Upgrade".parse().expect("a header"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept.parse().expect("a header"));
        response
    }

    async fn serve<Io>(
        self,
        mut socket: WebSocketStream<Io>,
        mut subscriber: sse::Resumed<S::Subscriber>,
    ) where
        Io: AsyncRead + AsyncWrite + Unpin,
    {
        let mut ping = async_io::Timer::interval_at(Instant::now() + self.ping, self.ping);
        let mut heard = Instant::now();
        loop {
            let turn = or(
                async { Turn::Item(subscriber.next().await) },
                or(async { Turn::Received(socket.next().await) }, async {
                    ping.next().await;
                    Turn::Ping
                }),
            )
            .await;
            match turn {
                Turn::Item(None) => {
                    let _ = socket
                        .close(Some(close(CloseCode::Normal, "the store is closed")))
                        .await;
                    break;
                }
                Turn::Item(Some(item)) => {
                    let cut_off = matches!(item, Err(RecvError::FellBehind { .. }));
                    let frame = websocket::encode_item(&item);
                    if socket.send(Message::text(frame)).await.is_err() {
                        break;
                    }
                    if cut_off {
                        let _ = socket
                            .close(Some(close(CloseCode::Policy, "fell behind")))
                            .await;
                        break;
                    }
                }
                Turn::Received(None) => break,
                Turn::Received(Some(Ok(Message::Close(_)))) => {
                    // The reply is queued by the protocol; it leaves as the socket is
                    // read to its end.
                    finish(&mut socket).await;
                    break;
                }
                Turn::Received(Some(Err(e))) => {
                    let (code, reason) = match e {
                        async_tungstenite::tungstenite::Error::Capacity(_) => {
                            (CloseCode::Size, "message too big")
                        }
                        _ => (CloseCode::Protocol, "protocol error"),
                    };
                    let _ = socket.close(Some(close(code, reason))).await;
                    finish(&mut socket).await;
                    break;
                }
                Turn::Received(Some(Ok(_))) => heard = Instant::now(),
                Turn::Ping => {
                    if heard.elapsed() > self.ping * 3 {
                        tracing::debug!(
                            "dropping a WebSocket peer silent for {:?}",
                            heard.elapsed()
                        );
                        break;
                    }
                    if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// Reads a closing socket to its end (a second at most), so that the close handshake's
/// frames leave.
async fn finish<Io: AsyncRead + AsyncWrite + Unpin>(socket: &mut WebSocketStream<Io>) {
    let _ = futures_lite::future::or(
        async { while let Some(Ok(_)) = socket.next().await {} },
        async {
            async_io::Timer::after(Duration::from_secs(1)).await;
        },
    )
    .await;
}

fn close(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// A hyper connection (the upgraded socket) seen as `futures-io`, for async-tungstenite.
struct HyperIo<T>(T);

impl<T: hyper::rt::Read + Unpin> AsyncRead for HyperIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut read = ReadBuf::new(buf);
        match Pin::new(&mut self.get_mut().0).poll_read(cx, read.unfilled()) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: hyper::rt::Write + Unpin> AsyncWrite for HyperIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
