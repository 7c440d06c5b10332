//! A real browser: headless Chromium, driven through ChromeDriver's WebDriver API, opens
//! the hub's page; its EventSource shows a message published with an HTTP client, and its
//! publish form reaches an SSE client. With two hubs on one Redis, a message another
//! program adds to Redis shows in the pages of both.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`ci/test.sh` installs them).

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// Runs `script` in the page until it returns a string containing `wanted`.
async fn wait_for_text(session: &str, script: &str, wanted: &str) -> String {
    let mut last = String::new();
    for _ in 0..100 {
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
                    "--disable-component-update", "--disable-sync",
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

/// Opens `url` in the session and waits for the page's EventSource to connect.
async fn open_page(session: &str, url: String) {
    call(
        reqwest::Method::POST,
        format!("{session}/url"),
        Some(json!({ "url": url })),
    )
    .await;
    wait_for_text(
        session,
        "return document.getElementById('status').textContent",
        "connected",
    )
    .await;
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

    // The page's part: publish from its form; an SSE client receives it.
    let mut sse = hub.events("/events/browser", &[]).await;
    call(
        reqwest::Method::POST,
        format!("{session}/execute/sync"),
        Some(json!({
            "script": "document.getElementById('message').value = 'hello from the page'; \
                       document.querySelector('#publish button').click();",
            "args": [],
        })),
    )
    .await;
    assert_eq!(sse.next().await.data, "hello from the page");

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
