//! [`DmaBuf`]: an owned, aligned I/O buffer.
//!
//! The engine hands these out ([`crate::Engine::alloc_buf`],
//! [`crate::BlockDevice::alloc_buf`]) so callers never guess alignment. A
//! buffer either comes from a registered arena chunk (then the reactor uses
//! `READ_FIXED`/`WRITE_FIXED` with its index) or from the heap. Ownership is
//! the whole safety story: an operation takes the buffer by value and gives it
//! back in its completion, so the memory cannot be touched or freed while the
//! kernel may still be writing to it.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::arena::ArenaInner;
use crate::sys::RawAlloc;

/// Where a buffer's memory came from.
pub(crate) enum Origin {
    /// A private heap allocation, freed on drop.
    Heap(RawAlloc),
    /// Chunk `chunk` of a registered arena, returned to its free list on drop.
    Arena { arena: Arc<ArenaInner>, chunk: u32 },
}

/// An owned, aligned I/O buffer with a logical length (`len`) no larger than
/// its capacity. Dereferences to the first `len` bytes.
pub struct DmaBuf {
    origin: Origin,
    len: usize,
}

impl DmaBuf {
    /// Allocate a zero-filled heap buffer of `len` bytes aligned to `align`
    /// (a power of two; 4096 is always enough for O_DIRECT on Linux).
    ///
    /// Prefer [`crate::Engine::alloc_buf`], which hands out registered memory.
    pub fn new(len: usize, align: usize) -> DmaBuf {
        DmaBuf {
            origin: Origin::Heap(RawAlloc::zeroed(len.max(1), align.max(1))),
            len,
        }
    }

    /// A heap buffer holding a copy of `data`, aligned to 4096.
    pub fn from_slice(data: &[u8]) -> DmaBuf {
        let mut b = DmaBuf::new(data.len(), 4096);
        b.copy_from_slice(data);
        b
    }

    pub(crate) fn from_arena(arena: Arc<ArenaInner>, chunk: u32, len: usize) -> DmaBuf {
        DmaBuf {
            origin: Origin::Arena { arena, chunk },
            len,
        }
    }

    /// The logical length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the logical length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes available without reallocation.
    pub fn capacity(&self) -> usize {
        match &self.origin {
            Origin::Heap(a) => a.size(),
            Origin::Arena { arena, .. } => arena.chunk_size(),
        }
    }

    /// Change the logical length. Newly exposed bytes keep whatever the
    /// buffer held before (never uninitialised memory).
    ///
    /// # Panics
    /// If `len` exceeds [`DmaBuf::capacity`]: a caller bug.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "DmaBuf::set_len({len}) beyond capacity {}",
            self.capacity()
        );
        self.len = len;
    }

    /// The address alignment of the buffer's start.
    pub fn align(&self) -> usize {
        let addr = self.as_ptr() as usize;
        if addr == 0 {
            return 1;
        }
        1 << addr.trailing_zeros().min(21)
    }

    /// The registered-buffer index, when this buffer is an arena chunk.
    pub(crate) fn fixed_index(&self) -> Option<(u64, u32)> {
        match &self.origin {
            Origin::Arena { arena, chunk } => {
                Some((arena.id(), crate::arena::registered_index(arena, *chunk)))
            }
            Origin::Heap(_) => None,
        }
    }

    /// True when this buffer lives in registered memory.
    pub fn is_registered(&self) -> bool {
        matches!(self.origin, Origin::Arena { .. })
    }

    /// Raw pointer to the start (for the kernel boundary in `sys`).
    pub(crate) fn as_ptr(&self) -> *const u8 {
        match &self.origin {
            Origin::Heap(a) => a.as_ptr(),
            Origin::Arena { arena, chunk } => arena.chunk_ptr(*chunk),
        }
    }

    /// Raw mutable pointer to the start (for the kernel boundary in `sys`).
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.as_ptr() as *mut u8
    }

    /// True when every byte of the logical length is zero.
    pub fn is_zero(&self) -> bool {
        is_zero(self)
    }
}

/// True when every byte of `data` is zero. The OR-fold over 4 KiB blocks
/// vectorises and still exits early on the first non-zero block.
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        if let Origin::Arena { arena, chunk } = &self.origin {
            arena.release(*chunk);
        }
    }
}

impl Deref for DmaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        crate::sys::buf_slice(self, self.as_ptr(), self.len)
    }
}

impl DerefMut for DmaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        let ptr = self.as_mut_ptr();
        crate::sys::buf_slice_mut(self, ptr, len)
    }
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("registered", &self.is_registered())
            .finish()
    }
}
