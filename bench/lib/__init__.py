"""Helpers of ringmirror's benchmark harness (bench/): images, page cache,
timing, the two daemons (qemu-storage-daemon and `ringmirror serve`) driven
with the same QMP sequence, fio through the NBD export, latency-log parsing,
CPU/RSS sampling, byte-for-byte verification, medians, markdown and plots.

Nothing here runs in CI; see bench/README.md.
"""
