#!/usr/bin/env bash
# Issue 2's copy benchmark: ringmirror copy vs the fio copy ceiling, cp,
# nbdcopy, qemu-img convert (two ways) and dd, 4 GiB dense and 10%-data
# images, alternating, median of 3. See bench/copy_vs_peers.py --help.
#   bench/copy.sh                      # full run, updates bench/RESULTS.md
#   bench/copy.sh --size 512M --reps 1 --no-results   # quick smoke run
# Scratch: $RINGMIRROR_BENCH_DIR (default /var/tmp/ringmirror-bench, >= 20 GB free).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import numpy, matplotlib' 2>/dev/null || PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q numpy matplotlib
exec python3 bench/copy_vs_peers.py "$@"
