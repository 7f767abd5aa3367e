//! Creating the monitor's unix socket: mode 0600 from the first moment, a stale socket file
//! replaced, a live one or a non-socket refused, and removal only of our own file.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::monitor::MonitorError;

/// Longest path a `sockaddr_un` holds (108 bytes with the terminating NUL).
const SUN_PATH_MAX: usize = 107;

/// Which file we bound, so that we remove it only if it is still ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

fn file_id(path: &Path) -> io::Result<FileId> {
    let m = fs::symlink_metadata(path)?;
    Ok(FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

fn io_err(path: &Path, source: io::Error) -> MonitorError {
    MonitorError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Binds a listening socket at `path` readable and writable by the owner only.
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, FileId), MonitorError> {
    if path.as_os_str().len() > SUN_PATH_MAX {
        return Err(MonitorError::PathTooLong {
            path: path.to_owned(),
        });
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(MonitorError::InUse {
                    path: path.to_owned(),
                });
            }
            // Stale: left by a process that died without cleaning up.
            fs::remove_file(path).map_err(|e| io_err(path, e))?;
        }
        Ok(_) => {
            return Err(MonitorError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path, e)),
    }
    let listener = match private_dir_for(path) {
        Some(dir) => bind_via_private_dir(path, &dir),
        // The detour would not fit in sun_path: bind in place and tighten the mode at once.
        None => bind_in_place(path),
    }?;
    let id = file_id(path).map_err(|e| io_err(path, e))?;
    Ok((listener, id))
}

/// A sibling directory name for binding privately, if the socket path inside it fits.
fn private_dir_for(path: &Path) -> Option<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let name = format!(
        ".qmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let dir = match parent {
        Some(p) => p.join(name),
        None => PathBuf::from(name),
    };
    (dir.join("s").as_os_str().len() <= SUN_PATH_MAX).then_some(dir)
}

/// Binds inside a fresh 0700 directory, sets 0600, then renames into place: no moment at
/// which another user could connect.
fn bind_via_private_dir(path: &Path, dir: &Path) -> Result<UnixListener, MonitorError> {
    DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err(dir, e))?;
    let tmp = dir.join("s");
    let result = (|| {
        let listener = UnixListener::bind(&tmp).map_err(|e| io_err(&tmp, e))?;
        fs::set_permissions(&tmp, Permissions::from_mode(0o600)).map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
        Ok(listener)
    })();
    let _ = fs::remove_file(&tmp);
    let _ = fs::remove_dir(dir);
    result
}

fn bind_in_place(path: &Path) -> Result<UnixListener, MonitorError> {
    let listener = UnixListener::bind(path).map_err(|e| io_err(path, e))?;
    fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(|e| io_err(path, e))?;
    Ok(listener)
}

/// Removes the socket file if it is still the one we created.
pub(crate) fn remove_if_ours(path: &Path, id: FileId) {
    if file_id(path).is_ok_and(|now| now == id) {
        let _ = fs::remove_file(path);
    }
}
