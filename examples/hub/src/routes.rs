//! The HTTP interface: publish, subscribe (SSE, WebSocket), the page, health, metrics,
//! and the checks every request passes (tokens, CORS, limits).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use storecast::{Start, SubmitError};
use storecast_tokio::{EventSource, WebSocketSubscriber, last_event_id};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::stats::Snapshots;
use crate::topics::{HubMessage, KeyedError, Topic, TopicError, Topics};

/// How many topics `/metrics` and `/stats` show figures for (those with the most
/// subscribers).
pub const TOPIC_SERIES: usize = 100;

/// What every handler shares.
#[derive(Debug)]
pub struct Hub {
    pub config: Config,
    pub topics: Topics,
    pub metrics: Arc<Metrics>,
    /// What `/stats` streams send.
    pub stats: Snapshots,
}

type Shared = State<Arc<Hub>>;

/// The hub's routes.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .route("/publish/{topic}", post(publish))
        .route("/events/{topic}", get(events))
        .route("/ws/{topic}", get(websocket))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(hub.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&hub),
            cors_and_accounting,
        ))
        .with_state(hub)
}

/// A refusal with a message a client can act on.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    Refusal::new(status, message).into_response()
}

/// A request the hub will not serve: the status and why.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, format!("{}\n", self.message)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The query parameters the hub reads.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    /// A token, for clients that cannot send `Authorization` (see [`authorized`]).
    pub token: Option<String>,
    /// Where an SSE client resumes, for clients that cannot send `Last-Event-ID`.
    #[serde(rename = "lastEventId")]
    pub last_event_id: Option<String>,
    /// Where a new SSE subscriber starts: `oldest` (the oldest retained message) or
    /// `now` (the default).
    pub from: Option<String>,
}

/// Whether the request carries `expected`: as `Authorization: Bearer TOKEN` (the scheme in
/// any case), or, only when there is no `Authorization` header at all, as `?token=` (for
/// clients that cannot set headers). No token configured means anyone may.
pub fn authorized(expected: &Option<String>, headers: &HeaderMap, params: &Params) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let given = match headers.get(header::AUTHORIZATION) {
        Some(value) => value.to_str().ok().and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        }),
        None => params.token.as_deref(),
    };
    // Compared without an early exit, so timing does not reveal a matching prefix.
    given.is_some_and(|given| {
        given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    })
}

fn unauthorized(what: &str) -> Refusal {
    Refusal::new(
        StatusCode::UNAUTHORIZED,
        format!("a valid token is required to {what} (Authorization: Bearer TOKEN, or ?token=)"),
    )
}

async fn topic(hub: &Hub, name: &str) -> Result<Topic, Refusal> {
    hub.topics.get(name).await.map_err(|e| match e {
        TopicError::BadName => Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("bad topic name {name:?}: use 1 to 128 of A-Z a-z 0-9 . _ -"),
        ),
        TopicError::TooMany(max) => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the hub already has its maximum of {max} topics"),
        ),
        TopicError::Unavailable => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("topic {name:?} is unavailable: its Redis cannot be reached; try again later"),
        ),
    })
}

async fn publish(
    State(hub): Shared,
    Path(name): Path<String>,
    Query(params): Query<Params>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if !authorized(&hub.config.publish_token, &headers, &params) {
        return unauthorized("publish").into_response();
    }
    // Everything about the request is checked before its topic is made: a refused
    // request creates nothing.
    let event = match event_type(uri.query()) {
        Ok(event) => event,
        Err(refusal) => return refusal.into_response(),
    };
    let key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(refusal) => return refusal.into_response(),
    };
    let limit = hub.config.max_body_bytes;
    let read =
        tokio::time::timeout(hub.config.body_timeout(), axum::body::to_bytes(body, limit)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the message body is over {limit} bytes (--max-body-bytes)"),
            );
        }
        Err(_) => {
            hub.metrics.body_timeouts.fetch_add(1, Ordering::Relaxed);
            let mut response = refuse(
                StatusCode::REQUEST_TIMEOUT,
                "the message body did not arrive in time (--body-timeout-secs)",
            );
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let Ok(data) = String::from_utf8(bytes.to_vec()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the message body must be UTF-8 text",
        );
    };
    let size = (data.len() + event.as_ref().map_or(0, String::len)) as u64;
    let over_budget = |hub: &Hub| {
        hub.metrics.over_budget.fetch_add(1, Ordering::Relaxed);
        refuse(
            StatusCode::INSUFFICIENT_STORAGE,
            "the hub retains as many message bytes as it may (--max-retained-bytes); try again later, or publish less",
        )
    };
    // A new topic replaces nothing: refused before it is made.
    let retained = hub.metrics.retained_bytes.load(Ordering::Relaxed);
    if !hub.topics.exists(&name) && retained + size > hub.config.max_retained_bytes {
        return over_budget(&hub);
    }
    let topic = match topic(&hub, &name).await {
        Ok(topic) => topic,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(reservation) = topic.reserve(size, hub.config.max_retained_bytes) else {
        return over_budget(&hub);
    };
    let submitted = topic
        .submit_keyed(HubMessage::new(event, data), key.as_deref())
        .await;
    // Nothing retained for a publish that was not added (refused, or a repeat of a key);
    // one that may have been is counted.
    if !matches!(
        submitted,
        Ok((_, true)) | Err(KeyedError::Store(SubmitError::OutcomeUnknown(())))
    ) {
        topic.unreserve(reservation);
    }
    match submitted {
        Ok((position, _)) => (
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"topic\":\"{name}\",\"id\":\"{position}\"}}\n"),
        )
            .into_response(),
        Err(KeyedError::InProgress) => refuse(
            StatusCode::CONFLICT,
            "a publish with this Idempotency-Key is under way; ask again to learn its id",
        ),
        Err(KeyedError::Store(SubmitError::Unavailable(_))) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Redis is unavailable; the message was not published; try again later",
        ),
        Err(KeyedError::Store(SubmitError::OutcomeUnknown(_))) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Redis did not answer in time: the message MAY HAVE BEEN PUBLISHED. Publish it again \
             with the same Idempotency-Key header to have it exactly once (without one, a retry \
             may add it twice)",
        ),
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"),
    }
}

/// The `Idempotency-Key` header of a publish, checked: 1 to 128 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_owned()))
        }
        _ => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "the Idempotency-Key header must be 1 to 128 visible ASCII characters",
        )),
    }
}

/// The `?event=` of a publish, checked: valid UTF-8 once decoded (never replaced with
/// U+FFFD), non-empty, on one line, and none of the hub's own signals.
fn event_type(query: Option<&str>) -> Result<Option<String>, Refusal> {
    let bad = |message: String| Err(Refusal::new(StatusCode::BAD_REQUEST, message));
    let Some(raw) = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("event="))
    else {
        return Ok(None);
    };
    let Some(bytes) = percent_decode(raw) else {
        return bad("the event type is not properly percent-encoded".into());
    };
    let Ok(event) = String::from_utf8(bytes) else {
        return bad("the event type must be UTF-8 text".into());
    };
    if event.is_empty() || event.contains(['\r', '\n']) {
        return bad("the event type must be non-empty and on one line".into());
    }
    if storecast::sse::event_types::ALL.contains(&event.as_str()) {
        return bad(format!(
            "the event type {event:?} is the hub's own signal; choose another"
        ));
    }
    Ok(Some(event))
}

/// A query value decoded (`+` is a space, `%XX` a byte); `None` if a `%` is not followed
/// by two hexadecimal digits.
fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(byte) = bytes.next() {
        out.push(match byte {
            b'+' => b' ',
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            other => other,
        });
    }
    Some(out)
}

/// Checks a subscription request: token and connection cap.
async fn admit(
    hub: &Hub,
    headers: &HeaderMap,
    params: &Params,
    name: &str,
) -> Result<Topic, Refusal> {
    if !authorized(&hub.config.subscribe_token, headers, params) {
        return Err(unauthorized("subscribe"));
    }
    let open = hub.metrics.connections.load(Ordering::Relaxed);
    if open >= hub.config.max_connections {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the hub is at its maximum of {open} subscribers; try again later"),
        ));
    }
    topic(hub, name).await
}

async fn events(
    State(hub): Shared,
    Path(name): Path<String>,
    Query(params): Query<Params>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if method == Method::HEAD {
        // What a GET would answer, without subscribing (or making the topic).
        if !authorized(&hub.config.subscribe_token, &headers, &params) {
            return unauthorized("subscribe").into_response();
        }
        let mut response = StatusCode::OK.into_response();
        for (name, value) in storecast::sse::HEADERS {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        return response;
    }
    let oldest = match params.from.as_deref() {
        None | Some("now") => false,
        Some("oldest") => true,
        Some(other) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("from={other:?}: use from=oldest (what the topic retains) or from=now"),
            );
        }
    };
    let topic = match admit(&hub, &headers, &params, &name).await {
        Ok(topic) => topic,
        Err(refusal) => return refusal.into_response(),
    };
    let mut source = EventSource::new(topic).keep_alive(hub.config.keep_alive());
    if let Some(retry) = hub.config.retry_ms {
        source = source.retry(std::time::Duration::from_millis(retry));
    }
    match last_event_id(&headers, params.last_event_id.as_deref()) {
        // A reconnecting client resumes where it was, whatever it first asked for.
        None if oldest => source.stream_from(Start::Oldest),
        resume => source.respond(resume),
    }
}

async fn websocket(
    State(hub): Shared,
    Path(name): Path<String>,
    Query(params): Query<Params>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let topic = match admit(&hub, &headers, &params, &name).await {
        Ok(topic) => topic,
        Err(refusal) => return refusal.into_response(),
    };
    WebSocketSubscriber::new(topic)
        .ping_every(hub.config.keep_alive())
        .upgrade(upgrade, params.last_event_id.as_deref())
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn metrics(State(hub): Shared, Query(params): Query<Params>, headers: HeaderMap) -> Response {
    if !authorized(&hub.config.metrics_token, &headers, &params) {
        return unauthorized("read the metrics").into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        hub.metrics
            .render(hub.topics.len(), &hub.topics.stats(TOPIC_SERIES)),
    )
        .into_response()
}

/// The hub's figures as SSE, a snapshot a second (see [`crate::stats`]); guarded like
/// `/metrics`.
async fn stats(State(hub): Shared, Query(params): Query<Params>, headers: HeaderMap) -> Response {
    if !authorized(&hub.config.metrics_token, &headers, &params) {
        return unauthorized("read the stats").into_response();
    }
    hub.stats.respond()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}; see GET / and --help", uri.path()),
    )
}

/// CORS for the configured origins (answering preflights), and counting refusals.
///
/// A request from a page of another origin than the hub's own or those of `--cors-origin`
/// that would act (a publish, a WebSocket upgrade) gets 403: a browser would send it and
/// only hide the answer. Reads (SSE, the page) are left to the browser's own CORS checks.
/// (The hub's own origin is told by the `Host` header; a hub reachable by name from the
/// internet should list its origins.)
async fn cors_and_accounting(State(hub): Shared, request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let allowed = allowed_origin(&hub.config.cors_origins, origin.as_ref());
    let acts = request.method() == Method::POST
        || request
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    // Without --cors-origin no other origin is allowed to act either: a page elsewhere
    // must not publish to a hub on the user's machine.
    let foreign = origin.is_some() && allowed.is_none();
    let mut response = if request.method() == Method::OPTIONS && origin.is_some() {
        if allowed.is_some() {
            let mut preflight = StatusCode::NO_CONTENT.into_response();
            let headers = preflight.headers_mut();
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, last-event-id"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            preflight
        } else {
            refuse(
                StatusCode::FORBIDDEN,
                "this origin is not allowed (see --cors-origin)",
            )
        }
    } else if foreign && acts && !same_origin(request.headers(), origin.as_ref()) {
        refuse(
            StatusCode::FORBIDDEN,
            "this origin is not allowed to publish or open a WebSocket here (see --cors-origin)",
        )
    } else {
        next.run(request).await
    };
    // Answers differ by origin, so caches must keep them apart.
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("origin"));
    if let Some(allowed) = allowed {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
    }
    if response.status().is_client_error() || response.status().is_server_error() {
        hub.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(status = %response.status(), "request refused");
    }
    response
}

/// The `Access-Control-Allow-Origin` a request from `origin` gets, if it is one of
/// `origins` (`*`: any).
pub fn allowed_origin(origins: &[String], origin: Option<&HeaderValue>) -> Option<HeaderValue> {
    let origin = origin?;
    let origin_str = origin.to_str().ok()?;
    if origins.iter().any(|o| o == "*") {
        Some(HeaderValue::from_static("*"))
    } else if origins.iter().any(|o| o == origin_str) {
        Some(origin.clone())
    } else {
        None
    }
}

/// Whether `origin` is the hub itself (its own page): the `Host` the request was sent to.
pub fn same_origin(headers: &HeaderMap, origin: Option<&HeaderValue>) -> bool {
    let (Some(origin), Some(host)) = (origin, headers.get(header::HOST)) else {
        return false;
    };
    let (Ok(origin), Ok(host)) = (origin.to_str(), host.to_str()) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}
