//! The QMP monitor: a unix socket server speaking qemu-storage-daemon's protocol.
//!
//! Threads: one accepts connections; each connection has a reader (which also runs the
//! commands) and a writer. Stopping (by [`Monitor::stop`], by dropping the [`Monitor`], or by
//! a client's `quit`) closes the listener, removes the socket file, lets every connection
//! flush what is queued for it (within [`MonitorBuilder::drain_timeout`]), then joins all
//! threads. A command that is running when the monitor stops is waited for.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::conn;
use crate::event::Emitter;
use crate::handler::Handler;
use crate::json::Limits;
use crate::session::{QemuVersion, ServerInfo};
use crate::socket::{self, FileId};

/// Why the monitor could not start.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A file system or socket call failed.
    #[error("QMP socket {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another process is serving on the path.
    #[error(
        "QMP socket {path} is in use: another process accepts connections on it \
         (stop it, or choose another --qmp path)"
    )]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("{path} exists and is not a socket; refusing to replace it (remove it, or choose another path)")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The path does not fit a unix socket address (107 bytes).
    #[error("QMP socket path {path} is longer than the 107 bytes a unix socket address holds")]
    PathTooLong {
        /// The path.
        path: PathBuf,
    },
    /// A thread could not be started.
    #[error("cannot start the QMP monitor thread: {0}")]
    Spawn(#[source] io::Error),
}

type QuitHook = Box<dyn FnOnce() + Send>;

/// Configures and starts a [`Monitor`].
pub struct MonitorBuilder {
    path: PathBuf,
    package: String,
    version: QemuVersion,
    queue_len: usize,
    max_connections: usize,
    drain_timeout: Duration,
    limits: Limits,
    emitter: Option<Emitter>,
    on_quit: Option<QuitHook>,
}

impl std::fmt::Debug for MonitorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorBuilder")
            .field("path", &self.path)
            .field("package", &self.package)
            .field("version", &self.version)
            .field("queue_len", &self.queue_len)
            .field("max_connections", &self.max_connections)
            .field("drain_timeout", &self.drain_timeout)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl MonitorBuilder {
    /// The `package` string of the greeting and `query-version`
    /// (default `ringmirror <crate version>`).
    pub fn package(mut self, package: impl Into<String>) -> Self {
        self.package = package.into();
        self
    }

    /// The QEMU version reported (default 10.0.2).
    pub fn version(mut self, version: QemuVersion) -> Self {
        self.version = version;
        self
    }

    /// Replies and events queued per connection before events start closing it (default 4096).
    pub fn queue_len(mut self, n: usize) -> Self {
        self.queue_len = n.max(1);
        self
    }

    /// Clients served at once; more are closed on arrival (default 64).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long stopping waits for connections to flush before closing them (default 2 s).
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// Message limits (default QEMU's: 64 MiB, 2 Mi tokens, nesting 1024).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The event bus to deliver from (default: a new one, see [`Monitor::emitter`]).
    pub fn emitter(mut self, emitter: Emitter) -> Self {
        self.emitter = Some(emitter);
        self
    }

    /// Runs once when a client's `quit` succeeds, before its reply is queued (so events the
    /// hook emits, e.g. cancelled jobs, reach clients first, as with qemu-storage-daemon) and
    /// before the monitor stops. It runs on that client's thread: it must not wait for the
    /// monitor to stop (signal the daemon's main thread instead).
    pub fn on_quit(mut self, hook: impl FnOnce() + Send + 'static) -> Self {
        self.on_quit = Some(Box::new(hook));
        self
    }

    /// Binds the socket and starts serving.
    pub fn bind(self, handler: Arc<dyn Handler>) -> Result<Monitor, MonitorError> {
        // Absolute, so that stopping (which connects to it) works after a chdir.
        let path = std::path::absolute(&self.path).unwrap_or(self.path);
        let (listener, file_id) = socket::bind(&path)?;
        let handler_commands = handler.commands();
        let shared = Arc::new(Shared {
            path,
            file_id,
            handler,
            handler_commands,
            info: ServerInfo {
                version: self.version,
                package: self.package,
            },
            emitter: self.emitter.unwrap_or_default(),
            queue_len: self.queue_len,
            max_connections: self.max_connections,
            drain_timeout: self.drain_timeout,
            limits: self.limits,
            on_quit: Mutex::new(self.on_quit),
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            conns: Mutex::new(Connections::default()),
            conns_changed: Condvar::new(),
            stopped: Mutex::new(false),
            stopped_cv: Condvar::new(),
        });
        let accept_shared = shared.clone();
        let accept = thread::Builder::new()
            .name("qmp-accept".into())
            .spawn(move || accept_loop(accept_shared, listener));
        let accept = match accept {
            Ok(a) => a,
            Err(e) => {
                socket::remove_if_ours(&shared.path, shared.file_id);
                return Err(MonitorError::Spawn(e));
            }
        };
        Ok(Monitor {
            shared,
            accept: Mutex::new(Some(accept)),
        })
    }
}

#[derive(Default)]
pub(crate) struct Connections {
    /// A handle on each live connection's socket, to wake or close it.
    live: HashMap<u64, UnixStream>,
    threads: Vec<JoinHandle<()>>,
}

/// State shared by the monitor's threads.
pub(crate) struct Shared {
    path: PathBuf,
    file_id: FileId,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) handler_commands: Vec<&'static str>,
    pub(crate) info: ServerInfo,
    pub(crate) emitter: Emitter,
    pub(crate) queue_len: usize,
    max_connections: usize,
    drain_timeout: Duration,
    pub(crate) limits: Limits,
    on_quit: Mutex<Option<QuitHook>>,
    stopping: AtomicBool,
    next_id: AtomicU64,
    conns: Mutex<Connections>,
    conns_changed: Condvar,
    stopped: Mutex<bool>,
    stopped_cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn run_quit_hook(&self) {
        let hook = lock(&self.on_quit).take();
        if let Some(hook) = hook {
            hook();
        }
    }

    /// Asks the accept thread to stop and tear down; returns at once.
    ///
    /// The accept thread is woken by connecting to the socket path: if someone else removed
    /// or replaced the socket file meanwhile, it wakes only at the next connection attempt.
    pub(crate) fn request_stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the blocking accept() with a connection of our own; the accept thread sees
        // `stopping` and drops it. (std has no way to interrupt accept() otherwise.)
        let _ = UnixStream::connect(&self.path);
    }

    pub(crate) fn connection_closed(&self, id: u64) {
        lock(&self.conns).live.remove(&id);
        self.conns_changed.notify_all();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                if shared.is_stopping() {
                    break;
                }
                // EMFILE and the like: back off instead of spinning.
                if e.kind() != io::ErrorKind::Interrupted {
                    thread::sleep(Duration::from_millis(20));
                }
                continue;
            }
        };
        if shared.is_stopping() {
            break;
        }
        start_connection(&shared, stream);
    }
    drop(listener);
    socket::remove_if_ours(&shared.path, shared.file_id);
    teardown(&shared);
    *lock(&shared.stopped) = true;
    shared.stopped_cv.notify_all();
}

fn start_connection(shared: &Arc<Shared>, stream: UnixStream) {
    let mut conns = lock(&shared.conns);
    conns.threads.retain(|t| !t.is_finished());
    if conns.live.len() >= shared.max_connections {
        return; // dropping `stream` closes it
    }
    let Ok(handle) = stream.try_clone() else {
        return;
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let conn_shared = shared.clone();
    let spawned = thread::Builder::new()
        .name(format!("qmp-conn{id}"))
        .spawn(move || conn::serve(conn_shared, id, stream));
    if let Ok(thread) = spawned {
        conns.live.insert(id, handle);
        conns.threads.push(thread);
    }
}

fn teardown(shared: &Shared) {
    let mut conns = lock(&shared.conns);
    // Stop reading: each reader ends, and its writer flushes what is queued.
    for stream in conns.live.values() {
        let _ = stream.shutdown(Shutdown::Read);
    }
    let deadline = Instant::now() + shared.drain_timeout;
    while !conns.live.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        conns = shared
            .conns_changed
            .wait_timeout(conns, deadline - now)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
    // Whoever is still there does not read its replies: cut it off.
    for stream in conns.live.values() {
        let _ = stream.shutdown(Shutdown::Both);
    }
    let threads = std::mem::take(&mut conns.threads);
    drop(conns);
    for t in threads {
        let _ = t.join();
    }
}

/// A running QMP monitor. Dropping it stops it.
///
/// ```no_run
/// use std::sync::Arc;
/// use ringmirror_qmp::{Monitor, NoCommands};
///
/// let monitor = Monitor::builder("/run/ringmirror/qmp.sock")
///     .on_quit(|| eprintln!("client asked to quit"))
///     .bind(Arc::new(NoCommands))?;
/// monitor.emitter().emit("MY_EVENT", serde_json::json!({"x": 1}));
/// monitor.wait(); // until a client sends quit
/// # Ok::<(), ringmirror_qmp::MonitorError>(())
/// ```
pub struct Monitor {
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("path", &self.shared.path)
            .field("connections", &self.connection_count())
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl Monitor {
    /// A builder for a monitor listening at `path`.
    pub fn builder(path: impl AsRef<Path>) -> MonitorBuilder {
        MonitorBuilder {
            path: path.as_ref().to_owned(),
            package: format!("ringmirror {}", env!("CARGO_PKG_VERSION")),
            version: QemuVersion::default(),
            queue_len: 4096,
            max_connections: 64,
            drain_timeout: Duration::from_secs(2),
            limits: Limits::default(),
            emitter: None,
            on_quit: None,
        }
    }

    /// A monitor with the default settings.
    pub fn bind(
        path: impl AsRef<Path>,
        handler: Arc<dyn Handler>,
    ) -> Result<Monitor, MonitorError> {
        Self::builder(path).bind(handler)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The emitter whose events this monitor delivers.
    pub fn emitter(&self) -> Emitter {
        self.shared.emitter.clone()
    }

    /// Clients connected now.
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.conns).live.len()
    }

    /// Asks the monitor to stop; returns at once (see [`Monitor::wait`]).
    pub fn stop(&self) {
        self.shared.request_stop();
    }

    /// Whether the monitor has stopped (after `stop`, `quit` or a drop).
    pub fn is_stopped(&self) -> bool {
        *lock(&self.shared.stopped)
    }

    /// Blocks until the monitor has stopped and all its threads are joined. Do not call it
    /// from a command handler or the quit hook: those run on threads it waits for.
    pub fn wait(&self) {
        let accept = lock(&self.accept).take();
        if let Some(accept) = accept {
            let _ = accept.join();
        }
        let mut stopped = lock(&self.shared.stopped);
        while !*stopped {
            stopped = self
                .shared
                .stopped_cv
                .wait(stopped)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Stops the monitor and waits for it.
    pub fn shutdown(&self) {
        self.stop();
        self.wait();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shutdown();
    }
}
