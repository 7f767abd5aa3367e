//! Side by side with the real qemu-storage-daemon: the same bytes go to both, and every reply
//! line (error class, description, id, even the formatting) must be identical.
//!
//! qemu-storage-daemon comes from the Debian package `qemu-utils`; this test fails (it does
//! not skip) when the binary is missing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{start, temp_dir};

const QSD: &str = "/usr/bin/qemu-storage-daemon";

struct Qsd {
    child: Child,
    socket: PathBuf,
}

impl Qsd {
    fn start() -> Qsd {
        let bin = std::env::var("QEMU_STORAGE_DAEMON").unwrap_or_else(|_| QSD.to_owned());
        assert!(
            Path::new(&bin).exists(),
            "{bin} not found: this test compares our monitor with the real one. \
             Install it with `apt-get install qemu-utils` (Debian's package for \
             qemu-storage-daemon), or point QEMU_STORAGE_DAEMON at the binary."
        );
        let socket = temp_dir("qsd").join("qsd.sock");
        let child = Command::new(&bin)
            .arg("--chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=m",
                socket.display()
            ))
            .args(["--monitor", "chardev=m"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "qemu-storage-daemon did not create {}",
                socket.display()
            );
            thread::sleep(Duration::from_millis(20));
        }
        // That probe connection used up qsd's single client slot until it noticed the close.
        thread::sleep(Duration::from_millis(100));
        Qsd { child, socket }
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends each case, then `\xff` (which puts QEMU's parser in a known state whatever the case
/// left) and a sentinel command, and returns the lines each case produced (the sentinel's
/// reply included).
fn run(socket: &Path, setup: &[&[u8]], cases: &[Vec<u8>]) -> Vec<Vec<String>> {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    let mut read_line = |reader: &mut BufReader<UnixStream>| -> String {
        line.clear();
        let n = reader.read_line(&mut line).expect("read reply");
        assert!(n > 0, "connection closed");
        line.clone()
    };
    read_line(&mut reader); // greeting
    for s in setup {
        stream.write_all(s).unwrap();
        read_line(&mut reader);
    }
    let mut all = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let sentinel = format!("sentinel-{i}");
        let writer_case = case.clone();
        let mut w = stream.try_clone().unwrap();
        let sentinel_msg = format!(r#"{{"execute": "no-such-sentinel", "id": "{sentinel}"}}"#);
        // Write from a thread: a big case must not deadlock against unread replies.
        let t = thread::spawn(move || {
            w.write_all(&writer_case).unwrap();
            w.write_all(b"\xff").unwrap();
            w.write_all(sentinel_msg.as_bytes()).unwrap();
        });
        let mut lines = Vec::new();
        loop {
            let l = read_line(&mut reader);
            let done = l.contains(&format!("\"{sentinel}\""));
            lines.push(l);
            if done {
                break;
            }
        }
        t.join().unwrap();
        all.push(lines);
    }
    all
}

fn compare(setup: &[&[u8]], cases: &[Vec<u8>]) {
    let qsd = Qsd::start();
    let (_monitor, ours) = start("cmp");
    let theirs = run(&qsd.socket, setup, cases);
    let mine = run(&ours, setup, cases);
    let mut mismatches = Vec::new();
    for ((case, q), m) in cases.iter().zip(&theirs).zip(&mine) {
        if q != m {
            mismatches.push(format!(
                "case {:?}\n  qemu: {:?}\n  ours: {:?}",
                String::from_utf8_lossy(&case[..case.len().min(200)]),
                q,
                m
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

fn cases(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|s| s.as_bytes().to_vec()).collect()
}

const NEGOTIATE: &[u8] = br#"{"execute": "qmp_capabilities"}"#;

#[test]
fn json_errors_match_qemu() {
    let mut list: Vec<Vec<u8>> = cases(&[
        "", "   \n\t", r#"{"a":"}{]["}"#, "{}{}", "1", "1 ", "\"s\"", "[1]true", "[1]true ", "{{",
        "[-0, 9223372036854775807, 9223372036854775808, 18446744073709551616, -9223372036854775809]",
        "[0e5]", "[01]", "[1.]", "[-x]", "}", "]", ":", ",", r#"{"a" 1}"#, r#"{"a": }"#, r#"{"a": 1,}"#,
        r#"{"a": 1 "b": 2}"#, "{1: 2}", r#"{"a": 1, "a": 2}"#, "[1 2]", "[nul]", "[truex]", r#"{"a": [}]"#,
        r#"{"a": 1]"#, "[}", "[}]", r#"["\x"]"#, r#"["\uD800"]"#, r#"["\uD800\u0041"]"#, r#"["\uDC00"]"#,
        r#"["\uFFFF"]"#, r#"["\uFDD0"]"#, r#"["\u12"]"#, r#"["\u12G4"]"#, "@{\"a\": 1}", "{\"a\": @}{\"b\": 2}",
        "{\"a\": \"x\ny\"}", "%d", "'single'", r#"{'a': "dq'", "sq": '\'"'}"#, "nul", "true", "[[[[]]]", "{\"a\":{\"b\":",
    ]);
    list.extend([
        b"\xff\xfe{}".to_vec(),
        b"{\"a\": \"\xff\"}".to_vec(),
        b"\x00{}".to_vec(),
        b"\x01".to_vec(),
        b"[\"\xC3\"]".to_vec(),
        b"[\"\xC0\x80\"]".to_vec(),
        b"[\"\xC1\x81\"]".to_vec(),
        b"[\"\xED\xA0\x80\"]".to_vec(),
        b"[\"\xF4\x90\x80\x80\"]".to_vec(),
        b"\"\xE9\"".to_vec(),
        b"{\"execute\": \"\xe9t\xe9\"}".to_vec(),
    ]);
    compare(&[NEGOTIATE], &list);
}

#[test]
fn request_errors_and_ids_match_qemu() {
    let list = cases(&[
        "[1]",
        "\"s\"",
        "null",
        r#"{"foo": 1}"#,
        r#"{"id": 1}"#,
        r#"{"execute": 1}"#,
        r#"{"execute": null, "id": "x"}"#,
        r#"{"execute": "query-version", "arguments": []}"#,
        r#"{"execute": "query-version", "arguments": null}"#,
        r#"{"exec-oob": "query-version"}"#,
        r#"{"execute": 1, "arguments": 1, "foo": 2}"#,
        r#"{"execute": "query-version", "foo": 1, "bar": 2, "id": [1, {"a": null}]}"#,
        r#"{"execute": "no-such", "id": "__qmp#00001"}"#,
        r#"{"execute": "no-such", "id": 18446744073709551615}"#,
        r#"{"execute": "no-such", "id": -9223372036854775808}"#,
        r#"{"execute": "no-such", "id": 1.5}"#,
        r#"{"execute": "no-such", "id": "\u00e9\u0001\ud83d\ude00\t\"/"}"#,
        r#"{"execute": "no-such", "id": {"b": [true, false, null], "a": {}}}"#,
        r#"{"execute": "qmp_capabilities", "id": 2}"#,
        r#"{"execute": "qmp_capabilities", "arguments": {"x": 1}}"#,
        r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}}"#,
        r#"{"execute": "query-version", "arguments": {"x": 1}}"#,
        r#"{"execute": "query-block-jobs", "arguments": {"a": 1, "b": 2, "c": 3}}"#,
        r#"{"execute": "query-block-jobs", "arguments": {"zz": 1, "yy": 2, "xx": 3, "ww": 4, "vv": 5, "uu": 6, "tt": 7, "ss": 8, "rr": 9, "qq": 10, "pp": 11, "device": 12}}"#,
        r#"{"execute": "block-job-set-speed", "arguments": {"speed": 1}}"#,
        r#"{"execute": "block-job-set-speed", "arguments": {"device": "x", "speed": "a"}}"#,
        r#"{"execute": "block-job-set-speed", "arguments": {"device": "x", "speed": 1.0}}"#,
        r#"{"execute": "block-job-set-speed", "arguments": {"device": "x", "speed": 18446744073709551615}}"#,
        r#"{"execute": "block-job-set-speed", "arguments": {"device": "x", "speed": null}}"#,
        r#"{"execute": "block-job-set-speed", "arguments": {"device": 5, "speed": 1}}"#,
        r#"{"execute": "block-job-set-speed", "arguments": {"device": "x", "speed": 1, "foo": 2}}"#,
        r#"{"execute": "block-job-set-speed", "arguments": {"device": "x", "speed": 1, "foo": 2, "bar": 3, "baz": 4}}"#,
        r#"{"execute": "block-job-set-speed", "arguments": {"zz": 1, "device": "x"}}"#,
        r#"{"execute": "block-job-set-speed", "arguments": {"device": "x", "speed": -1}, "id": "j"}"#,
        r#"{"execute": "block-job-cancel", "arguments": {"device": "x", "force": "yes"}}"#,
        r#"{"execute": "block-set-write-threshold", "arguments": {"node-name": "x", "write-threshold": "1"}}"#,
        r#"{"execute": "block-set-write-threshold", "arguments": {"node-name": "x", "write-threshold": 1.0}}"#,
        r#"{"execute": "block-set-write-threshold", "arguments": {"node-name": "x", "write-threshold": 18446744073709551616}}"#,
        r#"{"execute": "drive-mirror", "arguments": {"device": "x", "target": "/t", "sync": "bogus"}}"#,
        r#"{"execute": "drive-mirror", "arguments": {"device": "x", "target": "/t", "sync": 5}}"#,
        r#"{"execute": "drive-mirror", "arguments": {"device": "x", "target": "/t"}}"#,
        r#"{"execute": "drive-mirror", "arguments": {"device": "x", "target": "/t", "sync": "full", "granularity": -1}}"#,
        r#"{"execute": "drive-mirror", "arguments": {"device": "x", "target": "/t", "sync": "full", "granularity": 4294967296}}"#,
        r#"{"execute": "drive-mirror", "arguments": {"device": "x", "target": "/t", "sync": "full", "on-source-error": "bogus"}}"#,
        r#"{"execute": "drive-mirror", "arguments": {"device": "x", "target": "/t", "sync": "full", "copy-mode": "x", "speed": "y"}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"node-name": "a"}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "bogus", "node-name": "a"}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "a", "filename": "/x", "cache": {"direct": "x"}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "a", "filename": "/x", "cache": 1}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "a", "filename": "/x", "cache": {"direct": true, "zz": 1}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "a", "filename": "/x", "aio": "bogus"}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "a"}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "a", "file": 5}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "a", "file": {"driver": "file", "filename": 5}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "a", "file": {"driver": "raw", "file": 5}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "a", "file": {"driver": "file", "filename": "x", "bogus": 5}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "a", "file": {"driver": "bogus"}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "nbd", "node-name": "a", "server": {"type": "unix", "path": 1}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "nbd", "node-name": "a", "server": {"type": "bogus", "path": "x"}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "nbd", "node-name": "a", "server": {"path": "x"}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "nbd", "node-name": "a", "server": {"type": "unix"}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "nbd", "node-name": "a", "server": {"type": "unix", "path": "x"}, "reconnect-delay": -1}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "nbd", "node-name": "a", "server": {"type": "unix", "path": "x"}, "reconnect-delay": 1.5}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "a", "file": {"driver": "nbd", "server": {"type": "unix", "path": "x"}, "reconnect-delay": "a"}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": 1}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": 1}}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {}}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix"}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "inet", "data": {"host": "x", "port": 5}}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": "/x", "zz": 1}}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": "/x"}}, "max-connections": -1}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "inet", "data": {"host": "x", "port": "1", "numeric": 1}}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "inet", "data": {"host": "x", "port": "1", "to": -1}}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "inet", "data": {"host": "x", "port": "1", "keep-alive-count": 1}}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "inet", "data": {"host": "x", "port": "1", "mptcp": 1}}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": "x", "abstract": 1}}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "vsock", "data": {"cid": 1, "port": "1"}}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "fd", "data": {"str": 1}}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": "x"}, "zz": 1}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"data": {"path": "x"}}}}"#,
        r#"{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": 5}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "nbd", "node-name": "a", "server": {"type": "inet", "host": "x", "port": 1}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "nbd", "node-name": "a", "server": {"type": "fd", "str": 1}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "nbd", "node-name": "a", "server": {"type": "unix", "path": "x", "data": 1}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "nbd", "node-name": "a", "server": {"type": "inet", "host": "x", "port": "1", "to": 70000}}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "nbd", "node-name": "a", "server": "x"}}"#,
    ]);
    compare(&[NEGOTIATE], &list);
}

#[test]
fn before_negotiation_and_oob_match_qemu() {
    let before = cases(&[
        r#"{"execute": "query-version", "id": 1}"#,
        r#"{"execute": "no-such"}"#,
        r#"{"execute": "quit"}"#,
        r#"{"exec-oob": "qmp_capabilities"}"#,
        r#"{"execute": "qmp_capabilities", "arguments": {"enable": "oob"}}"#,
        r#"{"execute": "qmp_capabilities", "arguments": {"enable": [1]}}"#,
        r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob", "bogus"]}}"#,
        r#"{"execute": "qmp_capabilities", "arguments": {"x": 1}}"#,
        "{\"a\" 1}",
        "[]",
    ]);
    compare(&[], &before);
    let oob = cases(&[
        r#"{"exec-oob": "query-version", "id": 2}"#,
        r#"{"exec-oob": "qmp_capabilities", "id": 3}"#,
        r#"{"exec-oob": "nope", "id": 4}"#,
        r#"{"exec-oob": "query-version", "execute": "query-version"}"#,
        r#"{"exec-oob": 1}"#,
        r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}"#,
    ]);
    compare(
        &[br#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob", "oob"]}}"#],
        &oob,
    );
}

/// QEMU's monitor reads one byte per main-loop iteration (about 100 KB/s), so the 64 MiB
/// size limit and the 2 Mi token limit are too slow to compare here (the tokens case takes
/// 40 s, the size case many minutes); `raw_socket.rs` checks our replies for those against
/// the sequences qemu-storage-daemon 10.0.2 gave. The nesting limit is cheap to reach.
#[test]
fn too_deep_messages_match_qemu() {
    let deep = format!(
        r#"{{"execute": "x", "arguments": {{"x": {}1{}}}}}"#,
        "[".repeat(1100),
        "]".repeat(1100)
    );
    let deep_mixed = format!("{}{}", "{\"a\":".repeat(1030), "}".repeat(1030));
    let at_limit = format!(
        r#"{{"execute": "x", "arguments": {{"x": {}1{}}}}}"#,
        "[".repeat(1022),
        "]".repeat(1022)
    );
    compare(
        &[NEGOTIATE],
        &[
            deep.into_bytes(),
            deep_mixed.into_bytes(),
            at_limit.into_bytes(),
        ],
    );
}
