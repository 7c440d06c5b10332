//! storecast on Tokio: run a store's background work on Tokio tasks and timers, and
//! serve subscribers over HTTP with axum, as Server-Sent Events ([`EventSource`]) and
//! WebSocket ([`WebSocketSubscriber`]).
//!
//! Everything about *what* is sent (the store semantics, SSE framing, WebSocket JSON)
//! lives in the core crate; this crate holds what is specific to Tokio and axum: tasks,
//! timers, the HTTP types.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use storecast::DataStore;
//! use storecast_tokio::{EventSource, every};
//!
//! # async fn run() -> std::io::Result<()> {
//! // Tornadose's demo: a random number every second, to every browser that listens.
//! let numbers = DataStore::new();
//! every(numbers.clone(), Duration::from_secs(1), || fastrand_number().to_string());
//! let app = Router::new().route("/", get(EventSource::new(numbers).handler()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, app).await
//! # }
//! # fn fastrand_number() -> u32 { 4 }
//! ```

#![warn(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]

mod event_source;
mod shutdown;
mod tasks;
mod timer;
mod websocket;

pub use event_source::{EventSource, last_event_id};
pub use shutdown::shutdown_signal;
pub use tasks::{every, forward};
pub use websocket::WebSocketSubscriber;
