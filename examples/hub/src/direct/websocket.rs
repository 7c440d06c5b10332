//! WebSocket subscriptions: the handshake, then one text frame per message (a message's
//! frame shared by every subscriber), a ping on every keep-alive tick, and what a client
//! sends read a frame at a time, as `storecast_tokio::WebSocketSubscriber` does: control
//! frames answered, messages dropped unread (past 4 KiB: closed with 1009), protocol
//! errors closed with 1002, a client's close answered.

use std::io::{self, Cursor};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use futures_lite::StreamExt;
use storecast::{Item, RecvError, Store, sse, websocket};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::{BATCH, Served, admitted, get, params, write_all};
use crate::routes::{self, Hub};
use crate::topics::{self, HubMessage, TopicSubscriber, Wire};

/// The largest message (or frame) a client may send, as the route allows.
const MAX_MESSAGE: u64 = 4 * 1024;

/// A WebSocket subscription this path serves: everything the route would check, checked.
pub(super) struct Subscription {
    topic: String,
    last_event_id: Option<String>,
    /// The handshake's `Sec-WebSocket-Accept`.
    accept: String,
    allow_origin: Option<HeaderValue>,
}

/// The subscription `read` asks for, if it is an upgrade that the `ws` route would accept
/// (as far as can be told before its topic is had); `None` for anything else, which the
/// routes then answer.
pub(super) fn subscription(hub: &Hub, read: &[u8]) -> Option<Subscription> {
    let request = get(read)?;
    let topic = request.path.strip_prefix("/ws/")?;
    let headers = &request.headers;
    // What axum's `WebSocketUpgrade` requires; a subprotocol is left to it too.
    let upgrade = has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13")
        && !headers.contains_key(header::SEC_WEBSOCKET_PROTOCOL);
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    if !topics::valid_name(topic) || !upgrade {
        return None;
    }
    // A page of another origin may not open one: the routes answer 403.
    let origin = headers.get(header::ORIGIN);
    let allow_origin = routes::allowed_origin(&hub.config.cors_origins, origin);
    if origin.is_some() && allow_origin.is_none() && !routes::same_origin(headers, origin) {
        return None;
    }
    let params = params(request.query)?;
    if !admitted(hub, headers, &params) {
        return None;
    }
    Some(Subscription {
        topic: topic.to_owned(),
        last_event_id: params.last_event_id,
        accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        allow_origin,
    })
}

/// Whether a header's comma-separated values include `token` (in any case).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// Serves `request`, read from `read`, on `stream`: the topic is had (or the routes
/// answer), then the socket is upgraded and runs until it ends.
pub(super) async fn serve(
    hub: &Hub,
    stream: &TcpStream,
    read: Vec<u8>,
    request: Subscription,
    write_timeout: Duration,
) -> Served {
    // Errors are answered by the routes, as in SSE.
    let topic = match super::topic(hub, &request.topic).await {
        Some(topic) => topic,
        None => return Served::Elsewhere(read),
    };
    drop(read);
    let (start, news) = sse::resume_from(request.last_event_id.as_deref());
    let subscriber = topic.subscribe_from(start);
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-accept: {}\r\nvary: origin\r\n",
        request.accept
    );
    if let Some(origin) = request.allow_origin.as_ref().and_then(|o| o.to_str().ok()) {
        head.push_str(&format!("access-control-allow-origin: {origin}\r\n"));
    }
    head.push_str("\r\n");
    // Nothing of the request is kept for the socket's life.
    drop((topic, request));
    let mut pending = vec![Bytes::from(head)];
    if let Some(news) = news {
        pending.push(frame(&Err(news)));
    }
    if Box::pin(write_all(stream, &mut pending, write_timeout, hub))
        .await
        .is_ok()
    {
        run(hub, stream, subscriber, pending, write_timeout).await;
    }
    Served::Done
}

/// A frame from the server: final, unmasked.
fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(header.len(payload.len() as u64) + payload.len());
    header
        .format(payload.len() as u64, &mut out)
        .expect("a Vec takes every byte");
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A close frame with `code` and `reason`.
fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    server_frame(OpCode::Control(Control::Close), &payload)
}

/// The frame for what a subscriber received: a message's is made once and shared; news
/// (`lagged`, `reset`...) is made for its subscriber.
fn frame(item: &Item<HubMessage>) -> Bytes {
    let encode = || {
        server_frame(
            OpCode::Data(Data::Text),
            websocket::encode_item(item).as_bytes(),
        )
    };
    match item {
        Ok(message) => message.encoded(Wire::WebSocket, message.position(), encode),
        Err(_) => encode(),
    }
}

/// Sends `subscriber`'s frames and answers the client until the store closes, the client
/// leaves or errs, the socket accepts nothing for `write_timeout`, or the client is
/// silent (not even a pong) for three pings.
async fn run(
    hub: &Hub,
    stream: &TcpStream,
    mut subscriber: TopicSubscriber,
    mut pending: Vec<Bytes>,
    write_timeout: Duration,
) {
    let every = hub.config.keep_alive();
    let mut ping = tokio::time::interval_at(Instant::now() + every, every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let mut reader = Reader::default();
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
                if write_all(stream, &mut pending, write_timeout, hub).await.is_err() || ended {
                    return;
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > every * 3 {
                    tracing::debug!("dropping a WebSocket peer silent for {:?}", heard.elapsed());
                    return;
                }
                pending.push(server_frame(OpCode::Control(Control::Ping), &[]));
                if write_all(stream, &mut pending, write_timeout, hub).await.is_err() {
                    return;
                }
            }
            ready = stream.readable() => {
                if ready.is_err() {
                    return;
                }
                let received = reader.receive(stream, &mut pending);
                if !matches!(received, Received::Nothing) {
                    heard = Instant::now();
                }
                if let Received::Failed(code, reason) = received {
                    pending.push(close(code, reason));
                }
                let closing = matches!(received, Received::Closed | Received::Failed(..));
                if write_all(stream, &mut pending, write_timeout, hub).await.is_err()
                    || matches!(received, Received::Gone)
                {
                    return;
                }
                if closing {
                    finish(stream).await;
                    return;
                }
            }
        }
    }
}

/// Adds the frame for `item` to `pending`; false once the socket is to close (the store
/// closed, or the subscriber fell a whole queue behind), its close frame added.
fn gather(item: Option<Item<HubMessage>>, pending: &mut Vec<Bytes>) -> bool {
    match item {
        None | Some(Err(RecvError::Closed)) => {
            pending.push(close(1000, "the store is closed"));
            false
        }
        Some(item) => {
            pending.push(frame(&item));
            if matches!(item, Err(RecvError::FellBehind { .. })) {
                pending.push(close(1008, "fell behind"));
                return false;
            }
            true
        }
    }
}

/// Reads a closing socket to its end (a second at most), so that the close handshake's
/// frames leave before it is dropped.
async fn finish(stream: &TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while stream.readable().await.is_ok() && !super::client_left(stream) {}
    })
    .await;
}

/// What a read of the client's frames found.
#[derive(Debug, PartialEq)]
enum Received {
    /// Nothing yet.
    Nothing,
    /// Frames (their answers, for pings, added to the pending writes).
    Heard,
    /// The client's close (answered).
    Closed,
    /// A frame to close for: the code and the reason.
    Failed(u16, &'static str),
    /// The client left.
    Gone,
}

/// The client's frames between reads, kept only as long as one is split.
#[derive(Debug, Default)]
struct Reader {
    /// The start of a frame (a header, or a control frame) split between reads.
    partial: Vec<u8>,
    /// Payload bytes of a message frame still to come, dropped unread.
    skip: u64,
    /// The size so far of a fragmented message; `None` outside one.
    message: Option<u64>,
    /// Where in the replies of this read the pong waiting to be sent is: a newer ping
    /// replaces it (as tungstenite keeps only the latest), so a flood of pings queues one.
    pong: Option<usize>,
}

/// The most a connection reads from its client in one go before it lets the runtime run
/// others (and writes what it owes).
const READ_AT_ONCE: usize = 16 * 1024;

impl Reader {
    /// Reads what the client sent, answering pings and closes into `replies`.
    fn receive(&mut self, stream: &TcpStream, replies: &mut Vec<Bytes>) -> Received {
        let mut buffer = [0u8; 512];
        let mut received = Received::Nothing;
        let mut read = 0;
        self.pong = None;
        loop {
            if read >= READ_AT_ONCE {
                // The rest is read on the next wake-up (the socket stays readable).
                return received;
            }
            match stream.try_read(&mut buffer) {
                Ok(0) => return Received::Gone,
                Ok(n) => {
                    read += n;
                    match self.feed(&buffer[..n], replies) {
                        Received::Nothing => {}
                        Received::Heard => received = Received::Heard,
                        end => return end,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return received,
                Err(_) => return Received::Gone,
            }
        }
    }

    /// Takes in `bytes`, the next the client sent.
    fn feed(&mut self, bytes: &[u8], replies: &mut Vec<Bytes>) -> Received {
        let joined;
        let mut data = if self.partial.is_empty() {
            bytes
        } else {
            self.partial.extend_from_slice(bytes);
            joined = std::mem::take(&mut self.partial);
            &joined[..]
        };
        let mut received = Received::Nothing;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64);
                self.skip -= n;
                data = &data[n as usize..];
            }
            if data.is_empty() {
                return received;
            }
            let mut cursor = Cursor::new(data);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => {
                    self.partial = data.to_vec();
                    return received;
                }
                Err(_) => return Received::Failed(1002, "protocol error"),
            };
            let start = cursor.position() as usize;
            // Client frames are masked and use no extension.
            if header.rsv1 || header.rsv2 || header.rsv3 || header.mask.is_none() {
                return Received::Failed(1002, "protocol error");
            }
            received = Received::Heard;
            match header.opcode {
                OpCode::Control(control) => {
                    if !header.is_final || length > 125 {
                        return Received::Failed(1002, "protocol error");
                    }
                    let end = start + length as usize;
                    if data.len() < end {
                        self.partial = data.to_vec();
                        return received;
                    }
                    let mut payload = data[start..end].to_vec();
                    let mask = header.mask.unwrap_or_default();
                    for (i, byte) in payload.iter_mut().enumerate() {
                        *byte ^= mask[i % 4];
                    }
                    match control {
                        Control::Ping => {
                            let pong = server_frame(OpCode::Control(Control::Pong), &payload);
                            match self.pong {
                                Some(at) if at < replies.len() => replies[at] = pong,
                                _ => {
                                    self.pong = Some(replies.len());
                                    replies.push(pong);
                                }
                            }
                        }
                        Control::Pong => {}
                        Control::Close => {
                            // A close is empty, or a valid code and a reason (RFC 6455 7.4).
                            let valid = match payload.get(..2) {
                                None => payload.is_empty(),
                                Some(&[high, low]) => matches!(
                                    u16::from_be_bytes([high, low]),
                                    1000..=1003 | 1007..=1014 | 3000..=4999
                                ),
                                Some(_) => false,
                            };
                            if !valid {
                                return Received::Failed(1002, "protocol error");
                            }
                            // The client's code echoed, as tungstenite answers.
                            let code = payload.get(..2).unwrap_or_default();
                            replies.push(server_frame(OpCode::Control(Control::Close), code));
                            return Received::Closed;
                        }
                        Control::Reserved(_) => return Received::Failed(1002, "protocol error"),
                    }
                    data = &data[end..];
                }
                OpCode::Data(kind) => {
                    let continues = matches!(kind, Data::Continue);
                    if matches!(kind, Data::Reserved(_)) || continues != self.message.is_some() {
                        return Received::Failed(1002, "protocol error");
                    }
                    let size = self.message.unwrap_or(0).saturating_add(length);
                    if length > MAX_MESSAGE || size > MAX_MESSAGE {
                        return Received::Failed(1009, "message too big");
                    }
                    self.message = (!header.is_final).then_some(size);
                    self.skip = length;
                    data = &data[start..];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as clients send them.
    fn client_frame(opcode: OpCode, is_final: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let header = FrameHeader {
            is_final,
            opcode,
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn pings_are_answered_and_messages_dropped_even_when_split_anywhere() {
        let mut wire = client_frame(OpCode::Data(Data::Text), false, b"hello ");
        wire.extend(client_frame(OpCode::Control(Control::Ping), true, b"p"));
        wire.extend(client_frame(OpCode::Data(Data::Continue), true, b"world"));
        wire.extend(client_frame(OpCode::Control(Control::Ping), true, b"q"));
        for split in 0..wire.len() {
            let mut reader = Reader::default();
            let mut replies = Vec::new();
            reader.feed(&wire[..split], &mut replies);
            reader.feed(&wire[split..], &mut replies);
            // Read in one go, the later ping's pong replaces the earlier one.
            assert_eq!(
                replies,
                [server_frame(OpCode::Control(Control::Pong), b"q")],
                "split at {split}"
            );
            assert_eq!((reader.skip, reader.message), (0, None));
        }
    }

    #[test]
    fn a_flood_of_pings_queues_one_pong_and_a_bad_close_is_a_protocol_error() {
        let mut wire = Vec::new();
        for n in 0..10_000u32 {
            wire.extend(client_frame(
                OpCode::Control(Control::Ping),
                true,
                &n.to_be_bytes(),
            ));
        }
        let mut reader = Reader::default();
        let mut replies = Vec::new();
        reader.feed(&wire, &mut replies);
        assert_eq!(
            replies,
            [server_frame(
                OpCode::Control(Control::Pong),
                &9_999u32.to_be_bytes()
            )]
        );
        for bad in [&[3u8][..], &1005u16.to_be_bytes(), &999u16.to_be_bytes()] {
            let close = client_frame(OpCode::Control(Control::Close), true, bad);
            assert!(
                matches!(
                    Reader::default().feed(&close, &mut Vec::new()),
                    Received::Failed(1002, _)
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_message_past_4_kib_closes_with_1009_and_bad_frames_with_1002() {
        let big = client_frame(OpCode::Data(Data::Text), true, &[b'y'; 5000]);
        let mut growing = client_frame(OpCode::Data(Data::Text), false, &[b'y'; 3000]);
        growing.extend(client_frame(
            OpCode::Data(Data::Continue),
            true,
            &[b'y'; 3000],
        ));
        let unmasked = server_frame(OpCode::Data(Data::Text), b"x").to_vec();
        let stray = client_frame(OpCode::Data(Data::Continue), true, b"x");
        for (wire, expected) in [
            (big, Received::Failed(1009, "message too big")),
            (growing, Received::Failed(1009, "message too big")),
            (unmasked, Received::Failed(1002, "protocol error")),
            (stray, Received::Failed(1002, "protocol error")),
        ] {
            assert_eq!(Reader::default().feed(&wire, &mut Vec::new()), expected);
        }
    }

    #[test]
    fn a_client_s_close_is_answered_with_its_code() {
        let mut replies = Vec::new();
        let wire = client_frame(
            OpCode::Control(Control::Close),
            true,
            &1000u16.to_be_bytes(),
        );
        assert_eq!(
            Reader::default().feed(&wire, &mut replies),
            Received::Closed
        );
        assert_eq!(
            replies,
            [server_frame(
                OpCode::Control(Control::Close),
                &1000u16.to_be_bytes()
            )]
        );
    }
}
