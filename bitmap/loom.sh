#!/usr/bin/env bash
# Model-checks the dirty bitmap's concurrent protocol with loom (tests/loom.rs).
# Uses its own target directory: `--cfg loom` changes every crate's flags and
# would otherwise evict the normal build from the shared target directory.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-target/loom}"
exec cargo test -p ringmirror-bitmap --release --test loom -- --test-threads=2 "$@"
