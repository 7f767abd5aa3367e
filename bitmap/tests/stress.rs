//! Multi-threaded stress: writer threads log every mark they make, taker
//! threads log every run they take (and sometimes "fail" a copy and re-mark
//! it, logging that as a mark). Afterwards, for every cluster:
//! * marked at least once => taken at least once or still dirty (no lost mark);
//! * taken no more often than marked (no cluster handed out twice per mark);
//! * never marked => never taken and not dirty;
//!
//! and the summary levels and the counter agree with the bits.
//! Sizes, not timings, bound the work; nothing here asserts on time.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringmirror_bitmap::DirtyBitmap;

const WRITERS: usize = 3;
const TAKERS: usize = 2;
const MARKS_PER_WRITER: usize = 60_000;

type Log = Vec<(u64, u64)>;

fn run_stress(len: u64, granularity: u64, seed: u64) {
    let b = Arc::new(DirtyBitmap::new(len, granularity).unwrap());
    let n = b.clusters();
    let writers_done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(WRITERS + TAKERS));

    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (b, start) = (b.clone(), start.clone());
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed + i as u64);
                let mut log = Log::new();
                start.wait();
                for _ in 0..MARKS_PER_WRITER {
                    // Half the writes go to a small hot zone so marks and
                    // takes collide on the same words all the time.
                    let zone = if rng.gen_bool(0.5) { 256.min(n) } else { n };
                    let first = rng.gen_range(0..zone);
                    let count = rng.gen_range(1..=8u64).min(n - first);
                    b.mark_clusters(first, count).unwrap();
                    log.push((first, count));
                }
                log
            })
        })
        .collect();

    let takers: Vec<_> = (0..TAKERS)
        .map(|i| {
            let (b, start, done) = (b.clone(), start.clone(), writers_done.clone());
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed + 100 + i as u64);
                let (mut taken, mut remarked) = (Log::new(), Log::new());
                let mut cursor = 0;
                start.wait();
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let got = if rng.gen_bool(0.8) {
                        b.take_run(cursor, rng.gen_range(1..=100))
                            .into_iter()
                            .collect()
                    } else {
                        let first = rng.gen_range(0..n);
                        let count = rng.gen_range(0..=200u64).min(n - first);
                        b.take_range(first, count).unwrap()
                    };
                    for &(first, count) in &got {
                        taken.push((first, count));
                        cursor = first + count;
                        if rng.gen_bool(0.05) {
                            // A failed copy goes back into the bitmap.
                            b.mark_clusters(first, count).unwrap();
                            remarked.push((first, count));
                        }
                    }
                    if got.is_empty() {
                        if finished {
                            break;
                        }
                        thread::yield_now();
                    }
                }
                (taken, remarked)
            })
        })
        .collect();

    let mut marks = vec![0u32; n as usize];
    for w in writers {
        for (first, count) in w.join().unwrap() {
            for c in first..first + count {
                marks[c as usize] += 1;
            }
        }
    }
    writers_done.store(true, Ordering::Release);
    let mut takes = vec![0u32; n as usize];
    for t in takers {
        let (taken, remarked) = t.join().unwrap();
        for (first, count) in taken {
            for c in first..first + count {
                takes[c as usize] += 1;
            }
        }
        for (first, count) in remarked {
            for c in first..first + count {
                marks[c as usize] += 1;
            }
        }
    }

    b.check_consistency().unwrap();
    let left = b.to_bitvec();
    assert_eq!(b.dirty_clusters(), left.count_ones() as u64);
    for c in 0..n as usize {
        let (m, t, d) = (marks[c], takes[c], left[c]);
        assert!(
            t <= m,
            "cluster {c} taken {t} times but marked only {m} times"
        );
        if m > 0 {
            assert!(
                t > 0 || d,
                "cluster {c} marked {m} times, never taken, not dirty: lost"
            );
        } else {
            assert!(
                t == 0 && !d,
                "cluster {c} never marked but taken {t} / dirty {d}"
            );
        }
    }
    // A final sweep drains exactly what is left.
    let mut drained = 0;
    while let Some((_, count)) = b.take_run(0, 1000) {
        drained += count;
    }
    assert_eq!(drained, left.count_ones() as u64);
    assert!(b.is_clean());
    assert_eq!(b.dirty_clusters(), 0);
}

/// 2048 clusters: 32 words under one summary word (two levels).
#[test]
fn writers_and_takers_lose_no_mark_two_levels() {
    run_stress(2048 * 4096, 4096, 1);
}

/// 20000 clusters with a partial last one: three levels, so summary words
/// are emptied and refilled under load too.
#[test]
fn writers_and_takers_lose_no_mark_three_levels() {
    run_stress(20_000 * 512 - 100, 512, 2);
}

/// Spins until `flag` reads `value`, yielding now and then so that a machine
/// with fewer cores than threads still makes progress.
fn wait_for(flag: &std::sync::atomic::AtomicU64, value: u64) {
    let mut spins = 0u32;
    while flag.load(Ordering::Acquire) != value {
        spins += 1;
        if spins % 1024 == 0 {
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Many short trials of the exact summary race, each checked on its own (a
/// long run would hide a lost summary bit: the next mark of that word sets it
/// again). A mark of one bit races a take that empties the same word; both
/// threads start from a spin barrier with a random skew of a few hundred
/// nanoseconds, so the two operations overlap in every possible way over the
/// trials. After each trial the mark must be found by a fresh search.
#[test]
fn mark_racing_a_word_emptying_take_is_always_found() {
    const TRIALS: u64 = 20_000;
    let b = Arc::new(DirtyBitmap::new(65 * 64 * 512, 512).unwrap()); // 3 levels
    let go = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let marker = {
        let (b, go, done) = (b.clone(), go.clone(), done.clone());
        thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(7);
            for trial in 1..=TRIALS {
                wait_for(&go, trial);
                for _ in 0..rng.gen_range(0..64) {
                    std::hint::spin_loop();
                }
                b.mark_clusters(4096 + 1 + trial % 63, 1).unwrap();
                done.store(trial, Ordering::Release);
            }
        })
    };
    let mut rng = StdRng::seed_from_u64(8);
    for trial in 1..=TRIALS {
        b.mark_clusters(4096, 1).unwrap();
        go.store(trial, Ordering::Release);
        for _ in 0..rng.gen_range(0..64) {
            std::hint::spin_loop();
        }
        assert_eq!(b.take_range(4096, 1).unwrap(), vec![(4096, 1)]);
        wait_for(&done, trial);
        let marked = 4096 + 1 + trial % 63;
        assert_eq!(
            b.next_dirty(0),
            Some(marked),
            "trial {trial}: mark lost from the summary"
        );
        if let Err(e) = b.check_consistency() {
            panic!("trial {trial}: {e}");
        }
        assert_eq!(b.take_range(marked, 1).unwrap(), vec![(marked, 1)]);
    }
    marker.join().unwrap();
}
