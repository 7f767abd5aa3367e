"""Scratch space, commands and their timing, page cache, statistics, machine info."""

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIO_CONFIGS = REPO / "fio-configs"
GiB = 1 << 30
MiB = 1 << 20
KiB = 1 << 10


def log(*a):
    print(time.strftime("[%H:%M:%S]"), *a, file=sys.stderr, flush=True)


def scratch_dir(min_free_gb=20):
    """The scratch directory on the real disk (RINGMIRROR_BENCH_DIR or
    /var/tmp/ringmirror-bench); refuses tmpfs (no O_DIRECT) and too little space."""
    d = Path(os.environ.get("RINGMIRROR_BENCH_DIR", "/var/tmp/ringmirror-bench"))
    d.mkdir(parents=True, exist_ok=True)
    st = os.statvfs(d)
    free = st.f_bavail * st.f_frsize
    if free < min_free_gb * 1e9:
        sys.exit(f"bench: {d} has {free / 1e9:.1f} GB free, need >= {min_free_gb} GB "
                 f"(set RINGMIRROR_BENCH_DIR to a bigger real disk)")
    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(d)], capture_output=True,
                            text=True).stdout.strip()
    if fstype in ("tmpfs", "ramfs"):
        sys.exit(f"bench: {d} is on {fstype}; O_DIRECT needs a real disk")
    lock_scratch(d)
    return d


_LOCK = None


def lock_scratch(d, wait_s=7200):
    """Take the scratch dir's exclusive lock for the whole process: two
    harness instances sharing the images and socket paths ruin each other's
    figures and verification. Waits (with a message) while another holds it."""
    global _LOCK
    import fcntl
    if _LOCK is not None:
        return
    f = open(Path(d) / ".bench.lock", "a+")
    t0 = time.monotonic()
    told = False
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not told:
                f.seek(0)
                log(f"another benchmark holds {d}/.bench.lock ({f.read().strip()}); waiting "
                    f"(or set RINGMIRROR_BENCH_DIR to another directory)")
                told = True
            if time.monotonic() - t0 > wait_s:
                sys.exit(f"bench: {d} still locked after {wait_s} s")
            time.sleep(5)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}: {' '.join(sys.argv)}\n")
    f.flush()
    _LOCK = f


def run(cmd, check=True, **kw):
    """Run a command (list or shell string); returns CompletedProcess."""
    shell = isinstance(cmd, str)
    p = subprocess.run(cmd, shell=shell, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"command failed ({p.returncode}): {cmd if shell else shlex.join(cmd)}\n"
                           f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")
    return p


def timed(cmd, check=True, **kw):
    """(seconds, CompletedProcess) of a command, wall clock."""
    t0 = time.monotonic()
    p = run(cmd, check=check, **kw)
    return time.monotonic() - t0, p


def drop_caches():
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)


def rm_f(*paths):
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def make_sparse(path, size):
    rm_f(path)
    with open(path, "wb") as f:
        f.truncate(size)


def allocated_bytes(path):
    return os.stat(path).st_blocks * 512


def loadavg():
    with open("/proc/loadavg") as f:
        return tuple(float(x) for x in f.read().split()[:3])


def wait_quiet(max_wait=900, what=("rustc", "cargo-fuzz", "cc1")):
    """Wait until no compile (rustc etc.) runs on the shared machine; returns seconds waited."""
    t0 = time.monotonic()
    warned = False
    while time.monotonic() - t0 < max_wait:
        busy = [w for w in what if subprocess.run(["pgrep", "-x", w], capture_output=True).returncode == 0]
        if not busy:
            return time.monotonic() - t0
        if not warned:
            log(f"waiting for {','.join(busy)} to finish before timing (shared machine)")
            warned = True
        time.sleep(5)
    log("compiles still running after", max_wait, "s; timing anyway (noted in results)")
    return time.monotonic() - t0


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=2, unit=""):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    return f"{x:.{nd}f}{unit}"


def machine_info():
    def out(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except Exception:
            return "?"
    d = os.environ.get("RINGMIRROR_BENCH_DIR", "/var/tmp/ringmirror-bench")
    return {
        "nproc": out("nproc"),
        "cpu": out("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
        "ram": out("free -h | awk '/Mem:/{print $2}'"),
        "disk": out(f"df -h --output=source,fstype,size,avail {shlex.quote(d)} | tail -1"),
        "disk_model": out("lsblk -dno NAME,SIZE,ROTA,TYPE | grep disk | head -3 | tr '\\n' ';'"),
        "kernel": out("uname -r"),
        "fio": out("fio --version"),
        "qemu": out("qemu-storage-daemon --version | head -1"),
        "nbdcopy": out("nbdcopy --version | head -1"),
        "ringmirror": os.environ.get("RINGMIRROR_BUILD_DESC")
        or out(f"git -C {REPO} describe --always --dirty"),
        "ringmirror_bin": out(f"sha256sum {shlex.quote(ringmirror_bin())} | cut -c1-12"),
        "loadavg": " ".join(str(x) for x in loadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def save_json(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=str)


def ringmirror_bin():
    """The binary under test: RINGMIRROR_BIN, or target/release/ringmirror copied
    into the scratch dir so a concurrent rebuild cannot swap it mid-run."""
    b = os.environ.get("RINGMIRROR_BIN")
    if b:
        return b
    src = REPO / "target" / "release" / "ringmirror"
    if not src.exists():
        sys.exit("bench: target/release/ringmirror missing: run `cargo build --release`")
    dst = scratch_dir(0) / "ringmirror.bin"
    if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
        shutil.copy2(src, dst)
    os.environ["RINGMIRROR_BIN"] = str(dst)
    return str(dst)
