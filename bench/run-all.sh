#!/usr/bin/env bash
# Runs the copy benchmark (issue 2) and the live-mirror benchmark (issues 4
# and 6) and regenerates their sections of bench/RESULTS.md ("machine",
# "copy", "mirror", between <!-- BEGIN/END --> markers; any other section,
# e.g. "## Bitmap (issue 3)", is left as it is) and bench/plots/*.png.
#
#   bench/run-all.sh                 # 3 repetitions, reference guest load
#   bench/run-all.sh --workloads all # + the four other guest workloads
#   bench/run-all.sh --reps 5 --keep
#
# Options: --reps N (default 3), --workloads LIST|all (default
# randwrite-4k-qd16), --keep (keep the scratch images), --skip-copy,
# --skip-mirror, --worktree (benchmark the work tree as it is, uncommitted
# changes included; by default the committed HEAD is exported with git
# archive and built in the scratch dir, so other engineers' work in progress
# is not measured). Scratch: $RINGMIRROR_BENCH_DIR (default
# /var/tmp/ringmirror-bench), a real disk with >= 20 GB free.
# Takes about 45 min with the defaults on the 2-core machine (see RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3 workloads=randwrite-4k-qd16 keep=0 copy=1 mirror=1 worktree=0
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps=$2; shift 2 ;;
    --workloads) workloads=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --skip-copy) copy=0; shift ;;
    --skip-mirror) mirror=0; shift ;;
    --worktree) worktree=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "run-all: unknown option $1" >&2; exit 2 ;;
  esac
done
cmdline="bench/run-all.sh --reps $reps --workloads $workloads"
start=$(date +%s)
la0=$(cut -d' ' -f1-3 /proc/loadavg)
dir=${RINGMIRROR_BENCH_DIR:-/var/tmp/ringmirror-bench}
mkdir -p "$dir"
avail=$(df --output=avail -B1 "$dir" | tail -1)
if [ "$avail" -lt 20000000000 ]; then
  echo "run-all: $dir has $((avail / 1000000000)) GB free; need 20 GB (set RINGMIRROR_BENCH_DIR)" >&2
  exit 1
fi

./scripts/install-deps.sh
python3 -c 'import numpy, matplotlib' 2>/dev/null || PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q numpy matplotlib
if [ $worktree = 1 ]; then
  echo "run-all: cargo build --release (work tree)"
  cargo build --release --quiet
  bin=target/release/ringmirror
  desc="$(git describe --always --dirty) work tree"
else
  rev=$(git rev-parse --short HEAD)
  echo "run-all: cargo build --release of HEAD $rev (git archive into $dir/src-head)"
  rm -rf "$dir/src-head"; mkdir -p "$dir/src-head"
  git archive HEAD | tar -x -C "$dir/src-head"
  CARGO_TARGET_DIR="$dir/target" cargo build --release --quiet --bin ringmirror \
    --manifest-path "$dir/src-head/Cargo.toml"
  bin="$dir/target/release/ringmirror"
  desc="$rev (HEAD, clean build)"
fi
# Snapshot the binary: nothing can swap it during the run.
cp "$bin" "$dir/ringmirror.bin"
export RINGMIRROR_BIN="$dir/ringmirror.bin"
export RINGMIRROR_BUILD_DESC="$desc"

status=0
if [ $copy = 1 ]; then
  bench/copy.sh --reps "$reps" > /dev/null || { echo "run-all: copy.sh FAILED" >&2; status=1; }
fi
if [ $mirror = 1 ]; then
  bench/mirror.sh --reps "$reps" --workloads "$workloads" > /dev/null \
    || { echo "run-all: mirror.sh FAILED" >&2; status=1; }
fi
python3 bench/machine_section.py "$(( $(date +%s) - start ))" "$cmdline" "$la0" > /dev/null
if [ $keep = 0 ]; then
  rm -f "$dir"/dense*.img "$dir"/sparse10*.img "$dir"/copy-dst.img "$dir"/mirror-tgt.img \
        "$dir"/ceiling-new.img "$dir/ringmirror.bin"
fi
echo "run-all: done in $(( ($(date +%s) - start) / 60 )) min; see bench/RESULTS.md"
exit $status
