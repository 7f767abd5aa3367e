//! The dirty-cluster counter behind [`DirtyBitmap::dirty_clusters`]: a few
//! cache-line-padded stripes, one per thread (round-robin), so writer threads
//! do not all bounce one cache line, summed on read (O(1): the number of
//! stripes is a constant).
//!
//! Each stripe holds a wrapping `u64`; only the sum means anything, and any
//! stripe may be "negative" because a cluster is often added on one stripe and
//! taken away on another.
//!
//! # Why the sum never undercounts a finished mark
//!
//! Markers add the *whole* range to the counter **before** they set the bits,
//! then subtract the bits that were already set. Takers subtract what they
//! cleared **after** clearing it. A taker can only clear a bit after the word
//! RMW that set it (mark: release, take: acquire), so the marker's addition
//! happens before the taker's subtraction. Hence, as long as no take runs
//! concurrently with the read, the sum is at least the number of set bits
//! that were set by marks that happened before the read; at quiescence it is
//! exact. All counter operations are `Relaxed`: the ordering comes from the
//! word RMWs, the counter only has to be coherent.
//!
//! [`DirtyBitmap::dirty_clusters`]: crate::DirtyBitmap::dirty_clusters

use crate::sync::{AtomicU64, Ordering};

/// Stripes in a normal build: threads beyond 16 share stripes (still correct,
/// just contended); 16 x 128 B = 2 KiB.
#[cfg(not(loom))]
const STRIPES: usize = 16;
/// Fewer stripes under loom: each one is a modelled object.
#[cfg(loom)]
const STRIPES: usize = 2;

/// This thread's stripe index, handed out round-robin on first use.
#[cfg(not(loom))]
fn thread_stripe() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;

    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    MINE.try_with(|mine| {
        if mine.get() == usize::MAX {
            mine.set(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % STRIPES);
        }
        mine.get()
    })
    // During thread-local destruction: any stripe will do.
    .unwrap_or(0)
}

/// One counter stripe on its own pair of cache lines (adjacent-line
/// prefetch makes 128 B the unit of false sharing on x86).
#[repr(align(128))]
struct Stripe(AtomicU64);

pub(crate) struct DirtyCounter {
    stripes: Box<[Stripe]>,
}

impl DirtyCounter {
    pub(crate) fn new() -> Self {
        DirtyCounter {
            stripes: (0..STRIPES).map(|_| Stripe(AtomicU64::new(0))).collect(),
        }
    }

    /// The stripe this thread counts on. Any choice is correct (only the sum
    /// matters); one stripe per thread keeps each thread's counter line in
    /// its own cache, where striping by disk position would make two threads
    /// writing all over the disk trade every stripe's line back and forth.
    /// Under loom, where a process-wide counter would make runs
    /// nondeterministic, the stripe comes from `hint` (a word index).
    fn stripe(&self, hint: u64) -> &AtomicU64 {
        #[cfg(not(loom))]
        let i = {
            let _ = hint;
            thread_stripe()
        };
        #[cfg(loom)]
        let i = (hint % STRIPES as u64) as usize;
        &self.stripes[i].0
    }

    /// Adds `n` clusters. Relaxed: see the module docs.
    pub(crate) fn add(&self, hint: u64, n: u64) {
        if n != 0 {
            self.stripe(hint).fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Subtracts `n` clusters (wrapping). Relaxed: see the module docs.
    pub(crate) fn sub(&self, hint: u64, n: u64) {
        if n != 0 {
            self.stripe(hint).fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// The sum of the stripes, clamped to `0..=max` (a read that races with
    /// takes may transiently see a subtraction before the matching addition
    /// on another stripe).
    pub(crate) fn sum(&self, max: u64) -> u64 {
        let total = self
            .stripes
            .iter()
            .fold(0u64, |acc, s| acc.wrapping_add(s.0.load(Ordering::Relaxed)));
        // Two's complement: a "negative" total reads as a huge u64.
        if (total as i64) < 0 {
            0
        } else {
            total.min(max)
        }
    }

    /// Heap bytes used.
    pub(crate) fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.stripes)
    }
}
