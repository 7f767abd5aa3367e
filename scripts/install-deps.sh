#!/usr/bin/env bash
# Installs what ringmirror's tests, demo and benchmarks need on a fresh
# Debian machine: the real clients and servers the tests run against
# (qemu-img/qemu-io/qemu-nbd/qemu-storage-daemon, nbdkit, nbdinfo/nbdcopy,
# fio with its nbd engine), e2fsprogs for the ENOSPC test, and the Python
# qemu.qmp client. Idempotent: does nothing when everything is present.
set -euo pipefail

need_apt=()
for pair in fio:fio nbdkit:nbdkit nbdinfo:libnbd-bin nbdcopy:libnbd-bin \
            qemu-img:qemu-utils qemu-io:qemu-utils qemu-nbd:qemu-utils \
            qemu-storage-daemon:qemu-utils mkfs.ext4:e2fsprogs chattr:e2fsprogs \
            socat:socat setpriv:util-linux prlimit:util-linux; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${need_apt[@]}" | sort -u | tr '\n' ' ')
  echo "install-deps: apt-get install -y $pkgs"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $pkgs >/dev/null
fi

if ! python3 -c 'import qemu.qmp' >/dev/null 2>&1; then
  echo "install-deps: pip install qemu.qmp"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q qemu.qmp
fi

if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
  echo "install-deps: cargo-nextest not found; the tests will run with cargo test"
fi
