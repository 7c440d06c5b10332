//! The SSE encoder against a parser written from the WHATWG specification: any message,
//! encoded, parses back to exactly one event with the same data, type and id.
#![cfg(not(loom))]

use storecast::sse::{self, EncodeError, Event, Parser, Received};

fn parse(wire: &str) -> Vec<Received> {
    Parser::new().feed(wire).collect()
}

fn round_trip(data: &str) -> Received {
    let events = parse(&Event::new(data).to_string());
    assert_eq!(events.len(), 1, "{data:?} became {events:?}");
    events.into_iter().next().unwrap()
}

#[test]
fn line_breaks_in_data_become_lf_and_never_end_the_event() {
    assert_eq!(round_trip("a\r\nb").data, "a\nb");
    assert_eq!(round_trip("a\rb").data, "a\nb");
    assert_eq!(round_trip("a\nb").data, "a\nb");
    assert_eq!(round_trip("x\n").data, "x\n");
    assert_eq!(round_trip("\r\n\r\n").data, "\n\n");
}

#[test]
fn leading_space_and_empty_data_survive() {
    assert_eq!(round_trip(" x").data, " x");
    assert_eq!(round_trip("").data, "");
    assert_eq!(Event::new("").to_string(), "data: \n\n");
}

#[test]
fn unicode_line_separator_vertical_tab_and_form_feed_are_not_breaks() {
    let wire = Event::new("a\u{2028}b\u{b}c\u{c}d").to_string();
    assert_eq!(wire, "data: a\u{2028}b\u{b}c\u{c}d\n\n");
    assert_eq!(
        round_trip("a\u{2028}b\u{b}c\u{c}d").data,
        "a\u{2028}b\u{b}c\u{c}d"
    );
}

#[test]
fn an_injection_attempt_is_one_ordinary_event() {
    let message = "x\n\nevent: admin\ndata: y\nretry: 1";
    let mut parser = Parser::new();
    let events: Vec<_> = parser.feed(&Event::new(message).to_string()).collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "message");
    assert_eq!(events[0].data, message);
    assert_eq!(parser.retry, None, "the message set the client's retry");
}

#[test]
fn event_type_and_id_with_line_breaks_are_refused_not_stripped() {
    assert_eq!(
        Event::new("x").event("a\nb"),
        Err(EncodeError::LineBreakInEventType)
    );
    assert_eq!(
        Event::new("x").event("a\rb"),
        Err(EncodeError::LineBreakInEventType)
    );
    assert_eq!(Event::new("x").id("1\n2"), Err(EncodeError::LineBreakInId));
    assert_eq!(Event::new("x").id("1\r"), Err(EncodeError::LineBreakInId));
    assert_eq!(Event::new("x").id("1\u{0}"), Err(EncodeError::NulInId));
}

#[test]
fn retry_and_comments_follow_the_format() {
    let wire = Event::new("x").retry(2500).to_string();
    assert_eq!(wire, "retry: 2500\ndata: x\n\n");
    let mut parser = Parser::new();
    assert_eq!(parser.feed(&wire).count(), 1);
    assert_eq!(parser.retry, Some(2500));
    assert_eq!(sse::comment("keep-alive"), ": keep-alive\n\n");
    assert_eq!(sse::comment("two\nlines"), ": two\n: lines\n\n");
    assert_eq!(parse(&sse::comment("data: x\n\nnot an event")).len(), 0);
}

#[test]
fn no_byte_order_mark_is_written() {
    assert!(!Event::new("\u{feff}x").to_string().starts_with('\u{feff}'));
    assert_eq!(round_trip("\u{feff}x").data, "\u{feff}x");
}

/// A small deterministic generator, so that a failure can be replayed from its case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Text built from the pieces that stress the format.
    fn text(&mut self, allow_breaks: bool) -> String {
        const PIECES: &[&str] = &[
            "a", "Z", " ", "  ", ":", ": ", "data", "data:", "event: x", "id: 9", "retry: 1",
            "\u{2028}", "\u{b}", "\u{c}", "\u{feff}", "é", "🦀", "\t",
        ];
        const BREAKS: &[&str] = &["\n", "\r", "\r\n", "\n\n", "\r\r", "\n\r"];
        let mut s = String::new();
        for _ in 0..self.below(12) {
            if allow_breaks && self.below(4) == 0 {
                s.push_str(BREAKS[self.below(BREAKS.len())]);
            } else {
                s.push_str(PIECES[self.below(PIECES.len())]);
            }
        }
        s
    }
}

#[test]
fn any_message_round_trips_as_exactly_one_event_however_the_stream_is_split() {
    let mut rng = Rng(0x5eed_cafe);
    for case in 0..20_000 {
        let data = rng.text(true);
        let event_type = if rng.below(2) == 0 {
            None
        } else {
            Some(rng.text(false))
        }
        .filter(|t| !t.is_empty());
        let id = if rng.below(2) == 0 {
            None
        } else {
            Some(rng.text(false).replace('\0', ""))
        };
        let mut event = Event::new(&data);
        if let Some(t) = &event_type {
            event = event.event(t).unwrap();
        }
        if let Some(id) = &id {
            event = event.id(id).unwrap();
        }
        let wire = event.to_string();

        // Split the wire at random places, including inside CRLF pairs.
        let mut parser = Parser::new();
        let mut events = Vec::new();
        let mut rest = wire.as_str();
        while !rest.is_empty() {
            let mut at = 1 + rng.below(rest.len());
            while !rest.is_char_boundary(at) {
                at += 1;
            }
            events.extend(parser.feed(&rest[..at]));
            rest = &rest[at..];
        }
        assert_eq!(events.len(), 1, "case {case}: {wire:?} became {events:?}");
        let got = &events[0];
        assert_eq!(
            got.data,
            data.replace("\r\n", "\n").replace('\r', "\n"),
            "case {case}: {wire:?}"
        );
        assert_eq!(
            got.event,
            event_type.as_deref().unwrap_or("message"),
            "case {case}: {wire:?}"
        );
        assert_eq!(got.id, id.unwrap_or_default(), "case {case}: {wire:?}");
    }
}

mod items {
    use futures_lite::StreamExt;
    use futures_lite::future::block_on;
    use storecast::sse::{self, EventStream, Parser};
    use storecast::{Epoch, Overflow, Position, QueueStore, RecvError, ResetReason, Start};

    /// An epoch whose text the tests spell out.
    const EPOCH: Epoch = Epoch::new(0x8_7654_3210);

    #[test]
    fn messages_carry_their_position_as_id_and_lag_is_an_explicit_event() {
        let store = QueueStore::with_epoch(2, Overflow::DropOldest, EPOCH);
        let mut sub = store.subscribe();
        for n in 1..=5 {
            store.try_submit(format!("m{n}")).unwrap();
        }
        let mut parser = Parser::new();
        let mut events = Vec::new();
        for _ in 0..3 {
            let item = block_on(sub.next()).unwrap();
            events.extend(parser.feed(&sse::encode_item(&item).unwrap()));
        }
        assert_eq!(events[0].event, sse::event_types::LAGGED);
        assert_eq!(events[0].data, r#"{"missed":3}"#);
        assert_eq!(
            (events[1].data.as_str(), events[1].id.as_str()),
            ("m4", "4-11v58cgg")
        );
        assert_eq!(
            (events[2].data.as_str(), events[2].id.as_str()),
            ("m5", "5-11v58cgg")
        );
    }

    #[test]
    fn last_event_id_resumes_and_garbage_resets_to_the_oldest() {
        assert_eq!(sse::resume_from(None), (Start::Now, None));
        assert_eq!(
            sse::resume_from(Some(" 42-11v58cgg ")),
            (Start::After(Position::new(EPOCH, 42)), None)
        );
        let unreadable = Some(RecvError::Reset {
            reason: ResetReason::Unreadable,
        });
        for garbage in [
            "42",
            "42\u{0}",
            "-1",
            "42-",
            "-11v58cgg",
            "42-11V58CGG",
            "4 2-x",
            "x-y",
        ] {
            assert_eq!(
                sse::resume_from(Some(garbage)),
                (Start::Oldest, unreadable),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn a_reset_is_a_named_event_saying_why() {
        let item: storecast::Item<String> = Err(RecvError::Reset {
            reason: ResetReason::OtherEpoch,
        });
        let wire = sse::encode_item(&item).unwrap();
        assert_eq!(wire, "event: reset\ndata: {\"reason\":\"other-epoch\"}\n\n");
    }

    #[test]
    fn event_stream_sends_retry_first_keep_alives_when_idle_and_ends_with_the_store() {
        let store = QueueStore::with_epoch(8, Overflow::Wait, EPOCH);
        let sub = store.subscribe();
        // Two ticks with nothing to send: two keep-alives; then a message, and a tick
        // right after it sends nothing extra.
        let ticks = futures_lite::stream::iter([(), ()]);
        let mut body = EventStream::new(sub, ticks, Some(3000));
        block_on(async {
            assert_eq!(body.next().await.unwrap(), "retry: 3000\n\n");
            assert_eq!(body.next().await.unwrap(), ":\n\n");
            assert_eq!(body.next().await.unwrap(), ":\n\n");
            store.submit(String::from("hello")).await.unwrap();
            assert_eq!(
                body.next().await.unwrap(),
                "id: 1-11v58cgg\ndata: hello\n\n"
            );
            store.close();
            assert_eq!(body.next().await, None);
        });
    }

    #[test]
    fn events_already_waiting_go_out_in_one_chunk() {
        let store = QueueStore::with_epoch(8, Overflow::Wait, EPOCH);
        let sub = store.subscribe();
        for n in 1..=3 {
            store.try_submit(format!("m{n}")).unwrap();
        }
        let mut body = EventStream::new(sub, futures_lite::stream::pending::<()>(), None);
        block_on(async {
            let chunk = body.next().await.unwrap();
            assert_eq!(
                chunk,
                "id: 1-11v58cgg\ndata: m1\n\nid: 2-11v58cgg\ndata: m2\n\nid: 3-11v58cgg\ndata: m3\n\n"
            );
        });
    }

    #[test]
    fn a_laggard_cut_off_by_disconnect_gets_a_last_event_then_the_stream_ends() {
        let store = QueueStore::with_overflow(1, Overflow::Disconnect);
        let sub = store.subscribe();
        store.try_submit(String::from("a")).unwrap();
        store.try_submit(String::from("b")).unwrap();
        let mut body = EventStream::new(sub, futures_lite::stream::pending::<()>(), None);
        block_on(async {
            let chunk = body.next().await.unwrap();
            assert!(chunk.starts_with("event: fell-behind\n"), "{chunk:?}");
            assert_eq!(body.next().await, None);
        });
    }
}

mod websocket_frames {
    use storecast::{Epoch, Message, Position, RecvError, ResetReason, websocket};

    #[test]
    fn frames_are_valid_json_with_data_and_id_whatever_the_text() {
        let text = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} é 🦀";
        let frame = websocket::encode_item(&Ok(Message::new(
            Position::new(Epoch::new(31), 12),
            String::from(text),
        )));
        let json: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(json["data"], text);
        assert_eq!(json["id"], "12-z");
        let reset = websocket::encode_item::<String>(&Err(RecvError::Reset {
            reason: ResetReason::Ahead,
        }));
        let json: serde_json::Value = serde_json::from_str(&reset).unwrap();
        assert_eq!(
            (json["event"].as_str(), json["reason"].as_str()),
            (Some("reset"), Some("ahead"))
        );
        let lag = websocket::encode_item::<String>(&Err(RecvError::Lagged { missed: 3 }));
        let json: serde_json::Value = serde_json::from_str(&lag).unwrap();
        assert_eq!(
            (json["event"].as_str(), json["missed"].as_u64()),
            (Some("lagged"), Some(3))
        );
    }
}
