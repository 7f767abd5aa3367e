//! Ctrl-C handling: the handler gets the number of interrupts so far (the
//! mirror command soft-cancels on the first and force-cancels on the second).

use std::sync::atomic::{AtomicUsize, Ordering};

static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Call `f(n)` on the n-th SIGINT/SIGTERM (n starts at 1). Only the first
/// registration takes effect.
pub fn on_interrupt(f: impl Fn(usize) + Send + 'static) {
    let _ = ctrlc::set_handler(move || {
        let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
        f(n);
    });
}
