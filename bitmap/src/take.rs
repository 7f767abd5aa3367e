//! Taking: atomically test-and-clearing dirty clusters so that each one is
//! handed to exactly one copier, and a mark racing with the take is either
//! in what the take returns or still set afterwards.

use crate::bitmap::DirtyBitmap;
use crate::error::BitmapError;
use crate::summary::word_mask;

impl DirtyBitmap {
    /// Finds the next dirty cluster at or after `from` (wrapping, as
    /// [`next_dirty`](Self::next_dirty)) and atomically takes the contiguous
    /// dirty run that starts there, at most `max` clusters and not wrapping
    /// past the end of the disk. Returns `(first, count)`: exactly the
    /// clusters this call cleared; the caller now owns copying them. `None`
    /// if nothing is dirty (or `max == 0`).
    ///
    /// Each word's part of the run is cleared by one compare-exchange, so
    /// two takers never return the same cluster, and a mark racing with the
    /// take either lands before the compare-exchange (and is in the run) or
    /// after it (and stays dirty). If another taker wins the first cluster,
    /// this one searches again (lock-free, not wait-free).
    ///
    /// **Ordering:** the compare-exchanges are `AcqRel`: acquire pairs with
    /// the release of the marks that set the bits, so everything that
    /// happened before those marks (the guest writes) happens before this
    /// returns; release keeps the word's release sequence unbroken for the
    /// summary protocol. A word left zero has its summary bit cleared and
    /// re-checked (crate docs). The counter is decremented afterwards
    /// (`Relaxed`).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(1 << 30, 65536)?;
    /// bitmap.mark_clusters(10, 100)?;
    /// assert_eq!(bitmap.take_run(0, 64), Some((10, 64)));
    /// assert_eq!(bitmap.take_run(0, 64), Some((74, 36)));
    /// assert_eq!(bitmap.take_run(0, 64), None);
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn take_run(&self, from: u64, max: u64) -> Option<(u64, u64)> {
        if max == 0 {
            return None;
        }
        let mut from = from;
        loop {
            let first = self.next_dirty(from)?;
            let taken = self
                .bits
                .take_run_at(first, max.min(self.clusters() - first));
            if taken > 0 {
                self.dirty.sub(first / 64, taken);
                return Some((first, taken));
            }
            // Another taker won `first`: look again from there.
            from = first;
        }
    }

    /// Atomically takes whatever is dirty in clusters `first .. first +
    /// count` and returns exactly the clusters it cleared, as ascending,
    /// non-adjacent `(first, count)` runs (empty if nothing was dirty).
    /// A range past the last cluster is refused with
    /// [`BitmapError::ClusterOutOfRange`] and takes nothing.
    ///
    /// Useful when a copy must cover a fixed range (write-blocking mode, or
    /// a request aligned to something larger than a cluster).
    ///
    /// **Ordering:** one `AcqRel` `fetch_and` per word, otherwise as
    /// [`take_run`](Self::take_run).
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(1 << 20, 4096)?;
    /// bitmap.mark_clusters(2, 3)?;
    /// bitmap.mark_clusters(8, 1)?;
    /// assert_eq!(bitmap.take_range(0, 10)?, vec![(2, 3), (8, 1)]);
    /// assert_eq!(bitmap.take_range(0, 10)?, vec![]);
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn take_range(&self, first: u64, count: u64) -> Result<Vec<(u64, u64)>, BitmapError> {
        let clusters = self.clusters();
        match first.checked_add(count) {
            Some(end) if end <= clusters => {}
            _ => {
                return Err(BitmapError::ClusterOutOfRange {
                    first,
                    count,
                    clusters,
                })
            }
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        if count > 0 {
            self.take_words(first, first + count - 1, |w, mut taken| {
                while taken != 0 {
                    let start = u64::from(taken.trailing_zeros());
                    let len = u64::from((!(taken >> start)).trailing_zeros());
                    let run_first = w * 64 + start;
                    match runs.last_mut() {
                        Some(last) if last.0 + last.1 == run_first => last.1 += len,
                        _ => runs.push((run_first, len)),
                    }
                    taken &= !((!0u64 >> (64 - len)) << start);
                }
            });
        }
        Ok(runs)
    }

    /// Clears every cluster and returns how many were dirty.
    ///
    /// **Ordering:** one `AcqRel` `fetch_and` per word, as
    /// [`take_range`](Self::take_range): a concurrent mark is either counted
    /// here and cleared, or stays dirty.
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let bitmap = DirtyBitmap::new(1 << 30, 65536)?;
    /// bitmap.mark(0, 1 << 20)?;
    /// assert_eq!(bitmap.clear_all(), 16);
    /// assert!(bitmap.is_clean());
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn clear_all(&self) -> u64 {
        let mut cleared = 0;
        if self.clusters() > 0 {
            self.take_words(0, self.clusters() - 1, |_, taken| {
                cleared += u64::from(taken.count_ones());
            });
        }
        cleared
    }

    /// Takes bits `first..=last` word by word, handing each word's taken bits
    /// to `each`, and uncounts them.
    fn take_words(&self, first: u64, last: u64, mut each: impl FnMut(u64, u64)) {
        let mut total = 0;
        for w in first / 64..=last / 64 {
            let taken = self.bits.take_bits(w, word_mask(w, first, last));
            if taken != 0 {
                total += u64::from(taken.count_ones());
                each(w, taken);
            }
        }
        self.dirty.sub(first / 64, total);
    }
}
