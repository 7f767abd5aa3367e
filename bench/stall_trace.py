#!/usr/bin/env python3
"""Where a guest stall through the export is, traced with perf (no job).

    RINGMIRROR_BIN=target/release/ringmirror python3 bench/stall_trace.py [--kind ringmirror|qsd] [--secs 15]

Runs `fio-configs/randwrite-4k-qd16.fio` through the daemon's NBD export on
the benchmark's dense image and records, system-wide for `--secs` seconds
(`perf record -k CLOCK_MONOTONIC`, root): `block:block_rq_issue/complete`,
`io_uring:io_uring_submit_req/complete`, and `sched:sched_switch` filtered
on `prev_state == 2` (a thread going to uninterruptible sleep) with kernel
stacks. Then for each of fio's longest stalls (`lib/fio.py` `stalls`)
inside the recording it prints: the daemon's io_uring writes (its own pid,
each submission paired with its completion by request) and the requests in
the image's device (issue paired with completion by sector) open at the
stall's middle and completed inside it, and any thread switched out in
uninterruptible sleep from 30 ms before it to its end, with its stack (a
sleep that began earlier is missed). perf writes to /dev/shm, not to the
traced disk.

perf does not record every block event under this load (about half here), so
the device counts are a lower bound; the daemon's io_uring pairs are exact.

Reading it: the daemon's writes open in io_uring and in the device with
none completing means the requests sat below the server (kernel, virtual
disk); the daemon's writes completing inside a stall that fio did not see
mean the way back (the server's replies, the socket, the client's reaping)
was the slow part. Needs perf; a diagnostic,
not a benchmark: the stalls come and go with the disk's hour.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lib.common import lock_scratch, rm_f, scratch_dir  # noqa: E402
from lib.daemons import Daemon  # noqa: E402
from lib.fio import FioRun, stalls  # noqa: E402
from lib.images import ensure_dense  # noqa: E402

TIME = re.compile(r"\s(\d+\.\d{6,}):")
PERF_DIR = Path("/dev/shm")  # not the traced disk: perf's own writes would join the stalls


def intervals(pairs):
    """[(start, end)] -> (sorted starts, sorted ends) for counting what is open at t."""
    return (np.sort(np.array([x for x, _ in pairs], dtype=float)),
            np.sort(np.array([y for _, y in pairs], dtype=float)))


def open_at(iv, t):
    return int(np.searchsorted(iv[0], t) - np.searchsorted(iv[1], t))


def ending_in(iv, t0, t1):
    return int(np.searchsorted(iv[1], t1) - np.searchsorted(iv[1], t0))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("ringmirror", "qsd"), default="ringmirror")
    ap.add_argument("--secs", type=float, default=15)
    ap.add_argument("--top", type=int, default=5, help="stalls to show (default 5)")
    a = ap.parse_args()
    d = scratch_dir()
    lock_scratch(d)
    src = ensure_dense(d / "dense.img")
    dev = os.stat(src).st_dev
    devname = f"{os.major(dev)},{os.minor(dev)}"
    ev_data, d_data = PERF_DIR / "stall-trace-events.data", PERF_DIR / "stall-trace-dstate.data"
    dm = Daemon(a.kind, d / "run", "trace")
    fio = pd = None
    try:
        dm.setup(src)
        fio = FioRun("randwrite-4k-qd16", dm.uri, d / "run", "trace", runtime=a.secs + 10)
        time.sleep(1)
        # fio logs in epoch time, perf in CLOCK_MONOTONIC
        off = time.time() - time.monotonic()
        pd = subprocess.Popen(["perf", "record", "-k", "CLOCK_MONOTONIC", "-g", "-a",
                               "-e", "sched:sched_switch", "--filter", "prev_state == 2",
                               "-o", str(d_data), "--", "sleep", f"{a.secs:g}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        subprocess.run(["perf", "record", "-k", "CLOCK_MONOTONIC", "-a",
                        "-e", "block:block_rq_issue", "-e", "block:block_rq_complete",
                        "-e", "io_uring:io_uring_submit_req", "-e", "io_uring:io_uring_complete",
                        "-o", str(ev_data), "--", "sleep", f"{a.secs:g}"],
                       check=True, capture_output=True)
        if pd.wait() != 0:
            sys.exit(f"stall_trace: perf (uninterruptible sleeps) failed: {pd.stderr.read().decode()[-300:]}")
        fio.stop()
    finally:
        for proc in (pd, fio and fio.proc):
            if proc is not None and proc.poll() is None:
                proc.kill()
        dm.stop()
    try:
        out = subprocess.run(["perf", "script", "-i", str(ev_data), "-F", "pid,time,event,trace"],
                             capture_output=True, text=True, check=True).stdout
        dscript = subprocess.run(["perf", "script", "-i", str(d_data), "-F", "comm,tid,time,ip,sym"],
                                 capture_output=True, text=True, check=True).stdout
    finally:
        for f in (ev_data, d_data):
            rm_f(f)
            rm_f(f"{f}.old")
    issued, dev_reqs, subs, writes = {}, [], {}, []
    t_first = t_last = None
    for line in out.splitlines():
        m = TIME.search(line)
        if not m:
            continue
        t = float(m.group(1))
        t_first = t if t_first is None else t_first
        t_last = t
        if "block:block_rq_" in line and f" {devname} " in line:
            sm = re.search(r"\(\) (\d+) \+", line)
            if not sm:
                continue
            if "block_rq_issue" in line:
                issued[sm.group(1)] = t
            elif sm.group(1) in issued:
                dev_reqs.append((issued.pop(sm.group(1)), t))
        elif "io_uring" in line and int(line.split()[0]) == dm.pid:
            req = re.search(r"req (0x[0-9a-f]+)", line)
            if not req:
                continue
            if "io_uring_submit_req" in line:
                if "opcode WRITE" in line:
                    subs[req.group(1)] = t
            elif req.group(1) in subs:
                writes.append((subs.pop(req.group(1)), t))
    dev_iv, wr_iv = intervals(dev_reqs), intervals(writes)
    dblocks = dscript.split("\n\n")
    L = fio.latlog()
    if len(L) < 2 or t_first is None:
        sys.exit("stall_trace: fio logged no I/O or perf recorded nothing")
    # only stalls inside the recording (fio started before it and ends after)
    t, st = stalls(L, t_first + off, t_last + off)
    print(f"{a.kind} (pid {dm.pid}): {len(L)} guest I/Os; in the recording {len(writes)} writes "
          f"through its io_uring rings, {len(dev_reqs)} requests to device {devname}")
    for i in np.argsort(st)[-a.top:][::-1]:
        te, s = t[i] - off, st[i]
        mid = te - s / 2
        print(f"stall {s * 1e3:.0f} ms ending {te:.3f}: at its middle {open_at(wr_iv, mid)} of the "
              f"daemon's writes in io_uring, {open_at(dev_iv, mid)} requests in the device; inside "
              f"it {ending_in(wr_iv, te - s, te - 0.0015)} of the daemon's writes completed, "
              f"{ending_in(dev_iv, te - s, te - 0.0015)} device requests")
        seen = Counter()
        for blk in dblocks:
            m = TIME.search(blk)
            if m and te - s - 0.03 <= float(m.group(1)) <= te:
                lines = blk.strip().splitlines()
                stack = " < ".join(ln.split()[-1] for ln in lines[1:10])
                seen[(lines[0].split()[0], stack)] += 1
        for (comm, stack), n in seen.most_common(4):
            print(f"    uninterruptible: {comm} x{n}: {stack}")


if __name__ == "__main__":
    main()
