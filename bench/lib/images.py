"""Benchmark images: a fully written random image and a 10%-data sparse one.

Both are deterministic (seeded) and written once per scratch dir; `ensure_*`
reuses an existing image of the right size and allocation."""

import os
from pathlib import Path

import numpy as np

from .common import GiB, KiB, MiB, allocated_bytes, log

CHUNK = 64 * MiB


def _rand(rng, n):
    return rng.integers(0, 256, size=n, dtype=np.uint8).tobytes() if n < 4096 else \
        rng.bytes(n)


def make_dense(path, size=4 * GiB, seed=1):
    """Every byte written with pseudo-random data (incompressible, no zero blocks)."""
    rng = np.random.default_rng(seed)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(rng.bytes(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sparse_extents(size, fraction=0.10, seed=2, align=64 * KiB):
    """Non-overlapping scattered extents (64 KiB..4 MiB, 64 KiB aligned) covering
    `fraction` of `size`; returns a sorted list of (offset, length)."""
    rng = np.random.default_rng(seed)
    want = int(size * fraction)
    sizes_choice = [64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB]
    slots = size // align
    used = np.zeros(slots, dtype=bool)
    exts, total = [], 0
    while total < want:
        ln = int(rng.choice(sizes_choice))
        ln = min(ln, want - total)
        ln = max(align, (ln + align - 1) // align * align)
        n = ln // align
        s = int(rng.integers(0, slots - n))
        # keep a gap of one slot on each side so extents stay separate
        lo, hi = max(0, s - 1), min(slots, s + n + 1)
        if used[lo:hi].any():
            continue
        used[s:s + n] = True
        exts.append((s * align, ln))
        total += ln
    return sorted(exts)


def make_sparse10(path, size=4 * GiB, seed=2):
    rng = np.random.default_rng(seed + 100)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.truncate(size)
        for off, ln in sparse_extents(size, seed=seed):
            f.seek(off)
            f.write(rng.bytes(ln))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ensure_dense(path, size=4 * GiB):
    p = Path(path)
    if p.exists() and p.stat().st_size == size and allocated_bytes(p) >= size:
        return p
    log(f"making {size / GiB:g} GiB dense random image {p}")
    make_dense(p, size)
    return p


def ensure_sparse10(path, size=4 * GiB):
    p = Path(path)
    if p.exists() and p.stat().st_size == size and 0.09 * size <= allocated_bytes(p) <= 0.12 * size:
        return p
    log(f"making {size / GiB:g} GiB image with 10% data in scattered extents {p}")
    make_sparse10(p, size)
    return p
