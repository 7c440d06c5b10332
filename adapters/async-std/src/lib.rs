//! storecast on async-std, and so on smol: run a store's background work on async-std's
//! tasks and timers, and serve subscribers over HTTP (hyper 1.x over `async-io`) as
//! Server-Sent Events ([`EventSource`]) and WebSocket ([`WebSocketSubscriber`]).
//!
//! The names and behaviour follow `storecast-tokio`: [`forward`], [`every`],
//! [`shutdown_signal`], `EventSource::new(store).keep_alive(..).retry(..)`,
//! `WebSocketSubscriber::new(store).ping_every(..)`. What is sent (store semantics, SSE
//! framing, WebSocket JSON) comes from the core crate; this crate holds only what is
//! specific to the runtime: tasks, timers, sockets.
//!
//! async-std is discontinued upstream in favour of smol, and runs on smol's building
//! blocks (`async-io`, `async-executor`): everything here also runs under
//! `smol::block_on`, which the tests check.
//!
//! ```no_run
//! use storecast::DataStore;
//! use storecast_async_std::{EventSource, serve};
//!
//! # async_std::task::block_on(async {
//! let numbers = DataStore::new();
//! numbers.try_submit(String::from("42")).unwrap();
//! let source = EventSource::new(numbers);
//! let listener = async_std::net::TcpListener::bind("127.0.0.1:8000").await?;
//! serve(listener, move |request| {
//!     let response = source.respond(&request);
//!     async move { response }
//! })
//! .await
//! # });
//! ```

#![warn(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]

mod event_source;
mod http;
mod shutdown;
mod tasks;
mod websocket;

pub use event_source::{EventSource, last_event_id};
pub use http::{Body, serve};
pub use shutdown::shutdown_signal;
pub use tasks::{every, forward};
pub use websocket::WebSocketSubscriber;
