//! ringmirror's engine: a thread-per-core io_uring reactor doing O_DIRECT
//! I/O on files and block devices with registered buffers.
//!
//! The engine knows nothing of mirrors or protocols. It offers:
//! - [`BlockDevice`], the asynchronous disk interface everything above speaks;
//! - [`DmaBuf`], owned aligned buffers (registered arena chunks when possible);
//! - [`Engine`], the reactor threads, and [`UringFile`], a device served by them;
//! - [`SyncFile`], a plain pread/pwrite device: the fallback when io_uring is
//!   unavailable and the oracle the tests compare against.
//!
//! ```no_run
//! use ringmirror_engine::{BlockDeviceExt, Engine, EngineConfig, OpenOptions};
//! let engine = Engine::new(EngineConfig::default())?;
//! let disk = engine.open("/var/lib/images/disk.raw", &OpenOptions::read_write())?;
//! disk.write_at(4096, &[0xab; 4096], false)?;
//! let buf = disk.read_at(4096, 4096)?;
//! assert!(buf.iter().all(|&b| b == 0xab));
//! disk.flush_sync()?;
//! # Ok::<(), ringmirror_engine::IoError>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod arena;
mod buf;
mod device;
mod engine;
mod error;
mod file;
mod open;
mod rangelock;
mod rate;
mod rawop;
mod reactor;
mod sync_exec;
#[allow(unsafe_code)]
mod sys;

pub use arena::ArenaClass;
pub use buf::{is_zero, DmaBuf};
pub use device::{
    check_range, BlockDevice, BlockDeviceExt, BufDone, DeviceInfo, DeviceKind, Done, Extent,
    ExtentKind,
};
pub use engine::{Engine, EngineConfig, EngineStatus, UringExec, UringFile};
pub use error::{ErrorKind, IoError, IoResult, OpKind};
pub use file::{Executor, FileDevice, OpenOptions};
pub use open::{DeviceOpener, DISABLE_URING_ENV};
pub use rangelock::{RangeGuard, RangeLock};
pub use rate::RateLimiter;
pub use sync_exec::{SyncExec, SyncFile};
