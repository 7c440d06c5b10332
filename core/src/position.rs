//! Positions: where a message sits in a store's history, and where a subscriber starts.

use core::fmt;
use core::num::ParseIntError;
use core::str::FromStr;

/// The place of a message in its store: a number that only grows, one per submit.
///
/// The first message a store accepts is at position 1; [`Position::ZERO`] stands for
/// "before anything", so `Start::After(Position::ZERO)` asks for everything still
/// retained. Positions print and parse as plain decimal numbers, which is what goes on
/// the wire as an SSE `id:` and comes back as `Last-Event-ID`.
///
/// ```
/// use storecast::Position;
///
/// let p: Position = "42".parse().unwrap();
/// assert_eq!(p, Position::new(42));
/// assert_eq!(p.to_string(), "42");
/// assert!(p > Position::ZERO);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(u64);

impl Position {
    /// The position before the first message.
    pub const ZERO: Position = Position(0);

    /// A position from its number.
    pub const fn new(n: u64) -> Self {
        Position(n)
    }

    /// The number of this position.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for Position {
    fn from(n: u64) -> Self {
        Position(n)
    }
}

impl From<Position> for u64 {
    fn from(p: Position) -> Self {
        p.0
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Position {
    type Err = ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Position)
    }
}

/// Where a new subscriber starts reading.
///
/// A position the store no longer holds is never silently skipped: the subscriber's
/// first item is [`RecvError::Lagged`](crate::RecvError::Lagged) with the number of
/// messages lost, and it goes on from the oldest message still retained.
///
/// A position *ahead* of the store (a client that saw a previous run of the server, say)
/// is treated like [`Start::Now`]: the store cannot know what the client saw, so it gives
/// what a new subscriber would get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Start {
    /// As a new subscriber: a latest-value store yields its current value first; a queue
    /// yields only messages submitted from now on.
    #[default]
    Now,
    /// From the oldest message the store still retains.
    Oldest,
    /// Resume: from the message right after this position (the last one the subscriber
    /// saw, as in SSE `Last-Event-ID`).
    After(Position),
}

impl Start {
    /// For a queue whose newest message is at `last`, retaining `capacity`: the position
    /// a subscriber starting here reads first, and how many messages it asked for that
    /// are gone.
    pub(crate) fn queue_cursor(self, last: u64, capacity: u64) -> (u64, u64) {
        let oldest = oldest_retained(last, capacity);
        let wanted = match self {
            Start::Now => last + 1,
            Start::Oldest => oldest,
            Start::After(p) => p.get().min(last) + 1,
        };
        let next = wanted.max(oldest);
        (next, next - wanted)
    }

    /// For a latest-value store whose current value is at `current`: the position a
    /// subscriber starting here counts as already seen.
    pub(crate) fn latest_seen(self, current: u64) -> u64 {
        match self {
            Start::Now | Start::Oldest => 0,
            Start::After(p) if p.get() > current => 0,
            Start::After(p) => p.get(),
        }
    }
}

/// The oldest position a queue retaining `capacity` still holds when `last` is the
/// newest (`last + 1` when it holds nothing).
pub(crate) fn oldest_retained(last: u64, capacity: u64) -> u64 {
    (last + 1).saturating_sub(capacity).max(1)
}
