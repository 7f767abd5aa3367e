//! The copy pipeline: `lanes` buffers of `request_size` bytes circulate
//! read → (zero check) → write, many in flight across the reactor threads,
//! completing out of order. One coordinator thread owns the plan and reacts
//! to completion events; the I/O itself runs on the engine's reactors.
//!
//! ```text
//!  Planner ──(data|hole, ≤ request_size)──> coordinator ──read──> SRC
//!                                              ^   │
//!               completion events (channel) ───┘   └──write / write-zeroes──> DST
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ringmirror_engine::{
    is_zero, BlockDevice, BlockDeviceExt, DmaBuf, ExtentKind, IoError, IoResult, RateLimiter,
};

/// Knobs of one copy.
#[derive(Clone, Debug)]
pub struct CopyParams {
    /// Bytes per read/write request.
    pub request_size: usize,
    /// Requests in flight (buffers).
    pub lanes: usize,
    /// Skip holes and all-zero data (the target stays sparse).
    pub sparse: bool,
    /// The target already reads as zeroes everywhere (freshly created).
    pub target_is_zero: bool,
    /// Bytes per second, 0 = unlimited.
    pub speed: u64,
    /// Preallocate the target's data ranges before writing them.
    pub preallocate: bool,
}

/// Counters, readable while the copy runs.
#[derive(Default, Debug)]
pub struct CopyStats {
    /// Source bytes fully handled (copied, zeroed or skipped).
    pub done: AtomicU64,
    /// Bytes read from the source.
    pub read: AtomicU64,
    /// Bytes written to the target as data.
    pub written: AtomicU64,
    /// Source holes not read.
    pub holes: AtomicU64,
    /// All-zero source data not written as data.
    pub zero_data: AtomicU64,
    /// Bytes made zero on the target with write-zeroes.
    pub zeroed: AtomicU64,
}

/// One unit of work.
#[derive(Clone, Copy, Debug)]
struct Work {
    off: u64,
    len: u64,
    hole: bool,
}

/// Cuts the source into work items, mapping extents a window at a time.
struct Planner {
    size: u64,
    pos: u64,
    request: u64,
    window: Vec<Work>,
    next_in_window: usize,
}

const WINDOW: u64 = 1 << 30;

impl Planner {
    fn refill(
        &mut self,
        src: &dyn BlockDevice,
        dst: &dyn BlockDevice,
        p: &CopyParams,
    ) -> IoResult<()> {
        self.window.clear();
        self.next_in_window = 0;
        let end = (self.pos + WINDOW).min(self.size);
        let extents = if p.sparse {
            src.extents(self.pos, end - self.pos)?
        } else {
            vec![ringmirror_engine::Extent {
                offset: self.pos,
                len: end - self.pos,
                kind: ExtentKind::Data,
            }]
        };
        for e in extents {
            let hole = e.kind == ExtentKind::Hole;
            if !hole && p.preallocate && p.target_is_zero {
                // One fallocate for the whole extent: the filesystem lays it
                // out contiguously instead of allocating write by write.
                dst.write_zeroes_sync(e.offset, e.len, false)?;
            }
            // Cut at request-size boundaries so requests stay aligned.
            let mut off = e.offset;
            let end = e.offset + e.len;
            while off < end {
                let boundary = (off / self.request + 1) * self.request;
                let len = boundary.min(end) - off;
                self.window.push(Work { off, len, hole });
                off += len;
            }
        }
        self.pos = end;
        Ok(())
    }

    fn next(
        &mut self,
        src: &dyn BlockDevice,
        dst: &dyn BlockDevice,
        p: &CopyParams,
    ) -> IoResult<Option<Work>> {
        while self.next_in_window >= self.window.len() {
            if self.pos >= self.size {
                return Ok(None);
            }
            self.refill(src, dst, p)?;
        }
        let w = self.window[self.next_in_window];
        self.next_in_window += 1;
        Ok(Some(w))
    }
}

enum Event {
    Read(Work, DmaBuf, IoResult<()>),
    Wrote(Work, DmaBuf, IoResult<()>),
    Zeroed(Work, Option<DmaBuf>, IoResult<()>),
}

/// Copy all of `src` to `dst` (same size, checked by the caller).
pub fn copy(
    src: &Arc<dyn BlockDevice>,
    dst: &Arc<dyn BlockDevice>,
    p: &CopyParams,
    stats: &CopyStats,
    cancel: &AtomicBool,
) -> Result<(), IoError> {
    let (tx, rx): (Sender<Event>, Receiver<Event>) = crossbeam_channel::unbounded();
    let mut planner = Planner {
        size: src.size(),
        pos: 0,
        request: p.request_size as u64,
        window: Vec::new(),
        next_in_window: 0,
    };
    let mut free: Vec<DmaBuf> = (0..p.lanes.max(1))
        .map(|_| src.alloc_buf(p.request_size))
        .collect();
    let mut limiter = RateLimiter::new(p.speed, Duration::from_millis(5));
    let mut in_flight = 0usize;
    let mut first_err: Option<IoError> = None;
    let mut planned_out = false;
    let mut pending: Option<Work> = None;
    let writeback = (!dst.info().direct).then(|| Writeback::start(dst.clone()));

    loop {
        // Issue as much as the lanes and the rate allow.
        let mut wait = Duration::from_millis(200);
        while first_err.is_none()
            && !planned_out
            && !free.is_empty()
            && !cancel.load(Ordering::Relaxed)
        {
            let w = match pending.take() {
                Some(w) => w,
                None => match planner.next(&**src, &**dst, p) {
                    Ok(Some(w)) => w,
                    Ok(None) => {
                        planned_out = true;
                        break;
                    }
                    Err(e) => {
                        first_err = Some(e);
                        break;
                    }
                },
            };
            if w.hole {
                stats.holes.fetch_add(w.len, Ordering::Relaxed);
                if p.target_is_zero {
                    stats.done.fetch_add(w.len, Ordering::Relaxed);
                } else {
                    in_flight += 1;
                    let tx = tx.clone();
                    dst.write_zeroes(
                        w.off,
                        w.len,
                        true,
                        Box::new(move |r| {
                            let _ = tx.send(Event::Zeroed(w, None, r));
                        }),
                    );
                }
                continue;
            }
            let delay = limiter.try_grant(w.len);
            if !delay.is_zero() {
                pending = Some(w);
                wait = delay;
                break;
            }
            let mut buf = free.pop().unwrap_or_else(|| src.alloc_buf(p.request_size));
            buf.set_len(w.len as usize);
            in_flight += 1;
            let tx = tx.clone();
            src.read(
                w.off,
                buf,
                Box::new(move |b, r| {
                    let _ = tx.send(Event::Read(w, b, r));
                }),
            );
        }
        if in_flight == 0 && (planned_out || first_err.is_some() || cancel.load(Ordering::Relaxed))
        {
            break;
        }
        let ev = match rx.recv_timeout(wait) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => unreachable!("the coordinator holds a sender"),
        };
        match ev {
            Event::Read(_, buf, Err(e)) | Event::Wrote(_, buf, Err(e)) => {
                in_flight -= 1;
                free.push(buf);
                first_err.get_or_insert(e);
            }
            Event::Read(w, buf, Ok(())) => {
                stats.read.fetch_add(w.len, Ordering::Relaxed);
                if first_err.is_some() {
                    in_flight -= 1;
                    free.push(buf);
                } else if p.sparse && is_zero(&buf) {
                    stats.zero_data.fetch_add(w.len, Ordering::Relaxed);
                    // A preallocated target must have the block punched out
                    // again to stay sparse; an unknown target must be zeroed.
                    if p.target_is_zero && !p.preallocate {
                        in_flight -= 1;
                        free.push(buf);
                        stats.done.fetch_add(w.len, Ordering::Relaxed);
                    } else {
                        let tx = tx.clone();
                        dst.write_zeroes(
                            w.off,
                            w.len,
                            true,
                            Box::new(move |r| {
                                let _ = tx.send(Event::Zeroed(w, Some(buf), r));
                            }),
                        );
                    }
                } else {
                    let tx = tx.clone();
                    dst.write(
                        w.off,
                        buf,
                        false,
                        Box::new(move |b, r| {
                            let _ = tx.send(Event::Wrote(w, b, r));
                        }),
                    );
                }
            }
            Event::Wrote(w, buf, Ok(())) => {
                in_flight -= 1;
                free.push(buf);
                if let Some(wb) = &writeback {
                    wb.written(w.off, w.len);
                }
                stats.written.fetch_add(w.len, Ordering::Relaxed);
                stats.done.fetch_add(w.len, Ordering::Relaxed);
            }
            Event::Zeroed(w, buf, res) => {
                in_flight -= 1;
                if let Some(b) = buf {
                    free.push(b);
                }
                match res {
                    Ok(()) => {
                        stats.zeroed.fetch_add(w.len, Ordering::Relaxed);
                        stats.done.fetch_add(w.len, Ordering::Relaxed);
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
    }
    drop(writeback);
    if let Some(e) = first_err {
        return Err(e);
    }
    dst.flush_sync()
}

/// For a destination written through the page cache: a thread that asks the
/// kernel to start writing back each completed write at once
/// ([`BlockDevice::start_writeback`]), so the device writes while the copy
/// still reads, instead of after the dirty pages pile up to the kernel's
/// background threshold (10% of RAM) and the final fsync writes the rest.
/// The call blocks while the device queue is full, which is why it has its
/// own thread: made on the coordinator (an earlier version), it stalled the
/// copy. Ranges that queue up meanwhile are merged.
struct Writeback {
    tx: Option<Sender<(u64, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writeback {
    fn start(dst: Arc<dyn BlockDevice>) -> Writeback {
        let (tx, rx) = crossbeam_channel::unbounded::<(u64, u64)>();
        let thread = std::thread::Builder::new()
            .name("rm-writeback".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut ranges: Vec<(u64, u64)> = vec![first];
                    ranges.extend(rx.try_iter());
                    ranges.sort_unstable();
                    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
                    for (off, len) in ranges {
                        match merged.last_mut() {
                            Some((o, l)) if *o + *l >= off => *l = (*l).max(off + len - *o),
                            _ => merged.push((off, len)),
                        }
                    }
                    for (off, len) in merged {
                        dst.start_writeback(off, len);
                    }
                }
            })
            .ok();
        Writeback {
            tx: thread.is_some().then_some(tx),
            thread,
        }
    }

    fn written(&self, off: u64, len: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((off, len));
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
