//! A real server on loopback, on async-std: SSE (with resume) and WebSocket delivery to
//! real clients.

use std::time::Duration;

use async_std::io::{ReadExt, WriteExt};
use async_std::net::{TcpListener, TcpStream};
use async_tungstenite::tungstenite::Message;
use futures_lite::StreamExt;
use hyper::StatusCode;
use storecast::QueueStore;
use storecast::sse::{Parser, Received};
use storecast_async_std::{EventSource, WebSocketSubscriber, serve};

/// Starts a server for `store`: `/events` (SSE) and `/ws` (WebSocket); returns its address.
async fn start(store: QueueStore<String>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    async_std::task::spawn(serve(listener, move |request| {
        let store = store.clone();
        async move {
            match request.uri().path() {
                "/events" => EventSource::new(store).respond(&request),
                "/ws" => WebSocketSubscriber::new(store).upgrade(request, None),
                _ => {
                    let mut response = hyper::Response::new(Default::default());
                    *response.status_mut() = StatusCode::NOT_FOUND;
                    response
                }
            }
        }
    }));
    address
}

/// Opens an SSE stream with a raw HTTP/1.1 request; returns the socket after the headers.
async fn sse(address: &str, extra_headers: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET /events HTTP/1.1\r\nHost: test\r\n{extra_headers}\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    (stream, String::from_utf8(head).unwrap())
}

/// Reads until `count` events arrived (chunked transfer framing is skipped by looking
/// only at complete SSE lines; chunk-size lines are hex digits the parser ignores).
async fn events(stream: &mut TcpStream, count: usize) -> Vec<Received> {
    let mut parser = Parser::new();
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    while got.len() < count {
        let n = async_std::future::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("events within 10 s")
            .unwrap();
        assert!(n > 0, "the stream ended early");
        got.extend(parser.feed(std::str::from_utf8(&buffer[..n]).unwrap()));
    }
    got
}

#[async_std::test]
async fn sse_delivers_and_resumes_after_last_event_id() {
    let store = QueueStore::new(16);
    let address = start(store.clone()).await;
    let (mut live, head) = sse(&address, "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    for n in 1..=3 {
        store.submit(format!("m{n}")).await.unwrap();
    }
    let got = events(&mut live, 3).await;
    let data: Vec<_> = got
        .iter()
        .map(|e| (e.data.as_str(), e.id.as_str()))
        .collect();
    let id = |n: u32| format!("{n}-{}", store.epoch());
    let expected = [("m1", id(1)), ("m2", id(2)), ("m3", id(3))];
    assert_eq!(
        data,
        expected
            .iter()
            .map(|(d, i)| (*d, i.as_str()))
            .collect::<Vec<_>>()
    );

    let (mut resumed, _) = sse(&address, &format!("Last-Event-ID: {}\r\n", id(1))).await;
    let got = events(&mut resumed, 2).await;
    assert_eq!((got[0].data.as_str(), got[1].data.as_str()), ("m2", "m3"));

    // An id that is not one (a browser keeps whatever it last saw) is no refusal, which
    // would stop an EventSource for good: a reset event, then everything retained.
    let (mut garbage, head) = sse(&address, "Last-Event-ID: nonsense\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let got = events(&mut garbage, 4).await;
    assert_eq!(
        (got[0].event.as_str(), got[0].data.as_str()),
        ("reset", r#"{"reason":"unreadable"}"#)
    );
    assert_eq!(got[1].data, "m1");

    // An id from an earlier run of the server (another epoch): told, then everything.
    let (mut restarted, _) = sse(&address, "Last-Event-ID: 2-k7fm2q9d\r\n").await;
    let got = events(&mut restarted, 4).await;
    assert_eq!(
        (got[0].event.as_str(), got[0].data.as_str()),
        ("reset", r#"{"reason":"other-epoch"}"#)
    );
    let data: Vec<_> = got[1..].iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["m1", "m2", "m3"]);
}

#[async_std::test]
async fn websocket_frames_carry_data_and_id() {
    let store = QueueStore::new(16);
    let address = start(store.clone()).await;
    let tcp = TcpStream::connect(&address).await.unwrap();
    let (mut ws, _) = async_tungstenite::client_async(format!("ws://{address}/ws"), tcp)
        .await
        .expect("the WebSocket handshake succeeds");
    // Subscribed once the upgrade is done on the server side.
    async_io::Timer::after(Duration::from_millis(100)).await;
    store.submit(String::from("hello \"ws\"")).await.unwrap();
    let frame = async_std::future::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Text(text) = frame else {
        panic!("expected text, got {frame:?}")
    };
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (json["data"].as_str(), json["id"].as_str()),
        (
            Some("hello \"ws\""),
            Some(format!("1-{}", store.epoch()).as_str())
        )
    );

    store.close();
    let closing = async_std::future::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(
        matches!(closing, Some(Ok(Message::Close(_))) | None),
        "{closing:?}"
    );
}

#[test]
fn the_same_server_runs_under_smol() {
    smol::block_on(async {
        let store = QueueStore::new(16);
        let address = start(store.clone()).await;
        let (mut live, head) = sse(&address, "").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        store.submit(String::from("from smol")).await.unwrap();
        let got = events(&mut live, 1).await;
        assert_eq!(
            (got[0].data.as_str(), got[0].id.as_str()),
            ("from smol", format!("1-{}", store.epoch()).as_str())
        );
    });
}

#[async_std::test]
async fn websocket_messages_from_clients_are_small_and_closes_are_answered() {
    use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let store = QueueStore::<String>::new(16);
    let address = start(store.clone()).await;
    let tcp = TcpStream::connect(&address).await.unwrap();
    let (mut ws, _) = async_tungstenite::client_async(format!("ws://{address}/ws"), tcp)
        .await
        .unwrap();
    ws.send(Message::text("y".repeat(64 * 1024))).await.unwrap();
    let mut code = None;
    while let Ok(Some(frame)) = async_std::future::timeout(Duration::from_secs(5), ws.next()).await
    {
        if let Ok(Message::Close(frame)) = frame {
            code = frame.map(|f| f.code);
            break;
        }
    }
    assert_eq!(code, Some(CloseCode::Size));

    let tcp = TcpStream::connect(&address).await.unwrap();
    let (mut ws, _) = async_tungstenite::client_async(format!("ws://{address}/ws"), tcp)
        .await
        .unwrap();
    ws.send(Message::Close(None)).await.unwrap();
    let answered = async_std::future::timeout(Duration::from_secs(5), async {
        while let Some(frame) = ws.next().await {
            if let Ok(Message::Close(_)) = frame {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(answered, Ok(true), "the close was not answered");
}
