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

/// An aligned, zero-initialised heap allocation that owns its layout.
pub(crate) struct RawAlloc {
    ptr: NonNull<u8>,
    layout: Layout,
}

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
        // SAFETY: the layout has a non-zero size (size.max(1)).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        match NonNull::new(ptr) {
            Some(ptr) => RawAlloc { ptr, layout },
            None => alloc::handle_alloc_error(layout),
        }
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
        // SAFETY: ptr was returned by alloc_zeroed with exactly this layout and
        // is freed once, here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The first `len` bytes of `owner`'s memory.
pub(crate) fn buf_slice(owner: &DmaBuf, ptr: *const u8, len: usize) -> &[u8] {
    debug_assert!(len <= owner.capacity());
    // SAFETY: `ptr` is the start of the memory `owner` owns exclusively (its
    // heap allocation, or an arena chunk popped from the free list that no
    // other DmaBuf holds until `owner` drops), `len <= capacity` is kept by
    // DmaBuf::set_len, the bytes are initialised (allocated zeroed), and the
    // returned borrow is tied to `owner`.
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
