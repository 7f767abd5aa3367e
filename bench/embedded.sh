#!/usr/bin/env bash
# Issue 4's benchmark: the mirror job embedded, through the Disk handle (see bench/embedded.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/embedded.py "$@"
