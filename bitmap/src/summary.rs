//! The bit hierarchy: level 0 holds one bit per cluster; every level above
//! holds one bit per word of the level below, meaning "that word may be
//! non-zero". The top level is a single word, so a clean bitmap answers
//! "anything dirty?" with one load, and finding the next dirty cluster costs
//! one word per level (5 levels for 2^30 clusters, a 64 TiB disk at 64 KiB).
//!
//! ```text
//!   level 2 (top)  [0100...]                 one word
//!                    |
//!   level 1        [0000...][1000...] ...    bit i: level-0 word i may be non-zero
//!                             |
//!   level 0        ... [0000...][0010...] ...  bit c: cluster c is dirty
//! ```
//!
//! # Invariant
//!
//! *When no operation is in flight*, every non-zero word at level `k` has its
//! bit set at level `k + 1`. Summary bits may be set over a zero word (a stale
//! hint costs a reader one wasted load and is repaired by the reader); they
//! must never be clear over a non-zero word, or that dirty data would never be
//! found and would be lost to the replica.
//!
//! # Protocol
//!
//! Every modification of every word is an atomic read-modify-write with
//! `AcqRel` ordering (never a plain store), so each modification heads a
//! release sequence that every later modification continues.
//!
//! * **Setter** (mark, or repair after a failed clear): RMW the lower word
//!   `W` to set bits, then load the upper word `U`; if the bit is not set,
//!   `fetch_or` it, and go on the same way to the top.
//! * **Clearer** (a take that left `W` zero, or a reader that found a stale
//!   hint): `fetch_and` the bit out of `U`, **then re-check `W` with an RMW**
//!   (`fetch_or(0)`); if `W` is non-zero, set the bit again (as a setter
//!   from `U` upwards); if `W` is still zero and `U` became zero, do the same
//!   one level up.
//!
//! Why no set bit is left without its summary bit: take a bit `B` of `W`
//! that is set at quiescence, the setter `S` whose RMW last turned it on, and
//! the last clearer `C` of the summary bit in `U`. Order the two RMWs on `W`
//! (`S.set` and `C.recheck`) by `W`'s modification order:
//!
//! 1. `S.set` first: `C.recheck`, being an RMW, reads the latest value, which
//!    still has `B` (nothing clears `B` after `S.set`), so `C` sets `U`'s bit
//!    again after its own clear, the last clear. The bit stays set.
//! 2. `C.recheck` first: `S.set` (acquire) reads a value from the release
//!    sequence headed by `C.recheck` (release), so `C`'s clear of `U`
//!    happens before `S`'s load of `U`, and by read-write coherence that load
//!    sees the clear or a later modification. Either it sees the bit clear
//!    and sets it, or it sees a later setter's bit, which no clear follows.
//!
//! That is why the re-check must be an RMW: with a plain load, case 2 has
//! no synchronisation and both sides could read stale values (the
//! store-buffer pattern, which would otherwise need `SeqCst` on both sides).
//! The setter's load of `U` may be `Relaxed`: the argument uses only
//! coherence and the acquire of its preceding RMW on `W`. `tests/loom.rs`
//! checks this protocol under loom, including over three levels.
//!
//! A setter also loads (and if needed sets) every summary level above even
//! when it finds a bit already set, so once a mark returns, every level above
//! its clusters is set unless a take has run concurrently since: a reader
//! that starts after the mark returns finds it.

use crate::error::BitmapError;
use crate::sync::{AtomicU64, Ordering};

/// Bits per word, at every level.
const WORD_BITS: u64 = 64;

/// The words of one level.
type Level = Box<[AtomicU64]>;

/// The mask of the bits of word `w` that fall in the inclusive bit range
/// `first..=last` (indices within the same level).
pub(crate) fn word_mask(w: u64, first: u64, last: u64) -> u64 {
    let lo = if first / WORD_BITS == w {
        first % WORD_BITS
    } else {
        0
    };
    let hi = if last / WORD_BITS == w {
        last % WORD_BITS
    } else {
        WORD_BITS - 1
    };
    (!0u64 >> (WORD_BITS - 1 - hi)) & (!0u64 << lo)
}

/// Allocates `n` zeroed atomic words, reporting failure instead of aborting.
fn zeroed(n: u64) -> Result<Level, BitmapError> {
    let bytes = u128::from(n) * 8;
    let oom = || BitmapError::OutOfMemory { bytes };
    let n = usize::try_from(n).map_err(|_| oom())?;
    let mut words = Vec::new();
    words.try_reserve_exact(n).map_err(|_| oom())?;
    words.extend((0..n).map(|_| AtomicU64::new(0)));
    Ok(words.into_boxed_slice())
}

/// Cluster bits plus their summary levels; see the module docs.
pub(crate) struct Hierarchy {
    /// `levels[0]` are the cluster bits; the last level has at most one word.
    levels: Box<[Level]>,
}

impl Hierarchy {
    /// A clean hierarchy over `bits` cluster bits.
    pub(crate) fn new(bits: u64) -> Result<Self, BitmapError> {
        let mut levels = Vec::new();
        let mut words = bits.div_ceil(WORD_BITS);
        levels.push(zeroed(words)?);
        while words > 1 {
            words = words.div_ceil(WORD_BITS);
            levels.push(zeroed(words)?);
        }
        Ok(Hierarchy {
            levels: levels.into_boxed_slice(),
        })
    }

    /// Number of level-0 words.
    pub(crate) fn words(&self) -> u64 {
        self.levels[0].len() as u64
    }

    /// Number of levels, the cluster bits included.
    pub(crate) fn depth(&self) -> usize {
        self.levels.len()
    }

    /// Heap bytes used by all levels.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.levels
            .iter()
            .map(|l| std::mem::size_of_val(&**l))
            .sum::<usize>()
            + std::mem::size_of_val(&*self.levels)
    }

    fn word(&self, level: usize, w: u64) -> &AtomicU64 {
        &self.levels[level][w as usize]
    }

    /// Level-0 word `w`, loaded with `Acquire` (pairs with the setter's
    /// release, so what happened before the mark is visible to the caller).
    pub(crate) fn load_word(&self, w: u64) -> u64 {
        self.word(0, w).load(Ordering::Acquire)
    }

    /// Sets cluster bits `first..=last` and their summaries. Returns how many
    /// of those bits were already set.
    pub(crate) fn set_bits(&self, first: u64, last: u64) -> u64 {
        let mut already = 0;
        for w in first / WORD_BITS..=last / WORD_BITS {
            let mask = word_mask(w, first, last);
            // AcqRel: release publishes the caller's prior writes to the
            // taker; acquire is case 2 of the protocol.
            let prev = self.word(0, w).fetch_or(mask, Ordering::AcqRel);
            already += u64::from((prev & mask).count_ones());
        }
        self.raise(1, first / WORD_BITS, last / WORD_BITS);
        already
    }

    /// Sets one cluster bit and its summaries; returns whether it was already
    /// set. The same protocol and orderings as [`Hierarchy::set_bits`], in a
    /// straight line: this is the path of nearly every guest write (one
    /// cluster), and a short path lets the CPU overlap one mark's cache miss
    /// with the next.
    pub(crate) fn set_one(&self, cluster: u64) -> bool {
        let mut idx = cluster / WORD_BITS;
        let bit = 1u64 << (cluster % WORD_BITS);
        let was_set = self.word(0, idx).fetch_or(bit, Ordering::AcqRel) & bit != 0;
        for level in &self.levels[1..] {
            let bit = 1u64 << (idx % WORD_BITS);
            idx /= WORD_BITS;
            let word = &level[idx as usize];
            // Relaxed check, then AcqRel set: as in `raise`.
            if word.load(Ordering::Relaxed) & bit == 0 {
                word.fetch_or(bit, Ordering::AcqRel);
            }
        }
        was_set
    }

    /// ORs `mask` into level-0 word `w` and sets its summaries. Returns the
    /// previous value. Orderings as in [`Hierarchy::set_bits`].
    pub(crate) fn or_word(&self, w: u64, mask: u64) -> u64 {
        let prev = self.word(0, w).fetch_or(mask, Ordering::AcqRel);
        self.raise(1, w, w);
        prev
    }

    /// The setter's walk: makes sure bits `first..=last` of `level` and
    /// everything above them are set.
    fn raise(&self, mut level: usize, mut first: u64, mut last: u64) {
        while level < self.levels.len() {
            for w in first / WORD_BITS..=last / WORD_BITS {
                let mask = word_mask(w, first, last);
                let word = self.word(level, w);
                // Relaxed load: a check that saves the shared summary line a
                // write in the common case; correctness rests on coherence
                // after the acquire RMW below it (module docs, case 2).
                if word.load(Ordering::Relaxed) & mask != mask {
                    word.fetch_or(mask, Ordering::AcqRel);
                }
            }
            first /= WORD_BITS;
            last /= WORD_BITS;
            level += 1;
        }
    }

    /// The clearer's walk, after word `idx` of `level` was seen zero: clears
    /// its summary bit, re-checks, and goes up while words become zero.
    fn lower(&self, mut level: usize, mut idx: u64) {
        while level + 1 < self.levels.len() {
            let bit = 1u64 << (idx % WORD_BITS);
            let prev = self
                .word(level + 1, idx / WORD_BITS)
                .fetch_and(!bit, Ordering::AcqRel);
            // The re-check must be an RMW (release): see the module docs.
            if self.word(level, idx).fetch_or(0, Ordering::AcqRel) != 0 {
                self.raise(level + 1, idx, idx);
                return;
            }
            if prev != bit {
                // The upper word still has other bits (or someone else
                // cleared ours and carries on from here).
                return;
            }
            level += 1;
            idx /= WORD_BITS;
        }
    }

    /// Atomically clears the `mask` bits of level-0 word `w`; returns the
    /// bits that were set (and so are now taken by the caller).
    pub(crate) fn take_bits(&self, w: u64, mask: u64) -> u64 {
        // AcqRel: acquire pairs with the markers' release; release keeps this
        // a link in the word's release sequence.
        let prev = self.word(0, w).fetch_and(!mask, Ordering::AcqRel);
        if prev != 0 && prev & !mask == 0 {
            self.lower(0, w);
        }
        prev & mask
    }

    /// Atomically clears the run of set bits that starts at cluster `first`,
    /// at most `max` bits and not past the end of `first`'s word. Returns the
    /// run length (0 if `first` is not set).
    fn take_prefix(&self, first: u64, max: u64) -> u64 {
        let w = first / WORD_BITS;
        let shift = first % WORD_BITS;
        let word = self.word(0, w);
        let mut cur = word.load(Ordering::Acquire);
        loop {
            let run = u64::from((!(cur >> shift)).trailing_zeros()).min(max);
            if run == 0 {
                return 0;
            }
            let mask = (!0u64 >> (WORD_BITS - run)) << shift;
            // Compare-exchange, not fetch_and: the bits cleared must be
            // exactly one contiguous run, even if another taker races.
            match word.compare_exchange_weak(cur, cur & !mask, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if cur & !mask == 0 {
                        self.lower(0, w);
                    }
                    return run;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Atomically takes a contiguous run of set bits starting at cluster
    /// `first`, at most `max` long, crossing words while the run goes on.
    /// Each word's part is taken by one RMW, so the run is contiguous and
    /// every bit in it was set and is now clear. Returns the length.
    pub(crate) fn take_run_at(&self, first: u64, max: u64) -> u64 {
        let mut taken = 0;
        while taken < max {
            let pos = first + taken;
            let limit = (max - taken).min(WORD_BITS - pos % WORD_BITS);
            let n = self.take_prefix(pos, limit);
            taken += n;
            if n < limit {
                break;
            }
        }
        taken
    }

    /// The lowest set cluster bit at or after `start`, or `None`. Loads are
    /// `Acquire`. A summary bit over a zero word is repaired on the way (with
    /// the clearer's protocol, so it is safe against concurrent marks).
    pub(crate) fn find_from(&self, start: u64) -> Option<u64> {
        let mut level = 0;
        let mut pos = start;
        let mut descended = false;
        loop {
            let w = pos / WORD_BITS;
            let words = &self.levels[level];
            if w >= words.len() as u64 {
                return None;
            }
            let value = words[w as usize].load(Ordering::Acquire);
            let bits = value & (!0u64 << (pos % WORD_BITS));
            if bits != 0 {
                let found = w * WORD_BITS + u64::from(bits.trailing_zeros());
                if level == 0 {
                    return Some(found);
                }
                level -= 1;
                pos = found * WORD_BITS;
                descended = true;
                continue;
            }
            if descended && value == 0 {
                // The summary promised this word might be non-zero: a stale hint.
                self.lower(level, w);
            }
            descended = false;
            if level + 1 == self.levels.len() {
                return None;
            }
            level += 1;
            pos = w + 1;
        }
    }

    /// Checks the invariant and that no bit lies past `bits` (call only when
    /// quiescent). Returns the number of set cluster bits.
    pub(crate) fn check(&self, bits: u64) -> Result<u64, String> {
        let mut count = 0u64;
        for (level, words) in self.levels.iter().enumerate() {
            let valid = if level == 0 {
                bits
            } else {
                self.levels[level - 1].len() as u64
            };
            for (w, word) in words.iter().enumerate() {
                let w = w as u64;
                let value = word.load(Ordering::Acquire);
                let past = value & !word_mask(w, w * WORD_BITS, valid.max(1) - 1);
                if past != 0 || (valid == 0 && value != 0) {
                    return Err(format!(
                        "level {level} word {w} has bits past the end: {value:#x}"
                    ));
                }
                if level == 0 {
                    count += u64::from(value.count_ones());
                }
                if value != 0 && level + 1 < self.levels.len() {
                    let up = self.word(level + 1, w / WORD_BITS).load(Ordering::Acquire);
                    if up & (1 << (w % WORD_BITS)) == 0 {
                        return Err(format!(
                            "level {level} word {w} is {value:#x} but its summary bit at \
                             level {} is clear",
                            level + 1
                        ));
                    }
                }
            }
        }
        Ok(count)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn word_mask_covers_exactly_the_range() {
        assert_eq!(word_mask(0, 0, 63), !0);
        assert_eq!(word_mask(0, 3, 5), 0b111000);
        assert_eq!(word_mask(1, 60, 66), 0b111);
        assert_eq!(word_mask(0, 60, 66), 0xf << 60);
        assert_eq!(word_mask(2, 60, 200), !0);
        assert_eq!(word_mask(0, 63, 63), 1 << 63);
    }

    #[test]
    fn depth_grows_by_one_level_per_64x() {
        let depth = |bits| Hierarchy::new(bits).unwrap().depth();
        assert_eq!(depth(0), 1);
        assert_eq!(depth(64), 1);
        assert_eq!(depth(65), 2);
        assert_eq!(depth(64 * 64), 2);
        assert_eq!(depth(64 * 64 + 1), 3);
    }

    #[test]
    fn find_walks_across_levels_and_repairs_stale_hints() {
        let h = Hierarchy::new(64 * 64 * 3).unwrap();
        assert_eq!(h.find_from(0), None);
        h.set_bits(5000, 5000);
        h.set_bits(9000, 9001);
        assert_eq!(h.find_from(0), Some(5000));
        assert_eq!(h.find_from(5001), Some(9000));
        assert_eq!(h.find_from(9002), None);
        assert_eq!(h.take_bits(5000 / 64, 1 << (5000 % 64)), 1 << (5000 % 64));
        // Leave a stale hint on purpose: set a summary bit over a zero word.
        h.raise(1, 10, 10);
        assert_eq!(h.find_from(0), Some(9000));
        assert_eq!(
            h.word(1, 0).load(Ordering::Relaxed) & (1 << 10),
            0,
            "hint repaired"
        );
        h.check(64 * 64 * 3).unwrap();
    }

    #[test]
    fn take_run_stops_at_the_first_clear_bit_and_crosses_words() {
        let h = Hierarchy::new(256).unwrap();
        h.set_bits(60, 70);
        h.set_bits(72, 72);
        assert_eq!(h.take_run_at(60, 100), 11);
        assert_eq!(h.take_run_at(71, 100), 0);
        assert_eq!(h.take_run_at(72, 100), 1);
        assert_eq!(h.check(256).unwrap(), 0);
        assert_eq!(h.find_from(0), None);
    }
}
