//! Joining the completions of a request split into several wire requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use ringmirror_engine::{BufDone, DmaBuf, Done, IoError, IoResult};

/// Joins partial completions into one [`Done`]; the first error wins.
pub(crate) struct Join {
    remaining: AtomicUsize,
    err: Mutex<Option<IoError>>,
    done: Mutex<Option<Done>>,
}

impl Join {
    pub(crate) fn new(parts: usize, done: Done) -> Arc<Join> {
        Arc::new(Join {
            remaining: AtomicUsize::new(parts),
            err: Mutex::new(None),
            done: Mutex::new(Some(done)),
        })
    }

    pub(crate) fn part(&self, res: IoResult<()>) {
        if let Err(e) = res {
            self.err.lock().get_or_insert(e);
        }
        // AcqRel: the last part sees every earlier part's error.
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let res = self.err.lock().take().map_or(Ok(()), Err);
            if let Some(done) = self.done.lock().take() {
                done(res);
            }
        }
    }
}

/// Joins partial completions of one buffer-carrying request; the caller's
/// buffer goes back to its completion after the last part.
pub(crate) struct BufJoin {
    pub(crate) buf: Mutex<Option<DmaBuf>>,
    remaining: AtomicUsize,
    err: Mutex<Option<IoError>>,
    done: Mutex<Option<BufDone>>,
}

impl BufJoin {
    pub(crate) fn new(buf: DmaBuf, parts: usize, done: BufDone) -> Arc<BufJoin> {
        Arc::new(BufJoin {
            buf: Mutex::new(Some(buf)),
            remaining: AtomicUsize::new(parts),
            err: Mutex::new(None),
            done: Mutex::new(Some(done)),
        })
    }

    pub(crate) fn part(&self, res: IoResult<()>) {
        if let Err(e) = res {
            self.err.lock().get_or_insert(e);
        }
        // AcqRel: the last part sees every earlier part's error and copy.
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let res = self.err.lock().take().map_or(Ok(()), Err);
            let buf = self.buf.lock().take();
            let done = self.done.lock().take();
            if let (Some(done), Some(buf)) = (done, buf) {
                done(buf, res);
            }
        }
    }
}
