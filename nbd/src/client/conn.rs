//! The client's transmission machinery: the in-flight table (cookie →
//! pending request), a sender thread fed by a channel, and a reader thread
//! that dispatches replies to completions.
//!
//! ```text
//!  caller ─ insert(cookie) ─> in-flight table <─ take/complete ── reader thread <── socket
//!     └──── Msg{header, payload} ──> sender thread ── writev ──────────────────────> socket
//! ```
//!
//! A write's payload travels with its message; the sender hands the buffer
//! back to the table once it is on the wire ([`Shared::attach_buf`]). If the
//! reply came first, or the connection died meanwhile, the result waits in
//! the table for the buffer, so every completion runs exactly once, with
//! its buffer. When the connection dies, every pending request and every
//! later one fails with `ESHUTDOWN`.

use std::collections::HashMap;
use std::io::{BufReader, IoSlice, Read};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use ringmirror_engine::{BufDone, DmaBuf, Done, ErrorKind, IoError, IoResult, OpKind};

use crate::parse::{be32, be64, parse_block_status, parse_error_chunk, parse_reply_header};
use crate::parse::{reply_header_len, ReplyHeader};
use crate::proto::*;
use crate::sock::{write_all_vectored, Stream};

/// A request waiting for its reply.
pub(crate) struct Pending {
    pub(crate) op: OpKind,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) kind: PendingKind,
    /// A result that arrived before the write buffer came back.
    early: Option<IoResult<()>>,
    /// First error chunk of a structured reply.
    err: Option<IoError>,
    /// Bytes of a structured read covered so far.
    covered: u64,
}

/// What completes when the reply is in.
pub(crate) enum PendingKind {
    /// A read into `buf`.
    Read { buf: DmaBuf, done: BufDone },
    /// A write; `buf` is `None` while the sender still holds it.
    Write { buf: Option<DmaBuf>, done: BufDone },
    /// Flush, trim, write zeroes.
    Plain { done: Done },
    /// Block status: descriptors go back over a channel.
    Status {
        tx: Sender<IoResult<Vec<(u32, u32)>>>,
        descs: Vec<(u32, u32)>,
    },
}

impl Pending {
    pub(crate) fn new(op: OpKind, offset: u64, len: u64, kind: PendingKind) -> Pending {
        Pending {
            op,
            offset,
            len,
            kind,
            early: None,
            err: None,
            covered: 0,
        }
    }
}

/// A message for the sender thread.
pub(crate) enum Msg {
    Request {
        header: [u8; REQUEST_LEN],
        cookie: u64,
        payload: Option<DmaBuf>,
    },
    Disc,
}

struct Table {
    map: HashMap<u64, Pending>,
    /// Write buffers the sender returned while the reader held their entry.
    orphans: HashMap<u64, DmaBuf>,
    /// Why the connection died, once it has.
    dead: Option<String>,
}

/// State shared by the device handle and its two threads.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    table: Mutex<Table>,
    next_cookie: AtomicU64,
    /// A handle on the socket to shut it down.
    sock: Stream,
    meta_id: Option<u32>,
    structured: bool,
}

/// The error every request gets once the connection is gone.
pub(crate) fn shutdown_error(name: &Arc<str>, p: &Pending, why: &str) -> IoError {
    IoError::from_errno(p.op, name, p.offset, p.len, libc::ESHUTDOWN)
        .with_detail(format!("NBD connection lost: {why}"))
}

fn complete(p: Pending, res: IoResult<()>) {
    match p.kind {
        PendingKind::Read { buf, done } => done(buf, res),
        PendingKind::Write {
            buf: Some(buf),
            done,
        } => done(buf, res),
        PendingKind::Write { buf: None, .. } => {
            // Unreachable by construction (see attach_buf); never drop silently.
            debug_assert!(false, "write completed without its buffer");
        }
        PendingKind::Plain { done } => done(res),
        PendingKind::Status { tx, descs } => {
            let _ = tx.send(res.map(|()| descs));
        }
    }
}

impl Shared {
    pub(crate) fn new(
        name: Arc<str>,
        sock: Stream,
        structured: bool,
        meta_id: Option<u32>,
    ) -> Shared {
        Shared {
            name,
            table: Mutex::new(Table {
                map: HashMap::new(),
                orphans: HashMap::new(),
                dead: None,
            }),
            next_cookie: AtomicU64::new(1),
            sock,
            meta_id,
            structured,
        }
    }

    /// Register `p` and return its cookie, or hand it back failed when the
    /// connection is dead.
    pub(crate) fn insert(&self, p: Pending) -> Result<u64, ()> {
        let cookie = self.next_cookie.fetch_add(1, Ordering::Relaxed);
        let mut t = self.table.lock();
        if let Some(why) = &t.dead {
            let e = shutdown_error(&self.name, &p, why);
            drop(t);
            complete(p, Err(e));
            return Err(());
        }
        t.map.insert(cookie, p);
        Ok(cookie)
    }

    /// The sender is done with a write's payload: give it to the table, or
    /// complete the write if its result is already known.
    fn attach_buf(&self, cookie: u64, buf: DmaBuf) {
        let mut t = self.table.lock();
        let ready = match t.map.get_mut(&cookie) {
            Some(p) if p.early.is_some() => true,
            Some(p) => {
                if let PendingKind::Write { buf: slot, .. } = &mut p.kind {
                    *slot = Some(buf);
                }
                return;
            }
            None => {
                // The reader holds the entry right now; it claims this.
                t.orphans.insert(cookie, buf);
                return;
            }
        };
        if ready {
            if let Some(mut p) = t.map.remove(&cookie) {
                drop(t);
                let res = p.early.take().unwrap_or(Ok(()));
                if let PendingKind::Write { buf: slot, .. } = &mut p.kind {
                    *slot = Some(buf);
                }
                complete(p, res);
            }
        }
    }

    /// Take the entry for `cookie` out of the table.
    fn take(&self, cookie: u64) -> Option<Pending> {
        self.table.lock().map.remove(&cookie)
    }

    /// Finish `p` with `res` (or park the result if its buffer is away).
    fn finish(&self, cookie: u64, mut p: Pending, res: IoResult<()>) {
        if let PendingKind::Write {
            buf: slot @ None, ..
        } = &mut p.kind
        {
            let mut t = self.table.lock();
            match t.orphans.remove(&cookie) {
                Some(b) => *slot = Some(b),
                None => {
                    p.early = Some(res);
                    t.map.insert(cookie, p);
                    return;
                }
            }
        }
        complete(p, res);
    }

    /// Put back an entry whose reply is not finished yet.
    fn reinsert(&self, cookie: u64, mut p: Pending) {
        let mut t = self.table.lock();
        if let PendingKind::Write {
            buf: slot @ None, ..
        } = &mut p.kind
        {
            *slot = t.orphans.remove(&cookie);
        }
        t.map.insert(cookie, p);
    }

    /// Mark the connection dead and fail everything pending.
    pub(crate) fn die(&self, why: &str) {
        self.sock.shutdown(Shutdown::Both);
        let failed: Vec<Pending> = {
            let mut t = self.table.lock();
            if t.dead.is_none() {
                t.dead = Some(why.to_string());
            }
            let cookies: Vec<u64> = t.map.keys().copied().collect();
            let mut out = Vec::with_capacity(cookies.len());
            for c in cookies {
                let Some(p) = t.map.get_mut(&c) else { continue };
                if let PendingKind::Write { buf: None, .. } = p.kind {
                    // The sender still has the buffer: it completes this one.
                    if p.early.is_none() {
                        p.early = Some(Err(shutdown_error(&self.name, p, why)));
                    }
                    continue;
                }
                if let Some(p) = t.map.remove(&c) {
                    out.push(p);
                }
            }
            out
        };
        for p in failed {
            let e = shutdown_error(&self.name, &p, why);
            complete(p, Err(e));
        }
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.table.lock().dead.is_some()
    }
}

/// Replies sent per `writev` at most.
const BATCH: usize = 64;

/// Send messages until the channel closes (the device was dropped).
pub(crate) fn sender_loop(sh: Arc<Shared>, rx: Receiver<Msg>, mut out: Stream) {
    let mut batch: Vec<Msg> = Vec::with_capacity(BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let disc = batch.iter().any(|m| matches!(m, Msg::Disc));
        if !sh.is_dead() {
            let disc_hdr = encode_request(0, CMD_DISC, 0, 0, 0);
            let mut slices = [IoSlice::new(&[]); 2 * BATCH];
            let mut n = 0;
            for m in &batch {
                match m {
                    Msg::Request {
                        header, payload, ..
                    } => {
                        slices[n] = IoSlice::new(header);
                        slices[n + 1] = IoSlice::new(payload.as_deref().unwrap_or(&[]));
                    }
                    Msg::Disc => slices[n] = IoSlice::new(&disc_hdr),
                }
                n += 2;
            }
            if write_all_vectored(&mut out, &mut slices[..n]).is_err() {
                // The reader sees the shutdown and fails everything pending.
                out.shutdown(Shutdown::Both);
            }
        }
        for m in batch.drain(..) {
            if let Msg::Request {
                cookie,
                payload: Some(buf),
                ..
            } = m
            {
                sh.attach_buf(cookie, buf);
            }
        }
        if disc {
            out.shutdown(Shutdown::Write);
            // A server must close after DISC; don't wait forever if it doesn't.
            let _ = out.set_read_timeout(Some(Duration::from_secs(10)));
        }
    }
}

/// Largest non-data chunk payload accepted (block status: 2^20 descriptors).
const MAX_CHUNK_META: u32 = 4 + 8 * (1 << 20) + 8;

/// Dispatch replies until the connection ends, then fail what is left.
pub(crate) fn reader_loop(sh: Arc<Shared>, mut input: BufReader<Stream>) {
    let why = match read_replies(&sh, &mut input) {
        Ok(()) => "the server closed the connection".to_string(),
        Err(e) => e,
    };
    sh.die(&why);
}

fn read_replies(sh: &Shared, input: &mut BufReader<Stream>) -> Result<(), String> {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    loop {
        match input.read_exact(&mut h[..4]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("reading a reply: {e}")),
        }
        let len = reply_header_len(be32(&h[..4])).ok_or("bad reply magic from the server")?;
        input
            .read_exact(&mut h[4..len])
            .map_err(|e| format!("reading a reply: {e}"))?;
        let hdr = parse_reply_header(&h[..len]).map_err(|_| "bad reply header")?;
        match hdr {
            ReplyHeader::Simple { errno, cookie } => {
                let mut p = sh.take(cookie).ok_or("reply for an unknown cookie")?;
                let res = if errno != 0 {
                    Err(remote_error(sh, &p, errno, ""))
                } else if let PendingKind::Read { buf, .. } = &mut p.kind {
                    input
                        .read_exact(buf)
                        .map_err(|e| format!("reading read data: {e}"))?;
                    Ok(())
                } else {
                    Ok(())
                };
                sh.finish(cookie, p, res);
            }
            ReplyHeader::Chunk {
                flags,
                kind,
                cookie,
                len,
            } => {
                let mut p = sh.take(cookie).ok_or("chunk for an unknown cookie")?;
                read_chunk(sh, input, &mut p, kind, len)?;
                if flags & REPLY_FLAG_DONE == 0 {
                    sh.reinsert(cookie, p);
                    continue;
                }
                let res = match p.err.take() {
                    Some(e) => Err(e),
                    None if matches!(p.kind, PendingKind::Read { .. }) && p.covered < p.len => {
                        Err(IoError::new(
                            ErrorKind::Io,
                            p.op,
                            &sh.name,
                            p.offset,
                            p.len,
                            "the server's read reply did not cover the request",
                        ))
                    }
                    None if matches!(&p.kind, PendingKind::Status { descs, .. } if descs.is_empty()) => {
                        Err(IoError::new(
                            ErrorKind::Io,
                            p.op,
                            &sh.name,
                            p.offset,
                            p.len,
                            "the server sent no block status",
                        ))
                    }
                    None => Ok(()),
                };
                sh.finish(cookie, p, res);
            }
        }
    }
}

fn remote_error(sh: &Shared, p: &Pending, errno: u32, msg: &str) -> IoError {
    let e = IoError::from_errno(p.op, &sh.name, p.offset, p.len, wire_to_errno(errno));
    let mut e = if errno == EINVAL || errno == EOVERFLOW {
        IoError {
            kind: ErrorKind::InvalidInput,
            ..e
        }
    } else {
        e
    };
    if errno == ESHUTDOWN {
        e.kind = ErrorKind::Io;
    }
    if msg.is_empty() {
        e.with_detail("reported by the NBD server")
    } else {
        e.with_detail(format!("NBD server: {msg}"))
    }
}

fn read_chunk(
    sh: &Shared,
    input: &mut BufReader<Stream>,
    p: &mut Pending,
    kind: u16,
    len: u32,
) -> Result<(), String> {
    let read_err = |e: std::io::Error| format!("reading a reply chunk: {e}");
    match kind {
        REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE => {
            let (req_off, req_len) = (p.offset, p.len);
            let PendingKind::Read { buf, .. } = &mut p.kind else {
                return Err("data chunk in the reply to a non-read".into());
            };
            if !sh.structured || len < 8 || (kind == REPLY_TYPE_OFFSET_HOLE && len != 12) {
                return Err("malformed read chunk".into());
            }
            let mut o = [0u8; 12];
            let fixed = if kind == REPLY_TYPE_OFFSET_HOLE {
                12
            } else {
                8
            };
            input.read_exact(&mut o[..fixed]).map_err(read_err)?;
            let off = be64(&o[0..8]);
            let n = if kind == REPLY_TYPE_OFFSET_HOLE {
                u64::from(be32(&o[8..12]))
            } else {
                u64::from(len - 8)
            };
            let start = off.checked_sub(req_off).ok_or("chunk before the request")?;
            if n == 0 || start.checked_add(n).is_none_or(|end| end > req_len) {
                return Err("chunk outside the requested range".into());
            }
            let range = start as usize..(start + n) as usize;
            if kind == REPLY_TYPE_OFFSET_HOLE {
                buf[range].fill(0);
            } else {
                input.read_exact(&mut buf[range]).map_err(read_err)?;
            }
            p.covered += n;
        }
        REPLY_TYPE_NONE => {
            if len != 0 {
                return Err("NONE chunk with a payload".into());
            }
        }
        _ if len > MAX_CHUNK_META => {
            return Err(format!("reply chunk of {len} bytes is too large"))
        }
        REPLY_TYPE_BLOCK_STATUS => {
            let mut v = vec![0u8; len as usize];
            input.read_exact(&mut v).map_err(read_err)?;
            let (id, d) = parse_block_status(&v).ok_or("malformed block status chunk")?;
            match &mut p.kind {
                PendingKind::Status { descs, .. } if Some(id) == sh.meta_id => *descs = d,
                PendingKind::Status { .. } => {}
                _ => return Err("block status in the reply to another command".into()),
            }
        }
        k if k & (1 << 15) != 0 => {
            let mut v = vec![0u8; len as usize];
            input.read_exact(&mut v).map_err(read_err)?;
            let (errno, msg) = parse_error_chunk(&v).ok_or("malformed error chunk")?;
            if p.err.is_none() {
                p.err = Some(remote_error(sh, p, errno, &msg));
            }
        }
        _ => return Err(format!("unknown reply chunk type {kind}")),
    }
    Ok(())
}
