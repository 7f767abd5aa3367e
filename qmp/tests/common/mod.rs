//! Shared pieces of the integration tests: a test command layer, a monitor in a temp dir,
//! and a raw socket client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringmirror_qmp::{Args, CallCtx, Handler, Monitor, MonitorBuilder, QmpError, SocketAddress};
use serde_json::{json, Value};

/// A fresh directory with a short path (socket paths must fit 107 bytes).
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rmq-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Test commands, plus the argument decoding of a few real QEMU commands (for comparing
/// error wording with qemu-storage-daemon; they never get past their arguments in those
/// tests).
pub struct TestHandler;

pub const MIRROR_SYNC: &[&str] = &["top", "full", "none", "incremental", "bitmap"];
const ON_ERROR: &[&str] = &["report", "ignore", "enospc", "stop", "auto"];
const COPY_MODE: &[&str] = &["background", "write-blocking"];
const DRIVERS: &[&str] = &["file", "host_device", "raw", "nbd", "null-co", "qcow2"];

impl Handler for TestHandler {
    fn commands(&self) -> Vec<&'static str> {
        vec![
            "echo",
            "emit",
            "sleep",
            "panic",
            "block-job-set-speed",
            "block-job-cancel",
            "block-set-write-threshold",
            "drive-mirror",
            "blockdev-add",
            "nbd-server-start",
            "query-block-jobs",
        ]
    }

    fn call(&self, ctx: &CallCtx, command: &str, mut args: Args) -> Result<Value, QmpError> {
        match command {
            "echo" => Ok(Value::Object(args.into_map())),
            "emit" => {
                let name = args.req_str("name")?;
                let data = args.opt_any("data").unwrap_or(Value::Null);
                let count = args.opt_u64("count")?.unwrap_or(1);
                args.finish()?;
                for _ in 0..count {
                    ctx.emitter().emit(&name, data.clone());
                }
                Ok(Value::Null)
            }
            "sleep" => {
                let ms = args.req_u64("ms")?;
                args.finish()?;
                std::thread::sleep(Duration::from_millis(ms));
                Ok(json!({"slept-ms": ms}))
            }
            "panic" => panic!("test handler asked to panic"),
            "block-job-set-speed" => {
                let device = args.req_str("device")?;
                args.req_i64("speed")?;
                args.finish()?;
                Err(QmpError::block_job_not_found(&device))
            }
            "block-job-cancel" => {
                let device = args.req_str("device")?;
                args.opt_bool("force")?;
                args.finish()?;
                Err(QmpError::block_job_not_found(&device))
            }
            "block-set-write-threshold" => {
                args.req_str("node-name")?;
                args.req_u64("write-threshold")?;
                args.finish()?;
                Err(QmpError::generic("unimplemented in the test handler"))
            }
            "drive-mirror" => {
                // Schema order of DriveMirror.
                args.opt_str("job-id")?;
                args.req_str("device")?;
                args.req_str("target")?;
                args.opt_str("format")?;
                args.opt_str("node-name")?;
                args.opt_str("replaces")?;
                args.req_enum("sync", MIRROR_SYNC)?;
                args.opt_enum("mode", &["existing", "absolute-paths"])?;
                args.opt_i64("speed")?;
                args.opt_u32("granularity")?;
                args.opt_i64("buf-size")?;
                args.opt_enum("on-source-error", ON_ERROR)?;
                args.opt_enum("on-target-error", ON_ERROR)?;
                args.opt_bool("unmap")?;
                args.opt_enum("copy-mode", COPY_MODE)?;
                args.opt_bool("auto-finalize")?;
                args.opt_bool("auto-dismiss")?;
                args.finish()?;
                Err(QmpError::generic("unimplemented in the test handler"))
            }
            "blockdev-add" => {
                blockdev_options(args)?;
                Err(QmpError::generic("unimplemented in the test handler"))
            }
            "nbd-server-start" => {
                SocketAddress::from_legacy(args.req_obj("addr")?)?;
                args.opt_str("tls-creds")?;
                args.opt_str("tls-authz")?;
                args.opt_u32("max-connections")?;
                args.finish()?;
                Err(QmpError::generic("unimplemented in the test handler"))
            }
            "query-block-jobs" => {
                args.finish()?;
                Ok(json!([]))
            }
            _ => Err(QmpError::unknown_command(command)),
        }
    }
}

/// BlockdevOptions for the drivers the tests use (members in schema order).
fn blockdev_options(mut args: Args) -> Result<(), QmpError> {
    let driver = args.req_enum("driver", DRIVERS)?;
    args.opt_str("node-name")?;
    args.opt_str("discard")?;
    if let Some(mut cache) = args.opt_obj("cache")? {
        cache.opt_bool("direct")?;
        cache.opt_bool("no-flush")?;
        cache.finish()?;
    }
    args.opt_bool("read-only")?;
    match driver {
        "file" | "host_device" => {
            args.req_str("filename")?;
            args.opt_str("pr-manager")?;
            args.opt_enum("locking", &["off", "on", "auto"])?;
            args.opt_enum("aio", &["threads", "native", "io_uring"])?;
        }
        "raw" => {
            if let Some(file) = args.opt("file") {
                match file.value() {
                    Value::String(_) => {}
                    Value::Object(_) => blockdev_options(file.obj()?)?,
                    _ => return Err(file.alternate_error("BlockdevRef")),
                }
            } else {
                return Err(QmpError::missing_parameter(&path_of(&args, "file")));
            }
            args.opt_i64("offset")?;
            args.opt_i64("size")?;
        }
        "nbd" => {
            SocketAddress::from_flat(args.req_obj("server")?)?;
            args.opt_str("export")?;
            args.opt_u32("reconnect-delay")?;
        }
        _ => {}
    }
    args.finish()
}

fn path_of(args: &Args, name: &str) -> String {
    if args.path().is_empty() {
        name.to_owned()
    } else {
        format!("{}.{name}", args.path())
    }
}

/// A monitor with the test handler in a fresh directory.
pub fn start(tag: &str) -> (Monitor, PathBuf) {
    start_with(tag, |b| b)
}

/// Like [`start`], with extra builder settings.
pub fn start_with(
    tag: &str,
    configure: impl FnOnce(MonitorBuilder) -> MonitorBuilder,
) -> (Monitor, PathBuf) {
    let path = temp_dir(tag).join("qmp.sock");
    let monitor = configure(Monitor::builder(&path))
        .bind(Arc::new(TestHandler))
        .expect("bind monitor");
    (monitor, path)
}

/// A raw QMP client over a unix socket.
pub struct Client {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects; the greeting is left unread.
    pub fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).expect("connect to the QMP socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("set timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Client { stream, reader }
    }

    /// Connects and reads the greeting.
    pub fn connect_greeted(path: &Path) -> Client {
        let mut c = Client::connect(path);
        let g = c.read_value();
        assert!(g.get("QMP").is_some(), "greeting expected, got {g}");
        c
    }

    /// Connects, reads the greeting, negotiates.
    pub fn negotiated(path: &Path) -> Client {
        let mut c = Client::connect_greeted(path);
        assert_eq!(
            c.cmd(json!({"execute": "qmp_capabilities"})),
            json!({"return": {}})
        );
        c
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to monitor");
    }

    /// One line, without the line end.
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read from monitor");
        assert!(n > 0, "monitor closed the connection");
        assert!(line.ends_with("\r\n"), "line not ended by CRLF: {line:?}");
        line.truncate(line.len() - 2);
        line
    }

    pub fn read_value(&mut self) -> Value {
        let line = self.read_line();
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad JSON from monitor {line:?}: {e}"))
    }

    /// The next message that is not an event.
    pub fn read_reply(&mut self) -> Value {
        loop {
            let v = self.read_value();
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    pub fn cmd(&mut self, msg: Value) -> Value {
        self.send(msg.to_string().as_bytes());
        self.read_reply()
    }

    /// Whether the server closed the connection (reads until EOF, ignoring what comes).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut buf = [0u8; 4096];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// `{"error": {"class": C, "desc": D}}` parts of a reply.
pub fn error_of(reply: &Value) -> (String, String) {
    let e = reply
        .get("error")
        .unwrap_or_else(|| panic!("error reply expected, got {reply}"));
    (
        e["class"].as_str().unwrap_or_default().to_owned(),
        e["desc"].as_str().unwrap_or_default().to_owned(),
    )
}
