//! [`Engine`]: the reactor threads, the buffer arenas and the fixed-file
//! table, and the executor that spreads raw operations over the reactors.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::arena::{ArenaClass, Arenas};
use crate::buf::DmaBuf;
use crate::error::{ErrorKind, IoError, IoResult, OpKind};
use crate::file::{Executor, FileDevice, OpenOptions};
use crate::rawop::{FileHandle, RawOp};
use crate::reactor::{Msg, Reactor, ReactorHandle};
use crate::sys;

/// How to build an [`Engine`].
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Reactor threads (one io_uring each). Default: one per available core.
    pub threads: usize,
    /// Operations in flight per reactor; the completion queue holds twice as
    /// many, so it never overflows. Default 256.
    pub queue_depth: u32,
    /// Registered-buffer size classes. Default: 128 × 64 KiB, 16 × 1 MiB
    /// and 8 × 4 MiB (56 MiB, resident once registered; registering it with
    /// every ring needs that much RLIMIT_MEMLOCK per reactor thread; larger
    /// requests use heap buffers). The 4 MiB class serves a mirror job's
    /// bulk copy (four requests in flight at the default buf-size, so two
    /// jobs at once); the 1 MiB class large guest requests (an NBD client's
    /// 1 MiB writes at queue depth 8 use half of it).
    pub arenas: Vec<ArenaClass>,
    /// Register the arenas with the rings (READ_FIXED/WRITE_FIXED). When the
    /// memlock limit is too low this falls back to plain buffers, loudly.
    pub register_buffers: bool,
    /// Slots in each ring's fixed-file table (0 disables registered files).
    pub fixed_files: u32,
    /// Thread name prefix.
    pub name: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            queue_depth: 256,
            arenas: vec![
                ArenaClass {
                    chunk_size: 64 << 10,
                    count: 128,
                },
                // Registration pins the arenas: all of them are resident
                // from the start. 1 MiB guest requests at queue depth 8 in
                // write-blocking mode (a buffer for each side) use 16; with
                // 8, the rest came from the heap and the daemon spent 20%
                // more CPU (seqwrite-1m-qd8, 2 alternating pairs).
                ArenaClass {
                    chunk_size: 1 << 20,
                    count: 16,
                },
                // A mirror job's bulk copy requests (see ringmirror-mirror's
                // `MAX_REQUEST_BYTES`): four in flight at the default
                // buf-size. Sized for one job (it was 8: 16 MiB more
                // resident for nothing); a second job or a larger buf-size
                // gets fresh mappings for the excess.
                ArenaClass {
                    chunk_size: 4 << 20,
                    count: 4,
                },
            ],
            register_buffers: true,
            fixed_files: 64,
            name: "rm-reactor".into(),
        }
    }
}

/// What the engine ended up with (the fallbacks it took, and why).
#[derive(Clone, Debug, Default)]
pub struct EngineStatus {
    /// Arena chunks are registered with every ring.
    pub buffers_registered: bool,
    /// Fixed-file tables exist.
    pub files_registered: bool,
    /// Human-readable notes on fallbacks taken (also printed to stderr).
    pub warnings: Vec<String>,
}

thread_local! {
    /// `(engine id, reactor index)` when this thread is a reactor.
    static CURRENT_REACTOR: Cell<(u64, usize)> = const { Cell::new((0, 0)) };
}

static NEXT_ENGINE_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct EngineInner {
    id: u64,
    reactors: Vec<ReactorHandle>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    arenas: Arc<Arenas>,
    next: AtomicUsize,
    free_file_slots: Mutex<Vec<u32>>,
    status: EngineStatus,
}

/// The io_uring engine: `threads` reactor threads, each owning one ring.
/// Cheap to clone; the threads stop when the last clone (and the last
/// device opened through it) is dropped.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

impl Engine {
    /// Start the reactor threads.
    ///
    /// Fails when io_uring cannot be set up (old kernel, seccomp, or
    /// `kernel.io_uring_disabled`); callers then fall back to
    /// [`crate::SyncFile`] and should say so.
    pub fn new(cfg: EngineConfig) -> IoResult<Engine> {
        let id = NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed);
        let threads = cfg.threads.max(1);
        let arenas = Arc::new(Arenas::new(id, &cfg.arenas));
        let mut warnings = Vec::new();
        let mut register_buffers = cfg.register_buffers;
        if register_buffers {
            let need = arenas.total_bytes() as u64 * threads as u64;
            if let Some(limit) = sys::memlock_limit() {
                if need > limit && !has_cap_ipc_lock() {
                    warnings.push(format!(
                        "RLIMIT_MEMLOCK is {} KiB but registering the {} KiB buffer arena with \
                         {threads} rings needs {} KiB: using unregistered buffers (slower). \
                         Raise the limit (ulimit -l, or LimitMEMLOCK= in a systemd unit) to \
                         get registered buffers.",
                        limit >> 10,
                        arenas.total_bytes() >> 10,
                        need >> 10
                    ));
                    register_buffers = false;
                }
            }
        }
        let name_err = |e: io::Error, what: &str| {
            let hint = match e.raw_os_error() {
                Some(libc::ENOSYS) => "the kernel has no io_uring",
                Some(libc::EPERM) => {
                    "io_uring is forbidden here (seccomp, or sysctl kernel.io_uring_disabled)"
                }
                Some(libc::ENOMEM) => "memlock limit too low for the ring",
                _ => "",
            };
            IoError::from_errno(
                OpKind::Open,
                &Arc::from("io_uring"),
                0,
                0,
                e.raw_os_error().unwrap_or(libc::EIO),
            )
            .with_detail(format!(
                "{what}{}{hint}",
                if hint.is_empty() { "" } else { ": " }
            ))
        };

        let mut handles = Vec::with_capacity(threads);
        let mut joins = Vec::with_capacity(threads);
        let mut buffers_registered = register_buffers;
        let mut files_registered = cfg.fixed_files > 0;
        for idx in 0..threads {
            let wake_fd = Arc::new(sys::new_eventfd().map_err(|e| name_err(e, "eventfd"))?);
            let (tx, rx) = crossbeam_channel::unbounded();
            let sleeping = Arc::new(AtomicBool::new(false));
            let load = Arc::new(AtomicUsize::new(0));
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            let (depth, fixed_files) = (cfg.queue_depth.max(1), cfg.fixed_files);
            let arenas_t = arenas.clone();
            let (sleeping_t, load_t, wake_t) = (sleeping.clone(), load.clone(), wake_fd.clone());
            let join = std::thread::Builder::new()
                .name(format!("{}-{idx}", cfg.name))
                .spawn(move || {
                    // The ring is created on its own thread (SINGLE_ISSUER).
                    let mut ring = match sys::Ring::new(depth, id, wake_t, arenas_t.clone()) {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let bufs = if register_buffers {
                        ring.register_buffers(&arenas_t).map_err(|e| e.to_string())
                    } else {
                        Err("disabled".into())
                    };
                    let files = fixed_files > 0 && ring.register_files_sparse(fixed_files).is_ok();
                    let _ = ready_tx.send(Ok((bufs, files)));
                    CURRENT_REACTOR.with(|c| c.set((id, idx)));
                    Reactor {
                        ring,
                        rx,
                        sleeping: sleeping_t,
                        load: load_t,
                    }
                    .run();
                })
                .map_err(|e| name_err(e, "spawning a reactor thread"))?;
            match ready_rx.recv() {
                Ok(Ok((bufs, files))) => {
                    if let Err(e) = bufs {
                        if register_buffers && buffers_registered {
                            warnings.push(format!(
                                "registering buffers with io_uring failed ({e}): using \
                                 unregistered buffers (slower); raise RLIMIT_MEMLOCK"
                            ));
                        }
                        buffers_registered = false;
                    }
                    files_registered &= files;
                }
                Ok(Err(e)) => return Err(name_err(e, "io_uring_setup")),
                Err(_) => {
                    return Err(IoError::new(
                        ErrorKind::Io,
                        OpKind::Open,
                        &Arc::from("io_uring"),
                        0,
                        0,
                        "a reactor thread died while starting",
                    ))
                }
            }
            joins.push(join);
            handles.push(ReactorHandle {
                tx,
                sleeping,
                wake_fd,
                load,
            });
        }
        for w in &warnings {
            eprintln!("ringmirror: warning: {w}");
        }
        Ok(Engine {
            inner: Arc::new(EngineInner {
                id,
                reactors: handles,
                threads: Mutex::new(joins),
                arenas,
                next: AtomicUsize::new(0),
                free_file_slots: Mutex::new(if files_registered {
                    (0..cfg.fixed_files).rev().collect()
                } else {
                    Vec::new()
                }),
                status: EngineStatus {
                    buffers_registered,
                    files_registered,
                    warnings,
                },
            }),
        })
    }

    /// What the engine set up, and the fallbacks it took.
    pub fn status(&self) -> &EngineStatus {
        &self.inner.status
    }

    /// Number of reactor threads.
    pub fn threads(&self) -> usize {
        self.inner.reactors.len()
    }

    /// Largest registered chunk; transfers of this size or less use
    /// registered memory when a chunk is free.
    pub fn max_registered_buf(&self) -> usize {
        self.inner.arenas.max_chunk()
    }

    /// A buffer of `len` bytes: a registered arena chunk when one of a fitting
    /// size class is free, else a 4096-aligned heap buffer.
    pub fn alloc_buf(&self, len: usize) -> DmaBuf {
        self.inner
            .arenas
            .try_alloc(len)
            .unwrap_or_else(|| DmaBuf::new(len, 4096))
    }

    /// Open a file or block device served by this engine's reactors.
    pub fn open(&self, path: impl AsRef<Path>, opts: &OpenOptions) -> IoResult<Arc<UringFile>> {
        let engine = self.clone();
        FileDevice::open(path.as_ref(), opts, UringExec { engine }).map(Arc::new)
    }

    fn register_file(&self, file: &File) -> Option<u32> {
        let idx = self.inner.free_file_slots.lock().pop()?;
        let mut ok = true;
        for r in &self.inner.reactors {
            let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
            let msg = Msg::RegisterFile {
                index: idx,
                fd: file.as_raw_fd(),
                ack: ack_tx,
            };
            ok &= r.send(msg).is_ok() && matches!(ack_rx.recv(), Ok(Ok(())));
        }
        if ok {
            Some(idx)
        } else {
            self.unregister_file(idx);
            None
        }
    }

    fn unregister_file(&self, idx: u32) {
        for r in &self.inner.reactors {
            let _ = r.send(Msg::UnregisterFile(idx));
        }
        self.inner.free_file_slots.lock().push(idx);
    }

    fn pick_reactor(&self) -> &ReactorHandle {
        let (engine, idx) = CURRENT_REACTOR.with(Cell::get);
        if engine == self.inner.id {
            return &self.inner.reactors[idx];
        }
        // The less loaded of two round-robin candidates.
        let n = self.inner.reactors.len();
        let a = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
        let b = (a + 1) % n;
        let (ra, rb) = (&self.inner.reactors[a], &self.inner.reactors[b]);
        if rb.load.load(Ordering::Relaxed) < ra.load.load(Ordering::Relaxed) {
            rb
        } else {
            ra
        }
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        for r in &self.reactors {
            let _ = r.tx.send(Msg::Shutdown);
            crate::sys::signal_eventfd(&r.wake_fd);
        }
        let me = std::thread::current().id();
        for j in self.threads.lock().drain(..) {
            // The last reference can die inside a completion on a reactor
            // thread; that thread cannot join itself and exits on its own.
            if j.thread().id() != me {
                let _ = j.join();
            }
        }
    }
}

fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// The executor that runs raw operations on the engine's reactors.
#[derive(Clone)]
pub struct UringExec {
    engine: Engine,
}

impl Executor for UringExec {
    #[allow(private_interfaces)]
    fn execute(&self, op: RawOp) {
        if let Err(Msg::Op(op)) = self.engine.pick_reactor().send(Msg::Op(op)) {
            op.complete(Err(libc::ECANCELED));
        }
    }

    fn alloc_buf(&self, len: usize) -> DmaBuf {
        self.engine.alloc_buf(len)
    }

    #[allow(private_interfaces)]
    fn wrap_file(&self, file: File) -> FileHandle {
        let fixed = self.engine.register_file(&file);
        let engine = self.engine.clone();
        FileHandle {
            file,
            fixed,
            on_drop: Some(Box::new(move |idx| engine.unregister_file(idx))),
        }
    }

    fn label(&self) -> &'static str {
        "io_uring"
    }
}

/// A file or block device served by the io_uring reactors.
pub type UringFile = FileDevice<UringExec>;
