#!/usr/bin/env python3
"""Where a guest stall through the export is, traced with perf (no job).

    RINGMIRROR_BIN=target/release/ringmirror python3 bench/stall_trace.py [--kind ringmirror|qsd] [--secs 15]

Runs `fio-configs/randwrite-4k-qd16.fio` through the daemon's NBD export on
the benchmark's dense image and records, system-wide for `--secs` seconds
(`perf record -k CLOCK_MONOTONIC`, root): `block:block_rq_issue/complete`,
`io_uring:io_uring_submit_req/complete`, and `sched:sched_switch` filtered
on `prev_state == 2` (a thread going to uninterruptible sleep) with kernel
stacks. Then for each of fio's longest stalls (`lib/fio.py` `stalls`) it
prints: block-layer and io_uring completions inside the stall, the writes
submitted to io_uring and not yet completed at its middle (approximate: the
counts include every ring's writes), and any thread switched out in
uninterruptible sleep from 30 ms before it to its end, with its stack.

Reading it: writes in the kernel and no completions means the requests sat
below the server (kernel, virtual disk); io_uring completions inside a
stall that fio did not see mean the way back (the server's replies, the
socket, the client's reaping) was the slow part. Needs perf; a diagnostic,
not a benchmark: the stalls come and go with the disk's hour.
"""

import argparse
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lib.common import lock_scratch, scratch_dir  # noqa: E402
from lib.daemons import Daemon  # noqa: E402
from lib.fio import FioRun, stalls  # noqa: E402

TIME = re.compile(r"([\d.]+):")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("ringmirror", "qsd"), default="ringmirror")
    ap.add_argument("--secs", type=float, default=15)
    ap.add_argument("--top", type=int, default=5, help="stalls to show (default 5)")
    a = ap.parse_args()
    d = scratch_dir()
    src = d / "dense.img"
    if not src.exists():
        sys.exit(f"stall_trace: {src} missing; bench/mirror.sh makes it")
    lock_scratch(d)
    ev_data, d_data = d / "run" / "stall-trace-events.data", d / "run" / "stall-trace-dstate.data"
    dm = Daemon(a.kind, d / "run", "trace")
    try:
        dm.setup(src)
        fio = FioRun("randwrite-4k-qd16", dm.uri, d / "run", "trace", runtime=a.secs + 10)
        time.sleep(1)
        # fio logs in epoch time, perf in CLOCK_MONOTONIC
        off = time.time() - time.monotonic()
        pd = subprocess.Popen(["perf", "record", "-k", "CLOCK_MONOTONIC", "-g", "-a",
                               "-e", "sched:sched_switch", "--filter", "prev_state == 2",
                               "-o", str(d_data), "--", "sleep", f"{a.secs:g}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["perf", "record", "-k", "CLOCK_MONOTONIC", "-a",
                        "-e", "block:block_rq_issue", "-e", "block:block_rq_complete",
                        "-e", "io_uring:io_uring_submit_req", "-e", "io_uring:io_uring_complete",
                        "-o", str(ev_data), "--", "sleep", f"{a.secs:g}"],
                       check=True, capture_output=True)
        pd.wait()
        fio.stop()
    finally:
        dm.stop()
    out = subprocess.run(["perf", "script", "-i", str(ev_data), "-F", "time,event,trace"],
                         capture_output=True, text=True, check=True).stdout
    blk_done, sub, comp = [], [], []
    for line in out.splitlines():
        m = TIME.search(line)
        if not m:
            continue
        t = float(m.group(1))
        if "block_rq_complete" in line:
            blk_done.append(t)
        elif "io_uring_submit_req" in line and "opcode WRITE" in line:
            sub.append(t)
        elif "io_uring_complete" in line and "user_data 0xffffffffffffffff" not in line:
            comp.append(t)
    blk_done, sub, comp = (np.sort(np.array(x)) for x in (blk_done, sub, comp))
    dblocks = subprocess.run(["perf", "script", "-i", str(d_data), "-F", "comm,tid,time,ip,sym"],
                             capture_output=True, text=True).stdout.split("\n\n")
    L = fio.latlog()
    t, st = stalls(L, L["t"][0] + 1, L["t"][-1])
    print(f"{a.kind}: {len(L)} guest I/Os; block completions {len(blk_done)}, io_uring write "
          f"submissions {len(sub)}")
    for i in np.argsort(st)[-a.top:][::-1]:
        te, s = t[i] - off, st[i]
        inside = lambda x: int(((x > te - s) & (x < te - 0.0015)).sum())  # noqa: E731
        mid = te - s / 2
        held = int(np.searchsorted(sub, mid) - np.searchsorted(comp, mid))
        print(f"stall {s * 1e3:.0f} ms ending {te:.3f}: block completions in it {inside(blk_done)}, "
              f"io_uring completions {inside(comp)}, writes in the kernel at its middle ~{held}")
        seen = Counter()
        for blk in dblocks:
            m = TIME.search(blk)
            if m and te - s - 0.03 <= float(m.group(1)) <= te:
                lines = blk.strip().splitlines()
                stack = " < ".join(ln.split()[-1] for ln in lines[1:8])
                seen[(lines[0].split()[0], stack)] += 1
        for (comm, stack), n in seen.most_common(4):
            print(f"    uninterruptible: {comm} x{n}: {stack}")


if __name__ == "__main__":
    main()
