//! [`Pacer`]: how fast the job may copy so that the guest keeps most of its
//! speed while it does.
//!
//! AIMD on a copy rate, driven by the guest's own latency, which the
//! [`crate::Disk`] measures on every guest request. While the guest is
//! active the pacer first *probes*: it stops the copy for a few intervals and
//! learns the guest's latency undisturbed (the baseline). Then every
//! interval it compares the guest's mean latency with the baseline: above
//! `SLOWDOWN` times the baseline the rate halves, below it grows by a step.
//! It probes again every `REPROBE`, since guests change; since devices
//! stall, the baseline is the new probe's result or, if that is higher, the
//! median of the last three (see `BASELINES`). A light guest may wait for
//! one copy request while it keeps its rate (see `ONE_COPY_WAIT_NS`).
//! Without guest I/O
//! the copy is unlimited.
//!
//! ```text
//!   rate ▲      /|    /|   /‾‾        guest latency ▲  ....SLOWDOWN x baseline....
//!        │     / |   / |  /                         │ ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
//!        │ ___/  |__/  |_/                          │
//!        └─probe──────────────────► t               └────────────────────────────► t
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::options::GuestShare;

/// Guest latency may rise to this multiple of its baseline: at a fixed
/// queue depth the guest keeps about 1 / SLOWDOWN of its IOPS. A job that
/// stops converging raises its allowance (`relax`), up to MAX_SLOWDOWN; if
/// even then the bytes left do not shrink at all, the load is more than the
/// disk can copy behind, and the guest gets SLOWDOWN back for RELAX_HOLD
/// before the next try (slowing it further would cost the guest and buy
/// nothing). A job that shrinks slowly keeps MAX_SLOWDOWN: it converges.
/// These are [`GuestShare::Auto`]'s; a set percentage is both the start
/// and the limit, and [`GuestShare::Unpaced`] turns the pacer off.
const SLOWDOWN: f64 = 1.15;
const MAX_SLOWDOWN: f64 = 2.0;
const RELAX_HOLD: Duration = Duration::from_secs(60);
/// With the automatic share, a light guest may wait for one copy request
/// ahead of its own: a 64 KiB request (the paced size) at the disk's
/// 1 GB/s. Light: at least MIN_SAMPLES requests and under one in flight on
/// average in the probe (Little's law: their latencies sum to less than the
/// time), and, in the interval judged, under one in flight too and at least
/// OPEN_LOOP_KEEP of the requests per second of the probe, so that waiting
/// costs it nothing but the wait (a guest issuing at its own rate).
/// Such a guest's latency, 130 µs undisturbed in the demo, has 20 µs of
/// room at 1.15x, less than any copy request takes: it held the copy near
/// its floor (1 GiB in 23-28 s) while losing no IOPS. A guest whose rate
/// follows its latency (one request at a time, waiting for each) falls
/// under OPEN_LOOP_KEEP and is judged by the ratio alone; a saturating one
/// (16 in flight) never counts as light. A share the user set is the
/// ratio alone.
const ONE_COPY_WAIT_NS: f64 = 64_000.0;
const OPEN_LOOP_KEEP: f64 = 0.95;
/// Length of one measurement interval.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);
/// A tick this long after the last one (the job was paused, or guest I/O
/// was held) judges nothing.
const STALE: Duration = Duration::from_millis(500);
/// Intervals of a probe (copy stopped); the first is not measured, as
/// copies issued before it may still be completing.
const PROBE_INTERVALS: u32 = 4;
/// How often the baseline is measured again.
const REPROBE: Duration = Duration::from_secs(10);
/// A probe's result is remembered for BASELINE_MEMORY, the last BASELINES
/// of them, and the baseline is the lower of the new result and the median
/// of those remembered (the lower of two): a probe that a device stall
/// happens to hit measures the stall, and taken alone it would leave the
/// guest unprotected until the next probe (traced on 2026-12-03: baselines
/// of 125 µs, then 2768 µs for 10 s, then 131 µs; in half of 15 traced runs
/// one probe came out 2-20x off its neighbours). A stall only makes a probe
/// slower, so a lower result is taken at once (a guest that got faster,
/// the end of a long stall); a higher one when two of the last three
/// agree (a guest that got slower is meanwhile protected more, not less).
const BASELINES: usize = 3;
const BASELINE_MEMORY: Duration = Duration::from_secs(35);
/// An interval with fewer guest requests than this says nothing, unless
/// the guest's requests waited (see `tick`).
const MIN_SAMPLES: u64 = 20;
/// Probes in a row that may see the guest wait with fewer than MIN_SAMPLES
/// completions before those few are taken as its baseline (or, if none
/// completed at all, before it is taken for idle).
const MAX_REPROBES: u32 = 4;
/// The rate after a probe, the additive step, and the floor (bytes/s).
const START_RATE: u64 = 64 << 20;
const STEP: u64 = 32 << 20;
const MIN_RATE: u64 = 4 << 20;
/// At or above this, the copy is not limited at all.
const UNLIMITED: u64 = 4 << 30;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// The guest is idle (or not yet seen): copy at full speed.
    Idle,
    /// Copy stopped; learning the baseline. `left` intervals to go;
    /// `waited`: the guest was starved in a measured interval.
    Probing {
        left: u32,
        ops: u64,
        lat: u64,
        waited: bool,
        /// Wall time of the measured intervals (ns).
        ns: u64,
    },
    /// Pacing against `baseline_ns`. `open_rate`: the guest completed this
    /// many requests per second in the probe, a light guest (see
    /// ONE_COPY_WAIT_NS); 0 otherwise.
    Pacing { baseline_ns: f64, open_rate: f64 },
}

pub(crate) struct Pacer {
    state: State,
    slowdown: f64,
    /// The job's share: Auto relaxes and lets a light guest wait for one
    /// copy request, a percentage is a fixed allowance, Unpaced never
    /// probes or limits.
    share: GuestShare,
    /// After a relaxation that did not help: no new one before this.
    relax_hold_until: Option<Instant>,
    rate: u64,
    last_at: Instant,
    last: (u64, u64),
    next_probe: Instant,
    /// Guest requests in flight at the last tick.
    last_in_flight: u64,
    /// Probes in a row that saw the guest wait with few completions.
    reprobes: u32,
    /// When the guest was last paced: a re-probe soon after (the periodic
    /// one, or after an idle interval) takes few samples as a baseline.
    paced_at: Option<Instant>,
    /// Probes saw a request that never completed: until then, a request
    /// outstanding across an interval is not taken for starvation.
    stuck_until: Option<Instant>,
    /// Recent probe results (when, mean ns), oldest first.
    baselines: VecDeque<(Instant, f64)>,
    /// `RINGMIRROR_TRACE_PACER` set: one line per interval on stderr,
    /// times from this instant.
    trace: Option<Instant>,
}

/// Set (to anything) to trace the pacer's decisions on stderr.
pub(crate) const TRACE_ENV: &str = "RINGMIRROR_TRACE_PACER";

impl Pacer {
    /// A pacer starting from the guest's running totals `(ops, latency_ns)`.
    pub(crate) fn new(totals: (u64, u64), share: GuestShare) -> Pacer {
        let now = Instant::now();
        let mut p = Pacer {
            state: State::Idle,
            slowdown: SLOWDOWN,
            share: GuestShare::Auto,
            relax_hold_until: None,
            rate: 0,
            last_at: now,
            last: totals,
            next_probe: now,
            last_in_flight: 0,
            reprobes: 0,
            paced_at: None,
            stuck_until: None,
            baselines: VecDeque::with_capacity(BASELINES),
            trace: std::env::var_os(TRACE_ENV).map(|_| now),
        };
        p.set_share(share);
        p
    }

    /// Take a new guest share (at start, or `set_guest_share` while the job
    /// runs): the allowance starts afresh from it. A guest being paced
    /// stays paced against its baseline; turning pacing off lets the copy
    /// go at once, turning it on starts from idle (a probe follows at the
    /// next busy interval).
    pub(crate) fn set_share(&mut self, share: GuestShare) {
        self.share = share;
        self.slowdown = self.base_slowdown();
        self.relax_hold_until = None;
        if self.off() {
            self.state = State::Idle;
            self.rate = 0;
        }
    }

    /// True while the copy must stand still (probing the baseline).
    pub(crate) fn holds_copy(&self) -> bool {
        matches!(self.state, State::Probing { .. })
    }

    /// The copy rate allowed now, bytes/s (0 = unlimited).
    pub(crate) fn rate(&self) -> u64 {
        self.rate
    }

    /// The copy is not getting closer to READY fast enough: let it slow the
    /// guest a little more. If it already may slow it the most and the bytes
    /// left did not shrink at all (`stalled`), give the guest its allowance
    /// back for RELAX_HOLD (see MAX_SLOWDOWN).
    pub(crate) fn relax(&mut self, now: Instant, stalled: bool) {
        if self.share != GuestShare::Auto {
            // A share the user set: never less for the sake of convergence.
            return;
        }
        if let Some(until) = self.relax_hold_until {
            if now < until {
                return;
            }
            self.relax_hold_until = None;
        }
        if self.slowdown >= MAX_SLOWDOWN {
            if stalled {
                self.slowdown = SLOWDOWN;
                self.relax_hold_until = Some(now + RELAX_HOLD);
            }
        } else {
            self.slowdown = (self.slowdown + 0.25).min(MAX_SLOWDOWN);
        }
    }

    /// The allowance a share starts from and returns to.
    fn base_slowdown(&self) -> f64 {
        match self.share {
            GuestShare::Percent(p) => 100.0 / f64::from(p.clamp(1, 100)),
            GuestShare::Auto | GuestShare::Unpaced => SLOWDOWN,
        }
    }

    fn off(&self) -> bool {
        self.share == GuestShare::Unpaced
    }

    /// The share in force.
    pub(crate) fn share(&self) -> GuestShare {
        self.share
    }

    /// Back to the gentlest allowance (once in sync).
    pub(crate) fn reset_allowance(&mut self) {
        self.slowdown = self.base_slowdown();
        self.relax_hold_until = None;
    }

    /// The guest slowdown allowed now.
    #[cfg(test)]
    pub(crate) fn allowance(&self) -> f64 {
        self.slowdown
    }

    /// The guest slowdown allowed now; `None` with pacing off.
    pub(crate) fn allowed(&self) -> Option<f64> {
        (!self.off()).then_some(self.slowdown)
    }

    /// When the next interval ends.
    pub(crate) fn next_tick(&self) -> Instant {
        self.last_at + INTERVAL
    }

    /// Feed the guest's running totals and its requests in flight now;
    /// acts once per interval.
    pub(crate) fn tick(&mut self, now: Instant, totals: (u64, u64), in_flight: u64) {
        if now < self.last_at + INTERVAL {
            return;
        }
        let elapsed = now.duration_since(self.last_at);
        let ops = totals.0.saturating_sub(self.last.0);
        let lat = totals.1.saturating_sub(self.last.1);
        // Nothing completed and a request in flight at both ends: that
        // request has been outstanding for the whole interval.
        let spanned = ops == 0 && in_flight > 0 && self.last_in_flight > 0;
        self.last = totals;
        self.last_at = now;
        self.last_in_flight = in_flight;
        if self.off() {
            return;
        }
        if elapsed > STALE {
            // Not ticked for a while (paused, or guest I/O held for READY
            // or the switch): the totals span more than an interval and
            // say nothing about the copy. Start afresh.
            return;
        }
        // Few completions are not an idle guest when its requests wait: a
        // guest queued behind large copy requests completes almost nothing,
        // and taking that for idleness (unlimited copy, large requests)
        // starves it for good. Starved: what completed waited half the
        // interval in all, or a request was outstanding for all of it.
        // While pacing, such an interval is judged by its mean latency like
        // any other (nothing completed: infinitely slow); from idle, it
        // starts a probe.
        let backoff = self.stuck_until.is_some_and(|t| now < t);
        let starved =
            ops < MIN_SAMPLES && (lat >= elapsed.as_nanos() as u64 / 2 || (spanned && !backoff));
        let active = ops >= MIN_SAMPLES || starved;
        self.state = match self.state {
            State::Probing {
                left,
                ops: po,
                lat: pl,
                waited,
                ns: pns,
            } => {
                // The first probe interval is skipped (copies draining).
                let (po, pl, waited, pns) = if left == PROBE_INTERVALS {
                    (0, 0, false, 0)
                } else {
                    (
                        po + ops,
                        pl + lat,
                        waited || starved,
                        pns + elapsed.as_nanos() as u64,
                    )
                };
                let recently_paced = self
                    .paced_at
                    .is_some_and(|t| now.duration_since(t) < REPROBE);
                if left > 1 {
                    State::Probing {
                        left: left - 1,
                        ops: po,
                        lat: pl,
                        waited,
                        ns: pns,
                    }
                } else if po >= MIN_SAMPLES
                    || (po > 0 && waited && (self.reprobes >= MAX_REPROBES || recently_paced))
                {
                    // Few requests that keep waiting with the copy stopped,
                    // probe after probe (or again soon after pacing this
                    // guest): a slow guest, say one request at a time on a
                    // device taking 50 ms each. It has a baseline too.
                    self.rate = START_RATE;
                    self.next_probe = now + REPROBE;
                    self.reprobes = 0;
                    self.paced_at = Some(now);
                    // Light (see ONE_COPY_WAIT_NS): enough samples, and
                    // their latencies sum to less than the time they took.
                    let light = po >= MIN_SAMPLES && pl < pns;
                    State::Pacing {
                        baseline_ns: self.learn_baseline(now, pl as f64 / po as f64),
                        open_rate: if light {
                            po as f64 / (pns as f64 / 1e9)
                        } else {
                            0.0
                        },
                    }
                } else if waited && self.reprobes < MAX_REPROBES {
                    // The guest's requests wait with the copy stopped:
                    // copies still draining, or a stalling device. Look
                    // again, a few times.
                    self.reprobes += 1;
                    self.probe()
                } else {
                    if waited && po == 0 {
                        // A request outstanding through every probe, the
                        // copy stopped: stuck (a hung device, a long flush
                        // or discard), not slowed by the copy. Do not stop
                        // the copy for it again for a while.
                        self.stuck_until = Some(now + REPROBE);
                    }
                    // Or the guest went quiet while we looked.
                    self.rate = 0;
                    self.reprobes = 0;
                    State::Idle
                }
            }
            _ if !active => {
                self.rate = 0;
                State::Idle
            }
            State::Idle => self.probe(),
            State::Pacing { .. } if now >= self.next_probe => self.probe(),
            State::Pacing {
                baseline_ns,
                open_rate,
            } => {
                self.paced_at = Some(now);
                let mean = if ops == 0 {
                    f64::INFINITY
                } else {
                    lat as f64 / ops as f64
                };
                let current = if self.rate == 0 { UNLIMITED } else { self.rate };
                let mut limit = baseline_ns * self.slowdown;
                if self.share == GuestShare::Auto
                    && open_rate > 0.0
                    && lat < elapsed.as_nanos() as u64
                    && ops as f64 / elapsed.as_secs_f64() >= OPEN_LOOP_KEEP * open_rate
                {
                    limit = limit.max(baseline_ns + ONE_COPY_WAIT_NS);
                }
                self.rate = if mean > limit {
                    (current / 2).max(MIN_RATE)
                } else if current + STEP >= UNLIMITED {
                    0
                } else {
                    current + STEP
                };
                State::Pacing {
                    baseline_ns,
                    open_rate,
                }
            }
        };
        if let Some(t0) = self.trace {
            self.trace_line(now.duration_since(t0), ops, lat, in_flight);
        }
    }

    fn trace_line(&self, t: Duration, ops: u64, lat: u64, in_flight: u64) {
        let mean_us = lat.checked_div(ops).unwrap_or(0) / 1000;
        let (state, base_us) = match self.state {
            State::Idle => ("idle", 0.0),
            State::Probing { .. } => ("probe", 0.0),
            State::Pacing { baseline_ns, .. } => ("pace", baseline_ns / 1000.0),
        };
        let probe_us = self.baselines.back().map_or(0.0, |&(_, b)| b / 1000.0);
        eprintln!(
            "pacer t={:.1} state={state} ops={ops} mean_us={mean_us} inflight={in_flight} \
             base_us={base_us:.0} probe_us={probe_us:.0} allow={:.2} rate_mib={}",
            t.as_secs_f64(),
            self.slowdown,
            self.rate >> 20
        );
    }

    /// Remember a probe's result (mean ns per request); the baseline to
    /// pace against now (see BASELINES).
    fn learn_baseline(&mut self, now: Instant, ns: f64) -> f64 {
        // No device completes a request in under a microsecond; a zero
        // baseline would halve the rate at every interval.
        let ns = ns.max(1000.0);
        self.baselines
            .retain(|&(t, _)| now.duration_since(t) < BASELINE_MEMORY);
        if self.baselines.len() == BASELINES {
            self.baselines.pop_front();
        }
        self.baselines.push_back((now, ns));
        let mut v = [f64::INFINITY; BASELINES];
        for (slot, &(_, b)) in v.iter_mut().zip(&self.baselines) {
            *slot = b;
        }
        let n = self.baselines.len();
        v[..n].sort_by(f64::total_cmp);
        // One: itself; two: the lower; three: the middle one.
        v[(n - 1) / 2].min(ns)
    }

    /// The light guest's probe rate (requests/s), if pacing one.
    #[cfg(test)]
    fn open_rate(&self) -> Option<f64> {
        match self.state {
            State::Pacing { open_rate, .. } => Some(open_rate),
            _ => None,
        }
    }

    /// The baseline paced against, if pacing.
    #[cfg(test)]
    fn baseline_ns(&self) -> Option<f64> {
        match self.state {
            State::Pacing { baseline_ns, .. } => Some(baseline_ns),
            _ => None,
        }
    }

    fn probe(&mut self) -> State {
        State::Probing {
            left: PROBE_INTERVALS,
            ops: 0,
            lat: 0,
            waited: false,
            ns: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sim {
        p: Pacer,
        t: Instant,
        totals: (u64, u64),
    }

    impl Sim {
        fn new() -> Sim {
            Sim {
                p: Pacer::new((0, 0), GuestShare::Auto),
                t: Instant::now(),
                totals: (0, 0),
            }
        }

        /// One interval of a guest with requests: one in flight at the tick.
        fn step(&mut self, ops: u64, mean_ns: u64) -> (bool, u64) {
            self.step_in_flight(ops, mean_ns, u64::from(ops > 0))
        }

        fn step_in_flight(&mut self, ops: u64, mean_ns: u64, in_flight: u64) -> (bool, u64) {
            self.t += INTERVAL;
            self.totals = (self.totals.0 + ops, self.totals.1 + ops * mean_ns);
            self.p.tick(self.t, self.totals, in_flight);
            (self.p.holds_copy(), self.p.rate())
        }
    }

    #[test]
    fn probes_then_paces_and_lets_an_idle_guest_have_full_speed() {
        let mut s = Sim::new();
        assert_eq!(s.step(0, 0), (false, 0), "idle guest: unlimited");
        // A guest appears: the copy stops while the baseline is measured.
        assert_eq!(s.step(1000, 3_000_000), (true, 0));
        for _ in 0..PROBE_INTERVALS - 1 {
            assert!(s.step(1000, 1_000_000).0);
        }
        assert_eq!(s.step(1000, 1_000_000), (false, START_RATE));
        // Within 1.15x of the 1 ms baseline: grow by a step.
        assert_eq!(s.step(1000, 1_100_000), (false, START_RATE + STEP));
        // 1.5x: halve, down to the floor and no further.
        assert_eq!(s.step(1000, 1_500_000).1, (START_RATE + STEP) / 2);
        for _ in 0..10 {
            s.step(1000, 1_500_000);
        }
        assert_eq!(s.p.rate(), MIN_RATE);
        // The guest stops: unlimited again.
        assert_eq!(s.step(0, 0), (false, 0));
    }

    #[test]
    fn a_starved_guest_is_not_an_idle_one() {
        let mut s = Sim::new();
        // 16 requests queued behind the copy, none completing: not idle,
        // so the copy stops and the pacer looks at the guest.
        s.step_in_flight(0, 0, 16);
        assert_eq!(
            s.step_in_flight(0, 0, 16),
            (true, 0),
            "must probe, not run unlimited"
        );
        // It keeps looking while the guest still waits with the copy stopped
        // (draining copies, a stalling device) ...
        for _ in 0..PROBE_INTERVALS {
            s.step_in_flight(3, 300_000_000, 16);
        }
        assert!(
            s.p.holds_copy(),
            "a probe that saw only a waiting guest must go on"
        );
        // ... and paces once it sees the guest undisturbed.
        for _ in 0..PROBE_INTERVALS {
            s.step_in_flight(1000, 100_000, 16);
        }
        assert_eq!((s.p.holds_copy(), s.p.rate()), (false, START_RATE));
        // A few completions that waited long (16 after 300 ms): halve, do
        // not take it for idleness.
        assert_eq!(
            s.step_in_flight(16, 300_000_000, 16),
            (false, START_RATE / 2)
        );
        // Nothing completing at all with requests in flight: halve.
        assert_eq!(s.step_in_flight(0, 0, 16), (false, START_RATE / 4));
        // A light guest (a few quick requests, none in flight now) is idle.
        assert_eq!(s.step_in_flight(5, 100_000, 0), (false, 0));
        // One request in flight at a tick but not the one before: idle.
        assert_eq!(s.step_in_flight(0, 0, 1), (false, 0));
    }

    #[test]
    fn a_slow_guest_with_few_requests_is_paced_not_stopped() {
        let mut s = Sim::new();
        // One request at a time, 50 ms each: 2 completions per interval,
        // always one in flight. Probes repeat a bounded number of times ...
        let mut held = 0;
        for _ in 0..(MAX_REPROBES + 2) * PROBE_INTERVALS {
            held += u32::from(s.step_in_flight(2, 50_000_000, 1).0);
        }
        assert!(
            held <= (MAX_REPROBES + 1) * PROBE_INTERVALS,
            "held {held} intervals"
        );
        // ... and then it is paced against its own 50 ms, so the copy grows.
        assert!(!s.p.holds_copy());
        let r0 = s.p.rate();
        assert!(r0 > 0);
        assert_eq!(s.step_in_flight(2, 52_000_000, 1), (false, r0 + STEP));
        // After an idle interval (a pause between batches) it is taken
        // back after a single probe, not five.
        assert_eq!(s.step_in_flight(0, 0, 0), (false, 0), "idle");
        let mut held = 0;
        while s.step_in_flight(2, 50_000_000, 1).0 || held == 0 {
            held += 1;
            assert!(held <= PROBE_INTERVALS + 1, "re-probed more than once");
        }
        assert_eq!(s.p.rate(), START_RATE);
        // Completions that waited half an interval in all start a probe
        // by themselves (no request in flight at either tick).
        let mut s = Sim::new();
        s.step_in_flight(0, 0, 0);
        assert!(
            s.step_in_flight(3, 30_000_000, 0).0,
            "90 ms of waiting must start a probe"
        );
    }

    #[test]
    fn a_stuck_request_does_not_stop_the_copy() {
        let mut s = Sim::new();
        let mut step = |in_flight: u64| s.step_in_flight(0, 0, in_flight).0;
        // One request outstanding, never completing (a hung device, a long
        // flush): the pacer looks at most MAX_REPROBES + 1 times ...
        step(1);
        let mut held = 0;
        for _ in 0..(MAX_REPROBES + 2) * PROBE_INTERVALS {
            held += u32::from(step(1));
        }
        assert_eq!(held, (MAX_REPROBES + 1) * PROBE_INTERVALS);
        // ... and then lets the copy run while the request stays stuck.
        for i in 0..50 {
            assert!(!step(1), "copy held again {i} intervals later");
        }
        assert_eq!(s.p.rate(), 0);
    }

    #[test]
    fn a_late_tick_judges_nothing() {
        let mut s = Sim::new();
        for _ in 0..=PROBE_INTERVALS {
            s.step(1000, 100_000);
        }
        assert_eq!(s.p.rate(), START_RATE);
        // Two seconds without a tick (the job paused), very slow guest
        // requests in that time: no halving for it.
        s.t += Duration::from_secs(2);
        assert_eq!(s.step(1000, 10_000_000), (false, START_RATE));
    }

    /// Steps with the guest at 1000 requests of `ns` each until a re-probe
    /// starts, then through the probe with the guest at `probe_ns`.
    fn reprobe(s: &mut Sim, ns: u64, probe_ns: u64) {
        let mut n = 0;
        while !s.step(1000, ns).0 {
            n += 1;
            assert!(n < 200, "no re-probe");
        }
        for _ in 0..PROBE_INTERVALS {
            s.step(1000, probe_ns);
        }
        assert!(!s.p.holds_copy());
    }

    #[test]
    fn one_probe_hit_by_a_stall_does_not_move_the_baseline() {
        let mut s = Sim::new();
        for _ in 0..=PROBE_INTERVALS {
            s.step(1000, 100_000);
        }
        assert_eq!(s.p.baseline_ns(), Some(100_000.0));
        // The re-probe meets a device stall: 2 ms per request.
        reprobe(&mut s, 100_000, 2_000_000);
        assert_eq!(
            s.p.baseline_ns(),
            Some(100_000.0),
            "one stalled probe must not make 2 ms the guest's normal"
        );
        // So a guest slowed to 300 µs by the copy is still protected.
        assert_eq!(s.step(1000, 300_000), (false, START_RATE / 2));
        // A guest that really slowed down is followed at the next probe.
        reprobe(&mut s, 2_000_000, 2_000_000);
        assert_eq!(s.p.baseline_ns(), Some(2_000_000.0));
        // A faster one at once (a stall only makes a probe slower), with
        // two slower probes still remembered.
        reprobe(&mut s, 2_000_000, 100_000);
        assert_eq!(s.p.baseline_ns(), Some(100_000.0));
        // A quiet spell shorter than BASELINE_MEMORY: the last probe is
        // remembered, so a stalled one after it does not count alone ...
        let probe_after = |s: &mut Sim, gap: Duration, ns: u64| {
            s.step(0, 0);
            s.t += gap;
            s.step(0, 0);
            s.step(0, 0);
            for _ in 0..=PROBE_INTERVALS {
                s.step(1000, ns);
            }
            assert!(!s.p.holds_copy());
        };
        probe_after(&mut s, BASELINE_MEMORY - Duration::from_secs(2), 2_000_000);
        assert_eq!(s.p.baseline_ns(), Some(100_000.0));
        // ... and after a longer one the first probe stands alone, even a
        // slower one (remembered, the 2 ms or 100 µs would win).
        probe_after(&mut s, BASELINE_MEMORY, 3_000_000);
        assert_eq!(s.p.baseline_ns(), Some(3_000_000.0));
        // A probe that measured nothing slower than nothing is no baseline
        // of zero.
        probe_after(&mut s, BASELINE_MEMORY, 0);
        assert_eq!(s.p.baseline_ns(), Some(1000.0));
    }

    #[test]
    fn probes_again_after_a_while() {
        let mut s = Sim::new();
        for _ in 0..=PROBE_INTERVALS {
            s.step(1000, 100_000);
        }
        assert!(!s.p.holds_copy());
        let mut probed = false;
        for _ in 0..(REPROBE.as_millis() / INTERVAL.as_millis() + 2) {
            probed |= s.step(1000, 100_000).0;
        }
        assert!(probed, "no new probe within REPROBE");
    }

    /// Learn a 1 ms baseline (a busy interval, then the probe): 10 requests
    /// in flight, a saturating guest.
    fn pace_at_1ms(s: &mut Sim) {
        assert!(s.step(1000, 1_000_000).0, "a busy guest starts a probe");
        for _ in 0..PROBE_INTERVALS {
            s.step(1000, 1_000_000);
        }
        assert_eq!(s.p.baseline_ns(), Some(1_000_000.0));
        assert_eq!(s.p.rate(), START_RATE);
    }

    #[test]
    fn a_set_share_is_the_latency_allowance() {
        // 50%: the guest's latency may double.
        let mut s = Sim::new();
        s.p.set_share(GuestShare::Percent(50));
        pace_at_1ms(&mut s);
        assert_eq!(s.step(1000, 1_900_000).1, START_RATE + STEP);
        assert_eq!(s.step(1000, 2_100_000).1, (START_RATE + STEP) / 2);
        // Auto at the same latencies: 1.9x is far too slow already.
        let mut s = Sim::new();
        pace_at_1ms(&mut s);
        assert_eq!(s.step(1000, 1_900_000).1, START_RATE / 2);
        assert_eq!(s.step(1000, 1_120_000).1, START_RATE / 2 + STEP);
        // 100%: any slowdown at all halves the rate.
        let mut s = Sim::new();
        s.p.set_share(GuestShare::Percent(100));
        pace_at_1ms(&mut s);
        assert_eq!(s.step(1000, 1_010_000).1, START_RATE / 2);
        assert_eq!(s.step(1000, 1_000_000).1, START_RATE / 2 + STEP);
    }

    /// Probe a guest doing `ops` requests per interval at `ns` each.
    fn pace(s: &mut Sim, ops: u64, ns: u64) {
        assert!(s.step(ops, ns).0, "a busy guest starts a probe");
        for _ in 0..PROBE_INTERVALS {
            s.step(ops, ns);
        }
        assert_eq!(s.p.baseline_ns(), Some(ns as f64));
        assert_eq!(s.p.rate(), START_RATE);
    }

    #[test]
    fn a_light_guest_may_wait_for_one_copy_request() {
        // 400 requests per 100 ms at 130 µs: half a request in flight, a
        // guest issuing at its own rate (the demo's).
        let mut s = Sim::new();
        pace(&mut s, 400, 130_000);
        // 1.46x, but within one copy request's wait, at its full rate: grow.
        assert_eq!(s.step(400, 190_000).1, START_RATE + STEP);
        assert_eq!(s.step(390, 190_000).1, START_RATE + 2 * STEP);
        // Past one copy request's wait: halve.
        assert_eq!(s.step(400, 200_000).1, (START_RATE + 2 * STEP) / 2);
        // Its rate fell with its latency (it waits for each request): the
        // ratio alone judges it.
        let r = s.p.rate();
        assert_eq!(s.step(370, 160_000).1, r / 2);
        assert_eq!(s.step(370, 145_000).1, r / 2 + STEP);
        // Heavier since the probe (2.3 in flight now): the ratio.
        let r = s.p.rate();
        assert_eq!(s.step(1200, 190_000).1, r / 2);
        // The same latencies from a saturating guest (13 in flight): halve.
        let mut s = Sim::new();
        pace(&mut s, 10_000, 130_000);
        assert_eq!(s.p.open_rate(), Some(0.0));
        assert_eq!(s.step(10_000, 190_000).1, START_RATE / 2);
        // Exactly one in flight is not light; just under it is.
        let mut s = Sim::new();
        pace(&mut s, 1000, 100_000);
        assert_eq!(s.p.open_rate(), Some(0.0));
        let mut s = Sim::new();
        pace(&mut s, 1000, 99_999);
        assert_eq!(s.p.open_rate(), Some(10_000.0));
        // A light guest with a large baseline: 1.15x is the larger room.
        let mut s = Sim::new();
        pace(&mut s, 40, 1_000_000);
        assert_eq!(s.step(40, 1_100_000).1, START_RATE + STEP);
        // A share the user set is the ratio alone, light guest or not.
        let mut s = Sim::new();
        s.p.set_share(GuestShare::Percent(100));
        pace(&mut s, 400, 130_000);
        assert_eq!(s.step(400, 131_000).1, START_RATE / 2);
    }

    #[test]
    fn unpaced_never_stops_or_limits_the_copy() {
        let mut s = Sim::new();
        s.p.set_share(GuestShare::Unpaced);
        for _ in 0..200 {
            assert_eq!(s.step(1000, 5_000_000), (false, 0));
            assert_eq!(s.step_in_flight(0, 0, 16), (false, 0), "starved");
        }
    }

    #[test]
    fn changing_the_share_while_pacing() {
        let mut s = Sim::new();
        pace_at_1ms(&mut s);
        assert_eq!(s.step(1000, 3_000_000).1, START_RATE / 2);
        // Off: the copy goes at once, whatever the guest sees.
        s.p.set_share(GuestShare::Unpaced);
        assert_eq!((s.p.holds_copy(), s.p.rate()), (false, 0));
        assert_eq!(s.step(1000, 3_000_000), (false, 0));
        // On again: the next busy interval starts a probe, then pacing.
        s.p.set_share(GuestShare::Auto);
        pace_at_1ms(&mut s);
        // A new percentage keeps the baseline and applies from the next
        // interval.
        s.p.set_share(GuestShare::Percent(25));
        assert_eq!(s.p.baseline_ns(), Some(1_000_000.0));
        assert_eq!(s.step(1000, 3_900_000).1, START_RATE + STEP);
        assert_eq!(s.step(1000, 4_100_000).1, (START_RATE + STEP) / 2);
    }
}

#[cfg(test)]
mod relax_tests {
    use super::*;

    /// Relax step by step (each step must raise the allowance) to the most.
    fn relax_to_max(p: &mut Pacer, now: Instant) {
        while p.allowance() < MAX_SLOWDOWN {
            let before = p.allowance();
            p.relax(now, true);
            assert!(p.allowance() > before, "relax must raise the allowance");
        }
        assert_eq!(p.allowance(), MAX_SLOWDOWN);
    }

    #[test]
    fn relaxing_is_bounded_and_resets() {
        let mut p = Pacer::new((0, 0), GuestShare::Auto);
        let t0 = Instant::now();
        relax_to_max(&mut p, t0);
        p.reset_allowance();
        assert_eq!(p.allowance(), SLOWDOWN);
    }

    #[test]
    fn relaxing_that_does_not_help_gives_the_guest_its_allowance_back() {
        let mut p = Pacer::new((0, 0), GuestShare::Auto);
        let t0 = Instant::now();
        relax_to_max(&mut p, t0);
        // Shrinking, if slowly, at the most it may slow the guest: stay.
        p.relax(t0, false);
        assert_eq!(p.allowance(), MAX_SLOWDOWN);
        // Not shrinking at all at the most it may slow the guest: back off.
        p.relax(t0, true);
        assert_eq!(p.allowance(), SLOWDOWN);
        // ... and stay there for RELAX_HOLD.
        p.relax(t0 + RELAX_HOLD / 2, true);
        assert_eq!(p.allowance(), SLOWDOWN);
        // Then try again.
        p.relax(t0 + RELAX_HOLD, true);
        assert_eq!(p.allowance(), SLOWDOWN + 0.25);
        // READY clears the hold as well.
        relax_to_max(&mut p, t0 + RELAX_HOLD);
        p.relax(t0 + RELAX_HOLD, true);
        assert_eq!(p.allowance(), SLOWDOWN);
        p.reset_allowance();
        p.relax(t0 + RELAX_HOLD, true);
        assert_eq!(p.allowance(), SLOWDOWN + 0.25);
    }

    #[test]
    fn a_set_share_is_never_relaxed() {
        let mut p = Pacer::new((0, 0), GuestShare::Percent(80));
        let t0 = Instant::now();
        for stalled in [false, true, true, false] {
            p.relax(t0, stalled);
            assert_eq!(p.allowance(), 1.25);
        }
        p.reset_allowance();
        assert_eq!(p.allowance(), 1.25);
        // Back to Auto: relaxing works again, from Auto's start.
        p.set_share(GuestShare::Auto);
        assert_eq!(p.allowance(), SLOWDOWN);
        relax_to_max(&mut p, t0);
    }
}
