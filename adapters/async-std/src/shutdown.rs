//! Graceful shutdown.

use futures_lite::StreamExt;

/// Resolves when the process is asked to stop: SIGINT (Ctrl-C) or SIGTERM.
///
/// Race it against [`serve`](crate::serve), then close your stores, so that every stream
/// ends properly (subscribers receive what is left, then the end).
pub async fn shutdown_signal() {
    use async_signal::{Signal, Signals};
    match Signals::new([Signal::Int, Signal::Term]) {
        Ok(mut signals) => {
            signals.next().await;
        }
        Err(e) => {
            tracing::warn!("cannot listen for signals: {e}");
            std::future::pending::<()>().await
        }
    }
}
