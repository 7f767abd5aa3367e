//! [`DeviceOpener`]: opens devices on the io_uring engine, or, when io_uring
//! cannot be used, on plain syscalls, saying so loudly.

use std::path::Path;
use std::sync::Arc;

use crate::device::BlockDevice;
use crate::engine::{Engine, EngineConfig};
use crate::error::IoResult;
use crate::file::OpenOptions;
use crate::sync_exec::SyncFile;

/// Environment variable that forces the pread/pwrite fallback (for tests and
/// for kernels where io_uring misbehaves).
pub const DISABLE_URING_ENV: &str = "RINGMIRROR_DISABLE_IO_URING";

/// Opens devices on the best executor available.
#[derive(Clone)]
pub struct DeviceOpener {
    engine: Option<Engine>,
}

impl DeviceOpener {
    /// Start an engine with `cfg`; on failure (or with
    /// `RINGMIRROR_DISABLE_IO_URING=1`) fall back to plain syscalls and print
    /// why on stderr.
    pub fn new(cfg: EngineConfig) -> DeviceOpener {
        if std::env::var_os(DISABLE_URING_ENV).is_some_and(|v| v != "0") {
            eprintln!(
                "ringmirror: warning: io_uring disabled by {DISABLE_URING_ENV}; \
                 using pread/pwrite (slower, one request at a time per thread)"
            );
            return DeviceOpener { engine: None };
        }
        match Engine::new(cfg) {
            Ok(engine) => DeviceOpener {
                engine: Some(engine),
            },
            Err(e) => {
                eprintln!(
                    "ringmirror: warning: io_uring is unavailable ({e}); \
                     using pread/pwrite (slower, one request at a time per thread)"
                );
                DeviceOpener { engine: None }
            }
        }
    }

    /// An opener that always uses plain syscalls.
    pub fn sync_only() -> DeviceOpener {
        DeviceOpener { engine: None }
    }

    /// An opener on an existing engine.
    pub fn with_engine(engine: Engine) -> DeviceOpener {
        DeviceOpener {
            engine: Some(engine),
        }
    }

    /// The engine, when io_uring is in use.
    pub fn engine(&self) -> Option<&Engine> {
        self.engine.as_ref()
    }

    /// "io_uring" or "pread".
    pub fn label(&self) -> &'static str {
        if self.engine.is_some() {
            "io_uring"
        } else {
            "pread"
        }
    }

    /// Open a file or block device.
    pub fn open(
        &self,
        path: impl AsRef<Path>,
        opts: &OpenOptions,
    ) -> IoResult<Arc<dyn BlockDevice>> {
        Ok(match &self.engine {
            Some(e) => e.open(path, opts)?,
            None => SyncFile::open_sync(path, opts)?,
        })
    }
}
