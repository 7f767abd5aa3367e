#!/usr/bin/env bash
# Issues 4 and 6: live mirror of `ringmirror serve` vs qemu-storage-daemon,
# same QMP sequence, alternating, median of 3: no guest I/O (dense and 10%
# images) and guest workloads from fio-configs/ through the NBD export.
# See bench/mirror_vs_qsd.py --help.
#   bench/mirror.sh                                    # reference load only
#   bench/mirror.sh --workloads all                    # every guest workload
#   bench/mirror.sh --size 512M --reps 1 --load-secs 20 --baseline-secs 8 --no-results  # smoke
# Scratch: $RINGMIRROR_BENCH_DIR (default /var/tmp/ringmirror-bench, >= 20 GB free).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import numpy, matplotlib' 2>/dev/null || PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q numpy matplotlib
exec python3 bench/mirror_vs_qsd.py "$@"
