#!/usr/bin/env python3
"""Writes the "machine" section of bench/RESULTS.md: the machine, tool
versions, the exact run-all command and how long it took.
Usage: machine_section.py SECONDS 'COMMAND LINE' LOADAVG_AT_START"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.common import machine_info  # noqa: E402
from lib.report import table, update_section  # noqa: E402

secs, cmdline, la0 = float(sys.argv[1]), sys.argv[2], sys.argv[3]
i = machine_info()
rows = [["CPU", f"{i['nproc']} × {i['cpu']}"], ["RAM", i["ram"]],
        ["scratch disk", (lambda f: f"`{f[0]}` {f[1]}, {f[2]}, {f[3]} free" if len(f) >= 4 else i["disk"])(
            i["disk"].split()) + " (virtio, " + i["disk_model"].replace(";", " ").strip() + ")"],
        ["kernel", i["kernel"]], ["fio", i["fio"]], ["qemu", i["qemu"]], ["nbdcopy", i["nbdcopy"]],
        ["ringmirror", f"`{i['ringmirror']}` (binary sha256 {i['ringmirror_bin']})"],
        ["load average", f"{la0} at the start, {i['loadavg']} at the end (shared machine: other "
                         "engineers' builds and tests may run; the harness waits for rustc before "
                         "each repetition)"]]
body = "\n".join([
    "## Machine and run",
    "",
    table(["", ""], rows),
    "",
    f"Produced by `{cmdline}` on {i['date']}: **{secs / 60:.0f} min** for the whole run "
    "(install check, release build, images, copy and mirror benchmarks, plots).",
    "Absolute timings on this machine drift 15-30%: read the ratios measured in the same run.",
])
update_section("machine", body)
print(body)
