//! Typed I/O errors: a small matchable [`ErrorKind`] plus the context a
//! human needs (operation, path, offset, length) and the errno it came from.

use std::fmt;
use std::sync::Arc;

/// What an operation was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Opening or probing a device.
    Open,
    /// Reading data.
    Read,
    /// Writing data.
    Write,
    /// `fsync`/`fdatasync`.
    Flush,
    /// Writing zeroes (`fallocate` ZERO_RANGE or PUNCH_HOLE).
    WriteZeroes,
    /// Discarding (punching a hole).
    Discard,
    /// Mapping extents (`SEEK_DATA`/`SEEK_HOLE`).
    Extents,
    /// Changing the size of a device.
    Resize,
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpKind::Open => "open",
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Flush => "flush",
            OpKind::WriteZeroes => "write-zeroes",
            OpKind::Discard => "discard",
            OpKind::Extents => "extent map",
            OpKind::Resize => "resize",
        })
    }
}

/// The matchable part of an error; errnos are mapped to these at the engine
/// boundary so callers (the mirror's error policy, the NBD server's reply
/// codes) never look at raw errnos.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// ENOSPC / EDQUOT: the device or filesystem is full.
    NoSpace,
    /// EROFS / EBADF on write / EACCES / EPERM: the device cannot be written.
    ReadOnly,
    /// The request reaches past the end of the device.
    OutOfRange,
    /// EINVAL under O_DIRECT: a buffer or offset is not aligned as the device needs.
    Alignment,
    /// EOPNOTSUPP: the device or filesystem cannot do this operation.
    NotSupported,
    /// ENOENT: the path does not exist.
    NotFound,
    /// The request was refused because of its arguments (not an I/O failure).
    InvalidInput,
    /// The engine shut down or the request was cancelled before it ran.
    Cancelled,
    /// EIO and everything else.
    Io,
}

impl ErrorKind {
    /// Map an errno to a kind.
    pub fn from_errno(errno: i32) -> ErrorKind {
        match errno {
            libc::ENOSPC | libc::EDQUOT => ErrorKind::NoSpace,
            libc::EROFS | libc::EACCES | libc::EPERM | libc::EBADF => ErrorKind::ReadOnly,
            libc::EINVAL => ErrorKind::Alignment,
            libc::EOPNOTSUPP => ErrorKind::NotSupported,
            libc::ENOENT => ErrorKind::NotFound,
            libc::ECANCELED => ErrorKind::Cancelled,
            _ => ErrorKind::Io,
        }
    }
}

/// An I/O error with its full context.
#[derive(Clone, Debug)]
pub struct IoError {
    /// What kind of failure this is.
    pub kind: ErrorKind,
    /// The operation that failed.
    pub op: OpKind,
    /// The device's path or name.
    pub path: Arc<str>,
    /// Byte offset of the failed request.
    pub offset: u64,
    /// Byte length of the failed request.
    pub len: u64,
    /// The errno, when the failure came from the kernel.
    pub errno: Option<i32>,
    /// Extra explanation (a hint at the cause and the fix), may be empty.
    pub detail: String,
}

impl IoError {
    /// An error from a kernel errno.
    pub fn from_errno(op: OpKind, path: &Arc<str>, offset: u64, len: u64, errno: i32) -> IoError {
        IoError {
            kind: ErrorKind::from_errno(errno),
            op,
            path: path.clone(),
            offset,
            len,
            errno: Some(errno),
            detail: String::new(),
        }
    }

    /// An error without an errno.
    pub fn new(
        kind: ErrorKind,
        op: OpKind,
        path: &Arc<str>,
        offset: u64,
        len: u64,
        detail: impl Into<String>,
    ) -> IoError {
        IoError {
            kind,
            op,
            path: path.clone(),
            offset,
            len,
            errno: None,
            detail: detail.into(),
        }
    }

    /// The errno to report to a peer (NBD, QMP) for this error.
    pub fn errno_or_eio(&self) -> i32 {
        self.errno.unwrap_or(match self.kind {
            ErrorKind::NoSpace => libc::ENOSPC,
            ErrorKind::ReadOnly => libc::EPERM,
            ErrorKind::OutOfRange | ErrorKind::InvalidInput | ErrorKind::Alignment => libc::EINVAL,
            ErrorKind::NotSupported => libc::EOPNOTSUPP,
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::Cancelled => libc::ECANCELED,
            ErrorKind::Io => libc::EIO,
        })
    }

    /// Attach a hint.
    pub fn with_detail(mut self, detail: impl Into<String>) -> IoError {
        self.detail = detail.into();
        self
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            OpKind::Open | OpKind::Flush | OpKind::Resize => {
                write!(f, "{} {}", self.op, self.path)?
            }
            _ => write!(
                f,
                "{} {} at offset {} length {}",
                self.op, self.path, self.offset, self.len
            )?,
        }
        f.write_str(" failed: ")?;
        match self.errno {
            Some(e) => write!(f, "{}", std::io::Error::from_raw_os_error(e))?,
            None => write!(f, "{:?}", self.kind)?,
        }
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for IoError {}

/// Result of an engine operation.
pub type IoResult<T> = Result<T, IoError>;
