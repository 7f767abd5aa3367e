//! [`NbdServer`]: serves named exports of [`BlockDevice`]s over NBD on unix
//! and TCP sockets.
//!
//! ```text
//!  listener thread (one per socket)          per connection
//!  ────────────────────────────────          ──────────────────────────────────────────
//!  accept ──spawn──> handshake (options) ──> reader thread ── submit ──> BlockDevice
//!                                              │   ▲ credits                 │ completion
//!                                              │   │ (requests, bytes)       ▼ (any thread)
//!                                              └── writer thread <── reply channel
//! ```
//!
//! The server keeps no data of its own: every request goes to the device,
//! so an export of the mirror's disk handle always sees the current disk.
//! Shared state is the export table and the connection table, each behind
//! a mutex; the lock order is exports, then connections.

mod conn;
mod handshake;

use std::collections::{BTreeMap, HashMap};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ringmirror_engine::BlockDevice;

use crate::error::NbdError;
use crate::proto::MAX_STRING;
use crate::sock::Stream;

/// Limits of a server; the defaults suit a guest disk export.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Requests one connection may have in flight (read, submitted to the
    /// device, reply not yet sent). The reader stops reading at this bound.
    pub max_requests_in_flight: usize,
    /// Payload bytes (write data read, read buffers allocated) one
    /// connection may have in flight.
    pub max_bytes_in_flight: usize,
    /// Connections open at once (each costs two threads); more are refused.
    pub max_connections: usize,
    /// Time a client has for each read during the handshake.
    pub handshake_timeout: Duration,
    /// On [`NbdServer::stop`], how long connections get to finish their
    /// in-flight requests before they are cut.
    pub stop_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_requests_in_flight: 256,
            max_bytes_in_flight: 64 << 20,
            max_connections: 256,
            handshake_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(5),
        }
    }
}

/// How [`NbdServer::remove_export`] treats connected clients (QEMU's
/// `BlockExportRemoveMode` of `block-export-del`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveMode {
    /// Remove the export only if no client is connected to it; fail otherwise.
    Safe,
    /// Drop every connection to the export immediately, then remove it.
    Hard,
}

/// A snapshot of one export, from [`NbdServer::list_exports`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export name ("" is the default export).
    pub name: String,
    /// Human-readable description.
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether clients may write.
    pub writable: bool,
    /// Connections in transmission phase on this export.
    pub connections: usize,
}

/// One named export.
pub(crate) struct Export {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) device: Arc<dyn BlockDevice>,
    pub(crate) writable: bool,
    pub(crate) connections: AtomicUsize,
}

struct ConnEntry {
    /// A handle on the socket, to shut it down from outside.
    stream: Stream,
    /// The export, once the client entered transmission.
    export: Option<Arc<Export>>,
    handle: Option<JoinHandle<()>>,
}

struct ListenerEntry {
    /// Where to connect to wake the blocked `accept`.
    wake: WakeAddr,
    handle: Option<JoinHandle<()>>,
}

enum WakeAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

pub(crate) struct ServerInner {
    pub(crate) cfg: ServerConfig,
    exports: Mutex<BTreeMap<String, Arc<Export>>>,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    listeners: Mutex<Vec<ListenerEntry>>,
    next_conn: AtomicU64,
    pub(crate) stopping: AtomicBool,
}

/// An NBD server. Cheap to clone; every clone drives the same server.
#[derive(Clone)]
pub struct NbdServer {
    inner: Arc<ServerInner>,
}

impl Default for NbdServer {
    fn default() -> Self {
        NbdServer::new(ServerConfig::default())
    }
}

fn check_name(name: &str) -> Result<(), NbdError> {
    let bad = |reason| {
        Err(NbdError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.len() > MAX_STRING {
        return bad("longer than 4096 bytes");
    }
    if name.contains('\0') {
        return bad("contains NUL");
    }
    Ok(())
}

impl NbdServer {
    /// A server with no listeners and no exports.
    pub fn new(cfg: ServerConfig) -> NbdServer {
        NbdServer {
            inner: Arc::new(ServerInner {
                cfg,
                exports: Mutex::new(BTreeMap::new()),
                conns: Mutex::new(HashMap::new()),
                listeners: Mutex::new(Vec::new()),
                next_conn: AtomicU64::new(1),
                stopping: AtomicBool::new(false),
            }),
        }
    }

    /// Listen on a unix socket at `path`. A stale socket file (nobody
    /// listening) is replaced; anything else there is an error.
    pub fn listen_unix(&self, path: impl AsRef<Path>) -> Result<(), NbdError> {
        let path = path.as_ref().to_path_buf();
        self.check_running()?;
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            let stale = meta.file_type().is_socket() && UnixStream::connect(&path).is_err();
            if !stale {
                return Err(NbdError::PathInUse(path));
            }
            let _ = std::fs::remove_file(&path);
        }
        let listen_err = |source| NbdError::Listen {
            what: path.display().to_string(),
            source,
        };
        let listener = UnixListener::bind(&path).map_err(listen_err)?;
        let inner = self.inner.clone();
        let handle = std::thread::Builder::new()
            .name("nbd-listen".into())
            .spawn(move || {
                for s in listener.incoming() {
                    if inner.stopping.load(Ordering::Acquire) {
                        break;
                    }
                    if let Ok(s) = s {
                        inner.clone().accept(Stream::Unix(s));
                    }
                }
            })
            .map_err(listen_err)?;
        self.inner.listeners.lock().push(ListenerEntry {
            wake: WakeAddr::Unix(path),
            handle: Some(handle),
        });
        Ok(())
    }

    /// Listen on TCP `addr` (port 0 picks a free port); returns the bound address.
    pub fn listen_tcp(&self, addr: impl ToSocketAddrs) -> Result<SocketAddr, NbdError> {
        self.check_running()?;
        let listen_err = |source| NbdError::Listen {
            what: "TCP address".into(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(listen_err)?;
        let local = listener.local_addr().map_err(listen_err)?;
        let mut wake = local;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let inner = self.inner.clone();
        let handle = std::thread::Builder::new()
            .name("nbd-listen".into())
            .spawn(move || {
                for s in listener.incoming() {
                    if inner.stopping.load(Ordering::Acquire) {
                        break;
                    }
                    if let Ok(s) = s {
                        if s.set_nodelay(true).is_ok() {
                            inner.clone().accept(Stream::Tcp(s));
                        }
                    }
                }
            })
            .map_err(listen_err)?;
        self.inner.listeners.lock().push(ListenerEntry {
            wake: WakeAddr::Tcp(wake),
            handle: Some(handle),
        });
        Ok(local)
    }

    fn check_running(&self) -> Result<(), NbdError> {
        if self.inner.stopping.load(Ordering::Acquire) {
            Err(NbdError::Stopped)
        } else {
            Ok(())
        }
    }

    /// Export `device` as `name` ("" is the default export).
    pub fn add_export(
        &self,
        name: &str,
        device: Arc<dyn BlockDevice>,
        writable: bool,
        description: &str,
    ) -> Result<(), NbdError> {
        self.check_running()?;
        check_name(name)?;
        if writable && device.info().read_only {
            return Err(NbdError::ReadOnlyDevice(name.to_string()));
        }
        let mut exports = self.inner.exports.lock();
        if exports.contains_key(name) {
            return Err(NbdError::ExportExists(name.to_string()));
        }
        let description = crate::proto::truncate_str(description, MAX_STRING).to_string();
        exports.insert(
            name.to_string(),
            Arc::new(Export {
                name: name.to_string(),
                description,
                device,
                writable,
                connections: AtomicUsize::new(0),
            }),
        );
        Ok(())
    }

    /// Remove an export. [`RemoveMode::Safe`] fails while clients are
    /// connected; [`RemoveMode::Hard`] cuts them first and waits until their
    /// connection threads have stopped submitting to the device (requests
    /// already submitted may still complete afterwards; their replies are
    /// dropped). Must not be called from a device completion.
    pub fn remove_export(&self, name: &str, mode: RemoveMode) -> Result<(), NbdError> {
        let victims = {
            let mut exports = self.inner.exports.lock();
            let Some(export) = exports.get(name).cloned() else {
                return Err(NbdError::ExportNotFound(name.to_string()));
            };
            // Attaching happens under the exports lock, so this count cannot
            // grow while we hold it.
            let n = export.connections.load(Ordering::Acquire);
            if mode == RemoveMode::Safe && n > 0 {
                return Err(NbdError::ExportInUse {
                    name: name.to_string(),
                    connections: n,
                });
            }
            exports.remove(name);
            let mut conns = self.inner.conns.lock();
            conns
                .values_mut()
                .filter(|c| c.export.as_ref().is_some_and(|e| Arc::ptr_eq(e, &export)))
                .map(|c| {
                    c.stream.shutdown(Shutdown::Both);
                    c.handle.take()
                })
                .collect::<Vec<_>>()
        };
        for h in victims.into_iter().flatten() {
            let _ = h.join();
        }
        Ok(())
    }

    /// Every export with its current connection count.
    pub fn list_exports(&self) -> Vec<ExportInfo> {
        self.inner
            .exports
            .lock()
            .values()
            .map(|e| ExportInfo {
                name: e.name.clone(),
                description: e.description.clone(),
                size: e.device.size(),
                writable: e.writable,
                connections: e.connections.load(Ordering::Acquire),
            })
            .collect()
    }

    /// Connections open (handshake or transmission).
    pub fn connection_count(&self) -> usize {
        self.inner.conns.lock().len()
    }

    /// Stop for good: close the listeners (removing unix socket files), let
    /// every connection finish its in-flight requests (up to
    /// [`ServerConfig::stop_grace`]), close them, and drop every export.
    /// Idempotent. Must not be called from a device completion.
    pub fn stop(&self) {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::Release);
        let listeners = std::mem::take(&mut *inner.listeners.lock());
        for mut l in listeners {
            let woke = match &l.wake {
                WakeAddr::Unix(p) => UnixStream::connect(p).is_ok(),
                WakeAddr::Tcp(a) => TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok(),
            };
            if let Some(h) = l.handle.take().filter(|_| woke) {
                let _ = h.join();
            }
            if let WakeAddr::Unix(p) = &l.wake {
                let _ = std::fs::remove_file(p);
            }
        }
        // Half-close: readers see end of stream and stop taking requests,
        // writers drain what is in flight and then close.
        let handles: Vec<(Stream, Option<JoinHandle<()>>)> = {
            let mut conns = inner.conns.lock();
            conns
                .values_mut()
                .filter_map(|c| {
                    c.stream.shutdown(Shutdown::Read);
                    Some((c.stream.try_clone().ok()?, c.handle.take()))
                })
                .collect()
        };
        let deadline = Instant::now() + inner.cfg.stop_grace;
        for (stream, h) in handles {
            let Some(h) = h else { continue };
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            stream.shutdown(Shutdown::Both);
            let _ = h.join();
        }
        inner.exports.lock().clear();
    }
}

impl ServerInner {
    /// Register and start a new connection.
    fn accept(self: Arc<Self>, stream: Stream) {
        let Ok(handle_stream) = stream.try_clone() else {
            return;
        };
        let mut conns = self.conns.lock();
        if conns.len() >= self.cfg.max_connections || self.stopping.load(Ordering::Acquire) {
            stream.shutdown(Shutdown::Both);
            return;
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let inner = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                handshake::serve(&inner, id, stream);
                inner.conns.lock().remove(&id);
            });
        if let Ok(handle) = spawned {
            // Inserted under the lock the thread needs to remove itself, so
            // the entry always exists before the thread can finish.
            conns.insert(
                id,
                ConnEntry {
                    stream: handle_stream,
                    export: None,
                    handle: Some(handle),
                },
            );
        }
    }

    /// Look an export up without attaching to it.
    pub(crate) fn find_export(&self, name: &str) -> Option<Arc<Export>> {
        self.exports.lock().get(name).cloned()
    }

    /// Names and descriptions of every export.
    pub(crate) fn export_list(&self) -> Vec<(String, String)> {
        self.exports
            .lock()
            .values()
            .map(|e| (e.name.clone(), e.description.clone()))
            .collect()
    }

    /// Attach connection `id` to export `name` for transmission, atomically
    /// with respect to [`NbdServer::remove_export`].
    pub(crate) fn attach(&self, id: u64, name: &str) -> Option<AttachGuard> {
        let exports = self.exports.lock();
        let export = exports.get(name)?.clone();
        let mut conns = self.conns.lock();
        let entry = conns.get_mut(&id)?;
        entry.export = Some(export.clone());
        export.connections.fetch_add(1, Ordering::AcqRel);
        Some(AttachGuard { export })
    }
}

/// Holds a connection's place in its export's connection count.
pub(crate) struct AttachGuard {
    pub(crate) export: Arc<Export>,
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        self.export.connections.fetch_sub(1, Ordering::AcqRel);
    }
}
