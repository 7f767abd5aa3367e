//! The [`BlockDevice`] interface every storage backend implements: io_uring
//! files and block devices ([`crate::UringFile`]), the plain pread/pwrite
//! oracle ([`crate::SyncFile`]), remote NBD disks, and the mirror's guest
//! handle. Everything above the engine (copy, mirror, NBD server) speaks to
//! disks only through this trait.
//!
//! Operations are asynchronous: they take their buffer by value and hand it
//! back, with the result, to a completion closure that runs on whichever
//! thread finished the request (usually a reactor thread). Completions must
//! not block; they may submit more operations.

use std::sync::Arc;

use crate::buf::DmaBuf;
use crate::error::{ErrorKind, IoError, IoResult, OpKind};

/// Completion of an operation that carries a buffer: the buffer always comes
/// back, on success and on failure, so it can be reused or retried.
pub type BufDone = Box<dyn FnOnce(DmaBuf, IoResult<()>) + Send + 'static>;

/// Completion of an operation without a buffer.
pub type Done = Box<dyn FnOnce(IoResult<()>) + Send + 'static>;

/// What kind of thing backs a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A regular file.
    File,
    /// A block device node.
    BlockDevice,
    /// A disk reached over the network (NBD).
    Remote,
    /// A wrapper (the mirror's guest handle, a test fault injector).
    Virtual,
}

/// Static facts about a device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Path or name, used in error messages.
    pub name: Arc<str>,
    /// What backs it.
    pub kind: DeviceKind,
    /// Alignment of buffer addresses the device needs for direct I/O.
    pub mem_align: usize,
    /// Offset/length alignment below which requests are handled by
    /// read-modify-write (still correct, just slower).
    pub offset_align: u64,
    /// True when writes are refused.
    pub read_only: bool,
    /// True when the device reports holes ([`BlockDevice::extents`] is meaningful).
    pub sparse_aware: bool,
    /// True when I/O bypasses the page cache.
    pub direct: bool,
}

/// Whether a range holds data or reads as zeroes without being allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    /// Allocated; may hold any bytes (including zeroes).
    Data,
    /// Unallocated; reads as zeroes.
    Hole,
}

/// A contiguous range of one [`ExtentKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset.
    pub offset: u64,
    /// Byte length (non-zero).
    pub len: u64,
    /// Data or hole.
    pub kind: ExtentKind,
}

/// A disk the engine can do I/O on. See the module docs for the completion
/// contract. Requests must lie within `[0, size())`; anything else completes
/// with [`ErrorKind::OutOfRange`]. Offsets and lengths need not be aligned.
pub trait BlockDevice: Send + Sync {
    /// Static facts about the device.
    fn info(&self) -> &DeviceInfo;

    /// Current size in bytes.
    fn size(&self) -> u64;

    /// A buffer suitable for this device's I/O (aligned, registered when possible).
    fn alloc_buf(&self, len: usize) -> DmaBuf;

    /// Read `buf.len()` bytes at `offset` into `buf`.
    fn read(&self, offset: u64, buf: DmaBuf, done: BufDone);

    /// Write `buf` at `offset`. With `fua`, the data is durable when `done` runs.
    fn write(&self, offset: u64, buf: DmaBuf, fua: bool, done: BufDone);

    /// Make every completed write durable.
    fn flush(&self, done: Done);

    /// Make `[offset, offset+len)` read as zeroes. With `unmap` the range may
    /// be deallocated (a hole); without it, it stays allocated.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool, done: Done);

    /// Tell the device the range is no longer needed. Reads afterwards return
    /// zeroes on files (holes are punched); the contract is advisory.
    fn discard(&self, offset: u64, len: u64, done: Done);

    /// Map `[offset, offset+len)` into data and hole extents, covering the
    /// range exactly. Devices that cannot tell report one data extent.
    fn extents(&self, offset: u64, len: u64) -> IoResult<Vec<Extent>>;

    /// Hint: start writing back cached writes of `[offset, offset+len)` now,
    /// without waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only
    /// meaningful for devices opened without O_DIRECT; a no-op elsewhere.
    fn start_writeback(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }

    /// Change the size. Devices that cannot report [`ErrorKind::NotSupported`].
    fn resize(&self, new_size: u64) -> IoResult<()> {
        let _ = new_size;
        Err(IoError::new(
            ErrorKind::NotSupported,
            OpKind::Resize,
            &self.info().name,
            0,
            0,
            "this device cannot be resized",
        ))
    }
}

/// Check that `[offset, offset+len)` lies inside a device of `size` bytes.
pub fn check_range(name: &Arc<str>, op: OpKind, offset: u64, len: u64, size: u64) -> IoResult<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(IoError::new(
            ErrorKind::OutOfRange,
            op,
            name,
            offset,
            len,
            format!("the device has {size} bytes"),
        )),
    }
}

/// Blocking conveniences over any [`BlockDevice`], for tools, tests and
/// set-up paths. Never call these from a completion closure.
pub trait BlockDeviceExt: BlockDevice {
    /// Read `len` bytes at `offset`.
    fn read_at(&self, offset: u64, len: usize) -> IoResult<DmaBuf> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.read(
            offset,
            self.alloc_buf(len),
            Box::new(move |buf, res| {
                let _ = tx.send(res.map(|()| buf));
            }),
        );
        wait(rx, self.info(), OpKind::Read)
    }

    /// Write `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> IoResult<()> {
        let mut buf = self.alloc_buf(data.len());
        buf.copy_from_slice(data);
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.write(
            offset,
            buf,
            fua,
            Box::new(move |_buf, res| {
                let _ = tx.send(res);
            }),
        );
        wait(rx, self.info(), OpKind::Write)
    }

    /// Flush and wait.
    fn flush_sync(&self) -> IoResult<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.flush(Box::new(move |res| {
            let _ = tx.send(res);
        }));
        wait(rx, self.info(), OpKind::Flush)
    }

    /// Write zeroes and wait.
    fn write_zeroes_sync(&self, offset: u64, len: u64, unmap: bool) -> IoResult<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.write_zeroes(
            offset,
            len,
            unmap,
            Box::new(move |res| {
                let _ = tx.send(res);
            }),
        );
        wait(rx, self.info(), OpKind::WriteZeroes)
    }

    /// Discard and wait.
    fn discard_sync(&self, offset: u64, len: u64) -> IoResult<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.discard(
            offset,
            len,
            Box::new(move |res| {
                let _ = tx.send(res);
            }),
        );
        wait(rx, self.info(), OpKind::Discard)
    }
}

impl<T: BlockDevice + ?Sized> BlockDeviceExt for T {}

fn wait<T>(
    rx: crossbeam_channel::Receiver<IoResult<T>>,
    info: &DeviceInfo,
    op: OpKind,
) -> IoResult<T> {
    rx.recv().unwrap_or_else(|_| {
        Err(IoError::new(
            ErrorKind::Cancelled,
            op,
            &info.name,
            0,
            0,
            "the completion was dropped without running (engine shut down?)",
        ))
    })
}
