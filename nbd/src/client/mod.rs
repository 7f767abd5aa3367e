//! [`NbdDevice`]: a remote NBD export as a [`BlockDevice`].
//!
//! Requests are pipelined: the caller registers the request in the
//! in-flight table and queues it for the sender thread, never touching the
//! socket itself, so submitting from a completion never blocks. Requests
//! larger than the server's maximum payload are split; requests not aligned
//! to the server's minimum block size are widened (reads) or done as
//! read-modify-write (writes), serialised among themselves.

mod conn;
mod device;
mod handshake;
mod join;
mod uri;

use std::collections::VecDeque;
use std::io::BufReader;
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use ringmirror_engine::{
    check_range, BlockDevice, BufDone, DeviceInfo, DeviceKind, DmaBuf, Done, ErrorKind, IoError,
    IoResult, OpKind,
};

use conn::{Msg, Pending, PendingKind, Shared};
use handshake::Negotiated;
use join::{BufJoin, Join};
pub use uri::{NbdUri, Transport, DEFAULT_PORT};

use crate::proto::*;
use crate::sock::Stream;

/// Time the server has to answer each handshake read.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Zero buffers written per request when the server lacks WRITE_ZEROES.
const ZERO_CHUNK: u64 = 1 << 20;

/// A connection to one NBD export, usable as a [`BlockDevice`].
pub struct NbdDevice {
    /// Ourselves, for completions that chain further requests.
    me: Weak<NbdDevice>,
    sh: Arc<Shared>,
    tx: Sender<Msg>,
    info: DeviceInfo,
    neg: Negotiated,
    /// Unaligned writes waiting for their read-modify-write turn.
    rmw: Mutex<RmwQueue>,
}

#[derive(Default)]
struct RmwQueue {
    busy: bool,
    queue: VecDeque<(u64, DmaBuf, bool, BufDone)>,
}

fn open_err(uri: &str, detail: String) -> IoError {
    let name: Arc<str> = Arc::from(uri);
    IoError::from_errno(OpKind::Open, &name, 0, 0, libc::EIO).with_detail(detail)
}

impl NbdDevice {
    /// Connect to `uri` (`nbd://host[:port]/export` or
    /// `nbd+unix:///export?socket=PATH`) and negotiate.
    pub fn connect(uri: &str) -> IoResult<Arc<NbdDevice>> {
        let parsed = NbdUri::parse(uri).map_err(|e| {
            let name: Arc<str> = Arc::from(uri);
            IoError::new(ErrorKind::InvalidInput, OpKind::Open, &name, 0, 0, e)
        })?;
        NbdDevice::connect_uri(&parsed)
    }

    /// Connect to a parsed URI.
    pub fn connect_uri(uri: &NbdUri) -> IoResult<Arc<NbdDevice>> {
        let text = uri.to_string();
        let stream = match &uri.transport {
            Transport::Unix { path } => {
                UnixStream::connect(path).map(Stream::Unix).map_err(|e| {
                    IoError::from_errno(
                        OpKind::Open,
                        &Arc::from(text.as_str()),
                        0,
                        0,
                        e.raw_os_error().unwrap_or(libc::EIO),
                    )
                    .with_detail(format!("cannot connect to unix socket {}", path.display()))
                })?
            }
            Transport::Tcp { host, port } => TcpStream::connect((host.as_str(), *port))
                .map(Stream::Tcp)
                .map_err(|e| {
                    IoError::from_errno(
                        OpKind::Open,
                        &Arc::from(text.as_str()),
                        0,
                        0,
                        e.raw_os_error().unwrap_or(libc::EIO),
                    )
                    .with_detail(format!("cannot connect to {host}:{port}: {e}"))
                })?,
        };
        let setup = |e: std::io::Error| open_err(&text, format!("socket setup: {e}"));
        stream.set_nodelay().map_err(setup)?;
        stream
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(setup)?;
        let out = stream.try_clone().map_err(setup)?;
        let sock = stream.try_clone().map_err(setup)?;
        let mut hs = stream.try_clone().map_err(setup)?;
        let neg = handshake::negotiate(&mut hs, &uri.export).map_err(|e| {
            // Soft disconnect where the server still listens to options.
            let mut abort = Vec::new();
            put_option(&mut abort, OPT_ABORT, &[]);
            let _ = std::io::Write::write_all(&mut hs, &abort);
            hs.shutdown(Shutdown::Both);
            open_err(&text, e)
        })?;
        stream.set_read_timeout(None).map_err(setup)?;
        let name: Arc<str> = Arc::from(text.as_str());
        let sh = Arc::new(Shared::new(name.clone(), sock, neg.structured, neg.meta_id));
        let (tx, rx) = crossbeam_channel::unbounded();
        let (s1, s2) = (sh.clone(), sh.clone());
        let input = BufReader::with_capacity(256 << 10, stream);
        let spawn = |e: std::io::Error| open_err(&text, format!("cannot start threads: {e}"));
        std::thread::Builder::new()
            .name("nbd-client-rx".into())
            .spawn(move || conn::reader_loop(s1, input))
            .map_err(spawn)?;
        std::thread::Builder::new()
            .name("nbd-client-tx".into())
            .spawn(move || conn::sender_loop(s2, rx, out))
            .map_err(spawn)?;
        let info = DeviceInfo {
            name,
            kind: DeviceKind::Remote,
            mem_align: 1,
            offset_align: u64::from(neg.min_block),
            read_only: neg.flags & FLAG_READ_ONLY != 0,
            sparse_aware: neg.meta_id.is_some(),
            direct: false,
        };
        Ok(Arc::new_cyclic(|me| NbdDevice {
            me: me.clone(),
            sh,
            tx,
            info,
            neg,
            rmw: Mutex::new(RmwQueue::default()),
        }))
    }

    /// Transmission flags the server sent.
    pub fn transmission_flags(&self) -> u16 {
        self.neg.flags
    }

    /// `(minimum, preferred, maximum)` block sizes in force.
    pub fn block_sizes(&self) -> (u32, u32, u32) {
        (
            self.neg.min_block,
            self.neg.pref_block,
            self.neg.max_payload,
        )
    }

    /// True when structured replies were negotiated.
    pub fn structured_replies(&self) -> bool {
        self.neg.structured
    }

    /// True once the connection is gone (every request now fails).
    pub fn is_disconnected(&self) -> bool {
        self.sh.is_dead()
    }

    /// An owning handle for chained completions. A `&self` method can only
    /// run while some `Arc` is alive, so the upgrade succeeds.
    fn self_arc(&self) -> Option<Arc<NbdDevice>> {
        self.me.upgrade()
    }

    fn has(&self, flag: u16) -> bool {
        self.neg.flags & flag != 0
    }

    fn aligned(&self, offset: u64, len: u64) -> bool {
        let a = u64::from(self.neg.min_block);
        offset.is_multiple_of(a) && len.is_multiple_of(a)
    }

    /// Queue one wire request.
    fn send(&self, kind: u16, flags: u16, p: Pending, payload: Option<DmaBuf>) {
        let (offset, len) = (p.offset, p.len as u32);
        let Ok(cookie) = self.sh.insert(p) else {
            return;
        };
        let header = encode_request(flags, kind, cookie, offset, len);
        let _ = self.tx.send(Msg::Request {
            header,
            cookie,
            payload,
        });
    }

    fn range_err(&self, op: OpKind, offset: u64, len: u64) -> IoResult<()> {
        check_range(&self.info.name, op, offset, len, self.neg.size)
    }

    fn read_one(&self, offset: u64, buf: DmaBuf, done: BufDone) {
        let len = buf.len() as u64;
        let p = Pending::new(OpKind::Read, offset, len, PendingKind::Read { buf, done });
        self.send(CMD_READ, 0, p, None);
    }

    fn write_one(self: &NbdDevice, offset: u64, buf: DmaBuf, fua: bool, done: BufDone) {
        let len = buf.len() as u64;
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        let p = Pending::new(
            OpKind::Write,
            offset,
            len,
            PendingKind::Write { buf: None, done },
        );
        self.send(CMD_WRITE, flags, p, Some(buf));
    }

    fn plain(&self, op: OpKind, kind: u16, flags: u16, offset: u64, len: u64, done: Done) {
        let p = Pending::new(op, offset, len, PendingKind::Plain { done });
        self.send(kind, flags, p, None);
    }

    /// Aligned, in-range write of any size (split at the maximum payload).
    fn write_aligned(&self, offset: u64, buf: DmaBuf, fua: bool, done: BufDone) {
        let fua_flag = fua && self.has(FLAG_SEND_FUA);
        let max = self.neg.max_payload as usize;
        if buf.len() <= max {
            if fua && !fua_flag {
                return self.write_then_flush(offset, buf, done);
            }
            return self.write_one(offset, buf, fua_flag, done);
        }
        // Split: copy each part into its own buffer; the original waits.
        let parts = buf.len().div_ceil(max);
        let total = buf.len();
        let join = BufJoin::new(buf, parts, done);
        for i in 0..parts {
            let (s, e) = (i * max, ((i + 1) * max).min(total));
            let mut part = DmaBuf::new(e - s, 4096);
            // The last part cannot finish before this loop has submitted
            // every part, so the caller's buffer is still in the join.
            if let Some(src) = join.buf.lock().as_ref() {
                part.copy_from_slice(&src[s..e]);
            }
            let j = join.clone();
            let cb: BufDone = Box::new(move |_b, res| j.part(res));
            if fua && !fua_flag {
                self.write_then_flush(offset + s as u64, part, cb);
            } else {
                self.write_one(offset + s as u64, part, fua_flag, cb);
            }
        }
    }

    /// FUA emulation for servers without `SEND_FUA`: write, then flush.
    fn write_then_flush(&self, offset: u64, buf: DmaBuf, done: BufDone) {
        let sh = self.sh.clone();
        let tx = self.tx.clone();
        let has_flush = self.has(FLAG_SEND_FLUSH);
        self.write_one(
            offset,
            buf,
            false,
            Box::new(move |buf, res| {
                if res.is_err() || !has_flush {
                    return done(buf, res);
                }
                let p = Pending::new(
                    OpKind::Flush,
                    0,
                    0,
                    PendingKind::Plain {
                        done: Box::new(move |r| done(buf, r)),
                    },
                );
                if let Ok(cookie) = sh.insert(p) {
                    let header = encode_request(0, CMD_FLUSH, cookie, 0, 0);
                    let _ = tx.send(Msg::Request {
                        header,
                        cookie,
                        payload: None,
                    });
                }
            }),
        );
    }

    /// Zeroes by writing zero buffers (servers without WRITE_ZEROES, or
    /// unaligned edges).
    fn zero_by_writes(self: &Arc<Self>, offset: u64, len: u64, done: Done) {
        let parts = len.div_ceil(ZERO_CHUNK) as usize;
        let join = Join::new(parts.max(1), done);
        if len == 0 {
            return join.part(Ok(()));
        }
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(ZERO_CHUNK);
            let j = join.clone();
            self.write(
                pos,
                DmaBuf::new(n as usize, 4096),
                false,
                Box::new(move |_b, r| j.part(r)),
            );
            pos += n;
        }
    }

    fn rmw_next(self: &Arc<Self>) {
        let next = {
            let mut q = self.rmw.lock();
            match q.queue.pop_front() {
                Some(op) => op,
                None => {
                    q.busy = false;
                    return;
                }
            }
        };
        let (offset, data, fua, done) = next;
        let a = u64::from(self.neg.min_block);
        let lo = offset - offset % a;
        let end = offset + data.len() as u64;
        let hi = end.div_ceil(a) * a;
        let me = self.clone();
        let bounce = DmaBuf::new((hi - lo) as usize, 4096);
        self.read_aligned(
            lo,
            bounce,
            Box::new(move |mut bounce, res| {
                if let Err(e) = res {
                    done(
                        data,
                        Err(IoError {
                            op: OpKind::Write,
                            ..e
                        }),
                    );
                    return me.rmw_next();
                }
                let s = (offset - lo) as usize;
                bounce[s..s + data.len()].copy_from_slice(&data);
                let me2 = me.clone();
                me.write_aligned(
                    lo,
                    bounce,
                    fua,
                    Box::new(move |_b, res| {
                        done(data, res);
                        me2.rmw_next();
                    }),
                );
            }),
        );
    }

    /// Aligned, in-range read of any size (split at the maximum payload).
    fn read_aligned(&self, offset: u64, buf: DmaBuf, done: BufDone) {
        let max = self.neg.max_payload as usize;
        if buf.len() <= max {
            return self.read_one(offset, buf, done);
        }
        let parts = buf.len().div_ceil(max);
        let total = buf.len();
        let join = BufJoin::new(buf, parts, done);
        for i in 0..parts {
            let (s, e) = (i * max, ((i + 1) * max).min(total));
            let j = join.clone();
            self.read_one(
                offset + s as u64,
                DmaBuf::new(e - s, 4096),
                Box::new(move |part, res| {
                    if res.is_ok() {
                        if let Some(b) = j.buf.lock().as_mut() {
                            b[s..e].copy_from_slice(&part);
                        }
                    }
                    j.part(res)
                }),
            );
        }
    }
}
