//! Model checks of the concurrent protocol under loom: every interleaving
//! and every value a relaxed or acquire load may legally return. Run with `bitmap/loom.sh`, i.e.
//! `RUSTFLAGS="--cfg loom" cargo test -p ringmirror-bitmap --release --test loom`.
//!
//! Each model races a marker against a taker (or two takers) and then checks,
//! once both are done, that
//! * every cluster marked is either in a run some taker returned or still
//!   dirty (no mark lost), and nothing is both;
//! * no cluster was returned by two takers;
//! * every non-zero word still has its summary bits set, and the counter
//!   equals the bits (`check_consistency`), so the next sweep finds what is
//!   left.
#![cfg(loom)]

use std::collections::BTreeSet;

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use ringmirror_bitmap::DirtyBitmap;

const G: u64 = 512;

/// Runs `f` under loom. Exhaustive by default (no preemption bound, about
/// 25 s for this file on 2 cores); `LOOM_MAX_PREEMPTIONS=3` bounds it
/// (under a second) for quick local runs.
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    loom::model::Builder::new().check(f);
}

fn clusters_of(runs: &[(u64, u64)]) -> Vec<u64> {
    runs.iter().flat_map(|&(f, n)| f..f + n).collect()
}

fn dirty_set(b: &DirtyBitmap) -> BTreeSet<u64> {
    b.to_bitvec().iter_ones().map(|c| c as u64).collect()
}

/// After the threads are done: `taken` (all runs returned, per taker) and the
/// bits left must partition `expected`, and the structure must be consistent.
fn check_outcome(b: &DirtyBitmap, taken: &[Vec<(u64, u64)>], expected: &[u64]) {
    b.check_consistency()
        .expect("summary or counter inconsistent");
    let mut seen = BTreeSet::new();
    for runs in taken {
        for c in clusters_of(runs) {
            assert!(seen.insert(c), "cluster {c} taken twice");
        }
    }
    let left = dirty_set(b);
    assert!(
        seen.is_disjoint(&left),
        "taken {seen:?} but still dirty {left:?}"
    );
    let all: BTreeSet<u64> = seen.union(&left).copied().collect();
    let expected: BTreeSet<u64> = expected.iter().copied().collect();
    assert_eq!(all, expected, "taken {seen:?} + left {left:?}");
    // The summary leads a fresh sweep to everything left.
    assert_eq!(b.next_dirty(0), left.first().copied());
}

/// Mark and take on the same word; the take may zero the word and clear its
/// summary bit while the mark sets a bit in it (the summary race).
#[test]
fn mark_races_take_run_on_the_same_word() {
    model(|| {
        let b = Arc::new(DirtyBitmap::new(128 * G, G).unwrap());
        b.mark_clusters(0, 1).unwrap();
        let marker = {
            let b = b.clone();
            thread::spawn(move || b.mark_clusters(1, 1).unwrap())
        };
        let run = b.take_run(0, 64);
        marker.join().unwrap();
        let runs: Vec<_> = run.into_iter().collect();
        assert!(
            runs.first().is_some_and(|r| r.0 == 0),
            "cluster 0 was dirty throughout"
        );
        check_outcome(&b, &[runs], &[0, 1]);
    });
}

/// A take that clears a word with one `fetch_and` (take_range) while a mark
/// sets a different bit of that word: the summary bit must survive.
#[test]
fn mark_races_take_range_zeroing_the_word() {
    model(|| {
        let b = Arc::new(DirtyBitmap::new(128 * G, G).unwrap());
        b.mark_clusters(0, 1).unwrap();
        let marker = {
            let b = b.clone();
            thread::spawn(move || b.mark_clusters(5, 1).unwrap())
        };
        let runs = b.take_range(0, 1).unwrap();
        marker.join().unwrap();
        assert_eq!(runs, vec![(0, 1)]);
        check_outcome(&b, &[runs], &[0, 5]);
        assert!(b.is_dirty(5));
    });
}

/// Mark and take on neighbouring words: the run may or may not extend into
/// the second word, but nothing is lost or invented.
#[test]
fn mark_races_take_run_on_the_neighbouring_word() {
    model(|| {
        let b = Arc::new(DirtyBitmap::new(128 * G, G).unwrap());
        b.mark_clusters(63, 1).unwrap();
        let marker = {
            let b = b.clone();
            thread::spawn(move || b.mark_clusters(64, 1).unwrap())
        };
        let run = b.take_run(0, 128);
        marker.join().unwrap();
        let runs: Vec<_> = run.into_iter().collect();
        assert!(runs == [(63, 1)] || runs == [(63, 2)], "{runs:?}");
        check_outcome(&b, &[runs], &[63, 64]);
    });
}

/// Two takers on overlapping runs: each cluster goes to exactly one.
#[test]
fn two_takers_never_take_the_same_cluster() {
    model(|| {
        let b = Arc::new(DirtyBitmap::new(128 * G, G).unwrap());
        b.mark_clusters(62, 3).unwrap();
        let other = {
            let b = b.clone();
            thread::spawn(move || b.take_run(0, 2).into_iter().collect::<Vec<_>>())
        };
        let mine: Vec<_> = b.take_run(63, 2).into_iter().collect();
        let theirs = other.join().unwrap();
        check_outcome(&b, &[mine, theirs], &[62, 63, 64]);
    });
}

/// Three levels (65 words, 2 summary words, 1 top word): a take that empties
/// a word and then its level-1 summary word races a mark in that word, so the
/// clear-and-recheck must work at level 1 -> 2 as well as 0 -> 1.
#[test]
fn mark_races_take_across_three_levels() {
    model(|| {
        let b = Arc::new(DirtyBitmap::new(65 * 64 * G, G).unwrap());
        assert_eq!(b.levels(), 3);
        b.mark_clusters(4096, 1).unwrap();
        let marker = {
            let b = b.clone();
            thread::spawn(move || b.mark_clusters(4100, 1).unwrap())
        };
        let runs = b.take_range(4096, 1).unwrap();
        marker.join().unwrap();
        assert_eq!(runs, vec![(4096, 1)]);
        check_outcome(&b, &[runs], &[4096, 4100]);
        assert_eq!(b.next_dirty(0), Some(4100));
    });
}

/// A mark that has returned is seen by a reader that synchronises with it,
/// even while another mark of the same word (which may be the one that set
/// the shared summary bits) is still half done.
#[test]
fn a_finished_mark_is_visible_despite_a_half_done_neighbour() {
    model(|| {
        let b = Arc::new(DirtyBitmap::new(65 * 64 * G, G).unwrap());
        let done = Arc::new(AtomicBool::new(false));
        let neighbour = {
            let b = b.clone();
            thread::spawn(move || b.mark_clusters(4101, 1).unwrap())
        };
        let marker = {
            let (b, done) = (b.clone(), done.clone());
            thread::spawn(move || {
                b.mark_clusters(4100, 1).unwrap();
                done.store(true, Ordering::Release);
            })
        };
        if done.load(Ordering::Acquire) {
            assert_eq!(b.next_dirty(0), Some(4100));
            assert!(b.dirty_clusters() >= 1);
        }
        neighbour.join().unwrap();
        marker.join().unwrap();
        check_outcome(&b, &[], &[4100, 4101]);
    });
}

/// The counter never under-reports a finished mark while no take runs: a
/// take that clears a half-done mark's bit must not make the count of a
/// later, finished mark disappear. (Under loom the counter stripe follows the
/// word, so the two marks count on different stripes.)
#[test]
fn count_covers_finished_marks_after_a_take_of_a_half_done_mark() {
    model(|| {
        let b = Arc::new(DirtyBitmap::new(128 * G, G).unwrap());
        let done = Arc::new(AtomicBool::new(false));
        let half_done = {
            let b = b.clone();
            thread::spawn(move || b.mark_clusters(1, 1).unwrap())
        };
        let finished = {
            let (b, done) = (b.clone(), done.clone());
            thread::spawn(move || {
                b.mark_clusters(69, 1).unwrap();
                done.store(true, Ordering::Release);
            })
        };
        let run = b.take_run(0, 1);
        if done.load(Ordering::Acquire) && b.is_dirty(69) {
            assert!(
                b.dirty_clusters() >= 1,
                "finished mark of cluster 69 not counted"
            );
        }
        half_done.join().unwrap();
        finished.join().unwrap();
        check_outcome(&b, &[run.into_iter().collect()], &[1, 69]);
    });
}

/// A stale summary bit (a mark's summary set after a take already took its
/// bit) is repaired by the next search, while the same marker marks again:
/// the repair's clear-and-recheck must not hide the second mark.
#[test]
fn search_repairing_a_stale_hint_races_a_mark() {
    model(|| {
        let b = Arc::new(DirtyBitmap::new(128 * G, G).unwrap());
        let marker = {
            let b = b.clone();
            thread::spawn(move || {
                b.mark_clusters(5, 1).unwrap();
                b.mark_clusters(6, 1).unwrap();
            })
        };
        let runs = b.take_range(0, 64).unwrap();
        let found = b.next_dirty(0);
        marker.join().unwrap();
        if let Some(c) = found {
            assert!(c == 5 || c == 6, "found {c}");
        }
        check_outcome(&b, &[runs], &[5, 6]);
    });
}

/// A mark spanning two words (the multi-cluster path) races a take that
/// empties the first of them.
#[test]
fn multi_word_mark_races_a_word_emptying_take() {
    model(|| {
        let b = Arc::new(DirtyBitmap::new(128 * G, G).unwrap());
        b.mark_clusters(0, 1).unwrap();
        b.mark_clusters(100, 1).unwrap(); // word 1's summary bit is already set
        let marker = {
            let b = b.clone();
            thread::spawn(move || b.mark_clusters(63, 2).unwrap())
        };
        let runs = b.take_range(0, 1).unwrap();
        marker.join().unwrap();
        assert_eq!(runs, vec![(0, 1)]);
        check_outcome(&b, &[runs], &[0, 63, 64, 100]);
    });
}
