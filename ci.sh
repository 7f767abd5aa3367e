#!/usr/bin/env bash
# The whole test suite, as CI runs it on a fresh machine:
#   ./ci.sh
# Installs what the tests need (scripts/install-deps.sh), then checks
# formatting and lints, runs every crate's tests (unit, differential,
# end-to-end with real clients and servers) and the loom model of the
# dirty bitmap. Tests use scratch files under target/test-scratch on the
# real disk (never tmpfs): set RINGMIRROR_TEST_DIR to put them elsewhere.
set -euo pipefail
cd "$(dirname "$0")"
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "install dependencies"
./scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "build"
cargo build --workspace --all-targets

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --test-threads 2
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast -- --test-threads 2
fi

step "loom model of the dirty bitmap"
./bitmap/loom.sh

step "done"
