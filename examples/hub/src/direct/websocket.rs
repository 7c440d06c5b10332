//! WebSocket subscriptions.

use std::time::Duration;

use tokio::net::TcpStream;

use super::Served;
use crate::routes::Hub;

/// A WebSocket subscription this path serves.
pub(super) struct Subscription;

pub(super) fn subscription(_hub: &Hub, _read: &[u8]) -> Option<Subscription> {
    None
}

pub(super) async fn serve(
    _hub: &Hub,
    _stream: &TcpStream,
    read: Vec<u8>,
    _request: Subscription,
    _write_timeout: Duration,
) -> Served {
    Served::Elsewhere(read)
}
