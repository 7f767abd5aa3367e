//! A range lock for writes to one device, asynchronous (a waiter is a
//! closure run when its range is granted, never a blocked thread).
//!
//! Aligned writes take their range *shared*: they never wait for each other
//! (concurrent overlapping writes are the caller's business, as on any disk).
//! A read-modify-write takes its aligned span *exclusive*: it must not read a
//! block while another write to that block is in flight, or it would write
//! back stale bytes next to the ones it patches. Waiters are granted in FIFO
//! order so a stream of shared writes cannot starve an exclusive one.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

type Grant = Box<dyn FnOnce(RangeGuard) + Send + 'static>;

struct Held {
    id: u64,
    lo: u64,
    hi: u64,
    exclusive: bool,
}

struct Waiter {
    held: Held,
    grant: Grant,
}

#[derive(Default)]
struct State {
    held: Vec<Held>,
    waiting: VecDeque<Waiter>,
    next_id: u64,
}

fn conflicts(a: &Held, lo: u64, hi: u64, exclusive: bool) -> bool {
    a.lo < hi && lo < a.hi && (a.exclusive || exclusive)
}

/// An asynchronous range lock; see the module docs. Used by the file
/// devices for read-modify-write, and by the mirror for its cluster locks.
#[derive(Default)]
pub struct RangeLock {
    state: Mutex<State>,
}

/// Holds a range until dropped; dropping it grants waiters on this thread.
pub struct RangeGuard {
    lock: Arc<RangeLock>,
    id: u64,
}

impl RangeLock {
    /// Run `then` with a guard on `[lo, hi)` as soon as no conflicting holder
    /// or earlier conflicting waiter remains (possibly right now, on this
    /// thread; otherwise on the thread that releases the last conflict).
    pub fn acquire(
        self: &Arc<Self>,
        lo: u64,
        hi: u64,
        exclusive: bool,
        then: impl FnOnce(RangeGuard) + Send + 'static,
    ) {
        let mut st = self.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        let held = Held {
            id,
            lo,
            hi,
            exclusive,
        };
        let blocked = st.held.iter().any(|h| conflicts(h, lo, hi, exclusive))
            || st
                .waiting
                .iter()
                .any(|w| conflicts(&w.held, lo, hi, exclusive));
        if blocked {
            st.waiting.push_back(Waiter {
                held,
                grant: Box::new(then),
            });
            return;
        }
        st.held.push(held);
        drop(st);
        then(RangeGuard {
            lock: self.clone(),
            id,
        });
    }

    /// Take `[lo, hi)` now if nothing conflicts (holders or earlier waiters),
    /// else return `None` without queueing.
    pub fn try_acquire(self: &Arc<Self>, lo: u64, hi: u64, exclusive: bool) -> Option<RangeGuard> {
        let mut st = self.state.lock();
        let blocked = st.held.iter().any(|h| conflicts(h, lo, hi, exclusive))
            || st
                .waiting
                .iter()
                .any(|w| conflicts(&w.held, lo, hi, exclusive));
        if blocked {
            return None;
        }
        let id = st.next_id;
        st.next_id += 1;
        st.held.push(Held {
            id,
            lo,
            hi,
            exclusive,
        });
        Some(RangeGuard {
            lock: self.clone(),
            id,
        })
    }

    /// True when nothing is held or waiting.
    pub fn is_idle(&self) -> bool {
        let st = self.state.lock();
        st.held.is_empty() && st.waiting.is_empty()
    }

    fn release(self: &Arc<Self>, id: u64) {
        let mut granted = Vec::new();
        {
            let mut st = self.state.lock();
            if let Some(pos) = st.held.iter().position(|h| h.id == id) {
                st.held.swap_remove(pos);
            }
            if st.waiting.is_empty() {
                return;
            }
            let mut still: VecDeque<Waiter> = VecDeque::new();
            while let Some(w) = st.waiting.pop_front() {
                let (lo, hi, ex) = (w.held.lo, w.held.hi, w.held.exclusive);
                let blocked = st.held.iter().any(|h| conflicts(h, lo, hi, ex))
                    || still.iter().any(|s| conflicts(&s.held, lo, hi, ex));
                if blocked {
                    still.push_back(w);
                } else {
                    granted.push((w.held.id, w.grant));
                    st.held.push(w.held);
                }
            }
            st.waiting = still;
        }
        for (id, grant) in granted {
            grant(RangeGuard {
                lock: self.clone(),
                id,
            });
        }
    }

    /// Ranges held right now (for tests).
    #[cfg(test)]
    pub(crate) fn held_count(&self) -> usize {
        self.state.lock().held.len()
    }
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        self.lock.release(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    #[test]
    fn shared_ranges_do_not_wait_exclusive_does() {
        let lock = Arc::new(RangeLock::default());
        let log = Arc::new(StdMutex::new(Vec::new()));
        let guards = Arc::new(StdMutex::new(Vec::new()));
        for (name, lo, hi, ex) in [
            ("a", 0, 10, false),
            ("b", 5, 15, false),
            ("x", 8, 9, true),
            ("c", 20, 30, false),
            ("d", 8, 9, false),
        ] {
            let (log, guards) = (log.clone(), guards.clone());
            lock.acquire(lo, hi, ex, move |g| {
                log.lock().unwrap().push(name);
                guards.lock().unwrap().push((name, g));
            });
        }
        // a, b shared overlap: both granted; x waits on them; c is disjoint;
        // d (shared) queues behind x because x overlaps and waits first.
        assert_eq!(*log.lock().unwrap(), vec!["a", "b", "c"]);
        let take = |n: &str| {
            let mut g = guards.lock().unwrap();
            let pos = g.iter().position(|(m, _)| *m == n).unwrap();
            g.remove(pos).1
        };
        drop(take("a"));
        assert_eq!(*log.lock().unwrap(), vec!["a", "b", "c"]);
        drop(take("b"));
        assert_eq!(*log.lock().unwrap(), vec!["a", "b", "c", "x"]);
        drop(take("x"));
        assert_eq!(*log.lock().unwrap(), vec!["a", "b", "c", "x", "d"]);
        drop(take("c"));
        drop(take("d"));
        assert_eq!(lock.held_count(), 0);
    }
}
