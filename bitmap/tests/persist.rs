//! Persistence: round trips, the clean flag, and damaged files refused with
//! an error that says what is wrong.
#![cfg(not(loom))]

use std::fs;
use std::path::PathBuf;

use ringmirror_bitmap::{BitmapError, CorruptReason, DirtyBitmap, FORMAT_VERSION};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("rm-bitmap-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A bitwise CRC-32C, independent of the crate's table-driven one, to reseal
/// files whose fields a test changes on purpose.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Recomputes both checksums after a deliberate edit.
fn reseal(file: &mut [u8]) {
    let payload = crc32c(&file[64..]);
    file[48..52].copy_from_slice(&payload.to_le_bytes());
    file[52..56].fill(0);
    let header = crc32c(&file[..64]);
    file[52..56].copy_from_slice(&header.to_le_bytes());
}

fn sample() -> DirtyBitmap {
    let b = DirtyBitmap::new(300 * 65536 + 1234, 65536).unwrap();
    b.mark_clusters(0, 3).unwrap();
    b.mark_clusters(63, 2).unwrap();
    b.mark_clusters(300, 1).unwrap();
    b
}

fn corrupt_reason(
    result: Result<ringmirror_bitmap::Loaded, BitmapError>,
) -> (CorruptReason, String) {
    match result {
        Err(e @ BitmapError::Corrupt { .. }) => {
            let msg = e.to_string();
            match e {
                BitmapError::Corrupt { reason, .. } => (reason, msg),
                _ => unreachable!(),
            }
        }
        other => panic!("expected a Corrupt error, got {other:?}"),
    }
}

#[test]
fn clean_round_trip_keeps_geometry_and_bits() {
    let dir = TempDir::new("roundtrip");
    let path = dir.path("disk.bitmap");
    let b = sample();
    b.save(&path, true).unwrap();
    assert!(
        !dir.path("disk.bitmap.tmp").exists(),
        "temporary file left behind"
    );
    let loaded = DirtyBitmap::load(&path).unwrap();
    assert!(loaded.consistent);
    let l = &loaded.bitmap;
    assert_eq!(
        (l.len(), l.granularity(), l.clusters()),
        (b.len(), b.granularity(), b.clusters())
    );
    assert_eq!(l.to_bitvec(), b.to_bitvec());
    assert_eq!(l.dirty_clusters(), 6);
    assert_eq!(l.dirty_bytes(), b.dirty_bytes());
    l.check_consistency().unwrap();
    assert_eq!(l.next_dirty(4), Some(63));
}

#[test]
fn saving_again_replaces_the_file() {
    let dir = TempDir::new("replace");
    let path = dir.path("disk.bitmap");
    let b = sample();
    b.save(&path, false).unwrap();
    b.clear_all();
    b.mark_clusters(7, 1).unwrap();
    b.save(&path, true).unwrap();
    let loaded = DirtyBitmap::load(&path).unwrap();
    assert!(loaded.consistent);
    assert_eq!(
        loaded.bitmap.to_bitvec().iter_ones().collect::<Vec<_>>(),
        vec![7]
    );
}

#[test]
fn empty_and_tiny_bitmaps_round_trip() {
    let dir = TempDir::new("tiny");
    for (len, g) in [(0, 512), (1, 512), (512 * 64, 512), (512 * 65, 512)] {
        let path = dir.path(&format!("b-{len}"));
        let b = DirtyBitmap::new(len, g).unwrap();
        b.set_all();
        b.save(&path, true).unwrap();
        let loaded = DirtyBitmap::load(&path).unwrap();
        assert_eq!(loaded.bitmap.to_bitvec(), b.to_bitvec(), "len {len}");
        assert_eq!(loaded.bitmap.dirty_bytes(), len);
    }
}

#[test]
fn unclean_file_loads_as_inconsistent_with_its_bits() {
    let dir = TempDir::new("unclean");
    let path = dir.path("disk.bitmap");
    let b = sample();
    b.save(&path, false).unwrap();
    let loaded = DirtyBitmap::load(&path).unwrap();
    assert!(
        !loaded.consistent,
        "an in-use bitmap must not load as consistent"
    );
    assert_eq!(loaded.bitmap.to_bitvec(), b.to_bitvec());
}

#[test]
fn flipped_payload_bit_is_a_checksum_error() {
    let dir = TempDir::new("payload");
    let path = dir.path("disk.bitmap");
    sample().save(&path, true).unwrap();
    let mut file = fs::read(&path).unwrap();
    file[64 + 3] ^= 0x10;
    fs::write(&path, &file).unwrap();
    let (reason, msg) = corrupt_reason(DirtyBitmap::load(&path));
    assert!(
        matches!(reason, CorruptReason::PayloadChecksum { .. }),
        "{reason:?}"
    );
    assert!(
        msg.contains("checksum mismatch") && msg.contains("disk.bitmap"),
        "{msg}"
    );
}

#[test]
fn edited_header_is_a_checksum_error() {
    let dir = TempDir::new("header");
    let path = dir.path("disk.bitmap");
    sample().save(&path, true).unwrap();
    let mut file = fs::read(&path).unwrap();
    file[16] ^= 1; // disk length
    fs::write(&path, &file).unwrap();
    let (reason, _) = corrupt_reason(DirtyBitmap::load(&path));
    assert!(
        matches!(reason, CorruptReason::HeaderChecksum { .. }),
        "{reason:?}"
    );
}

#[test]
fn truncated_files_are_refused() {
    let dir = TempDir::new("truncated");
    let path = dir.path("disk.bitmap");
    sample().save(&path, true).unwrap();
    let file = fs::read(&path).unwrap();

    fs::write(&path, &file[..file.len() - 8]).unwrap();
    let (reason, msg) = corrupt_reason(DirtyBitmap::load(&path));
    assert_eq!(
        reason,
        CorruptReason::Truncated {
            expected: 40,
            found: 32
        }
    );
    assert!(msg.contains("truncated"), "{msg}");

    fs::write(&path, &file[..20]).unwrap();
    let (reason, _) = corrupt_reason(DirtyBitmap::load(&path));
    assert_eq!(
        reason,
        CorruptReason::TooShort {
            len: 20,
            header: 64
        }
    );

    fs::write(&path, b"RMD").unwrap();
    let (reason, _) = corrupt_reason(DirtyBitmap::load(&path));
    assert!(matches!(reason, CorruptReason::TooShort { len: 3, .. }));

    let mut longer = file.clone();
    longer.extend_from_slice(&[0; 5]);
    fs::write(&path, &longer).unwrap();
    let (reason, _) = corrupt_reason(DirtyBitmap::load(&path));
    assert_eq!(reason, CorruptReason::TrailingBytes { extra: 5 });
}

#[test]
fn other_versions_are_refused_by_name() {
    let dir = TempDir::new("version");
    let path = dir.path("disk.bitmap");
    sample().save(&path, true).unwrap();
    let mut file = fs::read(&path).unwrap();
    file[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    reseal(&mut file);
    fs::write(&path, &file).unwrap();
    let (reason, msg) = corrupt_reason(DirtyBitmap::load(&path));
    assert_eq!(
        reason,
        CorruptReason::UnsupportedVersion {
            found: FORMAT_VERSION + 1,
            supported: FORMAT_VERSION
        }
    );
    assert!(msg.contains("version 2 is not supported"), "{msg}");
}

#[test]
fn not_a_bitmap_file_is_bad_magic() {
    let dir = TempDir::new("magic");
    let path = dir.path("disk.bitmap");
    sample().save(&path, true).unwrap();
    let mut file = fs::read(&path).unwrap();
    file[0] = b'X';
    fs::write(&path, &file).unwrap();
    let (reason, msg) = corrupt_reason(DirtyBitmap::load(&path));
    assert!(matches!(reason, CorruptReason::BadMagic { .. }));
    assert!(msg.contains("not a ringmirror dirty bitmap"), "{msg}");
}

#[test]
fn sealed_but_inconsistent_contents_are_refused() {
    let dir = TempDir::new("contents");
    let path = dir.path("disk.bitmap");
    let b = sample(); // 301 clusters: the last word has 45 valid bits
    b.save(&path, true).unwrap();
    let good = fs::read(&path).unwrap();

    let mut file = good.clone();
    file[64 + 4 * 8 + 7] |= 0x80; // bit 319 of the disk: past cluster 300
    reseal(&mut file);
    fs::write(&path, &file).unwrap();
    assert_eq!(
        corrupt_reason(DirtyBitmap::load(&path)).0,
        CorruptReason::BitsPastEnd
    );

    let mut file = good.clone();
    file[32..40].copy_from_slice(&999u64.to_le_bytes()); // cluster count
    reseal(&mut file);
    fs::write(&path, &file).unwrap();
    assert!(matches!(
        corrupt_reason(DirtyBitmap::load(&path)).0,
        CorruptReason::BadGeometry { clusters: 999, .. }
    ));

    let mut file = good.clone();
    file[24..32].copy_from_slice(&1000u64.to_le_bytes()); // not a power of two
    file[32..40].copy_from_slice(&((300 * 65536 + 1234u64).div_ceil(1000)).to_le_bytes());
    reseal(&mut file);
    fs::write(&path, &file).unwrap();
    assert!(matches!(
        corrupt_reason(DirtyBitmap::load(&path)).0,
        CorruptReason::BadGeometry {
            granularity: 1000,
            ..
        }
    ));

    let mut file = good;
    file[12] |= 0x4;
    reseal(&mut file);
    fs::write(&path, &file).unwrap();
    assert_eq!(
        corrupt_reason(DirtyBitmap::load(&path)).0,
        CorruptReason::UnknownFlags { flags: 4 }
    );
}

#[test]
fn io_errors_name_the_operation_and_path() {
    let dir = TempDir::new("io");
    let missing = dir.path("no-such-dir").join("disk.bitmap");
    let err = sample().save(&missing, true).unwrap_err();
    assert!(
        matches!(err, BitmapError::Io { op: "create", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no-such-dir"), "{err}");
    let err = DirtyBitmap::load(dir.path("absent")).unwrap_err();
    assert!(matches!(err, BitmapError::Io { op: "read", .. }), "{err:?}");
}
