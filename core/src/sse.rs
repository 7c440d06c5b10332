//! Server-sent events on the wire (WHATWG HTML, "Server-sent events"): the one place
//! events are formatted, and a parser that follows the specification.
//!
//! The encoder never lets a message change the shape of the stream: `data` is split on
//! every line break the specification knows (CRLF, CR, LF) into one `data: ` line per
//! piece, and an `event` type or `id` that contains a line break is refused, never
//! stripped. So any message, encoded, parses back to exactly one event with the same
//! data, type and id.
//!
//! ```
//! use storecast::sse::{Event, Parser};
//!
//! // A message that tries to inject an `admin` event stays one ordinary event.
//! let message = "x\n\nevent: admin\ndata: y\nretry: 1";
//! let wire = Event::new(message).id("7").unwrap().to_string();
//! assert_eq!(wire, "id: 7\ndata: x\ndata: \ndata: event: admin\ndata: data: y\ndata: retry: 1\n\n");
//!
//! let mut parser = Parser::new();
//! let events: Vec<_> = parser.feed(&wire).collect();
//! assert_eq!(events.len(), 1);
//! assert_eq!((events[0].event.as_str(), events[0].data.as_str()), ("message", message));
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};

/// Headers an SSE response carries: the content type, no caching, and no buffering by
/// proxies (nginx reads `x-accel-buffering`). Never compress an event stream.
pub const HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
];

/// How often an idle stream sends a keep-alive comment by default (milliseconds).
pub const DEFAULT_KEEP_ALIVE_MS: u64 = 15_000;

/// Why an event could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EncodeError {
    /// The event type contains CR or LF, which would end its line early.
    LineBreakInEventType,
    /// The id contains CR or LF, which would end its line early.
    LineBreakInId,
    /// The id contains NUL, which makes clients ignore it.
    NulInId,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncodeError::LineBreakInEventType => {
                "an SSE event type may not contain a line break (CR or LF)"
            }
            EncodeError::LineBreakInId => "an SSE id may not contain a line break (CR or LF)",
            EncodeError::NulInId => "an SSE id may not contain NUL",
        })
    }
}

impl core::error::Error for EncodeError {}

/// One event to send. `Display` writes it in wire format, ending with the blank line that
/// dispatches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    data: &'a str,
    event: Option<&'a str>,
    id: Option<&'a str>,
    retry: Option<u64>,
}

impl<'a> Event<'a> {
    /// An event of the default type (`message`) carrying `data`.
    pub fn new(data: &'a str) -> Self {
        Event {
            data,
            event: None,
            id: None,
            retry: None,
        }
    }

    /// Sets the event type; refused if it contains a line break.
    pub fn event(mut self, event: &'a str) -> Result<Self, EncodeError> {
        if event.contains(['\r', '\n']) {
            return Err(EncodeError::LineBreakInEventType);
        }
        self.event = Some(event);
        Ok(self)
    }

    /// Sets the id (a client's `Last-Event-ID` when it reconnects); refused if it contains
    /// a line break or NUL.
    pub fn id(mut self, id: &'a str) -> Result<Self, EncodeError> {
        if id.contains(['\r', '\n']) {
            return Err(EncodeError::LineBreakInId);
        }
        if id.contains('\0') {
            return Err(EncodeError::NulInId);
        }
        self.id = Some(id);
        Ok(self)
    }

    /// Sets the client's reconnection delay, in milliseconds.
    pub fn retry(mut self, milliseconds: u64) -> Self {
        self.retry = Some(milliseconds);
        self
    }

    /// Appends the event in wire format to `out`.
    pub fn encode_into(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = write!(out, "{self}");
    }
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(event) = self.event {
            writeln!(f, "event: {event}")?;
        }
        if let Some(id) = self.id {
            writeln!(f, "id: {id}")?;
        }
        if let Some(retry) = self.retry {
            writeln!(f, "retry: {retry}")?;
        }
        for line in lines(self.data) {
            writeln!(f, "data: {line}")?;
        }
        f.write_str("\n")
    }
}

/// Splits on CRLF, CR and LF (CRLF counts once), keeping empty pieces: `"a\n"` is
/// `["a", ""]`, `""` is `[""]`. U+2028, VT and FF are not line breaks in SSE.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    core::iter::from_fn(move || {
        let text = rest?;
        match text.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(text)
            }
            Some(at) => {
                let skip = if text[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&text[at + skip..]);
                Some(&text[..at])
            }
        }
    })
}

/// A comment (ignored by clients; used for keep-alives): every line starts with `:`.
pub fn comment(text: &str) -> String {
    let mut out = String::new();
    for line in lines(text) {
        out.push(':');
        if !line.is_empty() {
            out.push(' ');
            out.push_str(line);
        }
        out.push('\n');
    }
    out.push('\n');
    out
}

/// An event as a client receives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The event type (`message` unless the server named one).
    pub event: String,
    /// The data, lines joined with LF.
    pub data: String,
    /// The last event id at the time of this event (it persists across events).
    pub id: String,
}

/// A parser that follows the WHATWG specification's "interpreting an event stream",
/// incrementally: feed it chunks as they arrive (split anywhere, even inside a CRLF) and
/// it yields the events dispatched so far. Used by tests and clients of SSE endpoints.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of an unfinished line.
    line: String,
    /// The previous chunk ended with CR: an LF starting the next one is part of it.
    after_cr: bool,
    started: bool,
    data: String,
    event: String,
    last_id: String,
    /// The reconnection time last set by a `retry` field.
    pub retry: Option<u64>,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Parser::default()
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn feed(&mut self, chunk: &str) -> impl Iterator<Item = Received> + use<> {
        let mut events = Vec::new();
        let mut chunk = chunk;
        if !self.started {
            self.started = true;
            chunk = chunk.strip_prefix('\u{feff}').unwrap_or(chunk);
        }
        for c in chunk.chars() {
            match c {
                '\n' if self.after_cr => self.after_cr = false,
                '\r' | '\n' => {
                    self.after_cr = c == '\r';
                    let line = core::mem::take(&mut self.line);
                    if let Some(event) = self.process(&line) {
                        events.push(event);
                    }
                }
                c => {
                    self.after_cr = false;
                    self.line.push(c);
                }
            }
        }
        events.into_iter()
    }

    fn process(&mut self, line: &str) -> Option<Received> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.find(':') {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.into(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_id = value.into(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Received> {
        let event = core::mem::take(&mut self.event);
        if self.data.is_empty() {
            return None;
        }
        let mut data = core::mem::take(&mut self.data);
        data.pop();
        Some(Received {
            event: if event.is_empty() {
                "message".into()
            } else {
                event
            },
            data,
            id: self.last_id.clone(),
        })
    }
}

/// A value that can be sent as an event: its data, and optionally an event type.
pub trait Payload {
    /// The event's data.
    fn data(&self) -> &str;
    /// The event's type; `None` for the default (`message`).
    fn event_type(&self) -> Option<&str> {
        None
    }
}

impl Payload for String {
    fn data(&self) -> &str {
        self
    }
}

impl Payload for &'static str {
    fn data(&self) -> &str {
        self
    }
}

impl Payload for alloc::boxed::Box<str> {
    fn data(&self) -> &str {
        self
    }
}

impl Payload for alloc::sync::Arc<str> {
    fn data(&self) -> &str {
        self
    }
}

/// The event types a subscriber's news of missed messages is sent as.
pub mod event_types {
    /// Messages were dropped before the subscriber read them (`data`: `{"missed":N}`);
    /// the stream goes on with the oldest retained message.
    pub const LAGGED: &str = "lagged";
    /// The subscriber fell a whole queue behind and is disconnected (`data`:
    /// `{"capacity":N}`); the stream ends after this event.
    pub const FELL_BEHIND: &str = "fell-behind";
    /// The store's transport was interrupted; messages may have been missed (`data`:
    /// `{}`).
    pub const INTERRUPTED: &str = "interrupted";
    /// The position the client resumed from could not be placed, or the store lost
    /// messages it had handed out (`data`: `{"reason":R}`, R one of `other-epoch`,
    /// `ahead`, `unreadable`, `lost`); the stream goes on with what the store holds, and
    /// the ids the client kept from before mean nothing now.
    pub const RESET: &str = "reset";

    /// Every type the stores' news is sent as: a publisher must not be able to forge
    /// them.
    pub const ALL: [&str; 4] = [LAGGED, FELL_BEHIND, INTERRUPTED, RESET];
}

/// Encodes what a subscriber received as one event: a message with its position as the
/// `id`, or news of missed messages as an event of one of the [`event_types`]. A message
/// whose type contains a line break is refused.
pub fn encode_item<T: Payload>(item: &crate::Item<T>) -> Result<String, EncodeError> {
    let mut out = String::new();
    encode_item_into(item, &mut out)?;
    Ok(out)
}

/// Appends the event for `item` to `out` (nothing on error); see [`encode_item`].
pub fn encode_item_into<T: Payload>(
    item: &crate::Item<T>,
    out: &mut String,
) -> Result<(), EncodeError> {
    use crate::RecvError;
    match item {
        Ok(message) => {
            let mut id = heapless::String::<34>::new();
            write!(id, "{}", message.position()).expect("a position fits in 34 bytes");
            let mut event = Event::new(message.data()).id(&id)?;
            if let Some(event_type) = message.event_type() {
                event = event.event(event_type)?;
            }
            event.encode_into(out);
        }
        Err(RecvError::Lagged { missed }) => {
            let data = alloc::format!("{{\"missed\":{missed}}}");
            Event::new(&data)
                .event(event_types::LAGGED)?
                .encode_into(out);
        }
        Err(RecvError::FellBehind { capacity }) => {
            let data = alloc::format!("{{\"capacity\":{capacity}}}");
            Event::new(&data)
                .event(event_types::FELL_BEHIND)?
                .encode_into(out);
        }
        Err(RecvError::Interrupted) => {
            Event::new("{}")
                .event(event_types::INTERRUPTED)?
                .encode_into(out);
        }
        Err(RecvError::Reset { reason }) => {
            let data = alloc::format!("{{\"reason\":\"{}\"}}", reason.as_str());
            Event::new(&data)
                .event(event_types::RESET)?
                .encode_into(out);
        }
        // The end of the stream: no event; the response ends.
        Err(RecvError::Closed) => {}
    }
    Ok(())
}

/// Where a reconnecting client resumes: after its `Last-Event-ID` (header, or a query
/// parameter for clients that cannot set headers), or as a new subscriber without one.
///
/// An id that is not a position ([`Position`](crate::Position) text, `OFFSET-EPOCH`) is
/// not refused (a browser's `EventSource` gives up for good on any answer but 200): the
/// client is told [`ResetReason::Unreadable`](crate::ResetReason) and gets what the store
/// holds, as for a position the store cannot place.
///
/// ```
/// use storecast::sse::resume_from;
/// use storecast::{Epoch, Position, RecvError, ResetReason, Start};
///
/// assert_eq!(resume_from(None), (Start::Now, None));
/// assert_eq!(
///     resume_from(Some("42-k7fm2q9d")),
///     (Start::After(Position::new("k7fm2q9d".parse().unwrap(), 42)), None),
/// );
/// let unreadable = RecvError::Reset { reason: ResetReason::Unreadable };
/// assert_eq!(resume_from(Some("42")), (Start::Oldest, Some(unreadable)));
/// ```
pub fn resume_from(last_event_id: Option<&str>) -> (crate::Start, Option<crate::RecvError>) {
    match last_event_id.map(str::trim) {
        None | Some("") => (crate::Start::Now, None),
        Some(id) => match id.parse() {
            Ok(position) => (crate::Start::After(position), None),
            Err(_) => (
                crate::Start::Oldest,
                Some(crate::RecvError::Reset {
                    reason: crate::ResetReason::Unreadable,
                }),
            ),
        },
    }
}

/// Subscribes to `store` for a client that sent `last_event_id` (see [`resume_from`]):
/// the subscription, led by the news the client must hear first if its id was unreadable.
///
/// ```
/// use futures_lite::{future::block_on, StreamExt};
/// use storecast::{sse, DataStore, RecvError, ResetReason};
///
/// let store = DataStore::new();
/// store.try_submit("current").unwrap();
/// let mut client = sse::subscribe(&store, Some("garbage"));
/// block_on(async {
///     let reset = RecvError::Reset { reason: ResetReason::Unreadable };
///     assert_eq!(client.next().await.unwrap().unwrap_err(), reset);
///     assert_eq!(*client.next().await.unwrap().unwrap(), "current");
/// });
/// ```
pub fn subscribe<S: crate::Store>(
    store: &S,
    last_event_id: Option<&str>,
) -> Resumed<S::Subscriber> {
    let (start, news) = resume_from(last_event_id);
    Resumed {
        news,
        subscriber: store.subscribe_from(start),
    }
}

/// A subscriber led by one item of news (see [`subscribe`]).
#[derive(Debug)]
pub struct Resumed<S> {
    news: Option<crate::RecvError>,
    subscriber: S,
}

impl<S: Unpin> Resumed<S> {
    /// The subscription itself.
    pub fn get_ref(&self) -> &S {
        &self.subscriber
    }
}

impl<S, T> futures_core::Stream for Resumed<S>
where
    S: futures_core::Stream<Item = crate::Item<T>> + Unpin,
{
    type Item = crate::Item<T>;

    fn poll_next(
        self: core::pin::Pin<&mut Self>,
        cx: &mut core::task::Context<'_>,
    ) -> core::task::Poll<Option<crate::Item<T>>> {
        let this = self.get_mut();
        if let Some(news) = this.news.take() {
            return core::task::Poll::Ready(Some(Err(news)));
        }
        core::pin::Pin::new(&mut this.subscriber).poll_next(cx)
    }
}

/// A subscriber turned into the chunks of an SSE response body: an optional `retry`
/// first, then the events of its items (all those ready at once in one chunk), and a
/// keep-alive comment for each tick of `ticks` that found the stream idle since the one
/// before. It ends when the subscriber ends (a
/// closed store, or after [`event_types::FELL_BEHIND`]).
///
/// Runtime adapters supply `ticks` from their timer (every
/// [`DEFAULT_KEEP_ALIVE_MS`] by default), and write each chunk and flush it.
#[derive(Debug)]
pub struct EventStream<S, K> {
    subscriber: S,
    ticks: K,
    retry: Option<u64>,
    /// Something was sent since the last tick.
    busy: bool,
    done: bool,
}

impl<S, K> EventStream<S, K> {
    /// Frames `subscriber`'s items, with keep-alives on `ticks` and the client's
    /// reconnection delay set to `retry` milliseconds if given.
    pub fn new(subscriber: S, ticks: K, retry: Option<u64>) -> Self {
        EventStream {
            subscriber,
            ticks,
            retry,
            busy: false,
            done: false,
        }
    }
}

/// How many bytes of ready events [`EventStream`] gathers into one chunk at most.
const COALESCE_BYTES: usize = 16 * 1024;

/// Appends the event for `item`; a message that cannot be an event (a type with a line
/// break) is reported in its place as a comment, never sent mangled.
fn push_item<T: Payload>(chunk: &mut String, item: &crate::Item<T>) {
    match encode_item_into(item, chunk) {
        Ok(()) => {}
        Err(e) => {
            let id = item.as_ref().map(|m| m.position());
            let text = match id {
                Ok(id) => alloc::format!("message {id} not sent: {e}"),
                Err(_) => alloc::format!("news not sent: {e}"),
            };
            chunk.push_str(&comment(&text));
        }
    }
}

impl<S, K, T> futures_core::Stream for EventStream<S, K>
where
    S: futures_core::Stream<Item = crate::Item<T>> + Unpin,
    K: futures_core::Stream + Unpin,
    T: Payload,
{
    type Item = String;

    fn poll_next(
        self: core::pin::Pin<&mut Self>,
        cx: &mut core::task::Context<'_>,
    ) -> core::task::Poll<Option<String>> {
        use core::pin::Pin;
        use core::task::Poll;
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(retry) = this.retry.take() {
            return Poll::Ready(Some(alloc::format!("retry: {retry}\n\n")));
        }
        loop {
            // Every event already waiting goes out in one chunk (one write, one flush):
            // under load, a subscriber that fell a few events behind catches up with one
            // system call instead of one each.
            let mut chunk = String::new();
            while chunk.len() < COALESCE_BYTES {
                match Pin::new(&mut this.subscriber).poll_next(cx) {
                    Poll::Ready(Some(item)) => {
                        this.busy = true;
                        push_item(&mut chunk, &item);
                        if matches!(item, Err(crate::RecvError::FellBehind { .. })) {
                            this.done = true;
                            break;
                        }
                    }
                    Poll::Ready(None) => {
                        this.done = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if !chunk.is_empty() {
                return Poll::Ready(Some(chunk));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.ticks).poll_next(cx) {
                Poll::Ready(Some(_)) if !core::mem::take(&mut this.busy) => {
                    return Poll::Ready(Some(String::from(":\n\n")));
                }
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
