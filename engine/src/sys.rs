//! The kernel boundary: every `unsafe` block of ringmirror lives in this
//! module. Each one carries a `// SAFETY:` comment naming the invariant that
//! makes it sound.
//!
//! ```text
//!   DmaBuf ──owns──> RawAlloc | arena chunk      (memory)
//!   Ring   ──owns──> in-flight slots ──own──> DmaBuf + file handle
//!                    (released only when the CQE for that slot is reaped)
//! ```

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::buf::DmaBuf;

/// An aligned, zero-initialised allocation (heap, or its own mapping) that
/// owns its layout.
///
/// Allocations of 2 MiB and more are their own anonymous mapping: the kernel
/// hands the pages out zeroed on first touch, where the allocator's
/// `alloc_zeroed` for a page-aligned layout allocates and then memsets the
/// whole range (for the copy's 256 MiB arena, 65536 page faults before the
/// first byte moves). Measured on a 4 GiB copy with nothing to copy (all
/// holes), i.e. the set-up: 0.21-0.23 s with the allocator, 0.10-0.15 s with
/// the mapping. Transparent huge pages (`MADV_HUGEPAGE`) were faster when
/// memory was free (0.04 s) and slower when the page cache filled it
/// (0.11-0.56 s: direct compaction at fault time), so they are not asked for.
pub(crate) struct RawAlloc {
    ptr: NonNull<u8>,
    layout: Layout,
    /// The memory is a mapping of `layout.size()` bytes at `ptr`.
    mapped: bool,
}

/// Allocations at least this large get their own mapping.
const MAP_THRESHOLD: usize = 2 << 20;

// SAFETY: RawAlloc is a unique owner of plain bytes (like Box<[u8]>); it has
// no thread affinity and no interior mutability of its own.
unsafe impl Send for RawAlloc {}
// SAFETY: shared references only hand out raw pointers; every mutable access
// goes through a DmaBuf that exclusively owns the bytes it touches.
unsafe impl Sync for RawAlloc {}

impl RawAlloc {
    /// Allocate `size` zeroed bytes aligned to `align` (a power of two).
    pub(crate) fn zeroed(size: usize, align: usize) -> RawAlloc {
        let layout = match Layout::from_size_align(size.max(1), align.next_power_of_two()) {
            Ok(l) => l,
            Err(_) => panic!("invalid buffer layout: size {size} align {align}"),
        };
        if layout.size() >= MAP_THRESHOLD && layout.align() <= 4096 {
            if let Some(a) = Self::mapped(layout) {
                return a;
            }
        }
        // SAFETY: the layout has a non-zero size (size.max(1)).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        match NonNull::new(ptr) {
            Some(ptr) => RawAlloc {
                ptr,
                layout,
                mapped: false,
            },
            None => alloc::handle_alloc_error(layout),
        }
    }

    /// An anonymous mapping (page-aligned, which satisfies `layout.align()`
    /// up to the page size); `None` if the kernel refuses (the caller falls
    /// back to the allocator).
    fn mapped(layout: Layout) -> Option<RawAlloc> {
        let len = layout.size();
        // SAFETY: an anonymous private mapping at an address the kernel
        // picks: it aliases no existing memory. The result is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        Some(RawAlloc {
            ptr: NonNull::new(base.cast::<u8>())?,
            layout,
            mapped: true,
        })
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn size(&self) -> usize {
        self.layout.size()
    }

    /// Pointer `off` bytes into the allocation.
    ///
    /// # Panics
    /// When `off` is past the end: a caller bug.
    pub(crate) fn offset_ptr(&self, off: usize) -> *const u8 {
        assert!(off <= self.layout.size(), "offset {off} outside allocation");
        self.ptr.as_ptr().wrapping_add(off)
    }
}

impl Drop for RawAlloc {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: `ptr` and `layout.size()` are the mapping `mapped`
            // created; it is unmapped once, here, and nothing uses it any more
            // (every DmaBuf and registration of it keeps the RawAlloc alive).
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.layout.size()) };
            return;
        }
        // SAFETY: ptr was returned by alloc_zeroed with exactly this layout and
        // is freed once, here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The first `len` bytes of `owner`'s memory.
pub(crate) fn buf_slice(owner: &DmaBuf, ptr: *const u8, len: usize) -> &[u8] {
    debug_assert!(len <= owner.capacity());
    // SAFETY: `ptr` is the start of the memory `owner` owns exclusively (its
    // own RawAlloc, or an arena chunk popped from the free list that no
    // other DmaBuf holds until `owner` drops), `len <= capacity` is kept by
    // DmaBuf::set_len, the bytes are initialised (RawAlloc memory is zeroed
    // by the allocator or, for a mapping, by the kernel), and the returned
    // borrow is tied to `owner`.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// The first `len` bytes of `owner`'s memory, mutably.
pub(crate) fn buf_slice_mut(owner: &mut DmaBuf, ptr: *mut u8, len: usize) -> &mut [u8] {
    debug_assert!(len <= owner.capacity());
    // SAFETY: as in buf_slice; additionally the `&mut owner` borrow guarantees
    // no other reference to these bytes exists while the slice lives, and a
    // buffer inside an in-flight operation is owned by the ring, not reachable
    // from here.
    unsafe { std::slice::from_raw_parts_mut(ptr, len) }
}

// ---------------------------------------------------------------------------
// The ring: submission with buffer ownership held until completion.
// ---------------------------------------------------------------------------

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};

use crate::arena::Arenas;
use crate::rawop::{RawKind, RawOp, MAX_SUBMIT_BYTES};

/// user_data of the eventfd poll that wakes a sleeping reactor.
const WAKE_TOKEN: u64 = u64::MAX;

/// An io_uring instance plus the operations it has in flight.
///
/// Invariant: every SQE pushed points only into memory owned by the
/// `RawOp` stored in `slots[user_data]` (its DmaBuf) and into the file that
/// op's `Arc<FileHandle>` keeps open; that op leaves `slots` only when the
/// CQE carrying its index is reaped, or never (Drop waits for all of them).
pub(crate) struct Ring {
    ring: IoUring,
    slots: Vec<Option<RawOp>>,
    free_slots: Vec<u32>,
    engine_id: u64,
    buffers_registered: bool,
    files_registered: bool,
    wake_fd: Arc<OwnedFd>,
    wake_armed: bool,
    /// Keeps registered arena memory alive at least as long as the ring.
    _arenas: Arc<Arenas>,
}

impl Ring {
    /// A ring with room for `depth` operations in flight (plus the wake poll);
    /// the completion queue is twice that, so it can never overflow.
    pub(crate) fn new(
        depth: u32,
        engine_id: u64,
        wake_fd: Arc<OwnedFd>,
        arenas: Arc<Arenas>,
    ) -> io::Result<Ring> {
        let entries = (depth + 1).next_power_of_two();
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .setup_single_issuer()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 2).build(entries))?;
        Ok(Ring {
            ring,
            slots: (0..depth).map(|_| None).collect(),
            free_slots: (0..depth).rev().collect(),
            engine_id,
            buffers_registered: false,
            files_registered: false,
            wake_fd,
            wake_armed: false,
            _arenas: arenas,
        })
    }

    /// Register every arena chunk as a fixed buffer.
    pub(crate) fn register_buffers(&mut self, arenas: &Arenas) -> io::Result<()> {
        let iovecs: Vec<libc::iovec> = arenas
            .iovecs()
            .into_iter()
            .map(|(ptr, len)| libc::iovec {
                iov_base: ptr as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        if iovecs.is_empty() {
            return Ok(());
        }
        // SAFETY: the iovecs describe the arena allocations, which `_arenas`
        // keeps alive for as long as this ring (and so its registration) exists.
        unsafe { self.ring.submitter().register_buffers(&iovecs)? };
        self.buffers_registered = true;
        Ok(())
    }

    /// Create an empty fixed-file table of `n` slots.
    pub(crate) fn register_files_sparse(&mut self, n: u32) -> io::Result<()> {
        self.ring.submitter().register_files_sparse(n)?;
        self.files_registered = true;
        Ok(())
    }

    /// Put `fd` in fixed-file slot `index` (`-1` empties it).
    pub(crate) fn update_file(&mut self, index: u32, fd: RawFd) -> io::Result<()> {
        if !self.files_registered {
            return Err(io::Error::from_raw_os_error(libc::ENXIO));
        }
        self.ring.submitter().register_files_update(index, &[fd])?;
        Ok(())
    }

    /// Operations in flight (not counting the wake poll).
    pub(crate) fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// Push `op` to the submission queue, or hand it back when the ring is
    /// at its depth or the SQ is full.
    pub(crate) fn push(&mut self, op: RawOp) -> Result<(), RawOp> {
        if self.ring.submission().is_full() {
            return Err(op);
        }
        let Some(slot) = self.free_slots.pop() else {
            return Err(op);
        };
        let entry = self.build_entry(&op).user_data(u64::from(slot));
        self.slots[slot as usize] = Some(op);
        // SAFETY: `entry` points into the DmaBuf and file of the op now stored
        // in `slots[slot]`, which stays there until the CQE with user_data
        // `slot` is reaped (see the struct invariant); the SQ has room
        // (checked above, and only this thread pushes).
        match unsafe { self.ring.submission().push(&entry) } {
            Ok(()) => Ok(()),
            Err(_) => {
                self.free_slots.push(slot);
                match self.slots[slot as usize].take() {
                    Some(op) => Err(op),
                    None => unreachable!("slot {slot} emptied while pushing"),
                }
            }
        }
    }

    fn build_entry(&self, op: &RawOp) -> squeue::Entry {
        let raw_fd = op.file.file.as_raw_fd();
        let fixed = if self.files_registered {
            op.file.fixed
        } else {
            None
        };
        macro_rules! with_fd {
            ($build:expr) => {
                match fixed {
                    Some(i) => $build(types::Fixed(i)),
                    None => $build(types::Fd(raw_fd)),
                }
            };
        }
        match &op.kind {
            RawKind::Read {
                offset,
                buf,
                done_bytes,
            } => {
                let ptr = buf.as_ptr().wrapping_add(*done_bytes) as *mut u8;
                let len = (buf.len() - done_bytes).min(MAX_SUBMIT_BYTES) as u32;
                let off = offset + *done_bytes as u64;
                match self.fixed_index(buf) {
                    Some(idx) => with_fd!(|fd| opcode::ReadFixed::new(fd, ptr, len, idx)
                        .offset(off)
                        .build()),
                    None => with_fd!(|fd| opcode::Read::new(fd, ptr, len).offset(off).build()),
                }
            }
            RawKind::Write {
                offset,
                buf,
                done_bytes,
                fua,
            } => {
                let ptr = buf.as_ptr().wrapping_add(*done_bytes);
                let len = (buf.len() - done_bytes).min(MAX_SUBMIT_BYTES) as u32;
                let off = offset + *done_bytes as u64;
                let flags = if *fua { libc::RWF_DSYNC } else { 0 };
                match self.fixed_index(buf) {
                    Some(idx) => with_fd!(|fd| opcode::WriteFixed::new(fd, ptr, len, idx)
                        .offset(off)
                        .rw_flags(flags)
                        .build()),
                    None => with_fd!(|fd| opcode::Write::new(fd, ptr, len)
                        .offset(off)
                        .rw_flags(flags)
                        .build()),
                }
            }
            RawKind::Fsync { datasync } => {
                let flags = if *datasync {
                    types::FsyncFlags::DATASYNC
                } else {
                    types::FsyncFlags::empty()
                };
                with_fd!(|fd| opcode::Fsync::new(fd).flags(flags).build())
            }
            RawKind::Fallocate { mode, offset, len } => {
                with_fd!(|fd| opcode::Fallocate::new(fd, *len)
                    .offset(*offset)
                    .mode(*mode)
                    .build())
            }
        }
    }

    fn fixed_index(&self, buf: &DmaBuf) -> Option<u16> {
        if !self.buffers_registered {
            return None;
        }
        match buf.fixed_index() {
            Some((engine, idx)) if engine == self.engine_id => u16::try_from(idx).ok(),
            _ => None,
        }
    }

    /// Make sure a poll on the wake eventfd is queued.
    pub(crate) fn arm_wake(&mut self) {
        if self.wake_armed {
            return;
        }
        let entry = opcode::PollAdd::new(types::Fd(self.wake_fd.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(WAKE_TOKEN);
        // SAFETY: a poll references no memory; the eventfd is kept open by
        // `wake_fd` for the ring's whole life.
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            self.wake_armed = true;
        }
    }

    /// Submit queued SQEs; block until at least `want` completions are ready.
    pub(crate) fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(n) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(0),
                Err(e) => return Err(e),
            }
        }
    }

    /// Move every ready completion into `out` as `(op, result)`. Returns
    /// true when the wake poll fired (the eventfd has been drained).
    pub(crate) fn reap(&mut self, out: &mut Vec<(RawOp, i32)>) -> bool {
        let mut woke = false;
        for cqe in self.ring.completion() {
            let token = cqe.user_data();
            if token == WAKE_TOKEN {
                self.wake_armed = false;
                woke = true;
                continue;
            }
            let slot = token as usize;
            if let Some(op) = self.slots.get_mut(slot).and_then(Option::take) {
                self.free_slots.push(slot as u32);
                out.push((op, cqe.result()));
            }
        }
        if woke {
            drain_eventfd(&self.wake_fd);
        }
        woke
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel may still write into buffers owned by in-flight ops:
        // wait for every one of them before the slots (and buffers) go.
        let mut out = Vec::new();
        while self.in_flight() > 0 {
            if self.submit_and_wait(1).is_err() {
                // The ring is broken; leaking the ops is the only safe choice.
                for op in self.slots.iter_mut().filter_map(Option::take) {
                    std::mem::forget(op);
                }
                return;
            }
            self.reap(&mut out);
            for (op, res) in out.drain(..) {
                op.complete(if res < 0 { Err(-res) } else { Ok(()) });
            }
        }
    }
}

// ---------------------------------------------------------------------------
// eventfd
// ---------------------------------------------------------------------------

/// A non-blocking eventfd for waking a reactor.
pub(crate) fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative return is a new fd we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add one to the eventfd counter (wakes a poller).
pub(crate) fn signal_eventfd(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local; the fd is a valid eventfd.
    // EAGAIN (counter saturated) still leaves the fd readable, so it is ignored.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

fn drain_eventfd(fd: &OwnedFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live local; non-blocking, so EAGAIN is fine.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
}

// ---------------------------------------------------------------------------
// Probing and synchronous file syscalls
// ---------------------------------------------------------------------------

const STATX_DIOALIGN: u32 = 0x2000;

/// `(mem_align, offset_align)` for direct I/O from statx, when the kernel
/// and filesystem report it.
pub(crate) fn statx_dioalign(file: &File) -> Option<(u32, u32)> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    // SAFETY: the path is a valid NUL-terminated string, `stx` is a live
    // out-parameter of the right type, and the fd is open.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

/// Logical block size of a block device (BLKSSZGET).
pub(crate) fn blk_logical_block_size(file: &File) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, a live local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut v) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v as u32)
}

/// `_IOR(0x12, 114, size_t)`; libc does not export it.
const BLKGETSIZE64: libc::Ioctl = 0x8008_1272;

/// Size in bytes of a block device (BLKGETSIZE64).
pub(crate) fn blk_size_bytes(file: &File) -> io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, a live local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut v) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// `lseek(fd, offset, SEEK_DATA or SEEK_HOLE)`; `Ok(None)` on ENXIO (no
/// more data past `offset`).
pub(crate) fn seek_data_hole(file: &File, offset: u64, data: bool) -> io::Result<Option<u64>> {
    let whence = if data {
        libc::SEEK_DATA
    } else {
        libc::SEEK_HOLE
    };
    // SAFETY: lseek takes no pointers. Moving the file position is harmless:
    // every read and write in the engine passes an explicit offset.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(rc as u64))
}

/// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`: start
/// writeback of the range without waiting for it.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: sync_file_range takes no pointers.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fallocate(fd, mode, offset, len)`.
pub(crate) fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate takes no pointers.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `pwritev2` with RWF_DSYNC: one write that is durable on return.
pub(crate) fn pwrite_dsync(file: &File, data: &[u8], offset: u64) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: the iovec describes `data`, borrowed for the whole call; the
    // kernel only reads through it.
    let rc = unsafe {
        libc::pwritev2(
            file.as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_DSYNC,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// `RLIMIT_MEMLOCK` soft limit in bytes (`None` = unlimited).
pub(crate) fn memlock_limit() -> Option<u64> {
    // SAFETY: rlimit is plain old data; getrlimit fills the live local.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is to a live local of the right type.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
    if rc != 0 || rl.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(rl.rlim_cur)
}
