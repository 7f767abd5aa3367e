//! A lock-free atomic dirty bitmap for ringmirror's live mirror job.
//!
//! Guest writes [`mark`](DirtyBitmap::mark) the clusters they touch from any
//! thread while the mirror scheduler [`take_run`](DirtyBitmap::take_run)s
//! dirty runs away to copy them. A mark is never lost: a mark racing with a
//! take is either in the run the take returns or still dirty afterwards, and
//! no cluster is handed to two takers. Nothing takes a lock.
//!
//! ```
//! use std::sync::Arc;
//! use ringmirror_bitmap::DirtyBitmap;
//!
//! // A 1 GiB disk tracked at 64 KiB per bit.
//! let bitmap = Arc::new(DirtyBitmap::new(1 << 30, 65536)?);
//!
//! // Guest writes (any thread) mark what they touched, widened to clusters.
//! bitmap.mark(100_000, 4096)?;
//! bitmap.mark(1 << 20, 3 * 65536)?;
//! assert_eq!(bitmap.dirty_bytes(), 4 * 65536);
//!
//! // The mirror sweeps: take a run (at most 8 clusters), copy it, go on.
//! let mut cursor = 0;
//! while let Some((first, count)) = bitmap.take_run(cursor, 8) {
//!     let (offset, len) = bitmap.run_bytes(first, count);
//!     // ... copy bytes offset .. offset + len; on failure:
//!     // bitmap.mark_clusters(first, count)?;
//!     assert!(len > 0 && offset < bitmap.len());
//!     cursor = first + count;
//! }
//! assert_eq!(bitmap.dirty_clusters(), 0);
//! # Ok::<(), ringmirror_bitmap::BitmapError>(())
//! ```
//!
//! # Layout
//!
//! One bit per cluster in `AtomicU64` words (level 0), and above them
//! summary levels, one bit per word of the level below, up to a single word
//! (see `summary.rs`). Finding the next dirty cluster walks one word per
//! level, so a clean 64 TiB disk at 64 KiB (2^30 clusters, 5 levels) is
//! scanned in a few loads. A striped counter gives the dirty count in O(1).
//! Memory is about 2 MiB per TiB of disk at 64 KiB granularity (32 MiB at
//! 4 KiB, 260 MiB at 512 B); see `bench/RESULTS.md`.
//!
//! # Memory ordering, in brief
//!
//! * Every change to a word is an `AcqRel` read-modify-write (no plain
//!   stores), so a mark (release) happens before the take (acquire) that
//!   clears its bit: the taker sees whatever preceded the mark.
//! * A take that leaves a word zero clears the word's summary bit and then
//!   **re-checks the word with an RMW** (`fetch_or(0)`); if it is non-zero
//!   again, it sets the summary bit back. A marker sets the word, then checks
//!   (and sets) the summary bits above. Whichever of the marker's RMW and the
//!   taker's re-check comes second in the word's modification order sees the
//!   other: the re-check sees the new bit, or the marker (synchronised by the
//!   release sequence) sees the cleared summary bit and sets it. So no dirty
//!   word is ever left without its summary bit once operations finish. The
//!   full argument is in `summary.rs`; `tests/loom.rs` model-checks it.
//! * Taking a run uses a compare-exchange per word so the bits cleared are
//!   exactly the contiguous run returned.
//! * The counter is `Relaxed`: markers count before setting and takers
//!   uncount after clearing, so it never under-reports a finished mark while
//!   no take is running, and is exact at quiescence (`counter.rs`).
//!
//! Each method's docs say what its orderings guarantee.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bitmap;
mod counter;
mod crc;
mod error;
mod persist;
mod summary;
mod sync;
mod take;

pub use bitmap::{DirtyBitmap, DEFAULT_GRANULARITY, MAX_GRANULARITY, MIN_GRANULARITY};
pub use error::{BitmapError, CorruptReason};
pub use persist::{Loaded, FORMAT_VERSION};

/// Re-export of the `bitvec` crate, whose `BitVec` [`DirtyBitmap::to_bitvec`]
/// returns.
pub use bitvec;
