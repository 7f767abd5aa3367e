//! [`DirtyBitmap`]: geometry, marking, finding and counting. Taking lives in
//! `take.rs`, persistence in `persist.rs`.

use std::fmt;

use bitvec::prelude::{BitSlice, BitVec, Lsb0};

use crate::counter::DirtyCounter;
use crate::error::BitmapError;
use crate::summary::Hierarchy;

/// Smallest granularity accepted: 512 bytes, one sector.
///
/// ```
/// use ringmirror_bitmap::{DirtyBitmap, MIN_GRANULARITY};
/// assert!(DirtyBitmap::new(1 << 20, MIN_GRANULARITY / 2).is_err());
/// ```
pub const MIN_GRANULARITY: u64 = 512;
/// Largest granularity accepted: 64 MiB.
///
/// ```
/// use ringmirror_bitmap::{DirtyBitmap, MAX_GRANULARITY};
/// assert_eq!(DirtyBitmap::new(1 << 40, MAX_GRANULARITY).unwrap().clusters(), 16384);
/// ```
pub const MAX_GRANULARITY: u64 = 64 << 20;
/// The granularity the mirror job uses when none is given: 64 KiB.
///
/// ```
/// use ringmirror_bitmap::{DirtyBitmap, DEFAULT_GRANULARITY};
/// let bitmap = DirtyBitmap::new(1 << 30, DEFAULT_GRANULARITY).unwrap();
/// assert_eq!(bitmap.clusters(), 16384);
/// ```
pub const DEFAULT_GRANULARITY: u64 = 64 << 10;

/// A lock-free dirty bitmap: one bit per `granularity`-byte cluster of a
/// `len`-byte disk, set by guest writes from any thread and taken (tested
/// and cleared) by the mirror scheduler.
///
/// All methods take `&self`; the type is `Send + Sync`, meant to be shared
/// behind an [`Arc`](std::sync::Arc). No method takes a lock. Each method's
/// docs state its memory ordering; the protocol that keeps the summary levels
/// right under concurrency is argued in the crate docs.
///
/// ```
/// use std::sync::Arc;
/// use ringmirror_bitmap::DirtyBitmap;
///
/// let bitmap = Arc::new(DirtyBitmap::new(10 << 20, 65536)?);
/// let writer = {
///     let bitmap = Arc::clone(&bitmap);
///     std::thread::spawn(move || bitmap.mark(4096, 8192))
/// };
/// writer.join().unwrap()?;
/// assert_eq!(bitmap.take_run(0, 64), Some((0, 1)));
/// assert!(bitmap.is_clean());
/// # Ok::<(), ringmirror_bitmap::BitmapError>(())
/// ```
pub struct DirtyBitmap {
    len: u64,
    granularity: u64,
    shift: u32,
    clusters: u64,
    pub(crate) bits: Hierarchy,
    pub(crate) dirty: DirtyCounter,
}

impl fmt::Debug for DirtyBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirtyBitmap")
            .field("len", &self.len)
            .field("granularity", &self.granularity)
            .field("clusters", &self.clusters)
            .field("dirty_clusters", &self.dirty_clusters())
            .finish()
    }
}

impl DirtyBitmap {
    /// A clean bitmap for a disk of `len` bytes at `granularity` bytes per
    /// bit. `len` need not be a multiple of the granularity (the last
    /// cluster is partial); `len == 0` gives an empty bitmap.
    ///
    /// **Ordering:** none needed: the new bitmap is not shared yet.
    ///
    /// Fails if the granularity is not a power of two in
    /// [`MIN_GRANULARITY`]`..=`[`MAX_GRANULARITY`], or if the bits cannot be
    /// allocated (about 2 MiB per TiB at 64 KiB).
    ///
    /// ```
    /// use ringmirror_bitmap::{BitmapError, DirtyBitmap};
    ///
    /// let bitmap = DirtyBitmap::new(3 * 65536 + 1, 65536)?;
    /// assert_eq!(bitmap.clusters(), 4);
    /// assert!(matches!(
    ///     DirtyBitmap::new(1 << 20, 1000),
    ///     Err(BitmapError::InvalidGranularity { granularity: 1000 })
    /// ));
    /// # Ok::<(), BitmapError>(())
    /// ```
    pub fn new(len: u64, granularity: u64) -> Result<DirtyBitmap, BitmapError> {
        if !granularity.is_power_of_two()
            || !(MIN_GRANULARITY..=MAX_GRANULARITY).contains(&granularity)
        {
            return Err(BitmapError::InvalidGranularity { granularity });
        }
        let clusters = len.div_ceil(granularity);
        Ok(DirtyBitmap {
            len,
            granularity,
            shift: granularity.trailing_zeros(),
            clusters,
            bits: Hierarchy::new(clusters)?,
            dirty: DirtyCounter::new(),
        })
    }

    /// A bitmap whose dirty clusters are the set bits of `bits`, which must
    /// hold exactly [`clusters`](Self::clusters) bits (the inverse of
    /// [`to_bitvec`](Self::to_bitvec)).
    ///
    /// **Ordering:** none needed: the new bitmap is not shared yet.
    ///
    /// ```
    /// use bitvec::prelude::*;
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bits = bitvec![u64, Lsb0; 0, 1, 1, 0];
    /// let bitmap = DirtyBitmap::from_bitvec(4 * 512, 512, &bits)?;
    /// assert_eq!(bitmap.dirty_clusters(), 2);
    /// assert_eq!(bitmap.to_bitvec(), bits);
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn from_bitvec(
        len: u64,
        granularity: u64,
        bits: &BitSlice<u64, Lsb0>,
    ) -> Result<DirtyBitmap, BitmapError> {
        let bitmap = DirtyBitmap::new(len, granularity)?;
        if bits.len() as u64 != bitmap.clusters {
            return Err(BitmapError::GeometryMismatch {
                len,
                granularity,
                other_len: bits.len() as u64,
                other_granularity: 1,
            });
        }
        for (w, chunk) in bits.chunks(64).enumerate() {
            let mut word = 0u64;
            for bit in chunk.iter_ones() {
                word |= 1 << bit;
            }
            bitmap.or_word(w as u64, word);
        }
        Ok(bitmap)
    }

    /// Length of the disk in bytes. **Ordering:** none (fixed at creation).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(1000, 512)?;
    /// assert_eq!((bitmap.len(), bitmap.granularity(), bitmap.clusters()), (1000, 512, 2));
    /// assert!(!bitmap.is_empty());
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the disk has length 0 (so the bitmap has no clusters). For
    /// "nothing is dirty", see [`is_clean`](Self::is_clean).
    /// **Ordering:** none (fixed at creation).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// assert!(DirtyBitmap::new(0, 65536)?.is_empty());
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes per cluster (a power of two). **Ordering:** none (fixed at
    /// creation). Example: [`len`](Self::len).
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    /// Number of clusters, `ceil(len / granularity)`; the last one may be
    /// partial. **Ordering:** none (fixed at creation). Example:
    /// [`len`](Self::len).
    pub fn clusters(&self) -> u64 {
        self.clusters
    }

    /// The cluster that holds byte `offset` (not range-checked).
    /// **Ordering:** none (arithmetic only).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(1 << 20, 4096)?;
    /// assert_eq!(bitmap.cluster_of(8191), 1);
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn cluster_of(&self, offset: u64) -> u64 {
        offset >> self.shift
    }

    /// The bytes covered by clusters `first .. first + count` as
    /// `(offset, len)`, clipped to the end of the disk: what a copy of that
    /// run must read and write. **Ordering:** none (arithmetic only).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(65536 + 100, 65536)?;
    /// assert_eq!(bitmap.run_bytes(0, 2), (0, 65636));
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn run_bytes(&self, first: u64, count: u64) -> (u64, u64) {
        let start = (first << self.shift).min(self.len);
        let end = (first.saturating_add(count))
            .checked_shl(self.shift)
            .map_or(self.len, |e| e.min(self.len));
        (start, end.saturating_sub(start))
    }

    /// Number of bit levels: the cluster bits plus the summary levels above
    /// them (1 for up to 64 clusters, 5 for 2^30 clusters). A search for the
    /// next dirty cluster touches about one word per level.
    /// **Ordering:** none (fixed at creation).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// // 64 TiB at 64 KiB: 2^30 clusters, 2^24 words, then 2^18, 2^12, 2^6, 1.
    /// assert_eq!(DirtyBitmap::new(64 << 40, 65536)?.levels(), 5);
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn levels(&self) -> usize {
        self.bits.depth()
    }

    /// Heap memory the bitmap uses, in bytes (all levels plus the counter).
    /// **Ordering:** none (fixed at creation).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let one_tib = DirtyBitmap::new(1 << 40, 65536)?;
    /// assert!(one_tib.heap_bytes() < 2_200_000); // about 2 MiB per TiB
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn heap_bytes(&self) -> usize {
        self.bits.heap_bytes() + self.dirty.heap_bytes()
    }

    /// Marks the clusters overlapping bytes `offset .. offset + len` dirty,
    /// widening a range that is not cluster-aligned outward. `len == 0` is a
    /// no-op. A range past the end of the disk is refused with
    /// [`BitmapError::OutOfRange`] and marks nothing.
    ///
    /// Cost: one atomic `fetch_or` per 64-cluster word touched, plus a load
    /// per summary level (a `fetch_or` only where a summary bit was clear).
    ///
    /// **Ordering:** the word `fetch_or`s are `AcqRel`. Release: everything
    /// the caller did before `mark` (the guest write completing) happens
    /// before the return of the [`take_run`](Self::take_run) that takes these
    /// clusters. Acquire: pairs with a concurrent take's summary re-check
    /// (crate docs). Once `mark` returns, [`next_dirty`](Self::next_dirty) and
    /// [`dirty_clusters`](Self::dirty_clusters) calls that start afterwards
    /// see the clusters, unless a take runs concurrently with them (it may
    /// have taken the clusters, or be between clearing and restoring the
    /// summary bit above them; a later call sees them).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(1 << 20, 4096)?;
    /// bitmap.mark(4000, 200)?; // straddles clusters 0 and 1
    /// assert!(bitmap.is_dirty(0) && bitmap.is_dirty(1) && !bitmap.is_dirty(2));
    /// assert!(bitmap.mark((1 << 20) - 10, 11).is_err());
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn mark(&self, offset: u64, len: u64) -> Result<(), BitmapError> {
        if len == 0 {
            return Ok(());
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {
                let first = offset >> self.shift;
                let last = (end - 1) >> self.shift;
                self.mark_unchecked(first, last - first + 1);
                Ok(())
            }
            _ => Err(BitmapError::OutOfRange {
                offset,
                len,
                disk_len: self.len,
            }),
        }
    }

    /// Marks clusters `first .. first + count` dirty, e.g. to re-mark a run
    /// whose copy failed. `count == 0` is a no-op; a range past the last
    /// cluster is refused with [`BitmapError::ClusterOutOfRange`] and marks
    /// nothing. Same cost and **ordering** as [`mark`](Self::mark).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(1 << 20, 65536)?;
    /// bitmap.mark_clusters(3, 2)?;
    /// let run = bitmap.take_run(0, 16).unwrap();
    /// // ... the copy of `run` failed: put it back.
    /// bitmap.mark_clusters(run.0, run.1)?;
    /// assert_eq!(bitmap.dirty_clusters(), 2);
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn mark_clusters(&self, first: u64, count: u64) -> Result<(), BitmapError> {
        if count == 0 {
            return Ok(());
        }
        match first.checked_add(count) {
            Some(end) if end <= self.clusters => {
                self.mark_unchecked(first, count);
                Ok(())
            }
            _ => Err(BitmapError::ClusterOutOfRange {
                first,
                count,
                clusters: self.clusters,
            }),
        }
    }

    fn mark_unchecked(&self, first: u64, count: u64) {
        let hint = first / 64;
        // Count first, correct after: the counter must never lag behind a
        // bit a taker could already have cleared (see counter.rs).
        self.dirty.add(hint, count);
        let already = if count == 1 {
            u64::from(self.bits.set_one(first))
        } else {
            self.bits.set_bits(first, first + count - 1)
        };
        self.dirty.sub(hint, already);
    }

    /// ORs `mask` into level-0 word `w`, keeping the counter right.
    pub(crate) fn or_word(&self, w: u64, mask: u64) {
        if mask == 0 {
            return;
        }
        self.dirty.add(w, u64::from(mask.count_ones()));
        let prev = self.bits.or_word(w, mask);
        self.dirty.sub(w, u64::from((prev & mask).count_ones()));
    }

    /// Whether `cluster` is dirty (`false` past the last cluster).
    ///
    /// **Ordering:** `Acquire` load: if it returns `true`, the writes made
    /// before the mark that set the bit are visible to the caller.
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(1 << 20, 65536)?;
    /// bitmap.mark(65536, 1)?;
    /// assert!(bitmap.is_dirty(1) && !bitmap.is_dirty(0) && !bitmap.is_dirty(99));
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn is_dirty(&self, cluster: u64) -> bool {
        cluster < self.clusters && self.bits.load_word(cluster / 64) & (1 << (cluster % 64)) != 0
    }

    /// Whether no cluster is dirty: one load on a clean bitmap.
    /// Same guarantees and **ordering** as [`next_dirty`](Self::next_dirty).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(64 << 40, 65536)?;
    /// assert!(bitmap.is_clean());
    /// bitmap.mark((64 << 40) - 1, 1)?;
    /// assert!(!bitmap.is_clean());
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn is_clean(&self) -> bool {
        self.bits.find_from(0).is_none()
    }

    /// The first dirty cluster at or after `from`, wrapping around to the
    /// start of the disk (a sweep); `None` if nothing is dirty. `from` past
    /// the last cluster starts at 0.
    ///
    /// Cost: one word per summary level on a clean or mostly clean disk, so
    /// a whole clean 64 TiB disk at 64 KiB is answered in a few loads.
    ///
    /// **Ordering:** `Acquire` loads. A mark that returned before this call
    /// started is found unless a concurrent take took it or is repairing the
    /// summary above it at this instant (then a later call finds it). A
    /// summary bit found over a zero word is cleared on the way with the
    /// take's clear-then-re-check protocol, so this may write.
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(1 << 30, 65536)?;
    /// bitmap.mark_clusters(100, 1)?;
    /// assert_eq!(bitmap.next_dirty(0), Some(100));
    /// assert_eq!(bitmap.next_dirty(101), Some(100)); // wrapped
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn next_dirty(&self, from: u64) -> Option<u64> {
        let from = if from < self.clusters { from } else { 0 };
        self.bits.find_from(from).or_else(|| {
            if from > 0 {
                self.bits.find_from(0)
            } else {
                None
            }
        })
    }

    /// The run of dirty clusters that starts at
    /// [`next_dirty(from)`](Self::next_dirty), at most `max` long and not
    /// wrapping past the end, as `(first, count)`. It only looks: the run may
    /// change before it is used; use [`take_run`](Self::take_run) to claim.
    /// `max == 0` gives `None`.
    ///
    /// **Ordering:** `Acquire` loads, as [`next_dirty`](Self::next_dirty).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(1 << 20, 4096)?;
    /// bitmap.mark_clusters(5, 10)?;
    /// assert_eq!(bitmap.dirty_run(0, 4), Some((5, 4)));
    /// assert_eq!(bitmap.dirty_clusters(), 10); // nothing was taken
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn dirty_run(&self, from: u64, max: u64) -> Option<(u64, u64)> {
        if max == 0 {
            return None;
        }
        let mut from = from;
        loop {
            let first = self.next_dirty(from)?;
            let count = self.run_length(first, max.min(self.clusters - first));
            if count > 0 {
                return Some((first, count));
            }
            // Taken between the two looks: search again from there.
            from = first;
        }
    }

    /// Length of the run of set bits starting at `first`, at most `limit`.
    fn run_length(&self, first: u64, limit: u64) -> u64 {
        let mut count = 0;
        while count < limit {
            let pos = first + count;
            let ones = u64::from((!(self.bits.load_word(pos / 64) >> (pos % 64))).trailing_zeros());
            count += ones.min(limit - count);
            if ones == 0 || (pos + ones) % 64 != 0 {
                break;
            }
        }
        count
    }

    /// The number of dirty clusters, from a counter: O(1), callable from any
    /// thread at any time.
    ///
    /// Exact when no mark or take is in flight. Otherwise: if no take runs
    /// concurrently, it is at least the number of dirty clusters marked by
    /// marks that returned before the call (so `0` means every finished mark
    /// has been taken); concurrent marks may already be counted before their
    /// bits are set. Always within `0..=clusters`.
    ///
    /// **Ordering:** `Relaxed` loads of the counter stripes; the guarantee
    /// above comes from the markers counting before setting and takers
    /// uncounting after clearing, ordered by the word RMWs.
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(1 << 30, 65536)?;
    /// bitmap.mark(0, 200_000)?; // clusters 0..=3
    /// bitmap.mark(0, 1)?;       // already dirty: not counted twice
    /// assert_eq!(bitmap.dirty_clusters(), 4);
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn dirty_clusters(&self) -> u64 {
        self.dirty.sum(self.clusters)
    }

    /// The number of dirty bytes: dirty clusters times the granularity, the
    /// last cluster counting only up to the end of the disk. Same cost and
    /// guarantees as [`dirty_clusters`](Self::dirty_clusters) (plus one
    /// `Acquire` load of the last cluster's word when the disk ends in a
    /// partial cluster).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(65536 + 100, 65536)?;
    /// bitmap.mark(65536, 1)?;
    /// assert_eq!(bitmap.dirty_bytes(), 100);
    /// bitmap.mark(0, 1)?;
    /// assert_eq!(bitmap.dirty_bytes(), 65636);
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn dirty_bytes(&self) -> u64 {
        let clusters = self.dirty_clusters();
        if clusters == 0 {
            return 0;
        }
        let mut bytes = clusters << self.shift;
        let tail = self.len & (self.granularity - 1);
        if tail != 0 && self.is_dirty(self.clusters - 1) {
            bytes -= self.granularity - tail;
        }
        bytes.min(self.len)
    }

    /// Marks every cluster dirty (the start of a full sync).
    /// **Ordering:** as [`mark`](Self::mark).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(10 * 65536 + 1, 65536)?;
    /// bitmap.set_all();
    /// assert_eq!((bitmap.dirty_clusters(), bitmap.dirty_bytes()), (11, bitmap.len()));
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn set_all(&self) {
        if self.clusters > 0 {
            self.mark_unchecked(0, self.clusters);
        }
    }

    /// ORs `other`'s dirty clusters into this bitmap. Both must cover the
    /// same length at the same granularity
    /// ([`BitmapError::GeometryMismatch`] otherwise).
    ///
    /// **Ordering:** `Acquire` loads of `other`'s words (one at a time, so a
    /// concurrently changing `other` is merged word by word, not as a
    /// snapshot), then marks as [`mark`](Self::mark).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let a = DirtyBitmap::new(1 << 20, 65536)?;
    /// let b = DirtyBitmap::new(1 << 20, 65536)?;
    /// a.mark_clusters(1, 1)?;
    /// b.mark_clusters(2, 2)?;
    /// a.merge(&b)?;
    /// assert_eq!(a.dirty_clusters(), 3);
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn merge(&self, other: &DirtyBitmap) -> Result<(), BitmapError> {
        if other.len != self.len || other.granularity != self.granularity {
            return Err(BitmapError::GeometryMismatch {
                len: self.len,
                granularity: self.granularity,
                other_len: other.len,
                other_granularity: other.granularity,
            });
        }
        for w in 0..self.bits.words() {
            self.or_word(w, other.bits.load_word(w));
        }
        Ok(())
    }

    /// Copies the bits out, one bit per cluster (`len() == clusters()`), for
    /// persistence and inspection.
    ///
    /// **Ordering:** one `Acquire` load per word: each word is read
    /// atomically, but the whole is a snapshot only if the bitmap is
    /// quiescent.
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(100 * 512, 512)?;
    /// bitmap.mark_clusters(98, 2)?;
    /// let bits = bitmap.to_bitvec();
    /// assert_eq!(bits.len(), 100);
    /// assert_eq!(bits.iter_ones().collect::<Vec<_>>(), vec![98, 99]);
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn to_bitvec(&self) -> BitVec<u64, Lsb0> {
        let words = (0..self.bits.words())
            .map(|w| self.bits.load_word(w))
            .collect();
        let mut bits = BitVec::from_vec(words);
        bits.truncate(self.clusters as usize);
        bits
    }

    /// Checks the internal invariants: every non-zero word has its summary
    /// bit set, no bit lies past the last cluster, and the counter equals the
    /// number of set bits. O(size of the bitmap); meaningful only when no
    /// mark or take is in flight. For tests and debugging.
    /// **Ordering:** `Acquire` loads, one word at a time.
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(1 << 30, 65536)?;
    /// bitmap.mark(12345, 1 << 20)?;
    /// bitmap.check_consistency()?;
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn check_consistency(&self) -> Result<(), BitmapError> {
        let set = self
            .bits
            .check(self.clusters)
            .map_err(BitmapError::Inconsistent)?;
        let counted = self.dirty_clusters();
        if counted != set {
            return Err(BitmapError::Inconsistent(format!(
                "the counter says {counted} dirty clusters, the bits say {set}"
            )));
        }
        Ok(())
    }
}
