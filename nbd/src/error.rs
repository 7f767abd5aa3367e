//! [`NbdError`]: failures of the server's management operations (listening,
//! adding and removing exports). Data-path failures are engine
//! [`ringmirror_engine::IoError`]s, on both sides.

use std::path::PathBuf;

/// A management operation on [`crate::NbdServer`] failed.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// An export with this name already exists.
    #[error("NBD export '{0}' already exists")]
    ExportExists(String),
    /// No export has this name.
    #[error("NBD export '{0}' not found")]
    ExportNotFound(String),
    /// `remove_export(.., RemoveMode::Safe)` while clients are connected.
    #[error(
        "NBD export '{name}' is in use by {connections} connection(s); \
         disconnect the clients or remove it with mode 'hard'"
    )]
    ExportInUse {
        /// The export.
        name: String,
        /// Connections attached to it.
        connections: usize,
    },
    /// The export name cannot be sent over NBD.
    #[error("invalid NBD export name '{name}': {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A writable export was asked for on a device opened read-only.
    #[error("cannot export '{0}' writable: the device is read-only")]
    ReadOnlyDevice(String),
    /// Binding or configuring a listening socket failed.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// The address or path.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A unix socket path is already served or exists as something else.
    #[error("unix socket path {0} exists and is not a stale socket; remove it first")]
    PathInUse(PathBuf),
    /// The server was stopped.
    #[error("the NBD server has been stopped")]
    Stopped,
}
