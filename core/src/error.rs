//! Errors: what a submitter or a subscriber is told when things do not go as planned.

use core::fmt;

/// A subscriber's news that it did not get everything (an item of its stream), or, from
/// `recv`, that there is nothing more to get.
///
/// Lag is reported as data, never swallowed. After [`Lagged`](RecvError::Lagged),
/// [`Interrupted`](RecvError::Interrupted) and [`Reset`](RecvError::Reset) the
/// subscriber goes on; after [`FellBehind`](RecvError::FellBehind) and
/// [`Closed`](RecvError::Closed) it has nothing more ([`ends_stream`](RecvError::ends_stream)).
///
/// Which store says what:
///
/// | variant | in-memory queue | in-memory latest value | Redis stores |
/// |---|---|---|---|
/// | `Lagged` | `DropOldest` laggard, or a resume from a position no longer kept | never | queue: as in memory |
/// | `FellBehind` | `Disconnect` laggard | never | queue: as in memory |
/// | `Reset` | a resume from another epoch or ahead | the same | the same, and a loss in Redis (`Lost`) |
/// | `Interrupted` | never | never | the connection to Redis was lost and restored |
/// | `Closed` | from `recv` only, once closed and drained | the same | the same |
///
/// The enum is `#[non_exhaustive]`, so a `match` needs a last arm anyway; an in-memory
/// user can treat that arm as unreachable news, or branch on
/// [`ends_stream`](RecvError::ends_stream) alone.
///
/// ```
/// use futures_lite::future::block_on;
/// use storecast::{QueueStore, RecvError};
///
/// let store = QueueStore::<u32>::new(8);
/// let mut subscriber = store.subscribe();
/// store.try_submit(1).unwrap();
/// store.close();
/// block_on(async {
///     loop {
///         match subscriber.recv().await {
///             Ok(message) => assert_eq!(*message, 1),
///             Err(e) if e.ends_stream() => break,
///             Err(news) => eprintln!("{news}"),
///         }
///     }
/// });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecvError {
    /// `missed` messages were gone before this subscriber could read them (a
    /// [`DropOldest`](crate::Overflow::DropOldest) queue moved on without it, or it asked to
    /// resume from a position no longer retained). It continues with the oldest message
    /// still retained.
    Lagged {
        /// How many messages this subscriber will never see.
        missed: u64,
    },
    /// The subscriber fell `capacity` messages behind a
    /// [`Disconnect`](crate::Overflow::Disconnect) queue and was cut off; its stream ends
    /// after this item. Subscribe again (for example from [`Start::Oldest`](crate::Start))
    /// to carry on.
    FellBehind {
        /// The capacity of the queue it fell behind.
        capacity: usize,
    },
    /// The store's transport was interrupted (a Redis connection was lost and restored):
    /// messages submitted meanwhile may have been missed, and how many is unknown. The
    /// stream goes on.
    Interrupted,
    /// The positions this subscriber knew mean nothing in the store now: it asked to
    /// resume from a position the store cannot place, or the store lost messages it had
    /// already handed out and began a new [`Epoch`](crate::Epoch). The stream goes on
    /// with what the store holds, numbered in its epoch: after a resume, a queue's oldest
    /// retained message or a latest-value store's current value; after a loss, the
    /// messages that follow what the store still has.
    Reset {
        /// Why the store could not place the subscriber's position.
        reason: ResetReason,
    },
    /// The store is closed and this subscriber has received everything it will: what
    /// `recv` says where the [`Stream`](futures_core::Stream) ends with `None` (a stream
    /// never yields this item).
    Closed,
}

impl RecvError {
    /// Whether the subscriber has nothing more after this ([`FellBehind`](RecvError::FellBehind)
    /// or [`Closed`](RecvError::Closed)); the other variants are news, and reading goes on.
    pub const fn ends_stream(&self) -> bool {
        matches!(self, RecvError::FellBehind { .. } | RecvError::Closed)
    }

    /// How many messages this subscriber will never see, where that is known
    /// ([`Lagged`](RecvError::Lagged)).
    ///
    /// ```
    /// use storecast::RecvError;
    ///
    /// assert_eq!(RecvError::Lagged { missed: 3 }.missed(), Some(3));
    /// assert_eq!(RecvError::Interrupted.missed(), None); // unknown
    /// ```
    pub const fn missed(&self) -> Option<u64> {
        match self {
            RecvError::Lagged { missed } => Some(*missed),
            _ => None,
        }
    }
}

/// Why `try_recv` returned no message: nothing yet, nothing ever again, or news of what
/// the subscriber missed (the same news [`RecvError`] carries, which `recv` and the stream
/// yield).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TryRecvError {
    /// Nothing new yet; the store is open. Try again later, or `recv().await`.
    Empty,
    /// The store is closed and this subscriber has received everything.
    Closed,
    /// See [`RecvError::Lagged`].
    Lagged {
        /// How many messages this subscriber will never see.
        missed: u64,
    },
    /// See [`RecvError::FellBehind`]; nothing more comes after it.
    FellBehind {
        /// The capacity of the queue it fell behind.
        capacity: usize,
    },
    /// See [`RecvError::Interrupted`].
    Interrupted,
    /// See [`RecvError::Reset`].
    Reset {
        /// Why the store could not place the subscriber's position.
        reason: ResetReason,
    },
}

impl From<RecvError> for TryRecvError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Lagged { missed } => TryRecvError::Lagged { missed },
            RecvError::FellBehind { capacity } => TryRecvError::FellBehind { capacity },
            RecvError::Interrupted => TryRecvError::Interrupted,
            RecvError::Reset { reason } => TryRecvError::Reset { reason },
            RecvError::Closed => TryRecvError::Closed,
        }
    }
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("no new message yet"),
            TryRecvError::Closed => RecvError::Closed.fmt(f),
            TryRecvError::Lagged { missed } => RecvError::Lagged { missed: *missed }.fmt(f),
            TryRecvError::FellBehind { capacity } => RecvError::FellBehind {
                capacity: *capacity,
            }
            .fmt(f),
            TryRecvError::Interrupted => RecvError::Interrupted.fmt(f),
            TryRecvError::Reset { reason } => RecvError::Reset { reason: *reason }.fmt(f),
        }
    }
}

impl core::error::Error for TryRecvError {}

/// Why a subscriber's position could not be placed in its store (see
/// [`RecvError::Reset`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
// As wide as the other variants' payloads: with a one-byte payload in `RecvError`, the
// layout of every `Item` changes, and the queue benchmark delivers half as fast with
// hundreds of subscribers (measured).
#[repr(u64)]
pub enum ResetReason {
    /// The position is of another epoch: another store, or an earlier life of this one
    /// (a server that restarted).
    OtherEpoch,
    /// The position is of this store's epoch but ahead of everything it has.
    Ahead,
    /// The client's id could not be read as a position at all.
    Unreadable,
    /// The store lost messages it had already handed out (Redis lost writes in a crash
    /// or a failover) and began a new epoch.
    Lost,
}

impl ResetReason {
    /// A number from 1 to 7 (for packing into a few bits).
    pub(crate) const fn code(self) -> u8 {
        match self {
            ResetReason::OtherEpoch => 1,
            ResetReason::Ahead => 2,
            ResetReason::Unreadable => 3,
            ResetReason::Lost => 4,
        }
    }

    /// The reason of [`code`](ResetReason::code), if any.
    pub(crate) const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(ResetReason::OtherEpoch),
            2 => Some(ResetReason::Ahead),
            3 => Some(ResetReason::Unreadable),
            4 => Some(ResetReason::Lost),
            _ => None,
        }
    }

    /// A short, stable name for the wire: `other-epoch`, `ahead`, `unreadable`, `lost`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ResetReason::OtherEpoch => "other-epoch",
            ResetReason::Ahead => "ahead",
            ResetReason::Unreadable => "unreadable",
            ResetReason::Lost => "lost",
        }
    }
}

impl fmt::Display for ResetReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResetReason::OtherEpoch => {
                "the position is from another store, or from an earlier life of this one"
            }
            ResetReason::Ahead => "the position is ahead of everything the store has",
            ResetReason::Unreadable => "the id is not a position",
            ResetReason::Lost => "the store lost messages it had handed out and began anew",
        })
    }
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Lagged { missed } => write!(
                f,
                "subscriber lagged: {missed} message(s) were dropped before it read them; \
                 continuing with the oldest retained message"
            ),
            RecvError::FellBehind { capacity } => write!(
                f,
                "subscriber fell {capacity} messages behind the queue and was disconnected; \
                 read faster, raise the capacity, or resubscribe"
            ),
            RecvError::Interrupted => f.write_str(
                "the store's connection was interrupted; messages submitted meanwhile may have \
                 been missed",
            ),
            RecvError::Reset { reason } => write!(
                f,
                "the subscriber's position could not be placed ({reason}); going on with \
                 what the store holds"
            ),
            RecvError::Closed => f.write_str(
                "the store is closed and the subscriber has received every message it will",
            ),
        }
    }
}

impl core::error::Error for RecvError {}

/// Why [`Store::submit`](crate::Store::submit) did not take a message. The message is
/// handed back, never lost.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SubmitError<T> {
    /// The store is closed and takes no more messages.
    Closed(T),
    /// The store's transport could not take the message: its connection (to Redis) is
    /// down, or the server refused the command. The message was not submitted. The store
    /// goes on trying to reconnect; submit again later.
    Unavailable(T),
    /// The store's transport took the command but no answer came in time (Redis busy, or
    /// the connection dropped after the command was sent): the message **may or may not**
    /// have been submitted, and this process cannot tell. Submitting it again may add it
    /// twice; a store with idempotency keys (`RedisQueueStore::submit_with_key`) makes
    /// the retry safe.
    OutcomeUnknown(T),
}

impl<T> SubmitError<T> {
    /// The message that was not submitted.
    pub fn into_inner(self) -> T {
        match self {
            SubmitError::Closed(value)
            | SubmitError::Unavailable(value)
            | SubmitError::OutcomeUnknown(value) => value,
        }
    }

    /// The same error with `f` applied to the message it hands back (`map(drop)` to keep
    /// only what happened).
    ///
    /// ```
    /// use storecast::SubmitError;
    ///
    /// let refused = SubmitError::Unavailable("hello".to_string());
    /// assert_eq!(refused.map(drop), SubmitError::Unavailable(()));
    /// ```
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> SubmitError<U> {
        match self {
            SubmitError::Closed(value) => SubmitError::Closed(f(value)),
            SubmitError::Unavailable(value) => SubmitError::Unavailable(f(value)),
            SubmitError::OutcomeUnknown(value) => SubmitError::OutcomeUnknown(f(value)),
        }
    }
}

impl<T> fmt::Debug for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Closed(_) => f.write_str("Closed(..)"),
            SubmitError::Unavailable(_) => f.write_str("Unavailable(..)"),
            SubmitError::OutcomeUnknown(_) => f.write_str("OutcomeUnknown(..)"),
        }
    }
}

impl<T> fmt::Display for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Closed(_) => {
                f.write_str("the store is closed; the message was not submitted")
            }
            SubmitError::Unavailable(_) => f.write_str(
                "the store's transport is unavailable (its connection is down, or the server \
                 refused the command); the message was not submitted",
            ),
            SubmitError::OutcomeUnknown(_) => f.write_str(
                "the store's transport did not answer in time; the message may or may not \
                 have been submitted",
            ),
        }
    }
}

impl<T> core::error::Error for SubmitError<T> {}

/// Why [`Store::try_submit`](crate::Store::try_submit) did not take a message. The message
/// is handed back, never lost.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TrySubmitError<T> {
    /// A lossless ([`Overflow::Wait`](crate::Overflow::Wait)) queue is full: its slowest
    /// subscriber is `capacity` messages behind. `submit().await` would wait for room.
    Full(T),
    /// The store is closed and takes no more messages.
    Closed(T),
    /// The store cannot take a message without waiting on I/O: its transport is a network
    /// connection (a Redis stream), so only `submit().await` can learn the position.
    WouldBlock(T),
    /// See [`SubmitError::OutcomeUnknown`]: the message may or may not have been
    /// submitted.
    OutcomeUnknown(T),
}

impl<T> TrySubmitError<T> {
    /// The message that was not submitted.
    pub fn into_inner(self) -> T {
        match self {
            TrySubmitError::Full(value)
            | TrySubmitError::Closed(value)
            | TrySubmitError::WouldBlock(value)
            | TrySubmitError::OutcomeUnknown(value) => value,
        }
    }

    /// Whether the store was full (rather than closed).
    pub fn is_full(&self) -> bool {
        matches!(self, TrySubmitError::Full(_))
    }
}

impl<T> From<SubmitError<T>> for TrySubmitError<T> {
    fn from(e: SubmitError<T>) -> Self {
        match e {
            SubmitError::Closed(value) => TrySubmitError::Closed(value),
            SubmitError::Unavailable(value) => TrySubmitError::WouldBlock(value),
            SubmitError::OutcomeUnknown(value) => TrySubmitError::OutcomeUnknown(value),
        }
    }
}

impl<T> fmt::Debug for TrySubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full(_) => f.write_str("Full(..)"),
            TrySubmitError::Closed(_) => f.write_str("Closed(..)"),
            TrySubmitError::WouldBlock(_) => f.write_str("WouldBlock(..)"),
            TrySubmitError::OutcomeUnknown(_) => f.write_str("OutcomeUnknown(..)"),
        }
    }
}

impl<T> fmt::Display for TrySubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full(_) => f.write_str(
                "the queue is full: its slowest subscriber has not read the oldest retained \
                 message; wait with submit().await, or choose another overflow policy",
            ),
            TrySubmitError::Closed(_) => {
                f.write_str("the store is closed; the message was not submitted")
            }
            TrySubmitError::WouldBlock(_) => f.write_str(
                "the store cannot take a message without waiting on its connection; \
                 use submit().await",
            ),
            TrySubmitError::OutcomeUnknown(_) => f.write_str(
                "the store's transport did not answer in time; the message may or may not \
                 have been submitted",
            ),
        }
    }
}

impl<T> core::error::Error for TrySubmitError<T> {}
