//! Job options, with QEMU's names, defaults and limits.

use std::fmt;

/// What the job copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// The whole disk.
    Full,
    /// What the top image holds above its backing file. A raw image has no
    /// backing file, so this copies everything, as QEMU does.
    Top,
    /// Only what the guest writes after the job starts.
    None,
}

impl SyncMode {
    /// The QMP name.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Full => "full",
            SyncMode::Top => "top",
            SyncMode::None => "none",
        }
    }

    /// Parse a QMP name.
    pub fn parse(s: &str) -> Option<SyncMode> {
        Some(match s {
            "full" => SyncMode::Full,
            "top" => SyncMode::Top,
            "none" => SyncMode::None,
            _ => return None,
        })
    }
}

/// How guest writes reach the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// Guest writes mark the bitmap; the job copies later.
    Background,
    /// Guest writes complete only once on both source and target.
    WriteBlocking,
}

impl CopyMode {
    /// The QMP name.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyMode::Background => "background",
            CopyMode::WriteBlocking => "write-blocking",
        }
    }

    /// Parse a QMP name.
    pub fn parse(s: &str) -> Option<CopyMode> {
        Some(match s {
            "background" => CopyMode::Background,
            "write-blocking" => CopyMode::WriteBlocking,
            _ => return None,
        })
    }
}

/// What to do when a request fails (`on-source-error`, `on-target-error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Fail the job.
    Report,
    /// Retry later.
    Ignore,
    /// Pause the job until it is resumed.
    Stop,
    /// Stop on ENOSPC, report anything else.
    Enospc,
}

impl ErrorPolicy {
    /// The QMP name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorPolicy::Report => "report",
            ErrorPolicy::Ignore => "ignore",
            ErrorPolicy::Stop => "stop",
            ErrorPolicy::Enospc => "enospc",
        }
    }

    /// Parse a QMP name.
    pub fn parse(s: &str) -> Option<ErrorPolicy> {
        Some(match s {
            "report" => ErrorPolicy::Report,
            "ignore" => ErrorPolicy::Ignore,
            "stop" => ErrorPolicy::Stop,
            "enospc" => ErrorPolicy::Enospc,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of its speed a guest keeps while the job copies beside it
/// (the background copy's pacing; write-blocking guest writes are not
/// paced, they wait for the target by design).
///
/// The job measures the guest's latency with the copy stopped (its
/// baseline) and slows the copy whenever the guest's mean latency rises
/// above `100 / percent` times that. At a fixed queue depth a guest's
/// IOPS are its depth over its latency, so it keeps about that percentage
/// of its speed. This is not a QEMU option (QEMU does not pace the copy:
/// it behaves like [`GuestShare::Unpaced`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GuestShare {
    /// Keep about 87% (latency within 1.15x of the baseline). A job whose
    /// bytes left stop shrinking lends the copy more, step by step down to
    /// 50%, and gives it back if even that does not help.
    #[default]
    Auto,
    /// Keep about this percentage (1..=100), never less for the sake of
    /// convergence: a guest that writes faster than the copy may go keeps
    /// the job from READY (switch to write-blocking, or lower the share).
    /// 100 allows no slowdown at all: the copy stays near its floor (it
    /// may grow by a step in an interval where the guest is at or under
    /// its baseline, and halves in the next one where it is not).
    Percent(u8),
    /// No pacing: copy as fast as the disk allows, like QEMU.
    Unpaced,
}

impl GuestShare {
    /// From QMP's `x-guest-share`: 0 is unpaced, 1..=100 a percentage.
    pub fn from_percent(p: u64) -> Option<GuestShare> {
        match p {
            0 => Some(GuestShare::Unpaced),
            1..=100 => Some(GuestShare::Percent(p as u8)),
            _ => None,
        }
    }

    /// QMP's `x-guest-share` value: 0 for unpaced, the percentage, or none
    /// for automatic.
    pub fn as_percent(self) -> Option<u8> {
        match self {
            GuestShare::Auto => None,
            GuestShare::Percent(p) => Some(p),
            GuestShare::Unpaced => Some(0),
        }
    }

    /// Why this share is not valid (`Percent` outside 1..=100).
    pub(crate) fn invalid(self) -> Option<String> {
        match self {
            GuestShare::Percent(p) if !(1..=100).contains(&p) => Some(format!(
                "Parameter 'x-guest-share' expects a percentage from 1 to 100, not {p}"
            )),
            _ => None,
        }
    }
}

/// Default dirty-tracking granularity (QEMU's default for raw images).
pub const DEFAULT_GRANULARITY: u64 = 64 << 10;
/// Default bytes in flight.
pub const DEFAULT_BUF_SIZE: u64 = 16 << 20;
/// Smallest granularity.
pub const MIN_GRANULARITY: u64 = 512;
/// Largest granularity.
pub const MAX_GRANULARITY: u64 = 64 << 20;

/// Everything `blockdev-mirror` takes, with QEMU's defaults.
#[derive(Clone, Debug)]
pub struct MirrorOptions {
    /// The job's id (QMP `job-id`; defaults to the device name there).
    pub job_id: String,
    /// What to copy.
    pub sync: SyncMode,
    /// Dirty-tracking granularity in bytes: a power of two, 512 B..=64 MiB.
    pub granularity: u64,
    /// Bytes in flight.
    pub buf_size: u64,
    /// Bytes per second, 0 = unlimited.
    pub speed: u64,
    /// Policy for read errors on the source.
    pub on_source_error: ErrorPolicy,
    /// Policy for write errors on the target.
    pub on_target_error: ErrorPolicy,
    /// Background or write-blocking.
    pub copy_mode: CopyMode,
    /// The target reads as zeroes already: holes need not be written.
    pub target_is_zero: bool,
    /// Finalize (switch over) without waiting for `finalize`.
    pub auto_finalize: bool,
    /// Disappear once concluded without waiting for `dismiss`.
    pub auto_dismiss: bool,
    /// How much of its speed a busy guest keeps beside the background copy
    /// (ringmirror's `x-guest-share`; changeable while the job runs).
    pub guest_share: GuestShare,
}

impl MirrorOptions {
    /// Defaults for a job called `job_id`.
    pub fn new(job_id: impl Into<String>) -> MirrorOptions {
        MirrorOptions {
            job_id: job_id.into(),
            sync: SyncMode::Full,
            granularity: DEFAULT_GRANULARITY,
            buf_size: DEFAULT_BUF_SIZE,
            speed: 0,
            on_source_error: ErrorPolicy::Report,
            on_target_error: ErrorPolicy::Report,
            copy_mode: CopyMode::Background,
            target_is_zero: false,
            auto_finalize: true,
            auto_dismiss: true,
            guest_share: GuestShare::Auto,
        }
    }
}
