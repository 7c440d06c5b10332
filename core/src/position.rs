//! Positions: which store a message belongs to, where it sits in that store's history, and
//! where a subscriber starts.

use core::cmp::Ordering;
use core::fmt;
use core::str::FromStr;

use crate::{RecvError, ResetReason};

/// The identity of a store: fixed when the store is made, it tells apart positions of
/// different stores, and of different lives of one store (an in-memory store after a
/// restart, a Redis stream after Redis lost entries).
///
/// An in-memory store draws a random epoch ([`Epoch::random`], with `std`); a store on
/// Redis shares one through Redis with every process; the fixed-capacity stores, which
/// cannot draw randomness, take one from their user. Epochs print as up to 13 characters
/// of lowercase Crockford base32 (`0-9`, `a-z` without `i l o u`); a random one is 8
/// characters that start with a letter.
///
/// ```
/// use storecast::Epoch;
///
/// let epoch: Epoch = "k7fm2q9d".parse().unwrap();
/// assert_eq!(epoch.to_string(), "k7fm2q9d");
/// assert_eq!(Epoch::new(31).to_string(), "z");
/// # #[cfg(feature = "std")]
/// assert_ne!(Epoch::random(), Epoch::random());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

/// Crockford's base32 alphabet, lowercase: no `i`, `l`, `o` or `u` to misread.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

impl Epoch {
    /// An epoch from its number.
    pub const fn new(n: u64) -> Self {
        Epoch(n)
    }

    /// The number of this epoch.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// A random epoch: 40 bits with the highest set, so that it prints as 8 characters
    /// beginning with a letter. Two stores made anywhere, at any time, have different
    /// epochs with a probability of about 1 - 2⁻³⁹.
    #[cfg(feature = "std")]
    pub fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        // `RandomState` keys are drawn from the operating system once per thread and
        // varied per instance; the clock and a counter keep two draws apart even so.
        static DRAWN: AtomicU64 = AtomicU64::new(0);
        let mut hasher = std::hash::RandomState::new().build_hasher();
        hasher.write_u64(DRAWN.fetch_add(1, Ordering::Relaxed));
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            hasher.write_u128(now.as_nanos());
        }
        Epoch::from_random_bits(hasher.finish())
    }

    /// The epoch [`Epoch::random`] makes from 64 random bits (for stores that draw their
    /// randomness elsewhere, such as Redis scripts or a hardware generator).
    pub const fn from_random_bits(bits: u64) -> Self {
        Epoch((bits & ((1 << 40) - 1)) | (1 << 39))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buffer = [0u8; 13];
        let mut at = buffer.len();
        let mut n = self.0;
        loop {
            at -= 1;
            buffer[at] = ALPHABET[(n % 32) as usize];
            n /= 32;
            if n == 0 {
                break;
            }
        }
        f.write_str(core::str::from_utf8(&buffer[at..]).expect("ASCII"))
    }
}

/// Why a text is not an [`Epoch`] or a [`Position`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsePositionError;

impl fmt::Display for ParsePositionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "not a storecast position: expected OFFSET-EPOCH, a decimal number and up to 13 \
             characters of lowercase base32, such as 42-k7fm2q9d",
        )
    }
}

impl core::error::Error for ParsePositionError {}

impl FromStr for Epoch {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 13 {
            return Err(ParsePositionError);
        }
        let mut n: u64 = 0;
        for byte in s.bytes() {
            let digit = ALPHABET
                .iter()
                .position(|&a| a == byte)
                .ok_or(ParsePositionError)?;
            n = n
                .checked_mul(32)
                .and_then(|n| n.checked_add(digit as u64))
                .ok_or(ParsePositionError)?;
        }
        Ok(Epoch(n))
    }
}

/// The place of a message: the [`Epoch`] of its store, and its offset there, a number
/// that only grows, one per submit.
///
/// The first message a store accepts is at offset 1; offset 0 stands for "before
/// anything", so `Start::After` a store's offset 0 asks for everything it still retains.
/// Positions print and parse as `OFFSET-EPOCH` (`42-k7fm2q9d`): short, URL-safe, what
/// goes on the wire as an SSE `id:` and comes back as `Last-Event-ID`.
///
/// Positions of one epoch are ordered by offset; positions of different epochs are not
/// ordered at all (`partial_cmp` is `None`).
///
/// ```
/// use storecast::{Epoch, Position};
///
/// let epoch = Epoch::new(0x9876543210);
/// let p: Position = "42-k7fm2q9d".parse().unwrap();
/// assert_eq!((p.offset(), p.epoch().to_string().as_str()), (42, "k7fm2q9d"));
/// assert_eq!(p.to_string(), "42-k7fm2q9d");
/// assert!(Position::new(epoch, 2) > Position::new(epoch, 1));
/// assert_eq!(p.partial_cmp(&Position::new(epoch, 1)), None);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Position {
    epoch: Epoch,
    offset: u64,
}

impl Position {
    /// The position at `offset` in the store whose epoch is `epoch`.
    pub const fn new(epoch: Epoch, offset: u64) -> Self {
        Position { epoch, offset }
    }

    /// The epoch of the store this position belongs to.
    pub const fn epoch(self) -> Epoch {
        self.epoch
    }

    /// Where in its store's history: 1 for the first message.
    pub const fn offset(self) -> u64 {
        self.offset
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self.epoch == other.epoch).then(|| self.offset.cmp(&other.offset))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.offset, self.epoch)
    }
}

impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (offset, epoch) = s.split_once('-').ok_or(ParsePositionError)?;
        if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParsePositionError);
        }
        Ok(Position {
            offset: offset.parse().map_err(|_| ParsePositionError)?,
            epoch: epoch.parse()?,
        })
    }
}

/// Where a new subscriber starts reading.
///
/// A position the store no longer holds is never silently skipped: the subscriber's
/// first item is [`RecvError::Lagged`] with the number of messages lost, and it goes on
/// from the oldest message still retained.
///
/// A position the store cannot place (of another [`Epoch`]: another store, or an earlier
/// life of this one; or ahead of everything it has) is never treated as "now" either:
/// the subscriber's first item is [`RecvError::Reset`] saying why, and then it gets what
/// the store holds: a queue from its oldest retained message, a latest-value store its
/// current value.
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

/// Where a subscriber begins, placed in a store: the offset it reads first (a latest-value
/// store: the offset it counts as seen), and what it is told before anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    pub(crate) next: u64,
    /// Messages it asked for that are gone.
    pub(crate) missed: u64,
    /// Why its position could not be placed at all.
    pub(crate) reset: Option<ResetReason>,
}

impl Start {
    /// Why a store of `epoch` whose newest offset is `last` cannot place this start, if
    /// it cannot.
    pub fn reset_reason(self, epoch: Epoch, last: u64) -> Option<ResetReason> {
        match self {
            Start::After(p) if p.epoch != epoch => Some(ResetReason::OtherEpoch),
            Start::After(p) if p.offset > last => Some(ResetReason::Ahead),
            _ => None,
        }
    }

    /// For a queue of `epoch` whose newest message is at `last`, retaining `capacity`.
    pub(crate) fn place_in_queue(self, epoch: Epoch, last: u64, capacity: u64) -> Placed {
        let oldest = oldest_retained(last, capacity);
        if let Some(reason) = self.reset_reason(epoch, last) {
            return Placed {
                next: oldest,
                missed: 0,
                reset: Some(reason),
            };
        }
        let wanted = match self {
            Start::Now => last + 1,
            Start::Oldest => oldest,
            Start::After(p) => p.offset + 1,
        };
        let next = wanted.max(oldest);
        Placed {
            next,
            missed: next - wanted,
            reset: None,
        }
    }

    /// For a latest-value store of `epoch` whose current value is at `current`: the
    /// offset a subscriber starting here counts as already seen (the current value is
    /// newer than it unless the subscriber resumes after it).
    pub(crate) fn place_in_latest(self, epoch: Epoch, current: u64) -> Placed {
        let reset = self.reset_reason(epoch, current);
        let next = match self {
            Start::After(p) if reset.is_none() => p.offset,
            _ => 0,
        };
        Placed {
            next,
            missed: 0,
            reset,
        }
    }
}

/// What a latest-value subscriber has seen: the offset of the last value it yielded, and,
/// in the top bits, a reset it has still to be told (offsets never come near 2⁶¹, and the
/// subscriber stays as small as it was before resets existed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seen(u64);

impl Seen {
    const NEWS_SHIFT: u32 = 61;
    const OFFSET_MASK: u64 = (1 << Self::NEWS_SHIFT) - 1;

    pub(crate) fn new(placed: Placed) -> Self {
        let news = placed.reset.map_or(0, |reason| reason.code() as u64);
        Seen(placed.next | (news << Self::NEWS_SHIFT))
    }

    /// The offset of the last value yielded (0: none yet).
    pub(crate) fn offset(self) -> u64 {
        self.0 & Self::OFFSET_MASK
    }

    /// Records that the value at `offset` was yielded.
    pub(crate) fn set(&mut self, offset: u64) {
        self.0 = (self.0 & !Self::OFFSET_MASK) | (offset & Self::OFFSET_MASK);
    }

    /// The reset to tell before anything else, once.
    pub(crate) fn take_news(&mut self) -> Option<RecvError> {
        let code = (self.0 >> Self::NEWS_SHIFT) as u8;
        self.0 &= Self::OFFSET_MASK;
        ResetReason::from_code(code).map(|reason| RecvError::Reset { reason })
    }
}

/// The oldest position a queue retaining `capacity` still holds when `last` is the
/// newest (`last + 1` when it holds nothing).
pub(crate) fn oldest_retained(last: u64, capacity: u64) -> u64 {
    (last + 1).saturating_sub(capacity).max(1)
}
