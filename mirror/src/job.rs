//! [`MirrorJob`]: the public handle of a running mirror, its verbs, its
//! query and its events. The work happens on the job's coordinator thread
//! ([`crate::coordinator`]); verbs are messages to it, answered once the
//! coordinator has checked them against the authoritative state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use ringmirror_bitmap::DirtyBitmap;
use ringmirror_engine::{BlockDevice, RangeLock};

use crate::coordinator::{Cmd, Coordinator, Msg};
use crate::disk::Disk;
use crate::events::{BlockJobInfo, JobEvent};
use crate::link::JobLink;
use crate::options::{
    CopyMode, GuestShare, MirrorOptions, SyncMode, MAX_GRANULARITY, MIN_GRANULARITY,
};

use crate::state::{JobStatus, Verb};

/// Where a job's events go as they happen (on the job's thread; must not block).
pub type EventSink = Arc<dyn Fn(&JobEvent) + Send + Sync>;

/// Why a job could not start. The messages follow QEMU's where a
/// management tool might match on them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    /// Bad options.
    #[error("{0}")]
    InvalidOption(String),
    /// Source and target sizes differ. (QEMU accepts the command and fails
    /// the job at once with this message; refusing up front loses nothing
    /// and tells the caller directly.)
    #[error("Source and target image have different sizes")]
    SizeMismatch,
    /// The target is the source.
    #[error("Can't mirror node into itself")]
    SameDevice,
    /// The disk already has a job, or the embedder refused.
    #[error("{0}")]
    Busy(String),
    /// Something failed while starting.
    #[error("{0}")]
    Start(String),
}

/// Why a verb was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The verb is not allowed in the current state (QEMU's wording).
    #[error("Job '{id}' in state '{status}' cannot accept command verb '{verb}'")]
    WrongState {
        /// Job id.
        id: String,
        /// Current state.
        status: JobStatus,
        /// The refused verb.
        verb: &'static str,
    },
    /// Any other refusal, with its message.
    #[error("{0}")]
    Refused(String),
    /// The job is gone.
    #[error("Job '{0}' has ended")]
    Gone(String),
}

/// The dirty rate (guest writes) against the copy rate, so an embedder can
/// decide to switch to write-blocking mode.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// Bytes per second the guest marks dirty (averaged over a few seconds).
    pub dirty_bytes_per_sec: u64,
    /// Bytes per second the job copies.
    pub copy_bytes_per_sec: u64,
    /// The copy rate the pacer allows now to protect a busy guest
    /// (bytes/s; 0 = not limited: no guest to protect, or pacing off).
    /// While it probes (the copy stopped for a few 100 ms to measure the
    /// guest undisturbed), the limit from before.
    pub paced_limit_bytes_per_sec: u64,
    /// How much the guest's latency may rise over its undisturbed latency
    /// now (1.15 = by 15%, see [`GuestShare`]); `None` with pacing off.
    pub guest_slowdown_allowed: Option<f64>,
}

/// Coordinator-owned facts that queries read.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub(crate) status: JobStatus,
    pub(crate) ready: bool,
    pub(crate) paused: bool,
    pub(crate) busy: bool,
    pub(crate) io_status: &'static str,
    pub(crate) error: Option<String>,
    pub(crate) speed: u64,
    pub(crate) copy_mode: CopyMode,
    pub(crate) guest_share: GuestShare,
    pub(crate) actively_synced: bool,
}

/// State shared between the handle and the coordinator.
pub(crate) struct JobShared {
    pub(crate) id: String,
    pub(crate) opts: MirrorOptions,
    pub(crate) tx: Sender<Msg>,
    pub(crate) snapshot: Mutex<Snapshot>,
    pub(crate) changed: Condvar,
    pub(crate) done_bytes: AtomicU64,
    pub(crate) in_flight_bytes: AtomicU64,
    /// Bytes written by write-blocking guest requests (shared with the link).
    pub(crate) active_synced: Arc<AtomicU64>,
    pub(crate) bitmap: Arc<DirtyBitmap>,
    pub(crate) sink: Option<EventSink>,
    pub(crate) subscribers: Mutex<Vec<Sender<JobEvent>>>,
    pub(crate) dirty_rate: AtomicU64,
    pub(crate) copy_rate: AtomicU64,
    /// The pacer's limit (bytes/s) and allowance (f64 bits, 0 = off).
    pub(crate) paced_limit: AtomicU64,
    pub(crate) allowance_bits: AtomicU64,
    pub(crate) coordinator_alive: AtomicBool,
}

impl JobShared {
    pub(crate) fn emit(&self, ev: JobEvent) {
        if let Some(s) = &self.sink {
            s(&ev);
        }
        self.subscribers
            .lock()
            .retain(|tx| tx.send(ev.clone()).is_ok());
    }

    pub(crate) fn progress_len(&self) -> (u64, u64) {
        let done =
            self.done_bytes.load(Ordering::Acquire) + self.active_synced.load(Ordering::Acquire);
        let remaining = self.bitmap.dirty_bytes() + self.in_flight_bytes.load(Ordering::Acquire);
        (done + remaining, done)
    }
}

/// A running (or finished, not yet dismissed) mirror job. Cheap to clone.
#[derive(Clone)]
pub struct MirrorJob {
    shared: Arc<JobShared>,
}

impl std::fmt::Debug for MirrorJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorJob")
            .field("id", &self.shared.id)
            .finish()
    }
}

fn validate(opts: &MirrorOptions) -> Result<(), MirrorError> {
    let g = opts.granularity;
    if !(MIN_GRANULARITY..=MAX_GRANULARITY).contains(&g) {
        return Err(MirrorError::InvalidOption(
            "Parameter 'granularity' expects a value in range [512B, 64MB]".into(),
        ));
    }
    if !g.is_power_of_two() {
        return Err(MirrorError::InvalidOption(
            "Parameter 'granularity' expects a power of 2".into(),
        ));
    }
    if opts.job_id.is_empty() {
        return Err(MirrorError::InvalidOption("Invalid job ID ''".into()));
    }
    if let Some(e) = opts.guest_share.invalid() {
        return Err(MirrorError::InvalidOption(e));
    }
    Ok(())
}

/// The granularity guest writes are tracked at: never coarser than asked,
/// and at most 4 KiB, so that a 4 KiB guest write costs a 4 KiB re-copy and
/// not a whole 64 KiB cluster. Under random writes this is the difference
/// between converging and re-copying the disk forever (see DESIGN.md). Very
/// large disks get a coarser bitmap so it stays under 2^30 bits (128 MiB).
pub(crate) fn tracking_granularity(granularity: u64, size: u64) -> u64 {
    let floor = (size >> 30).next_power_of_two().max(MIN_GRANULARITY);
    granularity.min(4096).max(floor)
}

impl MirrorJob {
    /// Start mirroring `disk` onto `target`. Events go to `sink` as they
    /// happen (from `JOB_STATUS_CHANGE created` on), and to subscribers.
    ///
    /// Refused up front: bad options, a target of a different size, the
    /// source itself as target, a disk that already has a job.
    pub fn start(
        disk: &Arc<Disk>,
        target: Arc<dyn BlockDevice>,
        opts: MirrorOptions,
        sink: Option<EventSink>,
    ) -> Result<MirrorJob, MirrorError> {
        validate(&opts)?;
        let source = disk.current();
        if Arc::ptr_eq(&source, &target) || source.info().name == target.info().name {
            return Err(MirrorError::SameDevice);
        }
        if source.size() != target.size() {
            return Err(MirrorError::SizeMismatch);
        }
        if target.info().read_only {
            return Err(MirrorError::InvalidOption(format!(
                "Block node '{}' is read-only",
                target.info().name
            )));
        }
        disk.check_op(crate::disk::DiskOp::StartJob)
            .map_err(|e| MirrorError::Busy(e.0))?;
        let size = source.size();
        let new_bitmap = || {
            DirtyBitmap::new(size, tracking_granularity(opts.granularity, size))
                .map(Arc::new)
                .map_err(|e| MirrorError::Start(e.to_string()))
        };
        let (bitmap, written) = (new_bitmap()?, new_bitmap()?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let active_synced = Arc::new(AtomicU64::new(0));
        let link = Arc::new(JobLink {
            bitmap: bitmap.clone(),
            written,
            target: target.clone(),
            locks: Arc::new(RangeLock::default()),
            write_blocking: AtomicBool::new(opts.copy_mode == CopyMode::WriteBlocking),
            background_writes: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            guest_dirtied: AtomicU64::new(0),
            active_synced: active_synced.clone(),
            notify: tx.clone(),
        });
        let shared = Arc::new(JobShared {
            id: opts.job_id.clone(),
            opts: opts.clone(),
            tx: tx.clone(),
            snapshot: Mutex::new(Snapshot {
                status: JobStatus::Created,
                ready: false,
                paused: false,
                busy: true,
                io_status: "ok",
                error: None,
                speed: opts.speed,
                copy_mode: opts.copy_mode,
                guest_share: opts.guest_share,
                actively_synced: false,
            }),
            changed: Condvar::new(),
            done_bytes: AtomicU64::new(0),
            in_flight_bytes: AtomicU64::new(0),
            active_synced,
            bitmap: bitmap.clone(),
            sink,
            subscribers: Mutex::new(Vec::new()),
            dirty_rate: AtomicU64::new(0),
            copy_rate: AtomicU64::new(0),
            paced_limit: AtomicU64::new(0),
            allowance_bits: AtomicU64::new(0),
            coordinator_alive: AtomicBool::new(true),
        });

        // Attach with guest I/O quiesced: a write in flight now, untracked,
        // could otherwise land after the job copied its cluster.
        let (dtx, drx) = crossbeam_channel::bounded::<()>(1);
        disk.gate.close(Box::new(move || {
            let _ = dtx.try_send(());
        }));
        let drained =
            drx.recv_timeout(Duration::from_secs(30)).is_ok() || disk.gate.in_flight() == 0;
        let attached = if drained {
            disk.attach(&opts.job_id, link.clone())
                .map_err(|e| MirrorError::Busy(e.0))
        } else {
            Err(MirrorError::Start(
                "guest requests did not drain within 30 s; the job was not started".into(),
            ))
        };
        if attached.is_ok() && opts.sync != SyncMode::None {
            bitmap.set_all();
        }
        disk.gate.open();
        attached?;

        shared.emit(JobEvent::StatusChange {
            id: opts.job_id.clone(),
            status: JobStatus::Created,
        });
        let coordinator = Coordinator::new(shared.clone(), disk.clone(), source, target, link, rx);
        let spawned = std::thread::Builder::new()
            .name(format!("rm-mirror-{}", opts.job_id))
            .spawn(move || coordinator.run());
        if let Err(e) = spawned {
            disk.detach();
            return Err(MirrorError::Start(format!(
                "cannot start the job thread: {e}"
            )));
        }
        Ok(MirrorJob { shared })
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The options it was started with.
    pub fn options(&self) -> &MirrorOptions {
        &self.shared.opts
    }

    fn command(&self, cmd: Cmd) -> Result<(), JobError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.shared.tx.send(Msg::Cmd(cmd, tx)).is_err() {
            return Err(JobError::Gone(self.shared.id.clone()));
        }
        rx.recv()
            .unwrap_or_else(|_| Err(JobError::Gone(self.shared.id.clone())))
    }

    /// Pause: no new copies; guest writes are still tracked.
    pub fn pause(&self) -> Result<(), JobError> {
        self.command(Cmd::Verb(Verb::Pause))
    }

    /// Resume after a pause (user's or an error's).
    pub fn resume(&self) -> Result<(), JobError> {
        self.command(Cmd::Verb(Verb::Resume))
    }

    /// Change the speed limit (bytes/s, 0 = unlimited).
    pub fn set_speed(&self, speed: u64) -> Result<(), JobError> {
        self.command(Cmd::SetSpeed(speed))
    }

    /// Change how much of its speed a busy guest keeps beside the
    /// background copy (see [`GuestShare`]); legal where `set_speed` is.
    /// The allowance starts afresh from the new share (the guest's measured
    /// baseline is kept; [`MirrorJob::rates`] shows it): a job that does not
    /// converge under a flush-heavy guest can be let take more (a lower
    /// percentage, or [`GuestShare::Unpaced`]).
    pub fn set_guest_share(&self, share: GuestShare) -> Result<(), JobError> {
        self.command(Cmd::SetGuestShare(share))
    }

    /// The guest share in force.
    pub fn guest_share(&self) -> GuestShare {
        self.shared.snapshot.lock().guest_share
    }

    /// Change the copy mode (only background → write-blocking is supported).
    pub fn change_copy_mode(&self, mode: CopyMode) -> Result<(), JobError> {
        self.command(Cmd::ChangeMode(mode))
    }

    /// Cancel. Before READY, or with `force`: stop now (`BLOCK_JOB_CANCELLED`;
    /// the target may be inconsistent). In READY without `force`: finish
    /// the sync without switching (`BLOCK_JOB_COMPLETED`; the target is a
    /// consistent point-in-time copy).
    pub fn cancel(&self, force: bool) -> Result<(), JobError> {
        self.command(Cmd::Cancel { force })
    }

    /// Switch the disk to the target (in READY).
    pub fn complete(&self) -> Result<(), JobError> {
        self.command(Cmd::Verb(Verb::Complete))
    }

    /// Finalize a pending job (`auto-finalize: false`).
    pub fn finalize(&self) -> Result<(), JobError> {
        self.command(Cmd::Verb(Verb::Finalize))
    }

    /// Dismiss a concluded job (`auto-dismiss: false`).
    pub fn dismiss(&self) -> Result<(), JobError> {
        self.command(Cmd::Verb(Verb::Dismiss))
    }

    /// Current status.
    pub fn status(&self) -> JobStatus {
        self.shared.snapshot.lock().status
    }

    /// QMP `BlockJobInfo`.
    pub fn query(&self) -> BlockJobInfo {
        let s = self.shared.snapshot.lock().clone();
        let (len, offset) = self.shared.progress_len();
        BlockJobInfo {
            device: self.shared.id.clone(),
            len,
            offset,
            busy: s.busy,
            paused: s.paused,
            speed: s.speed,
            ready: s.ready,
            status: s.status,
            io_status: s.io_status,
            auto_finalize: self.shared.opts.auto_finalize,
            auto_dismiss: self.shared.opts.auto_dismiss,
            error: s.error,
            actively_synced: s.actively_synced,
            guest_share: s.guest_share,
        }
    }

    /// The current copy mode.
    pub fn copy_mode(&self) -> CopyMode {
        self.shared.snapshot.lock().copy_mode
    }

    /// Events from now on.
    pub fn subscribe(&self) -> Receiver<JobEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.shared.subscribers.lock().push(tx);
        rx
    }

    /// Dirty rate against copy rate.
    pub fn rates(&self) -> Rates {
        Rates {
            dirty_bytes_per_sec: self.shared.dirty_rate.load(Ordering::Relaxed),
            copy_bytes_per_sec: self.shared.copy_rate.load(Ordering::Relaxed),
            paced_limit_bytes_per_sec: self.shared.paced_limit.load(Ordering::Relaxed),
            guest_slowdown_allowed: match self.shared.allowance_bits.load(Ordering::Relaxed) {
                0 => None,
                bits => Some(f64::from_bits(bits)),
            },
        }
    }

    /// Wait until the status satisfies `pred`, up to `timeout`; returns the
    /// status reached (or the last one seen).
    pub fn wait_status(&self, timeout: Duration, pred: impl Fn(JobStatus) -> bool) -> JobStatus {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.snapshot.lock();
        while !pred(s.status) {
            if self.shared.changed.wait_until(&mut s, deadline).timed_out() {
                break;
            }
        }
        s.status
    }

    /// True once the job has concluded (or been dismissed).
    pub fn is_finished(&self) -> bool {
        self.status().is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::tracking_granularity;

    #[test]
    fn tracking_is_fine_but_bounded() {
        assert_eq!(tracking_granularity(65536, 4 << 30), 4096);
        assert_eq!(tracking_granularity(512, 4 << 30), 512);
        assert_eq!(tracking_granularity(1 << 20, 1 << 20), 4096);
        // 64 TiB: 2^46 / 2^30 = 64 KiB per bit at least.
        assert_eq!(tracking_granularity(65536, 64 << 40), 65536);
        assert_eq!(tracking_granularity(4096, 1 << 50), 1 << 20);
        assert_eq!(tracking_granularity(4096, 0), 4096);
    }
}
