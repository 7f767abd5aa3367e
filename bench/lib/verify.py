"""Byte-for-byte verification."""

import subprocess

import numpy as np

from .common import MiB


def cmp_files(a, b):
    """(equal, message) using cmp(1)."""
    p = subprocess.run(["cmp", str(a), str(b)], capture_output=True, text=True)
    if p.returncode == 0:
        return True, "identical"
    return False, (p.stdout + p.stderr).strip()


def differing_blocks(a, b, block=4096, chunk=64 * MiB):
    """Indices (numpy array) of the `block`-sized blocks that differ between two
    files of the same size."""
    out = []
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        base = 0
        while True:
            da = fa.read(chunk)
            db = fb.read(chunk)
            if not da and not db:
                break
            if len(da) != len(db):
                raise RuntimeError(f"sizes differ near offset {base}")
            if da != db:
                n = len(da) // block
                xa = np.frombuffer(da, dtype=np.uint64).reshape(n, block // 8)
                xb = np.frombuffer(db, dtype=np.uint64).reshape(n, block // 8)
                idx = np.nonzero((xa != xb).any(axis=1))[0]
                out.append(idx + base // block)
            base += len(da)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
