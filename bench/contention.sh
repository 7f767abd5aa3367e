#!/usr/bin/env bash
# How a copy stream hurts a small-random-write guest on this disk, by
# request size (the measurement behind the mirror's 64 KiB requests while a
# guest is active; DESIGN.md "Pacing"). Pure fio, O_DIRECT, io_uring:
#   guest: 4 KiB random writes QD16 on SRC
#   copy:  sequential reads of SRC and writes of a second file, QD per side
#   bench/contention.sh [DIR]      (DIR: a real disk with 8 GB free; default $RINGMIRROR_BENCH_DIR or /var/tmp/ringmirror-bench)
set -euo pipefail
dir=${1:-${RINGMIRROR_BENCH_DIR:-/var/tmp/ringmirror-bench}}
mkdir -p "$dir"
src=$dir/contention-src.img; dst=$dir/contention-dst.img
[ -f "$src" ] || fio --name=fill --filename="$src" --rw=write --bs=4M --size=4G --ioengine=io_uring --direct=1 --output=/dev/null
truncate -s 4G "$dst"
run() { # bs qd
  if [ "$1" = none ]; then
    fio --name=g --filename="$src" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k --iodepth=16 \
        --time_based --runtime=8 --randrepeat=0 --norandommap --output-format=json
  else
    fio --ioengine=io_uring --direct=1 --time_based --runtime=8 --randrepeat=0 --norandommap --output-format=json \
        --name=g --filename="$src" --rw=randwrite --bs=4k --iodepth=16 \
        --name=r --filename="$src" --rw=read --bs="$1" --iodepth="$2" \
        --name=w --filename="$dst" --rw=write --bs="$1" --iodepth="$2"
  fi
}
printf '| copy requests | guest IOPS | guest p99 µs | copy read MB/s | copy write MB/s |\n|---|---|---|---|---|\n'
for cfg in "none 0" "64k 1" "64k 2" "128k 1" "256k 1" "1m 2" "4m 2"; do
  set -- $cfg
  run "$1" "$2" 2>/dev/null | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"]; g = j[0]["write"]
rd = "%.0f" % (j[1]["read"]["bw_bytes"] / 1e6) if len(j) > 1 else "-"
wr = "%.0f" % (j[2]["write"]["bw_bytes"] / 1e6) if len(j) > 1 else "-"
print("| %s | %d | %d | %s | %s |" % (sys.argv[1], g["iops"], g["clat_ns"]["percentile"]["99.000000"] // 1000, rd, wr))
' "$1 x QD$2"
done
rm -f "$dst"
