#!/usr/bin/env python3
"""Issue 4's benchmark: the mirror job embedded (no NBD, no daemon), driven by
`mirror/examples/mirror_bench.rs` (a guest of 4 KiB random writes at QD16
through the `Disk` handle, latencies in an hdrhistogram).

In one run, alternating, median of --reps:
  * the fio copy ceiling (fio-configs/ceiling-copy.fio) on the same image;
  * time to READY with no guest I/O, as a fraction of the ceiling;
  * with the guest: no job, a background mirror, a write-blocking mirror
    (mirror 5 s into the load; complete 10 s after READY): time to READY,
    guest IOPS and p50/p99 before the mirror and from mirror to READY.
Prints a markdown section (and writes it to --out if given).

    bench/embedded.sh [--reps 3] [--size 4G]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from lib.common import drop_caches, scratch_dir  # noqa: E402
from lib.images import make_dense  # noqa: E402


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def fresh(path, size):
    if path.exists():
        path.unlink()
    with open(path, "wb") as f:
        f.truncate(size)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_ms(x):
    return "n/a" if x is None else f"{x:.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    d = scratch_dir()
    src = d / "dense.img"
    make_dense(src)
    size = src.stat().st_size
    dst = d / "embedded-dst.img"
    sh(["cargo", "build", "--release", "-q", "-p", "ringmirror-mirror", "--example", "mirror_bench"], cwd=ROOT)
    bench = ROOT / "target/release/examples/mirror_bench"
    res = {"ceiling": [], "noio": [], "none": [], "background": [], "write-blocking": []}
    for rep in range(a.reps):
        order = ["ceiling", "noio", "none", "background", "write-blocking"]
        order = order[rep % len(order):] + order[:rep % len(order)]
        for what in order:
            fresh(dst, size)
            drop_caches()
            if what == "ceiling":
                t = time.monotonic()
                env = dict(os.environ, SRC=str(src), NEW=str(dst), SIZE=str(size))
                sh(["fio", "--output-format=json", str(ROOT / "fio-configs/ceiling-copy.fio")], env=env)
                res["ceiling"].append(time.monotonic() - t)
                print(f"rep {rep} ceiling {res['ceiling'][-1]:.2f} s", flush=True)
                continue
            args = [str(bench), "--src", str(src), "--dst", str(dst), "--timeout", "60"]
            if what == "noio":
                args += ["--mode", "background", "--no-load", "--after-ready", "0"]
            else:
                args += ["--mode", what, "--warmup", "5", "--after-ready", "10"]
            out = json.loads(sh(args).stdout)
            res[what].append(out)
            print(f"rep {rep} {what}: ready {out.get('ready_seconds')} to_ready iops "
                  f"{out['to_ready']['iops']:.0f}", flush=True)
    ceil = med(res["ceiling"])
    lines = ["## Embedded mirror (issue 4): the job through the `Disk` handle, no NBD",
             "",
             f"`bench/embedded.sh --reps {a.reps}`: {size >> 30} GiB fully written image, fresh sparse target, "
             "page cache dropped before each run, contenders alternating, medians of "
             f"{a.reps}. The guest is `mirror/examples/mirror_bench.rs`: 4 KiB random writes at QD16 "
             "through the handle, per-I/O latency in an hdrhistogram; the mirror starts 5 s into the "
             "load and completes 10 s after READY. Default job options (granularity 64 KiB, buf-size 16 MiB).",
             ""]
    noio = med([r["ready_seconds"] for r in res["noio"]])
    lines += ["| no guest I/O | seconds | × ceiling (speed) |", "|---|---|---|",
              f"| fio copy ceiling | {ceil:.2f} | 1.00 |",
              f"| mirror to READY | {noio:.2f} | {ceil / noio:.2f} |", ""]
    lines += ["| guest load | mirror→READY s | guest IOPS before | guest IOPS mirror→READY | × no-job IOPS "
              "| p50 / p99 µs mirror→READY | p99 µs no job | stall at complete ms |",
              "|---|---|---|---|---|---|---|---|"]
    base_iops = med([r["before"]["iops"] for r in res["none"]] + [r["to_ready"]["iops"] for r in res["none"]])
    base_p99 = med([r["to_ready"]["p99_us"] for r in res["none"]])
    for m in ["none", "background", "write-blocking"]:
        rs = res[m]
        if m == "none":
            lines.append(f"| no job | - | {base_iops:.0f} | - | 1.00 | - | {base_p99} | - |")
            continue
        ready = [r["ready_seconds"] for r in rs]
        conv = [x for x in ready if x is not None]
        rtxt = f"{med(conv):.1f}" if conv else "no READY in 60 s"
        if len(conv) < len(ready):
            rtxt += f" ({len(conv)} of {len(ready)} runs reached READY)"
        i2r = med([r["to_ready"]["iops"] for r in rs])
        lines.append(
            f"| {m} | {rtxt} | {med([r['before']['iops'] for r in rs]):.0f} | {i2r:.0f} | "
            f"{i2r / base_iops:.2f} | {med([r['to_ready']['p50_us'] for r in rs])} / "
            f"{med([r['to_ready']['p99_us'] for r in rs])} | {base_p99} | "
            f"{fmt_ms(med([r.get('complete_max_gap_ms') for r in rs]))} |")
    lines += ["", "Raw runs: " + json.dumps({k: len(v) for k, v in res.items()}), ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
