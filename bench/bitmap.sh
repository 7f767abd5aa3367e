#!/usr/bin/env bash
# Micro-benchmarks of the dirty bitmap (issue 3): marks/s, take-run
# throughput, find-next on a clean 64 TiB bitmap, counting, memory per TiB.
# Prints Markdown tables (the figures in bench/RESULTS.md come from here).
#   bench/bitmap.sh            all tables
#   bench/bitmap.sh mark       one table: mark | take | find | count | memory
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p ringmirror-bitmap --bench bitmap -- "$@"
