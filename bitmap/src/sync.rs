//! The atomics every other module uses: `std`'s in normal builds, `loom`'s
//! under `--cfg loom`, so the model checker explores the interleavings of the
//! real code rather than of a copy of it.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
