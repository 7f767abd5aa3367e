//! Job events with QEMU's names and fields, and the query structures
//! (`BlockJobInfo`, `JobInfo`).

use serde_json::{json, Map, Value};

use crate::options::GuestShare;
use crate::state::JobStatus;

/// Which side a failed request was on (QMP `IoOperationType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOperation {
    /// Reading the source.
    Read,
    /// Writing the target.
    Write,
}

/// What the job did about an error (QMP `BlockErrorAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorAction {
    /// The job fails.
    Report,
    /// The job retries later.
    Ignore,
    /// The job pauses.
    Stop,
}

impl ErrorAction {
    /// The QMP name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorAction::Report => "report",
            ErrorAction::Ignore => "ignore",
            ErrorAction::Stop => "stop",
        }
    }
}

/// Progress as events report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes done plus bytes remaining.
    pub len: u64,
    /// Bytes done.
    pub offset: u64,
    /// Speed limit (0 = none).
    pub speed: u64,
}

/// An event a job emits.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    /// `JOB_STATUS_CHANGE`.
    StatusChange {
        /// Job id.
        id: String,
        /// New status.
        status: JobStatus,
    },
    /// `BLOCK_JOB_READY`: the target is in sync.
    Ready {
        /// Job id.
        id: String,
        /// Progress at that moment.
        progress: Progress,
    },
    /// `BLOCK_JOB_COMPLETED`, with `error` when the job failed.
    Completed {
        /// Job id.
        id: String,
        /// Final progress.
        progress: Progress,
        /// Why the job failed.
        error: Option<String>,
    },
    /// `BLOCK_JOB_CANCELLED`.
    Cancelled {
        /// Job id.
        id: String,
        /// Final progress.
        progress: Progress,
    },
    /// `BLOCK_JOB_ERROR`.
    Error {
        /// Job id.
        id: String,
        /// Which side failed.
        operation: IoOperation,
        /// What the job did.
        action: ErrorAction,
    },
    /// `BLOCK_JOB_PENDING`.
    Pending {
        /// Job id.
        id: String,
    },
}

impl JobEvent {
    /// The QMP event name.
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::StatusChange { .. } => "JOB_STATUS_CHANGE",
            JobEvent::Ready { .. } => "BLOCK_JOB_READY",
            JobEvent::Completed { .. } => "BLOCK_JOB_COMPLETED",
            JobEvent::Cancelled { .. } => "BLOCK_JOB_CANCELLED",
            JobEvent::Error { .. } => "BLOCK_JOB_ERROR",
            JobEvent::Pending { .. } => "BLOCK_JOB_PENDING",
        }
    }

    /// The QMP event `data`, with QEMU's field names.
    pub fn data(&self) -> Value {
        let progress = |id: &str, p: &Progress| {
            let mut m = Map::new();
            m.insert("type".into(), json!("mirror"));
            m.insert("device".into(), json!(id));
            m.insert("len".into(), json!(p.len));
            m.insert("offset".into(), json!(p.offset));
            m.insert("speed".into(), json!(p.speed));
            m
        };
        match self {
            JobEvent::StatusChange { id, status } => json!({"id": id, "status": status.as_str()}),
            JobEvent::Ready { id, progress: p } => Value::Object(progress(id, p)),
            JobEvent::Cancelled { id, progress: p } => Value::Object(progress(id, p)),
            JobEvent::Completed {
                id,
                progress: p,
                error,
            } => {
                let mut m = progress(id, p);
                if let Some(e) = error {
                    m.insert("error".into(), json!(e));
                }
                Value::Object(m)
            }
            JobEvent::Error {
                id,
                operation,
                action,
            } => json!({
                "device": id,
                "operation": match operation { IoOperation::Read => "read", IoOperation::Write => "write" },
                "action": action.as_str(),
            }),
            JobEvent::Pending { id } => json!({"type": "mirror", "id": id}),
        }
    }
}

/// QMP `BlockJobInfo` for a mirror job.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockJobInfo {
    /// Job id (QMP `device`).
    pub device: String,
    /// Bytes done plus remaining.
    pub len: u64,
    /// Bytes done.
    pub offset: u64,
    /// Whether I/O is in flight.
    pub busy: bool,
    /// Paused by the user or by an error.
    pub paused: bool,
    /// Speed limit.
    pub speed: u64,
    /// READY was reached (sticky).
    pub ready: bool,
    /// Status.
    pub status: JobStatus,
    /// `ok`, `failed` or `nospace`.
    pub io_status: &'static str,
    /// Finalizes by itself.
    pub auto_finalize: bool,
    /// Disappears by itself once concluded.
    pub auto_dismiss: bool,
    /// Why the job failed, once it has.
    pub error: Option<String>,
    /// Write-blocking and in sync: every new write reaches both sides.
    pub actively_synced: bool,
    /// How much of its speed a busy guest keeps (ringmirror's own; QMP
    /// shows it as `x-guest-share` when it is not automatic).
    pub guest_share: GuestShare,
}

impl BlockJobInfo {
    /// As QMP returns it from `query-block-jobs`.
    pub fn to_qmp(&self) -> Value {
        let mut v = json!({
            "type": "mirror",
            "device": self.device,
            "len": self.len,
            "offset": self.offset,
            "busy": self.busy,
            "paused": self.paused,
            "speed": self.speed,
            "ready": self.ready,
            "status": self.status.as_str(),
            "io-status": self.io_status,
            "auto-finalize": self.auto_finalize,
            "auto-dismiss": self.auto_dismiss,
            "actively-synced": self.actively_synced,
        });
        if let (Some(e), Some(m)) = (&self.error, v.as_object_mut()) {
            m.insert("error".into(), json!(e));
        }
        if let (Some(p), Some(m)) = (self.guest_share.as_percent(), v.as_object_mut()) {
            m.insert("x-guest-share".into(), json!(p));
        }
        v
    }

    /// As QMP returns it from `query-jobs` (`JobInfo`).
    pub fn to_qmp_job_info(&self) -> Value {
        let mut v = json!({
            "id": self.device,
            "type": "mirror",
            "status": self.status.as_str(),
            "current-progress": self.offset,
            "total-progress": self.len,
        });
        if let (Some(e), Some(m)) = (&self.error, v.as_object_mut()) {
            m.insert("error".into(), json!(e));
        }
        v
    }
}
