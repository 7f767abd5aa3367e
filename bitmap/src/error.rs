//! Errors: one matchable enum, each variant carrying the numbers a human needs
//! to see what was asked and what the bitmap could do.

use std::io;
use std::path::PathBuf;

/// Everything a [`DirtyBitmap`](crate::DirtyBitmap) operation can refuse or fail with.
///
/// ```
/// use ringmirror_bitmap::{BitmapError, DirtyBitmap};
///
/// let bitmap = DirtyBitmap::new(1 << 20, 65536)?;
/// match bitmap.mark(1 << 20, 512) {
///     Err(BitmapError::OutOfRange { offset, len, disk_len }) => {
///         assert_eq!((offset, len, disk_len), (1 << 20, 512, 1 << 20));
///     }
///     other => panic!("expected OutOfRange, got {other:?}"),
/// }
/// # Ok::<(), BitmapError>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BitmapError {
    /// The granularity is not a power of two in 512 B ..= 64 MiB.
    #[error(
        "granularity {granularity} bytes is invalid: it must be a power of two \
         between 512 bytes and 64 MiB (the default is 65536)"
    )]
    InvalidGranularity {
        /// The granularity that was asked for, in bytes.
        granularity: u64,
    },

    /// A byte range reaches past the end of the disk (or overflows `u64`).
    #[error(
        "byte range offset {offset} length {len} reaches past the end of the \
         {disk_len}-byte disk; nothing was marked"
    )]
    OutOfRange {
        /// First byte of the range.
        offset: u64,
        /// Length of the range in bytes.
        len: u64,
        /// Length of the disk the bitmap covers.
        disk_len: u64,
    },

    /// A cluster range reaches past the last cluster (or overflows `u64`).
    #[error(
        "cluster range first {first} count {count} reaches past the last of \
         the bitmap's {clusters} clusters; nothing was changed"
    )]
    ClusterOutOfRange {
        /// First cluster of the range.
        first: u64,
        /// Number of clusters in the range.
        count: u64,
        /// Number of clusters the bitmap has.
        clusters: u64,
    },

    /// Two bitmaps (or a bitmap and a bit vector) do not describe the same disk.
    #[error(
        "geometry mismatch: this bitmap covers {len} bytes at granularity \
         {granularity}, the other {other_len} bytes at granularity {other_granularity}"
    )]
    GeometryMismatch {
        /// Disk length of this bitmap.
        len: u64,
        /// Granularity of this bitmap.
        granularity: u64,
        /// Disk length (or, for a bit vector, bit count) of the other side.
        other_len: u64,
        /// Granularity of the other side.
        other_granularity: u64,
    },

    /// The bitmap for this disk would not fit in memory.
    #[error(
        "a dirty bitmap of {bytes} bytes could not be allocated; use a larger \
         granularity (each doubling halves the size)"
    )]
    OutOfMemory {
        /// Bytes the bitmap needed.
        bytes: u128,
    },

    /// A file operation failed while saving or loading.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("create", "write", "rename", ...).
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A saved bitmap file is damaged or not a bitmap file; nothing was loaded.
    #[error("{path} is not a usable dirty bitmap file: {reason}")]
    Corrupt {
        /// The file that was read.
        path: PathBuf,
        /// What is wrong with it.
        reason: CorruptReason,
    },

    /// [`DirtyBitmap::check_consistency`](crate::DirtyBitmap::check_consistency)
    /// found the summary levels or the counter disagreeing with the bits.
    #[error("dirty bitmap is internally inconsistent: {0}")]
    Inconsistent(String),
}

/// Why a saved bitmap file was rejected (see [`BitmapError::Corrupt`]).
///
/// ```
/// use ringmirror_bitmap::{BitmapError, CorruptReason, DirtyBitmap};
///
/// let path = std::env::temp_dir().join(format!("doc-corrupt-{}.bitmap", std::process::id()));
/// DirtyBitmap::new(1 << 20, 65536)?.save(&path, true)?;
/// let file = std::fs::read(&path)?;
/// std::fs::write(&path, &file[..file.len() - 1])?; // lose the last byte
/// match DirtyBitmap::load(&path) {
///     Err(BitmapError::Corrupt { reason: CorruptReason::Truncated { expected, found }, .. }) => {
///         assert_eq!((expected, found), (8, 7));
///     }
///     other => panic!("{other:?}"),
/// }
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptReason {
    /// Shorter than the fixed header.
    #[error("only {len} bytes long, shorter than the {header}-byte header (truncated?)")]
    TooShort {
        /// Length of the file.
        len: u64,
        /// Length of the header.
        header: u64,
    },
    /// The first 8 bytes are not the bitmap magic.
    #[error("bad magic {found:02x?}: this is not a ringmirror dirty bitmap file")]
    BadMagic {
        /// The bytes found where the magic should be.
        found: [u8; 8],
    },
    /// Written by a format version this build does not read.
    #[error("format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// Version this build reads and writes.
        supported: u32,
    },
    /// The header checksum does not match the header.
    #[error("header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum {
        /// Checksum stored in the file.
        stored: u32,
        /// Checksum of the header as read.
        computed: u32,
    },
    /// Flag bits this version does not know are set.
    #[error("unknown flag bits {flags:#x} are set")]
    UnknownFlags {
        /// The unknown bits.
        flags: u32,
    },
    /// The header's disk length, granularity and cluster count do not agree.
    #[error(
        "inconsistent geometry: disk length {disk_len}, granularity {granularity}, \
         {clusters} clusters"
    )]
    BadGeometry {
        /// Disk length in the header.
        disk_len: u64,
        /// Granularity in the header.
        granularity: u64,
        /// Cluster count in the header.
        clusters: u64,
    },
    /// The payload is shorter than the header says (an interrupted write).
    #[error("truncated: expected {expected} bytes of bits, found {found}")]
    Truncated {
        /// Payload bytes the header announces.
        expected: u64,
        /// Payload bytes present.
        found: u64,
    },
    /// The file is longer than the header says.
    #[error("{extra} unexpected bytes after the bits")]
    TrailingBytes {
        /// Bytes past the announced payload.
        extra: u64,
    },
    /// The payload checksum does not match the bits.
    #[error("checksum mismatch over the bits (stored {stored:#010x}, computed {computed:#010x})")]
    PayloadChecksum {
        /// Checksum stored in the header.
        stored: u32,
        /// Checksum of the payload as read.
        computed: u32,
    },
    /// Bits are set past the last cluster.
    #[error("bits are set past the last cluster")]
    BitsPastEnd,
}
