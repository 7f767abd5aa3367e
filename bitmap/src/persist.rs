//! Saving and loading a bitmap.
//!
//! # File format (version 1, all integers little-endian)
//!
//! ```text
//!  offset  size  field
//!       0     8  magic "RMDIRTY\0"
//!       8     4  version (1)
//!      12     4  flags: bit 0 = clean (saved by an orderly shutdown)
//!      16     8  disk length in bytes
//!      24     8  granularity in bytes
//!      32     8  clusters = ceil(disk length / granularity)
//!      40     8  payload bytes = ceil(clusters / 64) * 8
//!      48     4  CRC-32C of the payload
//!      52     4  CRC-32C of these 64 header bytes with this field zeroed
//!      56     8  reserved, zero
//!      64     .  payload: the cluster bits as u64 words, bit c of the disk
//!                at bit c % 64 of word c / 64
//! ```
//!
//! Only the cluster bits are stored; the summary levels and the counter are
//! rebuilt on load. A file is written to `<name>.tmp`, synced, and renamed
//! over `<name>` (then the directory is synced), so a crash leaves either the
//! old file or the new one, never a torn one.
//!
//! The clean flag follows the "in use" convention of persistent bitmaps:
//! save with `clean = false` when the bitmap is put to use (before the first
//! guest write it covers is acknowledged) and with `clean = true` after an
//! orderly, quiescent shutdown. After a crash the file on disk still says
//! "not clean": [`DirtyBitmap::load`] returns it with `consistent: false`,
//! and the user knows it missed writes and needs a full resync.

use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::bitmap::DirtyBitmap;
use crate::crc::{crc32c, Crc32c};
use crate::error::{BitmapError, CorruptReason};

/// The version of the file format this build writes and reads (bytes 8..12
/// of a saved file, little-endian).
///
/// ```
/// let path = std::env::temp_dir().join(format!("doc-version-{}.bitmap", std::process::id()));
/// ringmirror_bitmap::DirtyBitmap::new(4096, 512)?.save(&path, true)?;
/// let file = std::fs::read(&path)?;
/// assert_eq!(file[8..12], ringmirror_bitmap::FORMAT_VERSION.to_le_bytes());
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: [u8; 8] = *b"RMDIRTY\0";
const HEADER_LEN: usize = 64;
const FLAG_CLEAN: u32 = 1;
const HEADER_CRC_AT: usize = 52;

/// A bitmap read back by [`DirtyBitmap::load`].
///
/// ```
/// use ringmirror_bitmap::{DirtyBitmap, Loaded};
///
/// let path = std::env::temp_dir().join(format!("doc-loaded-{}.bitmap", std::process::id()));
/// DirtyBitmap::new(1 << 20, 65536)?.save(&path, true)?;
/// let Loaded { bitmap, consistent } = DirtyBitmap::load(&path)?;
/// assert!(consistent && bitmap.is_clean());
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), ringmirror_bitmap::BitmapError>(())
/// ```
#[derive(Debug)]
pub struct Loaded {
    /// The bits as saved.
    pub bitmap: DirtyBitmap,
    /// Whether the file was saved cleanly. `false` means the bitmap was in
    /// use when its owner stopped: writes may be missing from it, so the
    /// whole disk must be treated as dirty (for example with
    /// [`DirtyBitmap::set_all`]).
    pub consistent: bool,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BitmapError + 'a {
    move |source| BitmapError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn header_crc(header: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(&header[..HEADER_CRC_AT]);
    crc.update(&[0; 4]);
    crc.update(&header[HEADER_CRC_AT + 4..HEADER_LEN]);
    crc.finish()
}

impl DirtyBitmap {
    /// Saves the bitmap to `path` (atomically replacing it), recording
    /// whether this is a clean save. See the module docs of `persist` for the
    /// format and the meaning of `clean`.
    ///
    /// **Ordering:** one `Acquire` load per word. A bitmap that is being
    /// marked while saved is saved word by word, not as a snapshot; only
    /// save `clean = true` once marks and takes have stopped.
    ///
    /// ```
    /// use ringmirror_bitmap::DirtyBitmap;
    ///
    /// let path = std::env::temp_dir().join(format!("doc-save-{}.bitmap", std::process::id()));
    /// let bitmap = DirtyBitmap::new(1 << 30, 65536)?;
    /// bitmap.mark(1 << 20, 4096)?;
    /// bitmap.save(&path, true)?;
    ///
    /// let loaded = DirtyBitmap::load(&path)?;
    /// assert!(loaded.consistent);
    /// assert_eq!(loaded.bitmap.to_bitvec(), bitmap.to_bitvec());
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), ringmirror_bitmap::BitmapError>(())
    /// ```
    pub fn save(&self, path: impl AsRef<Path>, clean: bool) -> Result<(), BitmapError> {
        let path = path.as_ref();
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let result = self.write_file(&tmp, clean).and_then(|()| {
            fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
            sync_parent(path)
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn write_file(&self, tmp: &Path, clean: bool) -> Result<(), BitmapError> {
        let file = File::create(tmp).map_err(io_err("create", tmp))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let write = io_err("write", tmp);
        // Placeholder header; the real one needs the payload checksum, and
        // the words must be read exactly once so the checksum matches.
        out.write_all(&[0; HEADER_LEN])
            .map_err(io_err("write", tmp))?;
        let mut crc = Crc32c::new();
        for w in 0..self.bits.words() {
            let bytes = self.bits.load_word(w).to_le_bytes();
            crc.update(&bytes);
            out.write_all(&bytes).map_err(io_err("write", tmp))?;
        }
        let header = self.header(clean, crc.finish());
        out.seek(SeekFrom::Start(0)).map_err(io_err("seek", tmp))?;
        out.write_all(&header).map_err(write)?;
        let file = out.into_inner().map_err(|e| BitmapError::Io {
            op: "write",
            path: tmp.to_path_buf(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err("sync", tmp))
    }

    fn header(&self, clean: bool, payload_crc: u32) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if clean { FLAG_CLEAN } else { 0 };
        h[12..16].copy_from_slice(&flags.to_le_bytes());
        h[16..24].copy_from_slice(&self.len().to_le_bytes());
        h[24..32].copy_from_slice(&self.granularity().to_le_bytes());
        h[32..40].copy_from_slice(&self.clusters().to_le_bytes());
        h[40..48].copy_from_slice(&(self.bits.words() * 8).to_le_bytes());
        h[48..52].copy_from_slice(&payload_crc.to_le_bytes());
        let crc = header_crc(&h);
        h[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Loads a bitmap saved by [`save`](Self::save). A damaged file (bad
    /// magic, unsupported version, checksum mismatch, truncated, ...) is
    /// refused with [`BitmapError::Corrupt`] naming the reason; a file that
    /// was not saved cleanly loads with [`Loaded::consistent`] `false`.
    ///
    /// **Ordering:** none needed: the bitmap is built privately and only
    /// shared once returned.
    ///
    /// ```
    /// use ringmirror_bitmap::{BitmapError, CorruptReason, DirtyBitmap};
    ///
    /// let path = std::env::temp_dir().join(format!("doc-load-{}.bitmap", std::process::id()));
    /// DirtyBitmap::new(1 << 20, 65536)?.save(&path, false)?;
    /// let loaded = DirtyBitmap::load(&path)?;
    /// if !loaded.consistent {
    ///     loaded.bitmap.set_all(); // missed writes are possible: resync everything
    /// }
    /// assert_eq!(loaded.bitmap.dirty_clusters(), 16);
    ///
    /// std::fs::write(&path, b"not a bitmap, but long enough to hold a header of 64 bytes...")?;
    /// assert!(matches!(
    ///     DirtyBitmap::load(&path),
    ///     Err(BitmapError::Corrupt { reason: CorruptReason::BadMagic { .. }, .. })
    /// ));
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Loaded, BitmapError> {
        let path = path.as_ref();
        let data = fs::read(path).map_err(io_err("read", path))?;
        let corrupt = |reason| BitmapError::Corrupt {
            path: PathBuf::from(path),
            reason,
        };
        if data.len() >= MAGIC.len() && data[..MAGIC.len()] != MAGIC {
            let mut found = [0u8; 8];
            found.copy_from_slice(&data[..8]);
            return Err(corrupt(CorruptReason::BadMagic { found }));
        }
        if data.len() < HEADER_LEN {
            return Err(corrupt(CorruptReason::TooShort {
                len: data.len() as u64,
                header: HEADER_LEN as u64,
            }));
        }
        let (h, payload) = data.split_at(HEADER_LEN);
        let version = le_u32(h, 8);
        if version != FORMAT_VERSION {
            return Err(corrupt(CorruptReason::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            }));
        }
        let stored = le_u32(h, HEADER_CRC_AT);
        let computed = header_crc(h);
        if stored != computed {
            return Err(corrupt(CorruptReason::HeaderChecksum { stored, computed }));
        }
        let flags = le_u32(h, 12);
        if flags & !FLAG_CLEAN != 0 {
            return Err(corrupt(CorruptReason::UnknownFlags {
                flags: flags & !FLAG_CLEAN,
            }));
        }
        let (disk_len, granularity, clusters) = (le_u64(h, 16), le_u64(h, 24), le_u64(h, 32));
        let payload_len = le_u64(h, 40);
        let bad_geometry = || {
            corrupt(CorruptReason::BadGeometry {
                disk_len,
                granularity,
                clusters,
            })
        };
        if granularity == 0
            || disk_len.div_ceil(granularity) != clusters
            || clusters.div_ceil(64).checked_mul(8) != Some(payload_len)
        {
            return Err(bad_geometry());
        }
        let found = payload.len() as u64;
        if found < payload_len {
            return Err(corrupt(CorruptReason::Truncated {
                expected: payload_len,
                found,
            }));
        }
        if found > payload_len {
            return Err(corrupt(CorruptReason::TrailingBytes {
                extra: found - payload_len,
            }));
        }
        let stored = le_u32(h, 48);
        let computed = crc32c(payload);
        if stored != computed {
            return Err(corrupt(CorruptReason::PayloadChecksum { stored, computed }));
        }
        let bitmap = match DirtyBitmap::new(disk_len, granularity) {
            Err(BitmapError::InvalidGranularity { .. }) => return Err(bad_geometry()),
            other => other?,
        };
        let last = clusters.saturating_sub(1);
        for (w, chunk) in payload.chunks_exact(8).enumerate() {
            let w = w as u64;
            let word = le_u64(chunk, 0);
            if word & !crate::summary::word_mask(w, w * 64, last) != 0 {
                return Err(corrupt(CorruptReason::BitsPastEnd));
            }
            bitmap.or_word(w, word);
        }
        Ok(Loaded {
            bitmap,
            consistent: flags & FLAG_CLEAN != 0,
        })
    }
}

/// Makes the rename durable: fsync the directory that holds `path`.
fn sync_parent(path: &Path) -> Result<(), BitmapError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}
