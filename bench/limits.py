#!/usr/bin/env python3
"""What this disk allows any mirror, measured without a mirror.

    RINGMIRROR_BIN=target/release/ringmirror python3 bench/limits.py [--reps 3] [--secs 20]

Three criteria of issues 4 and 6 ask for more than the disk gives. This
measures, in one run and alternating, the floor each of them stands on, with
fio and the plain export (no job), so anyone can check the claim:

1. **No-I/O READY in half qemu-storage-daemon's time.** A mirror of a fully
   written image reads every byte of the source before READY. So READY can
   come no sooner than `fio` reads the source alone (in the copy's request
   shape, 4 MiB x 64, page cache dropped). Measured beside both daemons'
   no-I/O mirror to READY (as `bench/mirror.sh` runs it): if the read floor
   is above half QSD's time, the criterion is out of reach for any mirror.
2. **Background READY under the 4 KiB QD16 random-write load with the guest
   at 80% of its no-job IOPS.** Once the bulk copy has passed, every later
   guest write must reach the target too before READY; the cheapest way is
   one 4 KiB target write per guest write (its bytes kept, no re-read; more
   than the copy does), and to converge the target must take them at least
   as fast as the guest makes them. Measured: the guest through ringmirror's
   export alone, then with a fio writer of 4 KiB random writes at R = 80% of
   that guest-alone rate (into a fresh sparse target, and into a
   preallocated one, the best case), nothing else running; no bulk copy at
   all. The same for issue 4's embedded guest (`mirror/examples/
   mirror_bench.rs --mode none`, 4 KiB random writes at QD16 through the
   `Disk` handle). If the guest falls below 80% of alone, no background
   mirror can converge with the guest at 80%.
3. **No guest stall over 100 ms during the mirror.** The same load with fio
   directly on the image file (no NBD, no daemon, no job): its longest stall
   (`lib/fio.py` `stalls`), and the guest's through the export with no job.

Prints a line per measurement and a summary of medians; `--out F` keeps the
runs as JSON. Uses the benchmark's dense image (bench/mirror.sh makes it).
"""

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mirror_vs_qsd as m  # noqa: E402
from lib.common import (drop_caches, lock_scratch, make_sparse, median, rm_f,  # noqa: E402
                        save_json, scratch_dir)
from lib.fio import load_latlog, max_stall  # noqa: E402

WORKLOAD = "randwrite-4k-qd16"
ROOT = Path(__file__).resolve().parent.parent


def read_floor_cmd(src, size):
    """Reading the source alone in the copy's own request shape (4 MiB, 64
    in flight: 256 MiB, `EngineConfig`'s default), page cache dropped."""
    return ["fio", "--output-format=json", "--ioengine=io_uring", "--direct=1", "--name=r",
            f"--filename={src}", "--rw=read", "--bs=4M", "--iodepth=64", f"--size={size}"]


def target_writer(tgt, size, rate, secs, prealloc, out):
    """fio 4 KiB random writes into a new target file at `rate` per second."""
    rm_f(tgt)
    if prealloc:
        subprocess.run(["fallocate", "-l", str(size), str(tgt)], check=True)
    else:
        make_sparse(tgt, size)
    p = subprocess.run(["fio", "--name=tgt", f"--filename={tgt}", "--ioengine=io_uring",
                        "--direct=1", "--rw=randwrite", "--bs=4k", "--iodepth=16",
                        "--time_based", f"--runtime={secs:g}", "--norandommap",
                        "--randrepeat=0", f"--rate_iops={int(rate)}", "--output-format=json"],
                       capture_output=True, text=True)
    rm_f(tgt)
    if p.returncode != 0:
        out["error"] = p.stderr.strip()[-300:]
        return
    out["iops"] = json.loads(p.stdout)["jobs"][0]["write"]["iops"]


def beside_writer(d, size, secs, writer, run):
    """run(); with `writer` (rate, prealloc) a target writer runs beside it,
    started a second before and lasting `secs` more than the run needs."""
    out, th = {}, None
    if writer is not None:
        th = threading.Thread(target=target_writer,
                              args=(d / "limits-tgt.img", size, writer[0], secs, writer[1], out))
        th.start()
        time.sleep(1)
    r = run()
    if th is not None:
        th.join()
    if out.get("error"):
        raise SystemExit(f"limits: target writer failed: {out['error']}")
    r["writer_iops"] = out.get("iops")
    return r


def guest(d, src, size, secs, writer=None):
    """The guest load through ringmirror's export, no job."""
    def run():
        r = m.run_load("ringmirror", None, WORKLOAD, src, d, size, secs, secs)
        if r.get("error") or "whole" not in r.get("windows", {}):
            raise SystemExit(f"limits: guest run failed: {r.get('error')}")
        return {"iops": r["windows"]["whole"]["iops"], "p99_ms": r["windows"]["whole"].get("p99"),
                "stall_ms": r["mirror_stall_ms"]}
    return beside_writer(d, size, secs + m.SETTLE_S + 10, writer, run)


def embedded(bench, d, src, size, secs, writer=None):
    """The embedded guest (`mirror/examples/mirror_bench.rs`, 4 KiB random
    writes at QD16 through the `Disk` handle, issue 4's benchmark), no job."""
    dst = d / "limits-embedded-dst.img"

    def run():
        make_sparse(dst, size)
        p = subprocess.run([str(bench), "--src", str(src), "--dst", str(dst), "--mode", "none",
                            "--warmup", "2", "--after-ready", str(secs)],
                           capture_output=True, text=True)
        rm_f(dst)
        if p.returncode != 0:
            raise SystemExit(f"limits: mirror_bench failed: {p.stderr.strip()[-300:]}")
        w = json.loads(p.stdout.strip().splitlines()[-1])["to_ready"]
        return {"iops": w["iops"], "p99_ms": w["p99_us"] / 1e3, "stall_ms": None}
    return beside_writer(d, size, secs + 12, writer, run)


def direct(d, src, secs):
    prefix = str(d / "run" / "limits-direct")
    for f in Path(d / "run").glob("limits-direct_lat.*.log"):
        rm_f(f)
    subprocess.run(["fio", "--name=direct", f"--filename={src}", "--ioengine=io_uring",
                    "--direct=1", "--rw=randwrite", "--bs=4k", "--iodepth=16", "--time_based",
                    f"--runtime={secs:g}", "--norandommap", "--randrepeat=0",
                    f"--write_lat_log={prefix}", "--log_unix_epoch=1", "--output-format=json",
                    f"--output={prefix}.json"], check=True, stdout=subprocess.DEVNULL)
    L = load_latlog(prefix)
    for f in Path(d / "run").glob("limits-direct_lat.*.log"):
        rm_f(f)
    t0, t1 = L["t"][0] + 1, L["t"][-1]
    return {"iops": len(L) / (t1 - L["t"][0]), "stall_ms": max_stall(L, t0, t1) * 1e3}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--secs", type=float, default=20, help="each guest load (default 20 s)")
    ap.add_argument("--out", help="write the runs here as JSON")
    a = ap.parse_args()
    d = scratch_dir()
    src = d / "dense.img"
    if not src.exists():
        sys.exit(f"limits: {src} missing; bench/mirror.sh makes it")
    size = src.stat().st_size
    lock_scratch(d)
    (d / "run").mkdir(exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ringmirror-mirror", "--example",
                    "mirror_bench"], cwd=ROOT, check=True)
    bench = ROOT / "target/release/examples/mirror_bench"
    runs = []
    for rep in range(a.reps):
        r = {"rep": rep}
        # 1: both daemons' no-I/O READY and the read floor, alternating
        order = ("qsd", "ringmirror") if rep % 2 == 0 else ("ringmirror", "qsd")
        for kind in order:
            x = m.run_noio(kind, src, d, size, "dense")
            if x.get("error") or not x.get("cmp_ok"):
                sys.exit(f"limits: {kind} no-I/O mirror failed: {x.get('error') or x.get('cmp_msg')}")
            r[f"{kind}_ready_s"] = x["ready_s"]
        drop_caches()
        p = subprocess.run(read_floor_cmd(src, size), capture_output=True, text=True, check=True)
        r["read_floor_s"] = json.loads(p.stdout)["jobs"][0]["read"]["runtime"] / 1e3
        print(f"rep {rep} no I/O: READY qsd {r['qsd_ready_s']:.2f} s, ringmirror "
              f"{r['ringmirror_ready_s']:.2f} s; reading the source alone {r['read_floor_s']:.2f} s "
              f"(half QSD's time: {r['qsd_ready_s'] / 2:.2f} s)", flush=True)
        # 2 and 3: the guest alone, beside a target writer at 80% of it, and fio on the file
        alone = guest(d, src, size, a.secs)
        rate = 0.8 * alone["iops"]
        sparse = guest(d, src, size, a.secs, (rate, False))
        pre = guest(d, src, size, a.secs, (rate, True))
        e_alone = embedded(bench, d, src, size, a.secs)
        e_rate = 0.8 * e_alone["iops"]
        e_sparse = embedded(bench, d, src, size, a.secs, (e_rate, False))
        e_pre = embedded(bench, d, src, size, a.secs, (e_rate, True))
        fdir = direct(d, src, a.secs)
        r.update(alone=alone, rate=rate, sparse=sparse, prealloc=pre, e_alone=e_alone,
                 e_rate=e_rate, e_sparse=e_sparse, e_prealloc=e_pre, direct=fdir)
        for name, g, base in (("NBD guest alone", alone, alone),
                              ("NBD guest + writer, sparse target", sparse, alone),
                              ("NBD guest + writer, preallocated target", pre, alone),
                              ("embedded guest alone", e_alone, e_alone),
                              ("embedded guest + writer, sparse target", e_sparse, e_alone),
                              ("embedded guest + writer, preallocated target", e_pre, e_alone)):
            w = f", writer {g['writer_iops']:.0f}/s" if g["writer_iops"] else ""
            st = f", longest stall {g['stall_ms']:.0f} ms" if g["stall_ms"] is not None else ""
            print(f"rep {rep} {name}: {g['iops']:.0f} IOPS ({g['iops'] / base['iops']:.0%} "
                  f"of alone), p99 {g['p99_ms']:.2f} ms{st}{w}", flush=True)
        print(f"rep {rep} fio on the image file: {fdir['iops']:.0f} IOPS, longest stall "
              f"{fdir['stall_ms']:.0f} ms", flush=True)
        runs.append(r)
    if a.out:
        save_json(a.out, runs)

    def med(f):
        return median([f(r) for r in runs])
    print(f"\nmedians of {len(runs)}:")
    print(f"  no I/O: half QSD's READY {med(lambda r: r['qsd_ready_s'] / 2):.2f} s, reading the "
          f"source alone {med(lambda r: r['read_floor_s']):.2f} s, ringmirror's READY "
          f"{med(lambda r: r['ringmirror_ready_s']):.2f} s")
    for k, what in (("", "NBD guest"), ("e_", "embedded guest")):
        print(f"  {what} beside 80% as many target writes: "
              f"{med(lambda r: r[k + 'sparse']['iops'] / r[k + 'alone']['iops']):.0%} of alone (sparse "
              f"target), {med(lambda r: r[k + 'prealloc']['iops'] / r[k + 'alone']['iops']):.0%} "
              f"(preallocated); the criterion needs 80% with the bulk copy besides")
    print(f"  longest stall with no job: fio on the file {med(lambda r: r['direct']['stall_ms']):.0f} ms, "
          f"through the export {med(lambda r: r['alone']['stall_ms']):.0f} ms; the criterion: 100 ms")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
