//! Graceful shutdown.

/// Resolves when the process is asked to stop: SIGINT (Ctrl-C) or, on Unix, SIGTERM.
///
/// Pass it to `axum::serve(..).with_graceful_shutdown(..)`, then close your stores, so
/// that every stream ends properly (subscribers receive what is left, then the end).
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
