//! `ringmirror mirror` on two image files (no daemon): complete, Ctrl-C in
//! READY (a consistent copy, no switch), Ctrl-C before READY (cancelled),
//! its JSON output and its errors. Real files on the real disk, O_DIRECT,
//! the real binary. With `--qmp` it is driven against `ringmirror serve` and
//! qemu-storage-daemon in tests/daemon/sc_jobs.py (scenario `mirror_cli`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringmirror_testkit::{assert_files_equal, random_bytes, write_file, ScratchDir};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mirror(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringmirror"))
        .arg("mirror")
        .args(args)
        .output()
        .expect("run ringmirror mirror")
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The `event` names of JSON lines, progress lines left out.
fn events(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|v| v["event"].as_str())
        .filter(|e| *e != "progress")
        .map(str::to_string)
        .collect()
}

/// A source with data, a hole and data again, `mib` MiB.
fn source(path: &Path, mib: usize, seed: u64) {
    let mut data = random_bytes(seed, mib << 20);
    data[(1 << 20)..(2 << 20)].fill(0);
    write_file(path, &data);
}

/// `ringmirror mirror --json` started with stdout piped.
fn spawn_json(args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmirror"))
        .args(["mirror", "--json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringmirror mirror");
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// Read JSON lines until one satisfies `pred`; returns the lines read.
fn read_until(
    out: &mut BufReader<std::process::ChildStdout>,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).expect("read stdout");
        assert!(n > 0, "stdout ended before the awaited line: {seen:?}");
        let v: Value = serde_json::from_str(&line).expect("a JSON line");
        let done = pred(&v);
        seen.push(v);
        if done {
            return seen;
        }
    }
}

/// `ringmirror mirror --json ARGS`, Ctrl-C once a line satisfies `at`:
/// the lines from then to the `end` event, and how it exited.
fn interrupted(args: &[&str], at: impl Fn(&Value) -> bool, end: &str) -> (Vec<Value>, Output) {
    let (child, mut out) = spawn_json(args);
    read_until(&mut out, at);
    interrupt(&child);
    let rest = read_until(&mut out, |v| v["event"] == end);
    drop(out);
    (rest, wait(child))
}

fn interrupt(child: &Child) {
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success());
}

fn wait(child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut child = child;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ringmirror mirror did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn mirrors_two_images_creating_the_target_and_over_an_old_one() {
    let d = ScratchDir::new("mcli-complete");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    source(&src, 9, 1);
    // The target does not exist: it is created with the source's size.
    let out = mirror(&[
        "--json",
        "--complete-when-ready",
        "--source",
        s(&src),
        "--target",
        s(&dst),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mirror failed: {err}");
    assert_eq!(err, "", "--json prints nothing on stderr");
    let lines = json_lines(&out.stdout);
    let ev = events(&lines);
    let blocks: Vec<_> = ev.iter().filter(|e| e.starts_with("BLOCK_JOB_")).collect();
    assert_eq!(blocks, ["BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"], "{ev:?}");
    let done = lines
        .iter()
        .find(|v| v["event"] == "BLOCK_JOB_COMPLETED")
        .unwrap();
    assert_eq!(done["data"]["len"], 9 << 20);
    assert_eq!(done["data"]["offset"], 9 << 20);
    assert_eq!(done["data"]["device"], "mirror0");
    assert_files_equal(&src, &dst);
    // Over an existing target of the right size, with other data: the
    // summary line says what happened.
    write_file(&dst, &random_bytes(2, 9 << 20));
    let out = mirror(&[
        "--quiet",
        "--complete-when-ready",
        "--job-id",
        "j1",
        "--source",
        s(&src),
        "--target",
        s(&dst),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mirror failed: {err}");
    assert!(
        err.starts_with(
            "ringmirror mirror: completed: the disk now uses the target; 9.00 MiB copied in"
        ) && err.contains("READY after"),
        "summary: {err}"
    );
    assert_files_equal(&src, &dst);
}

#[test]
fn ctrl_c_in_ready_stops_with_a_consistent_copy() {
    let d = ScratchDir::new("mcli-ready");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    source(&src, 8, 3);
    let (rest, o) = interrupted(
        &["--source", s(&src), "--target", s(&dst)],
        |v| v["event"] == "BLOCK_JOB_READY",
        "BLOCK_JOB_COMPLETED",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "soft cancel in READY is a success: {err}"
    );
    assert!(err.contains("soft cancel requested"), "{err}");
    assert!(
        !events(&rest).iter().any(|e| e == "BLOCK_JOB_CANCELLED"),
        "{rest:?}"
    );
    assert_files_equal(&src, &dst);
}

#[test]
fn ctrl_c_before_ready_cancels() {
    let d = ScratchDir::new("mcli-cancel");
    let (src, dst) = (d.join("src.img"), d.join("dst.img"));
    source(&src, 32, 4);
    // 1 MiB/s: READY is 30 s away when the interrupt comes.
    let (rest, o) = interrupted(
        &["--speed", "1M", "--source", s(&src), "--target", s(&dst)],
        |v| v["event"] == "progress" && v["phase"] == "running" && v["done"].as_u64() > Some(0),
        "BLOCK_JOB_CANCELLED",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "a cancelled mirror fails: {err}");
    assert!(
        err.contains("soft cancel requested") && err.contains("the job was cancelled"),
        "{err}"
    );
    assert!(
        !events(&rest).iter().any(|e| e == "BLOCK_JOB_READY"),
        "{rest:?}"
    );
}

#[test]
fn errors_are_one_clear_line() {
    let d = ScratchDir::new("mcli-errors");
    let (src, dst, small) = (d.join("src.img"), d.join("dst.img"), d.join("small.img"));
    source(&src, 2, 5);
    write_file(&small, &random_bytes(6, 1 << 20));
    let missing = d.join("missing.img");
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["--source", s(&missing), "--target", s(&dst)],
            1,
            "ringmirror mirror: cannot open source: ",
        ),
        (
            &["--source", s(&src), "--target", s(&small)],
            1,
            "ringmirror mirror: Source and target image have different sizes",
        ),
        (
            &["--source", s(&src), "--target", s(&src)],
            1,
            "ringmirror mirror: Can't mirror node into itself",
        ),
        (
            &["--target", s(&dst)],
            2,
            "ringmirror mirror: give --qmp SOCKET --device NODE, or --source PATH",
        ),
        (
            &["--qmp", s(&missing), "--target", "tgt"],
            2,
            "ringmirror mirror: --qmp needs --device (the source node)",
        ),
        (
            &["--qmp", s(&missing), "--device", "src", "--target", "tgt"],
            1,
            "ringmirror mirror: ",
        ),
    ];
    for (args, code, msg) in cases {
        let out = mirror(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        assert!(err.starts_with(msg), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    }
    // The small image was left alone.
    assert_eq!(std::fs::read(&small).unwrap(), random_bytes(6, 1 << 20));
    // The guest share is for a daemon's guest: two images have none.
    let out = mirror(&[
        "--source",
        s(&src),
        "--target",
        s(&dst),
        "--guest-share",
        "50",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--guest-share needs --qmp"), "{err}");
    let out = mirror(&["--source", s(&src), "--target", s(&dst), "--device", "d"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--device is for --qmp"), "{err}");
    let out = mirror(&["--target", s(&dst), "--guest-share", "50"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap's own check without --source"
    );
    let out = mirror(&[
        "--qmp",
        "x",
        "--device",
        "d",
        "--target",
        "t",
        "--guest-share",
        "101",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("101 is not in 0..=100"));
}
