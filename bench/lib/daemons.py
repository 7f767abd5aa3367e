"""Start/stop qemu-storage-daemon and `ringmirror serve`, drive both with the
same QMP sequence, sample their CPU time, RSS and mirror progress.

The sequence (identical for both daemons):
  qmp_capabilities
  blockdev-add {driver: file, node-name: src, filename: SRC, aio: io_uring, cache: {direct: true}}
  blockdev-add {driver: file, node-name: tgt, filename: TGT, aio: io_uring, cache: {direct: true}}
  nbd-server-start {addr: {type: unix, data: {path: NBD_SOCK}}}
  block-export-add {type: nbd, id: exp0, node-name: src, writable: true}
  blockdev-mirror {job-id: mirror0, device: src, target: tgt, sync: full, copy-mode: MODE}
  ... BLOCK_JOB_READY ... block-job-complete {device: mirror0} ... BLOCK_JOB_COMPLETED
"""

import os
import subprocess
import threading
import time
from pathlib import Path

from .common import log, ringmirror_bin
from .qmp import QMP

CLK_TCK = os.sysconf("SC_CLK_TCK")
QSD = os.environ.get("QSD", "qemu-storage-daemon")
JOB = "mirror0"


def file_node(name, path):
    return {"driver": "file", "node-name": name, "filename": str(path),
            "aio": "io_uring", "cache": {"direct": True}}


class Daemon:
    """One daemon process (kind 'qsd' or 'ringmirror') in directory `d`."""

    def __init__(self, kind, d, tag="d"):
        self.kind = kind
        self.dir = Path(d)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.qmp_sock = self.dir / f"{tag}-qmp.sock"
        self.nbd_sock = self.dir / f"{tag}-nbd.sock"
        for s in (self.qmp_sock, self.nbd_sock):
            try:
                s.unlink()
            except FileNotFoundError:
                pass
        if kind == "qsd":
            argv = [QSD, "--chardev", f"socket,path={self.qmp_sock},server=on,wait=off,id=mon",
                    "--monitor", "chardev=mon"]
        elif kind == "ringmirror":
            argv = [ringmirror_bin(), "serve", "--qmp", str(self.qmp_sock)]
        else:
            raise ValueError(kind)
        self.argv = argv
        self.stderr_path = self.dir / f"{tag}-{kind}.stderr"
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=open(self.dir / f"{tag}-{kind}.stdout", "wb"),
                                     stderr=open(self.stderr_path, "wb"))
        self.pid = self.proc.pid
        deadline = time.monotonic() + 15
        while not self.qmp_sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not start: {self.stderr_path.read_text()[-2000:]}")
            time.sleep(0.01)
        self.qmp = QMP(self.qmp_sock)
        self.progress = []        # (t, offset, len, status)
        self._sampler = None
        self._stop_sampling = threading.Event()

    # -- the common QMP sequence -------------------------------------------
    def setup(self, src, tgt=None, export=True):
        self.qmp.cmd("blockdev-add", file_node("src", src))
        if tgt is not None:
            self.qmp.cmd("blockdev-add", file_node("tgt", tgt))
        if export:
            self.qmp.cmd("nbd-server-start",
                         {"addr": {"type": "unix", "data": {"path": str(self.nbd_sock)}}})
            self.qmp.cmd("block-export-add",
                         {"type": "nbd", "id": "exp0", "node-name": "src", "writable": True})
        return self

    @property
    def uri(self):
        return f"nbd+unix:///src?socket={self.nbd_sock}"

    def mirror(self, mode="background", **extra):
        args = {"job-id": JOB, "device": "src", "target": "tgt", "sync": "full",
                "copy-mode": mode}
        args.update(extra)
        t = time.monotonic()
        self.qmp.cmd("blockdev-mirror", args)
        return t

    def wait_ready(self, timeout, since=0.0):
        r = self.qmp.wait_event("BLOCK_JOB_READY", timeout, since)
        return r[0] if r else None

    def complete(self, timeout=120):
        """block-job-complete; returns (t_sent, t_reply, t_completed_event, event_data)."""
        t0 = time.monotonic()
        self.qmp.cmd("block-job-complete", {"device": JOB}, timeout=timeout)
        t1 = time.monotonic()
        ev = self.qmp.wait_event(("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), timeout, t0 - 0.001)
        if ev is None:
            raise TimeoutError(f"{self.kind}: no BLOCK_JOB_COMPLETED {timeout}s after complete")
        if ev[1]["event"] != "BLOCK_JOB_COMPLETED" or "error" in ev[1].get("data", {}):
            raise RuntimeError(f"{self.kind}: job ended with {ev[1]}")
        return t0, t1, ev[0], ev[1].get("data", {})

    def cancel(self, force=True, timeout=60):
        t0 = time.monotonic()
        try:
            self.qmp.cmd("block-job-cancel", {"device": JOB, "force": force})
        except Exception as e:  # already gone
            log(f"{self.kind}: cancel: {e}")
            return None
        ev = self.qmp.wait_event(("BLOCK_JOB_CANCELLED", "BLOCK_JOB_COMPLETED"), timeout, t0 - 0.001)
        return ev

    def query_job(self):
        for j in self.qmp.cmd("query-block-jobs"):
            if j.get("device") == JOB:
                return j
        return None

    # -- sampling ----------------------------------------------------------
    def start_sampling(self, period=0.15):
        def loop():
            while not self._stop_sampling.is_set():
                t = time.monotonic()
                try:
                    j = self.query_job()
                except Exception:
                    break
                if j is not None:
                    self.progress.append((t, j.get("offset"), j.get("len"), j.get("status")))
                self._stop_sampling.wait(period)
        self._sampler = threading.Thread(target=loop, daemon=True)
        self._sampler.start()

    def stop_sampling(self):
        self._stop_sampling.set()
        if self._sampler:
            self._sampler.join(5)

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is state (field 3); utime=14, stime=15 -> indices 11, 12
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_peak(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return None

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=20):
        self.stop_sampling()
        if self.alive():
            try:
                self.qmp.send("quit")
            except Exception:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.kind} pid {self.pid} did not quit in {timeout}s; killing it")
                self.proc.kill()
                self.proc.wait()
        try:
            self.qmp.close()
        except Exception:
            pass
        return self.proc.returncode

    def events(self):
        return [(t, m) for t, m in self.qmp.events]
