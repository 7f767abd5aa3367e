//! The no-lost-write test: guest threads write random data at random
//! offsets and sizes (aligned and not) through the disk handle before,
//! during and after READY, and across the switch; every acknowledged write
//! must be on the target afterwards, byte for byte.
//!
//! Threads own disjoint 100 KiB stripes (which share 64 KiB clusters, so
//! copies race with writes from several threads on the same cluster), and
//! each writes synchronously, so the expected image is well defined: the
//! initial bytes with every thread's writes applied in its own order.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use ringmirror_engine::BlockDeviceExt;
use ringmirror_mirror::{CopyMode, Disk, JobEvent, MirrorOptions};
use ringmirror_testkit::random_bytes;

const SIZE: usize = 16 << 20;
const STRIPE: u64 = 100 << 10;
const THREADS: u64 = 5;

struct Writers {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
    acked: Arc<AtomicU64>,
}

/// Start writer threads; each applies its acknowledged writes to `model`.
fn writers(disk: &Arc<Disk>, model: &Arc<Mutex<Vec<u8>>>, seed: u64, pause_us: u64) -> Writers {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let handles = (0..THREADS)
        .map(|t| {
            let (disk, model, stop, acked) =
                (disk.clone(), model.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + t);
                let stripes: Vec<u64> = (0..SIZE as u64 / STRIPE)
                    .filter(|s| s % THREADS == t)
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    let stripe = stripes[rng.gen_range(0..stripes.len())];
                    let base = stripe * STRIPE;
                    let aligned = rng.gen_bool(0.5);
                    let (mut off, mut len) =
                        (rng.gen_range(0..STRIPE), rng.gen_range(1..=32 << 10));
                    if aligned {
                        off = off / 4096 * 4096;
                        len = (len / 4096).max(1) * 4096;
                    }
                    let len = len.min(STRIPE - off);
                    let off = base + off;
                    let zeroes = rng.gen_bool(0.1);
                    let data = if zeroes {
                        vec![0u8; len as usize]
                    } else {
                        random_bytes(rng.gen(), len as usize)
                    };
                    let res = if zeroes {
                        disk.write_zeroes_sync(off, len, rng.gen_bool(0.5))
                    } else {
                        disk.write_at(off, &data, rng.gen_bool(0.1))
                    };
                    res.expect("guest write failed");
                    // Acknowledged: it must survive.
                    model.lock()[off as usize..(off + len) as usize].copy_from_slice(&data);
                    acked.fetch_add(1, Ordering::Relaxed);
                    // A busy guest, not a flood: background mode converges
                    // only when the copy can outrun the dirtying.
                    if pause_us > 0 {
                        std::thread::sleep(Duration::from_micros(rng.gen_range(0..pause_us)));
                    }
                }
            })
        })
        .collect();
    Writers {
        stop,
        handles,
        acked,
    }
}

impl Writers {
    /// Wait until `more` writes beyond those acknowledged now are (a count,
    /// not a sleep: a slow shared disk makes it take longer, not fewer).
    fn wait_for_more(&self, more: u64) {
        let goal = self.acked.load(Ordering::Relaxed) + more;
        let deadline = std::time::Instant::now() + T;
        while self.acked.load(Ordering::Relaxed) < goal {
            assert!(
                std::time::Instant::now() < deadline,
                "the writers stalled short of {goal} writes"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.join().expect("writer panicked");
        }
        self.acked.load(Ordering::Relaxed)
    }
}

fn run(seed: u64, mode: CopyMode, granularity: u64, write_through_switch: bool) {
    let s = setup("m-nolost", SIZE, seed);
    let model = Arc::new(Mutex::new(read_all(&*s.source)));
    let w = writers(&s.disk, &model, seed, 400);
    std::thread::sleep(Duration::from_millis(150));
    let mut o = MirrorOptions::new("job0");
    o.copy_mode = mode;
    o.granularity = granularity;
    o.buf_size = 4 << 20;
    let (job, mut ev) = start(&s, o).unwrap();
    let ready = ev.wait("BLOCK_JOB_READY", T);
    assert!(matches!(ready, JobEvent::Ready { .. }));
    // Keep writing in phase 2.
    std::thread::sleep(Duration::from_millis(400));
    let w = if write_through_switch {
        Some(w)
    } else {
        w.stop();
        None
    };
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    assert_eq!(s.disk.current().info().name, s.target.info().name);
    if let Some(w) = w {
        // Writes after the switch, all of them checked below.
        w.wait_for_more(20);
        w.stop();
    }
    let expected = model.lock().clone();
    let target = read_all(&*s.target);
    if let Some(i) = target.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("seed {seed} {mode:?} granularity {granularity}: target differs from the acknowledged writes at offset {i}");
    }
    if !write_through_switch {
        let source = read_all(&*s.source);
        assert!(source == target, "seed {seed}: source and target differ");
    }
}

#[test]
fn background_mode_loses_nothing() {
    for seed in 1..=4 {
        run(seed, CopyMode::Background, 64 << 10, false);
    }
}

#[test]
fn background_mode_loses_nothing_across_the_switch() {
    for seed in 5..=7 {
        run(seed, CopyMode::Background, 64 << 10, true);
    }
}

#[test]
fn write_blocking_mode_loses_nothing() {
    for seed in 11..=13 {
        run(seed, CopyMode::WriteBlocking, 64 << 10, false);
    }
    run(14, CopyMode::WriteBlocking, 64 << 10, true);
}

#[test]
fn other_granularities_lose_nothing() {
    run(21, CopyMode::Background, 4096, true);
    run(22, CopyMode::WriteBlocking, 512, false);
    run(23, CopyMode::Background, 1 << 20, true);
}

#[test]
fn switching_to_write_blocking_midway_loses_nothing() {
    let seed = 31;
    let s = setup("m-nolost-switch", SIZE, seed);
    let model = Arc::new(Mutex::new(read_all(&*s.source)));
    let w = writers(&s.disk, &model, seed, 400);
    let mut o = MirrorOptions::new("job0");
    o.speed = 16 << 20;
    let (job, mut ev) = start(&s, o).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    job.change_copy_mode(CopyMode::WriteBlocking).unwrap();
    job.set_speed(0).unwrap();
    ev.wait("BLOCK_JOB_READY", T);
    std::thread::sleep(Duration::from_millis(300));
    job.complete().unwrap();
    ev.wait("BLOCK_JOB_COMPLETED", T);
    w.stop();
    let target = read_all(&*s.target);
    assert!(
        target == *model.lock(),
        "target differs from the acknowledged writes"
    );
}

/// Writers that never pause: the bitmap is never empty at the same instant
/// as no copy is in flight, so READY needs the job's brief guest-I/O hold.
#[test]
fn ready_and_complete_under_a_write_flood() {
    for (seed, granularity) in [(41, 4096), (42, 64 << 10)] {
        let s = setup("m-flood", SIZE, seed);
        let model = Arc::new(Mutex::new(read_all(&*s.source)));
        let w = writers(&s.disk, &model, seed, 0);
        let mut o = MirrorOptions::new("job0");
        o.granularity = granularity;
        let (job, mut ev) = start(&s, o).unwrap();
        ev.wait("BLOCK_JOB_READY", T);
        // A hundred writes in READY, then the switch under the flood.
        w.wait_for_more(100);
        job.complete().unwrap();
        ev.wait("BLOCK_JOB_COMPLETED", T);
        w.wait_for_more(10);
        w.stop();
        let target = read_all(&*s.target);
        assert!(
            target == *model.lock(),
            "seed {seed}: target differs from the acknowledged writes"
        );
    }
}
