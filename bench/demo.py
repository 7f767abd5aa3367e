#!/usr/bin/env python3
"""The README's first command (bench/demo.sh): a live mirror under a guest
write load with `ringmirror serve`, verified.

1 GiB random image -> `ringmirror serve` exports it over NBD -> fio (nbd
engine) writes 4 KiB blocks at QD16 (4000/s by default: a busy VM) to its
first 768 MiB for ~15 s, while
qemu-io writes 64 KiB known patterns into the last 256 MiB through the same
export -> 3 s in, blockdev-mirror (background) to a fresh sparse target ->
READY -> block-job-complete -> checks: every pattern acknowledged at any time is
in the target file; every 4 KiB block where source and target differ was
written by a guest write that completed after block-job-complete was sent (so
the target equalled the source at the switch); a write through the export
after completion lands in the target only. Prints the phases and figures.
Exits non-zero on any failure.
"""

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.common import GiB, KiB, make_sparse, rm_f, run  # noqa: E402
from lib.daemons import Daemon  # noqa: E402
from lib.fio import load_latlog, window_stats, written_blocks_after  # noqa: E402
from lib.images import make_dense  # noqa: E402
from lib.verify import differing_blocks  # noqa: E402

import numpy as np  # noqa: E402

MONO2WALL = time.time() - time.monotonic()
PAT = 64 * KiB


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", action="store_true", help="keep the scratch images")
    ap.add_argument("--size", type=int, default=1, help="GiB (default 1)")
    ap.add_argument("--load-secs", type=float, default=30,
                    help="length of the guest load (default 30 s: READY and complete fall inside it)")
    ap.add_argument("--rate-iops", type=int, default=4000,
                    help="the guest's write rate (0: as fast as the disk goes; see bench/mirror.sh "
                         "for the saturating load and DESIGN.md on what it means for background mode)")
    ap.add_argument("--guest-share", type=int, choices=range(0, 101), metavar="0-100",
                    help="x-guest-share for the mirror: the percent of its speed the busy guest "
                         "keeps (0: no pacing, the copy goes as fast as the disk allows; default: "
                         "automatic)")
    a = ap.parse_args()
    size = a.size * GiB
    d = Path(os.environ.get("RINGMIRROR_BENCH_DIR", "/var/tmp/ringmirror-bench")) / "demo"
    d.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(d).free
    if free < 3 * size + 1 * GiB:
        sys.exit(f"demo: {d} has {free / 1e9:.1f} GB free; need {(3 * size + GiB) / 1e9:.1f}")
    src, tgt = d / "disk.img", d / "target.img"
    failures = []
    t00 = time.monotonic()
    print(f"demo: making a {a.size} GiB random image {src}", flush=True)
    make_dense(src, size)
    make_sparse(tgt, size)
    dm = Daemon("ringmirror", d, "demo")
    pat_region = size - size // 4          # patterns go in the last quarter
    try:
        dm.setup(src, tgt)
        print(f"demo: ringmirror serve (pid {dm.pid}) exports {dm.uri}", flush=True)
        lat = str(d / "guest")
        for f in d.glob("guest_lat.*.log"):
            rm_f(f)
        fio = subprocess.Popen(
            ["fio", "--name=guest", "--ioengine=nbd", f"--uri={dm.uri}", "--rw=randwrite",
             "--bs=4k", "--iodepth=16", "--time_based", f"--runtime={a.load_secs:g}",
             "--randrepeat=0", "--norandommap", f"--size={pat_region}",
             *([f"--rate_iops={a.rate_iops}"] if a.rate_iops else []),
             f"--write_lat_log={lat}", "--log_unix_epoch=1", "--log_offset=1",
             "--output-format=json", f"--output={d / 'guest.json'}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        tl = time.monotonic()
        # known patterns through the export, one every 0.5 s, in the reserved region
        patterns = []          # (offset, byte, t_acked)
        stop_pat = threading.Event()

        def writer():
            i = 0
            while not stop_pat.is_set():
                off = pat_region + (i * PAT) % (size - pat_region)
                byte = 0x10 + i % 0xe0
                p = run(["qemu-io", "-f", "raw", "-c", f"write -P {byte} {off} {PAT}", dm.uri],
                        check=False)
                if p.returncode != 0:
                    failures.append(f"qemu-io pattern write {i} failed: {p.stderr.strip()[-200:]}")
                else:
                    patterns.append((off, byte, time.monotonic()))
                i += 1
                stop_pat.wait(0.5)
        wt = threading.Thread(target=writer, daemon=True)
        wt.start()
        time.sleep(3)
        dm.start_sampling(0.1)
        extra = {} if a.guest_share is None else {"x-guest-share": a.guest_share}
        tm = dm.mirror("background", **extra)
        print(f"demo: {tm - tl:5.1f} s  blockdev-mirror (background) to {tgt}", flush=True)
        tr = dm.wait_ready(max(0.5, tl + a.load_secs + 0.5 - time.monotonic()), tm)
        load_stopped = None
        if tr is None:
            print(f"demo: no READY while the guest load ran; waiting for the load to end", flush=True)
            fio.wait(60)
            load_stopped = time.monotonic()
            tr = dm.wait_ready(300, tm)
            if tr is None:
                raise RuntimeError("no BLOCK_JOB_READY 300 s after the load stopped")
        print(f"demo: {tr - tl:5.1f} s  BLOCK_JOB_READY after {tr - tm:.2f} s of mirroring"
              + (" (after the load stopped)" if load_stopped else ""), flush=True)
        if fio.poll() is None:
            time.sleep(min(2.0, max(0, tl + a.load_secs - 2 - time.monotonic())))
        cs, cr, ce, data = dm.complete()
        under_load = fio.poll() is None
        print(f"demo: {ce - tl:5.1f} s  BLOCK_JOB_COMPLETED ({(ce - cs) * 1e3:.1f} ms after "
              f"block-job-complete{', guest load still running' if under_load else ''})", flush=True)
        fio.wait(120)
        stop_pat.set()
        wt.join(10)
        t_end = time.monotonic()
        dm.stop_sampling()
        if fio.returncode != 0:
            failures.append(f"fio exited {fio.returncode}: {fio.stderr.read().decode()[-300:]}")
        # ---- checks
        L = load_latlog(lat)
        with open(tgt, "rb") as f:
            for off, byte, _ in patterns:
                f.seek(off)
                if f.read(PAT) != bytes([byte]) * PAT:
                    failures.append(f"pattern 0x{byte:02x} at {off} (acknowledged) is not on the target")
        # only the last pattern written at each offset counts
        diff = differing_blocks(src, tgt)
        after = written_blocks_after(L, cs + MONO2WALL - 0.005)
        pat_after = [np.arange(o // 4096, (o + PAT) // 4096) for o, b, t in patterns if t >= cs - 0.005]
        # a pattern write acked after complete was sent may differ too
        pat_inflight = [np.arange(o // 4096, (o + PAT) // 4096) for o, b, t in patterns if t >= cs - 2]
        allowed = np.unique(np.concatenate([after] + pat_after + pat_inflight)) if len(after) or pat_after \
            or pat_inflight else after
        bad = np.setdiff1d(diff, allowed)
        if len(bad):
            failures.append(f"{len(bad)} blocks differ between source and target that no write after "
                            f"the switch explains (first at offset {int(bad[0]) * 4096})")
        off = pat_region - 64 * KiB
        with open(src, "rb") as f:
            f.seek(off)
            before = f.read(PAT)
        p = run(["qemu-io", "-f", "raw", "-c", f"write -P 0xa7 {off} {PAT}", dm.uri], check=False)
        with open(tgt, "rb") as f:
            f.seek(off)
            t_after = f.read(PAT)
        with open(src, "rb") as f:
            f.seek(off)
            s_after = f.read(PAT)
        if p.returncode != 0 or t_after != b"\xa7" * PAT or s_after != before:
            failures.append("a write through the export after completion did not land in the target only")
        # ---- summary
        t0w, tmw, trw, csw, cew = (x + MONO2WALL for x in (tl, tm, tr, cs, ce))
        first = float(L["t"][0]) if len(L) else t0w
        win = {"before mirror": window_stats(L, first + 0.5, tmw),
               "mirror -> READY": window_stats(L, tmw, min(trw, float(L["t"][-1]) if len(L) else trw)),
               "READY -> complete": window_stats(L, trw, csw),
               "after complete": window_stats(L, cew, float(L["t"][-1]) if len(L) else cew)}
        print("\ndemo summary")
        print(f"  image            {a.size} GiB random data, target fresh sparse file")
        print(f"  copy rate        {size / (tr - tm) / 1e6:.0f} MB/s to READY ({tr - tm:.2f} s); "
              f"progress offset at READY {dm.progress[-1][1] / GiB if dm.progress else 0:.2f} GiB")
        if a.guest_share is None:
            share = ("automatic: the copy is paced to keep the guest's latency near its own "
                     "(--guest-share 0 copies flat out)")
        elif a.guest_share == 0:
            share = "0: no pacing, the copy goes as fast as the disk allows"
        else:
            share = f"{a.guest_share}%: the guest's latency may rise {100 / a.guest_share:.2f}x"
        print(f"  guest share      {share}")
        print(f"  guest writes     {len(L)} fio 4 KiB writes, {len(patterns)} qemu-io 64 KiB patterns")
        for k, w in win.items():
            if w and w["n"]:
                print(f"  guest {k:18s} {w['iops']:8.0f} IOPS  p99 {w['p99']:7.2f} ms  ({w['secs']:.1f} s)")
            else:
                print(f"  guest {k:18s}        - (no I/O in this window)")
        print(f"  differing blocks {len(diff)} after the run, all written after the switch: "
              f"{'yes' if not len(bad) else 'NO'}")
        print(f"  total            {t_end - t00:.1f} s")
    except Exception as e:
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        rc = dm.stop()
        if rc not in (0, None):
            failures.append(f"ringmirror serve exited with {rc}: "
                            f"{dm.stderr_path.read_text(errors='replace')[-300:]}")
        if not a.keep:
            for f in (src, tgt):
                rm_f(f)
            for f in d.glob("guest_lat.*.log"):
                rm_f(f)
    if failures:
        print("\ndemo: FAILED")
        for f in failures:
            print("  - " + f)
        sys.exit(1)
    print("\ndemo: OK — every acknowledged write is on the target, the export serves the target")


if __name__ == "__main__":
    main()
