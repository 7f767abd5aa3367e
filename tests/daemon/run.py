#!/usr/bin/env python3
"""Run one end-to-end scenario of `ringmirror serve`.

Usage: run.py SCENARIO --binary PATH --scratch DIR [--timeout SECONDS]
       run.py --list

Each scenario starts its own daemon(s) in DIR (a real disk, not tmpfs:
the nodes use O_DIRECT), drives them with the real qemu.qmp client and the
real NBD clients (qemu-io, qemu-img, nbdinfo, fio, qemu-nbd), and asserts
exact event sequences, query results, error wordings and image contents.
Exit status 0 = passed. On failure the daemons' transcripts (every event and
reply in wire order) and stderr are printed. tests/daemon.rs runs every
scenario as its own #[test].
"""

import argparse
import asyncio
import os
import signal
import sys
import time
import traceback
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

import rmtest  # noqa: E402
import sc_errors  # noqa: E402
import sc_jobs  # noqa: E402
import sc_nbd  # noqa: E402
import sc_qsd  # noqa: E402

SCENARIOS = {}
for mod in (sc_jobs, sc_errors, sc_nbd, sc_qsd):
    for name, fn in mod.SCENARIOS.items():
        assert name not in SCENARIOS, name
        SCENARIOS[name] = fn


async def main(name, ctx, timeout):
    fn = SCENARIOS[name]
    t0 = time.monotonic()
    ok = False
    try:
        await asyncio.wait_for(fn(ctx), timeout)
        ok = True
    except asyncio.TimeoutError:
        print(f"FAIL {name}: scenario did not finish within {timeout} s", flush=True)
        traceback.print_exc(file=sys.stdout)
    except Exception:
        print(f"FAIL {name}:", flush=True)
        traceback.print_exc(file=sys.stdout)
    finally:
        for d in ctx.daemons:
            if not ok:
                print(d.transcript(), flush=True)
            await d.kill()
        rmtest.kill_children()
        ctx.cleanup()
    if ok:
        print(f"PASS {name} ({time.monotonic() - t0:.1f} s)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", nargs="?")
    ap.add_argument("--binary")
    ap.add_argument("--scratch")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        print("\n".join(SCENARIOS))
        sys.exit(0)
    if a.scenario not in SCENARIOS:
        ap.error(f"unknown scenario {a.scenario!r}; --list shows them")
    if not a.binary or not a.scratch:
        ap.error("--binary and --scratch are required")
    Path(a.scratch).mkdir(parents=True, exist_ok=True)
    ctx = rmtest.Ctx(a.binary, a.scratch)

    def on_signal(signum, _frame):
        # tests/daemon.rs sends SIGTERM when a scenario hangs: take the
        # daemons and tools down with us (and unmount what they held).
        rmtest.kill_children()
        ctx.cleanup(hurry=True)
        print(f"FAIL {a.scenario}: killed by signal {signum}", flush=True)
        os._exit(1)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        rc = asyncio.run(main(a.scenario, ctx, a.timeout))
    finally:
        rmtest.kill_children()
    sys.exit(rc)
