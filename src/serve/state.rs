//! The daemon's state: block nodes, the disks (backends) guests and jobs
//! use, NBD exports, and jobs. Mirrors QEMU's model closely enough that
//! qemu-storage-daemon's QMP commands mean the same thing here:
//!
//! ```text
//!   node "src" (file) ──dev──┐
//!                            ├─ Disk (backend) ◄── export "exp0" (NBD)
//!   node "tgt" (file) ──dev──┘        ▲
//!                                     └── mirror job "job0" (device=src, target=tgt)
//! ```
//!
//! A node is an open device. A [`Disk`] is created for a node the first
//! time an export or a job needs one; it is what the guest's I/O goes
//! through. After a completed mirror the disk is backed by the target
//! node's device, so the export "moves" to the target node, as in QEMU.
//!
//! Locking: one mutex over the state. It is never held while calling into
//! a job (verbs wait for the job's thread, whose events are emitted
//! without touching this state), so no lock cycle exists.

use std::collections::BTreeMap;
use std::sync::Arc;

use ringmirror_engine::{BlockDevice, DeviceOpener};
use ringmirror_mirror::{Disk, JobEvent, JobStatus, MirrorJob};
use ringmirror_nbd::NbdServer;
use ringmirror_qmp::QmpError;

/// One block node.
pub struct Node {
    pub name: String,
    /// QMP driver name: file, host_device, raw, nbd.
    pub driver: &'static str,
    /// What it opens: a path, or an NBD URI.
    pub filename: String,
    pub dev: Arc<dyn BlockDevice>,
    pub read_only: bool,
    pub cache_direct: bool,
    pub no_flush: bool,
    /// A raw format node's protocol child.
    pub child: Option<String>,
}

/// An NBD export.
pub struct Export {
    pub id: String,
    pub name: String,
    pub disk: Arc<Disk>,
}

/// A job and what it works on.
pub struct JobEntry {
    pub job: MirrorJob,
    pub disk: Arc<Disk>,
    pub target_node: String,
    /// What the job's event sink has emitted so far.
    pub emitted: Arc<Emitted>,
}

/// The last job status (and whether BLOCK_JOB_READY) the job's event sink
/// has emitted. A command whose reply QSD sends only after the events it
/// causes (blockdev-mirror, job-finalize) waits on this: the job's own
/// status is published before its events go out.
#[derive(Default)]
pub struct Emitted {
    seen: parking_lot::Mutex<(Option<JobStatus>, bool)>,
    changed: parking_lot::Condvar,
}

impl Emitted {
    /// Called by the sink after emitting `ev`.
    pub fn note(&self, ev: &JobEvent) {
        let mut g = self.seen.lock();
        match ev {
            JobEvent::StatusChange { status, .. } => g.0 = Some(*status),
            JobEvent::Ready { .. } => g.1 = true,
            _ => return,
        }
        self.changed.notify_all();
    }

    /// Wait (up to 30 s, only against a stuck job) until `pred(last status,
    /// READY emitted)` holds.
    pub fn wait(&self, pred: impl Fn(Option<JobStatus>, bool) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut g = self.seen.lock();
        while !pred(g.0, g.1) {
            if self.changed.wait_until(&mut g, deadline).timed_out() {
                return;
            }
        }
    }
}

/// Everything behind the daemon's lock.
pub struct State {
    pub opener: DeviceOpener,
    pub nodes: BTreeMap<String, Node>,
    pub disks: Vec<Arc<Disk>>,
    pub exports: BTreeMap<String, Export>,
    pub nbd: Option<NbdServer>,
    pub jobs: BTreeMap<String, JobEntry>,
    pub implicit_nodes: u64,
}

impl State {
    pub fn new(opener: DeviceOpener) -> State {
        State {
            opener,
            nodes: BTreeMap::new(),
            disks: Vec::new(),
            exports: BTreeMap::new(),
            nbd: None,
            jobs: BTreeMap::new(),
            implicit_nodes: 0,
        }
    }

    /// Drop finished jobs and disks nobody uses any more.
    pub fn refresh(&mut self) {
        self.jobs
            .retain(|_, j| j.job.status() != ringmirror_mirror::JobStatus::Null);
        let used: Vec<Arc<Disk>> = self
            .exports
            .values()
            .map(|e| e.disk.clone())
            .chain(self.jobs.values().map(|j| j.disk.clone()))
            .collect();
        self.disks
            .retain(|d| used.iter().any(|u| Arc::ptr_eq(u, d)));
    }

    /// The node a disk is backed by now.
    pub fn node_of_disk(&self, disk: &Disk) -> String {
        let dev = disk.current();
        // Prefer the format node over its protocol child, as QEMU reports it.
        self.nodes
            .values()
            .find(|n| n.child.is_some() && Arc::ptr_eq(&n.dev, &dev))
            .or_else(|| self.nodes.values().find(|n| Arc::ptr_eq(&n.dev, &dev)))
            .map(|n| n.name.clone())
            .unwrap_or_else(|| disk.name().to_string())
    }

    /// Look up a node: QEMU's wording when it does not exist.
    pub fn node(&self, name: &str) -> Result<&Node, QmpError> {
        self.nodes.get(name).ok_or_else(|| {
            QmpError::generic(format!(
                "Cannot find device='{name}' nor node-name='{name}'"
            ))
        })
    }

    /// The disk backed by `node` now, creating it on first use.
    pub fn disk_for(&mut self, node: &str) -> Result<Arc<Disk>, QmpError> {
        let dev = self.node(node)?.dev.clone();
        if let Some(d) = self.disks.iter().find(|d| Arc::ptr_eq(&d.current(), &dev)) {
            return Ok(d.clone());
        }
        let d = Disk::new(node, dev);
        self.disks.push(d.clone());
        Ok(d)
    }

    /// Who uses `node`, if anyone (for blockdev-del and mirror targets).
    pub fn node_user(&self, node: &str) -> Option<String> {
        let n = self.nodes.get(node)?;
        for j in self.jobs.values() {
            if j.target_node == node || Arc::ptr_eq(&j.disk.current(), &n.dev) {
                return Some(format!(
                    "Node '{node}' is busy: block device is in use by block job: mirror"
                ));
            }
        }
        for e in self.exports.values() {
            if Arc::ptr_eq(&e.disk.current(), &n.dev) {
                return Some(format!("Node '{node}' is in use by export '{}'", e.id));
            }
        }
        for other in self.nodes.values() {
            if other.child.as_deref() == Some(node) {
                return Some(format!("Node '{node}' is in use by node '{}'", other.name));
            }
        }
        None
    }
}
