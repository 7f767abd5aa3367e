#!/usr/bin/env python3
"""What this disk allows any mirror, measured without a mirror.

    RINGMIRROR_BIN=target/release/ringmirror python3 bench/limits.py [--reps 3] [--secs 20]

Criteria of issues 4 and 6 that no build here has met, each beside the floor
it stands on, measured in one run with fio and the plain export (no job):

1. **No-I/O READY in half qemu-storage-daemon's time.** A mirror of a fully
   written image reads every byte of the source before READY. Both daemons'
   no-I/O mirror to READY (as `bench/mirror.sh` runs it, alternating) beside
   fio reading the source alone (4 MiB requests, 64 in flight, deeper than
   the mirror's own 16 MiB buffer; page cache dropped, 5 s settle). On this
   disk that read is no firm floor (the host's caching moves it), so this
   part shows the spread, not a bound.
2. **Background READY under the 4 KiB QD16 random-write load with the guest
   at 80% of its no-job IOPS.** Once the bulk copy has passed a block, every
   later guest write to it must reach the target too before READY; the
   cheapest way is one 4 KiB target write per guest write (its bytes kept,
   no re-read), as fast as the guest makes them. (A mirror that lags may
   merge rewrites of one block; at this load's spread, few in a second.)
   Measured: the guest alone, then beside a fio writer of 4 KiB random
   writes at 80% of that guest-alone rate into a fresh sparse target and
   into a fully written one (pure overwrites, the cheap case the mirror
   meets behind its copy); no bulk copy at all. Through ringmirror's export
   and embedded (`mirror/examples/mirror_bench.rs --mode none`, 4 KiB random
   writes at QD16 through the `Disk` handle). The writer's rate is taken
   from its own 1 s IOPS log inside the guest's window. If the guest falls
   below 80% of alone, no background mirror converges with the guest at 80%.
3. **No guest stall over 100 ms.** The same load with fio directly on the
   image file (no NBD, no daemon, no job): its longest stall (`lib/fio.py`
   `stalls`), beside the guest's through the export with no job.

Prints a line per measurement and medians; `--out F` keeps the runs as JSON
(after each rep). Uses the benchmark's dense image (made if missing)
and writes a 4 GiB target beside it (removed at the end).
"""

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mirror_vs_qsd as m  # noqa: E402
from lib.common import (drop_caches, lock_scratch, make_sparse, median, rm_f,  # noqa: E402
                        save_json, scratch_dir)
from lib.fio import load_latlog, max_stall  # noqa: E402
from lib.images import ensure_dense  # noqa: E402

WORKLOAD = "randwrite-4k-qd16"
ROOT = Path(__file__).resolve().parent.parent


def setup():
    """The locked scratch dir, the dense source (made if missing), its size,
    and a release build of `mirror_bench` (the embedded guest)."""
    d = scratch_dir()
    lock_scratch(d)
    (d / "run").mkdir(exist_ok=True)
    src = ensure_dense(d / "dense.img")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ringmirror-mirror", "--example",
                    "mirror_bench"], cwd=ROOT, check=True)
    return d, src, src.stat().st_size, ROOT / "target/release/examples/mirror_bench"


def read_floor_cmd(src, size):
    """Reading the source alone: 4 MiB requests, 64 in flight."""
    return ["fio", "--output-format=json", "--ioengine=io_uring", "--direct=1", "--name=r",
            f"--filename={src}", "--rw=read", "--bs=4M", "--iodepth=64", f"--size={size}"]


def make_written(path, size):
    """A fully written file: the cheapest target for small writes (a pure
    overwrite, no block allocation or unwritten-extent conversion), like the
    blocks a background mirror's bulk copy has already passed."""
    rm_f(path)
    subprocess.run(["fio", "--name=fill", f"--filename={path}", "--ioengine=io_uring",
                    "--direct=1", "--rw=write", "--bs=4M", "--iodepth=8", f"--size={size}",
                    "--output=/dev/null"], check=True)


class TargetWriter:
    """fio 4 KiB random writes at `rate` per second into a target file: a
    fresh sparse one (`written=None`) or the fully written `written`. Runs
    until stopped; its IOPS log (1 s averages, epoch time) gives its rate
    inside any window."""

    def __init__(self, d, size, rate, written=None):
        if rate < 1:
            raise SystemExit("limits: the guest alone made no I/O; nothing to compare with")
        self.tgt = written or d / "limits-tgt.img"
        if written is None:
            make_sparse(self.tgt, size)
        self.sparse = written is None
        self.prefix = str(d / "run" / "limits-writer")
        self._clean()
        self.proc = subprocess.Popen(
            ["fio", "--name=tgt", f"--filename={self.tgt}", "--ioengine=io_uring", "--direct=1",
             "--rw=randwrite", "--bs=4k", "--iodepth=16", "--time_based", "--runtime=3600",
             "--norandommap", "--randrepeat=0", f"--rate_iops={int(rate)}",
             f"--write_iops_log={self.prefix}", "--log_avg_msec=1000", "--log_unix_epoch=1",
             "--output-format=json", f"--output={self.prefix}.json"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1)
        if self.proc.poll() is not None:
            raise SystemExit(f"limits: target writer failed: {self.proc.stderr.read().decode()[-300:]}")

    def _clean(self):
        for f in Path(self.prefix).parent.glob("limits-writer*"):
            rm_f(f)

    def stop(self, t0, t1):
        """Stop; its mean IOPS over [t0, t1] (epoch seconds)."""
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=60)
        logs = sorted(Path(self.prefix).parent.glob("limits-writer_iops.*.log"))
        rows = np.concatenate([np.loadtxt(f, delimiter=",", usecols=(0, 1), ndmin=2)
                               for f in logs if f.stat().st_size]) if logs else np.zeros((0, 2))
        self._clean()
        if self.sparse:
            rm_f(self.tgt)
        # each row: the end of a 1 s interval (ms) and the IOPS in it
        inside = (rows[:, 0] / 1e3 > t0 + 1) & (rows[:, 0] / 1e3 <= t1)
        if not inside.any():
            raise SystemExit(f"limits: no target-writer samples in the guest's window "
                             f"({err.decode()[-300:]})")
        return float(rows[inside, 1].mean())


def guest(d, src, size, secs, rate=None, written=None):
    """The guest load through ringmirror's export, no job; with `rate`, a
    target writer beside it for the whole measured window."""
    w = TargetWriter(d, size, rate, written) if rate is not None else None
    try:
        r = m.run_load("ringmirror", None, WORKLOAD, src, d, size, secs, secs)
    except BaseException:
        if w is not None:
            w.proc.kill()
        raise
    if r.get("error") or not (r.get("windows") or {}).get("whole"):
        raise SystemExit(f"limits: guest run failed: {r.get('error')}")
    whole = r["windows"]["whole"]
    # the window analyse() measures: 1 s after fio's first completion to the stop
    t1 = r["t_stop"]
    t0 = t1 - secs
    return {"iops": whole["iops"], "p99_ms": whole.get("p99"), "stall_ms": r["mirror_stall_ms"],
            "writer_iops": w.stop(t0, t1) if w is not None else None}


def embedded(bench, d, src, size, secs, rate=None, written=None):
    """The embedded guest (`mirror/examples/mirror_bench.rs`, 4 KiB random
    writes at QD16 through the `Disk` handle, issue 4's benchmark), no job."""
    dst = d / "limits-embedded-dst.img"
    make_sparse(dst, size)
    drop_caches()
    time.sleep(m.SETTLE_S)
    w = TargetWriter(d, size, rate, written) if rate is not None else None
    t0 = time.time()
    p = subprocess.run([str(bench), "--src", str(src), "--dst", str(dst), "--mode", "none",
                        "--warmup", "2", "--after-ready", str(secs)],
                       capture_output=True, text=True)
    t1 = time.time()
    rm_f(dst)
    writer_iops = w.stop(t0 + 2, t1) if w is not None else None
    if p.returncode != 0:
        raise SystemExit(f"limits: mirror_bench failed: {p.stderr.strip()[-300:]}")
    win = json.loads(p.stdout.strip().splitlines()[-1])["to_ready"]
    return {"iops": win["iops"], "p99_ms": win["p99_us"] / 1e3, "stall_ms": None,
            "writer_iops": writer_iops}


def direct(d, src, secs):
    prefix = str(d / "run" / "limits-direct")

    def clean():
        for f in Path(d / "run").glob("limits-direct*"):
            rm_f(f)
    clean()
    subprocess.run(["fio", "--name=direct", f"--filename={src}", "--ioengine=io_uring",
                    "--direct=1", "--rw=randwrite", "--bs=4k", "--iodepth=16", "--time_based",
                    f"--runtime={secs:g}", "--norandommap", "--randrepeat=0",
                    f"--write_lat_log={prefix}", "--log_unix_epoch=1", "--log_offset=1",
                    "--output-format=json", f"--output={prefix}.json"],
                   check=True, stdout=subprocess.DEVNULL)
    L = load_latlog(prefix)
    clean()
    if len(L) < 2:
        raise SystemExit("limits: fio on the image file logged no I/O")
    t0, t1 = L["t"][0] + 1, L["t"][-1]
    return {"iops": len(L) / (t1 - L["t"][0]), "stall_ms": max_stall(L, t0, t1) * 1e3}


def show(rep, name, g, base):
    w = f", writer {g['writer_iops']:.0f}/s in the window" if g["writer_iops"] is not None else ""
    st = f", longest stall {g['stall_ms']:.0f} ms" if g["stall_ms"] is not None else ""
    p99 = f", p99 {g['p99_ms']:.2f} ms" if g["p99_ms"] is not None else ""
    print(f"rep {rep} {name}: {g['iops']:.0f} IOPS ({g['iops'] / base['iops']:.0%} of alone)"
          f"{p99}{st}{w}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--secs", type=float, default=20, help="each guest load (default 20 s)")
    ap.add_argument("--out", help="write the runs here as JSON (after every rep)")
    a = ap.parse_args()
    d, src, size, bench = setup()
    written = d / "limits-written.img"
    make_written(written, size)
    runs = []
    try:
        for rep in range(a.reps):
            r = {"rep": rep}
            # 1: both daemons' no-I/O READY and the read floor, alternating
            order = ("qsd", "ringmirror") if rep % 2 == 0 else ("ringmirror", "qsd")
            for kind in order:
                x = m.run_noio(kind, src, d, size, "dense")
                if x.get("error") or not x.get("cmp_ok"):
                    sys.exit(f"limits: {kind} no-I/O mirror failed: "
                             f"{x.get('error') or x.get('cmp_msg')}")
                r[f"{kind}_ready_s"] = x["ready_s"]
            drop_caches()
            time.sleep(m.SETTLE_S)
            p = subprocess.run(read_floor_cmd(src, size), capture_output=True, text=True,
                               check=True)
            r["read_floor_s"] = json.loads(p.stdout[p.stdout.index("{"):])["jobs"][0]["read"]["runtime"] / 1e3
            print(f"rep {rep} no I/O: READY qsd {r['qsd_ready_s']:.2f} s, ringmirror "
                  f"{r['ringmirror_ready_s']:.2f} s; reading the source alone "
                  f"{r['read_floor_s']:.2f} s (half QSD's time: {r['qsd_ready_s'] / 2:.2f} s)",
                  flush=True)
            # 2: each guest alone, then beside a target writer at 80% of it, the two targets
            # in turn; the two guests' order alternates too
            targets = (("sparse", None), ("written", written))
            if rep % 2:
                targets = targets[::-1]
            guests = (("", "NBD guest", lambda **k: guest(d, src, size, a.secs, **k)),
                      ("e_", "embedded guest", lambda **k: embedded(bench, d, src, size, a.secs, **k)))
            for k, what, run in (guests if rep % 2 == 0 else guests[::-1]):
                alone = r[k + "alone"] = run()
                show(rep, what + " alone", alone, alone)
                for tname, tpath in targets:
                    g = r[k + tname] = run(rate=0.8 * alone["iops"], written=tpath)
                    show(rep, f"{what} + writer into a {tname} target", g, alone)
            # 3: the disk's own stalls
            r["direct"] = fdir = direct(d, src, a.secs)
            print(f"rep {rep} fio on the image file: {fdir['iops']:.0f} IOPS, longest stall "
                  f"{fdir['stall_ms']:.0f} ms", flush=True)
            runs.append(r)
            if a.out:
                save_json(a.out, runs)
    finally:
        rm_f(written)

    def med(f):
        return median([f(r) for r in runs])
    print(f"\nmedians of {len(runs)}:")
    print(f"  no I/O: half QSD's READY {med(lambda r: r['qsd_ready_s'] / 2):.2f} s, reading the "
          f"source alone {med(lambda r: r['read_floor_s']):.2f} s, ringmirror's READY "
          f"{med(lambda r: r['ringmirror_ready_s']):.2f} s")
    for k, what in (("", "NBD guest"), ("e_", "embedded guest")):
        print(f"  {what} beside 80% as many target writes: "
              f"{med(lambda r: r[k + 'sparse']['iops'] / r[k + 'alone']['iops']):.0%} of alone (sparse "
              f"target), {med(lambda r: r[k + 'written']['iops'] / r[k + 'alone']['iops']):.0%} "
              f"(written target); the criterion needs 80% with the bulk copy besides")
    print(f"  longest stall with no job: fio on the file {med(lambda r: r['direct']['stall_ms']):.0f} ms, "
          f"through the export {med(lambda r: r['alone']['stall_ms']):.0f} ms; the criterion: 100 ms")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
