//! Error policies, with a fault-injecting device between the job and the
//! real files: seeded EIO and ENOSPC, added latency.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringmirror_engine::{BlockDevice, OpenOptions};
use ringmirror_mirror::{
    Disk, ErrorAction, ErrorPolicy, IoOperation, JobEvent, JobStatus, MirrorJob, MirrorOptions,
};
use ringmirror_testkit::{assert_files_equal, FaultDevice, FaultOp};

struct Faulty {
    s: Setup,
    src: Arc<FaultDevice>,
    dst: Arc<FaultDevice>,
    disk: Arc<Disk>,
}

fn faulty(tag: &str, size: usize) -> Faulty {
    let s = setup(tag, size, 40);
    let src = FaultDevice::new(
        s.engine
            .open(&s.src_path, &OpenOptions::read_write())
            .unwrap(),
        1,
    );
    let dst = FaultDevice::new(
        s.engine
            .open(&s.dst_path, &OpenOptions::read_write())
            .unwrap(),
        2,
    );
    let disk = Disk::new("disk0", src.clone());
    Faulty { s, src, dst, disk }
}

fn start_on(f: &Faulty, o: MirrorOptions) -> (MirrorJob, Events) {
    let (sink, ev) = Events::sink();
    let job = MirrorJob::start(
        &f.disk,
        f.dst.clone() as Arc<dyn BlockDevice>,
        o,
        Some(sink),
    )
    .unwrap();
    (job, ev)
}

fn errors(ev: &Events) -> Vec<(IoOperation, ErrorAction)> {
    ev.seen
        .iter()
        .filter_map(|e| match e {
            JobEvent::Error {
                operation, action, ..
            } => Some((*operation, *action)),
            _ => None,
        })
        .collect()
}

#[test]
fn report_fails_the_job_with_the_error() {
    let f = faulty("e-report", 8 << 20);
    f.dst
        .fail(FaultOp::Write, libc::EIO, 1.0, 3, 2 << 20, 3 << 20);
    let (_job, mut ev) = start_on(&f, MirrorOptions::new("job0"));
    let done = ev.wait("BLOCK_JOB_COMPLETED", T);
    let JobEvent::Completed { error, .. } = done else {
        unreachable!()
    };
    assert_eq!(error.as_deref(), Some("Input/output error"));
    ev.wait_status(JobStatus::Null, T);
    let errs = errors(&ev);
    assert!(
        !errs.is_empty()
            && errs
                .iter()
                .all(|e| *e == (IoOperation::Write, ErrorAction::Report)),
        "{errs:?}"
    );
    assert!(ev.statuses().contains(&JobStatus::Aborting));
    assert_eq!(f.disk.job_id(), None);
    assert_eq!(f.disk.current().info().name, f.src.info().name);
}

#[test]
fn source_read_errors_follow_on_source_error() {
    let f = faulty("e-source", 8 << 20);
    f.src.fail(FaultOp::Read, libc::EIO, 1.0, 2, 0, 1 << 20);
    let mut o = MirrorOptions::new("job0");
    o.on_source_error = ErrorPolicy::Ignore;
    o.on_target_error = ErrorPolicy::Report;
    let (job, mut ev) = start_on(&f, o);
    ev.wait("BLOCK_JOB_READY", T);
    assert_eq!(
        errors(&ev),
        vec![(IoOperation::Read, ErrorAction::Ignore); 2]
    );
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    assert_files_equal(&f.s.src_path, &f.s.dst_path);
}

#[test]
fn ignore_retries_and_completes() {
    let f = faulty("e-ignore", 8 << 20);
    // Seeded: about a third of the target writes fail, 20 times in all.
    f.dst.fail(FaultOp::Write, libc::EIO, 0.3, 20, 0, u64::MAX);
    let mut o = MirrorOptions::new("job0");
    o.on_target_error = ErrorPolicy::Ignore;
    // 64 KiB requests (buf-size / 4): 128 writes, enough for 20 failures.
    o.buf_size = 256 << 10;
    let (job, mut ev) = start_on(&f, o);
    ev.wait("BLOCK_JOB_READY", T);
    assert_eq!(f.dst.injected(), 20);
    let errs = errors(&ev);
    assert_eq!(errs.len(), 20, "{errs:?}");
    assert!(errs
        .iter()
        .all(|e| *e == (IoOperation::Write, ErrorAction::Ignore)));
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    assert_files_equal(&f.s.src_path, &f.s.dst_path);
}

#[test]
fn stop_pauses_with_io_status_and_resume_continues() {
    for (errno, io_status, policy) in [
        (libc::EIO, "failed", ErrorPolicy::Stop),
        (libc::ENOSPC, "nospace", ErrorPolicy::Stop),
        (libc::ENOSPC, "nospace", ErrorPolicy::Enospc),
    ] {
        let f = faulty("e-stop", 8 << 20);
        f.dst
            .fail(FaultOp::Write, errno, 1.0, u64::MAX, 4 << 20, 5 << 20);
        let mut o = MirrorOptions::new("job0");
        o.on_target_error = policy;
        let (job, mut ev) = start_on(&f, o);
        ev.wait("BLOCK_JOB_ERROR", T);
        ev.wait_status(JobStatus::Paused, T);
        let q = job.query();
        assert!(
            q.paused && q.io_status == io_status && q.status == JobStatus::Paused,
            "{q:?}"
        );
        assert!(errors(&ev).iter().all(|e| e.1 == ErrorAction::Stop));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            job.status(),
            JobStatus::Paused,
            "a stopped job stays paused"
        );
        f.dst.heal();
        job.resume().unwrap();
        ev.wait("BLOCK_JOB_READY", T);
        assert_eq!(job.query().io_status, "ok");
        job.complete().unwrap();
        ev.wait("BLOCK_JOB_COMPLETED", T);
        assert_files_equal(&f.s.src_path, &f.s.dst_path);
    }
}

#[test]
fn enospc_reports_other_errors() {
    let f = faulty("e-enospc", 4 << 20);
    f.dst
        .fail(FaultOp::Write, libc::EIO, 1.0, u64::MAX, 0, u64::MAX);
    let mut o = MirrorOptions::new("job0");
    o.on_target_error = ErrorPolicy::Enospc;
    let (_job, mut ev) = start_on(&f, o);
    let JobEvent::Completed { error, .. } = ev.wait("BLOCK_JOB_COMPLETED", T) else {
        unreachable!()
    };
    assert_eq!(error.as_deref(), Some("Input/output error"));
    assert!(errors(&ev).iter().all(|e| e.1 == ErrorAction::Report));
}

/// A pending job (auto-finalize off) keeps mirroring, but cannot pause:
/// resume is refused in pending. A target error that would stop it fails
/// it instead (BLOCK_JOB_ERROR action report, COMPLETED with the error, no
/// switch), so finalize ends instead of waiting forever.
#[test]
fn stop_while_pending_fails_the_job() {
    let f = faulty("e-pending", 4 << 20);
    let mut o = MirrorOptions::new("job0");
    o.on_target_error = ErrorPolicy::Stop;
    o.auto_finalize = false;
    let (job, mut ev) = start_on(&f, o);
    ev.wait("BLOCK_JOB_READY", T);
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_PENDING", T);
    f.dst
        .fail(FaultOp::Write, libc::EIO, 1.0, u64::MAX, 0, u64::MAX);
    use ringmirror_engine::BlockDeviceExt;
    f.disk.write_at(8192, &[7u8; 8192], false).unwrap();
    job.finalize().unwrap();
    let JobEvent::Completed { error, .. } = ev.wait("BLOCK_JOB_COMPLETED", T) else {
        unreachable!()
    };
    assert_eq!(error.as_deref(), Some("Input/output error"));
    assert_eq!(errors(&ev)[0], (IoOperation::Write, ErrorAction::Report));
    ev.wait_status(JobStatus::Null, T);
    assert_eq!(f.disk.current().info().name, f.src.info().name);
    assert_eq!(f.disk.job_id(), None);
}

#[test]
fn errors_after_ready_keep_the_job_ready() {
    let f = faulty("e-sticky", 4 << 20);
    let mut o = MirrorOptions::new("job0");
    o.on_target_error = ErrorPolicy::Ignore;
    let (job, mut ev) = start_on(&f, o);
    ev.wait("BLOCK_JOB_READY", T);
    f.dst.fail(FaultOp::Write, libc::EIO, 1.0, 3, 0, u64::MAX);
    use ringmirror_engine::BlockDeviceExt;
    f.disk.write_at(8192, &[7u8; 8192], false).unwrap();
    ev.wait("BLOCK_JOB_ERROR", T);
    std::thread::sleep(Duration::from_millis(500));
    let q = job.query();
    assert!(
        q.ready && q.status == JobStatus::Ready,
        "READY is sticky: {q:?}"
    );
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    assert_files_equal(&f.s.src_path, &f.s.dst_path);
}

#[test]
fn force_cancel_ends_a_job_stuck_on_a_slow_failing_target_promptly() {
    let f = faulty("e-stuck", 8 << 20);
    f.dst.set_latency(Duration::from_millis(300));
    f.dst
        .fail(FaultOp::Write, libc::EIO, 1.0, u64::MAX, 0, u64::MAX);
    let mut o = MirrorOptions::new("job0");
    o.on_target_error = ErrorPolicy::Ignore;
    let (job, mut ev) = start_on(&f, o);
    ev.wait("BLOCK_JOB_ERROR", T);
    let t = std::time::Instant::now();
    job.cancel(true).unwrap();
    ev.wait("BLOCK_JOB_CANCELLED", T);
    // In-flight requests finish (300 ms each), nothing new starts: about
    // a second; the bound leaves room for a slow shared disk and fails on
    // retrying until the test's 60 s timeout.
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "cancel took {:?}",
        t.elapsed()
    );
    ev.wait_status(JobStatus::Null, T);
}

#[test]
fn write_blocking_target_errors_follow_the_policy() {
    let f = faulty("e-active", 4 << 20);
    let mut o = MirrorOptions::new("job0");
    o.copy_mode = ringmirror_mirror::CopyMode::WriteBlocking;
    o.on_target_error = ErrorPolicy::Ignore;
    let (job, mut ev) = start_on(&f, o);
    ev.wait("BLOCK_JOB_READY", T);
    f.dst.fail(FaultOp::Write, libc::EIO, 1.0, 1, 0, u64::MAX);
    use ringmirror_engine::BlockDeviceExt;
    // The guest write succeeds (the source has it); the job copies it later.
    f.disk.write_at(65536, &[9u8; 4096], false).unwrap();
    ev.wait("BLOCK_JOB_ERROR", T);
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    assert_files_equal(&f.s.src_path, &f.s.dst_path);
}

/// A discard must not slip in between the halves of a write-blocking write
/// to the same cluster: with the target slow, the write is on the source
/// and still waiting for the target when the discard lands on the source.
/// The discard marks the cluster; the write, completing after, clears the
/// clusters it covered. Unordered, that clear would hide the discard and
/// the target would keep the write's bytes where the source has zeroes.
/// The discard therefore takes the cluster lock in write-blocking mode.
#[test]
fn write_blocking_discard_waits_for_a_write_to_the_same_cluster() {
    use ringmirror_engine::BlockDeviceExt;
    let f = faulty("e-discard", 4 << 20);
    let mut o = MirrorOptions::new("job0");
    o.copy_mode = ringmirror_mirror::CopyMode::WriteBlocking;
    let (job, mut ev) = start_on(&f, o);
    ev.wait("BLOCK_JOB_READY", T);
    f.dst.set_latency(Duration::from_millis(300));
    let disk = f.disk.clone();
    let writer = std::thread::spawn(move || disk.write_at(1 << 20, &[0x5a; 8192], false));
    std::thread::sleep(Duration::from_millis(100));
    f.disk.discard_sync(1 << 20, 8192).unwrap();
    writer.join().unwrap().unwrap();
    f.dst.set_latency(Duration::ZERO);
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    assert_files_equal(&f.s.src_path, &f.s.dst_path);
}

/// A background write still in flight when the job switches to
/// write-blocking may land on the source after a write-blocking write to
/// the same cluster and mark it before that write completes: the latter
/// must then not clear the cluster (the target would keep its bytes where
/// the source has the background write's). The order is made, not timed:
/// the background write is parked before it reaches the source, the
/// write-blocking write's target half is parked until the background write
/// has landed and completed.
#[test]
fn background_write_in_flight_across_the_switch_is_not_lost() {
    use ringmirror_engine::BlockDeviceExt;
    let f = faulty("e-switch", 4 << 20);
    let (job, mut ev) = start_on(&f, MirrorOptions::new("job0"));
    ev.wait("BLOCK_JOB_READY", T);
    let until = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + T;
        while !cond() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    f.src.hold_writes();
    let disk = f.disk.clone();
    let background = std::thread::spawn(move || disk.write_at(1 << 20, &[0xb0; 8192], false));
    until("the background write parked", &|| f.src.held_writes() == 1);
    f.src.pass_writes();
    job.change_copy_mode(ringmirror_mirror::CopyMode::WriteBlocking)
        .unwrap();
    f.dst.hold_writes();
    let disk = f.disk.clone();
    let blocking = std::thread::spawn(move || disk.write_at(1 << 20, &[0x77; 8192], false));
    // Its source half lands, its target half waits.
    until("the write-blocking write on the source", &|| {
        f.src.read_at(1 << 20, 1).unwrap()[0] == 0x77
    });
    until("its target half parked", &|| f.dst.held_writes() >= 1);
    assert!(
        !blocking.is_finished(),
        "acknowledged before its target half"
    );
    // Now the background write lands (after it) and completes.
    f.src.release_held();
    background.join().unwrap().unwrap();
    f.dst.pass_writes();
    f.dst.release_held();
    blocking.join().unwrap().unwrap();
    assert_eq!(
        f.disk.read_at(1 << 20, 1).unwrap()[0],
        0xb0,
        "the background write landed last"
    );
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    assert_files_equal(&f.s.src_path, &f.s.dst_path);
}
