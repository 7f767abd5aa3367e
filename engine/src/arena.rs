//! Registered-buffer arenas: large aligned allocations cut into equal chunks,
//! registered once with every reactor's ring (one iovec per chunk, so a chunk's
//! registered index is global to the engine) and handed out as [`DmaBuf`]s.
//!
//! Size classes keep small guest I/O from pinning a 1 MiB chunk each.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::buf::DmaBuf;
use crate::sys::RawAlloc;

/// One size class of registered memory.
pub(crate) struct ArenaInner {
    engine_id: u64,
    base_index: u32,
    chunk_size: usize,
    mem: RawAlloc,
    free: Mutex<Vec<u32>>,
}

impl ArenaInner {
    pub(crate) fn id(&self) -> u64 {
        self.engine_id
    }

    pub(crate) fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    pub(crate) fn chunk_ptr(&self, chunk: u32) -> *const u8 {
        self.mem.offset_ptr(chunk as usize * self.chunk_size)
    }

    pub(crate) fn release(&self, chunk: u32) {
        self.free.lock().push(chunk);
    }
}

/// All size classes of one engine, smallest first.
pub(crate) struct Arenas {
    classes: Vec<Arc<ArenaInner>>,
}

/// One size class: `count` chunks of `chunk_size` bytes.
#[derive(Clone, Copy, Debug)]
pub struct ArenaClass {
    /// Bytes per chunk (a multiple of 4096).
    pub chunk_size: usize,
    /// Number of chunks.
    pub count: usize,
}

impl Arenas {
    pub(crate) fn new(engine_id: u64, classes: &[ArenaClass]) -> Arenas {
        let mut sorted: Vec<ArenaClass> = classes
            .iter()
            .copied()
            .filter(|c| c.count > 0 && c.chunk_size > 0)
            .collect();
        sorted.sort_by_key(|c| c.chunk_size);
        let mut base = 0u32;
        let classes = sorted
            .into_iter()
            .map(|c| {
                let chunk_size = c.chunk_size.next_multiple_of(4096);
                let inner = Arc::new(ArenaInner {
                    engine_id,
                    base_index: base,
                    chunk_size,
                    mem: RawAlloc::zeroed(chunk_size * c.count, 4096),
                    free: Mutex::new((0..c.count as u32).rev().collect()),
                });
                base += c.count as u32;
                inner
            })
            .collect();
        Arenas { classes }
    }

    /// Total bytes of registered memory.
    pub(crate) fn total_bytes(&self) -> usize {
        self.classes.iter().map(|a| a.mem.size()).sum()
    }

    /// `(address, length)` of every chunk, in registered-index order.
    pub(crate) fn iovecs(&self) -> Vec<(*const u8, usize)> {
        let mut v = Vec::new();
        for a in &self.classes {
            let n = a.mem.size() / a.chunk_size;
            for i in 0..n {
                v.push((a.chunk_ptr(i as u32), a.chunk_size));
            }
        }
        v
    }

    /// A chunk of the smallest class that fits `len`, if one is free; else
    /// of a larger class, but only one at most four times `len`, so that
    /// small requests cannot use up the chunks that large ones need (a
    /// mirror's 4 MiB copies would then get a fresh mapping each).
    pub(crate) fn try_alloc(&self, len: usize) -> Option<DmaBuf> {
        let mut smallest_fit = true;
        for a in &self.classes {
            if a.chunk_size < len {
                continue;
            }
            if !smallest_fit && a.chunk_size > len.saturating_mul(4) {
                break;
            }
            smallest_fit = false;
            if let Some(chunk) = a.free.lock().pop() {
                return Some(DmaBuf::from_arena(a.clone(), chunk, len));
            }
        }
        None
    }

    /// Largest chunk size (0 without arenas).
    pub(crate) fn max_chunk(&self) -> usize {
        self.classes.last().map_or(0, |a| a.chunk_size)
    }
}

/// Registered index of `chunk` in `arena`.
pub(crate) fn registered_index(arena: &ArenaInner, chunk: u32) -> u32 {
    arena.base_index + chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Arenas {
        let c = |chunk_size, count| ArenaClass { chunk_size, count };
        Arenas::new(0, &[c(64 << 10, 2), c(256 << 10, 1), c(4 << 20, 1)])
    }

    #[test]
    fn smallest_fit_first_then_at_most_four_times_larger() {
        let a = classes();
        let small: Vec<_> = (0..2).map(|_| a.try_alloc(4096).unwrap()).collect();
        assert!(small.iter().all(|b| b.capacity() == 64 << 10));
        // The 64 KiB class is used up: a 64 KiB request may take 256 KiB,
        // a 4 KiB one may not (nor the 4 MiB chunk).
        assert!(a.try_alloc(4096).is_none());
        let spill = a.try_alloc(64 << 10).unwrap();
        assert_eq!(spill.capacity(), 256 << 10);
        assert!(a.try_alloc(64 << 10).is_none(), "4 MiB is 64x the request");
        // The smallest fitting class is always allowed, whatever the waste.
        let big = a.try_alloc(1 << 20).unwrap();
        assert_eq!(big.capacity(), 4 << 20);
        drop((small, spill, big));
        assert_eq!(a.try_alloc(1).unwrap().capacity(), 64 << 10);
    }
}
