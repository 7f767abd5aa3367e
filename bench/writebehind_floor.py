#!/usr/bin/env python3
"""Could a write-behind background mirror converge under the embedded guest?

    python3 bench/writebehind_floor.py [--reps 2] [--secs 20] [--copy-mb 50,100]

`bench/limits.py` measures the embedded guest (4 KiB random writes at QD16
through the `Disk` handle, `mirror/examples/mirror_bench.rs --mode none`)
beside write-behind's steady cost alone: a fio writer of 4 KiB random writes
at 80% of the guest-alone rate into a fully written target. A mirror also
has to copy the whole image once while the guest runs; 4 GiB within the
benchmark's 50 s load needs about 90 MB/s read and written. This adds that
bulk copy as a plain fio stream (1 MiB sequential reads of the source and
writes into a fresh sparse file, each side held at `--copy-mb` MB/s) and
reports the guest's share of its alone IOPS, the target writer's rate and
the copy's (fio's own averages; the writer's inside the guest's window).
Nothing of ringmirror's mirror runs: it is the floor under any mirror.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import limits as lim  # noqa: E402
from lib.common import make_sparse, rm_f  # noqa: E402


def copy_stream(src, dst, size, mb, out):
    make_sparse(dst, size)
    return subprocess.Popen(
        ["fio", "--ioengine=io_uring", "--direct=1", "--time_based", "--runtime=3600",
         "--output-format=json", f"--output={out}",
         "--name=read", f"--filename={src}", "--rw=read", "--bs=1M", "--iodepth=2", f"--rate={mb}m",
         "--name=write", f"--filename={dst}", "--rw=write", "--bs=1M", "--iodepth=2",
         f"--rate={mb}m"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--secs", type=float, default=20)
    ap.add_argument("--copy-mb", default="50,100", help="bulk copy rates to try, MB/s each side")
    a = ap.parse_args()
    rates = [int(x) for x in a.copy_mb.split(",")]
    d, src, size, bench = lim.setup()
    written, dst, out = d / "limits-written.img", d / "wbfloor-copy.img", d / "run" / "wbfloor-copy.json"
    lim.make_written(written, size)
    try:
        for rep in range(a.reps):
            alone = lim.embedded(bench, d, src, size, a.secs)
            print(f"rep {rep} guest alone: {alone['iops']:.0f} IOPS", flush=True)
            for mb in (rates if rep % 2 == 0 else rates[::-1]):
                cp = copy_stream(src, dst, size, mb, out)
                time.sleep(1)
                if cp.poll() is not None:
                    sys.exit(f"writebehind_floor: copy stream failed: {cp.stderr.read().decode()[-300:]}")
                try:
                    g = lim.embedded(bench, d, src, size, a.secs, rate=0.8 * alone["iops"],
                                     written=written)
                finally:
                    cp.send_signal(2)
                    cp.wait(timeout=60)
                txt = out.read_text()
                jobs = json.loads(txt[txt.index("{"):])["jobs"]
                rd, wr = jobs[0]["read"]["bw_bytes"] / 1e6, jobs[1]["write"]["bw_bytes"] / 1e6
                rm_f(dst, out)
                print(f"rep {rep} + writer at 80% (written target) + copy at {mb} MB/s: guest "
                      f"{g['iops']:.0f} IOPS ({g['iops'] / alone['iops']:.0%} of alone), writer "
                      f"{g['writer_iops']:.0f} of {0.8 * alone['iops']:.0f}/s, copy {rd:.0f} MB/s read "
                      f"{wr:.0f} MB/s written", flush=True)
    finally:
        rm_f(written, dst, out)


if __name__ == "__main__":
    main()
