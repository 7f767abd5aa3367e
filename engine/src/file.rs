//! [`FileDevice`]: a file or block device, generic over the executor that
//! runs its raw operations (io_uring reactors, or plain syscalls).
//!
//! This layer turns any request into raw operations the kernel accepts under
//! O_DIRECT:
//!
//! ```text
//!  request [off, end)            device: |-- aligned body --|tail|
//!    ├─ aligned?  ───────────────> raw op (shared range lock for writes)
//!    ├─ unaligned ───────────────> bounce read, or read-modify-write of the
//!    │                             edge blocks (exclusive range lock)
//!    └─ past the last aligned ───> buffered fd (the size is not a multiple
//!       boundary (tail)            of the alignment: a direct write there
//!                                  would grow the file)
//! ```

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::buf::DmaBuf;
use crate::device::{
    check_range, BlockDevice, BufDone, DeviceInfo, DeviceKind, Done, Extent, ExtentKind,
};
use crate::error::{ErrorKind, IoError, IoResult, OpKind};
use crate::rangelock::{RangeGuard, RangeLock};
use crate::rawop::{FileHandle, RawDone, RawKind, RawOp};
use crate::sys;

/// Runs raw operations for a [`FileDevice`].
pub trait Executor: Clone + Send + Sync + 'static {
    /// Run `op`; its completion runs exactly once, possibly on another thread.
    #[allow(private_interfaces)]
    fn execute(&self, op: RawOp);
    /// A buffer for this executor's I/O.
    fn alloc_buf(&self, len: usize) -> DmaBuf;
    /// Wrap an opened file (registering it where the executor can).
    #[allow(private_interfaces)]
    fn wrap_file(&self, file: File) -> FileHandle;
    /// Name for messages ("io_uring", "pread").
    fn label(&self) -> &'static str;
}

/// How to open a device.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Open for writing.
    pub write: bool,
    /// Bypass the page cache (O_DIRECT). Default true.
    pub direct: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            write: false,
            direct: true,
        }
    }
}

impl OpenOptions {
    /// Read-only, O_DIRECT.
    pub fn read_only() -> OpenOptions {
        OpenOptions::default()
    }
    /// Read-write, O_DIRECT.
    pub fn read_write() -> OpenOptions {
        OpenOptions {
            write: true,
            direct: true,
        }
    }
}

struct Shared<E> {
    exec: E,
    handle: Arc<FileHandle>,
    /// Buffered descriptor for the unaligned tail (and for fallbacks).
    buffered: File,
    info: DeviceInfo,
    size: AtomicU64,
    lock: Arc<RangeLock>,
    /// Offset alignment (1 when not direct).
    align: u64,
}

/// A file or block device; see the module docs.
pub struct FileDevice<E: Executor> {
    sh: Arc<Shared<E>>,
}

fn open_error(path: &Arc<str>, e: std::io::Error, what: &str) -> IoError {
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    let mut err = IoError::from_errno(OpKind::Open, path, 0, 0, errno);
    let hint = match errno {
        libc::ENOENT => "no such file; check the path".to_string(),
        libc::EACCES | libc::EPERM => "permission denied".to_string(),
        libc::EROFS => "read-only filesystem".to_string(),
        libc::EINVAL if what == "direct" => {
            "the filesystem does not support O_DIRECT (tmpfs before Linux 6.6?); open it without direct I/O".to_string()
        }
        libc::EISDIR => "it is a directory".to_string(),
        _ => String::new(),
    };
    if !hint.is_empty() {
        err.kind = if errno == libc::EINVAL {
            ErrorKind::NotSupported
        } else {
            err.kind
        };
        err = err.with_detail(hint);
    }
    err
}

impl<E: Executor> FileDevice<E> {
    /// Open `path` and probe its size and alignment.
    pub fn open(path: &Path, opts: &OpenOptions, exec: E) -> IoResult<FileDevice<E>> {
        let name: Arc<str> = Arc::from(path.display().to_string());
        let mut oo = std::fs::OpenOptions::new();
        oo.read(true).write(opts.write);
        let buffered = oo.open(path).map_err(|e| open_error(&name, e, "open"))?;
        let meta = buffered
            .metadata()
            .map_err(|e| open_error(&name, e, "stat"))?;
        let ft = meta.file_type();
        let kind = if ft.is_block_device() {
            DeviceKind::BlockDevice
        } else if ft.is_file() {
            DeviceKind::File
        } else {
            return Err(IoError::new(
                ErrorKind::InvalidInput,
                OpKind::Open,
                &name,
                0,
                0,
                "not a regular file or block device",
            ));
        };
        let file = if opts.direct {
            oo.custom_flags(libc::O_DIRECT)
                .open(path)
                .map_err(|e| open_error(&name, e, "direct"))?
        } else {
            oo.open(path).map_err(|e| open_error(&name, e, "open"))?
        };
        let size = match kind {
            DeviceKind::BlockDevice => {
                sys::blk_size_bytes(&file).map_err(|e| open_error(&name, e, "size"))?
            }
            _ => meta.len(),
        };
        let (mem_align, align) = if !opts.direct {
            (1, 1)
        } else if let Some((m, o)) = sys::statx_dioalign(&file) {
            (m.max(1) as usize, u64::from(o.max(1)))
        } else if kind == DeviceKind::BlockDevice {
            let lbs = sys::blk_logical_block_size(&file).unwrap_or(512).max(512);
            (lbs as usize, u64::from(lbs))
        } else {
            (512, 512)
        };
        let info = DeviceInfo {
            name: name.clone(),
            kind,
            mem_align,
            offset_align: align,
            read_only: !opts.write,
            sparse_aware: kind == DeviceKind::File,
            direct: opts.direct,
        };
        let handle = Arc::new(exec.wrap_file(file));
        Ok(FileDevice {
            sh: Arc::new(Shared {
                exec,
                handle,
                buffered,
                info,
                size: AtomicU64::new(size),
                lock: Arc::new(RangeLock::default()),
                align,
            }),
        })
    }

    /// The executor's name ("io_uring" or "pread").
    pub fn executor_label(&self) -> &'static str {
        self.sh.exec.label()
    }
}

impl<E: Executor> Shared<E> {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Start of the tail that direct I/O must not write (== size when the
    /// size is aligned).
    fn tail_start(&self) -> u64 {
        let size = self.size();
        size - size % self.align
    }

    fn err(&self, op: OpKind, off: u64, len: u64, errno: i32) -> IoError {
        let e = IoError::from_errno(op, &self.info.name, off, len, errno);
        if errno == libc::EINVAL && self.info.direct {
            e.with_detail(format!(
                "rejected under O_DIRECT: alignment is {} bytes for offsets, {} for memory",
                self.align, self.info.mem_align
            ))
        } else if errno == libc::ENOSPC {
            e.with_detail("the filesystem or device is full")
        } else {
            e
        }
    }

    /// The checks every modifying request starts with: writable, in range.
    fn check_write(&self, op: OpKind, off: u64, len: u64) -> IoResult<()> {
        if self.info.read_only {
            return Err(IoError::new(
                ErrorKind::ReadOnly,
                op,
                &self.info.name,
                off,
                len,
                "opened read-only",
            ));
        }
        check_range(&self.info.name, op, off, len, self.size())
    }

    fn is_aligned(&self, off: u64, len: u64) -> bool {
        off.is_multiple_of(self.align) && len.is_multiple_of(self.align)
    }

    fn raw(&self, kind: RawKind, done: RawDone) {
        self.exec.execute(RawOp {
            file: self.handle.clone(),
            kind,
            done,
        });
    }
}

fn align_down(v: u64, a: u64) -> u64 {
    v - v % a
}

fn align_up(v: u64, a: u64) -> u64 {
    align_down(v + a - 1, a)
}

/// Joins several partial completions into one `Done`: the first error wins.
struct Join {
    remaining: AtomicUsize,
    first_err: Mutex<Option<IoError>>,
    done: Mutex<Option<Done>>,
}

impl Join {
    fn new(parts: usize, done: Done) -> Arc<Join> {
        Arc::new(Join {
            remaining: AtomicUsize::new(parts),
            first_err: Mutex::new(None),
            done: Mutex::new(Some(done)),
        })
    }

    fn part(self: &Arc<Self>, res: IoResult<()>) {
        if let Err(e) = res {
            self.first_err.lock().get_or_insert(e);
        }
        // AcqRel: the last part sees every earlier part's error store.
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let res = match self.first_err.lock().take() {
                Some(e) => Err(e),
                None => Ok(()),
            };
            if let Some(done) = self.done.lock().take() {
                done(res);
            }
        }
    }
}

impl<E: Executor> Shared<E> {
    /// Write `buf` at `off`, both inside the aligned body. Aligned requests
    /// go straight through; others become a read-modify-write.
    fn write_body(self: &Arc<Self>, off: u64, buf: DmaBuf, fua: bool, done: BufDone) {
        let len = buf.len() as u64;
        if self.is_aligned(off, len) && buf.align() >= self.info.mem_align {
            let sh = self.clone();
            self.lock.acquire(off, off + len, false, move |guard| {
                let sh2 = sh.clone();
                sh.raw(
                    RawKind::Write {
                        offset: off,
                        buf,
                        done_bytes: 0,
                        fua,
                    },
                    Box::new(move |buf, res| {
                        drop(guard);
                        let buf = buf.unwrap_or_else(|| DmaBuf::new(0, 1));
                        done(buf, res.map_err(|e| sh2.err(OpKind::Write, off, len, e)));
                    }),
                );
            });
            return;
        }
        let (lo, hi) = (align_down(off, self.align), align_up(off + len, self.align));
        let sh = self.clone();
        self.lock.acquire(lo, hi, true, move |guard| {
            sh.clone().rmw(lo, hi, off, buf, fua, guard, done);
        });
    }

    /// Read the edge blocks of `[lo, hi)`, patch in `data` at `off`, write
    /// the span back; `guard` (exclusive on the span) is held throughout.
    #[allow(clippy::too_many_arguments)]
    fn rmw(
        self: Arc<Self>,
        lo: u64,
        hi: u64,
        off: u64,
        data: DmaBuf,
        fua: bool,
        guard: RangeGuard,
        done: BufDone,
    ) {
        let bounce = self.exec.alloc_buf((hi - lo) as usize);
        let need_head = off != lo;
        let need_last = off + data.len() as u64 != hi;
        let state = Box::new(Rmw {
            sh: self,
            lo,
            hi,
            off,
            data,
            fua,
            guard,
            done,
            bounce,
        });
        if need_head {
            state.read_block(lo, need_last)
        } else if need_last {
            let last = hi - state.sh.align;
            state.read_block(last, false)
        } else {
            state.write_back()
        }
    }

    /// Write zeroes to `[off, end)` through the tail descriptor (buffered,
    /// synchronous; only ever less than one alignment unit).
    fn tail_write(&self, off: u64, data: &[u8], fua: bool) -> IoResult<()> {
        let res = if fua {
            sys::pwrite_dsync(&self.buffered, data, off).and_then(|n| {
                if n == data.len() {
                    Ok(())
                } else {
                    self.buffered.write_all_at(&data[n..], off + n as u64)?;
                    self.buffered.sync_data()
                }
            })
        } else {
            self.buffered.write_all_at(data, off)
        };
        res.map_err(|e| {
            self.err(
                OpKind::Write,
                off,
                data.len() as u64,
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })
    }

    /// Fill `[off, off+len)` (inside the body) with zero buffers, up to
    /// 1 MiB per write, sequentially; the fallback when fallocate cannot.
    fn zero_fill(self: &Arc<Self>, off: u64, len: u64, done: Done) {
        if len == 0 {
            return done(Ok(()));
        }
        let n = len.min(1 << 20);
        let mut buf = self.exec.alloc_buf(n as usize);
        buf.fill(0);
        let sh = self.clone();
        self.write_body(
            off,
            buf,
            false,
            Box::new(move |_b, res| match res {
                Ok(()) => sh.zero_fill(off + n, len - n, done),
                Err(e) => done(Err(e)),
            }),
        );
    }

    /// fallocate on an aligned range under a shared lock.
    fn fallocate(self: &Arc<Self>, op: OpKind, mode: i32, off: u64, len: u64, done: Done) {
        let sh = self.clone();
        self.lock.acquire(off, off + len, false, move |guard| {
            let sh2 = sh.clone();
            sh.raw(
                RawKind::Fallocate {
                    mode,
                    offset: off,
                    len,
                },
                Box::new(move |_b, res| {
                    drop(guard);
                    done(res.map_err(|e| sh2.err(op, off, len, e)))
                }),
            );
        });
    }
}

/// A read-modify-write in progress (see [`Shared::rmw`]).
struct Rmw<E: Executor> {
    sh: Arc<Shared<E>>,
    lo: u64,
    hi: u64,
    off: u64,
    data: DmaBuf,
    fua: bool,
    guard: RangeGuard,
    done: BufDone,
    bounce: DmaBuf,
}

impl<E: Executor> Rmw<E> {
    /// Read the block at `at` into its place in the bounce buffer; then read
    /// the last block too when `then_last` (and it is a different block), or
    /// write back.
    fn read_block(self: Box<Self>, at: u64, then_last: bool) {
        let a = self.sh.align;
        let block = self.sh.exec.alloc_buf(a as usize);
        let sh = self.sh.clone();
        sh.raw(
            RawKind::Read {
                offset: at,
                buf: block,
                done_bytes: 0,
            },
            Box::new(move |block, res| {
                let mut st = self;
                match (res, block) {
                    (Ok(()), Some(block)) => {
                        let pos = (at - st.lo) as usize;
                        st.bounce[pos..pos + a as usize].copy_from_slice(&block);
                        let last = st.hi - a;
                        if then_last && last != at {
                            st.read_block(last, false)
                        } else {
                            st.write_back()
                        }
                    }
                    (res, _) => st.fail(res.err().unwrap_or(libc::EIO)),
                }
            }),
        );
    }

    #[allow(clippy::boxed_local)] // the state travels boxed through closures
    fn write_back(self: Box<Self>) {
        let Rmw {
            sh,
            lo,
            off,
            data,
            fua,
            guard,
            done,
            mut bounce,
            ..
        } = *self;
        let start = (off - lo) as usize;
        bounce[start..start + data.len()].copy_from_slice(&data);
        let sh2 = sh.clone();
        sh.raw(
            RawKind::Write {
                offset: lo,
                buf: bounce,
                done_bytes: 0,
                fua,
            },
            Box::new(move |_b, res| {
                drop(guard);
                let len = data.len() as u64;
                done(data, res.map_err(|e| sh2.err(OpKind::Write, off, len, e)));
            }),
        );
    }

    #[allow(clippy::boxed_local)]
    fn fail(self: Box<Self>, errno: i32) {
        let Rmw {
            sh,
            off,
            data,
            guard,
            done,
            ..
        } = *self;
        drop(guard);
        let len = data.len() as u64;
        done(data, Err(sh.err(OpKind::Write, off, len, errno)));
    }
}

impl<E: Executor> BlockDevice for FileDevice<E> {
    fn info(&self) -> &DeviceInfo {
        &self.sh.info
    }

    fn size(&self) -> u64 {
        self.sh.size()
    }

    fn alloc_buf(&self, len: usize) -> DmaBuf {
        self.sh.exec.alloc_buf(len)
    }

    fn read(&self, offset: u64, mut buf: DmaBuf, done: BufDone) {
        let sh = &self.sh;
        let len = buf.len() as u64;
        if let Err(e) = check_range(&sh.info.name, OpKind::Read, offset, len, sh.size()) {
            return done(buf, Err(e));
        }
        if len == 0 {
            return done(buf, Ok(()));
        }
        if sh.is_aligned(offset, len) && buf.align() >= sh.info.mem_align {
            let sh2 = sh.clone();
            return sh.raw(
                RawKind::Read {
                    offset,
                    buf,
                    done_bytes: 0,
                },
                Box::new(move |b, res| {
                    let b = b.unwrap_or_else(|| DmaBuf::new(0, 1));
                    done(b, res.map_err(|e| sh2.err(OpKind::Read, offset, len, e)))
                }),
            );
        }
        // Bounce: read the covering aligned span, copy out the part asked for.
        // Reading a block that straddles end of file is a short read, which
        // the reactor zero-fills.
        let lo = align_down(offset, sh.align);
        let hi = align_up(offset + len, sh.align);
        let bounce = sh.exec.alloc_buf((hi - lo) as usize);
        let sh2 = sh.clone();
        sh.raw(
            RawKind::Read {
                offset: lo,
                buf: bounce,
                done_bytes: 0,
            },
            Box::new(move |b, res| match (res, b) {
                (Ok(()), Some(b)) => {
                    let start = (offset - lo) as usize;
                    buf.copy_from_slice(&b[start..start + len as usize]);
                    done(buf, Ok(()))
                }
                (res, _) => {
                    let e = res.err().unwrap_or(libc::EIO);
                    done(buf, Err(sh2.err(OpKind::Read, offset, len, e)))
                }
            }),
        );
    }

    fn write(&self, offset: u64, mut buf: DmaBuf, fua: bool, done: BufDone) {
        let sh = &self.sh;
        let len = buf.len() as u64;
        if let Err(e) = sh.check_write(OpKind::Write, offset, len) {
            return done(buf, Err(e));
        }
        if len == 0 {
            return done(buf, Ok(()));
        }
        let tail = sh.tail_start();
        let end = offset + len;
        if end > tail {
            // The part past the last aligned boundary goes through the
            // buffered descriptor, first and synchronously.
            let from = offset.max(tail);
            let start = (from - offset) as usize;
            if let Err(e) = sh.tail_write(from, &buf[start..], fua) {
                return done(buf, Err(e));
            }
            if offset >= tail {
                return done(buf, Ok(()));
            }
            let full = buf.len();
            buf.set_len(start);
            return sh.write_body(
                offset,
                buf,
                fua,
                Box::new(move |mut b, res| {
                    b.set_len(full);
                    done(b, res)
                }),
            );
        }
        sh.write_body(offset, buf, fua, done);
    }

    fn flush(&self, done: Done) {
        let sh2 = self.sh.clone();
        self.sh.raw(
            RawKind::Fsync { datasync: true },
            Box::new(move |_b, res| done(res.map_err(|e| sh2.err(OpKind::Flush, 0, 0, e)))),
        );
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool, done: Done) {
        let sh = &self.sh;
        if let Err(e) = sh.check_write(OpKind::WriteZeroes, offset, len) {
            return done(Err(e));
        }
        if len == 0 {
            return done(Ok(()));
        }
        let tail = sh.tail_start();
        let mut end = offset + len;
        if end > tail {
            let from = offset.max(tail);
            if let Err(e) = sh.tail_write(from, &vec![0u8; (end - from) as usize], false) {
                return done(Err(e));
            }
            end = from;
            if offset >= end {
                return done(Ok(()));
            }
        }
        // [offset, mid_lo) and [mid_hi, end) are partial blocks written as
        // zero buffers; the aligned middle is fallocated.
        let a = sh.align;
        let mid_lo = align_up(offset, a).min(end);
        let mid_hi = align_down(end, a).max(mid_lo);
        let parts = [(offset, mid_lo), (mid_hi, end)]
            .into_iter()
            .filter(|(s, e)| e > s)
            .collect::<Vec<_>>();
        let has_mid = mid_hi > mid_lo;
        let join = Join::new(parts.len() + usize::from(has_mid), done);
        for (s, e) in parts {
            let mut z = sh.exec.alloc_buf((e - s) as usize);
            z.fill(0);
            let j = join.clone();
            sh.write_body(s, z, false, Box::new(move |_b, res| j.part(res)));
        }
        if has_mid {
            let mode = if unmap {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_ZERO_RANGE
            };
            let (sh2, j) = (sh.clone(), join.clone());
            sh.fallocate(
                OpKind::WriteZeroes,
                mode,
                mid_lo,
                mid_hi - mid_lo,
                Box::new(move |res| match res {
                    Err(e)
                        if e.kind == ErrorKind::NotSupported || e.kind == ErrorKind::Alignment =>
                    {
                        let j2 = j.clone();
                        sh2.zero_fill(mid_lo, mid_hi - mid_lo, Box::new(move |r| j2.part(r)));
                    }
                    other => j.part(other),
                }),
            );
        }
    }

    fn discard(&self, offset: u64, len: u64, done: Done) {
        let sh = &self.sh;
        if let Err(e) = sh.check_write(OpKind::Discard, offset, len) {
            return done(Err(e));
        }
        // Advisory: only whole aligned blocks are deallocated.
        let lo = align_up(offset, sh.align);
        let hi = align_down(offset + len, sh.align).min(sh.tail_start());
        if hi <= lo {
            return done(Ok(()));
        }
        sh.fallocate(
            OpKind::Discard,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            lo,
            hi - lo,
            Box::new(move |res| match res {
                Err(e) if e.kind == ErrorKind::NotSupported => done(Ok(())),
                other => done(other),
            }),
        );
    }

    fn extents(&self, offset: u64, len: u64) -> IoResult<Vec<Extent>> {
        let sh = &self.sh;
        check_range(&sh.info.name, OpKind::Extents, offset, len, sh.size())?;
        let end = offset + len;
        let data = |o: u64, l: u64| Extent {
            offset: o,
            len: l,
            kind: ExtentKind::Data,
        };
        if len == 0 {
            return Ok(Vec::new());
        }
        if !sh.info.sparse_aware {
            return Ok(vec![data(offset, len)]);
        }
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |e: Extent| match out.last_mut() {
            Some(last) if last.kind == e.kind && last.offset + last.len == e.offset => {
                last.len += e.len
            }
            _ => out.push(e),
        };
        let f = &sh.buffered;
        let ext_err = |e: std::io::Error| {
            sh.err(
                OpKind::Extents,
                offset,
                len,
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        };
        let mut pos = offset;
        while pos < end {
            let next_data = match sys::seek_data_hole(f, pos, true) {
                Ok(v) => v.unwrap_or(end).min(end),
                // A filesystem without SEEK_DATA: everything is data.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    push(data(pos, end - pos));
                    break;
                }
                Err(e) => return Err(ext_err(e)),
            };
            if next_data > pos {
                push(Extent {
                    offset: pos,
                    len: next_data - pos,
                    kind: ExtentKind::Hole,
                });
                pos = next_data;
                if pos >= end {
                    break;
                }
            }
            let next_hole = sys::seek_data_hole(f, pos, false)
                .map_err(ext_err)?
                .unwrap_or(end)
                .min(end);
            let next_hole = next_hole.max(pos + 1).min(end);
            push(data(pos, next_hole - pos));
            pos = next_hole;
        }
        Ok(out)
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        if !self.sh.info.direct && !self.sh.info.read_only {
            // A hint: a failure here shows up at the next flush.
            let _ = sys::start_writeback(&self.sh.buffered, offset, len);
        }
    }

    fn resize(&self, new_size: u64) -> IoResult<()> {
        let sh = &self.sh;
        if sh.info.kind != DeviceKind::File || sh.info.read_only {
            return Err(IoError::new(
                ErrorKind::NotSupported,
                OpKind::Resize,
                &sh.info.name,
                0,
                new_size,
                "only writable regular files can be resized",
            ));
        }
        sh.buffered.set_len(new_size).map_err(|e| {
            sh.err(
                OpKind::Resize,
                0,
                new_size,
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })?;
        sh.size.store(new_size, Ordering::Release);
        Ok(())
    }
}
