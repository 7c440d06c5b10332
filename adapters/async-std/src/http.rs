//! HTTP on async-std: hyper 1.x serving connections accepted by async-std, through the
//! `futures-io` bridge of `smol-hyper`.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use async_std::net::TcpListener;
use futures_lite::{Stream, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use smol_hyper::rt::FuturesIo;

/// The body of every response this crate builds.
pub type Body = BoxBody<Bytes, Infallible>;

/// Serves HTTP/1.1 on `listener`, answering each request with `handler` (connection
/// upgrades, for WebSocket, included). Runs until the task is dropped; a failed accept
/// (out of file descriptors, say) is logged and retried after a pause, never fatal.
pub async fn serve<F, Fut>(listener: TcpListener, handler: F) -> std::io::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("accepting a connection failed: {e}");
                async_io::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Events are small writes that must leave at once: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        async_std::task::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = handler(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(FuturesIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))).boxed());
    *response.status_mut() = status;
    response
}

/// A streamed response body, one chunk per item.
pub(crate) fn streamed(chunks: impl Stream<Item = String> + Send + Sync + 'static) -> Body {
    BodyExt::boxed(StreamBody::new(
        chunks.map(|chunk| Ok(Frame::data(Bytes::from(chunk)))),
    ))
}
