#!/usr/bin/env python3
"""The guest's stalls with no job, both daemons alternating.

    RINGMIRROR_BIN=target/release/ringmirror python3 bench/stall_ab.py [--reps 3]

Runs `fio-configs/randwrite-4k-qd16.fio` for 25 s through each daemon's NBD
export (no mirror), alternating, and prints each run's IOPS and its three
longest stalls (an I/O outstanding and none completing; `lib/fio.py`
`stalls`) with when they happened and the latency of the I/O that ended
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
from lib.fio import load_latlog, stalls  # noqa: E402


def top(L, t0, t1, n=3):
    t, st = stalls(L, t0, t1)
    idx = np.argsort(st)[-n:][::-1]
    # fio logs in whole ms: of the I/Os completing in that ms, the one that
    # waited longest ended the stall.
    return ", ".join(f"{st[i] * 1e3:.0f} ms at {t[i] - t0:.1f} s "
                     f"(lat {L['lat'][L['t'] == t[i]].max() * 1e3:.0f} ms)" for i in idx)


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
            log = r.pop("_log", None)
            if r.get("error") or log is None:
                print(f"rep {rep} {kind:10s} FAILED: {r.get('error', 'no latency log')}", flush=True)
                continue
            L = np.zeros(len(log["t_all"]), dtype=[("t", "f8"), ("lat", "f8")])
            L["t"], L["lat"] = log["t_all"], log["lat_all"]
            # The window of the benchmark's no-job row: from 1 s after the
            # first completion to the load's stop.
            t0, t1 = L["t"][0] + 1, r.get("t_stop") or L["t"][-1]
            print(f"rep {rep} {kind:10s} IOPS {r['windows']['whole']['iops']:7.0f}  stalls: "
                  f"{top(L, t0, t1)}", flush=True)
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
        t0, t1 = L["t"][0] + 1, L["t"][-1]
        print(f"rep {rep} {'fio direct':10s} IOPS {len(L) / (L['t'][-1] - L['t'][0]):7.0f}  "
              f"stalls: {top(L, t0, t1)}", flush=True)


if __name__ == "__main__":
    main()
