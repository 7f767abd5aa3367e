#!/usr/bin/env python3
"""The guest's stalls with no job, both daemons alternating.

    RINGMIRROR_BIN=target/release/ringmirror python3 bench/stall_ab.py [--reps 3]

Runs `fio-configs/randwrite-4k-qd16.fio` for 25 s through each daemon's NBD
export (no mirror), alternating, and prints each run's IOPS and its three
longest stalls (an I/O in flight and none completing; `lib/fio.py`
`max_stall`) with when they happened and the latency of the I/O that ended
them. Then the same load with fio directly on the image file, for the disk's
own stalls. Uses the benchmark's dense image (bench/mirror.sh makes it).
"""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mirror_vs_qsd as m  # noqa: E402
from lib.common import rm_f, scratch_dir  # noqa: E402
from lib.fio import load_latlog  # noqa: E402


def stalls(L, n=3):
    t, lat = L["t"], L["lat"]
    since = np.minimum.accumulate((t - lat)[::-1])[::-1]
    st = t - np.maximum(np.concatenate(([t[0]], t[:-1])), since)
    top = np.argsort(st)[-n:][::-1]
    return ", ".join(f"{st[i] * 1e3:.0f} ms at {t[i] - t[0]:.1f} s (lat {lat[i] * 1e3:.0f} ms)"
                     for i in top)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--secs", type=float, default=25)
    a = ap.parse_args()
    d = scratch_dir()
    src = d / "dense.img"
    if not src.exists():
        sys.exit(f"stall_ab: {src} missing; bench/mirror.sh makes it")
    size = src.stat().st_size
    for rep in range(a.reps):
        for kind in ("ringmirror", "qsd"):
            r = m.run_load(kind, None, "randwrite-4k-qd16", src, d, size, a.secs, a.secs,
                           keep_log=True)
            log = r.pop("_log")
            L = np.zeros(len(log["t_all"]), dtype=[("t", "f8"), ("lat", "f8")])
            L["t"], L["lat"] = log["t_all"], log["lat_all"]
            print(f"rep {rep} {kind:10s} IOPS {r['windows']['whole']['iops']:7.0f}  stalls: "
                  f"{stalls(L)}", flush=True)
        prefix = str(d / "run" / "direct")
        for f in Path(d / "run").glob("direct_lat.*.log"):
            rm_f(f)
        subprocess.run(["fio", "--name=direct", f"--filename={src}", "--ioengine=io_uring",
                        "--direct=1", "--rw=randwrite", "--bs=4k", "--iodepth=16",
                        "--time_based", f"--runtime={a.secs:g}", "--norandommap",
                        "--randrepeat=0", f"--write_lat_log={prefix}", "--log_unix_epoch=1",
                        "--output-format=json", f"--output={prefix}.json"],
                       check=True, stdout=subprocess.DEVNULL)
        L = load_latlog(prefix)
        print(f"rep {rep} {'fio direct':10s} IOPS {len(L) / (L['t'][-1] - L['t'][0]):7.0f}  "
              f"stalls: {stalls(L)}", flush=True)


if __name__ == "__main__":
    main()
