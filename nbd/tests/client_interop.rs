//! The client against servers nobody here wrote (qemu-nbd, nbdkit), checked
//! against a local oracle (plain pread/pwrite on a second file).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;
use rand::{Rng, SeedableRng};
use ringmirror_engine::{
    BlockDevice, BlockDeviceExt, DeviceKind, ErrorKind, ExtentKind, OpenOptions, SyncFile,
};
use ringmirror_nbd::NbdDevice;
use ringmirror_testkit::{assert_files_equal, random_bytes, require_tool, write_file, ScratchDir};

const MIB: u64 = 1 << 20;

fn spawn(cmd: &mut Command, sock: &Path) -> Daemon {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let d = Daemon(child);
    wait_for_listener(sock, 10);
    d
}

fn qemu_nbd(file: &Path, sock: &Path) -> Daemon {
    require_tool("qemu-nbd", "apt-get install qemu-utils");
    spawn(
        Command::new("qemu-nbd")
            .args(["-f", "raw", "-t", "-x", "disk", "-k"])
            .arg(sock)
            .arg(file),
        sock,
    )
}

fn nbdkit(sock: &Path, args: &[&str]) -> Daemon {
    require_tool("nbdkit", "apt-get install nbdkit");
    spawn(
        Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(sock)
            .args(args),
        sock,
    )
}

/// Random writes, zeroes and reads through `remote`, mirrored on `oracle`;
/// every read compares.
fn differential(remote: &Arc<NbdDevice>, oracle: &dyn BlockDevice, seed: u64, ops: usize) {
    let size = remote.size();
    assert_eq!(size, oracle.size());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Many writes in flight at once: submit a batch, then wait for all.
    for round in 0..ops / 16 {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut expected = Vec::new();
        let mut used: Vec<(u64, u64)> = Vec::new();
        for i in 0..16 {
            let len = rng.gen_range(1..=300_000u64).min(size);
            let off = rng.gen_range(0..=size - len);
            // Concurrent requests must not overlap (their order is undefined).
            if used.iter().any(|&(o, l)| off < o + l && o < off + len) {
                continue;
            }
            used.push((off, len));
            let tx = tx.clone();
            if rng.gen_bool(0.2) {
                let unmap = rng.gen_bool(0.5);
                oracle.write_zeroes_sync(off, len, unmap).unwrap();
                remote.write_zeroes(off, len, unmap, Box::new(move |r| tx.send(r).unwrap()));
            } else {
                let data = random_bytes(seed * 1000 + (round * 16 + i) as u64, len as usize);
                oracle.write_at(off, &data, false).unwrap();
                let mut buf = remote.alloc_buf(len as usize);
                buf.copy_from_slice(&data);
                let fua = rng.gen_bool(0.1);
                remote.write(off, buf, fua, Box::new(move |_b, r| tx.send(r).unwrap()));
            }
            expected.push(());
        }
        drop(tx);
        for _ in &expected {
            rx.recv().expect("completion").expect("remote write");
        }
        for _ in 0..4 {
            let len = rng.gen_range(1..=200_000u64).min(size);
            let off = rng.gen_range(0..=size - len);
            let got = remote.read_at(off, len as usize).unwrap();
            let want = oracle.read_at(off, len as usize).unwrap();
            assert!(
                got[..] == want[..],
                "read {off}+{len} differs from the oracle (round {round})"
            );
        }
    }
    remote.flush_sync().unwrap();
}

fn oracle_copy(dir: &ScratchDir, init: &[u8]) -> (std::path::PathBuf, Arc<SyncFile>) {
    let p = dir.join("oracle.img");
    write_file(&p, init);
    let dev = SyncFile::open_sync(
        &p,
        &OpenOptions {
            write: true,
            direct: false,
        },
    )
    .unwrap();
    (p, dev)
}

#[test]
fn client_against_qemu_nbd_matches_the_oracle() {
    let dir = ScratchDir::new("nbdc-qemu");
    let file = dir.join("disk.img");
    let init = random_bytes(7, (8 * MIB) as usize);
    write_file(&file, &init);
    let (opath, oracle) = oracle_copy(&dir, &init);
    let sock = dir.join("q.sock");
    let _d = qemu_nbd(&file, &sock);
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    let remote = NbdDevice::connect(&uri).unwrap();
    assert_eq!(remote.info().kind, DeviceKind::Remote);
    assert!(!remote.info().read_only);
    assert!(remote.structured_replies());
    differential(&remote, oracle.as_ref(), 1, 320);
    // Large requests are split at the server's maximum payload.
    let big = random_bytes(99, (40 * MIB).min(8 * MIB) as usize);
    remote.write_at(0, &big, true).unwrap();
    oracle.write_at(0, &big, true).unwrap();
    assert!(remote.read_at(0, big.len()).unwrap()[..] == big[..]);
    drop(remote);
    assert_files_equal(&file, &opath);
}

#[test]
fn client_against_nbdkit_file_matches_the_oracle() {
    let dir = ScratchDir::new("nbdc-kitfile");
    let file = dir.join("disk.img");
    let init = random_bytes(8, (6 * MIB + 777) as usize);
    write_file(&file, &init);
    let (opath, oracle) = oracle_copy(&dir, &init);
    let sock = dir.join("k.sock");
    let _d = nbdkit(&sock, &["file", file.to_str().unwrap()]);
    let remote = NbdDevice::connect(&format!("nbd+unix:///?socket={}", sock.display())).unwrap();
    differential(&remote, oracle.as_ref(), 2, 320);
    drop(remote);
    assert_files_equal(&file, &opath);
}

#[test]
fn client_against_server_with_minimum_block_size_does_rmw() {
    // nbdkit's blocksize-policy filter advertises a 4 KiB minimum and fails
    // anything unaligned, so the client must widen reads and RMW writes.
    let dir = ScratchDir::new("nbdc-minblk");
    let file = dir.join("disk.img");
    let init = random_bytes(9, (4 * MIB) as usize);
    write_file(&file, &init);
    let (opath, oracle) = oracle_copy(&dir, &init);
    let sock = dir.join("k.sock");
    let _d = nbdkit(
        &sock,
        &[
            "--filter=blocksize-policy",
            "file",
            file.to_str().unwrap(),
            "blocksize-minimum=4096",
            "blocksize-preferred=65536",
            "blocksize-maximum=1048576",
            "blocksize-error-policy=error",
        ],
    );
    let remote = NbdDevice::connect(&format!("nbd+unix:///?socket={}", sock.display())).unwrap();
    assert_eq!(remote.block_sizes(), (4096, 65536, 1 << 20));
    assert_eq!(remote.info().offset_align, 4096);
    differential(&remote, oracle.as_ref(), 3, 160);
    drop(remote);
    assert_files_equal(&file, &opath);
}

#[test]
fn extents_from_nbdkit_sparse_memory() {
    let dir = ScratchDir::new("nbdc-mem");
    let sock = dir.join("m.sock");
    let _d = nbdkit(&sock, &["memory", "64M"]);
    let remote = NbdDevice::connect(&format!("nbd+unix:///?socket={}", sock.display())).unwrap();
    assert!(remote.info().sparse_aware);
    let all = remote.extents(0, 64 * MIB).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].kind, ExtentKind::Hole);
    remote
        .write_at(8 * MIB, &random_bytes(1, MIB as usize), false)
        .unwrap();
    remote
        .write_at(40 * MIB, &random_bytes(2, 2 * MIB as usize), false)
        .unwrap();
    let ext = remote.extents(0, 64 * MIB).unwrap();
    // Tiles the range, and data exactly where written.
    let mut pos = 0;
    for e in &ext {
        assert_eq!(e.offset, pos);
        pos += e.len;
    }
    assert_eq!(pos, 64 * MIB);
    let data: Vec<(u64, u64)> = ext
        .iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| (e.offset, e.len))
        .collect();
    assert_eq!(data, vec![(8 * MIB, MIB), (40 * MIB, 2 * MIB)], "{ext:?}");
    // A sub-range is clipped to what was asked.
    let sub = remote.extents(8 * MIB + 5, MIB).unwrap();
    assert_eq!(sub[0].offset, 8 * MIB + 5);
    assert_eq!(sub[0].kind, ExtentKind::Data);
    assert_eq!(sub.iter().map(|e| e.len).sum::<u64>(), MIB);
    // Zeroing with unmap punches the hole again.
    remote.write_zeroes_sync(40 * MIB, 2 * MIB, true).unwrap();
    let ext = remote.extents(32 * MIB, 16 * MIB).unwrap();
    assert!(ext.iter().all(|e| e.kind == ExtentKind::Hole), "{ext:?}");
    assert!(remote
        .read_at(40 * MIB, 4096)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn read_only_export_and_connection_loss() {
    let dir = ScratchDir::new("nbdc-ro");
    let file = dir.join("disk.img");
    write_file(&file, &random_bytes(5, MIB as usize));
    let sock = dir.join("k.sock");
    let mut d = nbdkit(&sock, &["-r", "file", file.to_str().unwrap()]);
    let remote = NbdDevice::connect(&format!("nbd+unix:///?socket={}", sock.display())).unwrap();
    assert!(remote.info().read_only);
    let e = remote.write_at(0, b"abc", false).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ReadOnly);
    assert_eq!(
        &remote.read_at(10, 10).unwrap()[..],
        &random_bytes(5, 20)[10..20]
    );
    // Kill the server: every later request fails promptly, none hangs.
    let _ = d.0.kill();
    let _ = d.0.wait();
    let e = remote.read_at(0, 4096).unwrap_err();
    assert_eq!(e.errno, Some(libc::ESHUTDOWN), "{e}");
    assert!(remote.is_disconnected());
    assert!(remote.flush_sync().is_err());
}

#[test]
fn connect_errors_are_clear() {
    let dir = ScratchDir::new("nbdc-err");
    let e = NbdDevice::connect(&format!(
        "nbd+unix:///x?socket={}",
        dir.join("none.sock").display()
    ))
    .err()
    .expect("no server");
    assert!(e.to_string().contains("cannot connect"), "{e}");
    assert_eq!(
        NbdDevice::connect("nbds://h/x").err().expect("tls").kind,
        ErrorKind::InvalidInput
    );
    let sock = dir.join("k.sock");
    let _d = nbdkit(&sock, &["memory", "1M"]);
    // nbdkit serves any name; qemu-nbd does not: use it for the unknown export.
    let qsock = dir.join("q.sock");
    let f = dir.join("f.img");
    write_file(&f, &[0u8; 4096]);
    let _q = qemu_nbd(&f, &qsock);
    let e = NbdDevice::connect(&format!("nbd+unix:///nope?socket={}", qsock.display()))
        .err()
        .expect("unknown export");
    assert!(
        e.to_string().contains("not found") || e.to_string().contains("unknown"),
        "{e}"
    );
    assert!(NbdDevice::connect(&format!("nbd+unix:///?socket={}", sock.display())).is_ok());
}
