//! Raw, already-aligned operations as the executors run them. The device
//! layer ([`crate::file`]) turns arbitrary requests into these.

use std::fs::File;
use std::sync::Arc;

use crate::buf::DmaBuf;

/// An open file as the executors see it: the descriptor, and its slot in
/// every ring's registered-file table when it has one.
pub(crate) struct FileHandle {
    pub(crate) file: File,
    /// Index in the engine-wide fixed-file table (registered with every ring).
    pub(crate) fixed: Option<u32>,
    /// Who to tell when the handle goes away (unregisters the fixed slot).
    pub(crate) on_drop: Option<Box<dyn Fn(u32) + Send + Sync>>,
}

impl Drop for FileHandle {
    fn drop(&mut self) {
        if let (Some(idx), Some(f)) = (self.fixed, self.on_drop.as_ref()) {
            f(idx);
        }
    }
}

/// What a raw operation does. Offsets, lengths and buffer addresses obey the
/// file's direct-I/O alignment (or the file is not opened with O_DIRECT).
pub(crate) enum RawKind {
    /// Fill `buf[..buf.len()]` from `offset`. `done_bytes` counts progress
    /// across short reads; a read reaching end of file zero-fills the rest.
    Read {
        offset: u64,
        buf: DmaBuf,
        done_bytes: usize,
    },
    /// Write `buf[..buf.len()]` at `offset`; `fua` asks for RWF_DSYNC.
    Write {
        offset: u64,
        buf: DmaBuf,
        done_bytes: usize,
        fua: bool,
    },
    /// fsync (or fdatasync).
    Fsync { datasync: bool },
    /// fallocate(mode, offset, len).
    Fallocate { mode: i32, offset: u64, len: u64 },
}

/// Completion of a raw operation: the buffer back (for reads and writes) and
/// `Ok` or the errno.
pub(crate) type RawDone = Box<dyn FnOnce(Option<DmaBuf>, Result<(), i32>) + Send + 'static>;

/// One raw operation with everything it needs to run and complete.
pub(crate) struct RawOp {
    pub(crate) file: Arc<FileHandle>,
    pub(crate) kind: RawKind,
    pub(crate) done: RawDone,
}

/// Largest single submission; longer transfers loop (io_uring lengths are u32).
pub(crate) const MAX_SUBMIT_BYTES: usize = 1 << 30;

impl RawOp {
    /// Account for `n` bytes transferred. Returns true when the operation is
    /// finished. A read that returns 0 bytes hit end of file: the rest of
    /// the buffer is zero-filled and the read is finished.
    pub(crate) fn advance(&mut self, n: usize) -> Result<bool, i32> {
        match &mut self.kind {
            RawKind::Read {
                buf, done_bytes, ..
            } => {
                if n == 0 {
                    let start = *done_bytes;
                    buf[start..].fill(0);
                    *done_bytes = buf.len();
                    return Ok(true);
                }
                *done_bytes += n;
                Ok(*done_bytes >= buf.len())
            }
            RawKind::Write {
                buf, done_bytes, ..
            } => {
                if n == 0 && *done_bytes < buf.len() {
                    // No progress: the kernel accepted nothing. Looping would
                    // spin forever; report it as an I/O error.
                    return Err(libc::EIO);
                }
                *done_bytes += n;
                Ok(*done_bytes >= buf.len())
            }
            RawKind::Fsync { .. } | RawKind::Fallocate { .. } => Ok(true),
        }
    }

    /// Finish the operation, handing its buffer back to the completion.
    pub(crate) fn complete(self, res: Result<(), i32>) {
        let buf = match self.kind {
            RawKind::Read { buf, .. } | RawKind::Write { buf, .. } => Some(buf),
            _ => None,
        };
        (self.done)(buf, res)
    }
}
