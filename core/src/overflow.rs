//! What a queue does when its slowest subscriber is a whole ring behind.

/// A queue's overflow policy: what happens when the slowest subscriber is `capacity`
/// messages behind. Chosen per store at construction; none of them is silent.
///
/// ```
/// use storecast::{Overflow, QueueStore};
///
/// let store = QueueStore::<u32>::with_overflow(2, Overflow::DropOldest);
/// assert_eq!(store.overflow(), Overflow::DropOldest);
/// assert_eq!(Overflow::default(), Overflow::Wait);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// Lossless: a submitter waits until the slowest subscriber has read the oldest
    /// message (`try_submit` reports `Full` instead of waiting). A subscriber that is
    /// dropped stops counting at once, so only live subscribers hold the queue up.
    #[default]
    Wait,
    /// The oldest message is overwritten; a subscriber that had not read it receives
    /// [`RecvError::Lagged`](crate::RecvError::Lagged) with how many it missed, then goes
    /// on from the oldest retained message.
    DropOldest,
    /// The oldest message is overwritten; a subscriber that had not read it receives
    /// [`RecvError::FellBehind`](crate::RecvError::FellBehind) and its stream ends.
    Disconnect,
}
