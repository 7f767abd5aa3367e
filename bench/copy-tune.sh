#!/usr/bin/env bash
# Which --buf-size / --request-size makes `ringmirror copy` fastest on this
# disk: alternating runs against the fio copy ceiling and `cp && sync`, page
# cache dropped before each, median per configuration (DESIGN.md, "The copy
# tool"). Needs root (drop_caches), fio, and a 4 GiB fully written SRC.
#   bench/copy-tune.sh [--reps N] SRC [CONFIG...]     CONFIG = BUF/REQ, e.g. 256M/4M
set -euo pipefail
reps=4
if [ "${1:-}" = --reps ]; then reps=$2; shift 2; fi
src=${1:?usage: bench/copy-tune.sh [--reps N] SRC [BUF/REQ...]}; shift
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(64M/4M 128M/4M 128M/1M 256M/4M 256M/1M 512M/4M)
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
rm_bin=$root/target/release/ringmirror
dst=$(dirname "$src")/copy-tune-dst.img
size=$(stat -c %s "$src")
out=$(mktemp)
trap 'rm -f "$dst" "$out"' EXIT
timed() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
for rep in $(seq "$reps"); do
  for cfg in ceiling "${configs[@]}" cp; do
    rm -f "$dst"; sync; echo 3 > /proc/sys/vm/drop_caches
    case $cfg in
      ceiling) truncate -s "$size" "$dst"
               d=$(timed fio --ioengine=io_uring --direct=1 --end_fsync=1 --fallocate=none \
                     --name=r --filename="$src" --rw=read --bs=1M --iodepth=32 --size="$size" \
                     --name=w --filename="$dst" --rw=write --bs=1M --iodepth=32 --size="$size") ;;
      cp) d=$(timed sh -c "cp '$src' '$dst' && sync") ;;
      *) d=$(timed "$rm_bin" copy -q --buf-size "${cfg%/*}" --request-size "${cfg#*/}" "$src" "$dst") ;;
    esac
    echo "rep$rep $cfg $d" | tee -a "$out" >&2
  done
done
python3 - "$out" <<'PY'
import collections, statistics, sys
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    _, cfg, secs = line.split()
    d[cfg].append(float(secs))
print("| config | median s | runs (s) |\n|---|---|---|")
for cfg, v in d.items():
    print(f"| {cfg} | {statistics.median(v):.2f} | {', '.join('%.2f' % x for x in v)} |")
PY
