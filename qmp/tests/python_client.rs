//! The real Python client (`qemu.qmp`, the library QEMU's own tests and tools use) against
//! our monitor. It must be installed: this test fails, rather than skips, when it is not.

mod common;

use std::process::Command;
use std::time::Duration;

use common::start;

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

#[test]
fn qemu_qmp_python_client_drives_the_monitor() {
    let py = python();
    let probe = Command::new(&py)
        .args(["-c", "import qemu.qmp"])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {py}: {e}. Install Python 3 and the client: `pip install qemu.qmp`")
        });
    assert!(
        probe.status.success(),
        "the Python QMP client is missing ({py} -c 'import qemu.qmp' failed: {}). \
         Install it with `pip install qemu.qmp` (set PYTHON to use another interpreter).",
        String::from_utf8_lossy(&probe.stderr).trim()
    );

    let (monitor, path) = start("python");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/qmp_client_check.py"
    );
    let out = Command::new(&py)
        .arg(script)
        .arg(&path)
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "Python client failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stdout.starts_with("OK "), "unexpected output: {stdout}");
    // The script ended with quit: the monitor stopped and removed its socket.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !monitor.is_stopped() {
        assert!(
            std::time::Instant::now() < deadline,
            "monitor did not stop after quit"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!path.exists());
}
