//! How subscribers sleep and are woken: a published position with a "someone is parked"
//! bit, and a sharded registry of their wakers.
//!
//! A general-purpose event (`event-listener`) allocates a listener each time a task waits
//! and keeps one list behind one lock. A store's subscribers wait over and over, and a
//! submit wakes all of them, so they get a registry of their own: each subscriber has a
//! reusable entry in one of [`SHARDS`] lists (spreading the locking), registering is a
//! waker clone into that entry, and a submit that finds nobody parked costs one atomic
//! swap.
//!
//! # Why no wake-up is lost
//!
//! The submitter publishes a position with an atomic *swap* that clears [`PARKED`]; a
//! subscriber registers its waker first, then sets [`PARKED`] with a *fetch-or* that also
//! returns the position. Both are read-modify-writes of one word, so one comes first:
//! either the subscriber sees the new position and does not sleep, or the submitter sees
//! the bit and wakes every registered waker (taking each shard's lock after the
//! subscriber released it, so its waker is there).

use alloc::vec::Vec;
use core::task::Waker;

use crate::sync::{AtomicU64, AtomicUsize, CachePadded, Mutex, Ordering};

/// The bit of the published word saying that a subscriber is parked.
const PARKED: u64 = 1 << 63;

/// How many independently locked lists the wakers are spread over.
pub(crate) const SHARDS: usize = 8;

/// A position that only grows, published together with the parked bit.
#[derive(Debug)]
pub(crate) struct Published {
    word: CachePadded<AtomicU64>,
}

impl Published {
    pub(crate) fn new(position: u64) -> Self {
        Published {
            word: CachePadded(AtomicU64::new(position)),
        }
    }

    /// The position last published.
    pub(crate) fn load(&self) -> u64 {
        self.word.load(Ordering::Acquire) & !PARKED
    }

    /// Publishes a newer position; returns whether a subscriber was parked, in which case
    /// the caller must wake the [`Wakers`].
    pub(crate) fn publish(&self, position: u64) -> bool {
        self.word.swap(position, Ordering::AcqRel) & PARKED != 0
    }

    /// Announces a parked subscriber (after it registered its waker).
    fn mark_parked(&self) {
        self.word.fetch_or(PARKED, Ordering::AcqRel);
    }
}

/// The wakers of parked subscribers.
#[derive(Debug)]
pub(crate) struct Wakers {
    shards: [CachePadded<Mutex<Shard>>; SHARDS],
    /// Hands out shards round-robin to new subscribers.
    next_shard: AtomicUsize,
}

#[derive(Debug, Default)]
struct Shard {
    /// Bumped by each wake-up, which empties the shard; entries from an older epoch are
    /// gone.
    epoch: u64,
    /// Registered wakers; `None` for entries given up.
    wakers: Vec<Option<Waker>>,
    /// Entries given up in this epoch, for reuse.
    free: Vec<u32>,
}

/// A subscriber's place in [`Wakers`].
#[derive(Debug)]
pub(crate) struct Parking {
    shard: u32,
    /// The entry registered in the shard, valid while the shard is still in `epoch`.
    index: u32,
    /// The shard's epoch when the entry was registered (its epoch + 1; 0: no entry).
    epoch: u64,
}

impl Wakers {
    pub(crate) fn new() -> Self {
        Wakers {
            shards: core::array::from_fn(|_| CachePadded(Mutex::new(Shard::default()))),
            next_shard: AtomicUsize::new(0),
        }
    }

    /// A place for a new subscriber.
    pub(crate) fn parking(&self) -> Parking {
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS;
        Parking {
            shard: shard as u32,
            index: 0,
            epoch: 0,
        }
    }

    /// Registers `waker` for the next wake-up and marks the subscriber parked. The caller
    /// then checks `published` once more before sleeping.
    pub(crate) fn park(&self, parking: &mut Parking, waker: &Waker, published: &Published) {
        {
            let mut shard = self.shards[parking.shard as usize].lock();
            let shard = &mut *shard;
            if parking.epoch == shard.epoch + 1 {
                // Still registered from an earlier poll: refresh the waker if it changed.
                let entry = &mut shard.wakers[parking.index as usize];
                if !entry.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *entry = Some(waker.clone());
                }
            } else {
                let index = match shard.free.pop() {
                    Some(index) => {
                        shard.wakers[index as usize] = Some(waker.clone());
                        index
                    }
                    None => {
                        shard.wakers.push(Some(waker.clone()));
                        (shard.wakers.len() - 1) as u32
                    }
                };
                parking.index = index;
                parking.epoch = shard.epoch + 1;
            }
        }
        published.mark_parked()
    }

    /// Gives up a subscriber's entry (when it is dropped), so that entries never pile up
    /// in a store nobody submits to.
    pub(crate) fn leave(&self, parking: &mut Parking) {
        if parking.epoch == 0 {
            return;
        }
        let mut shard = self.shards[parking.shard as usize].lock();
        if parking.epoch == shard.epoch + 1 {
            shard.wakers[parking.index as usize] = None;
            shard.free.push(parking.index);
        }
        parking.epoch = 0;
    }

    /// Wakes every registered subscriber.
    pub(crate) fn wake_all(&self) {
        for shard in &self.shards {
            let wakers = {
                let mut shard = shard.lock();
                if shard.wakers.is_empty() {
                    continue;
                }
                shard.epoch += 1;
                shard.free.clear();
                let capacity = shard.wakers.len();
                core::mem::replace(&mut shard.wakers, Vec::with_capacity(capacity))
            };
            // Woken outside the lock: a wake-up may take the executor's own locks.
            for waker in wakers.into_iter().flatten() {
                waker.wake();
            }
        }
    }
}
