//! The monitor over a raw unix socket: framing, negotiation, ids, errors, events, quit.

mod common;

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{error_of, start, start_with, Client};
use ringmirror_qmp::{Monitor, MonitorError, NoCommands};
use serde_json::{json, Value};

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn greeting_has_qemu_shape_and_bytes() {
    let (_m, path) = start("greet");
    let mut c = Client::connect(&path);
    let line = c.read_line();
    let expected = format!(
        r#"{{"QMP": {{"version": {{"qemu": {{"micro": 2, "minor": 0, "major": 10}}, "package": "ringmirror {}"}}, "capabilities": ["oob"]}}}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(line, expected);
}

#[test]
fn commands_before_negotiation_are_refused() {
    let (_m, path) = start("preneg");
    let mut c = Client::connect_greeted(&path);
    for cmd in ["query-version", "echo", "no-such-command", "quit"] {
        let r = c.cmd(json!({"execute": cmd, "id": cmd}));
        assert_eq!(
            r,
            json!({"id": cmd, "error": {"class": "CommandNotFound",
                "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}})
        );
    }
    // Argument errors of qmp_capabilities itself are not rewritten.
    let r = c.cmd(json!({"execute": "qmp_capabilities", "arguments": {"enable": "oob"}}));
    assert_eq!(
        error_of(&r),
        (
            "GenericError".into(),
            "Invalid parameter type for 'enable', expected: array".into()
        )
    );
    assert_eq!(
        c.cmd(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}})),
        json!({"return": {}})
    );
    let r = c.cmd(json!({"execute": "qmp_capabilities", "id": 7}));
    assert_eq!(
        r,
        json!({"id": 7, "error": {"class": "CommandNotFound",
            "desc": "Capabilities negotiation is already complete, command ignored"}})
    );
    let v = c.cmd(json!({"execute": "query-version"}));
    assert_eq!(
        v["return"]["qemu"],
        json!({"major": 10, "minor": 0, "micro": 2})
    );
}

#[test]
fn ids_of_any_type_are_echoed() {
    let (_m, path) = start("ids");
    let mut c = Client::negotiated(&path);
    for id in [
        json!("__qmp#00001"),
        json!(42),
        json!(-1.5),
        json!({"a": [1, {"b": null}]}),
        json!([1, 2]),
        json!(null),
        json!(true),
    ] {
        let r = c.cmd(json!({"execute": "query-block-jobs", "id": id}));
        assert_eq!(r, json!({"return": [], "id": id}));
        let r = c.cmd(json!({"execute": "no-such", "id": id}));
        assert_eq!(r["id"], id);
        let r = c.cmd(json!({"bogus": 1, "id": id}));
        assert_eq!(r["id"], id, "{r}");
    }
    // Replies to requests without an id have none.
    let r = c.cmd(json!({"execute": "query-block-jobs"}));
    assert_eq!(r, json!({"return": []}));
}

#[test]
fn concatenated_messages_in_one_write() {
    let (_m, path) = start("concat");
    let mut c = Client::connect_greeted(&path);
    c.send(
        br#"{"execute":"qmp_capabilities","id":1}{"execute":"echo","arguments":{"s":"}{\"]["},"id":2}  {"execute":"query-block-jobs","id":3}
{"execute":"no-such","id":4}"#,
    );
    assert_eq!(c.read_value(), json!({"return": {}, "id": 1}));
    assert_eq!(c.read_value(), json!({"return": {"s": "}{\"]["}, "id": 2}));
    assert_eq!(c.read_value(), json!({"return": [], "id": 3}));
    assert_eq!(error_of(&c.read_value()).0, "CommandNotFound");
}

#[test]
fn message_split_into_one_byte_writes() {
    let (_m, path) = start("split");
    let mut c = Client::negotiated(&path);
    let msg = br#"{"execute": "echo", "arguments": {"text": "a\"b\\c\u00e9\ud83d\ude00", "n": [1, -2, 3.5e1]}, "id": "x"}"#;
    for b in msg {
        c.send(&[*b]);
    }
    assert_eq!(
        c.read_value(),
        json!({"return": {"text": "a\"b\\cé😀", "n": [1, -2, 35.0]}, "id": "x"})
    );
}

#[test]
fn malformed_json_then_valid_command() {
    let (_m, path) = start("malformed");
    let mut c = Client::negotiated(&path);
    // Syntax error: reply without id, after the braces balance.
    c.send(br#"{"execute": "echo", "id": 1, "arguments": {"a" 1}}"#);
    assert_eq!(
        c.read_value(),
        json!({"error": {"class": "GenericError", "desc": "JSON parse error, missing : in object pair"}})
    );
    assert_eq!(
        c.cmd(json!({"execute": "query-block-jobs", "id": 2})),
        json!({"return": [], "id": 2})
    );
    // Lexical error: the lexer skips to the next structural character.
    c.send(b"{\"execute\": @oops}");
    assert_eq!(error_of(&c.read_value()).1, "JSON parse error, stray '@'");
    assert_eq!(
        error_of(&c.read_value()).1,
        "JSON parse error, expecting value"
    );
    assert_eq!(
        c.cmd(json!({"execute": "query-block-jobs", "id": 3})),
        json!({"return": [], "id": 3})
    );
    // A client can force a resync with 0xFF even in the middle of a string.
    c.send(b"{\"execute\": \"unterminated\xff");
    assert_eq!(
        error_of(&c.read_value()).1,
        "JSON parse error, stray '\"unterminated\u{FFFD}'"
    );
    assert_eq!(
        c.cmd(json!({"execute": "query-block-jobs", "id": 4})),
        json!({"return": [], "id": 4})
    );
    // Not an object; no execute.
    c.send(b"[1, 2]");
    assert_eq!(
        c.read_value(),
        json!({"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}})
    );
    assert_eq!(
        c.cmd(json!({"id": 5})),
        json!({"id": 5, "error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}})
    );
    assert_eq!(
        error_of(&c.cmd(json!({"execute": 5}))).1,
        "QMP input member 'execute' must be a string"
    );
    assert_eq!(
        error_of(&c.cmd(json!({"execute": "echo", "arguments": [1]}))).1,
        "QMP input member 'arguments' must be an object"
    );
}

#[test]
fn oversized_message_gets_an_error_and_the_connection_keeps_serving() {
    let (m, path) = start("huge");
    let mut c = Client::negotiated(&path);
    let mut writer = c.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut msg = Vec::with_capacity(71 << 20);
        msg.extend_from_slice(br#"{"execute": "echo", "arguments": {"blob": ""#);
        msg.resize(msg.len() + (70 << 20), b'A');
        msg.extend_from_slice(br#""}}"#);
        writer.write_all(&msg).unwrap();
        writer
            .write_all(br#"{"execute": "query-block-jobs", "id": "after"}"#)
            .unwrap();
    });
    let mut errors = Vec::new();
    let reply = loop {
        let v = c.read_value();
        if v.get("id").is_some() {
            break v;
        }
        errors.push(error_of(&v).1);
    };
    sender.join().unwrap();
    assert_eq!(reply, json!({"return": [], "id": "after"}));
    // qemu-storage-daemon 10.0.2's sequence for the same bytes (checked by hand: its monitor
    // reads one byte per main-loop turn, so this takes it almost 8 minutes): the size limit,
    // the tail of the string lexed as garbage, one error per unmatched closing brace.
    assert_eq!(
        errors,
        [
            "JSON token size limit exceeded",
            "JSON parse error, stray 'A'",
            "JSON parse error, expecting value",
            "JSON parse error, expecting value",
        ]
    );
    assert_eq!(m.connection_count(), 1);
}

#[test]
fn too_deep_message_gets_an_error_and_the_connection_keeps_serving() {
    let (_m, path) = start("deep");
    let mut c = Client::negotiated(&path);
    let depth = 1100;
    let msg = format!(
        r#"{{"execute": "echo", "arguments": {{"x": {}1{}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    c.send(msg.as_bytes());
    c.send(br#"{"execute": "query-block-jobs", "id": "after"}"#);
    let first = c.read_value();
    assert_eq!(error_of(&first).1, "JSON nesting depth limit exceeded");
    let reply = loop {
        let v = c.read_value();
        if v.get("id").is_some() {
            break v;
        }
        let desc = error_of(&v).1;
        assert!(
            desc == "JSON parse error, expecting value"
                || desc == "QMP input must be a JSON object",
            "{desc}"
        );
    };
    assert_eq!(reply, json!({"return": [], "id": "after"}));
}

#[test]
fn too_many_tokens_gets_qemus_errors_and_the_connection_keeps_serving() {
    let (_m, path) = start("tokens");
    let mut c = Client::negotiated(&path);
    // 2 Mi + 3 tokens: the last comma is one too many; "1" and "]" are then read afresh.
    let msg = format!("[{}1]", "1,".repeat(1 << 20));
    let mut writer = c.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(msg.as_bytes()).unwrap();
        writer
            .write_all(b"\xff{\"execute\": \"query-block-jobs\", \"id\": \"after\"}")
            .unwrap();
    });
    let mut errors = Vec::new();
    let reply = loop {
        let v = c.read_value();
        if v.get("id").is_some() {
            break v;
        }
        errors.push(error_of(&v).1);
    };
    sender.join().unwrap();
    assert_eq!(reply, json!({"return": [], "id": "after"}));
    // What qemu-storage-daemon 10.0.2 replies to the same bytes.
    assert_eq!(
        errors,
        [
            "JSON token count limit exceeded",
            "QMP input must be a JSON object",
            "JSON parse error, expecting value",
            "JSON parse error, stray '\u{FFFD}'",
        ]
    );
}

#[test]
fn unknown_command_and_argument_errors() {
    let (_m, path) = start("unknown");
    let mut c = Client::negotiated(&path);
    assert_eq!(
        c.cmd(json!({"execute": "blockdev-frobnicate", "id": "u"})),
        json!({"id": "u", "error": {"class": "CommandNotFound",
            "desc": "The command blockdev-frobnicate has not been found"}})
    );
    let r = c.cmd(json!({"execute": "query-version", "arguments": {"x": 1}}));
    assert_eq!(error_of(&r).1, "Parameter 'x' is unexpected");
    let r = c.cmd(json!({"execute": "drive-mirror", "arguments": {"device": "d", "target": "t", "sync": "bogus"}}));
    assert_eq!(
        error_of(&r).1,
        "Parameter 'sync' does not accept value 'bogus'"
    );
    let r =
        c.cmd(json!({"execute": "block-job-set-speed", "arguments": {"device": "j", "speed": 0}}));
    assert_eq!(
        error_of(&r),
        ("DeviceNotActive".into(), "Block job 'j' not found".into())
    );
    // exec-oob is refused unless oob was enabled, and then for our (in-band) commands.
    let r = c.cmd(json!({"exec-oob": "query-block-jobs"}));
    assert_eq!(error_of(&r).1, "QMP input member 'exec-oob' is unexpected");
    let list = c.cmd(json!({"execute": "query-commands"}));
    let names: Vec<&str> = list["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in [
        "qmp_capabilities",
        "query-version",
        "query-commands",
        "quit",
        "echo",
        "blockdev-add",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
}

#[test]
fn oob_commands_after_enabling_oob() {
    let (_m, path) = start("oob");
    let mut c = Client::connect_greeted(&path);
    c.cmd(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}));
    let r = c.cmd(json!({"exec-oob": "query-block-jobs", "id": 1}));
    assert_eq!(
        r,
        json!({"id": 1, "error": {"class": "GenericError", "desc": "The command query-block-jobs does not support OOB"}})
    );
    let r = c.cmd(json!({"exec-oob": "nope", "id": 2}));
    assert_eq!(error_of(&r).0, "CommandNotFound");
    let r = c.cmd(json!({"exec-oob": "echo", "execute": "echo"}));
    assert_eq!(
        error_of(&r).1,
        "QMP input member 'execute' clashes with 'exec-oob'"
    );
}

#[test]
fn events_reach_every_negotiated_connection_with_timestamps() {
    let (m, path) = start("events");
    let mut a = Client::negotiated(&path);
    let mut b = Client::negotiated(&path);
    let mut silent = Client::connect_greeted(&path); // never negotiates: gets no event
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    a.send(
        json!({"execute": "emit", "arguments": {"name": "TEST_EVENT", "data": {"n": 1}}, "id": 1})
            .to_string()
            .as_bytes(),
    );
    // As in QEMU, an event emitted by a command precedes the command's reply.
    let first_on_a = a.read_value();
    assert_eq!(a.read_value(), json!({"return": {}, "id": 1}));
    for (i, c) in [&mut a, &mut b].into_iter().enumerate() {
        let e = if i == 0 {
            first_on_a.clone()
        } else {
            c.read_value()
        };
        assert_eq!(e["event"], "TEST_EVENT");
        assert_eq!(e["data"], json!({"n": 1}));
        let secs = e["timestamp"]["seconds"].as_u64().unwrap();
        let us = e["timestamp"]["microseconds"].as_u64().unwrap();
        assert!(secs >= before && secs <= before + 60, "{e}");
        assert!(us < 1_000_000);
    }
    // From another thread, through the emitter; no data member when data is null.
    let emitter = m.emitter();
    thread::spawn(move || emitter.emit("NO_DATA", Value::Null))
        .join()
        .unwrap();
    for c in [&mut a, &mut b] {
        let e = c.read_value();
        assert_eq!(e["event"], "NO_DATA");
        assert!(e.get("data").is_none(), "{e}");
    }
    // The silent client's next message is the reply to its own command, not an event.
    let r = silent.cmd(json!({"execute": "qmp_capabilities", "id": "s"}));
    assert_eq!(r, json!({"return": {}, "id": "s"}));
    silent.send(br#"{"execute": "query-block-jobs", "id": "t"}"#);
    assert_eq!(silent.read_value(), json!({"return": [], "id": "t"}));
}

#[test]
fn a_client_that_does_not_read_is_dropped_and_never_stalls_the_emitter() {
    let (m, path) = start_with("slow", |b| b.queue_len(16));
    let stuck = Client::negotiated(&path);
    let mut live = Client::negotiated(&path);
    let emitter = m.emitter();
    let payload = json!({"filler": "x".repeat(4096)});
    let t0 = Instant::now();
    // Far more than the socket buffer plus the queue can hold.
    for i in 0..2000 {
        emitter.emit("FLOOD", json!({"i": i, "p": payload}));
        // Keep the live client drained so that it stays below its limit.
        if i % 8 == 7 {
            for _ in 0..8 {
                assert_eq!(live.read_value()["event"], "FLOOD");
            }
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(20), "emitting stalled");
    wait_until(
        "the stuck client to be dropped",
        Duration::from_secs(10),
        || m.connection_count() == 1,
    );
    let r = live.cmd(json!({"execute": "query-block-jobs", "id": 1}));
    assert_eq!(r, json!({"return": [], "id": 1}));
    drop(stuck);
}

#[test]
fn disconnect_mid_command_harms_nothing() {
    let (m, path) = start("midcmd");
    let mut other = Client::negotiated(&path);
    {
        let mut c = Client::negotiated(&path);
        c.send(br#"{"execute": "sleep", "arguments": {"ms": 300}, "id": 1}{"execute": "sleep", "arguments": {"ms": 1}}"#);
        // Dropped here, while the first command runs.
    }
    {
        // And one that leaves in the middle of a message.
        let mut c = Client::negotiated(&path);
        c.send(br#"{"execute": "echo", "argum"#);
    }
    let r = other.cmd(json!({"execute": "sleep", "arguments": {"ms": 1}, "id": 2}));
    assert_eq!(r, json!({"return": {"slept-ms": 1}, "id": 2}));
    wait_until(
        "the departed clients to be reaped",
        Duration::from_secs(10),
        || m.connection_count() == 1,
    );
    let r = other.cmd(json!({"execute": "query-block-jobs", "id": 3}));
    assert_eq!(r, json!({"return": [], "id": 3}));
}

#[test]
fn a_panicking_command_fails_alone() {
    let (_m, path) = start("panic");
    let mut c = Client::negotiated(&path);
    let r = c.cmd(json!({"execute": "panic", "id": 1}));
    assert_eq!(error_of(&r).0, "GenericError");
    assert_eq!(r["id"], 1);
    assert_eq!(
        c.cmd(json!({"execute": "query-block-jobs"})),
        json!({"return": []})
    );
}

#[test]
fn quit_runs_the_hook_before_replying_and_stops() {
    let hook_ran = Arc::new(AtomicBool::new(false));
    let flag = hook_ran.clone();
    let emitter = ringmirror_qmp::Emitter::new();
    let hook_emitter = emitter.clone();
    let (m, path) = start_with("quit", move |b| {
        b.emitter(emitter).on_quit(move || {
            flag.store(true, Ordering::SeqCst);
            hook_emitter.emit("JOB_GONE", json!({"id": "job0"}));
        })
    });
    let mut watcher = Client::negotiated(&path);
    let mut c = Client::negotiated(&path);
    c.send(br#"{"execute": "quit", "id": "q"}{"execute": "query-block-jobs", "id": "late"}"#);
    // The hook's events come before the reply, and no SHUTDOWN (as QSD).
    let e = c.read_value();
    assert_eq!(e["event"], "JOB_GONE", "{e}");
    assert_eq!(c.read_value(), json!({"return": {}, "id": "q"}));
    assert!(
        c.closed_within(Duration::from_secs(10)),
        "connection not closed after quit"
    );
    let e = watcher.read_value();
    assert_eq!(e["event"], "JOB_GONE");
    assert!(watcher.closed_within(Duration::from_secs(10)));
    m.wait();
    assert!(m.is_stopped());
    assert!(hook_ran.load(Ordering::SeqCst));
    assert!(!path.exists(), "socket file left behind");
    assert!(UnixStream::connect(&path).is_err());
}

#[test]
fn socket_is_private_stale_files_are_replaced_and_live_ones_refused() {
    let dir = common::temp_dir("sockfile");
    let path = dir.join("qmp.sock");
    // A stale socket: bound, then its owner went away.
    drop(UnixListener::bind(&path).unwrap());
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
    let m = Monitor::bind(&path, Arc::new(NoCommands)).expect("stale socket replaced");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(matches!(
        Monitor::bind(&path, Arc::new(NoCommands)),
        Err(MonitorError::InUse { .. })
    ));
    m.shutdown();
    assert!(!path.exists());
    std::fs::write(&path, b"precious").unwrap();
    assert!(matches!(
        Monitor::bind(&path, Arc::new(NoCommands)),
        Err(MonitorError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    let long = dir.join("x".repeat(120));
    assert!(matches!(
        Monitor::bind(&long, Arc::new(NoCommands)),
        Err(MonitorError::PathTooLong { .. })
    ));
}

#[test]
fn stop_with_clients_connected_flushes_and_closes_them() {
    // The default 2 s drain could cut a flush short on a loaded machine.
    let (m, path) = start_with("stop", |b| b.drain_timeout(Duration::from_secs(20)));
    let mut a = Client::negotiated(&path);
    let mut b = Client::connect_greeted(&path);
    m.emitter().emit("BYE", Value::Null);
    m.shutdown();
    assert_eq!(a.read_value()["event"], "BYE");
    assert!(a.closed_within(Duration::from_secs(5)));
    assert!(b.closed_within(Duration::from_secs(5)));
    assert!(!path.exists());
}
