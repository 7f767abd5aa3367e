//! The [`BlockDevice`] implementation of [`NbdDevice`]: range checks,
//! alignment to the server's minimum block, splitting at its maximum
//! payload, and fallbacks for what the server does not support.

use ringmirror_engine::{
    BlockDevice, BufDone, DeviceInfo, DmaBuf, Done, ErrorKind, Extent, ExtentKind, IoError,
    IoResult, OpKind,
};

use super::conn::{shutdown_error, Msg, Pending, PendingKind};
use super::join::Join;
use super::NbdDevice;
use crate::proto::*;

impl BlockDevice for NbdDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn size(&self) -> u64 {
        self.neg.size
    }

    fn alloc_buf(&self, len: usize) -> DmaBuf {
        DmaBuf::new(len, 4096)
    }

    fn read(&self, offset: u64, mut buf: DmaBuf, done: BufDone) {
        let len = buf.len() as u64;
        if let Err(e) = self.range_err(OpKind::Read, offset, len) {
            return done(buf, Err(e));
        }
        if len == 0 {
            return done(buf, Ok(()));
        }
        if self.aligned(offset, len) {
            return self.read_aligned(offset, buf, done);
        }
        // Widen to the server's minimum block and copy the middle out.
        let a = u64::from(self.neg.min_block);
        let lo = offset - offset % a;
        let hi = (offset + len).div_ceil(a) * a;
        self.read_aligned(
            lo,
            DmaBuf::new((hi - lo) as usize, 4096),
            Box::new(move |bounce, res| {
                if res.is_ok() {
                    let s = (offset - lo) as usize;
                    buf.copy_from_slice(&bounce[s..s + len as usize]);
                }
                done(buf, res)
            }),
        );
    }

    fn write(&self, offset: u64, buf: DmaBuf, fua: bool, done: BufDone) {
        let len = buf.len() as u64;
        if self.info.read_only {
            let e = IoError::new(
                ErrorKind::ReadOnly,
                OpKind::Write,
                &self.info.name,
                offset,
                len,
                "the NBD export is read-only",
            );
            return done(buf, Err(e));
        }
        if let Err(e) = self.range_err(OpKind::Write, offset, len) {
            return done(buf, Err(e));
        }
        if len == 0 {
            return done(buf, Ok(()));
        }
        if self.aligned(offset, len) {
            return self.write_aligned(offset, buf, fua, done);
        }
        let Some(me) = self.self_arc() else {
            let e =
                IoError::from_errno(OpKind::Write, &self.info.name, offset, len, libc::ESHUTDOWN);
            return done(buf, Err(e));
        };
        let start = {
            let mut q = self.rmw.lock();
            q.queue.push_back((offset, buf, fua, done));
            !std::mem::replace(&mut q.busy, true)
        };
        if start {
            me.rmw_next();
        }
    }

    fn flush(&self, done: Done) {
        if !self.has(FLAG_SEND_FLUSH) {
            return done(Ok(()));
        }
        self.plain(OpKind::Flush, CMD_FLUSH, 0, 0, 0, done);
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool, done: Done) {
        if self.info.read_only {
            let e = IoError::new(
                ErrorKind::ReadOnly,
                OpKind::WriteZeroes,
                &self.info.name,
                offset,
                len,
                "the NBD export is read-only",
            );
            return done(Err(e));
        }
        if let Err(e) = self.range_err(OpKind::WriteZeroes, offset, len) {
            return done(Err(e));
        }
        if len == 0 {
            return done(Ok(()));
        }
        let Some(me) = self.self_arc() else {
            return done(Err(IoError::from_errno(
                OpKind::WriteZeroes,
                &self.info.name,
                offset,
                len,
                libc::ESHUTDOWN,
            )));
        };
        if !self.has(FLAG_SEND_WRITE_ZEROES) {
            return me.zero_by_writes(offset, len, done);
        }
        // Aligned middle by WRITE_ZEROES (in pieces a u32 length can say),
        // unaligned edges by zero-buffer writes.
        let a = u64::from(self.neg.min_block);
        let mid_lo = offset.div_ceil(a) * a;
        let mid_hi = ((offset + len) / a * a).max(mid_lo);
        let step = u64::from(u32::MAX) / a * a;
        let mut parts: Vec<(u64, u64, bool)> = Vec::new();
        if mid_lo > offset {
            parts.push((offset, mid_lo.min(offset + len) - offset, false));
        }
        let mut pos = mid_lo;
        while pos < mid_hi {
            let n = (mid_hi - pos).min(step);
            parts.push((pos, n, true));
            pos += n;
        }
        if offset + len > mid_hi && mid_hi >= mid_lo && mid_hi > offset {
            parts.push((mid_hi, offset + len - mid_hi, false));
        }
        let join = Join::new(parts.len(), done);
        let flags = if unmap { 0 } else { CMD_FLAG_NO_HOLE };
        for (o, n, native) in parts {
            let j = join.clone();
            let cb: Done = Box::new(move |r| j.part(r));
            if native {
                self.plain(OpKind::WriteZeroes, CMD_WRITE_ZEROES, flags, o, n, cb);
            } else {
                me.zero_by_writes(o, n, cb);
            }
        }
    }

    fn discard(&self, offset: u64, len: u64, done: Done) {
        if self.info.read_only {
            let e = IoError::new(
                ErrorKind::ReadOnly,
                OpKind::Discard,
                &self.info.name,
                offset,
                len,
                "the NBD export is read-only",
            );
            return done(Err(e));
        }
        if let Err(e) = self.range_err(OpKind::Discard, offset, len) {
            return done(Err(e));
        }
        // Advisory: only whole minimum blocks are trimmed.
        let a = u64::from(self.neg.min_block);
        let lo = offset.div_ceil(a) * a;
        let hi = (offset + len) / a * a;
        if !self.has(FLAG_SEND_TRIM) || hi <= lo {
            return done(Ok(()));
        }
        let step = u64::from(u32::MAX) / a * a;
        let join = Join::new((hi - lo).div_ceil(step) as usize, done);
        let mut pos = lo;
        while pos < hi {
            let n = (hi - pos).min(step);
            let j = join.clone();
            self.plain(
                OpKind::Discard,
                CMD_TRIM,
                0,
                pos,
                n,
                Box::new(move |r| j.part(r)),
            );
            pos += n;
        }
    }

    fn extents(&self, offset: u64, len: u64) -> IoResult<Vec<Extent>> {
        self.range_err(OpKind::Extents, offset, len)?;
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        if len == 0 {
            return Ok(out);
        }
        if self.neg.meta_id.is_none() {
            return Ok(vec![Extent {
                offset,
                len,
                kind: ExtentKind::Data,
            }]);
        }
        let a = u64::from(self.neg.min_block);
        let mut pos = offset;
        while pos < end {
            // Ask for whole minimum blocks; clip the answer to the request.
            let qlo = pos - pos % a;
            let qhi = end.div_ceil(a) * a;
            let qlen = (qhi - qlo).min(u64::from(u32::MAX) / a * a);
            let (tx, rx) = crossbeam_channel::bounded(1);
            let p = Pending::new(
                OpKind::Extents,
                qlo,
                qlen,
                PendingKind::Status {
                    tx,
                    descs: Vec::new(),
                },
            );
            self.send(CMD_BLOCK_STATUS, 0, p, None);
            let descs = rx.recv().unwrap_or_else(|_| {
                let p = Pending::new(
                    OpKind::Extents,
                    qlo,
                    qlen,
                    PendingKind::Plain {
                        done: Box::new(|_| {}),
                    },
                );
                Err(shutdown_error(&self.info.name, &p, "the reply was dropped"))
            })?;
            let mut at = qlo;
            let before = pos;
            for (dlen, flags) in descs {
                let (s, t) = (at.max(pos), (at + u64::from(dlen)).min(end));
                at += u64::from(dlen);
                if t <= s {
                    if at >= end {
                        break;
                    }
                    continue;
                }
                let kind = if flags & STATE_HOLE != 0 && flags & STATE_ZERO != 0 {
                    ExtentKind::Hole
                } else {
                    ExtentKind::Data
                };
                match out.last_mut() {
                    Some(l) if l.kind == kind && l.offset + l.len == s => l.len += t - s,
                    _ => out.push(Extent {
                        offset: s,
                        len: t - s,
                        kind,
                    }),
                }
                pos = t;
                if pos >= end {
                    break;
                }
            }
            if pos == before {
                let name = &self.info.name;
                return Err(IoError::new(
                    ErrorKind::Io,
                    OpKind::Extents,
                    name,
                    pos,
                    end - pos,
                    "the NBD server's block status made no progress",
                ));
            }
        }
        Ok(out)
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        // Graceful NBD_CMD_DISC after everything queued; the threads end on
        // their own when the server closes.
        let _ = self.tx.send(Msg::Disc);
    }
}
