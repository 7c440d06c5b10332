//! WebSocket frames: what a subscriber received, as the JSON text of one frame.
//!
//! Tornadose's `WebSocketSubscriber` sends `{"data": message}`; storecast adds the
//! message's position as `"id"` (a string, like an SSE id, so a client can resume with
//! it), and its event type when it has one:
//!
//! ```
//! use storecast::{websocket, Message, Position};
//!
//! let position: Position = "7-k7fm2q9d".parse().unwrap();
//! let item = Ok(Message::new(position, String::from("say \"hi\"\n")));
//! assert_eq!(websocket::encode_item(&item), r#"{"data":"say \"hi\"\n","id":"7-k7fm2q9d"}"#);
//! ```
//!
//! News of missed messages is a frame with an `"event"` of the same names as the SSE
//! [`crate::sse::event_types`]: `{"event":"lagged","missed":N}`,
//! `{"event":"fell-behind","capacity":N}` (after which the server closes the socket),
//! `{"event":"interrupted"}` and `{"event":"reset","reason":R}`.

use alloc::string::String;
use core::fmt::Write as _;

use crate::sse::{Payload, event_types};
use crate::{Item, RecvError};

/// The JSON text of the frame for `item`.
pub fn encode_item<T: Payload>(item: &Item<T>) -> String {
    let mut out = String::new();
    match item {
        Ok(message) => {
            out.push_str("{\"data\":");
            push_json_string(&mut out, message.data());
            let _ = write!(out, ",\"id\":\"{}\"", message.position());
            if let Some(event_type) = message.event_type() {
                out.push_str(",\"event\":");
                push_json_string(&mut out, event_type);
            }
            out.push('}');
        }
        Err(RecvError::Lagged { missed }) => {
            let _ = write!(
                out,
                "{{\"event\":\"{}\",\"missed\":{missed}}}",
                event_types::LAGGED
            );
        }
        Err(RecvError::FellBehind { capacity }) => {
            let _ = write!(
                out,
                "{{\"event\":\"{}\",\"capacity\":{capacity}}}",
                event_types::FELL_BEHIND
            );
        }
        Err(RecvError::Interrupted) => {
            let _ = write!(out, "{{\"event\":\"{}\"}}", event_types::INTERRUPTED);
        }
        Err(RecvError::Reset { reason }) => {
            let _ = write!(
                out,
                "{{\"event\":\"{}\",\"reason\":\"{}\"}}",
                event_types::RESET,
                reason.as_str()
            );
        }
        // The end of the stream: no frame (the connection is closed instead).
        Err(RecvError::Closed) => {}
    }
    out
}

/// Appends `text` as a JSON string literal.
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
