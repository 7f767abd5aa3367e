//! Job states and verbs, with QEMU's names, its transition table and its
//! table of which verb each state accepts (`job.c`: `JobSTT`,
//! `JobVerbTable`).

use std::fmt;

/// A job's status (QMP `JobStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Created, not yet started.
    Created,
    /// Copying (phase 1).
    Running,
    /// Paused before READY.
    Paused,
    /// In sync (phase 2).
    Ready,
    /// Paused while READY.
    Standby,
    /// Done with its work, waiting for others in its transaction.
    Waiting,
    /// Waiting to be finalized (`auto-finalize: false`).
    Pending,
    /// Cancelling or failing.
    Aborting,
    /// Finished; waiting to be dismissed (`auto-dismiss: false`).
    Concluded,
    /// Gone.
    Null,
}

impl JobStatus {
    /// The QMP name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Created => "created",
            JobStatus::Running => "running",
            JobStatus::Paused => "paused",
            JobStatus::Ready => "ready",
            JobStatus::Standby => "standby",
            JobStatus::Waiting => "waiting",
            JobStatus::Pending => "pending",
            JobStatus::Aborting => "aborting",
            JobStatus::Concluded => "concluded",
            JobStatus::Null => "null",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether QEMU's transition table allows `self → to`.
    pub fn can_go_to(self, to: JobStatus) -> bool {
        // created, running, paused, ready, standby, waiting, pending, aborting, concluded, null
        const STT: [[u8; 10]; 10] = [
            [0, 1, 0, 0, 0, 0, 0, 1, 0, 1], // created
            [0, 0, 1, 1, 0, 1, 0, 1, 0, 0], // running
            [0, 1, 0, 0, 0, 0, 0, 0, 0, 0], // paused
            [0, 0, 0, 0, 1, 1, 0, 1, 0, 0], // ready
            [0, 0, 0, 1, 0, 0, 0, 0, 0, 0], // standby
            [0, 0, 0, 0, 0, 0, 1, 1, 0, 0], // waiting
            [0, 0, 0, 0, 0, 0, 0, 1, 1, 0], // pending
            [0, 0, 0, 0, 0, 0, 0, 1, 1, 0], // aborting
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 1], // concluded
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // null
        ];
        STT[self.index()][to.index()] == 1
    }

    /// Whether this state accepts `verb` (before verb-specific checks such
    /// as "already paused").
    pub fn accepts(self, verb: Verb) -> bool {
        use JobStatus::*;
        match verb {
            Verb::Cancel => matches!(
                self,
                Created | Running | Paused | Ready | Standby | Waiting | Pending
            ),
            Verb::Pause | Verb::Resume | Verb::SetSpeed | Verb::Change => {
                matches!(self, Created | Running | Paused | Ready | Standby)
            }
            Verb::Complete => matches!(self, Ready | Standby),
            Verb::Finalize => matches!(self, Pending),
            Verb::Dismiss => matches!(self, Concluded),
        }
    }

    /// True once the job has stopped doing I/O for good.
    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Concluded | JobStatus::Null)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command on a job (QMP `JobVerb`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// cancel
    Cancel,
    /// pause
    Pause,
    /// resume
    Resume,
    /// set-speed
    SetSpeed,
    /// complete
    Complete,
    /// finalize
    Finalize,
    /// dismiss
    Dismiss,
    /// change
    Change,
}

impl Verb {
    /// The QMP name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Cancel => "cancel",
            Verb::Pause => "pause",
            Verb::Resume => "resume",
            Verb::SetSpeed => "set-speed",
            Verb::Complete => "complete",
            Verb::Finalize => "finalize",
            Verb::Dismiss => "dismiss",
            Verb::Change => "change",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycles_follow_the_table() {
        use JobStatus::*;
        for path in [
            &[Created, Running, Ready, Waiting, Pending, Concluded, Null][..],
            &[
                Created, Running, Paused, Running, Ready, Standby, Ready, Aborting, Concluded, Null,
            ],
            &[Created, Running, Aborting, Concluded, Null],
            &[Created, Running, Waiting, Pending, Aborting, Concluded],
        ] {
            for w in path.windows(2) {
                assert!(w[0].can_go_to(w[1]), "{} -> {}", w[0], w[1]);
            }
        }
        assert!(!Ready.can_go_to(Running));
        assert!(!Concluded.can_go_to(Running));
        assert!(Ready.accepts(Verb::Complete));
        assert!(!Running.accepts(Verb::Complete));
        assert!(!Running.accepts(Verb::Dismiss));
        assert!(Pending.accepts(Verb::Finalize));
    }
}
