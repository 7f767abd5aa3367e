//! Transmission phase of one connection: a reader thread that parses
//! requests and submits them to the device at once, and a writer thread that
//! sends the replies the device completions queue, several per `writev`.
//!
//! Bounds: the reader takes a credit (one request, its payload bytes)
//! before reading a request's payload or allocating its read buffer, and
//! the writer returns the credit once the reply is on the wire. When
//! [`ServerConfig::max_requests_in_flight`] or
//! [`ServerConfig::max_bytes_in_flight`] is reached the reader stops reading
//! the socket, so a client cannot make the server hold more than that.
//!
//! Completions run on device threads and must not block: they only format
//! a reply header and push it on an unbounded channel (bounded in practice
//! by the credits). When the connection is gone the push fails and the
//! reply, with its buffer, is dropped right there.
//!
//! [`ServerConfig::max_requests_in_flight`]: super::ServerConfig::max_requests_in_flight
//! [`ServerConfig::max_bytes_in_flight`]: super::ServerConfig::max_bytes_in_flight

use std::io::{self, BufReader, IoSlice, Read};
use std::net::Shutdown;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use ringmirror_engine::{BlockDevice, DeviceKind, DmaBuf, ExtentKind, IoError, IoResult};

use super::handshake::{Session, BASE_ALLOCATION_ID};
use super::ServerInner;
use crate::parse::{classify_request, parse_request_header, Command, TransmissionCtx, Verdict};
use crate::proto::*;
use crate::sock::{write_all_vectored, Stream};

/// Replies sent per `writev` at most, and bytes after which a batch is sent.
const BATCH_REPLIES: usize = 64;
const BATCH_BYTES: usize = 1 << 20;
/// Block status descriptors per reply at most.
const MAX_DESCRIPTORS: usize = 1 << 16;

/// The in-flight budget of one connection.
struct Credits {
    state: Mutex<CreditState>,
    cv: Condvar,
}

struct CreditState {
    requests: usize,
    bytes: usize,
    closed: bool,
    reader_waiting: bool,
}

impl Credits {
    /// Wait for room for one request of `bytes`; false once the writer is gone.
    /// A request larger than the byte budget still runs, alone.
    fn acquire(&self, bytes: usize, max_req: usize, max_bytes: usize) -> bool {
        let mut s = self.state.lock();
        loop {
            if s.closed {
                return false;
            }
            let fits = s.requests < max_req && (s.bytes + bytes <= max_bytes || s.requests == 0);
            if fits {
                s.requests += 1;
                s.bytes += bytes;
                return true;
            }
            s.reader_waiting = true;
            self.cv.wait(&mut s);
        }
    }

    fn release(&self, requests: usize, bytes: usize) {
        let mut s = self.state.lock();
        s.requests = s.requests.saturating_sub(requests);
        s.bytes = s.bytes.saturating_sub(bytes);
        if s.reader_waiting {
            s.reader_waiting = false;
            self.cv.notify_one();
        }
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.cv.notify_all();
    }
}

/// One reply, ready for the wire: a short header plus an optional body.
struct Reply {
    head: [u8; 32],
    head_len: u8,
    body: Body,
    /// Credit bytes to return once sent.
    credit: usize,
    /// False for the writer's wake-up marker, which is no reply.
    counted: bool,
}

enum Body {
    None,
    Buf(DmaBuf),
    Vec(Vec<u8>),
}

impl Reply {
    fn from_vec(v: Vec<u8>, credit: usize) -> Reply {
        Reply {
            head: [0; 32],
            head_len: 0,
            body: Body::Vec(v),
            credit,
            counted: true,
        }
    }

    fn simple(cookie: u64, errno: u32, credit: usize) -> Reply {
        let mut head = [0u8; 32];
        head[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        head[4..8].copy_from_slice(&errno.to_be_bytes());
        head[8..16].copy_from_slice(&cookie.to_be_bytes());
        Reply {
            head,
            head_len: SIMPLE_REPLY_LEN as u8,
            body: Body::None,
            credit,
            counted: true,
        }
    }

    /// An error: a structured error chunk with a message when negotiated.
    fn error(cookie: u64, errno: u32, msg: &str, structured: bool, credit: usize) -> Reply {
        if !structured {
            return Reply::simple(cookie, errno, credit);
        }
        let mut v = Vec::with_capacity(32 + msg.len());
        put_error_chunk(&mut v, cookie, errno, truncate_str(msg, 512));
        Reply::from_vec(v, credit)
    }

    fn io_error(cookie: u64, e: &IoError, structured: bool, credit: usize) -> Reply {
        Reply::error(cookie, errno_to_wire(e), &e.to_string(), structured, credit)
    }

    fn result(cookie: u64, res: IoResult<()>, structured: bool, credit: usize) -> Reply {
        match res {
            Ok(()) => Reply::simple(cookie, 0, credit),
            Err(e) => Reply::io_error(cookie, &e, structured, credit),
        }
    }

    fn read_data(cookie: u64, offset: u64, buf: DmaBuf, structured: bool, credit: usize) -> Reply {
        if !structured {
            let mut r = Reply::simple(cookie, 0, credit);
            r.body = Body::Buf(buf);
            return r;
        }
        let mut head = [0u8; 32];
        head[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        head[4..6].copy_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        head[6..8].copy_from_slice(&REPLY_TYPE_OFFSET_DATA.to_be_bytes());
        head[8..16].copy_from_slice(&cookie.to_be_bytes());
        head[16..20].copy_from_slice(&(8 + buf.len() as u32).to_be_bytes());
        head[20..28].copy_from_slice(&offset.to_be_bytes());
        Reply {
            head,
            head_len: (CHUNK_HEADER_LEN + 8) as u8,
            body: Body::Buf(buf),
            credit,
            counted: true,
        }
    }

    /// Not a reply: tells the writer a partial direct write awaits it.
    fn wake() -> Reply {
        Reply {
            head: [0; 32],
            head_len: 0,
            body: Body::None,
            credit: 0,
            counted: false,
        }
    }

    fn body(&self) -> &[u8] {
        match &self.body {
            Body::None => &[],
            Body::Buf(b) => b,
            Body::Vec(v) => v,
        }
    }

    fn wire_len(&self) -> usize {
        usize::from(self.head_len) + self.body().len()
    }
}

/// The sending side of a connection.
///
/// A completion first tries to send its reply itself, without blocking
/// (`MSG_DONTWAIT`), when nobody else is writing: that saves waking the
/// writer thread, a context switch per request on the 4 KiB path. When the
/// socket is busy (the writer holds it), full, or the write is partial, the
/// reply (or the rest of it) goes to the writer thread, which may block.
/// Replies may go out in any order (NBD allows it); a partial reply is
/// always finished before anything else is written, because it is only
/// ever continued under the same lock.
struct ReplyOut {
    /// Shared with the writer thread, which must not hold `tx` (it stops
    /// when every sender is gone).
    sock: Arc<Mutex<SockState>>,
    tx: Sender<Reply>,
    credits: Arc<Credits>,
}

struct SockState {
    stream: Stream,
    /// A reply written in part by a completion, and how much of it.
    partial: Option<(Reply, usize)>,
    broken: bool,
}

impl ReplyOut {
    fn send(&self, r: Reply) -> Result<(), Reply> {
        if self.tx.is_empty() {
            if let Some(mut st) = self.sock.try_lock() {
                if st.partial.is_none() && !st.broken {
                    let slices = [
                        IoSlice::new(&r.head[..usize::from(r.head_len)]),
                        IoSlice::new(r.body()),
                    ];
                    match send_nowait(&st.stream, &slices) {
                        Ok(n) if n == r.wire_len() => {
                            drop(st);
                            self.credits.release(1, r.credit);
                            return Ok(());
                        }
                        Ok(n) => {
                            st.partial = Some((r, n));
                            drop(st);
                            return self.tx.send(Reply::wake()).map_err(|e| e.0);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => st.broken = true,
                    }
                }
            }
        }
        self.tx.send(r).map_err(|e| e.0)
    }
}

/// One `sendmsg(MSG_DONTWAIT | MSG_NOSIGNAL)`.
fn send_nowait(stream: &Stream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, MsgFlags};
    use std::os::fd::AsRawFd;
    let fd = match stream {
        Stream::Unix(s) => s.as_raw_fd(),
        Stream::Tcp(s) => s.as_raw_fd(),
    };
    loop {
        match sendmsg::<()>(
            fd,
            slices,
            &[],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => return Ok(n),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

/// Per-connection state the reader hands to completions.
struct Conn {
    dev: Arc<dyn BlockDevice>,
    ctx: TransmissionCtx,
    tx: Arc<ReplyOut>,
    fast_zero: bool,
}

/// Serve requests until the client disconnects; returns after every reply
/// that could be sent has been sent.
pub(crate) fn run(
    inner: &ServerInner,
    mut input: BufReader<Stream>,
    out: Stream,
    session: Session,
) {
    let Ok(shut) = out.try_clone() else {
        return;
    };
    let credits = Arc::new(Credits {
        state: Mutex::new(CreditState {
            requests: 0,
            bytes: 0,
            closed: false,
            reader_waiting: false,
        }),
        cv: Condvar::new(),
    });
    let (tx, rx) = crossbeam_channel::unbounded::<Reply>();
    let sock = Arc::new(Mutex::new(SockState {
        stream: out,
        partial: None,
        broken: false,
    }));
    let reply_out = Arc::new(ReplyOut {
        sock: sock.clone(),
        tx,
        credits: credits.clone(),
    });
    let (wc, wo) = (credits.clone(), sock);
    let writer = std::thread::Builder::new()
        .name("nbd-writer".into())
        .spawn(move || writer_loop(rx, &wo, &wc));
    let Ok(writer) = writer else {
        shut.shutdown(Shutdown::Both);
        return;
    };
    let dev = session.attach.export.device.clone();
    let info = dev.info();
    // FAST_ZERO: only a regular file zeroes by fallocate (metadata only on
    // every common filesystem); anything else (block devices, which may
    // emulate zeroing by writing, remote and virtual devices) says ENOTSUP.
    let fast_zero = info.kind == DeviceKind::File && info.sparse_aware;
    let conn = Conn {
        dev,
        ctx: session.ctx,
        tx: reply_out,
        fast_zero,
    };
    let clean = reader_loop(inner, &mut input, &conn, &credits);
    if !clean {
        // Protocol violation: cut the connection now, drop pending replies.
        shut.shutdown(Shutdown::Both);
    }
    // The writer ends when every sender is gone: ours now, the completions'
    // as they run. So it sends every in-flight reply before closing.
    drop(conn);
    let _ = writer.join();
    drop(session);
}

/// Read and submit requests. Returns false on a protocol violation.
fn reader_loop(
    inner: &ServerInner,
    input: &mut BufReader<Stream>,
    conn: &Conn,
    credits: &Credits,
) -> bool {
    let max_req = inner.cfg.max_requests_in_flight.max(1);
    let max_bytes = inner.cfg.max_bytes_in_flight;
    let mut hb = [0u8; REQUEST_LEN];
    loop {
        if input.read_exact(&mut hb).is_err() {
            return true; // the client went away (or the server is stopping)
        }
        let Ok(h) = parse_request_header(&hb) else {
            return false;
        };
        let structured = conn.ctx.structured;
        match classify_request(&h, &conn.ctx) {
            Verdict::Close(_) => return false,
            Verdict::Reject {
                errno,
                discard,
                reason,
            } => {
                if skip(input, u64::from(discard)).is_err()
                    || !credits.acquire(0, max_req, max_bytes)
                {
                    return true;
                }
                let _ = conn
                    .tx
                    .send(Reply::error(h.cookie, errno, reason, structured, 0));
            }
            Verdict::Run(Command::Disc) => return true,
            Verdict::Run(cmd) => {
                let bytes = match cmd {
                    Command::Read { len, .. } | Command::Write { len, .. } => len as usize,
                    _ => 0,
                };
                if !credits.acquire(bytes, max_req, max_bytes) {
                    return true;
                }
                if submit(conn, input, h.cookie, cmd).is_err() {
                    return true; // payload cut short: the client is gone
                }
            }
        }
    }
}

/// Read and drop `n` payload bytes.
fn skip(input: &mut BufReader<Stream>, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut input.by_ref().take(n), &mut io::sink())?;
    if copied == n {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

fn submit(conn: &Conn, input: &mut BufReader<Stream>, cookie: u64, cmd: Command) -> io::Result<()> {
    let structured = conn.ctx.structured;
    let dev = &conn.dev;
    match cmd {
        Command::Read { offset, len } => {
            let tx = conn.tx.clone();
            let buf = dev.alloc_buf(len as usize);
            dev.read(
                offset,
                buf,
                Box::new(move |buf, res| {
                    let credit = len as usize;
                    let reply = match res {
                        Ok(()) if buf.len() == credit => {
                            Reply::read_data(cookie, offset, buf, structured, credit)
                        }
                        Ok(()) => {
                            let msg = "the device returned a short buffer";
                            Reply::error(cookie, EIO, msg, structured, credit)
                        }
                        Err(e) => Reply::io_error(cookie, &e, structured, credit),
                    };
                    let _ = tx.send(reply);
                }),
            );
        }
        Command::Write { offset, len, fua } => {
            let mut buf = dev.alloc_buf(len as usize);
            input.read_exact(&mut buf)?;
            let tx = conn.tx.clone();
            dev.write(
                offset,
                buf,
                fua,
                Box::new(move |_buf, res| {
                    let _ = tx.send(Reply::result(cookie, res, structured, len as usize));
                }),
            );
        }
        Command::Flush => {
            let tx = conn.tx.clone();
            dev.flush(Box::new(move |res| {
                let _ = tx.send(Reply::result(cookie, res, structured, 0));
            }));
        }
        Command::Trim { offset, len, fua } => {
            let done = then_flush(conn, cookie, fua);
            dev.discard(offset, u64::from(len), done);
        }
        Command::WriteZeroes {
            offset,
            len,
            fua,
            no_hole,
            fast,
        } => {
            if fast && !conn.fast_zero {
                let msg = "zeroing this export is not faster than writing";
                let _ = conn
                    .tx
                    .send(Reply::error(cookie, ENOTSUP, msg, structured, 0));
                return Ok(());
            }
            let done = then_flush(conn, cookie, fua);
            dev.write_zeroes(offset, u64::from(len), !no_hole, done);
        }
        Command::BlockStatus {
            offset,
            len,
            req_one,
        } => {
            let reply = block_status(dev.as_ref(), cookie, offset, len, req_one);
            let _ = conn.tx.send(reply);
        }
        Command::Cache => {
            let _ = conn.tx.send(Reply::simple(cookie, 0, 0));
        }
        Command::Disc => {}
    }
    Ok(())
}

/// A completion that replies, after a device flush when `fua` (trim and
/// write zeroes have no FUA of their own in the device interface).
fn then_flush(conn: &Conn, cookie: u64, fua: bool) -> ringmirror_engine::Done {
    let tx = conn.tx.clone();
    let structured = conn.ctx.structured;
    if !fua {
        return Box::new(move |res| {
            let _ = tx.send(Reply::result(cookie, res, structured, 0));
        });
    }
    let dev = conn.dev.clone();
    Box::new(move |res| match res {
        Ok(()) => dev.flush(Box::new(move |res| {
            let _ = tx.send(Reply::result(cookie, res, structured, 0));
        })),
        Err(e) => {
            let _ = tx.send(Reply::io_error(cookie, &e, structured, 0));
        }
    })
}

/// Answer `BLOCK_STATUS` for `base:allocation` from the device's extent map.
fn block_status(dev: &dyn BlockDevice, cookie: u64, offset: u64, len: u32, req_one: bool) -> Reply {
    let extents = match dev.extents(offset, u64::from(len)) {
        Ok(e) => e,
        Err(e) => return Reply::io_error(cookie, &e, true, 0),
    };
    let end = offset + u64::from(len);
    let mut descs: Vec<(u32, u32)> = Vec::new();
    let mut pos = offset;
    for e in extents {
        // Clip defensively: descriptors must tile [offset, end) from offset.
        let (s, t) = (e.offset.max(pos), (e.offset + e.len).min(end));
        if s != pos || t <= s {
            if t > s {
                break; // a gap in the device's map: stop at what is known
            }
            continue;
        }
        let flags = match e.kind {
            ExtentKind::Hole => STATE_HOLE | STATE_ZERO,
            ExtentKind::Data => 0,
        };
        match descs.last_mut() {
            Some(last) if last.1 == flags => last.0 += (t - s) as u32,
            _ => descs.push(((t - s) as u32, flags)),
        }
        pos = t;
        if descs.len() >= MAX_DESCRIPTORS || (req_one && !descs.is_empty()) {
            break;
        }
    }
    if descs.is_empty() {
        descs.push((len, 0));
    }
    if req_one {
        descs.truncate(1);
    }
    let mut v = Vec::with_capacity(CHUNK_HEADER_LEN + 4 + 8 * descs.len());
    let plen = 4 + 8 * descs.len() as u32;
    put_chunk_header(
        &mut v,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        plen,
    );
    v.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for (l, f) in descs {
        v.extend_from_slice(&l.to_be_bytes());
        v.extend_from_slice(&f.to_be_bytes());
    }
    Reply::from_vec(v, 0)
}

/// Send replies until every sender is gone or the socket fails, then close.
///
/// Every sender is gone when the reader and every completion holding the
/// `ReplyOut` have dropped it; the writer holds only the receiver and the
/// socket.
fn writer_loop(rx: Receiver<Reply>, sock: &Mutex<SockState>, credits: &Credits) {
    let mut batch: Vec<Reply> = Vec::with_capacity(BATCH_REPLIES);
    while let Ok(first) = rx.recv() {
        let mut bytes = first.wire_len();
        batch.push(first);
        while batch.len() < BATCH_REPLIES && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.wire_len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let mut st = sock.lock();
        // A partial direct write is finished before anything else.
        let mut sent = Ok(());
        if let Some((r, done)) = st.partial.take() {
            let mut slices = [
                IoSlice::new(&r.head[..usize::from(r.head_len)]),
                IoSlice::new(r.body()),
            ];
            let mut s: &mut [IoSlice<'_>] = &mut slices;
            IoSlice::advance_slices(&mut s, done);
            sent = write_all_vectored(&mut st.stream, s);
            credits.release(1, r.credit);
        }
        if sent.is_ok() && !st.broken {
            let mut slices = [IoSlice::new(&[]); 2 * BATCH_REPLIES];
            let mut n = 0;
            for r in batch.iter().filter(|r| r.counted) {
                slices[n] = IoSlice::new(&r.head[..usize::from(r.head_len)]);
                slices[n + 1] = IoSlice::new(r.body());
                n += 2;
            }
            sent = write_all_vectored(&mut st.stream, &mut slices[..n]);
        }
        if sent.is_err() || st.broken {
            st.broken = true;
        }
        let broken = st.broken;
        drop(st);
        let counted = batch.iter().filter(|r| r.counted).count();
        let credit_bytes = batch.iter().map(|r| r.credit).sum();
        credits.release(counted, credit_bytes);
        batch.clear();
        if broken {
            break;
        }
    }
    credits.close();
    sock.lock().stream.shutdown(Shutdown::Both);
}
