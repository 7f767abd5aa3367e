//! [`FaultDevice`]: wraps a device and injects seeded failures and latency,
//! for testing error policies (TigerBeetle-style fault injection).

use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rand::{Rng, SeedableRng};
use ringmirror_engine::{
    BlockDevice, BufDone, DeviceInfo, DmaBuf, Done, Extent, IoError, IoResult, OpKind,
};

/// Which requests a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOp {
    /// Reads.
    Read,
    /// Writes, write-zeroes and discards.
    Write,
    /// Flushes.
    Flush,
}

#[derive(Clone, Copy, Debug)]
struct Rule {
    op: FaultOp,
    errno: i32,
    /// Fail with this probability ...
    probability: f64,
    /// ... at most this many more times.
    remaining: u64,
    /// Only requests touching `[lo, hi)`.
    lo: u64,
    hi: u64,
}

/// A completion due at `at` (`seq` keeps equal deadlines in order).
struct Delayed {
    at: Instant,
    seq: u64,
    run: Box<dyn FnOnce() + Send>,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    // Reversed: the BinaryHeap pops the earliest deadline first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Timer {
    queue: Mutex<(BinaryHeap<Delayed>, u64)>,
    cv: Condvar,
}

/// A device that fails or delays requests as told (see [`FaultDevice::fail`]).
pub struct FaultDevice {
    inner: Arc<dyn BlockDevice>,
    info: DeviceInfo,
    rules: Mutex<(Vec<Rule>, rand::rngs::StdRng)>,
    latency: Mutex<Duration>,
    /// `hold_writes`: writes parked (not yet submitted), in order; `None`
    /// when not holding.
    held: Mutex<HeldWrites>,
    timer: Arc<Timer>,
    injected: std::sync::atomic::AtomicU64,
}

impl FaultDevice {
    /// Wrap `inner`; `seed` drives the probabilistic faults.
    pub fn new(inner: Arc<dyn BlockDevice>, seed: u64) -> Arc<FaultDevice> {
        let timer = Arc::new(Timer {
            queue: Mutex::new((BinaryHeap::new(), 0)),
            cv: Condvar::new(),
        });
        let t = Arc::downgrade(&timer);
        std::thread::spawn(move || loop {
            let Some(timer) = t.upgrade() else { return };
            let mut q = timer.queue.lock();
            let now = Instant::now();
            match q.0.peek().map(|d| d.at) {
                Some(at) if at <= now => {
                    let d = q.0.pop();
                    drop(q);
                    if let Some(d) = d {
                        (d.run)();
                    }
                }
                Some(at) => {
                    timer.cv.wait_until(&mut q, at);
                }
                None => {
                    timer.cv.wait_for(&mut q, Duration::from_millis(50));
                }
            }
        });
        let mut info = inner.info().clone();
        info.name = Arc::from(format!("{} (faulty)", info.name));
        Arc::new(FaultDevice {
            inner,
            info,
            rules: Mutex::new((Vec::new(), rand::rngs::StdRng::seed_from_u64(seed))),
            latency: Mutex::new(Duration::ZERO),
            held: Mutex::new(HeldWrites::default()),
            timer,
            injected: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Fail `op` requests with `errno`, each with `probability`, at most
    /// `times` times (u64::MAX = forever), only where they touch `[lo, hi)`.
    pub fn fail(&self, op: FaultOp, errno: i32, probability: f64, times: u64, lo: u64, hi: u64) {
        self.rules.lock().0.push(Rule {
            op,
            errno,
            probability,
            remaining: times,
            lo,
            hi,
        });
    }

    /// Remove every fault.
    pub fn heal(&self) {
        self.rules.lock().0.clear();
    }

    /// Delay every completion by `d`.
    pub fn set_latency(&self, d: Duration) {
        *self.latency.lock() = d;
    }

    /// Park every write made from now on (it reaches neither the inner
    /// device nor its completion) until `release_held`: tests order writes
    /// by this instead of by sleeping.
    pub fn hold_writes(&self) {
        self.held.lock().holding = true;
    }

    /// Stop parking new writes; those parked stay parked.
    pub fn pass_writes(&self) {
        self.held.lock().holding = false;
    }

    /// Writes parked now.
    pub fn held_writes(&self) -> usize {
        self.held.lock().parked.len()
    }

    /// Submit the parked writes, oldest first.
    pub fn release_held(&self) {
        let parked = std::mem::take(&mut self.held.lock().parked);
        for submit in parked {
            submit();
        }
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn should_fail(&self, op: FaultOp, off: u64, len: u64) -> Option<i32> {
        let mut g = self.rules.lock();
        let (rules, rng) = &mut *g;
        for r in rules.iter_mut() {
            if r.op == op
                && r.remaining > 0
                && off < r.hi
                && off + len.max(1) > r.lo
                && rng.gen_bool(r.probability)
            {
                if r.remaining != u64::MAX {
                    r.remaining -= 1;
                }
                self.injected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Some(r.errno);
            }
        }
        None
    }

    fn later(&self, f: Box<dyn FnOnce() + Send>) {
        self.self_timer().run(f)
    }

    fn err(&self, op: OpKind, off: u64, len: u64, errno: i32) -> IoError {
        IoError::from_errno(op, &self.info.name, off, len, errno).with_detail("injected fault")
    }
}

impl BlockDevice for FaultDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn alloc_buf(&self, len: usize) -> DmaBuf {
        self.inner.alloc_buf(len)
    }
    fn read(&self, offset: u64, buf: DmaBuf, done: BufDone) {
        let len = buf.len() as u64;
        if let Some(e) = self.should_fail(FaultOp::Read, offset, len) {
            let err = self.err(OpKind::Read, offset, len, e);
            return self.later(Box::new(move || done(buf, Err(err))));
        }
        let me = self.self_timer();
        self.inner.read(
            offset,
            buf,
            Box::new(move |b, r| me.run(Box::new(move || done(b, r)))),
        );
    }
    fn write(&self, offset: u64, buf: DmaBuf, fua: bool, done: BufDone) {
        let len = buf.len() as u64;
        if let Some(e) = self.should_fail(FaultOp::Write, offset, len) {
            let err = self.err(OpKind::Write, offset, len, e);
            return self.later(Box::new(move || done(buf, Err(err))));
        }
        let me = self.self_timer();
        let inner = self.inner.clone();
        let submit = move || {
            inner.write(
                offset,
                buf,
                fua,
                Box::new(move |b, r| me.run(Box::new(move || done(b, r)))),
            )
        };
        {
            let mut h = self.held.lock();
            if h.holding {
                h.parked.push(Box::new(submit));
                return;
            }
        }
        submit();
    }
    fn flush(&self, done: Done) {
        if let Some(e) = self.should_fail(FaultOp::Flush, 0, 0) {
            let err = self.err(OpKind::Flush, 0, 0, e);
            return self.later(Box::new(move || done(Err(err))));
        }
        let me = self.self_timer();
        self.inner
            .flush(Box::new(move |r| me.run(Box::new(move || done(r)))));
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool, done: Done) {
        if let Some(e) = self.should_fail(FaultOp::Write, offset, len) {
            let err = self.err(OpKind::WriteZeroes, offset, len, e);
            return self.later(Box::new(move || done(Err(err))));
        }
        let me = self.self_timer();
        self.inner.write_zeroes(
            offset,
            len,
            unmap,
            Box::new(move |r| me.run(Box::new(move || done(r)))),
        );
    }
    fn discard(&self, offset: u64, len: u64, done: Done) {
        if let Some(e) = self.should_fail(FaultOp::Write, offset, len) {
            let err = self.err(OpKind::Discard, offset, len, e);
            return self.later(Box::new(move || done(Err(err))));
        }
        let me = self.self_timer();
        self.inner.discard(
            offset,
            len,
            Box::new(move |r| me.run(Box::new(move || done(r)))),
        );
    }
    fn extents(&self, offset: u64, len: u64) -> IoResult<Vec<Extent>> {
        self.inner.extents(offset, len)
    }
}

#[derive(Default)]
struct HeldWrites {
    holding: bool,
    parked: Vec<Box<dyn FnOnce() + Send>>,
}

/// Delivers completions after the configured latency.
struct Later {
    latency: Duration,
    timer: Arc<Timer>,
}

impl Later {
    fn run(&self, f: Box<dyn FnOnce() + Send>) {
        if self.latency.is_zero() {
            return f();
        }
        let at = Instant::now() + self.latency;
        let mut q = self.timer.queue.lock();
        q.1 += 1;
        let seq = q.1;
        q.0.push(Delayed { at, seq, run: f });
        drop(q);
        self.timer.cv.notify_one();
    }
}

impl FaultDevice {
    fn self_timer(&self) -> Later {
        Later {
            latency: *self.latency.lock(),
            timer: self.timer.clone(),
        }
    }
}
