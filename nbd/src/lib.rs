//! NBD for ringmirror: a server that exports any [`BlockDevice`] and a
//! client that is one.
//!
//! - [`NbdServer`] serves named exports over unix and TCP sockets with the
//!   fixed-newstyle handshake, structured replies, `base:allocation` block
//!   status, multi-conn, and pipelined out-of-order request handling.
//! - [`NbdDevice`] connects to `nbd://host[:port]/export` or
//!   `nbd+unix:///export?socket=PATH` (qemu-nbd, qemu-storage-daemon,
//!   nbdkit, or [`NbdServer`]) and implements [`BlockDevice`], so a mirror
//!   target or copy source can live on another host.
//!
//! The protocol is `doc/proto.md` of the NetworkBlockDevice/nbd repository;
//! [`proto`] holds its constants, [`parse`] the pure parsers of everything a
//! peer sends (fuzzed in `nbd/fuzz/`).
//!
//! ```no_run
//! use std::sync::Arc;
//! use ringmirror_engine::{BlockDeviceExt, OpenOptions, SyncFile};
//! use ringmirror_nbd::{NbdDevice, NbdServer, RemoveMode, ServerConfig};
//!
//! let disk = SyncFile::open_sync("/var/lib/images/disk.raw", &OpenOptions::read_write())?;
//! let server = NbdServer::new(ServerConfig::default());
//! server.add_export("disk", disk, true, "guest disk").unwrap();
//! server.listen_unix("/run/ringmirror/nbd.sock").unwrap();
//!
//! let remote = NbdDevice::connect("nbd+unix:///disk?socket=/run/ringmirror/nbd.sock")?;
//! remote.write_at(0, &[0xab; 4096], true)?;
//! drop(remote);
//! server.remove_export("disk", RemoveMode::Safe).unwrap();
//! server.stop();
//! # Ok::<(), ringmirror_engine::IoError>(())
//! ```
//!
//! [`BlockDevice`]: ringmirror_engine::BlockDevice
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod error;
pub mod parse;
pub mod proto;
mod server;
mod sock;

pub use client::{NbdDevice, NbdUri, Transport, DEFAULT_PORT};
pub use error::NbdError;
pub use server::{ExportInfo, NbdServer, RemoveMode, ServerConfig};
