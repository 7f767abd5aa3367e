//! The guest side of a running job: what a [`crate::Disk`] does with each
//! guest request while a job is attached.
//!
//! Background mode: the request runs on the source; when it completes (and
//! before the guest is told) its range is marked dirty, so any copy that
//! raced with it is redone.
//!
//! Write-blocking mode: the request takes the cluster lock of its span
//! (so no copy of those clusters, and no other write-blocking request, is
//! in flight), copies the guest's bytes into a second buffer, writes both
//! source and target, and completes when both have. Clusters it covered
//! whole are then in sync and are cleared; partly covered ones keep their
//! bit as it was (both sides received the same bytes, so a clean cluster
//! stays clean and a dirty one stays dirty).
//!
//! Before READY, clusters that are still dirty are not written to the
//! target: the job copies them later anyway, and under the cluster lock no
//! copy of them is in flight and none can take them, so that copy reads the
//! new bytes. A request wholly in dirty clusters goes to the source only;
//! otherwise the dirty partial clusters at its ends are left out, as QEMU's
//! `do_sync_target_write` does (QEMU writes wholly covered dirty clusters
//! through as well). A successful write-blocking guest write never makes a
//! cluster dirty (only discards and failures do), so the guest's writes do
//! not add to what the job has to copy. Early in a
//! full sync, when nearly all is dirty, the guest pays about what it pays in
//! background mode. From READY on, every write-blocking request goes to
//! both sides whole before it completes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use ringmirror_bitmap::DirtyBitmap;
use ringmirror_engine::{BlockDevice, BufDone, DmaBuf, Done, IoError, IoResult, RangeLock};

use crate::coordinator::Msg;

pub(crate) struct JobLink {
    pub(crate) bitmap: Arc<DirtyBitmap>,
    /// Target clusters ever written (by the job or a write-blocking request):
    /// only clusters outside it may be assumed zero with `target-is-zero`.
    pub(crate) written: Arc<DirtyBitmap>,
    pub(crate) target: Arc<dyn BlockDevice>,
    pub(crate) locks: Arc<RangeLock>,
    pub(crate) write_blocking: AtomicBool,
    /// Guest writes, zeroes and discards running in background mode (they
    /// mark their range when they complete, without the cluster lock).
    /// Counted *before* the request reads the mode (`begin_request`), so a
    /// write-blocking request that finds none here knows that any request
    /// still to run in background mode started after the switch was visible
    /// — which none does — and any that ran before has landed. A
    /// write-blocking request that finds some may be overtaken on the source
    /// by one of them, whose mark its own clear would wipe: it clears
    /// nothing (its clusters are copied again, which is merely work).
    pub(crate) background_writes: AtomicU64,
    /// Set when the job first reaches READY: from then on a write-blocking
    /// request writes all of itself to both sides, whatever the bitmap says
    /// (a discard, an error or a write from before a mode switch may have
    /// left a cluster dirty).
    pub(crate) ready: AtomicBool,
    /// Bytes of guest writes marked dirty (for the dirty rate).
    pub(crate) guest_dirtied: AtomicU64,
    /// Bytes written to the target by write-blocking requests; they count
    /// as progress (done and total), as in QEMU.
    pub(crate) active_synced: Arc<AtomicU64>,
    pub(crate) notify: Sender<Msg>,
}

fn align_down(v: u64, a: u64) -> u64 {
    v - v % a
}

/// (source result, target result, source buffer)
type HalfResults = (Option<IoResult<()>>, Option<IoResult<()>>, Option<DmaBuf>);
type HalvesDone = Box<dyn FnOnce(IoResult<()>, IoResult<()>, Option<DmaBuf>) + Send>;

/// Joins the source and target halves of a write-blocking request: runs the
/// finisher once both results are in, with the source's buffer.
struct Halves {
    results: Mutex<HalfResults>,
    finish: Mutex<Option<HalvesDone>>,
}

impl Halves {
    fn new(finish: HalvesDone) -> Arc<Halves> {
        Arc::new(Halves {
            results: Mutex::new((None, None, None)),
            finish: Mutex::new(Some(finish)),
        })
    }

    fn source(&self, res: IoResult<()>, buf: Option<DmaBuf>) {
        let mut r = self.results.lock();
        r.0 = Some(res);
        r.2 = buf;
        drop(r);
        self.maybe_finish();
    }

    fn target(&self, res: IoResult<()>) {
        self.results.lock().1 = Some(res);
        self.maybe_finish();
    }

    fn maybe_finish(&self) {
        let mut r = self.results.lock();
        if r.0.is_none() || r.1.is_none() {
            return;
        }
        let (s, t, b) = (r.0.take(), r.1.take(), r.2.take());
        drop(r);
        if let (Some(f), Some(s), Some(t)) = (self.finish.lock().take(), s, t) {
            f(s, t, b);
        }
    }
}

impl JobLink {
    /// Mark a completed guest request's range dirty.
    pub(crate) fn mark(&self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        // The range was checked against the disk size before the request ran.
        if self.bitmap.mark(off, len).is_ok() {
            self.guest_dirtied.fetch_add(len, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_write_blocking(&self) -> bool {
        self.write_blocking.load(Ordering::Acquire)
    }

    /// The mode of one guest request that changes the disk: true for
    /// write-blocking; false for background, and then the request counts in
    /// `background_writes` until `end_background`. SeqCst: pairs with the
    /// SeqCst store of the mode switch and the load in `active_write`.
    pub(crate) fn begin_request(&self) -> bool {
        // Once write-blocking, always: no count needed (nor contention).
        if self.write_blocking.load(Ordering::SeqCst) {
            return true;
        }
        self.background_writes.fetch_add(1, Ordering::SeqCst);
        if self.write_blocking.load(Ordering::SeqCst) {
            self.background_writes.fetch_sub(1, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// A background request completed: mark its range, then uncount it.
    pub(crate) fn end_background(&self, off: u64, len: u64) {
        self.mark(off, len);
        self.background_writes.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether a write-blocking request starting now may clear the clusters
    /// it covers once both sides have its bytes (see `background_writes`).
    fn may_clear(&self) -> bool {
        self.background_writes.load(Ordering::SeqCst) == 0
    }

    fn span(&self, off: u64, len: u64) -> (u64, u64) {
        let g = self.bitmap.granularity();
        (align_down(off, g), align_down(off + len + g - 1, g))
    }

    /// Clusters wholly inside `[off, off+len)` are now equal on both sides.
    fn clear_covered(&self, off: u64, len: u64) {
        let g = self.bitmap.granularity();
        let first = off.div_ceil(g);
        let end = off + len;
        // The last partial cluster of the disk counts as covered when the
        // write reaches the end of the disk.
        let last = if end == self.bitmap.len() {
            end.div_ceil(g)
        } else {
            end / g
        };
        if last > first {
            let _ = self.bitmap.take_range(first, last - first);
        }
    }

    /// The part of `[off, off+len)` the target must receive: all of it from
    /// READY on; before, None when all
    /// of it lies in dirty clusters, else without a partly covered head or
    /// tail cluster that is dirty (QEMU's "dirty unaligned padding"). Called
    /// under the cluster lock of the span: no copy of those clusters is in
    /// flight, and none can take them until it is released.
    fn target_part(&self, off: u64, len: u64) -> Option<(u64, u64)> {
        if len == 0 || self.ready.load(Ordering::Acquire) {
            return Some((off, len));
        }
        let g = self.bitmap.granularity();
        let (mut start, mut end) = (off, off + len);
        let (first, last) = (start / g, (end - 1) / g);
        if (first..=last).all(|c| self.bitmap.is_dirty(c)) {
            return None;
        }
        if start % g != 0 && self.bitmap.is_dirty(start / g) {
            start = align_down(start, g) + g;
        }
        // A write that reaches the end of the disk covers its last cluster.
        if end % g != 0 && end != self.bitmap.len() && self.bitmap.is_dirty((end - 1) / g) {
            end = align_down(end, g);
        }
        (end > start).then(|| (start, end - start))
    }

    fn target_failed(&self, off: u64, len: u64, e: IoError) {
        self.mark(off, len);
        let _ = self.notify.send(Msg::ActiveTargetError(e));
    }

    /// Settle the target part `[off, off+len)` of a write-blocking request
    /// whose source write succeeded: clear what is now in sync, or re-mark
    /// what is not.
    fn settle(&self, off: u64, len: u64, tgt: IoResult<()>, may_clear: bool) {
        match tgt {
            Ok(()) => {
                if may_clear {
                    self.clear_covered(off, len);
                }
                self.active_synced.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => self.target_failed(off, len, e),
        }
    }

    /// A write-blocking write (see the module docs). `done` gets the source
    /// result; a target failure is the job's business (its error policy),
    /// the range is re-marked so the job copies it again.
    pub(crate) fn active_write(
        self: &Arc<Self>,
        src: Arc<dyn BlockDevice>,
        off: u64,
        buf: DmaBuf,
        fua: bool,
        done: BufDone,
    ) {
        let (lo, hi) = self.span(off, buf.len() as u64);
        let link = self.clone();
        self.locks.acquire(lo, hi, true, move |guard| {
            let len = buf.len() as u64;
            let may_clear = link.may_clear();
            let Some((toff, tlen)) = link.target_part(off, len) else {
                // All of it lies in dirty clusters: source only; they stay
                // dirty and are copied after the lock is released.
                let l2 = link.clone();
                return src.write(
                    off,
                    buf,
                    fua,
                    Box::new(move |b, r| {
                        if r.is_err() {
                            l2.mark(off, len);
                        }
                        drop(guard);
                        done(b, r)
                    }),
                );
            };
            let at = (toff - off) as usize;
            let mut copy = link.target.alloc_buf(tlen as usize);
            copy.copy_from_slice(&buf[at..at + tlen as usize]);
            let _ = link.written.mark(toff, tlen);
            let l2 = link.clone();
            let halves = Halves::new(Box::new(move |s, t, b| {
                if s.is_err() {
                    l2.mark(off, len);
                } else {
                    l2.settle(toff, tlen, t, may_clear);
                }
                drop(guard);
                done(b.unwrap_or_else(|| DmaBuf::new(0, 1)), s);
            }));
            let h = halves.clone();
            src.write(off, buf, fua, Box::new(move |b, r| h.source(r, Some(b))));
            link.target
                .write(toff, copy, fua, Box::new(move |_b, r| halves.target(r)));
        });
    }

    /// A discard in write-blocking mode: source only (discarded bytes read
    /// back as whatever the source says, so the job copies the range), but
    /// under the cluster lock, so it cannot interleave with a write-blocking
    /// write to the same clusters: a write that completes after it cannot
    /// clear the mark it leaves (that write would then have covered the
    /// range on both sides), and one before it is followed by the mark.
    pub(crate) fn active_discard(
        self: &Arc<Self>,
        src: Arc<dyn BlockDevice>,
        off: u64,
        len: u64,
        done: Done,
    ) {
        let (lo, hi) = self.span(off, len);
        let link = self.clone();
        self.locks.acquire(lo, hi, true, move |guard| {
            src.discard(
                off,
                len,
                Box::new(move |r| {
                    // Even a failed discard may have dropped part of the range.
                    link.mark(off, len);
                    drop(guard);
                    done(r)
                }),
            );
        });
    }

    /// A write-blocking write-zeroes: both sides, like [`Self::active_write`].
    pub(crate) fn active_zeroes(
        self: &Arc<Self>,
        src: Arc<dyn BlockDevice>,
        off: u64,
        len: u64,
        unmap: bool,
        done: Done,
    ) {
        let (lo, hi) = self.span(off, len);
        let link = self.clone();
        self.locks.acquire(lo, hi, true, move |guard| {
            let may_clear = link.may_clear();
            let Some((toff, tlen)) = link.target_part(off, len) else {
                let l2 = link.clone();
                return src.write_zeroes(
                    off,
                    len,
                    unmap,
                    Box::new(move |r| {
                        if r.is_err() {
                            l2.mark(off, len);
                        }
                        drop(guard);
                        done(r)
                    }),
                );
            };
            let _ = link.written.mark(toff, tlen);
            let l2 = link.clone();
            let halves = Halves::new(Box::new(move |s, t, _| {
                if s.is_err() {
                    l2.mark(off, len);
                } else {
                    l2.settle(toff, tlen, t, may_clear);
                }
                drop(guard);
                done(s);
            }));
            let h = halves.clone();
            src.write_zeroes(off, len, unmap, Box::new(move |r| h.source(r, None)));
            link.target
                .write_zeroes(toff, tlen, unmap, Box::new(move |r| halves.target(r)));
        });
    }
}
