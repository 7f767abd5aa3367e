//! The QMP monitor of `ringmirror serve`: the JSON protocol that qemu-storage-daemon speaks on
//! its `--monitor` socket, so that management tools (the Python `qemu.qmp` client,
//! libvirt-style tooling) drive ringmirror unchanged.
//!
//! ```text
//!   client ──unix socket──► Monitor ─► connection threads ─► Decoder ─► Session ─► Handler
//!                              ▲                                           (your commands)
//!   any thread ── Emitter ─────┘ events to every negotiated connection
//! ```
//!
//! * [`json`]: a streaming decoder reproducing QEMU's lexer, error recovery, limits and
//!   wording, and a writer with QEMU's formatting;
//! * [`Monitor`]: the socket server (greeting, negotiation, `query-version`,
//!   `query-commands`, `quit`, ids, out-of-band checks);
//! * [`Handler`]: the trait the command layer implements; [`Args`] decodes arguments with
//!   QEMU's error wording (and [`SocketAddress`] decodes QAPI's socket addresses, flat and
//!   legacy); [`QmpError`] is a command's error;
//! * [`Emitter`]: emits events with timestamps from any thread.
//!
//! Where QEMU's behaviour is odd (a request with neither brace nor bracket balanced waits for
//! more input; `Parameter 'null' does not accept value` inside lists) we copy it: a drop-in
//! must fail the way the original does. Each wording was checked against
//! qemu-storage-daemon 10.0.2; `tests/qemu_compare.rs` re-checks them side by side.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod args;
mod conn;
mod error;
mod event;
mod handler;
pub mod json;
mod monitor;
mod qapi;
mod session;
mod socket;

pub use args::{Args, Field};
pub use error::{ErrorClass, QmpError};
pub use event::{Emitter, Event, EventStream, StreamClosed, Timestamp};
pub use handler::{CallCtx, Handler, NoCommands};
pub use monitor::{Monitor, MonitorBuilder, MonitorError};
pub use qapi::{InetSocketAddress, SocketAddress, UnixSocketAddress};
pub use session::QemuVersion;
