//! Reading the Redis stores in the tests: their subscribers' next items, within patience,
//! and options that notice trouble quickly.

#![allow(dead_code)]

use std::time::Duration;

/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Options that notice a dead connection (and a lost entry) and come back quickly.
pub fn quick(url: &str) -> storecast_redis::Options {
    storecast_redis::Options::new(url)
        .health_check(Duration::from_millis(200))
        .response_timeout(Duration::from_secs(1))
        .reconnect_delay(Duration::from_millis(20), Duration::from_millis(200))
}

/// The next item of a subscriber, failing after [`PATIENCE`] or at the end of its stream.
pub async fn next<S>(subscriber: &mut S) -> storecast::Item<String>
where
    S: futures_lite::Stream<Item = storecast::Item<String>> + Unpin,
{
    use futures_lite::StreamExt;
    tokio::time::timeout(PATIENCE, subscriber.next())
        .await
        .expect("an item in time")
        .expect("the stream to go on")
}

/// The next message's text and position, failing on news of any kind.
pub async fn next_value<S>(subscriber: &mut S) -> (String, storecast::Position)
where
    S: futures_lite::Stream<Item = storecast::Item<String>> + Unpin,
{
    match next(subscriber).await {
        Ok(message) => ((*message).clone(), message.position()),
        Err(e) => panic!("expected a message, got `{e}`"),
    }
}

/// Submits, retrying (every 50 ms) while the store's connection comes back or Redis fails
/// over; fails after `patience` with the last error.
pub async fn submit_eventually(
    store: &storecast_redis::RedisQueueStore<String>,
    text: &str,
    patience: Duration,
) -> storecast::Position {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match store.submit(text.to_owned()).await {
            Ok(position) => return position,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
