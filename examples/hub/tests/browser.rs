//! A real browser: headless Chromium, driven through ChromeDriver's WebDriver API, opens
//! the hub's page. It lists the topics live with their counts, shows a topic's retained
//! messages then live ones, shows the hub's lag reports as such, and publishes (with an
//! event type) to SSE clients; a screenshot of it is saved for people to look at. With two
//! hubs on one Redis, a message another program adds to Redis shows in the pages of both.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`ci/test.sh` installs them).

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::{Hub, client};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A ChromeDriver process, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
    for program in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(program).exists(),
            "{program} is missing: apt-get install -y chromium chromium-driver (ci/test.sh does)"
        );
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if let Ok(status) = client().get(format!("{}/status", driver.url)).send().await
            && status.status().is_success()
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not come up");
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> Value {
    let mut request = client().request(method, &url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("chromedriver answers");
    let status = response.status();
    let value: Value = response.json().await.expect("a JSON answer");
    assert!(status.is_success(), "{url}: {status} {value}");
    value["value"].clone()
}

/// Runs `script` in the page until it returns a string containing `wanted` (30 s at most).
async fn wait_for_text(session: &str, script: &str, wanted: &str) -> String {
    let mut last = String::new();
    for _ in 0..300 {
        let value = call(
            reqwest::Method::POST,
            format!("{session}/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
        .await;
        last = value.as_str().unwrap_or_default().to_owned();
        if last.contains(wanted) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page never showed {wanted:?}; it showed {last:?}");
}

/// A new headless browser session with a profile directory of its own; returns the
/// session's URL and the profile to remove.
async fn new_session(driver: &Driver, name: &str) -> (String, std::path::PathBuf) {
    let profile =
        std::env::temp_dir().join(format!("storecast-chromium-{}-{name}", std::process::id()));
    let session = call(
        reqwest::Method::POST,
        format!("{}/session", driver.url),
        Some(json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1200,800",
                    "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}})),
    )
    .await;
    let session = format!(
        "{}/session/{}",
        driver.url,
        session["sessionId"].as_str().unwrap()
    );
    (session, profile)
}

/// Opens `url` in the session and waits for the page's EventSource of the topic to be
/// open (its state as the page shows it).
async fn open_page(session: &str, url: String) {
    call(
        reqwest::Method::POST,
        format!("{session}/url"),
        Some(json!({ "url": url })),
    )
    .await;
    wait_for_text(
        session,
        "return document.getElementById('status').dataset.state",
        "open",
    )
    .await;
}

/// Runs `script` in the page and returns what it returns.
async fn run(session: &str, script: &str) -> Value {
    call(
        reqwest::Method::POST,
        format!("{session}/execute/sync"),
        Some(json!({ "script": script, "args": [] })),
    )
    .await
}

/// Clicks the element `css` finds, as a user would (WebDriver's own click).
async fn click(session: &str, css: &str) {
    let id = element(session, css).await;
    call(
        reqwest::Method::POST,
        format!("{session}/element/{id}/click"),
        Some(json!({})),
    )
    .await;
}

/// Focuses the element `css` finds and presses Enter there, as a keyboard user would.
async fn press_enter(session: &str, css: &str) {
    let id = element(session, css).await;
    call(
        reqwest::Method::POST,
        format!("{session}/element/{id}/value"),
        Some(json!({ "text": "\u{E007}" })),
    )
    .await;
}

/// The WebDriver reference of the element `css` finds.
async fn element(session: &str, css: &str) -> String {
    let element = call(
        reqwest::Method::POST,
        format!("{session}/element"),
        Some(json!({ "using": "css selector", "value": css })),
    )
    .await;
    element
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(Value::as_str)
        .expect("an element reference")
        .to_owned()
}

/// Sets the browser window's size in CSS pixels.
async fn resize(session: &str, width: u32, height: u32) {
    call(
        reqwest::Method::POST,
        format!("{session}/window/rect"),
        Some(json!({ "width": width, "height": height })),
    )
    .await;
}

/// Saves a screenshot of the page as `name` under the tests' output directory; returns
/// its path.
async fn screenshot(session: &str, name: &str) -> std::path::PathBuf {
    let png = call(reqwest::Method::GET, format!("{session}/screenshot"), None).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().expect("base64 text"))
        .expect("a base64 PNG");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, png).unwrap();
    path
}

/// A row of the page's topic list, as rendered.
#[derive(Debug, serde::Deserialize)]
struct TopicRow {
    name: String,
    kind: String,
    subscribers: u64,
    rate: f64,
    messages: u64,
    lagged: u64,
}

async fn topic_rows(session: &str) -> Vec<TopicRow> {
    let rows = run(
        session,
        "return JSON.stringify([...document.querySelectorAll('#topics tbody tr')].map((tr) => {
           const value = (cls) => tr.querySelector('.' + cls).dataset.value;
           return { name: tr.querySelector('.name').textContent, kind: value('kind'),
             subscribers: +value('subscribers'), rate: +value('rate'),
             messages: +value('messages'), lagged: +value('lagged') };
         }))",
    )
    .await;
    serde_json::from_str(rows.as_str().unwrap()).unwrap()
}

/// Waits until the topic list satisfies `ok`; returns it.
async fn wait_for_rows(
    session: &str,
    what: &str,
    ok: impl Fn(&[TopicRow]) -> bool,
) -> Vec<TopicRow> {
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = topic_rows(session).await;
        if ok(&rows) {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the topic list never showed {what}; it showed {rows:?}");
}

/// An entry of the page's message log, newest first, as rendered.
#[derive(Debug, serde::Deserialize)]
struct LogEntry {
    /// `message` or `notice`.
    class: String,
    /// A notice's signal (`lagged`, ...).
    kind: Option<String>,
    /// Time, id, tags.
    meta: Vec<String>,
    text: String,
}

async fn log_entries(session: &str) -> Vec<LogEntry> {
    let entries = run(
        session,
        "return JSON.stringify([...document.querySelectorAll('#log li:not(.empty)')].map((li) => ({
           class: li.className, kind: li.dataset.kind ?? null,
           meta: [...li.querySelectorAll('.meta > *')].map((e) => e.textContent),
           text: li.querySelector('.data').textContent })))",
    )
    .await;
    serde_json::from_str(entries.as_str().unwrap()).unwrap()
}

/// Waits until the log satisfies `ok`; returns it.
async fn wait_for_log(
    session: &str,
    what: &str,
    ok: impl Fn(&[LogEntry]) -> bool,
) -> Vec<LogEntry> {
    let mut entries = Vec::new();
    for _ in 0..100 {
        entries = log_entries(session).await;
        if ok(&entries) {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the log never showed {what}; it showed {entries:#?}");
}

/// The texts of the log's messages, newest first.
fn texts(entries: &[LogEntry]) -> Vec<&str> {
    entries
        .iter()
        .filter(|e| e.class == "message")
        .map(|e| e.text.as_str())
        .collect()
}

#[tokio::test]
async fn the_page_lists_topics_live_and_shows_history_live_messages_and_lag() {
    // A queue keeps 8 messages; a laggard's missed ones are dropped, and it is told.
    let hub = Hub::start(&[
        "--latest",
        "prices",
        "--queue-capacity",
        "8",
        "--overflow",
        "drop-oldest",
    ]);
    // Before the page opens: 12 orders (the last 8 are kept) and a price.
    let first_order = hub.published("orders", "order 1").await;
    for n in 2..=12 {
        hub.published("orders", &format!("order {n}")).await;
    }
    hub.published("prices", "EUR/USD 1.0832").await;
    // And a publisher that keeps going, over HTTP.
    let ticks = hub.url("/publish/ticks");
    let publisher = tokio::spawn(async move {
        for n in 1.. {
            let _ = client().post(&ticks).body(format!("tick {n}")).send().await;
            // Busier, then quieter: a rate worth a chart.
            let pause = if (n / 40) % 2 == 0 { 40 } else { 120 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    });

    let driver = start_driver().await;
    let (session, profile) = new_session(&driver, "live").await;
    // A 1200 x 800 page, whatever the window's own frame takes.
    resize(&session, 1200, 800).await;
    let frame = run(&session, "return window.outerHeight - window.innerHeight").await;
    resize(&session, 1200, 800 + frame.as_u64().unwrap_or(0) as u32).await;
    call(
        reqwest::Method::POST,
        format!("{session}/url"),
        Some(json!({ "url": hub.url("/?topic=prices") })),
    )
    .await;
    wait_for_text(
        &session,
        "return document.getElementById('hub-state').dataset.state",
        "open",
    )
    .await;

    // The list: every topic, its kind and counts; the busy one's count grows.
    let rows = wait_for_rows(&session, "three topics", |rows| rows.len() == 3).await;
    let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["orders", "prices", "ticks"]);
    let kinds: Vec<_> = rows.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["queue", "latest", "queue"]);
    assert_eq!((rows[0].messages, rows[1].messages), (12, 1));
    assert!(rows.iter().all(|r| r.lagged == 0), "{rows:?}");
    // The page itself listens to the topic it opened first, a latest-value topic: it
    // shows its current value.
    wait_for_rows(&session, "the page subscribed to prices", |rows| {
        rows.iter().map(|r| r.subscribers).collect::<Vec<_>>() == [0, 1, 0]
    })
    .await;
    let entries = wait_for_log(&session, "the current price", |e| e.len() == 1).await;
    assert_eq!(
        (entries[0].text.as_str(), entries[0].meta[2].as_str()),
        ("EUR/USD 1.0832", "retained")
    );
    let seen = rows[2].messages;
    assert!(seen > 0, "{rows:?}");
    let rows = wait_for_rows(&session, "ticks counting up at a rate", |rows| {
        rows.len() == 3 && rows[2].messages > seen && rows[2].rate > 0.0
    })
    .await;
    // 25 a second at most; the order topic is quiet.
    assert!(rows[2].rate <= 30.0, "{rows:?}");
    assert_eq!(rows[0].rate, 0.0, "{rows:?}");

    // Opening a topic (from the keyboard): what it retains first, newest at the top, with
    // ids and times.
    press_enter(&session, "tr[data-topic='orders'] button").await;
    wait_for_text(
        &session,
        "return document.getElementById('status').dataset.state",
        "open",
    )
    .await;
    let entries = wait_for_log(&session, "the 8 retained orders", |e| e.len() == 8).await;
    let expected: Vec<String> = (5..=12).rev().map(|n| format!("order {n}")).collect();
    assert_eq!(texts(&entries), expected);
    for (entry, n) in entries.iter().zip((5..=12).rev()) {
        let [time, id, tag] = &entry.meta[..] else {
            panic!("time, id and tag: {entry:?}");
        };
        assert!(id.starts_with(&format!("#{n}-")), "{entry:?}");
        assert_eq!(tag, "retained", "{entry:?}");
        assert!(time.len() >= 8 && time.contains(':'), "{entry:?}");
    }
    // Streaming in moves nothing: the log keeps its place and size.
    let log_box = "return JSON.stringify(document.getElementById('log').getBoundingClientRect())";
    let before = run(&session, log_box).await;

    // Then live ones, on top.
    hub.published("orders", "order 13").await;
    let entries = wait_for_log(&session, "a live order", |e| e.len() == 9).await;
    assert_eq!(entries[0].text, "order 13");
    assert_eq!(entries[0].meta[2], "live", "{:?}", entries[0]);
    assert_eq!(run(&session, log_box).await, before, "the log moved");
    wait_for_rows(&session, "a subscriber of orders", |rows| {
        rows.first().is_some_and(|r| r.subscribers == 1)
    })
    .await;
    // The list's updates leave the keyboard's focus where it was.
    assert_eq!(
        run(
            &session,
            "const focused = document.activeElement; \
             return focused.closest('tr')?.dataset.topic ?? focused.tagName"
        )
        .await,
        "orders"
    );

    // Resuming from an order no longer kept: the hub says how many were missed, and the
    // page shows that as a lag report, not as a message.
    open_page(
        &session,
        hub.url(&format!("/?topic=orders&after={first_order}")),
    )
    .await;
    let entries = wait_for_log(&session, "the lag report and what is kept", |e| {
        e.len() == 9
    })
    .await;
    let lag = entries.last().unwrap();
    assert_eq!(
        (lag.class.as_str(), lag.kind.as_deref()),
        ("notice", Some("lagged")),
        "{entries:#?}"
    );
    // Order 1 was seen; 13 were published and 8 are kept (6 to 13): 2 to 5 are gone.
    assert!(lag.text.contains("missed 4 message"), "{lag:?}");
    assert!(lag.meta.contains(&"lagged".to_owned()), "{lag:?}");
    let expected: Vec<String> = (6..=13).rev().map(|n| format!("order {n}")).collect();
    assert_eq!(texts(&entries), expected);
    assert!(
        !texts(&entries).iter().any(|t| t.contains("missed")),
        "a lag report rendered as a message: {entries:#?}"
    );
    wait_for_rows(&session, "the lag report counted", |rows| {
        rows.first().is_some_and(|r| r.lagged >= 1)
    })
    .await;
    // Ten seconds of rates, for a chart worth a look.
    wait_for_text(
        &session,
        "return String(rates.get('ticks')?.length >= 10)",
        "true",
    )
    .await;
    let path = screenshot(&session, "hub-page.png").await;
    eprintln!("screenshot: {}", path.display());

    // Narrow: readable at 400 px, nothing wider than the window.
    resize(&session, 400, 800).await;
    let overflow = run(
        &session,
        "const wider = (e) => e.scrollWidth - e.clientWidth;
         return [wider(document.documentElement), wider(document.querySelector('.table-wrap'))]",
    )
    .await;
    let narrow = screenshot(&session, "hub-page-400.png").await;
    assert_eq!(
        overflow,
        json!([0, 0]),
        "the page, or its topic list, is wider than a 400 px window: {}",
        narrow.display()
    );

    publisher.abort();
    call(reqwest::Method::DELETE, session, None).await;
    let _ = std::fs::remove_dir_all(profile);
}

#[tokio::test]
async fn the_page_shows_published_messages_live_and_publishes_itself() {
    let hub = Hub::start(&[]);
    let driver = start_driver().await;
    let (session, profile) = new_session(&driver, "one").await;

    open_page(&session, hub.url("/?topic=browser")).await;

    // curl's part: publish; the browser's EventSource shows it.
    hub.published("browser", "hello from an HTTP client").await;
    wait_for_text(
        &session,
        "return document.getElementById('log').textContent",
        "hello from an HTTP client",
    )
    .await;

    // The page's part: publish from its form, with an event type; an SSE client receives
    // it, and so does the page.
    let mut sse = hub.events("/events/browser", &[]).await;
    run(
        &session,
        "document.getElementById('message').value = 'hello from the page'; \
         document.getElementById('event').value = 'greeting';",
    )
    .await;
    click(&session, "#publish button").await;
    let received = sse.next().await;
    assert_eq!(
        (received.event.as_str(), received.data.as_str()),
        ("greeting", "hello from the page")
    );
    let entries = wait_for_log(&session, "the page's own message", |e| {
        e.first().is_some_and(|e| e.text == "hello from the page")
    })
    .await;
    assert!(
        entries[0].meta.contains(&"event: greeting".to_owned()),
        "{:?}",
        entries[0]
    );

    // The hub goes away: the page says it is trying again, as its EventSources do.
    drop(hub);
    for state in ["status", "hub-state"] {
        wait_for_text(
            &session,
            &format!(
                "const e = document.getElementById('{state}'); \
                 return e.dataset.state + ': ' + e.textContent"
            ),
            "connecting: ",
        )
        .await;
        let shown = run(
            &session,
            &format!("return document.getElementById('{state}').textContent"),
        )
        .await;
        assert!(
            shown.as_str().unwrap().contains("reconnecting"),
            "{state}: {shown}"
        );
    }

    call(reqwest::Method::DELETE, session, None).await;
    let _ = std::fs::remove_dir_all(profile);
}

#[path = "../../../adapters/redis/tests/support/mod.rs"]
mod redis_server;

#[tokio::test]
async fn browsers_on_two_hubs_see_what_another_program_publishes_to_redis() {
    let server = redis_server::RedisServer::start();
    let hubs = [
        Hub::start(&["--redis", &server.url()]),
        Hub::start(&["--redis", &server.url()]),
    ];
    let driver = start_driver().await;
    let mut sessions = Vec::new();
    for (n, hub) in hubs.iter().enumerate() {
        let (session, profile) = new_session(&driver, &format!("hub{n}")).await;
        open_page(&session, hub.url("/?topic=shared")).await;
        sessions.push((session, profile));
    }

    server.cli(&[
        "XADD",
        "storecast:shared",
        "*",
        "data",
        "hello from redis-cli",
    ]);
    for (session, _) in &sessions {
        wait_for_text(
            session,
            "return document.getElementById('log').textContent",
            "hello from redis-cli",
        )
        .await;
    }

    for (session, profile) in sessions {
        call(reqwest::Method::DELETE, session, None).await;
        let _ = std::fs::remove_dir_all(profile);
    }
}
