//! The server against NBD clients nobody here wrote: nbdinfo, qemu-io,
//! qemu-img, nbdcopy, fio's nbd engine. After each, the backing file is
//! compared byte for byte with what was written.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::Arc;

use common::*;
use ringmirror_engine::{BlockDeviceExt, OpenOptions as DevOpen, SyncFile};
use ringmirror_nbd::{NbdDevice, NbdServer, ServerConfig};
use ringmirror_testkit::{
    assert_files_equal, random_bytes, require_tool, sparse_file, write_file, ScratchDir,
};

const MIB: u64 = 1 << 20;

fn pwrite(path: &std::path::Path, off: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn nbdinfo_json_and_map_match_the_file() {
    require_tool("nbdinfo", "apt-get install libnbd-bin");
    let dir = ScratchDir::new("nbd-info");
    let file = dir.join("disk.img");
    sparse_file(&file, 8 * MIB);
    pwrite(&file, MIB, &random_bytes(1, 512 << 10));
    pwrite(&file, 4 * MIB, &random_bytes(2, 64 << 10));
    let s = Served::new(&dir, &file, "disk");

    let out = run_ok(Command::new("nbdinfo").args(["--json", &s.uri()]), 30);
    let v: serde_json::Value = serde_json::from_str(&out).expect("nbdinfo json");
    assert_eq!(v["protocol"], "newstyle-fixed");
    assert_eq!(v["structured"], true);
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "disk");
    assert_eq!(e["export-size"], 8 * MIB);
    assert_eq!(e["description"], "test export");
    assert_eq!(e["contexts"][0], "base:allocation");
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_multi_conn",
        "can_df",
    ] {
        assert_eq!(e[flag], true, "{flag} in {out}");
    }
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["block_size_minimum"], 1, "{out}");
    assert_eq!(e["block_size_preferred"], 4096, "{out}");
    assert_eq!(e["block_size_maximum"], 32 * MIB, "{out}");

    let map = run_ok(Command::new("nbdinfo").args(["--map", &s.uri()]), 30);
    let got: Vec<(u64, u64, u32)> = map
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    let expect = vec![
        (0, MIB, 3),
        (MIB, 512 << 10, 0),
        (MIB + (512 << 10), 2 * MIB + (512 << 10), 3),
        (4 * MIB, 64 << 10, 0),
        (4 * MIB + (64 << 10), 4 * MIB - (64 << 10), 3),
    ];
    assert_eq!(got, expect, "nbdinfo --map:\n{map}");
}

#[test]
fn nbdinfo_list_shows_every_export() {
    require_tool("nbdinfo", "apt-get install libnbd-bin");
    let dir = ScratchDir::new("nbd-list");
    let server = NbdServer::new(ServerConfig::default());
    for (i, name) in ["", "alpha", "beta gamma"].iter().enumerate() {
        let f = dir.join(&format!("d{i}.img"));
        sparse_file(&f, (i as u64 + 1) * MIB);
        server
            .add_export(name, uring_dev(&f), i != 1, &format!("disk {i}"))
            .unwrap();
    }
    let sock = dir.join("s.sock");
    server.listen_unix(&sock).unwrap();
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let out = run_ok(Command::new("nbdinfo").args(["--list", "--json", &uri]), 30);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let mut names: Vec<(String, u64, bool)> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["export-name"].as_str().unwrap().to_string(),
                e["export-size"].as_u64().unwrap(),
                e["is_read_only"].as_bool().unwrap(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("".into(), MIB, false),
            ("alpha".into(), 2 * MIB, true),
            ("beta gamma".into(), 3 * MIB, false)
        ]
    );
    server.stop();
    assert!(!sock.exists(), "stop() removes the socket file");
}

#[test]
fn qemu_io_patterns_land_in_the_file() {
    let dir = ScratchDir::new("nbd-qio");
    let file = dir.join("disk.img");
    let init = random_bytes(3, (4 * MIB) as usize);
    write_file(&file, &init);
    let s = Served::new(&dir, &file, "vm");
    let mut expect = init.clone();
    let mut apply = |off: usize, len: usize, byte: u8| expect[off..off + len].fill(byte);

    qemu_io(
        &s.uri(),
        &[
            "write -P 0xab 1000 3000",
            "write -P 0xcd 65536 131072",
            "write -P 0x11 4095 2",
            "write -z 200000 70000",
            "write -z -u 1048576 262144",
            "read -P 0xab 1000 3000",
            "read -P 0xcd 65536 131072",
            "read -P 0 200000 70000",
            "read -P 0 1048576 262144",
            "flush",
        ],
    );
    apply(1000, 3000, 0xab);
    apply(65536, 131072, 0xcd);
    apply(4095, 2, 0x11);
    apply(200000, 70000, 0);
    apply(MIB as usize, 262144, 0);
    // Discard: contents are undefined afterwards, so overwrite and check.
    qemu_io(
        &s.uri(),
        &[
            "discard 2097152 524288",
            "write -P 0x5a 2097152 524288",
            "read -P 0x5a 2097152 524288",
        ],
    );
    apply(2 * MIB as usize, 524288, 0x5a);
    // Unaligned read-back of the unaligned write's edges.
    qemu_io(&s.uri(), &["read -P 0x11 4095 2", "read -P 0xab 3999 1"]);
    assert!(
        file_bytes(&file) == expect,
        "backing file differs from the qemu-io writes"
    );
}

#[test]
fn qemu_img_info_compare_convert() {
    require_tool("qemu-img", "apt-get install qemu-utils");
    let dir = ScratchDir::new("nbd-qimg");
    let file = dir.join("disk.img");
    sparse_file(&file, 16 * MIB);
    let src = dir.join("src.img");
    sparse_file(&src, 16 * MIB);
    pwrite(&src, 0, &random_bytes(4, MIB as usize));
    pwrite(&src, 9 * MIB, &random_bytes(5, 3 * MIB as usize + 123));
    let s = Served::new(&dir, &file, "img");
    let uri = s.uri();

    let info = run_ok(
        Command::new("qemu-img").args(["info", "--output=json", &uri]),
        30,
    );
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["virtual-size"], 16 * MIB);

    run_ok(
        Command::new("qemu-img").args([
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &uri,
        ]),
        60,
    );
    assert_files_equal(&file, &src);
    run_ok(
        Command::new("qemu-img").args([
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            &uri,
            src.to_str().unwrap(),
        ]),
        60,
    );

    let out = dir.join("out.img");
    run_ok(
        Command::new("qemu-img").args([
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            out.to_str().unwrap(),
        ]),
        60,
    );
    assert_files_equal(&out, &src);

    // A difference is noticed.
    pwrite(&file, 5 * MIB + 7, b"x");
    let o = run(
        Command::new("qemu-img").args([
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            &uri,
            src.to_str().unwrap(),
        ]),
        60,
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "qemu-img compare must see the changed byte"
    );
}

#[test]
fn nbdcopy_in_and_out() {
    require_tool("nbdcopy", "apt-get install libnbd-bin");
    let dir = ScratchDir::new("nbd-copy");
    let file = dir.join("disk.img");
    sparse_file(&file, 24 * MIB);
    let src = dir.join("src.img");
    sparse_file(&src, 24 * MIB);
    for i in 0..6u64 {
        pwrite(
            &src,
            i * 4 * MIB + i * 4097,
            &random_bytes(10 + i, (700 << 10) + i as usize),
        );
    }
    let s = Served::new(&dir, &file, "c");
    // nbdcopy uses several connections (multi-conn) and many requests each.
    run_ok(
        Command::new("nbdcopy").args([src.to_str().unwrap(), &s.uri()]),
        60,
    );
    assert_files_equal(&file, &src);
    let out = dir.join("out.img");
    run_ok(
        Command::new("nbdcopy").args([&s.uri(), out.to_str().unwrap()]),
        60,
    );
    assert_files_equal(&out, &src);
}

/// fio may print notes before its JSON.
fn fio_json(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in fio output:\n{text}"));
    serde_json::from_str(&text[start..]).unwrap_or_else(|e| panic!("fio json: {e}\n{text}"))
}

#[test]
fn fio_randwrite_verify_over_nbd() {
    require_tool("fio", "apt-get install fio");
    let dir = ScratchDir::new("nbd-fio");
    let file = dir.join("disk.img");
    sparse_file(&file, 32 * MIB);
    let s = Served::new(&dir, &file, "fio");
    let common = [
        "--name=nbdtest",
        "--rw=randwrite",
        "--bs=4k",
        "--size=32M",
        "--verify=crc32c",
        "--randrepeat=1",
        "--output-format=json",
    ];
    let out = run(
        Command::new("fio")
            // fio leaves a verify state file in its working directory.
            .current_dir(dir.path())
            .args([
                "--ioengine=nbd",
                &format!("--uri={}", s.uri()),
                "--iodepth=32",
                "--do_verify=1",
            ])
            .args(common),
        90,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("verify:"),
        "fio over NBD failed:\n{text}"
    );
    let v = fio_json(&out.stdout);
    assert_eq!(
        v["jobs"][0]["write"]["io_bytes"],
        32 * MIB,
        "fio wrote everything"
    );
    assert_eq!(
        v["jobs"][0]["read"]["io_bytes"],
        32 * MIB,
        "fio verified everything"
    );
    // The same verification straight from the backing file: the data is there.
    let out = run(
        Command::new("fio")
            // fio leaves a verify state file in its working directory.
            .current_dir(dir.path())
            .args([
                "--ioengine=psync",
                &format!("--filename={}", file.display()),
                "--verify_only",
            ])
            .args(common),
        60,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("verify:"),
        "backing file does not hold fio's data:\n{text}"
    );
    let v = fio_json(&out.stdout);
    assert_eq!(
        v["jobs"][0]["read"]["io_bytes"],
        32 * MIB,
        "verified the whole file"
    );
}

#[test]
fn multi_conn_flush_on_one_connection_covers_the_other() {
    let dir = ScratchDir::new("nbd-mc");
    let file = dir.join("disk.img");
    sparse_file(&file, 4 * MIB);
    let s = Served::new(&dir, &file, "mc");
    let a = NbdDevice::connect(&s.uri()).unwrap();
    let b = NbdDevice::connect(&s.uri()).unwrap();
    assert_eq!(s.server.list_exports()[0].connections, 2);
    assert!(a.transmission_flags() & ringmirror_nbd::proto::FLAG_CAN_MULTI_CONN != 0);
    let (da, db) = (random_bytes(20, 300_000), random_bytes(21, 200_000));
    a.write_at(100, &da, false).unwrap();
    b.write_at(2 * MIB + 5, &db, false).unwrap();
    b.flush_sync().unwrap(); // flush on B only, after both writes completed
                             // Visible on the other connection and in the file.
    assert_eq!(&b.read_at(100, da.len()).unwrap()[..], &da[..]);
    assert_eq!(&a.read_at(2 * MIB + 5, db.len()).unwrap()[..], &db[..]);
    let local = SyncFile::open_sync(
        &file,
        &DevOpen {
            write: false,
            direct: false,
        },
    )
    .unwrap();
    assert_eq!(&local.read_at(100, da.len()).unwrap()[..], &da[..]);
    assert_eq!(&local.read_at(2 * MIB + 5, db.len()).unwrap()[..], &db[..]);
    drop((a, b));
    let _ = Arc::strong_count(&local);
}
