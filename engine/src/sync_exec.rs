//! [`SyncFile`]: a [`FileDevice`] whose raw operations are plain
//! pread/pwrite/fsync/fallocate calls made on the submitting thread. It is
//! the fallback when io_uring is unavailable, and the oracle the engine's
//! tests compare the io_uring path against.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::buf::DmaBuf;
use crate::error::IoResult;
use crate::file::{Executor, FileDevice, OpenOptions};
use crate::rawop::{FileHandle, RawKind, RawOp, MAX_SUBMIT_BYTES};
use crate::sys;

/// Runs raw operations synchronously with plain syscalls.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncExec;

/// A file or block device driven by plain syscalls on the caller's thread.
pub type SyncFile = FileDevice<SyncExec>;

impl SyncFile {
    /// Open `path` with plain syscalls.
    pub fn open_sync(path: impl AsRef<Path>, opts: &OpenOptions) -> IoResult<Arc<SyncFile>> {
        FileDevice::open(path.as_ref(), opts, SyncExec).map(Arc::new)
    }
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn run(op: &mut RawOp) -> Result<(), i32> {
    let handle = op.file.clone();
    let f = &handle.file;
    // Loop until finished: short transfers continue where they stopped,
    // EINTR/EAGAIN retry, 0 bytes is end of file (reads) or no progress (writes).
    loop {
        let res = match &mut op.kind {
            RawKind::Read {
                offset,
                buf,
                done_bytes,
            } => {
                let start = *done_bytes;
                let end = buf.len().min(start + MAX_SUBMIT_BYTES);
                f.read_at(&mut buf[start..end], *offset + start as u64)
            }
            RawKind::Write {
                offset,
                buf,
                done_bytes,
                fua,
            } => {
                let start = *done_bytes;
                let end = buf.len().min(start + MAX_SUBMIT_BYTES);
                let off = *offset + start as u64;
                if *fua {
                    sys::pwrite_dsync(f, &buf[start..end], off)
                } else {
                    f.write_at(&buf[start..end], off)
                }
            }
            RawKind::Fsync { datasync } => {
                if *datasync {
                    f.sync_data().map(|()| 0)
                } else {
                    f.sync_all().map(|()| 0)
                }
            }
            RawKind::Fallocate { mode, offset, len } => {
                sys::fallocate(f, *mode, *offset, *len).map(|()| 0)
            }
        };
        match res {
            Ok(n) => {
                if op.advance(n)? {
                    return Ok(());
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) => {}
            Err(e) => return Err(errno(e)),
        }
    }
}

impl Executor for SyncExec {
    #[allow(private_interfaces)]
    fn execute(&self, mut op: RawOp) {
        let res = run(&mut op);
        op.complete(res);
    }

    fn alloc_buf(&self, len: usize) -> DmaBuf {
        DmaBuf::new(len, 4096)
    }

    #[allow(private_interfaces)]
    fn wrap_file(&self, file: File) -> FileHandle {
        FileHandle {
            file,
            fixed: None,
            on_drop: None,
        }
    }

    fn label(&self) -> &'static str {
        "pread"
    }
}
