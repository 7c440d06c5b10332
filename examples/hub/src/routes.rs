//! The HTTP interface: publish, subscribe (SSE, WebSocket), the page, health, metrics,
//! and the checks every request passes (tokens, CORS, limits).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use storecast::{Store, SubmitError};
use storecast_tokio::{EventSource, WebSocketSubscriber, last_event_id};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::topics::{HubMessage, Topic, TopicError, Topics};

/// What every handler shares.
#[derive(Debug)]
pub struct Hub {
    pub config: Config,
    pub topics: Topics,
    pub metrics: Arc<Metrics>,
}

type Shared = State<Arc<Hub>>;

/// The hub's routes.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
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

#[derive(Debug, Default, Deserialize)]
struct Params {
    token: Option<String>,
    event: Option<String>,
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

/// Whether the request carries `expected` (as a bearer token or `?token=`); no token
/// configured means anyone may.
fn authorized(expected: &Option<String>, headers: &HeaderMap, params: &Params) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let given = bearer.or(params.token.as_deref());
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
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&hub.config.publish_token, &headers, &params) {
        return unauthorized("publish").into_response();
    }
    let topic = match topic(&hub, &name).await {
        Ok(topic) => topic,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(data) = String::from_utf8(body.to_vec()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the message body must be UTF-8 text",
        );
    };
    if let Some(event) = &params.event
        && (event.is_empty() || event.contains(['\r', '\n']))
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the event type must be non-empty and on one line",
        );
    }
    if let Some(event) = &params.event
        && storecast::sse::event_types::ALL.contains(&event.as_str())
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("the event type {event:?} is the hub's own signal; choose another"),
        );
    }
    match topic
        .submit(HubMessage {
            event: params.event,
            data,
        })
        .await
    {
        Ok(position) => (
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"topic\":\"{name}\",\"id\":\"{position}\"}}\n"),
        )
            .into_response(),
        Err(SubmitError::Unavailable(_)) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Redis is unavailable or did not answer in time; the message was probably not published; try again later",
        ),
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"),
    }
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
    headers: HeaderMap,
) -> Response {
    let topic = match admit(&hub, &headers, &params, &name).await {
        Ok(topic) => topic,
        Err(refusal) => return refusal.into_response(),
    };
    let mut source = EventSource::new(topic).keep_alive(hub.config.keep_alive());
    if let Some(retry) = hub.config.retry_ms {
        source = source.retry(std::time::Duration::from_millis(retry));
    }
    source.respond(last_event_id(&headers, params.last_event_id.as_deref()))
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

async fn metrics(State(hub): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        hub.metrics.render(&hub.topics.stats()),
    )
        .into_response()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}; see GET / and --help", uri.path()),
    )
}

/// CORS for the configured origins (answering preflights), and counting refusals.
async fn cors_and_accounting(State(hub): Shared, request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let allowed = origin.as_ref().and_then(|origin| {
        let origin_str = origin.to_str().ok()?;
        let origins = &hub.config.cors_origins;
        if origins.iter().any(|o| o == "*") {
            Some(HeaderValue::from_static("*"))
        } else if origins.iter().any(|o| o == origin_str) {
            Some(origin.clone())
        } else {
            None
        }
    });
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
    } else {
        next.run(request).await
    };
    if let Some(allowed) = allowed {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("origin"));
    }
    if response.status().is_client_error() || response.status().is_server_error() {
        hub.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(status = %response.status(), "request refused");
    }
    response
}
