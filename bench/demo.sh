#!/usr/bin/env bash
# The first thing to run: a live mirror under a guest write load, verified.
#   bench/demo.sh [--keep] [--size GiB] [--load-secs S]
# Installs what is needed (scripts/install-deps.sh, numpy), builds the
# release binary, makes a 1 GiB image in $RINGMIRROR_BENCH_DIR/demo (default
# /var/tmp/ringmirror-bench/demo; a real disk, not tmpfs), starts
# `ringmirror serve`, runs fio (nbd engine) through its NBD export for ~30 s,
# mirrors during it, waits for READY, completes, verifies that the target
# equalled the source at the switch and that every acknowledged guest write
# landed, and prints a summary. Exits non-zero on any failure. Images are
# removed at the end unless --keep. --guest-share P sets x-guest-share.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
python3 -c 'import numpy' 2>/dev/null || PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q numpy
echo "demo: cargo build --release"
cargo build --release --quiet
export RINGMIRROR_BIN="$PWD/target/release/ringmirror"
exec python3 bench/demo.py "$@"
