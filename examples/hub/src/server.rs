//! Serving HTTP with every clock a public server needs: a request head must arrive in time
//! (which also closes idle keep-alive connections), a socket that accepts nothing for too
//! long is dropped (a subscriber that stopped reading), and shutdown ends within a
//! deadline whatever the clients do.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;

use crate::direct::{self, Replay, Served};
use crate::metrics::Metrics;
use crate::routes::Hub;

/// The clocks of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A request head must arrive within this, counted from the connection's opening or
    /// the end of its previous response (so an idle keep-alive connection closes too).
    pub head: Duration,
    /// A socket that accepts no byte for this long is closed.
    pub write: Duration,
    /// After the shutdown signal, connections still open after this are dropped.
    pub shutdown: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, asks every
/// connection to finish (`closing` should end the streams), and returns once they are all
/// closed or `timeouts.shutdown` has passed. With `direct`, subscriptions (SSE and
/// WebSocket) are served on the socket rather than by `app` (see [`direct`]).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    app: Router,
    direct: Option<Arc<Hub>>,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
    max_sockets: usize,
    shutdown: impl Future<Output = ()>,
    closing: impl FnOnce(),
) {
    // Dropped when shutdown begins: every connection task sees its sender go.
    let (stop_tx, stop_rx) = watch::channel(());
    // Held by every connection task: when all are gone, the receiver's `closed` resolves.
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: wait a little rather than spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let open = metrics.sockets.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = SocketGuard(Arc::clone(&metrics));
        if open > max_sockets {
            metrics.refused_sockets.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(refuse(stream, guard));
            continue;
        }
        let app = app.clone();
        let direct = direct.clone();
        let counted = (guard, open_tx.clone());
        let mut stop = stop_rx.clone();
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let read = match &direct {
                Some(hub) => {
                    let served =
                        direct::serve(hub, &stream, timeouts.head, timeouts.write, &mut stop);
                    match served.await {
                        Served::Done => return,
                        Served::Elsewhere(read) => read,
                    }
                }
                None => Vec::new(),
            };
            // The socket carries its count and its share of the shutdown wait with it,
            // also into a WebSocket that outlives the HTTP connection it was upgraded from.
            let socket = WriteTimeout {
                inner: stream,
                limit: timeouts.write,
                stalled: None,
                metrics: Arc::clone(&metrics),
                _counted: counted,
            };
            serve_http(Replay::new(read, socket), app, timeouts.head, metrics, stop).await;
        });
    }
    drop(listener);
    closing();
    drop(stop_tx);
    drop(open_tx);
    let open = metrics.sockets.load(Ordering::Relaxed);
    tracing::info!(open, "waiting for connections to close");
    let all_closed = async {
        let mut open_rx = open_rx;
        // `changed` fails once every sender (one per connection) is gone.
        while open_rx.changed().await.is_ok() {}
    };
    // Part of the deadline is kept for what follows (closing Redis, the runtime), so
    // that the process is gone within it.
    let waiting = timeouts.shutdown.saturating_sub(Duration::from_millis(500));
    if tokio::time::timeout(waiting, all_closed).await.is_err() {
        tracing::warn!(
            open = metrics.sockets.load(Ordering::Relaxed),
            "connections still open at the shutdown deadline are dropped"
        );
    }
}

/// Serves `io` with hyper until the client or `app` ends it, or shutdown (`stop`) finds
/// it idle.
///
/// Made and boxed in a plain function: a connection served directly never holds room
/// for hyper's state (an `async` caller keeps room for a future it builds inline, even
/// one it boxes at once).
fn serve_http(
    io: Replay<WriteTimeout>,
    app: Router,
    head_timeout: Duration,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<()>,
) -> Pin<Box<impl Future<Output = ()> + Send>> {
    Box::pin(serve_http_inline(io, app, head_timeout, metrics, stop))
}

async fn serve_http_inline(
    io: Replay<WriteTimeout>,
    app: Router,
    head_timeout: Duration,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<()>,
) {
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    if e.is_timeout() {
                        metrics.head_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!("connection ended: {e}");
                }
                break;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answers a connection over the socket cap with 503 and closes it.
async fn refuse(mut stream: TcpStream, _guard: SocketGuard) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str = "the hub has as many connections as it can hold; try again later\n";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(response.as_bytes()),
    )
    .await;
}

/// Counts an open socket while it lives.
struct SocketGuard(Arc<Metrics>);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket whose writes fail with `TimedOut` once it has accepted nothing for `limit`:
/// hyper then drops the connection, and with it the subscriber it was streaming (SSE, or
/// a WebSocket after the upgrade, which keeps this socket).
struct WriteTimeout {
    inner: TcpStream,
    limit: Duration,
    /// Running while a write (or flush) is pending.
    stalled: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
    /// Counts the socket while it lives, and holds shutdown until it is closed.
    _counted: (SocketGuard, watch::Sender<()>),
}

impl WriteTimeout {
    /// Passes a write's outcome on, starting or clearing the clock.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => {
                let limit = self.limit;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if stalled.as_mut().poll(cx).is_ready() {
                    self.metrics.write_timeouts.fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer accepted nothing within the write timeout",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for WriteTimeout {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.timed(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.timed(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.timed(cx, polled)
    }
}

/// Raises the soft limit of open files to the hard limit; returns the limit now in force
/// (`None` where it cannot be read).
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through a valid pointer to a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` reads one `rlimit` through a valid pointer to a local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Some(limit.rlim_cur)
}
