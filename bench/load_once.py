#!/usr/bin/env python3
"""One guest-load run of bench/mirror_vs_qsd.py, for A/B comparisons of two
builds (alternate them: the disk drifts from minute to minute).

    RINGMIRROR_BIN=/path/to/ringmirror python3 bench/load_once.py \\
        ringmirror|qsd none|background|write-blocking WORKLOAD OUT.json \\
        [--load-secs 55] [--baseline-secs 25] [--guest-share P]

WORKLOAD is a name from fio-configs/ (e.g. randwrite-4k-qd16). Runs on
$RINGMIRROR_BENCH_DIR/dense.img (made if missing, as bench/mirror.sh does), writes the run's
record (windows, IOPS, latency, daemon CPU and RSS, verification) to OUT.json
and prints a one-line summary. --guest-share sends ringmirror's x-guest-share (0-100) with
blockdev-mirror.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mirror_vs_qsd as m  # noqa: E402
from lib.common import drop_caches, scratch_dir  # noqa: E402
from lib.images import ensure_dense  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["ringmirror", "qsd"])
    ap.add_argument("mode", choices=["none", "background", "write-blocking"])
    ap.add_argument("workload")
    ap.add_argument("out")
    ap.add_argument("--load-secs", type=int, default=55)
    ap.add_argument("--baseline-secs", type=int, default=25)
    ap.add_argument("--guest-share", type=int)
    a = ap.parse_args()
    d = scratch_dir()
    src = ensure_dense(d / "dense.img")
    drop_caches()
    mode = None if a.mode == "none" else a.mode
    extra = {} if a.guest_share is None else {"x-guest-share": a.guest_share}
    r = m.run_load(a.kind, mode, a.workload, src, d, src.stat().st_size,
                   a.load_secs, a.baseline_secs, mirror_extra=extra)
    Path(a.out).write_text(json.dumps(r))
    w = r.get("windows", {})
    print(json.dumps({
        "ready_s": r.get("ready_s"), "not_converged_s": r.get("not_converged_s"),
        "cpu_s": r.get("cpu_s"), "rss_peak": r.get("rss_peak"), "error": r.get("error"),
        "iops": {k: round(v["iops"]) for k, v in w.items()
                 if isinstance(v, dict) and v.get("iops") is not None},
    }))
    return 1 if r.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
