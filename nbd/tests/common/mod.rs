//! Shared test helpers: engine devices on scratch files, a server on a
//! unix socket in the scratch dir, and running external tools with a timeout.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ringmirror_engine::{ArenaClass, BlockDevice, Engine, EngineConfig, OpenOptions};
use ringmirror_nbd::{NbdServer, ServerConfig};
use ringmirror_testkit::ScratchDir;

/// One small io_uring engine per test binary.
pub fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        Engine::new(EngineConfig {
            threads: 2,
            queue_depth: 128,
            arenas: vec![ArenaClass {
                chunk_size: 64 << 10,
                count: 64,
            }],
            ..EngineConfig::default()
        })
        .expect("io_uring engine (these tests need io_uring)")
    })
}

/// Open `path` read-write on the io_uring engine (O_DIRECT).
pub fn uring_dev(path: &Path) -> Arc<dyn BlockDevice> {
    engine()
        .open(path, &OpenOptions::read_write())
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// A server with one writable export `name` of `file`, on `dir/nbd.sock`.
pub struct Served {
    pub server: NbdServer,
    pub sock: PathBuf,
    pub file: PathBuf,
    pub name: String,
}

impl Served {
    pub fn new(dir: &ScratchDir, file: &Path, name: &str) -> Served {
        let server = NbdServer::new(ServerConfig::default());
        server
            .add_export(name, uring_dev(file), true, "test export")
            .expect("add export");
        let sock = dir.join("nbd.sock");
        server.listen_unix(&sock).expect("listen");
        Served {
            server,
            sock,
            file: file.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// `nbd+unix:///NAME?socket=PATH`.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///{}?socket={}", self.name, self.sock.display())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.stop();
    }
}

/// Run `cmd`, killing it after `secs`; panics on timeout.
pub fn run(cmd: &mut Command, secs: u64) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{desc} timed out after {secs}s\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `cmd` and require success; returns stdout.
pub fn run_ok(cmd: &mut Command, secs: u64) -> String {
    let desc = format!("{cmd:?}");
    let out = run(cmd, secs);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

/// `qemu-io` on `uri` with the given `-c` commands; asserts no command failed.
pub fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    ringmirror_testkit::require_tool("qemu-io", "apt-get install qemu-utils");
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(uri);
    let out = run_ok(&mut c, 60);
    for bad in ["failed", "error", "Error", "mismatch"] {
        assert!(
            !out.contains(bad),
            "qemu-io {cmds:?} reported '{bad}':\n{out}"
        );
    }
    out
}

/// Apply `f` to the bytes of `path` in memory (the expected image).
pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Wait until a child process accepts connections on the unix socket
/// `path`. (The socket file exists from bind(), before listen(): waiting for
/// the file alone races. The servers used here outlive a client that leaves
/// during the handshake.)
pub fn wait_for_listener(path: &Path, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} is not accepting connections within {secs}s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process killed on drop.
pub struct Daemon(pub std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
