//! `ringmirror copy` end to end: real files on the real disk, O_DIRECT, the
//! real binary; byte-for-byte comparison of source and destination.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use ringmirror_testkit::{
    allocated_bytes, assert_files_equal, random_bytes, sparse_file, write_file, ScratchDir,
};

fn ringmirror(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringmirror"))
        .args(args)
        .output()
        .expect("run ringmirror")
}

/// Run `cmd` (a copy, however started), require success, return its stderr.
fn succeeds(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run the copy");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{cmd:?} failed: {err}");
    err
}

fn copy_ok(args: &[&str]) -> String {
    succeeds(
        Command::new(env!("CARGO_BIN_EXE_ringmirror"))
            .args(["copy", "--quiet"])
            .args(args),
    )
}

fn copy_err(args: &[&str]) -> String {
    let out = ringmirror(&[&["copy", "--quiet"], args].concat());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "copy {args:?} should have failed");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one-line error expected: {err}"
    );
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn dense_image_copies_identically_and_verifies() {
    let d = ScratchDir::new("copy-dense");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    write_file(&src, &random_bytes(1, 9 << 20));
    let err = copy_ok(&[
        "--verify",
        "--request-size",
        "1M",
        "--buf-size",
        "4M",
        s(&src),
        s(&dst),
    ]);
    assert!(err.contains("verified: identical"), "{err}");
    assert_files_equal(&src, &dst);
}

#[test]
fn buffered_cache_copies_identically_and_stays_sparse() {
    let d = ScratchDir::new("copy-buffered");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    // An odd size (not a multiple of 4 KiB), data around a hole.
    sparse_file(&src, (24 << 20) + 1000);
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(&random_bytes(11, 5 << 20), 0).unwrap();
    f.write_all_at(&random_bytes(12, (3 << 20) + 1000), 21 << 20)
        .unwrap();
    f.sync_all().unwrap();
    let err = copy_ok(&[
        "--cache",
        "buffered",
        "--verify",
        "--request-size",
        "1M",
        s(&src),
        s(&dst),
    ]);
    assert!(err.contains("verified: identical"), "{err}");
    assert_files_equal(&src, &dst);
    assert!(
        allocated_bytes(&dst) < (12 << 20),
        "the 13 MiB hole was written: {} bytes allocated",
        allocated_bytes(&dst)
    );
}

#[test]
fn sparse_image_stays_sparse_and_zero_data_is_not_written() {
    let d = ScratchDir::new("copy-sparse");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    sparse_file(&src, 64 << 20);
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    // Data at a few places, and 4 MiB of allocated zeroes.
    f.write_all_at(&random_bytes(2, 1 << 20), 0).unwrap();
    f.write_all_at(&random_bytes(3, 3 << 20), 20 << 20).unwrap();
    f.write_all_at(&vec![0u8; 4 << 20], 40 << 20).unwrap();
    f.write_all_at(&random_bytes(4, 5000), (64 << 20) - 5000)
        .unwrap();
    f.sync_all().unwrap();
    let out = ringmirror(&["copy", "--json", "--verify", s(&src), s(&dst)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_files_equal(&src, &dst);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let done: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["verified"], true);
    assert_eq!(done["zero_data_skipped"], 4 << 20);
    assert!(
        done["holes_skipped"].as_u64().unwrap() >= 50 << 20,
        "{done}"
    );
    // Every data byte written, no zero data written.
    let data = (1 << 20) + (3 << 20) + 5000u64;
    assert!(
        done["written"].as_u64().unwrap() >= data
            && done["written"].as_u64().unwrap() < data + (8 << 20),
        "{done}"
    );
    let (a, b) = (allocated_bytes(&src), allocated_bytes(&dst));
    assert!(b <= a, "destination allocates {b} bytes, source {a}");
    assert!(b < 12 << 20, "destination allocates {b} bytes");
}

#[test]
fn no_sparse_allocates_everything() {
    let d = ScratchDir::new("copy-nosparse");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    sparse_file(&src, 8 << 20);
    copy_ok(&["--no-sparse", s(&src), s(&dst)]);
    assert_files_equal(&src, &dst);
    assert!(allocated_bytes(&dst) >= 8 << 20);
}

#[test]
fn existing_destination_gets_holes_zeroed() {
    let d = ScratchDir::new("copy-existing");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    sparse_file(&src, 16 << 20);
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(&random_bytes(5, 1 << 20), 3 << 20).unwrap();
    f.write_all_at(&vec![0u8; 2 << 20], 8 << 20).unwrap();
    write_file(&dst, &random_bytes(6, 16 << 20));
    copy_ok(&[s(&src), s(&dst)]);
    assert_files_equal(&src, &dst);
}

#[test]
fn empty_and_odd_sized_images() {
    let d = ScratchDir::new("copy-odd");
    for (i, size) in [0usize, 1, 511, 1000, 4097, 1025 << 10, (3 << 20) + 123]
        .into_iter()
        .enumerate()
    {
        let (src, dst) = (
            d.join(&format!("src{i}.img")),
            d.join(&format!("dst{i}.img")),
        );
        write_file(&src, &random_bytes(i as u64, size));
        copy_ok(&[
            "--verify",
            "--request-size",
            "64K",
            "--buf-size",
            "256K",
            s(&src),
            s(&dst),
        ]);
        assert_files_equal(&src, &dst);
    }
}

#[test]
fn data_beyond_4_gib() {
    let d = ScratchDir::new("copy-big");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    sparse_file(&src, (5 << 30) + 4096);
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    let at = (4u64 << 30) + (1 << 29) + 777;
    let data = random_bytes(8, 3 << 20);
    f.write_all_at(&data, at).unwrap();
    f.write_all_at(b"tail", (5 << 30) + 4092).unwrap();
    f.sync_all().unwrap();
    let err = copy_ok(&["--verify", s(&src), s(&dst)]);
    assert!(err.contains("verified: identical"), "{err}");
    let g = std::fs::File::open(&dst).unwrap();
    let mut back = vec![0u8; data.len()];
    g.read_exact_at(&mut back, at).unwrap();
    assert_eq!(back, data);
    assert!(allocated_bytes(&dst) < 16 << 20);
}

#[test]
fn speed_limit_is_held() {
    let d = ScratchDir::new("copy-speed");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    write_file(&src, &random_bytes(9, 8 << 20));
    let t = std::time::Instant::now();
    copy_ok(&["--speed", "16M", "--request-size", "1M", s(&src), s(&dst)]);
    // 8 MiB at 16 MiB/s cannot finish in much under half a second.
    assert!(t.elapsed().as_secs_f64() > 0.4, "{:?}", t.elapsed());
    assert_files_equal(&src, &dst);
}

#[test]
fn missing_source_is_refused_and_nothing_is_created() {
    let d = ScratchDir::new("copy-nosrc");
    let dst = d.join("dst.img");
    let err = copy_err(&[s(&d.join("nope.img")), s(&dst)]);
    assert!(
        err.contains("cannot open source") && err.contains("No such file"),
        "{err}"
    );
    assert!(!dst.exists());
}

#[test]
fn wrong_size_destination_is_refused_untouched_unless_resize() {
    let d = ScratchDir::new("copy-size");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    write_file(&src, &random_bytes(10, 2 << 20));
    let orig = random_bytes(11, 1 << 20);
    write_file(&dst, &orig);
    let err = copy_err(&[s(&src), s(&dst)]);
    assert!(
        err.contains("is 1.00 MiB (1048576 bytes) but the source is 2.00 MiB")
            && err.contains("--resize"),
        "{err}"
    );
    assert_eq!(std::fs::read(&dst).unwrap(), orig);
    copy_ok(&["--resize", s(&src), s(&dst)]);
    assert_files_equal(&src, &dst);
}

#[test]
fn same_file_is_refused() {
    let d = ScratchDir::new("copy-same");
    let src = d.join("src.img");
    let orig = random_bytes(12, 1 << 20);
    write_file(&src, &orig);
    let link = d.join("link.img");
    std::fs::hard_link(&src, &link).unwrap();
    for other in [&src, &link] {
        let err = copy_err(&[s(&src), s(other)]);
        assert!(err.contains("same file"), "{err}");
    }
    assert_eq!(std::fs::read(&src).unwrap(), orig);
}

#[test]
fn read_only_destination_is_refused_untouched() {
    let d = ScratchDir::new("copy-ro");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    write_file(&src, &random_bytes(13, 1 << 20));
    let orig = random_bytes(14, 1 << 20);
    write_file(&dst, &orig);
    // Root ignores permission bits; the immutable attribute stops even root.
    ringmirror_testkit::require_tool("chattr", "apt-get install -y e2fsprogs");
    let st = Command::new("chattr").arg("+i").arg(&dst).status().unwrap();
    assert!(st.success(), "chattr +i failed");
    let err = copy_err(&[s(&src), s(&dst)]);
    let _ = Command::new("chattr").arg("-i").arg(&dst).status();
    assert!(
        err.contains("cannot open destination") && err.contains("not permitted"),
        "{err}"
    );
    assert_eq!(std::fs::read(&dst).unwrap(), orig);
}

/// A small ext4 filesystem on a loop device, unmounted on drop.
struct SmallFs {
    mnt: std::path::PathBuf,
}

impl SmallFs {
    fn new(d: &ScratchDir, mib: u64) -> SmallFs {
        ringmirror_testkit::require_tool("mkfs.ext4", "apt-get install -y e2fsprogs");
        let img = d.join("fs.img");
        sparse_file(&img, mib << 20);
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status()
            .unwrap();
        assert!(st.success());
        let mnt = d.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a loop filesystem failed (the ENOSPC test needs root and loop devices): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs { mnt }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

#[test]
fn full_filesystem_gives_enospc_and_removes_a_new_destination() {
    let d = ScratchDir::new("copy-enospc");
    let fs = SmallFs::new(&d, 24);
    let src = d.join("src.img");
    let data = random_bytes(15, 48 << 20);
    write_file(&src, &data);
    // New destination: refused before anything is written.
    let dst = fs.mnt.join("dst.img");
    let err = copy_err(&[s(&src), s(&dst)]);
    assert!(
        err.contains("not enough space") && err.contains("nothing was written"),
        "{err}"
    );
    assert!(!dst.exists());
    // Existing sparse destination of the right size: the copy runs into
    // ENOSPC for real and says so; the source is untouched.
    sparse_file(&dst, 48 << 20);
    let err = copy_err(&[s(&src), s(&dst)]);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), 48 << 20);
    assert_eq!(std::fs::read(&src).unwrap(), data);
}

#[test]
fn pread_fallback_copies_identically() {
    let d = ScratchDir::new("copy-fallback");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    write_file(&src, &random_bytes(16, (2 << 20) + 1000));
    let err = succeeds(
        Command::new(env!("CARGO_BIN_EXE_ringmirror"))
            .env("RINGMIRROR_DISABLE_IO_URING", "1")
            .args(["copy", "--quiet", "--verify", s(&src), s(&dst)]),
    );
    assert!(
        err.contains("warning: io_uring disabled") && err.contains("(pread)"),
        "{err}"
    );
    assert_files_equal(&src, &dst);
}

/// With RLIMIT_MEMLOCK too low for the registered-buffer arena (and no
/// CAP_IPC_LOCK to override it), the engine says so and copies with plain
/// buffers.
#[test]
fn low_memlock_limit_falls_back_to_unregistered_buffers_loudly() {
    ringmirror_testkit::require_tool("setpriv", "apt-get install -y util-linux");
    ringmirror_testkit::require_tool("prlimit", "apt-get install -y util-linux");
    let d = ScratchDir::new("copy-memlock");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    write_file(&src, &random_bytes(17, 3 << 20));
    let err = succeeds(
        Command::new("prlimit")
            .args(["--memlock=65536:65536", "--"])
            .args([
                "setpriv",
                "--inh-caps=-ipc_lock",
                "--bounding-set=-ipc_lock",
                "--",
            ])
            .arg(env!("CARGO_BIN_EXE_ringmirror"))
            .args(["copy", "--quiet", "--verify", s(&src), s(&dst)]),
    );
    assert!(
        err.contains("RLIMIT_MEMLOCK is 64 KiB") && err.contains("using unregistered buffers"),
        "{err}"
    );
    assert!(err.contains("verified: identical"), "{err}");
    assert_files_equal(&src, &dst);
}
