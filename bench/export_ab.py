#!/usr/bin/env python3
"""The guest load alone through each daemon's NBD export, no job: an A/B of the
export path (ringmirror serve vs qemu-storage-daemon), alternating, page cache
dropped before each run. Same daemon setup as bench/mirror_vs_qsd.py (source
node only, exported writable).

    bench/export_ab.py [--reps 4] [--secs 12] [--workload randwrite-4k-qd16] [SRC]

SRC defaults to the bench scratch image (dense.img in $RINGMIRROR_BENCH_DIR);
the load writes to it. Prints IOPS and daemon CPU-s per run and the medians.
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lib.common import drop_caches, scratch_dir  # noqa: E402
from lib.daemons import Daemon  # noqa: E402
from lib.fio import FioRun  # noqa: E402
from lib.images import ensure_dense  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--secs", type=int, default=12)
    ap.add_argument("--workload", default="randwrite-4k-qd16")
    ap.add_argument("src", nargs="?")
    a = ap.parse_args()
    d = scratch_dir()
    src = Path(a.src) if a.src else d / "dense.img"
    if not a.src:
        ensure_dense(src)
    res = {"ringmirror": [], "qsd": []}
    for rep in range(a.reps):
        for kind in (["ringmirror", "qsd"] if rep % 2 == 0 else ["qsd", "ringmirror"]):
            drop_caches()
            dm = Daemon(kind, d / "run", f"ab-{kind}")
            try:
                dm.setup(src, None)
                c0 = dm.cpu_seconds()
                f = FioRun(a.workload, dm.uri, d / "run", f"ab-{kind}", runtime=a.secs)
                f.wait()
                cpu = dm.cpu_seconds() - c0
                r = f.result()
            finally:
                dm.stop()
            iops = r["write"]["iops"] + r["read"]["iops"]
            print(f"rep {rep} {kind}: {iops:.0f} IOPS, daemon {cpu:.1f} CPU-s", flush=True)
            res[kind].append(iops)
    rm, q = statistics.median(res["ringmirror"]), statistics.median(res["qsd"])
    print(f"median IOPS: ringmirror {rm:.0f}, qemu-storage-daemon {q:.0f}, ratio {rm / q:.2f}")


if __name__ == "__main__":
    main()
