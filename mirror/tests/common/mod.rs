//! Shared set-up for the mirror tests: real files on the real disk, opened
//! with O_DIRECT through the io_uring engine.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ringmirror_engine::{BlockDevice, BlockDeviceExt, Engine, EngineConfig, OpenOptions};
use ringmirror_mirror::{
    Disk, EventSink, JobEvent, JobStatus, MirrorError, MirrorJob, MirrorOptions,
};
use ringmirror_testkit::{random_bytes, sparse_file, write_file, ScratchDir};

pub struct Setup {
    pub dir: ScratchDir,
    pub engine: Engine,
    pub src_path: PathBuf,
    pub dst_path: PathBuf,
    pub source: Arc<dyn BlockDevice>,
    pub disk: Arc<Disk>,
    pub target: Arc<dyn BlockDevice>,
}

pub fn engine() -> Engine {
    Engine::new(EngineConfig {
        threads: 2,
        ..EngineConfig::default()
    })
    .expect("io_uring engine")
}

/// A source of `size` random bytes (seeded) and a fresh sparse target.
pub fn setup(tag: &str, size: usize, seed: u64) -> Setup {
    let dir = ScratchDir::new(tag);
    let (src_path, dst_path) = (dir.join("src.img"), dir.join("dst.img"));
    write_file(&src_path, &random_bytes(seed, size));
    sparse_file(&dst_path, size as u64);
    let engine = engine();
    let source: Arc<dyn BlockDevice> = engine.open(&src_path, &OpenOptions::read_write()).unwrap();
    let target: Arc<dyn BlockDevice> = engine.open(&dst_path, &OpenOptions::read_write()).unwrap();
    let disk = Disk::new("disk0", source.clone());
    Setup {
        dir,
        engine,
        src_path,
        dst_path,
        source,
        disk,
        target,
    }
}

/// Every event of a job, in order, as it happened.
#[derive(Debug)]
pub struct Events {
    rx: Receiver<JobEvent>,
    pub seen: Vec<JobEvent>,
}

impl Events {
    pub fn sink() -> (EventSink, Events) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            Arc::new(move |e: &JobEvent| {
                let _ = tx.send(e.clone());
            }),
            Events {
                rx,
                seen: Vec::new(),
            },
        )
    }

    /// Wait for the next event called `name` (others are recorded on the way).
    pub fn wait(&mut self, name: &str, timeout: Duration) -> JobEvent {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => {
                    self.seen.push(e.clone());
                    if e.name() == name {
                        return e;
                    }
                }
                Err(_) => panic!(
                    "no {name} within {timeout:?}; events so far: {:?}",
                    self.names()
                ),
            }
        }
    }

    /// Wait for `JOB_STATUS_CHANGE` to `status`.
    pub fn wait_status(&mut self, status: JobStatus, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        if self.statuses().contains(&status) {
            return;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => {
                    self.seen.push(e.clone());
                    if matches!(e, JobEvent::StatusChange { status: s, .. } if s == status) {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no status {status} within {timeout:?}; events so far: {:?}",
                    self.names()
                ),
            }
        }
    }

    /// Collect whatever else arrives within `d`.
    pub fn settle(&mut self, d: Duration) {
        while let Ok(e) = self.rx.recv_timeout(d) {
            self.seen.push(e);
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|e| match e {
                JobEvent::StatusChange { status, .. } => format!("status:{status}"),
                other => other.name().to_string(),
            })
            .collect()
    }

    pub fn statuses(&self) -> Vec<JobStatus> {
        self.seen
            .iter()
            .filter_map(|e| match e {
                JobEvent::StatusChange { status, .. } => Some(*status),
                _ => None,
            })
            .collect()
    }
}

pub fn start(s: &Setup, opts: MirrorOptions) -> Result<(MirrorJob, Events), MirrorError> {
    let (sink, events) = Events::sink();
    MirrorJob::start(&s.disk, s.target.clone(), opts, Some(sink)).map(|j| (j, events))
}

pub const T: Duration = Duration::from_secs(60);

/// Read a whole device.
pub fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    let size = dev.size() as usize;
    let mut out = Vec::with_capacity(size);
    let mut off = 0;
    while off < size {
        let n = (size - off).min(4 << 20);
        out.extend_from_slice(&dev.read_at(off as u64, n).unwrap());
        off += n;
    }
    out
}
