//! `--verify`: compare source and target after the copy, many reads in
//! flight, skipping ranges that are holes on both sides.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ringmirror_engine::{BlockDevice, DmaBuf, Extent, ExtentKind, IoError, IoResult};

/// Why a verification failed.
#[derive(Debug)]
pub enum VerifyError {
    /// The devices differ; the first differing byte offset.
    Differ(u64),
    /// Reading failed.
    Io(IoError),
}

impl From<IoError> for VerifyError {
    fn from(e: IoError) -> Self {
        VerifyError::Io(e)
    }
}

fn holes(dev: &dyn BlockDevice, off: u64, len: u64) -> IoResult<Vec<(u64, u64)>> {
    Ok(dev
        .extents(off, len)?
        .into_iter()
        .filter(|e: &Extent| e.kind == ExtentKind::Hole)
        .map(|e| (e.offset, e.offset + e.len))
        .collect())
}

/// Ranges of `[off, end)` not covered by holes of both devices.
fn compare_ranges(a: &[(u64, u64)], b: &[(u64, u64)], off: u64, end: u64) -> Vec<(u64, u64)> {
    // Intersect the hole lists, then take the complement.
    let mut both = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if lo < hi {
            both.push((lo, hi));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    let mut out = Vec::new();
    let mut pos = off;
    for (lo, hi) in both {
        if lo > pos {
            out.push((pos, lo));
        }
        pos = pos.max(hi);
    }
    if pos < end {
        out.push((pos, end));
    }
    out
}

struct Pair {
    a: Option<DmaBuf>,
    b: Option<DmaBuf>,
}

/// Compare `a` and `b` (same size). `done` counts verified bytes.
pub fn verify(
    a: &Arc<dyn BlockDevice>,
    b: &Arc<dyn BlockDevice>,
    request: usize,
    lanes: usize,
    done: &AtomicU64,
) -> Result<(), VerifyError> {
    let size = a.size();
    let (tx, rx) = crossbeam_channel::unbounded::<(u64, bool, DmaBuf, IoResult<()>)>();
    let mut work: VecDeque<(u64, u64)> = VecDeque::new();
    let mut pos = 0u64;
    let mut pairs: HashMap<u64, Pair> = HashMap::new();
    let mut in_flight = 0usize;
    let mut first_diff: Option<u64> = None;
    let mut first_err: Option<IoError> = None;
    let window = 1u64 << 30;
    loop {
        while in_flight < lanes && first_err.is_none() && first_diff.is_none() {
            if work.is_empty() {
                if pos >= size {
                    break;
                }
                let end = (pos + window).min(size);
                let ranges = compare_ranges(
                    &holes(&**a, pos, end - pos)?,
                    &holes(&**b, pos, end - pos)?,
                    pos,
                    end,
                );
                let covered: u64 = ranges.iter().map(|(l, h)| h - l).sum();
                done.fetch_add(end - pos - covered, Ordering::Relaxed);
                for (lo, hi) in ranges {
                    let mut o = lo;
                    while o < hi {
                        let l = (hi - o).min(request as u64);
                        work.push_back((o, l));
                        o += l;
                    }
                }
                pos = end;
                continue;
            }
            let Some((off, len)) = work.pop_front() else {
                break;
            };
            for (dev, is_a) in [(a, true), (b, false)] {
                let mut buf = dev.alloc_buf(len as usize);
                buf.set_len(len as usize);
                let tx = tx.clone();
                dev.read(
                    off,
                    buf,
                    Box::new(move |buf, r| {
                        let _ = tx.send((off, is_a, buf, r));
                    }),
                );
            }
            pairs.insert(off, Pair { a: None, b: None });
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        let Ok((off, is_a, buf, res)) = rx.recv() else {
            break;
        };
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
        let Some(pair) = pairs.get_mut(&off) else {
            continue;
        };
        if is_a {
            pair.a = Some(buf);
        } else {
            pair.b = Some(buf);
        }
        if let (Some(x), Some(y)) = (&pair.a, &pair.b) {
            if x[..] != y[..] {
                let i = x
                    .iter()
                    .zip(y.iter())
                    .position(|(p, q)| p != q)
                    .unwrap_or(0);
                let at = off + i as u64;
                first_diff = Some(first_diff.map_or(at, |d| d.min(at)));
            }
            done.fetch_add(x.len() as u64, Ordering::Relaxed);
            pairs.remove(&off);
            in_flight -= 1;
        }
    }
    if let Some(e) = first_err {
        return Err(VerifyError::Io(e));
    }
    match first_diff {
        Some(d) => Err(VerifyError::Differ(d)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::compare_ranges;

    #[test]
    fn skips_only_common_holes() {
        let a = [(0, 10), (20, 30)];
        let b = [(5, 25)];
        assert_eq!(
            compare_ranges(&a, &b, 0, 40),
            vec![(0, 5), (10, 20), (25, 40)]
        );
        assert_eq!(compare_ranges(&[], &b, 0, 40), vec![(0, 40)]);
        assert_eq!(compare_ranges(&[(0, 40)], &[(0, 40)], 0, 40), vec![]);
    }
}
