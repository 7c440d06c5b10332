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
#[derive(Debug, Clone)]
pub struct WebSocketSubscriber<S> {
    store: S,
    ping: Duration,
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
        }
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
        upgrade.on_upgrade(move |socket| self.serve(socket, subscriber))
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
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
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

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
