//! Publish live data to many listeners.
//!
//! A *store* holds data; *subscribers* listen to it; whatever is submitted reaches them.
//! storecast is a Rust take on the data stores of Tornadose, with two semantics:
//!
//! - **Latest value** ([`DataStore`]): subscribers see the newest value. A new subscriber
//!   gets the current value first; values submitted faster than it reads may be skipped,
//!   but it never sees one twice or out of order, and always ends with the last.
//! - **Queue** ([`QueueStore`]): every subscriber gets every message submitted after it
//!   subscribed, in order, none missed, from a bounded ring shared by all subscribers.
//!   When the slowest subscriber is a whole ring behind, an explicit [`Overflow`] policy
//!   decides: wait (lossless), drop the oldest and tell the laggard, or disconnect it.
//!
//! Every message has a [`Position`]: the [`Epoch`] of its store (its identity) and an
//! offset that only grows. A subscriber can resume after a position it saw (SSE
//! `Last-Event-ID`) with [`Start::After`]; a position the store cannot place (another
//! epoch, such as a server that restarted, or ahead) is told as [`RecvError::Reset`],
//! never taken as "now". Subscribers have `recv().await`, `try_recv()` and (with `std`)
//! `recv_blocking()`, and are [`Stream`](futures_core::Stream)s of [`Item`]s; dropping
//! one deregisters it. After [`close`](Store::close), or once the last handle to
//! a store is dropped, subscribers receive what is left and then their streams end.
//! Values are shared (`Arc`), never cloned per subscriber, so `T` needs no `Clone`.
//!
//! The crate names no runtime: it runs on Tokio, async-std, smol or any executor. The
//! adapter crates (`storecast-tokio`, `storecast-async-std`, `storecast-redis`) add
//! runtime tasks, HTTP handlers and Redis-backed stores on top.
//!
//! ```
//! use futures_lite::future::block_on;
//! use storecast::QueueStore;
//!
//! let store = QueueStore::new(64);
//! let mut subscriber = store.subscribe();
//! block_on(async {
//!     store.submit("hello").await.unwrap();
//!     let message = subscriber.recv().await.unwrap();
//!     assert_eq!((*message, message.position().offset()), ("hello", 1));
//! });
//! ```
//!
//! # Features
//!
//! | features | what you get | for |
//! |---|---|---|
//! | `std` (default) | everything below, plus operating-system locks | servers, desktops |
//! | `alloc` only | [`DataStore`], [`QueueStore`] (values shared in `Arc`s), the [`Store`] trait; `#![no_std]` with a global allocator | kernels, embedded with a heap |
//! | neither | [`fixed::DataStore`], [`fixed::QueueStore`]: capacity and subscriber limit as const generics, `const fn new()` for a `static`, values cloned into each subscriber, a lock of your choice ([`fixed::RawMutex`]); no allocator at all | microcontrollers: Cortex-M0/M0+, M3, M4F, RISC-V 32 |
//! | `critical-section` | `fixed::CriticalSectionRawMutex`, for stores that interrupt handlers submit to | interrupts |
//! | `sink` | `sink::StoreSink`: a store as a `futures_sink::Sink`, for `stream.forward(sink)` | feeding a store from a stream |
//! | `conformance` | `storecast::conformance`: the executor-agnostic checks any store must pass | testing a store |
//!
//! Positions, [`Start`], [`Overflow`], closing and the errors are the same in every row.
//! Without `std` no randomness is drawn: the stores take their epoch from the caller
//! (`with_epoch`).
//! Without `std` the heap stores' locks spin, and so does a fixed store's default lock
//! (a critical section where the target has no compare-and-swap); a fixed store that an
//! interrupt handler submits to names `CriticalSectionRawMutex` (see [`fixed`]). Every
//! critical section is a few assignments and a clone, never user callbacks (but for the
//! closure of `DataStore::submit_modify`, which runs under the submitters' lock).
//! `ci/no-std.sh` links and runs a no-allocator binary and an alloc-only one, and
//! `ci/embedded.sh` builds the core for four microcontroller targets and runs a program
//! whose interrupt handler feeds static stores in QEMU, on every CI run.

#![no_std]
#![warn(missing_docs, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod error;
mod overflow;
mod position;
mod recv;

pub use error::{RecvError, ResetReason, SubmitError, TryRecvError, TrySubmitError};
pub use overflow::Overflow;
pub use position::{Epoch, ParsePositionError, Position, Start};
pub use recv::Recv;

pub mod fixed;

#[cfg(feature = "alloc")]
mod backpressure;
#[cfg(feature = "alloc")]
mod boxed;
#[cfg(feature = "alloc")]
mod data_store;
#[cfg(feature = "alloc")]
pub mod drive;
#[cfg(feature = "alloc")]
mod notify;
#[cfg(feature = "alloc")]
mod queue_store;
#[cfg(feature = "sink")]
pub mod sink;
#[cfg(feature = "alloc")]
mod slot;
#[cfg(feature = "alloc")]
pub mod sse;
#[cfg(feature = "alloc")]
mod store;
mod sync;
#[cfg(feature = "alloc")]
mod wait;
#[cfg(feature = "alloc")]
pub mod websocket;

#[cfg(feature = "alloc")]
pub use boxed::{BoxStore, BoxSubscriber};
#[cfg(feature = "alloc")]
pub use data_store::{DataStore, DataSubscriber};
#[cfg(feature = "alloc")]
pub use queue_store::{Batch, QueueStore, QueueSubscriber};
#[cfg(feature = "alloc")]
pub use store::{Item, Message, Store, Subscriber};

#[cfg(feature = "conformance")]
pub mod conformance;

#[cfg(all(feature = "alloc", not(target_has_atomic = "ptr")))]
compile_error!(
    "storecast's `alloc` stores share values through `Arc`, which needs pointer-sized \
     compare-and-swap, and this target has none (Cortex-M0/M0+, riscv32imc): use the \
     fixed-capacity stores (`default-features = false`)"
);
