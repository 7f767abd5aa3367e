//! Micro-benchmarks of the dirty bitmap (not tests: nothing here asserts on
//! time). Run with `bench/bitmap.sh` or `cargo bench -p ringmirror-bitmap`.
//! Prints Markdown tables; each figure is the median of `RUNS` runs, and
//! each table carries a yardstick measured in the same run:
//!
//! * marks: a bare `fetch_or` per mark on a flat word array (the floor: no
//!   summary, no counter) and a `Mutex<BitVec>` (the naive locked bitmap);
//! * find-next: a linear scan of the cluster words (no summary levels).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bitvec::prelude::{BitVec, Lsb0};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringmirror_bitmap::DirtyBitmap;

const RUNS: usize = 7;
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Random 4 KiB-aligned offsets on a disk of `len` bytes, one list per thread.
fn offsets(len: u64, per_thread: usize, threads: usize) -> Vec<Arc<Vec<u64>>> {
    (0..threads)
        .map(|t| {
            let mut rng = StdRng::seed_from_u64(42 + t as u64);
            Arc::new(
                (0..per_thread)
                    .map(|_| rng.gen_range(0..len / 4096) * 4096)
                    .collect(),
            )
        })
        .collect()
}

/// Nanoseconds this thread has spent on a CPU (Linux schedstat), so that
/// per-operation cost can be told apart from time lost to other processes on
/// a shared machine. `None` where the file does not exist.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// Wall time from the common start to the last finish, and CPU time summed
/// over the threads.
struct Timing {
    wall: Duration,
    cpu_ns: Option<u64>,
}

/// Runs `work(thread index)` on `threads` threads started together.
fn timed_threads(threads: usize, work: impl Fn(usize) + Send + Sync + 'static) -> Timing {
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (work, start) = (work.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let before = thread_cpu_ns();
                work(t);
                Some(thread_cpu_ns()? - before?)
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let cpu: Vec<Option<u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    Timing {
        wall: t0.elapsed(),
        cpu_ns: cpu.into_iter().sum(),
    }
}

fn bench_marks() {
    const PER_THREAD: usize = 4_000_000;
    println!("### Marks: random 4 KiB writes, 1 TiB disk\n");
    println!(
        "The three variants run back to back inside each of the {RUNS} rounds, so \
         a busy machine slows them alike; ratios are medians of the per-round \
         ratios. CPU ns/mark is on-CPU time (schedstat) summed over the threads \
         per mark: it excludes time the threads were preempted.\n"
    );
    println!("| granularity | threads | ringmirror Mmarks/s | ringmirror CPU ns/mark | bare fetch_or Mmarks/s | bare CPU ns/mark | Mutex<BitVec> Mmarks/s | Mutex CPU ns/mark | ringmirror / bare (throughput) | ringmirror / Mutex (throughput) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for g in [64 * KIB, 4 * KIB] {
        let shift = g.trailing_zeros();
        let b = Arc::new(DirtyBitmap::new(TIB, g).unwrap());
        let words: Arc<Vec<AtomicU64>> = Arc::new(
            (0..TIB.div_ceil(g).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        );
        let locked = Arc::new(Mutex::new(BitVec::<u64, Lsb0>::repeat(
            false,
            TIB.div_ceil(g) as usize,
        )));
        for threads in [1usize, 2] {
            let offs = offsets(TIB, PER_THREAD, threads);
            let marks = (PER_THREAD * threads) as f64;
            // (throughput in Mmarks/s, CPU ns per mark)
            let measure = |t: Timing| {
                (
                    marks / t.wall.as_secs_f64() / 1e6,
                    t.cpu_ns.map_or(f64::NAN, |ns| ns as f64 / marks),
                )
            };
            let (mut ours, mut bare, mut naive) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..RUNS {
                b.clear_all();
                let (bm, o) = (b.clone(), offs.clone());
                ours.push(measure(timed_threads(threads, move |t| {
                    for &off in o[t].iter() {
                        bm.mark(off, 4096).unwrap();
                    }
                })));

                words.iter().for_each(|w| w.store(0, Ordering::Relaxed));
                let (w, o) = (words.clone(), offs.clone());
                bare.push(measure(timed_threads(threads, move |t| {
                    for &off in o[t].iter() {
                        let c = off >> shift;
                        w[(c / 64) as usize].fetch_or(1 << (c % 64), Ordering::AcqRel);
                    }
                })));

                locked.lock().unwrap().fill(false);
                let (l, o) = (locked.clone(), offs.clone());
                naive.push(measure(timed_threads(threads, move |t| {
                    for &off in o[t].iter() {
                        l.lock().unwrap().set((off >> shift) as usize, true);
                    }
                })));
            }
            let ratio = |other: &[(f64, f64)]| {
                median(ours.iter().zip(other).map(|(a, b)| a.0 / b.0).collect())
            };
            let (vs_bare, vs_mutex) = (ratio(&bare), ratio(&naive));
            let rate = |v: &[(f64, f64)]| median(v.iter().map(|x| x.0).collect());
            let cpu = |v: &[(f64, f64)]| median(v.iter().map(|x| x.1).collect());
            println!(
                "| {} KiB | {threads} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {vs_bare:.2} | {vs_mutex:.2} |",
                g / KIB,
                rate(&ours),
                cpu(&ours),
                rate(&bare),
                cpu(&bare),
                rate(&naive),
                cpu(&naive),
            );
        }
    }
    println!();
}

fn bench_mark_and_take() {
    const MARKS: usize = 4_000_000;
    println!("### Marks while a taker sweeps: 1 writer + 1 taker thread, 64 KiB granularity\n");
    println!(
        "The writer makes random 4 KiB marks while the taker loops `take_run(cursor, 256)` \
         (the mirror's pattern). A small disk makes them meet on the same words.\n"
    );
    println!("| disk | writer Mmarks/s | writer CPU ns/mark | taker Mruns/s | clusters per run |");
    println!("|---|---|---|---|---|");
    for len in [GIB, TIB] {
        let offs = offsets(len, MARKS, 1);
        let b = Arc::new(DirtyBitmap::new(len, 64 * KIB).unwrap());
        let mut rows = Vec::new();
        for _ in 0..RUNS {
            b.clear_all();
            let stop = Arc::new(AtomicBool::new(false));
            let taker = {
                let (b, stop) = (b.clone(), stop.clone());
                thread::spawn(move || {
                    let (mut runs, mut clusters, mut cursor) = (0u64, 0u64, 0u64);
                    let t0 = Instant::now();
                    while !stop.load(Ordering::Acquire) {
                        if let Some((first, count)) = b.take_run(cursor, 256) {
                            cursor = first + count;
                            runs += 1;
                            clusters += count;
                        }
                    }
                    (runs, clusters, t0.elapsed())
                })
            };
            let (bm, o) = (b.clone(), offs.clone());
            let t = timed_threads(1, move |_| {
                for &off in o[0].iter() {
                    bm.mark(off, 4096).unwrap();
                }
            });
            stop.store(true, Ordering::Release);
            let (runs, clusters, taker_time) = taker.join().unwrap();
            rows.push((
                MARKS as f64 / t.wall.as_secs_f64() / 1e6,
                t.cpu_ns.map_or(f64::NAN, |ns| ns as f64 / MARKS as f64),
                runs as f64 / taker_time.as_secs_f64() / 1e6,
                clusters as f64 / runs.max(1) as f64,
            ));
        }
        let col = |i: usize| median(rows.iter().map(|r| [r.0, r.1, r.2, r.3][i]).collect());
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2} |",
            if len >= TIB { "1 TiB" } else { "1 GiB" },
            col(0),
            col(1),
            col(2),
            col(3)
        );
    }
    println!();
}

fn bench_take() {
    println!("### Take: `take_run(cursor, 256)` sweeps, 1 TiB disk at 64 KiB (16 Mi clusters)\n");
    println!("| dirty pattern | runs taken | Mruns/s | Mclusters/s | disk TiB handed out per s |");
    println!("|---|---|---|---|---|");
    let b = DirtyBitmap::new(TIB, 64 * KIB).unwrap();
    let n = b.clusters();
    type Fill = Box<dyn Fn(&DirtyBitmap)>;
    let patterns: [(&str, Fill); 3] = [
        (
            "all dirty (full sync)",
            Box::new(|b: &DirtyBitmap| b.set_all()),
        ),
        (
            "every other cluster",
            Box::new(move |b: &DirtyBitmap| {
                for c in (0..n).step_by(2) {
                    b.mark_clusters(c, 1).unwrap();
                }
            }),
        ),
        (
            "1 in 4096 (sparse)",
            Box::new(move |b: &DirtyBitmap| {
                for c in (0..n).step_by(4096) {
                    b.mark_clusters(c, 1).unwrap();
                }
            }),
        ),
    ];
    for (name, fill) in patterns.iter() {
        let mut runs = 0u64;
        let mut clusters = 0u64;
        let secs = median(
            (0..RUNS)
                .map(|_| {
                    b.clear_all();
                    fill(&b);
                    let (mut r, mut c, mut cursor) = (0u64, 0u64, 0u64);
                    let t0 = Instant::now();
                    while let Some((first, count)) = b.take_run(cursor, 256) {
                        cursor = first + count;
                        r += 1;
                        c += count;
                    }
                    let d = t0.elapsed().as_secs_f64();
                    (runs, clusters) = (r, c);
                    d
                })
                .collect(),
        );
        println!(
            "| {name} | {runs} | {:.1} | {:.1} | {:.1} |",
            runs as f64 / secs / 1e6,
            clusters as f64 / secs / 1e6,
            (clusters * 64 * KIB) as f64 / TIB as f64 / secs
        );
    }
    println!();
}

fn bench_find() {
    println!("### Find-next: 64 TiB disk at 64 KiB (2^30 clusters)\n");
    let t0 = Instant::now();
    let b = DirtyBitmap::new(64 * TIB, 64 * KIB).unwrap();
    let build = t0.elapsed();
    let n = b.clusters();
    let mut rng = StdRng::seed_from_u64(1);
    let starts: Vec<u64> = (0..1_000_000).map(|_| rng.gen_range(0..n)).collect();

    let per_call = |b: &DirtyBitmap| {
        median(
            (0..RUNS)
                .map(|_| {
                    let t0 = Instant::now();
                    for &s in &starts {
                        black_box(b.next_dirty(black_box(s)));
                    }
                    t0.elapsed().as_secs_f64() * 1e9 / starts.len() as f64
                })
                .collect(),
        )
    };
    let clean = per_call(&b);
    let from_zero = median(
        (0..RUNS)
            .map(|_| {
                let t0 = Instant::now();
                for _ in 0..starts.len() {
                    black_box(b.next_dirty(black_box(0)));
                }
                t0.elapsed().as_secs_f64() * 1e9 / starts.len() as f64
            })
            .collect(),
    );
    b.mark_clusters(n - 1, 1).unwrap();
    let last_only = per_call(&b);
    b.clear_all();
    for c in (0..n).step_by(1 << 16) {
        b.mark_clusters(c, 1).unwrap();
    }
    let sparse = per_call(&b);
    b.clear_all();

    // Yardstick: the same question answered by scanning the cluster words.
    let words: Vec<AtomicU64> = (0..n / 64).map(|_| AtomicU64::new(0)).collect();
    let linear_ms = median(
        (0..RUNS)
            .map(|_| {
                let t0 = Instant::now();
                let found = words.iter().position(|w| w.load(Ordering::Acquire) != 0);
                black_box(found);
                t0.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    // ... and by one summary level only (one bit per word, 2^18 words).
    let summary: Vec<AtomicU64> = (0..n / 64 / 64).map(|_| AtomicU64::new(0)).collect();
    let one_level_us = median(
        (0..RUNS)
            .map(|_| {
                let t0 = Instant::now();
                let found = summary.iter().position(|w| w.load(Ordering::Acquire) != 0);
                black_box(found);
                t0.elapsed().as_secs_f64() * 1e6
            })
            .collect(),
    );
    println!("| what | time |");
    println!("|---|---|");
    println!(
        "| `next_dirty(random)` on a clean bitmap (whole disk scanned), per call | {clean:.1} ns |"
    );
    println!("| `next_dirty(0)` on a clean bitmap, repeated (hot caches), per call | {from_zero:.1} ns |");
    println!(
        "| `next_dirty(random)` with only the last cluster dirty, per call | {last_only:.1} ns |"
    );
    println!("| `next_dirty(random)` with 1 in 65536 clusters dirty, per call | {sparse:.1} ns |");
    println!("| yardstick: linear scan of the 2^24 cluster words | {linear_ms:.2} ms |");
    println!(
        "| yardstick: linear scan of a one-level summary (2^18 words) | {one_level_us:.1} us |"
    );
    println!(
        "| building the clean 64 TiB bitmap ({} levels, {:.1} MiB) | {:.1} ms |",
        b.levels(),
        b.heap_bytes() as f64 / MIB as f64,
        build.as_secs_f64() * 1e3
    );
    println!();
}

fn bench_counters() {
    let b = DirtyBitmap::new(TIB, 64 * KIB).unwrap();
    b.mark(0, 100 * MIB).unwrap();
    let ns = median(
        (0..RUNS)
            .map(|_| {
                let t0 = Instant::now();
                for _ in 0..1_000_000 {
                    black_box(black_box(&b).dirty_bytes());
                }
                t0.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    println!("### Counting\n");
    println!("| what | time |");
    println!("|---|---|");
    println!("| `dirty_bytes()` (16 counter stripes, uncontended), per call | {ns:.1} ns |");
    println!();
}

fn memory() {
    println!("### Memory per TiB of disk (all levels + counter)\n");
    println!("| granularity | clusters per TiB | levels | heap bytes | MiB per TiB |");
    println!("|---|---|---|---|---|");
    for g in [512, 4 * KIB, 64 * KIB, MIB, 64 * MIB] {
        let b = DirtyBitmap::new(TIB, g).unwrap();
        println!(
            "| {} | {} | {} | {} | {:.3} |",
            if g >= MIB {
                format!("{} MiB", g / MIB)
            } else if g >= KIB {
                format!("{} KiB", g / KIB)
            } else {
                format!("{g} B")
            },
            b.clusters(),
            b.levels(),
            b.heap_bytes(),
            b.heap_bytes() as f64 / MIB as f64
        );
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`. Without it this is `cargo test
    // --all-targets` running the target as a test: it is built (so it does
    // not rot) but the minutes of timing loops are skipped.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "bitmap benchmarks: run with `cargo bench -p ringmirror-bitmap` or bench/bitmap.sh"
        );
        return;
    }
    // A filter argument (mark, take, find, count, memory) picks one table.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    println!(
        "ringmirror-bitmap micro-benchmarks: {} CPUs, median of {RUNS} runs, load average at start: {}\n",
        thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    if want("mark") {
        bench_marks();
    }
    if want("take") {
        bench_take();
        bench_mark_and_take();
    }
    if want("find") {
        bench_find();
    }
    if want("count") {
        bench_counters();
    }
    if want("memory") {
        memory();
    }
}
