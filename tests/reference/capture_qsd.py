#!/usr/bin/env python3
"""Capture ground-truth QMP behaviour of qemu-storage-daemon's mirror job.

Starts a fresh qemu-storage-daemon (QSD) per scenario, drives it over QMP with
qemu.qmp.QMPClient and records, in wire order, every command sent, the exact
reply (return or error) and every event (timestamps stripped).  One JSON file
per scenario is written to tests/reference/qsd/<scenario>.json.

Scratch images live under <repo>/target/qsd-ref (a real disk: cache.direct
needs O_DIRECT, which tmpfs lacks).

Layout of each output file:
  {"scenario", "description", "qsd_argv", "timing_dependent", "steps": [...]}
  steps are, in the order they were received from the daemon:
    {"send": {...}, "reply": {...}}         a command and its reply; the entry
                                            sits where the *reply* arrived, so
                                            events emitted while the command
                                            ran appear before it
    {"event": NAME, "data": {...}}          an event, timestamp removed
    {"check": NAME, ...}                    an out-of-band observation (file
                                            contents, qemu-img compare, ...)
    {"note": "..."}                         commentary
  errors-json.json uses a raw socket instead (it must send malformed bytes):
    {"send_raw": "...", "replies": [...]} / {"send": {...}, "replies": [...]}

Usage: python3 tests/reference/capture_qsd.py [scenario ...]
"""

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from qemu.qmp import QMPClient
from qemu.qmp.message import Message
from qemu.qmp.qmp_client import ExecInterruptedError

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "reference" / "qsd"
SCRATCH = REPO / "target" / "qsd-ref"
QSD = os.environ.get("QSD", "/usr/bin/qemu-storage-daemon")
MiB = 1 << 20
SIZE = 64 * MiB

# Fields whose values depend on timing; a comparison must normalise them.
TIMING_DEPENDENT = {
    "events": {
        "BLOCK_JOB_COMPLETED": ["len", "offset"],
        "BLOCK_JOB_CANCELLED": ["len", "offset"],
        "BLOCK_JOB_READY": ["len", "offset"],
        "BLOCK_JOB_PENDING": [],
        "JOB_STATUS_CHANGE": [],
    },
    "query-block-jobs": ["len", "offset", "busy", "paused (only right after a pause/resume request)"],
    "query-jobs": ["current-progress", "total-progress"],
    "ordering": "A command's reply may in principle arrive before or after events the job "
                "emits concurrently (in these runs 'paused'/'standby'/'running' after pause/resume "
                "always came before the reply, because the verb kicks the sleeping job "
                "synchronously); "
                "events emitted synchronously by the command itself (created/running on "
                "blockdev-mirror, concluded/null on job-dismiss) always precede its reply.",
    "drain_flaps": "Graph changes drain every node, which pauses jobs briefly: extra "
                   "JOB_STATUS_CHANGE pairs paused->running (or standby->ready) appear when "
                   "another blockdev-mirror is attempted/started, and during quit. Their number "
                   "is an artefact of QEMU's drain implementation, not a user-visible state.",
    "error_event_count": "The number of BLOCK_JOB_ERROR events with on-target-error=report equals the "
                         "number of requests in flight when the target failed (timing-dependent).",
    "other": "ids (__qmp#NNNNN), the implicit mirror_top node name (#blockNNN) and file paths "
             "are run-specific",
}

_children = []


def kill_children():
    for p in _children:
        if p.returncode is None:
            try:
                p.kill()
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------
# image helpers

def make_source(path, size=SIZE):
    """Deterministic data: 0..48 MiB random, 48..56 MiB hole, 56..64 MiB pattern."""
    rnd = random.Random(1234)
    with open(path, "wb") as f:
        f.truncate(size)
        if size:
            data_end = min(size, 48 * MiB)
            f.seek(0)
            f.write(rnd.randbytes(data_end))
            if size > 56 * MiB:
                f.seek(56 * MiB)
                f.write(bytes([0xA5]) * (size - 56 * MiB))
        f.flush()
        os.fsync(f.fileno())


def make_blank(path, size=SIZE):
    with open(path, "wb") as f:
        f.truncate(size)
        os.fsync(f.fileno())


def file_node(name, path):
    return {"driver": "file", "node-name": name, "filename": str(path),
            "aio": "io_uring", "cache": {"direct": True}}


def read_range(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


# ---------------------------------------------------------------------------
# recording QMP client

class Recorder(QMPClient):
    """QMPClient that appends every inbound message to a list in wire order."""

    def __init__(self, steps):
        super().__init__("qsd-ref")
        self.steps = steps
        self.pending_index = {}

    async def _on_message(self, msg):
        d = json.loads(bytes(msg))
        if "event" in d:
            self.steps.append({"event": d["event"], "data": d.get("data", {})})
        else:
            mid = d.get("id")
            self.pending_index[mid] = len(self.steps)
            self.steps.append({"_reply": d})
        await super()._on_message(msg)


class QMPError(Exception):
    pass


class Scenario:
    def __init__(self, name, description):
        self.name = name
        self.description = description
        self.dir = SCRATCH / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.sock = self.dir / "qmp.sock"
        self.nbd_sock = self.dir / "nbd.sock"
        self.steps = []
        self.ev_cursor = 0
        self.proc = None
        self.client = None
        self.argv = None
        self.extra = {}

    def p(self, fname):
        return self.dir / fname

    # -- daemon lifecycle -------------------------------------------------
    async def start(self, connect=True):
        self.argv = [QSD, "--chardev",
                     f"socket,path={self.sock},server=on,wait=off,id=mon",
                     "--monitor", "chardev=mon"]
        self.stderr_path = self.dir / "qsd.stderr"
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=subprocess.DEVNULL,
            stdout=open(self.dir / "qsd.stdout", "wb"),
            stderr=open(self.stderr_path, "wb"))
        _children.append(self.proc)
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"QSD did not start: {self.stderr_path.read_text()}")
            await asyncio.sleep(0.01)
        if connect:
            self.client = Recorder(self.steps)
            for _ in range(200):
                try:
                    await self.client.connect(str(self.sock))
                    break
                except Exception:
                    await asyncio.sleep(0.02)
            else:
                raise RuntimeError("cannot connect to QSD monitor")

    async def stop(self):
        if self.client is not None:
            try:
                await self.client.disconnect()
            except Exception:
                pass
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    # -- commands ---------------------------------------------------------
    async def cmd(self, execute, arguments=None, ok=None, timeout=15):
        """Send a command, record {"send", "reply"} at the reply's position.

        ok=True: raise if error; ok=False: raise if success; None: either.
        """
        msg = Message({"execute": execute})
        if arguments is not None:
            msg["arguments"] = arguments
        reply = await asyncio.wait_for(self.client._execute(msg), timeout)
        reply = json.loads(bytes(reply))
        sent = json.loads(bytes(msg))
        idx = self.client.pending_index.pop(sent["id"])
        assert self.steps[idx]["_reply"] == reply
        self.steps[idx] = {"send": sent, "reply": reply}
        if ok is True and "error" in reply:
            raise QMPError(f"{execute} failed: {reply}")
        if ok is False and "error" not in reply:
            raise QMPError(f"{execute} unexpectedly succeeded: {reply}")
        return reply

    async def ret(self, execute, arguments=None):
        return (await self.cmd(execute, arguments, ok=True))["return"]

    def note(self, text):
        self.steps.append({"note": text})

    def check(self, name, **kw):
        self.steps.append({"check": name, **kw})

    # -- events -----------------------------------------------------------
    async def wait_event(self, name, pred=None, timeout=20):
        """Wait for the next event NAME (matching pred) after the cursor."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self.ev_cursor, len(self.steps)):
                st = self.steps[i]
                if st.get("event") == name and (pred is None or pred(st["data"])):
                    self.ev_cursor = i + 1
                    return st["data"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: timed out waiting for {name}")
            await asyncio.sleep(0.005)

    def mark(self):
        """Only events received from now on satisfy the next wait_event()."""
        self.ev_cursor = len(self.steps)

    async def wait_status(self, job, status, timeout=20):
        return await self.wait_event(
            "JOB_STATUS_CHANGE",
            lambda d: d.get("id") == job and d.get("status") == status, timeout)

    async def settle(self, secs=0.3):
        await asyncio.sleep(secs)

    # -- common setup -----------------------------------------------------
    async def setup_basic(self, tgt_size=SIZE, src_size=SIZE, export=True,
                          src="src", tgt="tgt"):
        make_source(self.p(f"{src}.raw"), src_size)
        make_blank(self.p(f"{tgt}.raw"), tgt_size)
        await self.ret("blockdev-add", file_node(src, self.p(f"{src}.raw")))
        await self.ret("blockdev-add", file_node(tgt, self.p(f"{tgt}.raw")))
        if export:
            await self.ret("nbd-server-start",
                           {"addr": {"type": "unix", "data": {"path": str(self.nbd_sock)}}})
            await self.ret("block-export-add",
                           {"type": "nbd", "id": "exp0", "node-name": src,
                            "name": src, "writable": True})

    async def qemu_io(self, export, command):
        uri = f"nbd+unix:///{export}?socket={self.nbd_sock}"
        proc = await asyncio.create_subprocess_exec(
            "qemu-io", "-f", "raw", uri, "-c", command,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _children.append(proc)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def qemu_img_compare(self, a, b):
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", "compare", "-U", "-f", "raw", "-F", "raw", str(a), str(b),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _children.append(proc)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return {"rc": proc.returncode, "stdout": out.decode().strip(),
                "stderr": err.decode().strip()}

    async def qemu_img_map(self, path):
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", "map", "-U", "-f", "raw", "--output=json", str(path),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _children.append(proc)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        try:
            m = json.loads(out)
        except ValueError:
            m = out.decode()
        return {"rc": proc.returncode, "map": m, "stderr": err.decode().strip()}

    def save(self):
        for st in self.steps:
            assert "_reply" not in st, st
        stderr = self.stderr_path.read_text() if self.argv else ""
        doc = {
            "scenario": self.name,
            "description": self.description,
            "qsd_argv": [str(a) for a in self.argv] if self.argv else None,
            "timing_dependent": TIMING_DEPENDENT,
            **self.extra,
            "steps": self.steps,
        }
        if stderr:
            doc["qsd_stderr"] = stderr
        OUT.mkdir(parents=True, exist_ok=True)
        with open(OUT / f"{self.name}.json", "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")


def mirror_args(job="job0", device="src", target="tgt", sync="full", **kw):
    a = {"job-id": job, "device": device, "target": target, "sync": sync}
    a.update(kw)
    return a


# ---------------------------------------------------------------------------
# scenarios

async def sc_session(s):
    s.extra["greeting"] = json.loads(json.dumps(s.client.greeting._asdict()))
    s.note("qmp_capabilities was sent by QMPClient.connect() (reply not routed through the "
           "recorder; it is {\"return\": {}}, see errors-json.json)")
    await s.ret("query-version")
    r = await s.ret("query-commands")
    names = sorted(c["name"] for c in r)
    # replace the bulky reply with the sorted names only
    for st in s.steps:
        if st.get("send", {}).get("execute") == "query-commands":
            st["reply"] = {"return_names_sorted": names, "id": st["reply"].get("id")}
    r = await s.ret("query-events") if "query-events" in names else None
    ev = await s.cmd("query-qmp-schema") if "query-qmp-schema" in names else None
    if ev is not None:
        schema = ev.get("return", [])
        evnames = sorted(e["name"] for e in schema if e.get("meta-type") == "event")
        for st in s.steps:
            if st.get("send", {}).get("execute") == "query-qmp-schema":
                st["reply"] = {"event_names_sorted": evnames, "id": st["reply"].get("id")}


async def sc_complete(s):
    await s.setup_basic()
    await s.ret("blockdev-mirror", mirror_args())
    await s.wait_event("BLOCK_JOB_READY")
    await s.ret("query-block-jobs")
    await s.ret("query-jobs")
    nodes = await s.ret("query-named-block-nodes", {"flat": True})
    s.check("node-names-while-ready", names=[n["node-name"] for n in nodes],
            drivers=[n["drv"] for n in nodes])
    await s.ret("block-job-complete", {"device": "job0"})
    await s.wait_event("BLOCK_JOB_COMPLETED")
    await s.wait_status("job0", "null")
    await s.settle()
    await s.ret("query-block-jobs")
    await s.ret("query-jobs")
    await s.ret("query-named-block-nodes", {"flat": True})
    await s.cmd("query-block-exports")
    s.check("qemu-img-compare-src-tgt", **await s.qemu_img_compare(s.p("src.raw"), s.p("tgt.raw")))
    s.check("qemu-img-map-src", **await s.qemu_img_map(s.p("src.raw")))
    s.check("qemu-img-map-tgt", **await s.qemu_img_map(s.p("tgt.raw")))
    rc, out, err = await s.qemu_io("src", "write -P 0x77 0 64k")
    s.check("nbd-write-after-complete", qemu_io_rc=rc,
            export_write="write -P 0x77 0 64k on export 'src' (which was created on node 'src')",
            lands_on_target_file=read_range(s.p("tgt.raw"), 0, 65536) == b"\x77" * 65536,
            lands_on_source_file=read_range(s.p("src.raw"), 0, 65536) == b"\x77" * 65536)


async def sc_auto_finalize_false(s):
    await s.setup_basic()
    await s.ret("blockdev-mirror", mirror_args(**{"auto-finalize": False, "auto-dismiss": False}))
    await s.wait_event("BLOCK_JOB_READY")
    await s.ret("query-jobs")
    await s.ret("block-job-complete", {"device": "job0"})
    await s.wait_status("job0", "pending")
    await s.settle(0.2)
    await s.ret("query-jobs")
    await s.ret("query-block-jobs")
    s.note("wrong verbs while pending")
    await s.cmd("block-job-complete", {"device": "job0"})
    await s.cmd("job-dismiss", {"id": "job0"})
    await s.cmd("block-job-pause", {"device": "job0"})
    await s.cmd("block-job-set-speed", {"device": "job0", "speed": 1})
    # guest write while pending: where does it land after finalize?
    rc, out, err = await s.qemu_io("src", "write -P 0x5a 1M 64k")
    s.check("nbd-write-while-pending", qemu_io_rc=rc, write="write -P 0x5a 1M 64k",
            on_source_file=read_range(s.p("src.raw"), MiB, 65536) == b"\x5a" * 65536,
            on_target_file=read_range(s.p("tgt.raw"), MiB, 65536) == b"\x5a" * 65536)
    await s.ret("job-finalize", {"id": "job0"})
    await s.wait_status("job0", "concluded")
    await s.settle(0.2)
    await s.ret("query-jobs")
    await s.ret("query-block-jobs")
    s.note("wrong verbs while concluded")
    await s.cmd("job-finalize", {"id": "job0"})
    await s.cmd("block-job-cancel", {"device": "job0"})
    await s.cmd("job-cancel", {"id": "job0"})
    await s.ret("job-dismiss", {"id": "job0"})
    await s.settle(0.2)
    await s.ret("query-jobs")
    await s.cmd("query-block-exports")
    rc, out, err = await s.qemu_io("src", "read -P 0x5a 1M 64k")
    s.check("export-read-after-finalize", read="read -P 0x5a 1M 64k (pattern check)",
            qemu_io_rc=rc, pattern_matches="Pattern verification failed" not in out + err,
            on_target_file=read_range(s.p("tgt.raw"), MiB, 65536) == b"\x5a" * 65536)


async def sc_cancel_before_ready(s):
    await s.setup_basic()
    await s.ret("blockdev-mirror", mirror_args(speed=MiB))
    await s.wait_status("job0", "running")
    await asyncio.sleep(0.5)
    await s.ret("query-block-jobs")
    await s.ret("block-job-cancel", {"device": "job0"})
    await s.wait_event("BLOCK_JOB_CANCELLED")
    await s.wait_status("job0", "null")
    await s.settle()
    await s.ret("query-block-jobs")
    await s.ret("query-jobs")
    s.note("job1: user-paused before ready, then block-job-cancel (no force), then job-cancel")
    make_source(s.p("src2.raw"))
    make_blank(s.p("tgt2.raw"))
    await s.ret("blockdev-add", file_node("src2", s.p("src2.raw")))
    await s.ret("blockdev-add", file_node("tgt2", s.p("tgt2.raw")))
    await s.ret("blockdev-mirror", mirror_args(job="job1", device="src2", target="tgt2", speed=MiB))
    await s.wait_status("job1", "running")
    await asyncio.sleep(0.2)
    await s.ret("block-job-pause", {"device": "job1"})
    await s.wait_status("job1", "paused")
    await s.cmd("block-job-cancel", {"device": "job1"})
    await s.cmd("job-cancel", {"id": "job1"})
    await s.wait_status("job1", "null")
    await s.settle()
    await s.ret("query-jobs")


async def sc_force_cancel_ready(s):
    await s.setup_basic()
    await s.ret("blockdev-mirror", mirror_args())
    await s.wait_event("BLOCK_JOB_READY")
    await s.ret("block-job-cancel", {"device": "job0", "force": True})
    await s.wait_status("job0", "null")
    await s.settle()
    await s.ret("query-block-jobs")
    await s.cmd("query-block-exports")
    s.check("qemu-img-compare-src-tgt", **await s.qemu_img_compare(s.p("src.raw"), s.p("tgt.raw")))


async def sc_soft_cancel_ready(s):
    await s.setup_basic()
    await s.ret("blockdev-mirror", mirror_args())
    await s.wait_event("BLOCK_JOB_READY")
    await s.ret("block-job-cancel", {"device": "job0"})
    await s.wait_status("job0", "null")
    await s.settle()
    await s.ret("query-block-jobs")
    await s.cmd("query-block-exports")
    s.check("qemu-img-compare-src-tgt", **await s.qemu_img_compare(s.p("src.raw"), s.p("tgt.raw")))
    rc, out, err = await s.qemu_io("src", "write -P 0x77 0 64k")
    s.check("nbd-write-after-soft-cancel", qemu_io_rc=rc,
            lands_on_source_file=read_range(s.p("src.raw"), 0, 65536) == b"\x77" * 65536,
            lands_on_target_file=read_range(s.p("tgt.raw"), 0, 65536) == b"\x77" * 65536)


async def sc_pause_resume(s):
    await s.setup_basic()
    await s.ret("blockdev-mirror", mirror_args(speed=MiB))
    await s.wait_status("job0", "running")
    await asyncio.sleep(0.3)
    await s.ret("block-job-pause", {"device": "job0"})
    await s.ret("query-block-jobs")
    await s.wait_status("job0", "paused")
    await s.ret("query-block-jobs")
    await s.ret("query-jobs")
    await s.ret("block-job-resume", {"device": "job0"})
    await s.wait_status("job0", "running")
    await s.ret("query-block-jobs")
    await s.ret("block-job-set-speed", {"device": "job0", "speed": 0})
    await s.wait_event("BLOCK_JOB_READY")
    await s.ret("block-job-pause", {"device": "job0"})
    await s.wait_status("job0", "standby")
    await s.ret("query-block-jobs")
    await s.ret("query-jobs")
    await s.ret("block-job-resume", {"device": "job0"})
    await s.wait_status("job0", "ready")
    await s.ret("query-block-jobs")
    s.note("job-pause / job-resume (generic verbs) while ready")
    await s.ret("job-pause", {"id": "job0"})
    await s.wait_status("job0", "standby")
    await s.ret("job-resume", {"id": "job0"})
    await s.wait_status("job0", "ready")
    s.note("soft cancel while in standby (user-paused in ready)")
    await s.ret("block-job-pause", {"device": "job0"})
    await s.wait_status("job0", "standby")
    await s.cmd("block-job-cancel", {"device": "job0"})
    await s.settle(0.2)
    await s.ret("query-jobs")
    s.note("force cancel while in standby")
    await s.cmd("block-job-cancel", {"device": "job0", "force": True})
    await s.wait_status("job0", "null")
    await s.settle()
    await s.cmd("query-block-exports")


async def cleanup_jobs(s):
    for j in await s.ret("query-jobs"):
        s.mark()
        if j["status"] == "concluded":
            await s.cmd("job-dismiss", {"id": j["id"]})
        else:
            await s.cmd("block-job-cancel", {"device": j["id"], "force": True})
        await s.wait_status(j["id"], "null")


async def sc_wrong_verbs(s):
    await s.setup_basic()
    make_blank(s.p("tgt2.raw"))
    make_blank(s.p("small.raw"), 32 * MiB)
    make_blank(s.p("big.raw"), 128 * MiB)
    make_source(s.p("src2.raw"))
    make_blank(s.p("tgt3.raw"))
    for n in ("tgt2", "small", "big", "src2", "tgt3"):
        await s.ret("blockdev-add", file_node(n, s.p(f"{n}.raw")))
    s.note("argument validation with no job running; after each attempt any job it "
           "started is force-cancelled (cleanup steps are recorded too)")
    attempts = [mirror_args(job="bad", target="tgt2", granularity=g)
                for g in (1000, 256, 536870912, 128 * MiB, 0)]
    attempts += [
        mirror_args(job="bad", target="src"),
        mirror_args(job="bad", target="small"),
        mirror_args(job="bad", target="big"),
        mirror_args(job="bad", device="nope", target="tgt2"),
        mirror_args(job="bad", target="nope"),
        mirror_args(job="bad", target="tgt2", speed=-1),
        mirror_args(job="bad", target="tgt2", **{"buf-size": -1}),
        mirror_args(job="bad", target="tgt2", **{"buf-size": 0}),
        mirror_args(job="bad", target="tgt2", **{"buf-size": 1000}),
        mirror_args(job="bad id", target="tgt2"),
        mirror_args(job="", target="tgt2"),
        {"device": "src", "target": "tgt2", "sync": "full"},
        mirror_args(job="bad", target="tgt2", sync="incremental"),
        mirror_args(job="bad", target="tgt2", sync="none", bitmap="nobitmap"),
        mirror_args(job="bad", target="tgt2", **{"on-source-error": "enospc"}),
        mirror_args(job="bad", target="tgt2", replaces="tgt"),
    ]
    for a in attempts:
        await s.cmd("blockdev-mirror", a)
        await s.settle(0.05)
        await cleanup_jobs(s)
    await s.ret("query-jobs")

    s.note("job0 running (speed limited)")
    await s.ret("blockdev-mirror", mirror_args(speed=MiB))
    await s.wait_status("job0", "running")
    await s.cmd("block-job-complete", {"device": "job0"})
    await s.cmd("job-complete", {"id": "job0"})
    await s.cmd("job-finalize", {"id": "job0"})
    await s.cmd("block-job-finalize", {"id": "job0"})
    await s.cmd("job-dismiss", {"id": "job0"})
    await s.cmd("block-job-dismiss", {"id": "job0"})
    await s.cmd("block-job-resume", {"device": "job0"})
    await s.cmd("job-resume", {"id": "job0"})
    await s.cmd("block-job-pause", {"device": "job0"})
    await s.cmd("block-job-pause", {"device": "job0"})
    await s.cmd("job-pause", {"id": "job0"})
    await s.wait_status("job0", "paused")
    await s.cmd("block-job-complete", {"device": "job0"})
    await s.cmd("block-job-resume", {"device": "job0"})
    await s.cmd("block-job-resume", {"device": "job0"})
    await s.wait_status("job0", "running")
    s.note("unknown job")
    for verb, args in (("block-job-cancel", {"device": "nope"}),
                       ("block-job-pause", {"device": "nope"}),
                       ("block-job-resume", {"device": "nope"}),
                       ("block-job-complete", {"device": "nope"}),
                       ("block-job-set-speed", {"device": "nope", "speed": 0}),
                       ("block-job-finalize", {"id": "nope"}),
                       ("block-job-dismiss", {"id": "nope"}),
                       ("block-job-change", {"id": "nope", "type": "mirror",
                                             "copy-mode": "write-blocking"}),
                       ("job-cancel", {"id": "nope"}),
                       ("job-pause", {"id": "nope"}),
                       ("job-resume", {"id": "nope"}),
                       ("job-complete", {"id": "nope"}),
                       ("job-finalize", {"id": "nope"}),
                       ("job-dismiss", {"id": "nope"})):
        await s.cmd(verb, args)
    s.note("set-speed")
    await s.cmd("block-job-set-speed", {"device": "job0", "speed": -1})
    await s.cmd("block-job-set-speed", {"device": "job0", "speed": -1048576})
    s.note("second job while job0 runs")
    await s.cmd("blockdev-mirror", mirror_args(job="job1", target="tgt2"))
    await s.cmd("blockdev-mirror", mirror_args(job="job1", device="src2", target="tgt"))
    await s.cmd("blockdev-mirror", mirror_args(job="job0", device="src2", target="tgt3"))
    await s.cmd("blockdev-mirror", mirror_args(job="job1", device="tgt", target="tgt3"))
    await s.cmd("blockdev-del", {"node-name": "src"})
    await s.cmd("blockdev-del", {"node-name": "tgt"})
    await s.settle(0.1)
    await s.ret("query-jobs")

    s.note("complete in standby (paused while ready)")
    await s.ret("block-job-set-speed", {"device": "job0", "speed": 0})
    await s.wait_event("BLOCK_JOB_READY")
    await s.ret("block-job-pause", {"device": "job0"})
    await s.wait_status("job0", "standby")
    await s.cmd("block-job-complete", {"device": "job0"})
    await s.settle(0.5)
    await s.ret("query-block-jobs")
    await s.ret("query-jobs")
    await s.cmd("block-job-complete", {"device": "job0"})
    await s.ret("block-job-resume", {"device": "job0"})
    try:
        await s.wait_status("job0", "null", timeout=5)
    except TimeoutError:
        s.note("job did not finish within 5 s after resume")
    await s.settle()
    await s.ret("query-block-jobs")
    await s.cmd("query-block-exports")
    await s.ret("query-named-block-nodes", {"flat": True})


async def sc_sync_none(s):
    await s.setup_basic()
    await s.ret("blockdev-mirror", mirror_args(sync="none"))
    await s.wait_event("BLOCK_JOB_READY")
    await s.ret("query-block-jobs")
    rc, out, err = await s.qemu_io("src", "write -P 0x3c 2M 1M")
    s.check("nbd-write-during-ready", write="write -P 0x3c 2M 1M", qemu_io_rc=rc)
    await asyncio.sleep(0.3)
    await s.ret("query-block-jobs")
    await s.ret("block-job-complete", {"device": "job0"})
    await s.wait_status("job0", "null")
    await s.settle()
    tgt = s.p("tgt.raw")
    s.check("target-contents",
            written_range_on_target=read_range(tgt, 2 * MiB, MiB) == b"\x3c" * MiB,
            first_mib_of_target_is_zero=read_range(tgt, 0, MiB) == bytes(MiB),
            last_mib_of_target_is_zero=read_range(tgt, SIZE - MiB, MiB) == bytes(MiB))


async def sc_sync_top(s):
    await s.setup_basic()
    await s.ret("blockdev-mirror", mirror_args(sync="top"))
    await s.wait_event("BLOCK_JOB_READY")
    await s.ret("query-block-jobs")
    await s.ret("block-job-complete", {"device": "job0"})
    await s.wait_status("job0", "null")
    await s.settle()
    s.check("qemu-img-compare-src-tgt", **await s.qemu_img_compare(s.p("src.raw"), s.p("tgt.raw")))


async def sc_write_blocking(s):
    await s.setup_basic()
    make_source(s.p("src2.raw"))
    make_blank(s.p("tgt2.raw"))
    await s.ret("blockdev-add", file_node("src2", s.p("src2.raw")))
    await s.ret("blockdev-add", file_node("tgt2", s.p("tgt2.raw")))
    s.note("job0: copy-mode write-blocking from the start, speed limited")
    await s.ret("blockdev-mirror", mirror_args(speed=MiB, **{"copy-mode": "write-blocking"}))
    await s.wait_status("job0", "running")
    await asyncio.sleep(0.2)
    await s.ret("query-block-jobs")
    await s.ret("block-job-set-speed", {"device": "job0", "speed": 0})
    await s.wait_event("BLOCK_JOB_READY", lambda d: d["device"] == "job0")
    await s.ret("query-block-jobs")
    await asyncio.sleep(0.2)
    await s.ret("query-block-jobs")
    rc, out, err = await s.qemu_io("src", "write -P 0x11 4M 64k")
    s.check("nbd-write-in-ready-write-blocking", qemu_io_rc=rc,
            on_target_immediately=read_range(s.p("tgt.raw"), 4 * MiB, 65536) == b"\x11" * 65536)
    await s.ret("query-block-jobs")
    await s.ret("block-job-cancel", {"device": "job0", "force": True})
    await s.wait_status("job0", "null")

    s.note("job1: background, switched to write-blocking with block-job-change while running")
    await s.ret("blockdev-mirror", mirror_args(job="job1", device="src2", target="tgt2", speed=MiB))
    await s.wait_status("job1", "running")
    await asyncio.sleep(0.2)
    await s.ret("query-block-jobs")
    await s.cmd("block-job-change", {"id": "job1", "type": "mirror", "copy-mode": "write-blocking"})
    await s.ret("query-block-jobs")
    await s.cmd("block-job-change", {"id": "job1", "type": "mirror", "copy-mode": "write-blocking"})
    await s.cmd("block-job-change", {"id": "job1", "type": "mirror", "copy-mode": "background"})
    await s.cmd("block-job-change", {"id": "job1", "type": "commit"})
    await s.cmd("block-job-change", {"id": "job1", "type": "mirror"})
    await s.ret("block-job-set-speed", {"device": "job1", "speed": 0})
    await s.wait_event("BLOCK_JOB_READY", lambda d: d["device"] == "job1")
    await s.ret("query-block-jobs")
    await asyncio.sleep(0.2)
    await s.ret("query-block-jobs")
    await s.ret("block-job-cancel", {"device": "job1", "force": True})
    await s.wait_status("job1", "null")

    s.note("job2: background until ready, then block-job-change in ready")
    await s.ret("blockdev-mirror", mirror_args(job="job2", device="src2", target="tgt2"))
    await s.wait_event("BLOCK_JOB_READY", lambda d: d["device"] == "job2")
    await s.ret("query-block-jobs")
    await s.cmd("block-job-change", {"id": "job2", "type": "mirror", "copy-mode": "write-blocking"})
    await s.ret("query-block-jobs")
    await asyncio.sleep(0.2)
    await s.ret("query-block-jobs")
    await s.ret("block-job-complete", {"device": "job2"})
    await s.wait_status("job2", "null")
    await s.settle()


async def sc_zero_length(s):
    await s.setup_basic(tgt_size=0, src_size=0)
    await s.ret("blockdev-mirror", mirror_args())
    await s.wait_event("BLOCK_JOB_READY")
    await s.ret("query-block-jobs")
    await s.ret("block-job-complete", {"device": "job0"})
    await s.wait_status("job0", "null")
    await s.settle()


async def sc_set_speed(s):
    await s.setup_basic()
    await s.ret("blockdev-mirror", mirror_args(speed=MiB))
    await s.wait_status("job0", "running")
    await asyncio.sleep(0.2)
    await s.ret("query-block-jobs")
    await s.ret("block-job-set-speed", {"device": "job0", "speed": 2 * MiB})
    await s.ret("query-block-jobs")
    await s.ret("query-jobs")
    rc, out, err = await s.qemu_io("src", "write -P 0x22 0 1M")
    s.check("nbd-write-into-already-copied-range", write="write -P 0x22 0 1M", qemu_io_rc=rc)
    await s.ret("query-block-jobs")
    await s.ret("block-job-set-speed", {"device": "job0", "speed": 0})
    await s.wait_event("BLOCK_JOB_READY")
    await s.ret("query-block-jobs")
    await s.ret("block-job-set-speed", {"device": "job0", "speed": 12345})
    await s.ret("query-block-jobs")
    await s.ret("block-job-cancel", {"device": "job0"})
    await s.wait_status("job0", "null")
    await s.settle()


async def sc_quit_during_job(s):
    await s.setup_basic()
    make_source(s.p("src2.raw"))
    make_blank(s.p("tgt2.raw"))
    await s.ret("blockdev-add", file_node("src2", s.p("src2.raw")))
    await s.ret("blockdev-add", file_node("tgt2", s.p("tgt2.raw")))
    await s.ret("blockdev-mirror", mirror_args(job="job1", device="src2", target="tgt2"))
    await s.wait_event("BLOCK_JOB_READY")
    await s.ret("blockdev-mirror", mirror_args(speed=MiB))
    await s.wait_status("job0", "running")
    await asyncio.sleep(0.3)
    await s.ret("query-jobs")
    s.note("quit with job0 running (speed limited) and job1 ready")
    msg = Message({"execute": "quit"})
    try:
        reply = await asyncio.wait_for(s.client._execute(msg), 10)
        reply = json.loads(bytes(reply))
        sent = json.loads(bytes(msg))
        idx = s.client.pending_index.pop(sent["id"])
        s.steps[idx] = {"send": sent, "reply": reply}
    except ExecInterruptedError:
        s.steps.append({"send": json.loads(bytes(msg)), "reply": None,
                        "note": "connection closed before a reply"})
    rc = await asyncio.wait_for(s.proc.wait(), 10)
    # let the reader notice EOF
    for _ in range(100):
        if s.client.runstate.name != "RUNNING":
            break
        await asyncio.sleep(0.01)
    s.check("daemon-exit", exit_code=rc, client_runstate_after=s.client.runstate.name)


async def sc_target_error(s):
    """Target write errors injected with blkdebug, for each on-target-error policy."""
    make_source(s.p("src.raw"))
    await s.ret("blockdev-add", file_node("src", s.p("src.raw")))
    policies = [("report", False), ("stop", True), ("ignore", True), ("enospc", True)]
    for i, (policy, once) in enumerate(policies):
        job = f"job-{policy}"
        make_blank(s.p(f"t{i}.raw"))
        await s.ret("blockdev-add", file_node(f"t{i}file", s.p(f"t{i}.raw")))
        await s.ret("blockdev-add", {
            "driver": "blkdebug", "node-name": f"t{i}", "image": f"t{i}file",
            "inject-error": [{"event": "pwritev", "iotype": "write", "errno": 5 if policy != "enospc" else 28,
                              "once": once}]})
        s.note(f"on-target-error={policy}, blkdebug errno {'ENOSPC' if policy == 'enospc' else 'EIO'}, once={once}")
        s.mark()
        await s.ret("blockdev-mirror", mirror_args(job=job, target=f"t{i}", **{"on-target-error": policy}))
        try:
            if policy in ("stop", "enospc"):
                await s.wait_event("BLOCK_JOB_ERROR", timeout=10)
                await s.settle(0.3)
                await s.ret("query-block-jobs")
                await s.ret("query-jobs")
                await s.cmd("block-job-resume", {"device": job})
            if policy != "report":
                await s.wait_event("BLOCK_JOB_READY", lambda d: d["device"] == job, timeout=10)
                await s.ret("query-block-jobs")
                await s.ret("block-job-cancel", {"device": job, "force": True})
            await s.wait_status(job, "null", timeout=10)
        except TimeoutError as e:
            s.note(f"timeout: {e}")
            await cleanup_jobs(s)
        await s.settle(0.2)


# -- raw socket scenario ------------------------------------------------------

class RawConn:
    def __init__(self, path):
        self.path = path
        self.sync_n = 0

    async def open(self, timeout=5):
        self.reader, self.writer = await asyncio.open_unix_connection(str(self.path))
        return await self.read(timeout)

    async def read(self, timeout=3):
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        if not line:
            raise EOFError
        return json.loads(line)

    async def close(self):
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except Exception:
            pass

    async def exchange(self, data, timeout=3):
        """Send raw bytes, then a sync probe; return everything before the probe's reply."""
        self.sync_n += 1
        sync_id = f"sync-{self.sync_n}"
        self.writer.write(data)
        await self.writer.drain()
        await asyncio.sleep(0.05)
        self.writer.write(json.dumps({"execute": "query-version", "id": sync_id}).encode())
        await self.writer.drain()
        out = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                m = await self.read(max(0.05, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return out, "sync-timeout"
            except EOFError:
                return out, "eof"
            if m.get("id") == sync_id:
                return out, ("sync-ok" if "return" in m else f"sync-error:{m}")
            out.append(m)


async def sc_errors_json(s):
    await s.start(connect=False)
    steps = s.steps
    make_source(s.p("src.raw"))
    make_blank(s.p("tgt.raw"))
    c = RawConn(s.sock)
    greeting = await c.open()
    steps.append({"greeting": greeting})
    s.note("each raw send is followed by a sync probe {\"execute\":\"query-version\",\"id\":\"sync-N\"} "
           "(sent without a newline); 'replies' are the messages received before the probe's reply; "
           "'sync' says whether the probe got a normal reply afterwards (connection still usable)")

    async def raw(data, label=None):
        out, sync = await c.exchange(data)
        try:
            txt = data.decode()
            st = {"send_raw": txt}
        except UnicodeDecodeError:
            st = {"send_raw_hex": data.hex()}
        if label:
            st["label"] = label
        st["replies"] = out
        st["sync"] = sync
        steps.append(st)
        return out, sync

    async def obj(o, label=None):
        out, sync = await c.exchange(json.dumps(o).encode())
        st = {"send": o}
        if label:
            st["label"] = label
        st["replies"] = out
        st["sync"] = sync
        steps.append(st)
        return out

    s.note("before qmp_capabilities")
    await obj({"execute": "query-version"}, "command before capabilities, no id")
    await obj({"execute": "query-version", "id": 7}, "command before capabilities, numeric id")
    await obj({"execute": "blockdev-add", "arguments": {"driver": "file"}}, "blockdev-add before capabilities")
    await obj({"execute": "no-such-command"}, "unknown command before capabilities")
    await raw(b'{"execute": "query-version",}', "malformed before capabilities")
    await obj({"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}},
              "qmp_capabilities with unknown capability")
    await obj({"execute": "qmp_capabilities", "id": "caps"}, "qmp_capabilities")
    await obj({"execute": "qmp_capabilities", "id": "caps2"}, "qmp_capabilities twice")

    s.note("malformed / non-object input after capabilities")
    await raw(b'{"execute": "query-version",}', "trailing comma")
    await raw(b'not json\n', "bare word")
    await raw(b'}', "stray close brace")
    await raw(b']', "stray close bracket")
    await raw(b'"a string"', "top-level string")
    await raw(b'[1, 2]', "top-level array")
    await raw(b'42', "top-level number")
    await raw(b'null', "top-level null")
    await raw(b'{}', "empty object")
    await raw(b"{'execute': 'query-version'}", "single-quoted strings (QEMU extension)")
    await raw(b'{"execute": "query-version", "id": 1}{"execute": "query-version", "id": 2}',
              "two objects, no separator")
    await raw(b'\n\n  \r\n', "whitespace only")
    await raw(b'{"execute": "\xff"}', "invalid UTF-8")
    await raw(b'{"execute": "query-\\u0076ersion", "id": "esc"}', "unicode escape in command name")
    await raw(b'{"execute": "query-version", "id": 1, "id": 2}', "duplicate key")
    s.note("well-formed JSON, bad QMP envelope")
    await obj({"id": 3}, "missing execute")
    await obj({"arguments": {}}, "missing execute, arguments only")
    await obj({"execute": 1}, "execute not a string")
    await obj({"execute": "query-version", "arguments": []}, "arguments not an object")
    await obj({"execute": "query-version", "foo": 1}, "extra envelope member")
    await obj({"exec-oob": "query-version"}, "exec-oob without oob capability")
    await obj({"execute": "query-version", "exec-oob": "query-version"}, "both execute and exec-oob")
    await obj({"execute": "no-such-command", "id": "x"}, "unknown command")
    await obj({"execute": "query-version", "arguments": {"x": 1}}, "argument to a no-arg command")
    s.note("id echo")
    await obj({"execute": "query-version", "id": {"a": [1, 2]}}, "object id")
    await obj({"execute": "query-version", "id": "__qmp#00001"}, "string id")
    await obj({"execute": "query-version", "id": None}, "null id")
    await obj({"execute": "query-version", "id": 1.5}, "float id")

    s.note("blockdev-add argument errors")
    src = str(s.p("src.raw"))
    await obj({"execute": "blockdev-add", "arguments": {}}, "blockdev-add no args")
    await obj({"execute": "blockdev-add", "arguments": {"node-name": "a", "filename": src}}, "no driver")
    await obj({"execute": "blockdev-add", "arguments": {"driver": "bogus", "node-name": "a"}}, "unknown driver")
    await obj({"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "a"}}, "file without filename")
    await obj({"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "a",
                                                        "filename": src, "bogus": 1}}, "extra arg")
    await obj({"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "a",
                                                        "filename": 5}}, "filename wrong type")
    await obj({"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "a",
                                                        "filename": src, "aio": "bogus"}}, "bad aio enum")
    await obj({"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "a",
                                                        "filename": src, "cache": {"direct": "yes"}}},
              "cache.direct wrong type")
    await obj({"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "a",
                                                        "filename": str(s.p("missing.raw"))}}, "missing file")
    await obj({"execute": "blockdev-add", "arguments": {"driver": "file", "filename": src}}, "no node-name")
    await obj({"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "1bad",
                                                        "filename": src}}, "invalid node-name")
    await obj({"execute": "blockdev-add", "arguments": file_node("src", s.p("src.raw"))}, "ok src")
    await obj({"execute": "blockdev-add", "arguments": file_node("src", s.p("tgt.raw"))}, "duplicate node-name")
    await obj({"execute": "blockdev-add", "arguments": file_node("tgt", s.p("tgt.raw"))}, "ok tgt")
    await obj({"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "r", "file": "src"}},
              "raw over file")
    await obj({"execute": "blockdev-add", "arguments": {"driver": "nbd", "node-name": "n",
                                                        "server": {"type": "unix", "path": str(s.p("none.sock"))}}},
              "nbd node, server not listening")
    await obj({"execute": "blockdev-del", "arguments": {"node-name": "nope"}}, "blockdev-del unknown")

    s.note("blockdev-mirror argument errors")
    await obj({"execute": "blockdev-mirror", "arguments": {}}, "no args")
    await obj({"execute": "blockdev-mirror", "arguments": {"device": "src"}}, "missing target/sync")
    await obj({"execute": "blockdev-mirror", "arguments": {"device": "src", "target": "tgt"}}, "missing sync")
    await obj({"execute": "blockdev-mirror", "arguments": mirror_args(bogus=1)}, "extra arg")
    await obj({"execute": "blockdev-mirror", "arguments": mirror_args(sync="bogus")}, "bad sync enum")
    await obj({"execute": "blockdev-mirror", "arguments": mirror_args(speed="fast")}, "speed string")
    await obj({"execute": "blockdev-mirror", "arguments": mirror_args(speed=1.5)}, "speed float")
    await obj({"execute": "blockdev-mirror", "arguments": mirror_args(granularity=-1)}, "granularity negative")
    await obj({"execute": "blockdev-mirror", "arguments": mirror_args(granularity=1 << 33)}, "granularity > u32")
    await obj({"execute": "blockdev-mirror", "arguments": mirror_args(**{"copy-mode": "bogus"})}, "bad copy-mode")
    await obj({"execute": "blockdev-mirror", "arguments": mirror_args(**{"on-source-error": "bogus"})},
              "bad on-source-error")
    await obj({"execute": "blockdev-mirror", "arguments": mirror_args(**{"auto-finalize": "yes"})},
              "auto-finalize string")
    await obj({"execute": "blockdev-mirror", "arguments": mirror_args(**{"job-id": 5})}, "job-id int")
    await obj({"execute": "drive-mirror", "arguments": {"device": "src", "target": str(s.p("x.raw")),
                                                        "sync": "full", "format": "raw", "mode": "existing"}},
              "drive-mirror on a node name")
    await obj({"execute": "block-job-set-speed", "arguments": {"device": "x"}}, "set-speed missing speed")
    await obj({"execute": "block-job-set-speed", "arguments": {"device": "x", "speed": "1"}}, "set-speed string")
    await obj({"execute": "block-job-cancel", "arguments": {}}, "cancel missing device")
    await obj({"execute": "block-job-cancel", "arguments": {"device": "x", "force": 1}}, "force not bool")

    s.note("nbd-server-start / block-export-add errors")
    nbd = str(s.nbd_sock)
    await obj({"execute": "nbd-server-start", "arguments": {}}, "no addr")
    await obj({"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "path": nbd}}},
              "flat (non-legacy) socket address form")
    await obj({"execute": "nbd-server-start", "arguments": {"addr": {"type": "bogus", "data": {}}}}, "bad type")
    await obj({"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {}}}}, "unix without path")
    await obj({"execute": "nbd-server-start", "arguments": {"addr": {"type": "inet", "data": {"host": "127.0.0.1"}}}},
              "inet without port")
    await obj({"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": nbd}},
                                                            "bogus": 1}}, "extra arg")
    await obj({"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e", "node-name": "src"}},
              "export before server start")
    await obj({"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": nbd}}}}, "ok")
    await obj({"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": nbd}}}},
              "start twice")
    await obj({"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e"}}, "export missing node-name")
    await obj({"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e", "node-name": "nope"}},
              "export unknown node")
    await obj({"execute": "block-export-add", "arguments": {"type": "bogus", "id": "e", "node-name": "src"}},
              "export bad type")
    await obj({"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e", "node-name": "src"}}, "ok")
    await obj({"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e", "node-name": "tgt"}},
              "duplicate export id")
    await obj({"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e2", "node-name": "src"}},
              "second export, same default name (node name)")
    await obj({"execute": "nbd-server-add", "arguments": {"device": "tgt"}}, "legacy nbd-server-add")
    await obj({"execute": "query-block-exports"}, "query-block-exports")

    s.note("second concurrent connection while this one is open")
    c2 = RawConn(s.sock)
    try:
        g2 = await c2.open(timeout=1.0)
        steps.append({"check": "second-concurrent-connection", "greeting": g2})
    except (asyncio.TimeoutError, EOFError, OSError) as e:
        steps.append({"check": "second-concurrent-connection",
                      "greeting": None, "outcome": type(e).__name__})
    s.note("close and reconnect: a new session starts with a new greeting")
    await c.close()
    await asyncio.sleep(0.2)
    try:
        g3 = await c2.read(timeout=2.0)
        steps.append({"check": "queued-second-connection-after-first-closed", "greeting": g3})
        await c2.close()
    except Exception as e:
        steps.append({"check": "queued-second-connection-after-first-closed", "greeting": None,
                      "outcome": type(e).__name__})
        await c2.close()
    await asyncio.sleep(0.2)
    c = RawConn(s.sock)
    greeting = await c.open()
    steps.append({"check": "reconnect", "greeting": greeting})
    await obj({"execute": "query-version"}, "after reconnect, before capabilities")
    await obj({"execute": "qmp_capabilities"}, "capabilities, no id")
    await obj({"execute": "query-named-block-nodes", "arguments": {"flat": True}, "id": "nodes"},
              "state survives reconnect")
    await c.close()


SCENARIOS = [
    ("session", sc_session, "greeting, query-version, query-commands names, event names"),
    ("complete", sc_complete, "sync=full mirror, ready, complete, export follows the target"),
    ("auto-finalize-false", sc_auto_finalize_false,
     "auto-finalize=false auto-dismiss=false: ready, complete, pending, finalize, concluded, dismiss"),
    ("cancel-before-ready", sc_cancel_before_ready, "speed=1M job cancelled while running"),
    ("force-cancel-ready", sc_force_cancel_ready, "ready, block-job-cancel force=true"),
    ("soft-cancel-ready", sc_soft_cancel_ready, "ready, block-job-cancel (no force)"),
    ("pause-resume", sc_pause_resume, "pause/resume while running (paused) and while ready (standby)"),
    ("wrong-verbs", sc_wrong_verbs, "verbs in the wrong state, bad arguments, complete in standby"),
    ("sync-none", sc_sync_none, "sync=none on raw"),
    ("sync-top", sc_sync_top, "sync=top on raw (no backing)"),
    ("write-blocking", sc_write_blocking, "copy-mode write-blocking and block-job-change"),
    ("target-error", sc_target_error, "blkdebug-injected target write errors per on-target-error policy"),
    ("zero-length", sc_zero_length, "0-byte source and target"),
    ("set-speed", sc_set_speed, "block-job-set-speed while running and ready"),
    ("quit-during-job", sc_quit_during_job, "quit with one job running and one ready"),
    ("errors-json", sc_errors_json, "raw-socket protocol errors and argument errors"),
]


async def run_one(name, fn, desc):
    s = Scenario(name, desc)
    t0 = time.monotonic()
    try:
        if name != "errors-json":
            await s.start()
        await fn(s)
        status = "ok"
    except Exception as e:
        s.steps.append({"note": f"SCRIPT ERROR: {type(e).__name__}: {e}"})
        status = f"ERROR {type(e).__name__}: {e}"
    finally:
        await s.stop()
    s.save()
    print(f"{name:22s} {time.monotonic() - t0:6.2f}s {status}", flush=True)
    return status == "ok"


async def main(argv):
    SCRATCH.mkdir(parents=True, exist_ok=True)
    wanted = set(argv)
    ok = True
    for name, fn, desc in SCENARIOS:
        if wanted and name not in wanted:
            continue
        ok &= await run_one(name, fn, desc)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        rc = asyncio.run(main(sys.argv[1:]))
    finally:
        kill_children()
    sys.exit(rc)
