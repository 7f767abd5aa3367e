//! One reactor thread: owns one io_uring, takes [`RawOp`]s from a channel,
//! runs their completions. Other threads hand it work through
//! [`ReactorHandle::submit`]; a sleeping reactor is woken through an eventfd
//! that its ring polls.
//!
//! ```text
//!  any thread                      reactor thread
//!  ──────────                      ──────────────
//!  tx.send(Msg::Op) ─────────────> rx.try_recv() ─> backlog ─> Ring::push
//!  if sleeping.swap(false):                              │
//!      eventfd += 1  ──(poll CQE)─> wakes submit_and_wait │
//!                                  reap ─> short I/O? re-push : op.done(..)
//! ```
//!
//! Lost-wakeup argument: the reactor stores `sleeping = true` (SeqCst) and
//! only then re-checks the channel before blocking; a submitter sends first
//! and then swaps `sleeping` (SeqCst). Either the reactor sees the message,
//! or the submitter sees `true` and writes the eventfd, whose poll is armed
//! in the ring before the reactor blocks.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::rawop::RawOp;
use crate::sys::{signal_eventfd, Ring};

/// Messages a reactor takes.
pub(crate) enum Msg {
    /// Run an operation.
    Op(RawOp),
    /// Put an fd in the fixed-file table, then acknowledge.
    RegisterFile {
        index: u32,
        /// Kept open by the sender, who waits for `ack`.
        fd: RawFd,
        ack: Sender<io::Result<()>>,
    },
    /// Empty a fixed-file slot.
    UnregisterFile(u32),
    /// Finish in-flight work and exit.
    Shutdown,
}

/// The submitting side of a reactor.
pub(crate) struct ReactorHandle {
    pub(crate) tx: Sender<Msg>,
    pub(crate) sleeping: Arc<AtomicBool>,
    pub(crate) wake_fd: Arc<OwnedFd>,
    /// Operations queued or in flight, for load balancing.
    pub(crate) load: Arc<AtomicUsize>,
}

impl ReactorHandle {
    /// Queue a message; wake the reactor if it sleeps.
    pub(crate) fn send(&self, msg: Msg) -> Result<(), Msg> {
        if let Msg::Op(_) = msg {
            self.load.fetch_add(1, Ordering::Relaxed);
        }
        self.tx.send(msg).map_err(|e| e.0)?;
        // SeqCst pairs with the reactor's store/re-check; see module docs.
        if self.sleeping.swap(false, Ordering::SeqCst) {
            signal_eventfd(&self.wake_fd);
        }
        Ok(())
    }
}

/// State owned by the reactor thread.
pub(crate) struct Reactor {
    pub(crate) ring: Ring,
    pub(crate) rx: Receiver<Msg>,
    pub(crate) sleeping: Arc<AtomicBool>,
    pub(crate) load: Arc<AtomicUsize>,
}

impl Reactor {
    /// The reactor loop. Returns when told to shut down (or every sender is
    /// gone) and nothing is left in flight.
    pub(crate) fn run(mut self) {
        let mut backlog: VecDeque<RawOp> = VecDeque::new();
        let mut reaped: Vec<(RawOp, i32)> = Vec::new();
        let mut shutting_down = false;
        loop {
            // 1. Take new work. Control messages are handled at once.
            loop {
                match self.rx.try_recv() {
                    Ok(Msg::Op(op)) => backlog.push_back(op),
                    Ok(Msg::RegisterFile { index, fd, ack }) => {
                        let _ = ack.send(self.ring.update_file(index, fd));
                    }
                    Ok(Msg::UnregisterFile(index)) => {
                        let _ = self.ring.update_file(index, -1);
                    }
                    Ok(Msg::Shutdown) | Err(TryRecvError::Disconnected) => {
                        shutting_down = true;
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            // 2. Fill the ring up to its depth; the rest waits in the backlog.
            while let Some(op) = backlog.pop_front() {
                if let Err(op) = self.ring.push(op) {
                    backlog.push_front(op);
                    break;
                }
            }
            if shutting_down && self.ring.in_flight() == 0 && backlog.is_empty() {
                // Anything that raced with shutdown is failed, never dropped.
                while let Ok(msg) = self.rx.try_recv() {
                    if let Msg::Op(op) = msg {
                        self.load.fetch_sub(1, Ordering::Relaxed);
                        op.complete(Err(libc::ECANCELED));
                    }
                }
                return;
            }
            // 3. Submit, and block for a completion unless new work is waiting.
            let wait = if shutting_down {
                1
            } else {
                self.ring.arm_wake();
                self.sleeping.store(true, Ordering::SeqCst);
                if self.rx.is_empty() {
                    1
                } else {
                    0
                }
            };
            let res = self.ring.submit_and_wait(wait);
            self.sleeping.store(false, Ordering::SeqCst);
            if let Err(e) = res {
                // A ring that cannot submit cannot run anything: fail every
                // waiting op with the error instead of losing it.
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                for op in backlog.drain(..) {
                    self.load.fetch_sub(1, Ordering::Relaxed);
                    op.complete(Err(errno));
                }
            }
            // 4. Complete. Short transfers and EINTR/EAGAIN go round again.
            self.ring.reap(&mut reaped);
            for (mut op, res) in reaped.drain(..) {
                let outcome = if res == -libc::EINTR || res == -libc::EAGAIN {
                    Ok(false)
                } else if res < 0 {
                    Err(-res)
                } else {
                    op.advance(res as usize)
                };
                match outcome {
                    Ok(false) => backlog.push_back(op),
                    Ok(true) => {
                        self.load.fetch_sub(1, Ordering::Relaxed);
                        op.complete(Ok(()));
                    }
                    Err(errno) => {
                        self.load.fetch_sub(1, Ordering::Relaxed);
                        op.complete(Err(errno));
                    }
                }
            }
        }
    }
}
