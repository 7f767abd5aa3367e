//! The mirror job's lifecycle, after QEMU's own mirror tests (iotests 041
//! and friends): complete, cancel, pause, finalize, dismiss, wrong verbs.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringmirror_engine::{BlockDevice, BlockDeviceExt, DmaBuf};
use ringmirror_mirror::{
    CopyMode, Disk, DiskOp, GuestShare, JobError, JobEvent, JobStatus, MirrorError, MirrorOptions,
    SyncMode,
};
use ringmirror_testkit::{assert_files_equal, random_bytes};

use JobStatus::*;

#[test]
fn complete_without_guest_io_switches_to_an_identical_target() {
    let s = setup("m-complete", 24 << 20, 1);
    let (job, mut ev) = start(&s, MirrorOptions::new("job0")).unwrap();
    let ready = ev.wait("BLOCK_JOB_READY", T);
    let JobEvent::Ready { progress, .. } = ready else {
        unreachable!()
    };
    assert_eq!(progress.offset, progress.len);
    assert_eq!(progress.len, 24 << 20);
    let q = job.query();
    assert!(q.ready && q.status == Ready && q.offset == q.len, "{q:?}");
    job.complete().unwrap();
    let done = ev.wait("BLOCK_JOB_COMPLETED", T);
    assert!(
        matches!(done, JobEvent::Completed { error: None, .. }),
        "{done:?}"
    );
    ev.wait_status(Null, T);
    assert_eq!(
        ev.statuses(),
        vec![Created, Running, Ready, Waiting, Pending, Concluded, Null]
    );
    assert_eq!(
        s.disk.current().info().name,
        s.target.info().name,
        "the disk was not switched"
    );
    assert_eq!(s.disk.job_id(), None);
    assert_files_equal(&s.src_path, &s.dst_path);
    // New writes go to the target only.
    s.disk.write_at(4096, &[0x5a; 4096], false).unwrap();
    assert_eq!(
        &s.target.read_at(4096, 4096).unwrap()[..],
        &[0x5a; 4096][..]
    );
    assert_ne!(
        &s.source.read_at(4096, 4096).unwrap()[..],
        &[0x5a; 4096][..]
    );
}

#[test]
fn writes_before_and_after_ready_all_reach_the_target() {
    let s = setup("m-writes", 16 << 20, 2);
    s.disk
        .write_at(100, &random_bytes(20, 70_000), false)
        .unwrap();
    let (job, mut ev) = start(&s, MirrorOptions::new("job0")).unwrap();
    s.disk
        .write_at(5 << 20, &random_bytes(21, 1 << 20), false)
        .unwrap();
    ev.wait("BLOCK_JOB_READY", T);
    s.disk
        .write_at((16 << 20) - 777, &random_bytes(22, 777), false)
        .unwrap();
    s.disk.write_zeroes_sync(8 << 20, 3 << 20, true).unwrap();
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    assert_files_equal(&s.src_path, &s.dst_path);
}

#[test]
fn cancel_before_ready_soft_and_force_gives_cancelled() {
    for force in [false, true] {
        let s = setup("m-cancel", 32 << 20, 3);
        let mut o = MirrorOptions::new("job0");
        o.speed = 1 << 20;
        let (job, mut ev) = start(&s, o).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(job.wait_status(T, |st| st == Running), Running);
        job.cancel(force).unwrap();
        let e = ev.wait("BLOCK_JOB_CANCELLED", T);
        let JobEvent::Cancelled { progress, .. } = e else {
            unreachable!()
        };
        assert!(progress.offset < progress.len, "{progress:?}");
        ev.wait_status(Null, T);
        assert_eq!(
            ev.statuses(),
            vec![Created, Running, Aborting, Concluded, Null]
        );
        assert!(!ev.names().contains(&"BLOCK_JOB_COMPLETED".to_string()));
        assert_eq!(s.disk.current().info().name, s.source.info().name);
        assert_eq!(s.disk.job_id(), None);
    }
}

#[test]
fn soft_cancel_in_ready_completes_without_switching_and_the_target_is_a_copy() {
    let s = setup("m-softcancel", 16 << 20, 4);
    let (job, mut ev) = start(&s, MirrorOptions::new("job0")).unwrap();
    ev.wait("BLOCK_JOB_READY", T);
    s.disk
        .write_at(12345, &random_bytes(23, 100_000), false)
        .unwrap();
    job.cancel(false).unwrap();
    let done = ev.wait("BLOCK_JOB_COMPLETED", T);
    assert!(matches!(done, JobEvent::Completed { error: None, .. }));
    ev.wait_status(Null, T);
    assert!(!ev.names().contains(&"BLOCK_JOB_CANCELLED".to_string()));
    assert_eq!(
        s.disk.current().info().name,
        s.source.info().name,
        "soft cancel must not switch"
    );
    assert_files_equal(&s.src_path, &s.dst_path);
}

#[test]
fn force_cancel_in_ready_gives_cancelled() {
    let s = setup("m-forcecancel", 8 << 20, 5);
    let (job, mut ev) = start(&s, MirrorOptions::new("job0")).unwrap();
    ev.wait("BLOCK_JOB_READY", T);
    job.cancel(true).unwrap();
    ev.wait("BLOCK_JOB_CANCELLED", T);
    ev.wait_status(Null, T);
    assert_eq!(
        ev.statuses(),
        vec![Created, Running, Ready, Aborting, Concluded, Null]
    );
    assert_eq!(s.disk.current().info().name, s.source.info().name);
}

#[test]
fn pause_and_resume_in_running_and_ready_freeze_progress() {
    let s = setup("m-pause", 32 << 20, 6);
    let mut o = MirrorOptions::new("job0");
    o.speed = 4 << 20;
    let (job, mut ev) = start(&s, o).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    job.pause().unwrap();
    ev.wait_status(Paused, T);
    let q1 = job.query();
    assert!(q1.paused && q1.status == Paused, "{q1:?}");
    assert_eq!(
        job.pause().unwrap_err(),
        JobError::Refused("Job is already paused".into())
    );
    std::thread::sleep(Duration::from_millis(500));
    let q2 = job.query();
    assert_eq!(q1.offset, q2.offset, "progress moved while paused");
    job.resume().unwrap();
    assert_eq!(
        job.resume().unwrap_err(),
        JobError::Refused("Can't resume a job that was not paused".into())
    );
    job.set_speed(0).unwrap();
    ev.wait("BLOCK_JOB_READY", T);
    job.pause().unwrap();
    ev.wait_status(Standby, T);
    assert!(job.query().paused);
    job.resume().unwrap();
    ev.wait_status(Ready, T);
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    let st = ev.statuses();
    assert_eq!(
        st[..6],
        [Created, Running, Paused, Running, Ready, Standby],
        "{st:?}"
    );
    assert_files_equal(&s.src_path, &s.dst_path);
}

#[test]
fn complete_in_standby_takes_effect_on_resume() {
    let s = setup("m-standby", 4 << 20, 7);
    let (job, mut ev) = start(&s, MirrorOptions::new("job0")).unwrap();
    ev.wait("BLOCK_JOB_READY", T);
    job.pause().unwrap();
    ev.wait_status(Standby, T);
    assert_eq!(
        job.cancel(false).unwrap_err().to_string(),
        "The block job for device 'job0' is currently paused"
    );
    job.complete().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(job.status(), Standby);
    job.resume().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    assert_eq!(s.disk.current().info().name, s.target.info().name);
}

#[test]
fn set_speed_is_reported_and_limits_the_copy() {
    let s = setup("m-speed", 16 << 20, 8);
    let mut o = MirrorOptions::new("job0");
    o.speed = 2 << 20;
    let t0 = Instant::now();
    let (job, mut ev) = start(&s, o).unwrap();
    assert_eq!(job.query().speed, 2 << 20);
    std::thread::sleep(Duration::from_millis(1000));
    let q = job.query();
    // 2 MiB/s for the time that really passed (a loaded machine oversleeps),
    // plus the limiter's burst and one request: nowhere near 16 MiB.
    let allowed = (2u64 << 20) * t0.elapsed().as_millis() as u64 / 1000 + (1 << 20);
    assert!(q.offset <= allowed, "{q:?} after {:?}", t0.elapsed());
    assert!(q.offset < 16 << 20, "{q:?}");
    job.set_speed(0).unwrap();
    assert_eq!(job.query().speed, 0);
    let JobEvent::Ready { progress, .. } = ev.wait("BLOCK_JOB_READY", T) else {
        unreachable!()
    };
    assert_eq!(progress.speed, 0);
    job.cancel(false).unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
}

#[test]
fn wrong_verbs_are_refused_with_qemu_messages() {
    let s = setup("m-verbs", 16 << 20, 9);
    let mut o = MirrorOptions::new("job0");
    o.speed = 1 << 20;
    let (job, mut ev) = start(&s, o).unwrap();
    let wrong = |verb: &'static str| JobError::WrongState {
        id: "job0".into(),
        status: Running,
        verb,
    };
    assert_eq!(job.complete().unwrap_err(), wrong("complete"));
    assert_eq!(job.finalize().unwrap_err(), wrong("finalize"));
    assert_eq!(job.dismiss().unwrap_err(), wrong("dismiss"));
    assert_eq!(
        job.complete().unwrap_err().to_string(),
        "Job 'job0' in state 'running' cannot accept command verb 'complete'"
    );
    assert_eq!(
        job.change_copy_mode(CopyMode::Background),
        Ok(()),
        "changing to the current mode is a no-op"
    );
    job.change_copy_mode(CopyMode::WriteBlocking).unwrap();
    assert_eq!(
        job.change_copy_mode(CopyMode::Background)
            .unwrap_err()
            .to_string(),
        "Change to copy mode 'background' is not implemented"
    );
    job.cancel(true).unwrap();
    ev.wait_status(Null, T);
    assert!(
        matches!(job.pause(), Err(JobError::Gone(_))),
        "a gone job refuses verbs"
    );
}

#[test]
fn auto_finalize_and_auto_dismiss_off_wait_for_the_user() {
    let s = setup("m-finalize", 8 << 20, 10);
    let mut o = MirrorOptions::new("job0");
    o.auto_finalize = false;
    o.auto_dismiss = false;
    let (job, mut ev) = start(&s, o).unwrap();
    ev.wait("BLOCK_JOB_READY", T);
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_PENDING", T);
    assert_eq!(job.status(), Pending);
    // Still on the source, and still mirroring: a write now is not lost.
    assert_eq!(s.disk.current().info().name, s.source.info().name);
    let data = random_bytes(24, 50_000);
    s.disk.write_at(3 << 20, &data, false).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(job.status(), Pending);
    job.finalize().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    ev.wait_status(Concluded, T);
    assert_eq!(job.status(), Concluded);
    assert_eq!(s.disk.current().info().name, s.target.info().name);
    assert_eq!(
        &s.target.read_at(3 << 20, data.len()).unwrap()[..],
        &data[..]
    );
    job.dismiss().unwrap();
    ev.wait_status(Null, T);
    assert_eq!(
        ev.statuses(),
        vec![Created, Running, Ready, Waiting, Pending, Concluded, Null]
    );
    assert_files_equal(&s.src_path, &s.dst_path);
}

/// QEMU's mirror treats any cancel of a pending job as force (it is no
/// longer READY): CANCELLED, no switch. After complete, and after a soft
/// cancel in READY (which leaves the target a consistent copy).
#[test]
fn cancel_while_pending_aborts_without_switching() {
    let s = setup("m-cancelpending", 8 << 20, 11);
    for soft_cancelled in [false, true] {
        let mut o = MirrorOptions::new("job0");
        o.auto_finalize = false;
        let (job, mut ev) = start(&s, o).unwrap();
        ev.wait("BLOCK_JOB_READY", T);
        if soft_cancelled {
            job.cancel(false).unwrap();
        } else {
            job.complete().unwrap();
        }
        ev.wait("BLOCK_JOB_PENDING", T);
        job.cancel(false).unwrap();
        ev.wait("BLOCK_JOB_CANCELLED", T);
        ev.wait_status(Null, T);
        assert!(!ev.names().contains(&"BLOCK_JOB_COMPLETED".to_string()));
        assert_eq!(
            ev.statuses(),
            vec![Created, Running, Ready, Waiting, Pending, Aborting, Concluded, Null],
            "soft-cancelled first: {soft_cancelled}"
        );
        assert_eq!(s.disk.current().info().name, s.source.info().name);
        assert_eq!(s.disk.job_id(), None);
        assert_files_equal(&s.src_path, &s.dst_path);
    }
}

#[test]
fn sync_none_copies_only_new_writes() {
    let s = setup("m-syncnone", 8 << 20, 11);
    let mut o = MirrorOptions::new("job0");
    o.sync = SyncMode::None;
    let (job, mut ev) = start(&s, o).unwrap();
    let JobEvent::Ready { progress, .. } = ev.wait("BLOCK_JOB_READY", T) else {
        unreachable!()
    };
    assert_eq!(progress.len, 0);
    let data = random_bytes(25, 3 << 16);
    s.disk.write_at(1 << 20, &data, false).unwrap();
    job.cancel(false).unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    let t = s.target.read_at(0, 8 << 20).unwrap();
    assert_eq!(&t[1 << 20..(1 << 20) + data.len()], &data[..]);
    assert!(
        t[..1 << 20].iter().all(|&b| b == 0),
        "sync=none copied old data"
    );
}

#[test]
fn write_blocking_puts_guest_writes_on_the_target_before_acknowledging() {
    let s = setup("m-active", 8 << 20, 12);
    let mut o = MirrorOptions::new("job0");
    o.copy_mode = CopyMode::WriteBlocking;
    let (job, mut ev) = start(&s, o).unwrap();
    ev.wait("BLOCK_JOB_READY", T);
    std::thread::sleep(Duration::from_millis(50));
    assert!(job.query().actively_synced, "{:?}", job.query());
    for (i, (off, len)) in [(0u64, 4096usize), (12345, 777), (65536 * 3 + 1, 70_000)]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(30 + i as u64, len);
        s.disk.write_at(off, &data, false).unwrap();
        // Acknowledged: already on the target, without the job copying.
        assert_eq!(
            &s.target.read_at(off, len).unwrap()[..],
            &data[..],
            "write {i}"
        );
    }
    assert!(job.query().offset == job.query().len);
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    assert_files_equal(&s.src_path, &s.dst_path);
}

/// Before READY, a write-blocking request leaves out of its target write
/// the clusters still dirty at its ends, and goes to the source only when
/// it lies wholly in dirty clusters (the job copies those later anyway;
/// QEMU skips only the dirty partial clusters at the ends). Guest writes
/// are tracked in 4 KiB clusters.
#[test]
fn write_blocking_leaves_dirty_clusters_to_the_copy_before_ready() {
    const MIB: u64 = 1 << 20;
    let s = setup("m-active-dirty", 8 << 20, 13);
    let mut o = MirrorOptions::new("job0");
    o.copy_mode = CopyMode::WriteBlocking;
    // The copy crawls up from offset 0 in 4 KiB requests (a tenth of a
    // second's worth, at least a cluster); paused, it stops at `done`.
    o.speed = 64 << 10;
    let (job, mut ev) = start(&s, o).unwrap();
    let t0 = Instant::now();
    while job.query().offset < 64 << 10 {
        assert!(t0.elapsed() < T, "no progress: {:?}", job.query());
        std::thread::sleep(Duration::from_millis(5));
    }
    job.pause().unwrap();
    ev.wait_status(Paused, T);
    let done = job.query().offset;
    assert_eq!(done % 4096, 0);
    let zero = |b: &[u8]| b.iter().all(|&x| x == 0);
    // Clean clusters, partly and wholly covered: on the target at once.
    let clean = random_bytes(39, 10_000);
    s.disk.write_at(1000, &clean, false).unwrap();
    assert!(s.target.read_at(1000, clean.len()).unwrap()[..] == clean[..]);
    // Clean head, whole dirty clusters, dirty partial tail: all but the tail.
    let mixed = random_bytes(42, 6000 + 9000);
    let mixed_off = done - 6000;
    s.disk.write_at(mixed_off, &mixed, false).unwrap();
    let through = (align_down(done + 9000, 4096) - mixed_off) as usize;
    let t = s.target.read_at(mixed_off, mixed.len()).unwrap();
    assert!(
        t[..through] == mixed[..through],
        "clean head and whole clusters"
    );
    assert!(
        zero(&t[through..]),
        "the dirty partial tail reached the target"
    );
    // A dirty head (a cluster a discard has made dirty again) and a clean
    // tail: the tail only. The same for write-zeroes.
    for (i, zeroes) in [(0u64, false), (1, true)] {
        let x = (32 << 10) + i * (16 << 10);
        let old = s.target.read_at(x, 8192).unwrap();
        s.disk.discard_sync(x, 4096).unwrap();
        let data = random_bytes(44 + i, 6096);
        if zeroes {
            s.disk.write_zeroes_sync(x + 1000, 6096, false).unwrap();
        } else {
            s.disk.write_at(x + 1000, &data, false).unwrap();
        }
        let t = s.target.read_at(x, 8192).unwrap();
        assert!(
            t[1000..4096] == old[1000..4096],
            "dirty head {i} reached the target"
        );
        let tail = if zeroes {
            vec![0u8; 3000]
        } else {
            data[3096..].to_vec()
        };
        assert!(
            t[4096..7096] == tail[..],
            "clean tail {i} is not on the target"
        );
    }
    // Wholly in dirty clusters, partly and wholly covered: source only.
    let inside = random_bytes(40, 1024);
    s.disk
        .write_at(7 * MIB + 8192 + 512, &inside, false)
        .unwrap();
    let across = random_bytes(41, 8192 + 2 * 1000);
    let across_off = 7 * MIB + (256 << 10) - 1000;
    s.disk.write_at(across_off, &across, false).unwrap();
    assert!(
        zero(&s.target.read_at(7 * MIB + 8192, 4096).unwrap()),
        "a write inside a dirty cluster reached the target"
    );
    assert!(
        zero(&s.target.read_at(across_off, across.len()).unwrap()),
        "a write over dirty clusters reached the target"
    );
    job.set_speed(0).unwrap();
    job.resume().unwrap();
    ev.wait("BLOCK_JOB_READY", T);
    // From READY on, all of a write goes to both sides, even over a cluster
    // a discard has just made dirty (the job paused, so that no copy of that
    // cluster can come first).
    job.pause().unwrap();
    ev.wait_status(Standby, T);
    s.disk.discard_sync(5 * MIB, 4096).unwrap();
    let after = random_bytes(43, 4096);
    s.disk.write_at(5 * MIB, &after, false).unwrap();
    assert!(s.target.read_at(5 * MIB, 4096).unwrap()[..] == after[..]);
    job.resume().unwrap();
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    assert_files_equal(&s.src_path, &s.dst_path);
}

fn align_down(v: u64, a: u64) -> u64 {
    v - v % a
}

#[test]
fn small_and_odd_images() {
    for size in [0usize, 512, 1025 << 10, 70_000 * 3 + 512] {
        let s = setup("m-odd", size, 13);
        let (job, mut ev) = start(&s, MirrorOptions::new("job0")).unwrap();
        let JobEvent::Ready { progress, .. } = ev.wait("BLOCK_JOB_READY", T) else {
            unreachable!()
        };
        assert_eq!(progress.len, size as u64);
        if size >= 1024 {
            s.disk
                .write_at(size as u64 - 1000, &random_bytes(14, 1000), false)
                .unwrap();
        }
        job.complete().unwrap();
        ev.wait("BLOCK_JOB_COMPLETED", T);
        assert_files_equal(&s.src_path, &s.dst_path);
    }
}

#[test]
fn bad_starts_are_refused_up_front() {
    let s = setup("m-refuse", 4 << 20, 15);
    let mut o = MirrorOptions::new("job0");
    o.granularity = 1000;
    assert_eq!(
        start(&s, o.clone()).unwrap_err(),
        MirrorError::InvalidOption("Parameter 'granularity' expects a power of 2".into())
    );
    o.granularity = 256;
    assert!(start(&s, o.clone())
        .unwrap_err()
        .to_string()
        .contains("[512B, 64MB]"));
    o.granularity = 128 << 20;
    assert!(start(&s, o).is_err());
    // Source as its own target.
    let same = ringmirror_mirror::MirrorJob::start(
        &s.disk,
        s.source.clone(),
        MirrorOptions::new("j"),
        None,
    );
    assert_eq!(same.unwrap_err(), MirrorError::SameDevice);
    // A target of another size.
    let other = s.dir.join("small.img");
    ringmirror_testkit::sparse_file(&other, 1 << 20);
    let small = s
        .engine
        .open(&other, &ringmirror_engine::OpenOptions::read_write())
        .unwrap();
    let r = ringmirror_mirror::MirrorJob::start(&s.disk, small, MirrorOptions::new("j"), None);
    assert_eq!(r.unwrap_err(), MirrorError::SizeMismatch);
    // A second job, and a resize, while one runs.
    let mut o = MirrorOptions::new("job0");
    o.speed = 1 << 20;
    let (job, mut ev) = start(&s, o).unwrap();
    let other2 = s.dir.join("other.img");
    ringmirror_testkit::sparse_file(&other2, 4 << 20);
    let t2 = s
        .engine
        .open(&other2, &ringmirror_engine::OpenOptions::read_write())
        .unwrap();
    let second = ringmirror_mirror::MirrorJob::start(&s.disk, t2, MirrorOptions::new("job1"), None);
    assert!(
        matches!(second, Err(MirrorError::Busy(ref m)) if m.contains("is busy")),
        "{second:?}"
    );
    let e = s.disk.resize(8 << 20).unwrap_err();
    assert!(e.to_string().contains("busy"), "{e}");
    assert!(s.disk.check_op(DiskOp::Detach).is_err());
    job.cancel(true).unwrap();
    ev.wait_status(Null, T);
    assert!(s.disk.check_op(DiskOp::Detach).is_ok());
}

#[test]
fn embedder_policy_can_refuse_a_job() {
    let s = setup("m-policy", 1 << 20, 16);
    s.disk.set_op_policy(|op, _| {
        if op == DiskOp::StartJob {
            Err("migrations are frozen".into())
        } else {
            Ok(())
        }
    });
    let r = start(&s, MirrorOptions::new("job0"));
    assert_eq!(
        r.unwrap_err(),
        MirrorError::Busy("migrations are frozen".into())
    );
}

/// A guest that always has 16 writes in flight, each completion issuing the
/// next (as a VMM's virtio queue does), until stopped.
struct BusyGuest {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    lanes: Arc<AtomicU64>,
}

impl BusyGuest {
    fn start(disk: &Arc<Disk>, size: u64, seed: u64) -> BusyGuest {
        let g = BusyGuest {
            stop: Arc::new(AtomicBool::new(false)),
            acked: Arc::new(AtomicU64::new(0)),
            lanes: Arc::new(AtomicU64::new(16)),
        };
        for lane in 0..16 {
            Self::next(
                disk.clone(),
                size,
                seed * 1000 + lane,
                g.stop.clone(),
                g.acked.clone(),
                g.lanes.clone(),
            );
        }
        g
    }

    fn next(
        disk: Arc<Disk>,
        size: u64,
        seed: u64,
        stop: Arc<AtomicBool>,
        acked: Arc<AtomicU64>,
        lanes: Arc<AtomicU64>,
    ) {
        if stop.load(Ordering::Relaxed) {
            lanes.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let buf = DmaBuf::from_slice(&random_bytes(seed, 4096));
        let off = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) % (size / 4096) * 4096;
        let d = disk.clone();
        disk.write(
            off,
            buf,
            false,
            Box::new(move |_buf, r| {
                r.expect("guest write failed");
                acked.fetch_add(1, Ordering::Relaxed);
                Self::next(d, size, seed.wrapping_add(16), stop, acked, lanes);
            }),
        );
    }

    /// Stop issuing and wait until every lane's last write has completed.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + T;
        while self.lanes.load(Ordering::Acquire) > 0 {
            assert!(Instant::now() < deadline, "guest writes never finished");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn force_cancel_under_a_busy_guest_ends_promptly() {
    // A guest at QD16 never has zero requests in flight: the cancel must not
    // wait for such a moment (it used to wait until the load stopped).
    for (ready, mode) in [
        (false, CopyMode::Background),
        (true, CopyMode::Background),
        (false, CopyMode::WriteBlocking),
        (true, CopyMode::WriteBlocking),
    ] {
        let size = 16u64 << 20;
        let s = setup("m-busycancel", size as usize, 6);
        let mut o = MirrorOptions::new("job0");
        o.copy_mode = mode;
        if !ready {
            o.speed = 1 << 20;
        }
        let (job, mut ev) = start(&s, o).unwrap();
        let guest = BusyGuest::start(&s.disk, size, 7);
        if ready {
            ev.wait("BLOCK_JOB_READY", T);
        } else {
            std::thread::sleep(Duration::from_millis(300));
        }
        let before = guest.acked.load(Ordering::Relaxed);
        let t = Instant::now();
        job.cancel(true).unwrap();
        ev.wait("BLOCK_JOB_CANCELLED", T);
        let took = t.elapsed();
        ev.wait_status(Null, T);
        // The guest kept going through the cancel, and goes on once the job
        // is gone (the gate a write-blocking abort closes is open again).
        // Progress is awaited rather than sampled after a fixed sleep: on a
        // shared CI disk one write can take hundreds of milliseconds.
        let progressed = |since: u64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let now = guest.acked.load(Ordering::Relaxed);
                if now > since || Instant::now() >= deadline {
                    return now;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let through = progressed(before);
        let at_end = guest.acked.load(Ordering::Relaxed);
        let after = progressed(at_end);
        guest.stop();
        // Milliseconds here; it used to wait for the load to stop. The
        // bound leaves room for a slow shared disk.
        assert!(
            took < Duration::from_secs(15),
            "cancel took {took:?} under a busy guest ({mode:?}, ready {ready})"
        );
        assert!(
            through > before && after > at_end,
            "the guest stalled ({mode:?}, ready {ready}, cancel took {took:?}): \
             {before} acked before the cancel, {through} after it, \
             then no progress in 10 s from {at_end} ({after})"
        );
        assert_eq!(s.disk.job_id(), None);
        assert_eq!(s.disk.current().info().name, s.source.info().name);
        let expect = if ready {
            vec![Created, Running, Ready, Aborting, Concluded, Null]
        } else {
            vec![Created, Running, Aborting, Concluded, Null]
        };
        assert_eq!(ev.statuses(), expect, "{mode:?}");
    }
}

#[test]
fn guest_share_is_checked_changed_and_takes_effect() {
    let size = 16u64 << 20;
    let s = setup("m-share", size as usize, 8);
    for p in [0u8, 101] {
        let mut o = MirrorOptions::new("job0");
        o.guest_share = GuestShare::Percent(p);
        assert_eq!(
            start(&s, o).unwrap_err(),
            MirrorError::InvalidOption(format!(
                "Parameter 'x-guest-share' expects a percentage from 1 to 100, not {p}"
            ))
        );
        assert_eq!(s.disk.job_id(), None, "a refused job left the disk busy");
    }
    // Unpaced, under a guest that never idles, held off READY by a speed.
    let mut o = MirrorOptions::new("job0");
    o.guest_share = GuestShare::Unpaced;
    o.speed = 1 << 20;
    let (job, mut ev) = start(&s, o).unwrap();
    assert_eq!(job.guest_share(), GuestShare::Unpaced);
    assert_eq!(job.query().guest_share, GuestShare::Unpaced);
    let guest = BusyGuest::start(&s.disk, size, 9);
    let unpaced = |job: &ringmirror_mirror::MirrorJob| {
        let r = job.rates();
        (r.guest_slowdown_allowed, r.paced_limit_bytes_per_sec)
    };
    // Long enough for a probe and pacing, were the pacer on (4 x 100 ms).
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        assert_eq!(unpaced(&job), (None, 0), "the pacer ran while off");
        std::thread::sleep(Duration::from_millis(5));
    }
    // 40%: the guest's latency may rise 2.5x; the pacer learns the busy
    // guest's baseline and paces the copy.
    job.set_guest_share(GuestShare::Percent(40)).unwrap();
    assert_eq!(job.guest_share(), GuestShare::Percent(40));
    assert_eq!(job.rates().guest_slowdown_allowed, Some(2.5));
    let deadline = Instant::now() + T;
    while job.rates().paced_limit_bytes_per_sec == 0 {
        assert!(Instant::now() < deadline, "never paced: {:?}", job.rates());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        job.set_guest_share(GuestShare::Percent(0)).unwrap_err(),
        JobError::Refused(
            "Parameter 'x-guest-share' expects a percentage from 1 to 100, not 0".into()
        )
    );
    assert_eq!(
        job.guest_share(),
        GuestShare::Percent(40),
        "a refused share stuck"
    );
    // Off again: at once, no limit.
    job.set_guest_share(GuestShare::Unpaced).unwrap();
    assert_eq!(unpaced(&job), (None, 0));
    job.set_guest_share(GuestShare::Auto).unwrap();
    assert_eq!(job.guest_share(), GuestShare::Auto);
    assert_eq!(job.rates().guest_slowdown_allowed, Some(1.15));
    job.set_speed(0).unwrap();
    ev.wait("BLOCK_JOB_READY", T);
    // Paused (standby), the share can still be changed, as the speed can.
    job.pause().unwrap();
    ev.wait_status(Standby, T);
    job.set_guest_share(GuestShare::Percent(80)).unwrap();
    assert_eq!(job.rates().guest_slowdown_allowed, Some(1.25));
    job.resume().unwrap();
    guest.stop();
    job.complete().unwrap();
    let done = ev.wait("BLOCK_JOB_COMPLETED", T);
    assert!(
        matches!(done, JobEvent::Completed { error: None, .. }),
        "{done:?}"
    );
    ev.wait_status(Null, T);
    assert_files_equal(&s.src_path, &s.dst_path);
    assert_eq!(
        job.set_guest_share(GuestShare::Auto).unwrap_err(),
        JobError::Gone("job0".into())
    );
}
