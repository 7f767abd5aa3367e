//! [`RateLimiter`]: holds a byte rate without bursts.
//!
//! Virtual-clock pacing: every grant of `n` bytes moves the limiter's clock
//! forward by `n / rate`; a grant is allowed only when the clock is no more
//! than `burst` ahead of now. A caller with a large buffer therefore cannot
//! push a whole buffer's worth at once: each request waits for the previous
//! ones to be paid for. The rate may change at any time (`set_rate`), and
//! takes effect from the next grant.

use std::time::{Duration, Instant};

/// See the module docs. Not thread-safe by itself: one owner paces its
/// submissions (wrap it in a mutex to share).
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    burst: Duration,
    clock: Instant,
}

impl RateLimiter {
    /// A limiter at `bytes_per_sec` (0 = unlimited) allowing `burst` of lead.
    pub fn new(bytes_per_sec: u64, burst: Duration) -> RateLimiter {
        RateLimiter {
            bytes_per_sec,
            burst,
            clock: Instant::now(),
        }
    }

    /// Change the rate (0 = unlimited). Debt already accrued is kept.
    pub fn set_rate(&mut self, bytes_per_sec: u64) {
        if self.bytes_per_sec == 0 {
            // Coming from unlimited: start paying from now, not from the past.
            self.clock = Instant::now();
        }
        self.bytes_per_sec = bytes_per_sec;
    }

    /// The current rate (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.bytes_per_sec
    }

    /// How long to wait before anything more may be sent (zero: now).
    pub fn wait_time(&self) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let lead = self.clock.saturating_duration_since(Instant::now());
        lead.saturating_sub(self.burst)
    }

    /// Record that `bytes` were sent now.
    pub fn record(&mut self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let now = Instant::now();
        if self.clock < now {
            self.clock = now;
        }
        self.clock += Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
    }

    /// How long to wait before `bytes` may be sent; `Duration::ZERO` means
    /// now, and then the grant is recorded. When the answer is non-zero
    /// nothing is recorded: ask again after waiting.
    pub fn try_grant(&mut self, bytes: u64) -> Duration {
        let wait = self.wait_time();
        if wait.is_zero() {
            self.record(bytes);
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let mut r = RateLimiter::new(0, Duration::ZERO);
        for _ in 0..1000 {
            assert_eq!(r.try_grant(1 << 30), Duration::ZERO);
        }
    }

    #[test]
    fn paces_large_grants_one_at_a_time() {
        // 1 MiB/s with 4 MiB requests: the first goes, the second waits ~4 s.
        let mut r = RateLimiter::new(1 << 20, Duration::from_millis(10));
        let t0 = std::time::Instant::now();
        assert_eq!(r.try_grant(4 << 20), Duration::ZERO);
        let wait = r.try_grant(4 << 20);
        // The wait plus the time that passed (a preempted test thread) is
        // the 4 s the first grant costs.
        let near_4s = |w: Duration| {
            w <= Duration::from_secs(4) && w + t0.elapsed() >= Duration::from_millis(3990)
        };
        assert!(near_4s(wait), "{wait:?} after {:?}", t0.elapsed());
        // Refused grants record nothing: asking again gives the same answer.
        let again = r.try_grant(4 << 20);
        assert!(again <= wait && near_4s(again), "{again:?}");
        r.set_rate(0);
        assert_eq!(r.try_grant(4 << 20), Duration::ZERO);
    }
}
