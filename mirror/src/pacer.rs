//! [`Pacer`]: how much copying may be in flight, so that the guest keeps
//! most of its speed while a job copies.
//!
//! AIMD on the guest's own latency, measured by the [`crate::Disk`] on
//! every guest request: every interval the mean guest latency is compared
//! with the guest's latency measured with the copy at its gentlest. Above
//! `SLOWDOWN` times that baseline the copy window halves; below it grows by
//! one chunk. Without guest I/O the window is the whole buffer: an idle
//! guest gets a full-speed copy.
//!
//! ```text
//!  window ▲  ___/‾‾‾\\___/‾‾‾\\     guest latency ▲     ‾‾‾SLOWDOWN×baseline‾‾
//!         │ /          \\/          \\            │ ~~~~~~~~~~~~~~~~~~~~~~~~~~~~
//!         └──────────────────────► t            └────────────────────────────► t
//! ```

use std::time::{Duration, Instant};

/// Guest latency may rise to this multiple of its baseline (1 / SLOWDOWN of
/// its IOPS at a fixed queue depth: about 83%).
const SLOWDOWN: f64 = 1.2;
/// Length of one measurement interval.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);
/// Intervals the copy stays at its gentlest at start, to learn the baseline.
const PROBE_INTERVALS: u32 = 3;
/// An interval with fewer guest requests than this says nothing.
const MIN_SAMPLES: u64 = 20;

pub(crate) struct Pacer {
    window: u64,
    min: u64,
    max: u64,
    baseline_ns: Option<f64>,
    probe_left: u32,
    probe_sum: (u64, u64),
    last_at: Instant,
    last: (u64, u64),
}

impl Pacer {
    /// A pacer for copies of `chunk` bytes and a buffer of `max` bytes.
    pub(crate) fn new(chunk: u64, max: u64, totals: (u64, u64)) -> Pacer {
        Pacer {
            window: chunk.min(max),
            min: chunk.min(max),
            max,
            baseline_ns: None,
            probe_left: PROBE_INTERVALS,
            probe_sum: (0, 0),
            last_at: Instant::now(),
            last: totals,
        }
    }

    /// Bytes of copying allowed in flight now.
    pub(crate) fn window(&self) -> u64 {
        self.window
    }

    /// When the next interval ends.
    pub(crate) fn next_tick(&self) -> Instant {
        self.last_at + INTERVAL
    }

    /// Feed the guest's running totals `(ops, latency_ns)`; adjusts the
    /// window once per interval.
    pub(crate) fn tick(&mut self, now: Instant, totals: (u64, u64)) {
        if now < self.last_at + INTERVAL {
            return;
        }
        let ops = totals.0.saturating_sub(self.last.0);
        let lat = totals.1.saturating_sub(self.last.1);
        self.last = totals;
        self.last_at = now;
        if ops < MIN_SAMPLES {
            // No guest to protect: copy at full speed.
            self.window = self.max;
            return;
        }
        if self.probe_left > 0 || self.baseline_ns.is_none() {
            // Learn the baseline with the copy at its gentlest.
            self.window = self.min;
            self.probe_sum.0 += ops;
            self.probe_sum.1 += lat;
            self.probe_left = self.probe_left.saturating_sub(1);
            if self.probe_left == 0 {
                self.baseline_ns = Some(self.probe_sum.1 as f64 / self.probe_sum.0 as f64);
            }
            return;
        }
        let mean = lat as f64 / ops as f64;
        let base = self.baseline_ns.unwrap_or(mean);
        if mean > base * SLOWDOWN {
            self.window = (self.window / 2).max(self.min);
        } else {
            self.window = (self.window + self.min).min(self.max);
            // A guest faster than its baseline was measured under load:
            // follow it down slowly.
            if mean < base {
                self.baseline_ns = Some(base * 0.9 + mean * 0.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_guest_gets_the_whole_buffer_and_a_slowed_guest_halves_it() {
        let mut p = Pacer::new(1 << 20, 16 << 20, (0, 0));
        let mut t = Instant::now();
        let mut totals = (0u64, 0u64);
        let mut step = |p: &mut Pacer, ops: u64, mean_ns: u64| {
            t += INTERVAL;
            totals = (totals.0 + ops, totals.1 + ops * mean_ns);
            p.tick(t, totals);
            p.window()
        };
        assert_eq!(step(&mut p, 0, 0), 16 << 20, "idle guest: full speed");
        // A guest appears: probe at the gentlest window.
        for _ in 0..PROBE_INTERVALS {
            assert_eq!(step(&mut p, 1000, 100_000), 1 << 20);
        }
        // Guest at baseline: grow one chunk per interval.
        assert_eq!(step(&mut p, 1000, 100_000), 2 << 20);
        assert_eq!(step(&mut p, 1000, 110_000), 3 << 20);
        // Guest slowed by 50%: halve.
        assert_eq!(step(&mut p, 1000, 150_000), (3 << 20) / 2);
        assert_eq!(step(&mut p, 1000, 150_000), 1 << 20);
        assert_eq!(
            step(&mut p, 1000, 150_000),
            1 << 20,
            "never below one chunk"
        );
    }
}
