//! ringmirror's live mirror job: copy a disk to a new target in the
//! background while the guest keeps using it, keep the target in sync, and
//! on request switch the guest over with no acknowledged write lost. The
//! semantics are QEMU's `blockdev-mirror` (see the crate's README section in
//! the repository's `DESIGN.md`).
//!
//! - [`Disk`]: the guest-facing handle (a [`ringmirror_engine::BlockDevice`]);
//!   give it to the guest (or the NBD export) instead of the raw device.
//! - [`MirrorJob::start`]: mirror the disk onto a target device.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ringmirror_engine::{BlockDeviceExt, Engine, EngineConfig, OpenOptions};
//! use ringmirror_mirror::{Disk, JobEvent, MirrorJob, MirrorOptions};
//!
//! let engine = Engine::new(EngineConfig::default())?;
//! let source = engine.open("/images/vm.raw", &OpenOptions::read_write())?;
//! let target = engine.open("/newdisk/vm.raw", &OpenOptions::read_write())?;
//! let disk = Disk::new("vm0", source);
//! let job = MirrorJob::start(&disk, target, MirrorOptions::new("job0"), None)?;
//! let events = job.subscribe();
//! disk.write_at(0, &[1; 4096], false)?; // the guest keeps writing
//! while let Ok(ev) = events.recv() {
//!     if matches!(ev, JobEvent::Ready { .. }) {
//!         job.complete()?; // the disk now uses the target
//!     }
//!     if matches!(ev, JobEvent::Completed { .. }) {
//!         break;
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod coordinator;
mod disk;
mod events;
mod gate;
mod job;
mod link;
mod options;
mod pacer;
mod state;

pub use disk::{Disk, DiskBusy, DiskOp};
pub use events::{BlockJobInfo, ErrorAction, IoOperation, JobEvent, Progress};
pub use job::{EventSink, JobError, MirrorError, MirrorJob, Rates};
pub use options::{
    CopyMode, ErrorPolicy, GuestShare, MirrorOptions, SyncMode, DEFAULT_BUF_SIZE,
    DEFAULT_GRANULARITY, MAX_GRANULARITY, MIN_GRANULARITY,
};
pub use state::{JobStatus, Verb};
