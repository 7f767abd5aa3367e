//! ringmirror's engine: a thread-per-core io_uring reactor doing O_DIRECT
//! I/O on files and block devices with registered buffers.
//!
//! The engine knows nothing of mirrors or protocols. It offers:
//! - [`BlockDevice`], the asynchronous disk interface everything above speaks;
//! - [`DmaBuf`], owned aligned buffers (registered arena chunks when possible);
//! - [`Engine`], the reactor threads, and [`UringFile`], a device served by them;
//! - [`SyncFile`], a plain pread/pwrite device: the fallback when io_uring is
//!   unavailable and the oracle the tests compare against.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod arena;
mod buf;
mod device;
mod error;
#[allow(unsafe_code)]
mod sys;

pub use arena::ArenaClass;
pub use buf::{is_zero, DmaBuf};
pub use device::{
    check_range, BlockDevice, BlockDeviceExt, BufDone, DeviceInfo, DeviceKind, Done, Extent,
    ExtentKind,
};
pub use error::{ErrorKind, IoError, IoResult, OpKind};
