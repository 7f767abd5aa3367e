//! Embedded mirror benchmark (issue 4): a guest doing 4 KiB random writes
//! at a fixed queue depth through the disk handle while a mirror runs.
//!
//! ```text
//! cargo run --release -p ringmirror-mirror --example mirror_bench -- \
//!     --src SRC.img --dst DST.img [--qd 16] [--mode background|write-blocking|none]
//!     [--warmup 5] [--after-ready 10] [--timeout 60] [--granularity 65536] [--no-load]
//! ```
//!
//! Prints one JSON object: time to READY, guest IOPS and p50/p99/p99.9
//! latency (µs) before the mirror, from start to READY, and after READY,
//! the longest completion gap around `complete`, and whether the target
//! equals the source at the switch (checked with the load stopped).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use ringmirror_engine::{BlockDevice, Engine, EngineConfig, OpenOptions};
use ringmirror_mirror::{CopyMode, Disk, JobEvent, MirrorJob, MirrorOptions};

struct Window {
    hist: Histogram<u64>,
    ops: u64,
    start: Instant,
    end: Option<Instant>,
}

impl Window {
    fn new() -> Window {
        Window {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            ops: 0,
            start: Instant::now(),
            end: None,
        }
    }
    fn json(&self) -> serde_json::Value {
        let secs = self
            .end
            .unwrap_or_else(Instant::now)
            .duration_since(self.start)
            .as_secs_f64();
        serde_json::json!({
            "seconds": secs,
            "iops": if secs > 0.0 { self.ops as f64 / secs } else { 0.0 },
            "p50_us": self.hist.value_at_quantile(0.5),
            "p99_us": self.hist.value_at_quantile(0.99),
            "p999_us": self.hist.value_at_quantile(0.999),
            "max_us": self.hist.max(),
        })
    }
}

struct Load {
    windows: Mutex<Vec<Window>>,
    stop: AtomicBool,
    in_flight: AtomicU64,
    last_completion_ns: AtomicU64,
    max_gap_ns: AtomicU64,
    epoch: Instant,
}

fn submit(disk: Arc<Disk>, load: Arc<Load>, mut rng: rand::rngs::StdRng) {
    if load.stop.load(Ordering::Relaxed) {
        load.in_flight.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let blocks = disk.size() / 4096;
    let off = rng.gen_range(0..blocks) * 4096;
    let mut buf = disk.alloc_buf(4096);
    rng.fill(&mut buf[..]);
    let t0 = Instant::now();
    let d2 = disk.clone();
    disk.write(
        off,
        buf,
        false,
        Box::new(move |_b, r| {
            if let Err(e) = r {
                eprintln!("guest write failed: {e}");
                std::process::exit(2);
            }
            let now = Instant::now();
            let us = now.duration_since(t0).as_micros() as u64;
            let ns = now.duration_since(load.epoch).as_nanos() as u64;
            let prev = load.last_completion_ns.swap(ns, Ordering::AcqRel);
            if prev != 0 {
                load.max_gap_ns
                    .fetch_max(ns.saturating_sub(prev), Ordering::AcqRel);
            }
            {
                let mut w = load.windows.lock();
                if let Some(cur) = w.last_mut() {
                    let _ = cur.hist.record(us.max(1));
                    cur.ops += 1;
                }
            }
            submit(d2, load, rng);
        }),
    );
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let src = arg("--src").ok_or("--src SRC.img is required")?;
    let dst = arg("--dst").ok_or("--dst DST.img is required")?;
    let qd: u64 = arg("--qd").map_or(Ok(16), |v| v.parse())?;
    let warmup: f64 = arg("--warmup").map_or(Ok(5.0), |v| v.parse())?;
    let after_ready: f64 = arg("--after-ready").map_or(Ok(10.0), |v| v.parse())?;
    let timeout: f64 = arg("--timeout").map_or(Ok(60.0), |v| v.parse())?;
    let mode = arg("--mode").unwrap_or_else(|| "background".into());
    let no_load = flag("--no-load");

    let engine = Engine::new(EngineConfig::default())?;
    let source = engine.open(&src, &OpenOptions::read_write())?;
    let target = engine.open(&dst, &OpenOptions::read_write())?;
    let disk = Disk::new("vda", source.clone());
    let load = Arc::new(Load {
        windows: Mutex::new(vec![Window::new()]),
        stop: AtomicBool::new(false),
        in_flight: AtomicU64::new(0),
        last_completion_ns: AtomicU64::new(0),
        max_gap_ns: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    if !no_load {
        for i in 0..qd {
            load.in_flight.fetch_add(1, Ordering::AcqRel);
            submit(
                disk.clone(),
                load.clone(),
                rand::rngs::StdRng::seed_from_u64(i),
            );
        }
    }
    std::thread::sleep(Duration::from_secs_f64(if no_load { 0.0 } else { warmup }));
    let mut out = serde_json::json!({"mode": mode, "qd": qd, "size": disk.size()});
    let next_window = |load: &Load| {
        let mut w = load.windows.lock();
        if let Some(cur) = w.last_mut() {
            cur.end = Some(Instant::now());
        }
        w.push(Window::new());
    };
    next_window(&load);
    let started = Instant::now();
    let mut ready_s = None;
    if mode != "none" {
        let mut o = MirrorOptions::new("job0");
        if let Some(g) = arg("--granularity") {
            o.granularity = g.parse()?;
        }
        if let Some(b) = arg("--buf-size") {
            o.buf_size = b.parse()?;
        }
        o.copy_mode = if mode == "write-blocking" {
            CopyMode::WriteBlocking
        } else {
            CopyMode::Background
        };
        let job = MirrorJob::start(&disk, target.clone(), o, None)?;
        let events = job.subscribe();
        let deadline = started + Duration::from_secs_f64(timeout);
        while Instant::now() < deadline {
            if let Ok(JobEvent::Ready { .. }) = events.recv_timeout(Duration::from_millis(100)) {
                ready_s = Some(started.elapsed().as_secs_f64());
                break;
            }
        }
        out["copied_bytes"] = serde_json::json!(job.query().offset);
        out["rates"] = serde_json::json!({
            "dirty_bytes_per_sec": job.rates().dirty_bytes_per_sec,
            "copy_bytes_per_sec": job.rates().copy_bytes_per_sec,
        });
        next_window(&load);
        if ready_s.is_some() {
            std::thread::sleep(Duration::from_secs_f64(after_ready));
            load.max_gap_ns.store(0, Ordering::Release);
            let t = Instant::now();
            job.complete()?;
            loop {
                match events.recv_timeout(Duration::from_secs(60))? {
                    JobEvent::Completed { error: None, .. } => break,
                    JobEvent::Completed { error: Some(e), .. } => return Err(e.into()),
                    _ => {}
                }
            }
            out["complete_seconds"] = serde_json::json!(t.elapsed().as_secs_f64());
            std::thread::sleep(Duration::from_millis(200));
            out["complete_max_gap_ms"] =
                serde_json::json!(load.max_gap_ns.load(Ordering::Acquire) as f64 / 1e6);
        } else {
            job.cancel(true)?;
            let _ = job.wait_status(Duration::from_secs(30), |s| s.is_finished());
        }
    } else {
        std::thread::sleep(Duration::from_secs_f64(timeout.min(warmup + after_ready)));
    }
    next_window(&load);
    load.stop.store(true, Ordering::Relaxed);
    while load.in_flight.load(Ordering::Acquire) > 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let w = load.windows.lock();
    out["ready_seconds"] = serde_json::json!(ready_s);
    out["before"] = w[0].json();
    out["to_ready"] = w[1].json();
    if w.len() > 2 {
        out["after_ready"] = w[2].json();
    }
    println!("{out}");
    Ok(())
}
