//! `ringmirror serve` end to end, driven by clients nobody here wrote: the
//! Python `qemu.qmp` client on the monitor; qemu-io, qemu-img, nbdinfo and
//! fio's nbd engine on the NBD export; qemu-nbd as an NBD mirror target; and
//! qemu-storage-daemon itself for the side-by-side scenarios.
//!
//! Each `#[test]` runs one scenario of `tests/daemon/run.py` (see that
//! directory) against the binary Cargo just built, in its own scratch
//! directory on the real disk, so the scenarios run in parallel and report
//! separately. A missing tool fails the test with the command that installs
//! it (`scripts/install-deps.sh` installs everything).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringmirror_testkit::{require_tool, ScratchDir};

const RUN_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/daemon/run.py");
/// Only against hangs: run.py stops a scenario itself after 120 s.
const HARD_LIMIT: Duration = Duration::from_secs(180);

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Every tool the scenarios use, or a loud failure naming the package.
fn require_environment() {
    let py = python();
    require_tool(&py, "apt-get install -y python3");
    let probe = Command::new(&py)
        .args(["-c", "import qemu.qmp"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {py}: {e}"));
    assert!(
        probe.status.success(),
        "the Python QMP client is missing ({py} -c 'import qemu.qmp' failed: {}): \
         install it with `python3 -m pip install qemu.qmp` (scripts/install-deps.sh does)",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    for (tool, package) in [
        ("qemu-io", "qemu-utils"),
        ("qemu-img", "qemu-utils"),
        ("qemu-nbd", "qemu-utils"),
        ("qemu-storage-daemon", "qemu-utils"),
        ("nbdinfo", "libnbd-bin"),
        ("fio", "fio"),
    ] {
        require_tool(
            tool,
            &format!("apt-get install -y {package} (scripts/install-deps.sh)"),
        );
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Run one scenario; fail with its whole output unless it exits 0.
fn scenario(name: &str) {
    require_environment();
    let scratch = ScratchDir::new(&format!("daemon-{name}"));
    let started = Instant::now();
    let mut child = Command::new(python())
        .arg(RUN_PY)
        .arg(name)
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_ringmirror"))
        .arg("--scratch")
        .arg(scratch.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3 tests/daemon/run.py");
    let out = read_all(child.stdout.take().unwrap());
    let err = read_all(child.stderr.take().unwrap());
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for run.py") {
            break Some(s);
        }
        if started.elapsed() > HARD_LIMIT {
            // SIGTERM first: run.py then kills the daemons it started.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let grace = Instant::now();
            while child.try_wait().ok().flatten().is_none() && grace.elapsed().as_secs() < 5 {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let report = format!("--- stdout ---\n{out}\n--- stderr ---\n{err}");
    match status {
        None => panic!("scenario {name} hung for {HARD_LIMIT:?} and was killed\n{report}"),
        Some(s) => assert!(s.success(), "scenario {name} failed ({s})\n{report}"),
    }
    assert!(
        out.contains(&format!("PASS {name}")),
        "scenario {name}: no PASS line\n{report}"
    );
    eprintln!("{}", out.trim_end());
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(#[test]
        fn $name() {
            scenario(stringify!($name));
        })*

        /// Every scenario run.py knows has a test here, and the other way round.
        #[test]
        fn every_scenario_has_a_test() {
            require_environment();
            let out = Command::new(python())
                .args([RUN_PY, "--list"])
                .output()
                .expect("run.py --list");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let mut listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            let mut here: Vec<String> = [$(stringify!($name)),*].iter().map(|s| s.to_string()).collect();
            listed.sort();
            here.sort();
            assert_eq!(listed, here, "tests/daemon.rs and tests/daemon/run.py disagree");
            assert!(Path::new(RUN_PY).exists());
        }
    };
}

scenarios! {
    // sc_jobs.py: the mirror job through the daemon
    complete,
    cancel_before_ready,
    force_cancel_ready,
    soft_cancel_ready,
    pause_resume,
    complete_twice_in_standby,
    auto_finalize_false,
    sync_none,
    write_blocking,
    drive_mirror,
    nonblank_target,
    quit_during_job,
    guest_share,
    mirror_cli,
    // sc_errors.py: refusals, hostile monitor input, several monitor clients
    wrong_verbs,
    bad_input,
    multi_monitor,
    full_target,
    // sc_nbd.py: real NBD software on both sides of the daemon
    nbd_target,
    nbd_tools,
    fio_during_mirror,
    nbd_client_vanishes,
    // sc_qsd.py: the same QMP script against qemu-storage-daemon
    compare_qsd_complete,
    compare_qsd_soft_cancel,
    compare_qsd_auto_finalize,
    compare_qsd_size_mismatch,
    compare_qsd_quit,
    compare_qsd_cancel_pending,
}
