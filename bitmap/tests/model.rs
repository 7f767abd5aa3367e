//! Differential property test: random sequences of operations against a
//! `Vec<bool>` model must give the same answers, and the bitmap must stay
//! internally consistent (summary levels and counter) after every step.
#![cfg(not(loom))]

use proptest::prelude::*;
use ringmirror_bitmap::{BitmapError, DirtyBitmap};

#[derive(Debug, Clone)]
enum Op {
    Mark(u64, u64),
    MarkClusters(u64, u64),
    TakeRun(u64, u64),
    TakeRange(u64, u64),
    NextDirty(u64),
    DirtyRun(u64, u64),
    IsDirty(u64),
    Merge(Vec<(u64, u64)>),
    SetAll,
    ClearAll,
    RoundTripBitvec,
}

fn op() -> impl Strategy<Value = Op> {
    // Raw numbers; `apply` scales them to the geometry, slightly past the end
    // so out-of-range input is exercised too.
    prop_oneof![
        6 => (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Op::Mark(a, b)),
        3 => (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Op::MarkClusters(a, b)),
        5 => (any::<u64>(), 0..300u64).prop_map(|(a, b)| Op::TakeRun(a, b)),
        2 => (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Op::TakeRange(a, b)),
        2 => any::<u64>().prop_map(Op::NextDirty),
        2 => (any::<u64>(), 0..300u64).prop_map(|(a, b)| Op::DirtyRun(a, b)),
        1 => any::<u64>().prop_map(Op::IsDirty),
        1 => prop::collection::vec((any::<u64>(), 0..100u64), 0..5).prop_map(Op::Merge),
        1 => Just(Op::SetAll),
        1 => Just(Op::ClearAll),
        1 => Just(Op::RoundTripBitvec),
    ]
}

/// Disk length and granularity: 0..=5000 clusters (up to three levels),
/// granularity 512 B..64 KiB, often a partial last cluster.
fn geometry() -> impl Strategy<Value = (u64, u64)> {
    (9u32..=16, 0u64..=5000, any::<u64>()).prop_map(|(shift, clusters, tail)| {
        let g = 1u64 << shift;
        let len = if clusters == 0 {
            0
        } else {
            (clusters - 1) * g + 1 + tail % g
        };
        (len, g)
    })
}

struct Model {
    len: u64,
    g: u64,
    bits: Vec<bool>,
}

impl Model {
    fn n(&self) -> u64 {
        self.bits.len() as u64
    }

    fn count(&self) -> u64 {
        self.bits.iter().filter(|&&b| b).count() as u64
    }

    fn bytes(&self) -> u64 {
        (0..self.n())
            .filter(|&c| self.bits[c as usize])
            .map(|c| ((c + 1) * self.g).min(self.len) - c * self.g)
            .sum()
    }

    fn next_dirty(&self, from: u64) -> Option<u64> {
        let from = if from < self.n() { from } else { 0 };
        (from..self.n())
            .chain(0..from)
            .find(|&c| self.bits[c as usize])
    }

    fn run(&self, from: u64, max: u64) -> Option<(u64, u64)> {
        if max == 0 {
            return None;
        }
        let first = self.next_dirty(from)?;
        let count = (first..self.n())
            .take(max as usize)
            .take_while(|&c| self.bits[c as usize])
            .count() as u64;
        Some((first, count))
    }

    fn set(&mut self, first: u64, count: u64, v: bool) {
        for c in first..first + count {
            self.bits[c as usize] = v;
        }
    }

    fn take_range(&mut self, first: u64, count: u64) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for c in first..first + count {
            if std::mem::replace(&mut self.bits[c as usize], false) {
                match runs.last_mut() {
                    Some(r) if r.0 + r.1 == c => r.1 += 1,
                    _ => runs.push((c, 1)),
                }
            }
        }
        runs
    }
}

fn apply(b: &DirtyBitmap, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let n = m.n();
    let span = m.len + 3 * m.g + 1;
    match *op {
        Op::Mark(a, l) => {
            let offset = a % span;
            // Mostly short writes, sometimes long ones spanning words.
            let len = if l % 4 == 0 {
                l % (300 * m.g)
            } else {
                l % (4 * m.g)
            };
            let res = b.mark(offset, len);
            if len == 0 {
                prop_assert!(res.is_ok());
            } else if offset + len <= m.len {
                prop_assert!(res.is_ok());
                let first = offset / m.g;
                let last = (offset + len - 1) / m.g;
                m.set(first, last - first + 1, true);
            } else {
                let is_out_of_range = matches!(res, Err(BitmapError::OutOfRange { .. }));
                prop_assert!(is_out_of_range, "{res:?}");
            }
        }
        Op::MarkClusters(a, c) => {
            let first = a % (n + 3);
            let count = c % 200;
            let res = b.mark_clusters(first, count);
            if first + count <= n {
                prop_assert!(res.is_ok());
                m.set(first, count, true);
            } else if count > 0 {
                prop_assert!(res.is_err());
            }
        }
        Op::TakeRun(from, max) => {
            let from = from % (n + 3);
            let expected = m.run(from, max);
            prop_assert_eq!(b.take_run(from, max), expected);
            if let Some((f, c)) = expected {
                m.set(f, c, false);
            }
        }
        Op::TakeRange(a, c) => {
            let first = a % (n + 1);
            let count = c % (n - first + 2);
            let res = b.take_range(first, count);
            if first + count <= n {
                prop_assert_eq!(res.unwrap(), m.take_range(first, count));
            } else {
                prop_assert!(res.is_err());
            }
        }
        Op::NextDirty(from) => {
            let from = from % (n + 3);
            prop_assert_eq!(b.next_dirty(from), m.next_dirty(from));
        }
        Op::DirtyRun(from, max) => {
            let from = from % (n + 3);
            prop_assert_eq!(b.dirty_run(from, max), m.run(from, max));
        }
        Op::IsDirty(c) => {
            let c = c % (n + 3);
            prop_assert_eq!(b.is_dirty(c), c < n && m.bits[c as usize]);
        }
        Op::Merge(ref ranges) => {
            let other = DirtyBitmap::new(m.len, m.g).unwrap();
            for &(a, c) in ranges {
                if n > 0 {
                    let first = a % n;
                    let count = c.min(n - first);
                    other.mark_clusters(first, count).unwrap();
                    m.set(first, count, true);
                }
            }
            b.merge(&other).unwrap();
        }
        Op::SetAll => {
            b.set_all();
            m.set(0, n, true);
        }
        Op::ClearAll => {
            prop_assert_eq!(b.clear_all(), m.count());
            m.set(0, n, false);
        }
        Op::RoundTripBitvec => {
            let copy = DirtyBitmap::from_bitvec(m.len, m.g, &b.to_bitvec()).unwrap();
            prop_assert_eq!(copy.dirty_clusters(), m.count());
            copy.check_consistency().unwrap();
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn bitmap_matches_vec_bool_model(
        (len, g) in geometry(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let b = DirtyBitmap::new(len, g).unwrap();
        let mut m = Model { len, g, bits: vec![false; len.div_ceil(g) as usize] };
        prop_assert_eq!(b.clusters(), m.n());
        for op in &ops {
            apply(&b, &mut m, op)?;
            prop_assert_eq!(b.dirty_clusters(), m.count(), "after {:?}", op);
            prop_assert_eq!(b.dirty_bytes(), m.bytes(), "after {:?}", op);
            let bits: Vec<bool> = b.to_bitvec().iter().by_vals().collect();
            prop_assert!(bits == m.bits, "bits differ after {:?}", op);
            prop_assert_eq!(b.is_clean(), m.count() == 0);
            if let Err(e) = b.check_consistency() {
                return Err(TestCaseError::fail(format!("after {op:?}: {e}")));
            }
        }
    }
}
