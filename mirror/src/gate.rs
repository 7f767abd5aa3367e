//! The quiesce gate in front of a [`crate::Disk`]: counts guest requests in
//! flight, and when closed parks new ones until it reopens.
//!
//! `state` packs a CLOSED bit with the in-flight count, so entering is one
//! `fetch_add` on the hot path. Closing sets the bit; the request that
//! brings the count to zero while closed calls the drained callback.
//!
//! Parking race: a request that saw CLOSED parks under the `parked` lock
//! and re-checks CLOSED there; `open` clears CLOSED *before* taking the
//! parked list under the same lock. So a parked request is either in the
//! list `open` takes, or sees the gate open and runs at once.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

const CLOSED: u64 = 1 << 63;

type Parked = Box<dyn FnOnce() + Send + 'static>;

pub(crate) struct Gate {
    state: AtomicU64,
    parked: Mutex<Vec<Parked>>,
    on_drained: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate {
            state: AtomicU64::new(0),
            parked: Mutex::new(Vec::new()),
            on_drained: Mutex::new(None),
        }
    }

    /// Count a request in; false when the gate is closed (the caller parks).
    /// AcqRel: pairs with `close` so a request counted before the close is
    /// seen by the drain, and one entering after sees CLOSED.
    pub(crate) fn enter(&self) -> bool {
        let s = self.state.fetch_add(1, Ordering::AcqRel);
        if s & CLOSED == 0 {
            return true;
        }
        self.leave();
        false
    }

    /// Count a request out.
    pub(crate) fn leave(&self) {
        let s = self.state.fetch_sub(1, Ordering::AcqRel) - 1;
        if s == CLOSED {
            self.notify_drained();
        }
    }

    fn notify_drained(&self) {
        if let Some(f) = self.on_drained.lock().as_ref() {
            f();
        }
    }

    /// Requests in flight.
    pub(crate) fn in_flight(&self) -> u64 {
        self.state.load(Ordering::Acquire) & !CLOSED
    }

    /// Close: new requests park. `drained` is called (possibly right now,
    /// possibly more than once) when nothing is in flight.
    pub(crate) fn close(&self, drained: Box<dyn Fn() + Send + Sync>) {
        *self.on_drained.lock() = Some(drained);
        let s = self.state.fetch_or(CLOSED, Ordering::AcqRel);
        if s & !CLOSED == 0 {
            self.notify_drained();
        }
    }

    /// Reopen and run everything that parked meanwhile (on this thread).
    pub(crate) fn open(&self) {
        self.state.fetch_and(!CLOSED, Ordering::AcqRel);
        *self.on_drained.lock() = None;
        let parked = std::mem::take(&mut *self.parked.lock());
        for f in parked {
            f();
        }
    }

    /// Park `f` until the gate opens (or run it now if it already has).
    pub(crate) fn park(&self, f: Parked) {
        let mut parked = self.parked.lock();
        if self.state.load(Ordering::Acquire) & CLOSED != 0 {
            parked.push(f);
            return;
        }
        drop(parked);
        f();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn close_drains_then_parks_then_replays() {
        let g = Arc::new(Gate::new());
        assert!(g.enter());
        assert!(g.enter());
        let drained = Arc::new(AtomicUsize::new(0));
        let d = drained.clone();
        g.close(Box::new(move || {
            d.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(drained.load(Ordering::SeqCst), 0);
        assert!(!g.enter());
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        g.park(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        g.leave();
        assert_eq!(drained.load(Ordering::SeqCst), 0);
        g.leave();
        assert!(drained.load(Ordering::SeqCst) >= 1);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        g.open();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(g.enter());
        g.leave();
        assert_eq!(g.in_flight(), 0);
    }
}
