//! Behaviour of the public API at its edges: geometry, validation, partial
//! last clusters, wrapping, geometry mismatches.
#![cfg(not(loom))]

use ringmirror_bitmap::{BitmapError, DirtyBitmap, MAX_GRANULARITY, MIN_GRANULARITY};

#[test]
fn shared_behind_arc_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DirtyBitmap>();
}

#[test]
fn granularity_must_be_a_power_of_two_in_range() {
    for g in [
        0,
        1,
        256,
        511,
        513,
        1000,
        3 << 10,
        MAX_GRANULARITY * 2,
        u64::MAX,
    ] {
        assert!(
            matches!(DirtyBitmap::new(1 << 30, g), Err(BitmapError::InvalidGranularity { granularity }) if granularity == g),
            "granularity {g} accepted"
        );
    }
    for g in [MIN_GRANULARITY, 4096, 65536, MAX_GRANULARITY] {
        let b = DirtyBitmap::new(1 << 30, g).unwrap();
        assert_eq!(b.granularity(), g);
        assert_eq!(b.clusters(), (1u64 << 30).div_ceil(g));
    }
}

#[test]
fn an_impossible_allocation_is_an_error_not_an_abort() {
    // 2^64 bytes at 512 B would need 4 PiB of bits.
    let err = DirtyBitmap::new(u64::MAX, 512).unwrap_err();
    assert!(
        matches!(err, BitmapError::OutOfMemory { bytes } if bytes >= 1 << 52),
        "{err:?}"
    );
    assert!(err.to_string().contains("larger granularity"), "{err}");
}

#[test]
fn empty_disk_has_no_clusters_and_accepts_only_empty_ranges() {
    let b = DirtyBitmap::new(0, 65536).unwrap();
    assert!(b.is_empty());
    assert_eq!(b.clusters(), 0);
    assert!(b.mark(0, 0).is_ok());
    assert!(matches!(b.mark(0, 1), Err(BitmapError::OutOfRange { .. })));
    assert!(b.mark_clusters(0, 1).is_err());
    b.set_all();
    assert_eq!(b.next_dirty(0), None);
    assert_eq!(b.take_run(0, 10), None);
    assert_eq!(b.take_range(0, 0).unwrap(), vec![]);
    assert_eq!(b.dirty_bytes(), 0);
    assert_eq!(b.to_bitvec().len(), 0);
    assert_eq!(b.clear_all(), 0);
    b.check_consistency().unwrap();
}

#[test]
fn unaligned_ranges_widen_outward() {
    let b = DirtyBitmap::new(1 << 20, 4096).unwrap();
    b.mark(4095, 2).unwrap();
    assert_eq!(b.to_bitvec().iter_ones().collect::<Vec<_>>(), vec![0, 1]);
    b.mark(3 * 4096 + 1, 1).unwrap();
    assert!(b.is_dirty(3));
    b.mark(8 * 4096, 4096).unwrap();
    assert!(b.is_dirty(8) && !b.is_dirty(9) && !b.is_dirty(7));
    assert_eq!(b.dirty_clusters(), 4);
}

#[test]
fn out_of_range_marks_are_errors_and_mark_nothing() {
    let b = DirtyBitmap::new(10 * 4096 + 5, 4096).unwrap();
    assert_eq!(b.clusters(), 11);
    // The last partial cluster is markable up to the last byte.
    b.mark(10 * 4096 + 4, 1).unwrap();
    assert!(b.is_dirty(10));
    b.clear_all();
    let err = b.mark(10 * 4096, 6).unwrap_err();
    assert!(matches!(
        err,
        BitmapError::OutOfRange {
            offset: 40960,
            len: 6,
            disk_len: 40965
        }
    ));
    assert!(err.to_string().contains("past the end"), "{err}");
    assert!(b.mark(u64::MAX, 2).is_err(), "overflow must not wrap");
    assert!(b.mark_clusters(10, 2).is_err());
    assert!(b.mark_clusters(u64::MAX, 2).is_err());
    assert!(b.take_range(5, 7).is_err());
    assert!(b.is_clean());
    assert_eq!(b.dirty_clusters(), 0);
    assert!(!b.is_dirty(11) && !b.is_dirty(u64::MAX));
}

#[test]
fn dirty_bytes_counts_only_real_bytes_of_the_last_cluster() {
    let b = DirtyBitmap::new(3 * 65536 + 10, 65536).unwrap();
    b.mark_clusters(3, 1).unwrap();
    assert_eq!(b.dirty_bytes(), 10);
    b.set_all();
    assert_eq!(b.dirty_bytes(), b.len());
    assert_eq!(b.dirty_clusters(), 4);
    b.take_range(0, 1).unwrap();
    assert_eq!(b.dirty_bytes(), 2 * 65536 + 10);
    assert_eq!(b.run_bytes(2, 2), (2 * 65536, 65536 + 10));
    assert_eq!(b.run_bytes(3, u64::MAX), (3 * 65536, 10));
}

#[test]
fn next_dirty_wraps_and_treats_out_of_range_start_as_zero() {
    let b = DirtyBitmap::new(1 << 30, 512).unwrap();
    assert_eq!(b.levels(), 4); // 2^21 clusters: 32768, 512, 8, 1 words
    b.mark_clusters(7, 1).unwrap();
    b.mark_clusters(1_000_000, 1).unwrap();
    assert_eq!(b.next_dirty(0), Some(7));
    assert_eq!(b.next_dirty(8), Some(1_000_000));
    assert_eq!(b.next_dirty(1_000_001), Some(7));
    assert_eq!(b.next_dirty(u64::MAX), Some(7));
    assert_eq!(b.dirty_run(8, 100), Some((1_000_000, 1)));
}

#[test]
fn take_run_takes_exactly_one_contiguous_run_and_never_wraps_it() {
    let b = DirtyBitmap::new(200 * 512, 512).unwrap();
    b.mark_clusters(190, 10).unwrap();
    b.mark_clusters(0, 3).unwrap();
    assert_eq!(b.dirty_run(185, 100), Some((190, 10)));
    assert_eq!(
        b.take_run(185, 100),
        Some((190, 10)),
        "stops at the end, no wrap"
    );
    assert_eq!(
        b.take_run(185, 2),
        Some((0, 2)),
        "the sweep wraps to find the start"
    );
    assert_eq!(b.take_run(0, 0), None);
    assert_eq!(b.take_run(0, 5), Some((2, 1)));
    assert_eq!(b.take_run(0, 5), None);
    b.check_consistency().unwrap();
}

#[test]
fn runs_cross_word_and_summary_boundaries() {
    let b = DirtyBitmap::new(1 << 20, 512).unwrap(); // 2048 clusters, 32 words
    b.mark_clusters(60, 200).unwrap();
    assert_eq!(b.take_run(0, 1000), Some((60, 200)));
    b.mark_clusters(4000 % 2048, 48).unwrap();
    assert_eq!(b.take_range(0, 2048).unwrap(), vec![(1952, 48)]);
    b.check_consistency().unwrap();
}

#[test]
fn merge_needs_the_same_geometry() {
    let a = DirtyBitmap::new(1 << 20, 4096).unwrap();
    let b = DirtyBitmap::new(1 << 20, 8192).unwrap();
    let c = DirtyBitmap::new((1 << 20) + 1, 4096).unwrap();
    assert!(matches!(
        a.merge(&b),
        Err(BitmapError::GeometryMismatch { .. })
    ));
    assert!(matches!(
        a.merge(&c),
        Err(BitmapError::GeometryMismatch { .. })
    ));
    let d = DirtyBitmap::new(1 << 20, 4096).unwrap();
    d.mark_clusters(5, 3).unwrap();
    a.mark_clusters(6, 4).unwrap();
    a.merge(&d).unwrap();
    assert_eq!(
        a.to_bitvec().iter_ones().collect::<Vec<_>>(),
        (5..10).collect::<Vec<_>>()
    );
    assert_eq!(a.dirty_clusters(), 5);
    a.merge(&a).unwrap();
    a.check_consistency().unwrap();
}

#[test]
fn from_bitvec_checks_length() {
    let bits =
        ringmirror_bitmap::bitvec::bitvec![u64, ringmirror_bitmap::bitvec::order::Lsb0; 1; 3];
    assert!(DirtyBitmap::from_bitvec(4 * 512, 512, &bits).is_err());
    let b = DirtyBitmap::from_bitvec(3 * 512, 512, &bits).unwrap();
    assert_eq!(b.dirty_clusters(), 3);
}

#[test]
fn set_all_and_clear_all_count_what_they_changed() {
    let b = DirtyBitmap::new(100 * 4096 + 1, 4096).unwrap();
    b.mark_clusters(3, 4).unwrap();
    b.set_all();
    assert_eq!(b.dirty_clusters(), 101);
    b.check_consistency().unwrap();
    assert_eq!(b.clear_all(), 101);
    assert!(b.is_clean());
    assert_eq!(b.dirty_clusters(), 0);
    b.check_consistency().unwrap();
}

#[test]
fn memory_is_about_two_mib_per_tib_at_64k() {
    let b = DirtyBitmap::new(1 << 40, 65536).unwrap();
    let mib = b.heap_bytes() as f64 / (1 << 20) as f64;
    assert!((2.0..2.1).contains(&mib), "{mib} MiB");
}
