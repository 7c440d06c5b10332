//! How values travel through Redis: as the bytes of a channel message or of a stream
//! entry's `data` field.

use std::borrow::Cow;

/// A value that can be written to Redis and read back: what a store's subscribers receive
/// when another program publishes raw bytes.
///
/// `decode` must read back what `encode` wrote: other processes read the value that way,
/// and [`RedisStore::submit`](crate::RedisStore::submit) hands a value back by decoding
/// it when Redis's answer did not come.
///
/// Implemented for `String` (the bytes must be UTF-8) and `Vec<u8>` (any bytes). A message
/// that does not decode is skipped, logged and counted (see
/// [`RedisStore::undecodable`](crate::RedisStore::undecodable)); it never stops the store.
///
/// ```
/// use storecast_redis::{Codec, DecodeError};
///
/// struct Celsius(f64);
///
/// impl Codec for Celsius {
///     fn encode(&self) -> std::borrow::Cow<'_, [u8]> {
///         self.0.to_string().into_bytes().into()
///     }
///     fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
///         let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::new("not UTF-8"))?;
///         text.trim().parse().map(Celsius).map_err(|_| DecodeError::new("not a number"))
///     }
/// }
///
/// assert_eq!(Celsius::decode(b"21.5").unwrap().0, 21.5);
/// assert!(Celsius::decode(b"warm").is_err());
/// ```
pub trait Codec: Sized + Send + Sync + 'static {
    /// The bytes to publish.
    fn encode(&self) -> Cow<'_, [u8]>;
    /// The value for bytes read from Redis, or why they are not one.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;
}

/// Why bytes read from Redis are not a value of the store's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable message: {reason}")]
pub struct DecodeError {
    reason: Cow<'static, str>,
}

impl DecodeError {
    /// An error saying why the bytes were refused.
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        DecodeError {
            reason: reason.into(),
        }
    }
}

impl Codec for String {
    fn encode(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| DecodeError::new(format!("not UTF-8 ({e})")))
    }
}

impl Codec for Vec<u8> {
    fn encode(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(bytes.to_vec())
    }
}
