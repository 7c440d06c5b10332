//! Back-pressure for the lossless queue: which parts of the ring every subscriber has
//! read, so that a submitter never overwrites a message someone still has to read.
//!
//! Counting readers per message would cost every subscriber an atomic decrement on a
//! shared cache line for every message. Instead the positions are grouped in *blocks* of
//! `block` messages, and a subscriber decrements its block's count once, when it reads
//! the block's last message. The ring gets `block - 1` extra slots so that a submitter
//! still never waits before the slowest subscriber is a full `capacity` behind.
//!
//! A subscriber is counted in every block that has started (its first message was
//! written) and that it has not finished. Blocks finish in order: a subscriber counted in
//! a block is counted in every later one, and reads them in order.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::sync::{AtomicUsize, CachePadded, Ordering};

#[derive(Debug)]
pub(crate) struct Backpressure {
    /// Messages per block.
    block: u64,
    /// Slots in the ring: the capacity plus `block - 1`.
    ring: u64,
    /// Subscribers yet to finish each live block, indexed by block number modulo their
    /// count (enough that no two live blocks share one).
    unread: Box<[CachePadded<AtomicUsize>]>,
}

impl Backpressure {
    /// Back-pressure for a lossless queue of `capacity`.
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity as u64;
        // Small queues count every message: exact, and cheap enough at that size. (Loom
        // models use bigger blocks so that small rings exercise them.)
        let block = (capacity / if cfg!(loom) { 2 } else { 8 }).max(1);
        let ring = capacity + block - 1;
        let blocks = ring.div_ceil(block) + 1;
        Backpressure {
            block,
            ring,
            unread: (0..blocks)
                .map(|_| CachePadded(AtomicUsize::new(0)))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        }
    }

    /// How many slots the ring needs.
    pub(crate) fn ring_len(&self) -> usize {
        self.ring as usize
    }

    fn block_of(&self, position: u64) -> u64 {
        (position - 1) / self.block
    }

    fn unread(&self, block: u64) -> &AtomicUsize {
        &self.unread[(block % self.unread.len() as u64) as usize]
    }

    /// Whether `position` may be written now: the message it replaces (if any) has been
    /// read by every subscriber. `oldest_open` is the submitters' note of the first block
    /// not known to be finished; it only moves forward here.
    ///
    /// Submitters must be serialised, and `Acquire` here pairs with the readers'
    /// releasing decrements: their reads of the old messages happen before the overwrite.
    pub(crate) fn has_room(&self, position: u64, oldest_open: &mut u64) -> bool {
        if position <= self.ring {
            return true;
        }
        let needed = self.block_of(position - self.ring);
        while *oldest_open <= needed {
            if self.unread(*oldest_open).load(Ordering::Acquire) != 0 {
                return false;
            }
            *oldest_open += 1;
        }
        true
    }

    /// Called by the submitter before it publishes `position`: a block that starts there
    /// waits for every current subscriber.
    pub(crate) fn starting(&self, position: u64, subscribers: usize) {
        if (position - 1) % self.block == 0 {
            self.unread(self.block_of(position))
                .store(subscribers, Ordering::Relaxed);
        }
    }

    /// Called by a subscriber that has read `position`; returns whether that finished a
    /// block for everyone (a waiting submitter should be woken).
    pub(crate) fn read(&self, position: u64) -> bool {
        position % self.block == 0
            && self
                .unread(self.block_of(position))
                .fetch_sub(1, Ordering::Release)
                == 1
    }

    /// A subscriber joins, reading from `next` while `last` is the newest message: it is
    /// counted in the started blocks it will read. Serialised with submitters.
    pub(crate) fn join(&self, next: u64, last: u64, oldest_open: &mut u64) {
        if last == 0 || self.block_of(next) > self.block_of(last) {
            // No started block holds anything it will read: the next block counts it.
            return;
        }
        let first = self.block_of(next);
        for block in first..=self.block_of(last) {
            self.unread(block).fetch_add(1, Ordering::Relaxed);
        }
        // Blocks submitters took as finished must be waited for again.
        *oldest_open = (*oldest_open).min(first);
    }

    /// A subscriber leaves with `next` unread while `last` is the newest message: it no
    /// longer holds up the blocks it was counted in. Returns whether it held any.
    /// Serialised with submitters.
    pub(crate) fn leave(&self, next: u64, last: u64) -> bool {
        if last == 0 || self.block_of(next) > self.block_of(last) {
            return false;
        }
        for block in self.block_of(next)..=self.block_of(last) {
            self.unread(block).fetch_sub(1, Ordering::Release);
        }
        true
    }
}
