//! Hostile and broken clients on raw sockets against the server, while a
//! well-behaved client keeps working; plus our own client against our own
//! server (TCP and unix), export removal modes and stop.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use ringmirror_engine::{BlockDevice, BlockDeviceExt};
use ringmirror_nbd::parse::{be16, be32, be64};
use ringmirror_nbd::proto::*;
use ringmirror_nbd::{NbdDevice, NbdError, NbdServer, RemoveMode, ServerConfig};
use ringmirror_testkit::{random_bytes, sparse_file, write_file, ScratchDir};

const MIB: u64 = 1 << 20;

/// A hand-driven NBD client.
struct Raw {
    s: UnixStream,
}

impl Raw {
    fn connect(sock: &Path) -> Raw {
        let s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s }
    }

    /// Greeting and client flags.
    fn hello(sock: &Path) -> Raw {
        let mut r = Raw::connect(sock);
        let mut g = [0u8; 18];
        r.s.read_exact(&mut g).unwrap();
        assert_eq!(be64(&g[0..8]), NBDMAGIC);
        assert_eq!(be64(&g[8..16]), IHAVEOPT);
        assert_eq!(be16(&g[16..18]), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        r.s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .unwrap();
        r
    }

    fn option(&mut self, opt: u32, data: &[u8]) {
        let mut v = Vec::new();
        put_option(&mut v, opt, data);
        self.s.write_all(&v).unwrap();
    }

    fn reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(be64(&h[0..8]), OPT_REPLY_MAGIC);
        let mut d = vec![0u8; be32(&h[16..20]) as usize];
        self.s.read_exact(&mut d).unwrap();
        (be32(&h[8..12]), be32(&h[12..16]), d)
    }

    /// Structured replies, base:allocation, GO: ready for requests.
    fn go(sock: &Path, export: &str) -> Raw {
        let mut r = Raw::hello(sock);
        r.option(OPT_STRUCTURED_REPLY, &[]);
        assert_eq!(r.reply().1, REP_ACK);
        let mut d = Vec::new();
        d.extend_from_slice(&(export.len() as u32).to_be_bytes());
        d.extend_from_slice(export.as_bytes());
        let mut meta = d.clone();
        meta.extend_from_slice(&1u32.to_be_bytes());
        meta.extend_from_slice(&15u32.to_be_bytes());
        meta.extend_from_slice(b"base:allocation");
        r.option(OPT_SET_META_CONTEXT, &meta);
        assert_eq!(r.reply().1, REP_META_CONTEXT);
        assert_eq!(r.reply().1, REP_ACK);
        d.extend_from_slice(&0u16.to_be_bytes());
        r.option(OPT_GO, &d);
        loop {
            let (_, rep, _) = r.reply();
            if rep == REP_ACK {
                return r;
            }
            assert_eq!(rep, REP_INFO);
        }
    }

    fn request(&mut self, flags: u16, kind: u16, cookie: u64, off: u64, len: u32) {
        self.s
            .write_all(&encode_request(flags, kind, cookie, off, len))
            .unwrap();
    }

    /// Read one reply (simple, or every chunk of a structured one):
    /// `(cookie, errno, data)`.
    fn response(&mut self) -> (u64, u32, Vec<u8>) {
        let mut data = Vec::new();
        loop {
            let mut m = [0u8; 4];
            self.s.read_exact(&mut m).unwrap();
            if be32(&m) == SIMPLE_REPLY_MAGIC {
                let mut h = [0u8; 12];
                self.s.read_exact(&mut h).unwrap();
                return (be64(&h[4..12]), be32(&h[0..4]), data);
            }
            assert_eq!(be32(&m), STRUCTURED_REPLY_MAGIC);
            let mut h = [0u8; 16];
            self.s.read_exact(&mut h).unwrap();
            let (flags, kind, cookie) = (be16(&h[0..2]), be16(&h[2..4]), be64(&h[4..12]));
            let mut p = vec![0u8; be32(&h[12..16]) as usize];
            self.s.read_exact(&mut p).unwrap();
            let mut errno = 0;
            match kind {
                REPLY_TYPE_OFFSET_DATA => data.extend_from_slice(&p[8..]),
                REPLY_TYPE_BLOCK_STATUS => data.extend_from_slice(&p),
                k if k & 0x8000 != 0 => errno = be32(&p[0..4]),
                _ => {}
            }
            if flags & REPLY_FLAG_DONE != 0 {
                return (cookie, errno, data);
            }
            assert_eq!(errno, 0, "error chunk must be final here");
        }
    }

    /// True when the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

struct Fixture {
    _dir: ScratchDir,
    served: Served,
    good: std::sync::Arc<NbdDevice>,
    pattern: Vec<u8>,
}

/// A 4 MiB export and a good client that must keep working throughout.
fn fixture(tag: &str) -> Fixture {
    let dir = ScratchDir::new(tag);
    let file = dir.join("disk.img");
    let pattern = random_bytes(42, (4 * MIB) as usize);
    write_file(&file, &pattern);
    let served = Served::new(&dir, &file, "d");
    let good = NbdDevice::connect(&served.uri()).unwrap();
    Fixture {
        _dir: dir,
        served,
        good,
        pattern,
    }
}

impl Fixture {
    fn check_good(&self) {
        let off = 12345;
        let got = self.good.read_at(off, 5000).unwrap();
        assert!(
            got[..] == self.pattern[off as usize..off as usize + 5000],
            "the well-behaved client read wrong data"
        );
    }
}

#[test]
fn bad_handshakes_are_refused_cleanly() {
    let f = fixture("nbdh-hs");
    let sock = &f.served.sock;
    // A non-fixed-newstyle client (flags 0) is disconnected.
    let mut r = Raw::connect(sock);
    let mut g = [0u8; 18];
    r.s.read_exact(&mut g).unwrap();
    r.s.write_all(&0u32.to_be_bytes()).unwrap();
    assert!(r.closed());
    // Unknown client flags.
    let mut r = Raw::connect(sock);
    r.s.read_exact(&mut g).unwrap();
    r.s.write_all(&0x8000_0001u32.to_be_bytes()).unwrap();
    assert!(r.closed());
    // Bad option magic.
    let mut r = Raw::hello(sock);
    r.s.write_all(&[0xee; 16]).unwrap();
    assert!(r.closed());
    // Unknown options, STARTTLS, extended headers: ERR_UNSUP, and the session goes on.
    let mut r = Raw::hello(sock);
    for opt in [0x1234, OPT_STARTTLS, OPT_EXTENDED_HEADERS, 4] {
        r.option(opt, b"");
        let (o, rep, _) = r.reply();
        assert_eq!((o, rep), (opt, REP_ERR_UNSUP));
    }
    // Malformed options: ERR_INVALID.
    r.option(OPT_LIST, b"junk");
    assert_eq!(r.reply().1, REP_ERR_INVALID);
    r.option(OPT_GO, &[0, 0, 0, 9, b'x']);
    assert_eq!(r.reply().1, REP_ERR_INVALID);
    r.option(OPT_SET_META_CONTEXT, &[0, 0, 0, 1, b'd', 0, 0, 0, 0]);
    assert_eq!(
        r.reply().1,
        REP_ERR_INVALID,
        "meta context needs structured replies"
    );
    // Unknown export: ERR_UNKNOWN for INFO and GO; "" is not exported here.
    r.option(OPT_INFO, &[0, 0, 0, 2, b'n', b'o', 0, 0]);
    assert_eq!(r.reply().1, REP_ERR_UNKNOWN);
    r.option(OPT_GO, &[0, 0, 0, 0, 0, 0]);
    assert_eq!(r.reply().1, REP_ERR_UNKNOWN);
    // LIST still works, then ABORT is acknowledged and closes.
    r.option(OPT_LIST, b"");
    let (_, rep, d) = r.reply();
    assert_eq!(rep, REP_SERVER);
    assert_eq!(&d[4..5], b"d");
    assert_eq!(r.reply().1, REP_ACK);
    r.option(OPT_ABORT, b"");
    assert_eq!(r.reply().1, REP_ACK);
    assert!(r.closed());
    // Oversized option length: hard disconnect without reading 4 GiB.
    let mut r = Raw::hello(sock);
    let mut v = Vec::new();
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&OPT_LIST.to_be_bytes());
    v.extend_from_slice(&u32::MAX.to_be_bytes());
    r.s.write_all(&v).unwrap();
    assert!(r.closed());
    // EXPORT_NAME of an unknown export: hard disconnect (no error reply exists).
    let mut r = Raw::hello(sock);
    r.option(OPT_EXPORT_NAME, b"missing");
    assert!(r.closed());
    // EXPORT_NAME of a real one: size + flags, no zero padding (NO_ZEROES).
    let mut r = Raw::hello(sock);
    r.option(OPT_EXPORT_NAME, b"d");
    let mut b = [0u8; 10];
    r.s.read_exact(&mut b).unwrap();
    assert_eq!(be64(&b[0..8]), 4 * MIB);
    r.request(0, CMD_READ, 7, 0, 16);
    let (c, e, _) = r.response();
    assert_eq!((c, e), (7, 0));
    let mut d = [0u8; 16];
    r.s.read_exact(&mut d).unwrap();
    assert_eq!(&d[..], &f.pattern[..16]);
    f.check_good();
}

#[test]
fn bad_requests_get_errors_and_the_connection_lives() {
    let f = fixture("nbdh-req");
    let mut r = Raw::go(&f.served.sock, "d");
    let size = 4 * MIB;
    let cases: &[(u16, u16, u64, u32, u32)] = &[
        (0, 0x55, 0, 512, EINVAL),                    // unknown command
        (0, CMD_READ, size - 10, 20, EINVAL),         // past the end
        (0, CMD_READ, u64::MAX - 5, 10, EINVAL),      // offset overflow
        (0, CMD_READ, 0, 0, EINVAL),                  // zero length
        (0, CMD_READ, 0, 33 << 20, EOVERFLOW),        // over the max payload
        (0x80, CMD_READ, 0, 512, EINVAL),             // unknown flag
        (CMD_FLAG_REQ_ONE, CMD_READ, 0, 512, EINVAL), // flag of another command
        (0, CMD_TRIM, size, 1, EINVAL),
        (0, CMD_WRITE_ZEROES, size - 1, 2, ENOSPC),
        (0, CMD_BLOCK_STATUS, size, 512, EINVAL),
    ];
    for (i, &(flags, kind, off, len, errno)) in cases.iter().enumerate() {
        r.request(flags, kind, 100 + i as u64, off, len);
        let (c, e, _) = r.response();
        assert_eq!((c, e), (100 + i as u64, errno), "case {i}");
    }
    // A write past the end: its payload is read and dropped, ENOSPC.
    r.request(0, CMD_WRITE, 1, size - 100, 4096);
    r.s.write_all(&[0x77; 4096]).unwrap();
    assert_eq!(r.response().1, ENOSPC);
    // A write over the maximum payload but of sane size: EINVAL, payload skipped.
    let n = (33 << 20) as usize;
    r.request(0, CMD_WRITE, 2, 0, n as u32);
    r.s.write_all(&vec![0x66; n]).unwrap();
    assert_eq!(r.response().1, EINVAL);
    // The connection still works, and nothing was written.
    r.request(0, CMD_READ, 3, size - 4096, 4096);
    let (c, e, d) = r.response();
    assert_eq!((c, e), (3, 0));
    assert_eq!(&d[..], &f.pattern[(size - 4096) as usize..]);
    // Block status honours REQ_ONE; FAST_ZERO on a file is accepted.
    r.request(CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 4, 0, 1 << 20);
    let (_, e, d) = r.response();
    assert_eq!((e, d.len()), (0, 12));
    r.request(CMD_FLAG_FAST_ZERO, CMD_WRITE_ZEROES, 5, 0, 8192);
    assert_eq!(r.response().1, 0);
    // Bad magic: the server closes.
    r.s.write_all(&[0xaa; 28]).unwrap();
    assert!(r.closed());
    f.check_good();
}

#[test]
fn block_status_without_context_and_read_only_export() {
    let dir = ScratchDir::new("nbdh-ro");
    let file = dir.join("disk.img");
    sparse_file(&file, MIB);
    let server = NbdServer::new(ServerConfig::default());
    server
        .add_export("ro", uring_dev(&file), false, "")
        .unwrap();
    let sock = dir.join("s.sock");
    server.listen_unix(&sock).unwrap();
    let mut r = Raw::hello(&sock);
    // GO without structured replies: simple replies only.
    r.option(OPT_GO, &[0, 0, 0, 2, b'r', b'o', 0, 0]);
    let mut flags = 0;
    loop {
        let (_, rep, d) = r.reply();
        if rep == REP_ACK {
            break;
        }
        if be16(&d[0..2]) == INFO_EXPORT {
            flags = be16(&d[10..12]);
        }
    }
    assert!(flags & FLAG_READ_ONLY != 0 && flags & FLAG_SEND_DF == 0);
    r.request(0, CMD_BLOCK_STATUS, 1, 0, 512);
    assert_eq!(r.response().1, EINVAL);
    r.request(0, CMD_WRITE, 2, 0, 512);
    r.s.write_all(&[1; 512]).unwrap();
    assert_eq!(r.response().1, EPERM);
    r.request(0, CMD_TRIM, 3, 0, 512);
    assert_eq!(r.response().1, EPERM);
    r.request(0, CMD_READ, 4, 0, 40 << 20);
    assert_eq!(
        r.response().1,
        EINVAL,
        "oversize read without structured replies"
    );
    r.request(0, CMD_DISC, 5, 0, 0);
    assert!(r.closed());
    server.stop();
    assert_eq!(std::fs::read(&file).unwrap(), vec![0u8; MIB as usize]);
}

#[test]
fn thousands_of_pipelined_requests() {
    let f = fixture("nbdh-pipe");
    let mut r = Raw::go(&f.served.sock, "d");
    let mut w = r.s.try_clone().unwrap();
    let n = 5000u64;
    // Send everything without reading: the server must bound what it holds
    // and keep going as we drain.
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            let off = MIB + (i * 4096) % (3 * MIB); // the good client reads below 1 MiB
            if i % 2 == 0 {
                w.write_all(&encode_request(0, CMD_READ, i, off, 4096))
                    .unwrap();
            } else {
                w.write_all(&encode_request(0, CMD_WRITE, i, off, 4096))
                    .unwrap();
                w.write_all(&[(i % 251) as u8; 4096]).unwrap();
            }
        }
        w.write_all(&encode_request(0, CMD_FLUSH, n, 0, 0)).unwrap();
    });
    let mut seen = vec![false; n as usize + 1];
    for _ in 0..=n {
        let (c, e, _) = r.response();
        assert_eq!(e, 0, "request {c}");
        assert!(
            !std::mem::replace(&mut seen[c as usize], true),
            "duplicate reply {c}"
        );
    }
    sender.join().unwrap();
    assert!(seen.iter().all(|&s| s));
    f.check_good();
}

#[test]
fn vanishing_clients_harm_no_one() {
    let f = fixture("nbdh-vanish");
    for i in 0..20u64 {
        let mut r = Raw::go(&f.served.sock, "d");
        match i % 4 {
            // Truncated write payload, then gone.
            0 => {
                r.request(0, CMD_WRITE, 1, 0, 65536);
                r.s.write_all(&[0xee; 1000]).unwrap();
            }
            // Many reads in flight, never read back.
            1 => {
                for c in 0..200 {
                    r.request(0, CMD_READ, c, c * 4096, 65536);
                }
            }
            // Half a header.
            2 => {
                r.s.write_all(&encode_request(0, CMD_READ, 1, 0, 512)[..13])
                    .unwrap()
            }
            // A huge bogus write length: closed without reading it.
            _ => {
                r.request(0, CMD_WRITE, 1, 0, u32::MAX);
                assert!(r.closed());
            }
        }
        drop(r);
        f.check_good();
    }
    // The truncated write changed nothing.
    assert_eq!(&f.good.read_at(0, 1000).unwrap()[..], &f.pattern[..1000]);
    // Every vanished connection is cleaned up.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while f.served.server.connection_count() != 1 {
        assert!(std::time::Instant::now() < deadline, "connections leaked");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn own_client_over_tcp_and_export_removal() {
    let dir = ScratchDir::new("nbdh-tcp");
    let file = dir.join("disk.img");
    sparse_file(&file, 2 * MIB);
    let server = NbdServer::new(ServerConfig::default());
    server
        .add_export("", uring_dev(&file), true, "default")
        .unwrap();
    assert!(matches!(
        server.add_export("", uring_dev(&file), true, ""),
        Err(NbdError::ExportExists(_))
    ));
    let addr = server.listen_tcp("127.0.0.1:0").unwrap();
    let c = NbdDevice::connect(&format!("nbd://127.0.0.1:{}", addr.port())).unwrap();
    c.write_at(MIB - 3, b"hello", true).unwrap();
    c.write_zeroes_sync(4096, 8192, true).unwrap();
    c.discard_sync(65536, 65536).unwrap();
    assert_eq!(&c.read_at(MIB - 3, 5).unwrap()[..], b"hello");
    let ext = c.extents(0, 2 * MIB).unwrap();
    assert!(ext
        .iter()
        .any(|e| e.kind == ringmirror_engine::ExtentKind::Data));
    assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 2 * MIB);
    assert_eq!(server.list_exports()[0].connections, 1);
    // Safe removal refuses while a client is attached.
    let e = server.remove_export("", RemoveMode::Safe).unwrap_err();
    assert!(
        matches!(e, NbdError::ExportInUse { connections: 1, .. }),
        "{e}"
    );
    // Hard removal cuts the client; its requests now fail, none hangs.
    server.remove_export("", RemoveMode::Hard).unwrap();
    assert!(server.list_exports().is_empty());
    assert!(c.read_at(0, 4096).is_err());
    assert!(matches!(
        server.remove_export("", RemoveMode::Safe),
        Err(NbdError::ExportNotFound(_))
    ));
    // Safe removal succeeds once the client has gone.
    server.add_export("x", uring_dev(&file), false, "").unwrap();
    let c2 = NbdDevice::connect(&format!("nbd://127.0.0.1:{}/x", addr.port())).unwrap();
    assert!(c2.info().read_only);
    assert_eq!(&c2.read_at(MIB - 3, 5).unwrap()[..], b"hello");
    drop(c2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.remove_export("x", RemoveMode::Safe).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "connection count never dropped"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // stop() with a client connected: the client sees errors, not a hang.
    server.add_export("y", uring_dev(&file), true, "").unwrap();
    let c3 = NbdDevice::connect(&format!("nbd://127.0.0.1:{}/y", addr.port())).unwrap();
    server.stop();
    assert!(c3.read_at(0, 512).is_err());
    assert!(NbdDevice::connect(&format!("nbd://127.0.0.1:{}/y", addr.port())).is_err());
    assert!(matches!(
        server.listen_tcp("127.0.0.1:0"),
        Err(NbdError::Stopped)
    ));
}

#[test]
fn tight_bounds_still_serve_a_deep_pipeline() {
    // Two requests / 16 KiB in flight: the reader must stall and resume as
    // replies drain, never deadlock, never lose a reply.
    let dir = ScratchDir::new("nbdh-tight");
    let file = dir.join("disk.img");
    sparse_file(&file, 4 * MIB);
    let server = NbdServer::new(ServerConfig {
        max_requests_in_flight: 2,
        max_bytes_in_flight: 16 << 10,
        ..ServerConfig::default()
    });
    server.add_export("t", uring_dev(&file), true, "").unwrap();
    let sock = dir.join("s.sock");
    server.listen_unix(&sock).unwrap();
    let mut r = Raw::go(&sock, "t");
    let mut w = r.s.try_clone().unwrap();
    let n = 2000u64;
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            let len = if i % 3 == 0 { 65536 } else { 4096 }; // some exceed the byte budget alone
            w.write_all(&encode_request(0, CMD_WRITE, i, i * 512, len))
                .unwrap();
            w.write_all(&vec![(i % 200) as u8 + 1; len as usize])
                .unwrap();
        }
    });
    for _ in 0..n {
        assert_eq!(r.response().1, 0);
    }
    sender.join().unwrap();
    // Requests larger than the per-connection cap: a 32 MiB read runs alone.
    r.request(0, CMD_READ, 9, 0, 4 << 20);
    let (c, e, d) = r.response();
    assert_eq!((c, e, d.len()), (9, 0, 4 << 20));
    server.stop();
}

#[test]
fn own_client_splits_requests_over_the_maximum_payload() {
    let dir = ScratchDir::new("nbdh-split");
    let file = dir.join("disk.img");
    sparse_file(&file, 48 * MIB);
    let served = Served::new(&dir, &file, "big");
    let c = NbdDevice::connect(&served.uri()).unwrap();
    assert_eq!(c.block_sizes(), (1, 4096, 32 << 20));
    // 36 MiB of distinct 1 MiB blocks (cheap to build in a debug build).
    let block = random_bytes(77, MIB as usize);
    let mut data = Vec::with_capacity(36 * MIB as usize + 12345);
    for i in 0..36u8 {
        data.extend_from_slice(&block);
        let n = data.len();
        data[n - MIB as usize] = i;
    }
    data.extend_from_slice(&block[..12345]);
    c.write_at(MIB + 3, &data, true).unwrap();
    let back = c.read_at(MIB + 3, data.len()).unwrap();
    assert!(back[..] == data[..], "split read/write round trip");
    c.write_zeroes_sync(2 * MIB, 40 * MIB, false).unwrap();
    assert!(ringmirror_engine::is_zero(
        &c.read_at(2 * MIB, (40 * MIB) as usize).unwrap()
    ));
    let file_data = std::fs::read(&file).unwrap();
    assert!(file_data[(MIB + 3) as usize..(2 * MIB) as usize] == data[..(MIB - 3) as usize]);
}
