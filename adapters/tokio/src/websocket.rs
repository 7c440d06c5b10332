//! Serving a store over WebSocket.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_lite::StreamExt;
use storecast::sse::Payload;
use storecast::{RecvError, Store, sse, websocket};
use tokio::time::{Instant, MissedTickBehavior};

/// Tornadose's `WebSocketSubscriber`: serves a store's subscribers over WebSocket, one
/// JSON text frame per message: `{"data": ..., "id": ...}` (see
/// [`storecast::websocket`] for every frame).
///
/// The server pings every 15 s by default and drops a peer it has not heard from (not
/// even a pong) for three intervals, so dead connections are deregistered. When the store
/// closes, the socket is closed normally; a subscriber cut off by a
/// [`Disconnect`](storecast::Overflow::Disconnect) queue gets its `fell-behind` frame,
/// then a close with code 1008 (policy).
///
/// Nothing a client sends is read but control frames, so client messages are limited to
/// 4 KiB by default ([`max_message_bytes`](WebSocketSubscriber::max_message_bytes)): a
/// larger one (or a fragmented one growing past it) closes the socket with 1009, a
/// protocol error with 1002, and a client's close is answered.
#[derive(Debug, Clone)]
pub struct WebSocketSubscriber<S> {
    store: S,
    ping: Duration,
    max_message_bytes: usize,
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

    /// Accepts the upgrade and streams the store to the socket, resuming after
    /// `last_event_id` (the client's last `"id"`, if it has one). An id the store cannot
    /// place gets a `reset` frame first, then what the store holds (see
    /// [`sse::subscribe`]).
    pub fn upgrade(self, upgrade: WebSocketUpgrade, last_event_id: Option<&str>) -> Response {
        let subscriber = sse::subscribe(&self.store, last_event_id);
        upgrade
            .max_message_size(self.max_message_bytes)
            .max_frame_size(self.max_message_bytes)
            .on_upgrade(move |socket| self.serve(socket, subscriber))
    }

    async fn serve(self, mut socket: WebSocket, mut subscriber: sse::Resumed<S::Subscriber>) {
        let mut ping = tokio::time::interval_at(Instant::now() + self.ping, self.ping);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                item = subscriber.next() => {
                    let Some(item) = item else {
                        let _ = socket.send(close(1000, "the store is closed")).await;
                        break;
                    };
                    let cut_off = matches!(item, Err(RecvError::FellBehind { .. }));
                    let frame = websocket::encode_item(&item);
                    if socket.send(Message::Text(frame.into())).await.is_err() {
                        break;
                    }
                    if cut_off {
                        let _ = socket.send(close(1008, "fell behind")).await;
                        break;
                    }
                }
                received = socket.recv() => match received {
                    None => break,
                    Some(Ok(Message::Close(_))) => {
                        // The reply is queued by the protocol; it leaves as the socket is
                        // read to its end.
                        finish(&mut socket).await;
                        break;
                    }
                    Some(Err(e)) => {
                        let (code, reason) = if too_big(e) {
                            (1009, "message too big")
                        } else {
                            (1002, "protocol error")
                        };
                        let _ = socket.send(close(code, reason)).await;
                        finish(&mut socket).await;
                        break;
                    }
                    // Anything the client sends (pongs included) shows it is alive.
                    Some(Ok(_)) => heard = Instant::now(),
                },
                _ = ping.tick() => {
                    if heard.elapsed() > self.ping * 3 {
                        tracing::debug!("dropping a WebSocket peer silent for {:?}", heard.elapsed());
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
async fn finish(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

/// Whether a receive failed because the client sent more than the limit.
fn too_big(error: axum::Error) -> bool {
    matches!(
        error.into_inner().downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
