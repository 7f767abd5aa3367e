//! [`Disk`]: the guest-facing handle. Guest reads, writes, flushes, zeroes
//! and discards go through it to whatever device currently backs the disk;
//! a mirror job attaches to it to see every guest write, and switches it to
//! the target on completion.
//!
//! ```text
//!   guest I/O ─> Disk ─ gate (quiesce) ─> current backing device
//!                  │                         (source; after completion: target)
//!                  └─ JobLink: mark dirty on completion (background)
//!                             or write both sides (write-blocking)
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use ringmirror_engine::{
    check_range, BlockDevice, BufDone, DeviceInfo, DeviceKind, DmaBuf, Done, ErrorKind, Extent,
    IoError, IoResult, OpKind,
};

use crate::gate::Gate;
use crate::link::JobLink;

/// An operation the embedder may want to refuse while a job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOp {
    /// Changing the disk's size.
    Resize,
    /// Detaching the disk from the guest.
    Detach,
    /// Starting a job on the disk.
    StartJob,
}

/// Why an operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DiskBusy(pub String);

type OpPolicy = Box<dyn Fn(DiskOp, Option<&str>) -> Result<(), String> + Send + Sync>;

struct Backing {
    dev: Arc<dyn BlockDevice>,
}

/// The guest-facing disk handle; see the module docs. Always used as
/// `Arc<Disk>` ([`Disk::new`]).
pub struct Disk {
    me: Weak<Disk>,
    info: DeviceInfo,
    current: ArcSwap<Backing>,
    pub(crate) link: ArcSwapOption<JobLink>,
    pub(crate) gate: Gate,
    job_id: Mutex<Option<String>>,
    policy: Mutex<Option<OpPolicy>>,
    /// Guest requests completed, and their summed latency: the job paces
    /// its copying by how much it slows the guest down.
    guest_ops: AtomicU64,
    guest_latency_ns: AtomicU64,
}

/// Holds a request's place in the gate; leaving on drop.
struct Ticket(Arc<Disk>, Instant);

impl Drop for Ticket {
    fn drop(&mut self) {
        let ns = self.1.elapsed().as_nanos() as u64;
        // Relaxed: statistics, read by the job's pacer every few ms.
        self.0.guest_ops.fetch_add(1, Ordering::Relaxed);
        self.0.guest_latency_ns.fetch_add(ns, Ordering::Relaxed);
        self.0.gate.leave();
    }
}

impl Disk {
    /// A disk called `name` backed by `dev`.
    pub fn new(name: impl Into<String>, dev: Arc<dyn BlockDevice>) -> Arc<Disk> {
        let src = dev.info();
        let info = DeviceInfo {
            name: Arc::from(name.into()),
            kind: DeviceKind::Virtual,
            mem_align: src.mem_align.max(4096),
            offset_align: src.offset_align,
            read_only: src.read_only,
            sparse_aware: src.sparse_aware,
            direct: src.direct,
        };
        Arc::new_cyclic(|me| Disk {
            me: me.clone(),
            info,
            current: ArcSwap::from_pointee(Backing { dev }),
            link: ArcSwapOption::empty(),
            gate: Gate::new(),
            job_id: Mutex::new(None),
            policy: Mutex::new(None),
            guest_ops: AtomicU64::new(0),
            guest_latency_ns: AtomicU64::new(0),
        })
    }

    /// The device currently backing the disk (the source, or the target
    /// after a completed mirror).
    pub fn current(&self) -> Arc<dyn BlockDevice> {
        self.current.load().dev.clone()
    }

    /// The disk's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The id of the job attached to the disk, if any.
    pub fn job_id(&self) -> Option<String> {
        self.job_id.lock().clone()
    }

    /// Guest requests completed so far and their summed latency (ns).
    pub fn guest_io_totals(&self) -> (u64, u64) {
        (
            self.guest_ops.load(Ordering::Relaxed),
            self.guest_latency_ns.load(Ordering::Relaxed),
        )
    }

    /// Guest requests in flight.
    pub fn requests_in_flight(&self) -> u64 {
        self.gate.in_flight()
    }

    /// Install the embedder's policy for [`DiskOp`]s. It is asked after the
    /// built-in rule (no resize, detach or second job while a job runs) and
    /// gets the attached job's id.
    pub fn set_op_policy(
        &self,
        f: impl Fn(DiskOp, Option<&str>) -> Result<(), String> + Send + Sync + 'static,
    ) {
        *self.policy.lock() = Some(Box::new(f));
    }

    /// Whether `op` is allowed now.
    pub fn check_op(&self, op: DiskOp) -> Result<(), DiskBusy> {
        let job = self.job_id.lock().clone();
        if let Some(j) = &job {
            let what = match op {
                DiskOp::Resize => "resized",
                DiskOp::Detach => "detached",
                DiskOp::StartJob => "used by a second job",
            };
            return Err(DiskBusy(format!(
                "Node '{}' is busy: block device is in use by block job: mirror (job '{j}'), \
                 it cannot be {what} until the job ends",
                self.name()
            )));
        }
        if let Some(p) = self.policy.lock().as_ref() {
            p(op, job.as_deref()).map_err(DiskBusy)?;
        }
        Ok(())
    }

    pub(crate) fn attach(&self, job_id: &str, link: Arc<JobLink>) -> Result<(), DiskBusy> {
        let mut slot = self.job_id.lock();
        if let Some(j) = slot.as_ref() {
            return Err(DiskBusy(format!(
                "Node '{}' is busy: block device is in use by block job: mirror (job '{j}')",
                self.name()
            )));
        }
        if let Some(p) = self.policy.lock().as_ref() {
            p(DiskOp::StartJob, None).map_err(DiskBusy)?;
        }
        *slot = Some(job_id.to_string());
        self.link.store(Some(link));
        Ok(())
    }

    /// Unlink and release at once (a job that never ran).
    pub(crate) fn detach(&self) {
        self.unlink();
        self.release();
    }

    /// Guest requests from now on are neither tracked nor mirrored.
    pub(crate) fn unlink(&self) {
        self.link.store(None);
    }

    /// The disk may take another job. Called after the gate has reopened,
    /// so a new job's attach (which closes the gate) cannot interleave with
    /// the old job's reopening.
    pub(crate) fn release(&self) {
        *self.job_id.lock() = None;
    }

    /// Point the disk at `dev`. Called by the job with the gate closed and
    /// drained, so no guest request sees the switch half-done.
    pub(crate) fn switch_to(&self, dev: Arc<dyn BlockDevice>) {
        self.current.store(Arc::new(Backing { dev }));
    }

    fn this(&self) -> Option<Arc<Disk>> {
        self.me.upgrade()
    }

    /// Enter the gate; `None` when it is closed (the caller parks).
    fn ticket(&self) -> Option<Ticket> {
        // `me` always upgrades: `&self` comes from a live `Arc<Disk>`.
        let me = self.this()?;
        if self.gate.enter() {
            Some(Ticket(me, Instant::now()))
        } else {
            None
        }
    }

    /// Run `retry` once the gate reopens.
    fn park(&self, retry: impl FnOnce(Arc<Disk>) + Send + 'static) {
        if let Some(me) = self.this() {
            let again = me.clone();
            me.gate.park(Box::new(move || retry(again)));
        }
    }

    fn range_err(&self, op: OpKind, off: u64, len: u64) -> IoResult<()> {
        check_range(&self.info.name, op, off, len, self.size())
    }

    fn read_only_err(&self, op: OpKind, off: u64, len: u64) -> Option<IoError> {
        if self.info.read_only {
            Some(IoError::new(
                ErrorKind::ReadOnly,
                op,
                &self.info.name,
                off,
                len,
                "the disk is read-only",
            ))
        } else {
            None
        }
    }
}

impl BlockDevice for Disk {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn size(&self) -> u64 {
        self.current.load().dev.size()
    }

    fn alloc_buf(&self, len: usize) -> DmaBuf {
        self.current.load().dev.alloc_buf(len)
    }

    fn read(&self, offset: u64, buf: DmaBuf, done: BufDone) {
        let Some(t) = self.ticket() else {
            return self.park(move |d| d.read(offset, buf, done));
        };
        let dev = t.0.current();
        dev.read(
            offset,
            buf,
            Box::new(move |b, r| {
                drop(t);
                done(b, r)
            }),
        );
    }

    fn write(&self, offset: u64, buf: DmaBuf, fua: bool, done: BufDone) {
        let len = buf.len() as u64;
        if let Some(e) = self.read_only_err(OpKind::Write, offset, len) {
            return done(buf, Err(e));
        }
        if let Err(e) = self.range_err(OpKind::Write, offset, len) {
            return done(buf, Err(e));
        }
        let Some(t) = self.ticket() else {
            return self.park(move |d| d.write(offset, buf, fua, done));
        };
        let dev = t.0.current();
        match t.0.link.load_full() {
            Some(link) if link.begin_request() => link.active_write(
                dev,
                offset,
                buf,
                fua,
                Box::new(move |b, r| {
                    drop(t);
                    done(b, r)
                }),
            ),
            link => dev.write(
                offset,
                buf,
                fua,
                Box::new(move |b, r| {
                    if let Some(l) = link {
                        l.end_background(offset, len);
                    }
                    drop(t);
                    done(b, r)
                }),
            ),
        }
    }

    fn flush(&self, done: Done) {
        let Some(t) = self.ticket() else {
            return self.park(move |d| d.flush(done));
        };
        let dev = t.0.current();
        dev.flush(Box::new(move |r| {
            drop(t);
            done(r)
        }));
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool, done: Done) {
        if let Some(e) = self.read_only_err(OpKind::WriteZeroes, offset, len) {
            return done(Err(e));
        }
        if let Err(e) = self.range_err(OpKind::WriteZeroes, offset, len) {
            return done(Err(e));
        }
        let Some(t) = self.ticket() else {
            return self.park(move |d| d.write_zeroes(offset, len, unmap, done));
        };
        let dev = t.0.current();
        match t.0.link.load_full() {
            Some(link) if link.begin_request() => link.active_zeroes(
                dev,
                offset,
                len,
                unmap,
                Box::new(move |r| {
                    drop(t);
                    done(r)
                }),
            ),
            link => dev.write_zeroes(
                offset,
                len,
                unmap,
                Box::new(move |r| {
                    if let Some(l) = link {
                        l.end_background(offset, len);
                    }
                    drop(t);
                    done(r)
                }),
            ),
        }
    }

    fn discard(&self, offset: u64, len: u64, done: Done) {
        if let Some(e) = self.read_only_err(OpKind::Discard, offset, len) {
            return done(Err(e));
        }
        if let Err(e) = self.range_err(OpKind::Discard, offset, len) {
            return done(Err(e));
        }
        let Some(t) = self.ticket() else {
            return self.park(move |d| d.discard(offset, len, done));
        };
        let dev = t.0.current();
        // Discarded bytes read back as whatever the source says: the job
        // copies them like any other write, in both modes.
        match t.0.link.load_full() {
            Some(link) if link.begin_request() => link.active_discard(
                dev,
                offset,
                len,
                Box::new(move |r| {
                    drop(t);
                    done(r)
                }),
            ),
            link => dev.discard(
                offset,
                len,
                Box::new(move |r| {
                    if let Some(l) = link {
                        l.end_background(offset, len);
                    }
                    drop(t);
                    done(r)
                }),
            ),
        }
    }

    fn extents(&self, offset: u64, len: u64) -> IoResult<Vec<Extent>> {
        self.current().extents(offset, len)
    }

    fn resize(&self, new_size: u64) -> IoResult<()> {
        self.check_op(DiskOp::Resize).map_err(|e| {
            IoError::new(
                ErrorKind::InvalidInput,
                OpKind::Resize,
                &self.info.name,
                0,
                new_size,
                e.0,
            )
        })?;
        self.current().resize(new_size)
    }
}
