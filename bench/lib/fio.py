"""Run fio job files from fio-configs/ and parse their JSON and latency logs."""

import glob
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from .common import FIO_CONFIGS, rm_f

GUEST_WORKLOADS = ["randwrite-4k-qd16", "randrw-70-30-4k-qd32", "seqwrite-1m-qd8",
                   "zipf-hotset-4k", "fsync-heavy"]


class FioRun:
    """A fio process in the background on a guest workload through an NBD export."""

    def __init__(self, workload, uri, outdir, tag, runtime=600):
        self.workload = workload
        self.outdir = Path(outdir)
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.latprefix = str(self.outdir / f"{tag}")
        for f in glob.glob(self.latprefix + "_lat.*.log"):
            rm_f(f)
        self.json_path = self.outdir / f"{tag}.fio.json"
        env = dict(os.environ, NBD_URI=uri, RUNTIME=str(int(runtime)), LATLOG=self.latprefix)
        self.cmd = ["fio", "--output-format=json", f"--output={self.json_path}",
                    str(FIO_CONFIGS / f"{workload}.fio")]
        self.t_start = time.monotonic()
        self.wall_start = time.time()
        self.proc = subprocess.Popen(self.cmd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def stop(self, timeout=60):
        """SIGINT (fio ends its jobs and writes its JSON and logs), then wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.rc = self.proc.returncode
        self.stderr = err.decode(errors="replace")
        return self.rc

    def wait(self, timeout=None):
        out, err = self.proc.communicate(timeout=timeout)
        self.rc = self.proc.returncode
        self.stderr = err.decode(errors="replace")
        return self.rc

    def result(self):
        return parse_json(self.json_path)

    def latlog(self):
        return load_latlog(self.latprefix)


def parse_json(path):
    """Per-direction totals of the first job: iops, bw bytes/s, io bytes, errors."""
    txt = Path(path).read_text()
    # fio may print warnings before the JSON
    txt = txt[txt.index("{"):]
    d = json.loads(txt)
    j = d["jobs"][0]
    r = {"error": j.get("error", 0)}
    for ddir in ("read", "write", "sync"):
        x = j.get(ddir, {})
        r[ddir] = {"iops": x.get("iops", 0.0), "bw": x.get("bw_bytes", 0),
                   "io_bytes": x.get("io_bytes", 0), "total_ios": x.get("total_ios", 0)}
    return r


def load_latlog(prefix):
    """Concatenated per-I/O log of all jobs: a structured numpy array with
    t (completion, seconds since the epoch), lat (seconds), ddir, bs, off."""
    files = sorted(glob.glob(prefix + "_lat.*.log"))
    arrs = []
    for f in files:
        if os.path.getsize(f) == 0:
            continue
        a = np.loadtxt(f, delimiter=",", usecols=(0, 1, 2, 3, 4), dtype=np.int64, ndmin=2)
        arrs.append(a)
    if not arrs:
        return np.zeros(0, dtype=[("t", "f8"), ("lat", "f8"), ("ddir", "i1"),
                                  ("bs", "i8"), ("off", "i8")])
    a = np.concatenate(arrs)
    out = np.zeros(len(a), dtype=[("t", "f8"), ("lat", "f8"), ("ddir", "i1"),
                                  ("bs", "i8"), ("off", "i8")])
    out["t"] = a[:, 0] / 1e3
    out["lat"] = a[:, 1] / 1e9
    out["ddir"] = a[:, 2]
    out["bs"] = a[:, 3]
    out["off"] = a[:, 4]
    out.sort(order="t")
    return out


def window_stats(log_, t0, t1, ddir=None):
    """IOPS and latency percentiles (ms) of I/Os completing in [t0, t1)."""
    if t1 is None or t0 is None or t1 <= t0:
        return None
    m = (log_["t"] >= t0) & (log_["t"] < t1)
    if ddir is not None:
        m &= log_["ddir"] == ddir
    lat = log_["lat"][m]
    n = len(lat)
    if n == 0:
        return {"n": 0, "secs": t1 - t0, "iops": 0.0, "p50": None, "p99": None,
                "p999": None, "max": None}
    p = np.percentile(lat, [50, 99, 99.9]) * 1e3
    return {"n": int(n), "secs": t1 - t0, "iops": n / (t1 - t0), "p50": float(p[0]),
            "p99": float(p[1]), "p999": float(p[2]), "max": float(lat.max() * 1e3)}


def max_gap(log_, t0, t1):
    """Longest time (s) between consecutive completions within [t0, t1],
    counting the window edges, plus the largest latency of any I/O that was in
    flight during the window."""
    t = log_["t"]
    m = (t >= t0) & (t <= t1)
    tt = np.concatenate(([t0], t[m], [t1]))
    gap = float(np.diff(tt).max()) if len(tt) > 1 else t1 - t0
    issue = t - log_["lat"]
    inflight = (issue <= t1) & (t >= t0)
    maxlat = float(log_["lat"][inflight].max()) if inflight.any() else None
    return gap, maxlat


def stalls(log_, t0, t1):
    """(completion times, stall before each) for the completions from t0
    on, the stalls clipped to [t0, t1]: the time before that completion
    during which the guest had an I/O outstanding and none completed. An I/O
    was issued at t - lat; in the interval before the i-th completion the
    I/Os outstanding are those completing at or after it, so the stall there
    is that completion minus the later of the previous completion and their
    earliest issue. fio logs completions in whole ms, so a stall may read up
    to 1 ms long, never short. Outstanding means from fio's submission to
    fio's reaping: fio itself descheduled with I/Os queued counts; only a
    pause with nothing outstanding does not (then a gap is not a stall)."""
    order = np.argsort(log_["t"], kind="stable")
    t_all, lat_all = log_["t"][order], log_["lat"][order]
    m = t_all >= t0
    t = t_all[m]
    issued = t - lat_all[m]
    if len(t) == 0:
        return t, t
    in_flight_since = np.minimum.accumulate(issued[::-1])[::-1]
    starts = np.concatenate(([t0], t[:-1]))
    stall = np.minimum(t, t1) - np.maximum(starts, in_flight_since)
    keep = starts < t1
    return t[keep], np.maximum(stall[keep], 0.0)


def max_stall(log_, t0, t1):
    """Longest stall (s) within [t0, t1] (see `stalls`). With no completion
    from t0 on there is nothing to tell a hang from an idle guest: the whole
    window is returned, as max_gap does."""
    _, st = stalls(log_, t0, t1)
    return float(st.max()) if len(st) else t1 - t0


def written_blocks_after(log_, t, block=4096):
    """Set (numpy array) of block indices touched by writes that completed at
    or after time t (seconds since the epoch)."""
    m = (log_["ddir"] == 1) & (log_["t"] >= t)
    off = log_["off"][m]
    bs = log_["bs"][m]
    if len(off) == 0:
        return np.zeros(0, dtype=np.int64)
    if (bs == block).all() and (off % block == 0).all():
        return np.unique(off // block)
    parts = [np.arange(o // block, (o + b + block - 1) // block) for o, b in zip(off, bs)]
    return np.unique(np.concatenate(parts))
