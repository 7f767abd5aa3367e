"""Helpers for the daemon end-to-end scenarios (tests/daemon/run.py).

A `Daemon` is one `ringmirror serve --qmp SOCK` (or one qemu-storage-daemon,
for the side-by-side scenarios) started in its own directory under the
scenario's scratch dir, driven with the real `qemu.qmp` asyncio client.
Everything the daemon sends (events and replies) is recorded in wire order
in `Daemon.steps`, so scenarios can assert exact event sequences and where a
reply fell among the events.

Every child process (daemons, qemu-io, qemu-nbd, fio, ...) is registered in
CHILDREN and killed by `kill_children()` when the scenario ends, whatever
happened.
"""

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from qemu.qmp import QMPClient
from qemu.qmp.message import Message
from qemu.qmp.qmp_client import ExecInterruptedError

MiB = 1 << 20
KiB = 1 << 10
QSD = os.environ.get("QSD", "/usr/bin/qemu-storage-daemon")

# Generous limits: they only keep a broken daemon from hanging the suite.
EVENT_TIMEOUT = 30
COMMAND_TIMEOUT = 30

CHILDREN = []


def kill_children():
    for p in CHILDREN:
        if p.returncode is None:
            try:
                p.kill()
            except ProcessLookupError:
                pass


class Failure(AssertionError):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def eq(actual, expected, what):
    if actual != expected:
        raise Failure(f"{what}:\n    expected {expected!r}\n    actual   {actual!r}")


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------
# images

def make_source(path, size=32 * MiB, seed=1234):
    """Deterministic source image: the first 3/4 random data, then a hole of
    1/8, then the byte 0xA5 (the same layout as tests/reference/capture_qsd.py,
    scaled to `size`)."""
    rnd = random.Random(seed)
    data_end, hole_end = size * 3 // 4, size * 7 // 8
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(rnd.randbytes(data_end))
        f.seek(hole_end)
        f.write(b"\xa5" * (size - hole_end))
        f.flush()
        os.fsync(f.fileno())
    return path


def make_blank(path, size=32 * MiB):
    with open(path, "wb") as f:
        f.truncate(size)
        os.fsync(f.fileno())
    return path


def read_range(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def first_difference(a, b):
    """None when the files are byte-for-byte equal, else a description."""
    sa, sb = os.path.getsize(a), os.path.getsize(b)
    if sa != sb:
        return f"sizes differ: {sa} != {sb}"
    off = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(4 * MiB), fb.read(4 * MiB)
            if x != y:
                i = next(i for i in range(min(len(x), len(y))) if x[i] != y[i])
                return f"first difference at offset {off + i}: {x[i]:#04x} != {y[i]:#04x}"
            if not x:
                return None
            off += len(x)


def assert_same_file(a, b, what="images"):
    d = first_difference(a, b)
    check(d is None, f"{what}: {a} and {b} differ: {d}")


def data_extents(path):
    """[(offset, length, is_data)] of a file from SEEK_DATA/SEEK_HOLE,
    merged, covering the whole file."""
    size = os.path.getsize(path)
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        while off < size:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                d = size
            if d > off:
                out.append((off, d - off, False))
            if d >= size:
                break
            h = os.lseek(fd, d, os.SEEK_HOLE)
            out.append((d, h - d, True))
            off = h
    finally:
        os.close(fd)
    return merge_extents(out)


def merge_extents(ext):
    out = []
    for off, n, kind in ext:
        if out and out[-1][2] == kind and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + n, kind)
        else:
            out.append((off, n, kind))
    return out


# ---------------------------------------------------------------------------
# external programs

async def run(*argv, timeout=60, stdin=None, cwd=None):
    """Run a program; returns (rc, stdout, stderr) as text."""
    proc = await asyncio.create_subprocess_exec(
        *[str(a) for a in argv], stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    CHILDREN.append(proc)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise Failure(f"{argv[0]} did not finish within {timeout} s: {' '.join(map(str, argv))}")
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def run_ok(*argv, timeout=60):
    rc, out, err = await run(*argv, timeout=timeout)
    check(rc == 0, f"{' '.join(map(str, argv))} failed (rc {rc}):\n{out}\n{err}")
    return out


async def qemu_img_compare(a, b, fmt_a="raw", fmt_b="raw"):
    """`qemu-img compare` (with -U: QSD holds locks on its images)."""
    rc, out, err = await run("qemu-img", "compare", "-U", "-f", fmt_a, "-F", fmt_b, a, b)
    check(rc == 0 and "Images are identical" in out,
          f"qemu-img compare {a} {b}: rc {rc}: {out.strip()} {err.strip()}")


def nbd_uri(sock, export):
    return f"nbd+unix:///{export}?socket={sock}"


# ---------------------------------------------------------------------------
# the daemon

def file_node(name, path, **extra):
    node = {"driver": "file", "node-name": name, "filename": str(path),
            "aio": "io_uring", "cache": {"direct": True}}
    node.update(extra)
    return node


def mirror_args(job="job0", device="src", target="tgt", sync="full", **kw):
    a = {"job-id": job, "device": device, "target": target, "sync": sync}
    a.update(kw)
    return a


class QmpError(Failure):
    def __init__(self, execute, reply):
        super().__init__(f"{execute} failed: {reply}")
        self.reply = reply


class Recorder(QMPClient):
    """The qemu.qmp client, recording every inbound message in wire order."""

    def __init__(self, name, steps):
        super().__init__(name)
        self.steps = steps

    async def _on_message(self, msg):
        d = json.loads(bytes(msg))
        if "event" in d:
            ts = d.get("timestamp", {})
            self.steps.append({"event": d["event"], "data": d.get("data", {}), "ts": ts})
        else:
            self.steps.append({"reply": d})
        await super()._on_message(msg)


class Daemon:
    """One daemon (ringmirror or QSD) with a QMP client connected to it."""

    def __init__(self, ctx, name="rm", kind="ringmirror"):
        self.ctx, self.name, self.kind = ctx, name, kind
        self.dir = ctx.scratch / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "qmp.sock"
        self.nbd_sock = self.dir / "nbd.sock"
        self.steps = []
        self.cursor = 0
        self.proc = None
        self.client = None
        self.exit_code = None
        ctx.daemons.append(self)

    def p(self, fname):
        return self.dir / fname

    def argv(self):
        if self.kind == "ringmirror":
            return [str(self.ctx.binary), "serve", "--qmp", str(self.sock)]
        return [QSD, "--chardev", f"socket,path={self.sock},server=on,wait=off,id=mon",
                "--monitor", "chardev=mon"]

    async def start(self, connect=True):
        self.stderr_path = self.dir / "daemon.stderr"
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv(), stdin=subprocess.DEVNULL,
            stdout=open(self.dir / "daemon.stdout", "wb"), stderr=open(self.stderr_path, "wb"))
        CHILDREN.append(self.proc)
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            check(self.proc.returncode is None,
                  f"{self.kind} exited with {self.proc.returncode} before listening: {self.stderr()}")
            check(time.monotonic() < deadline, f"{self.kind}: no socket {self.sock} after 30 s")
            await asyncio.sleep(0.01)
        if connect:
            self.client = await self.connect_client(self.steps)
        return self

    async def connect_client(self, steps, name=None):
        client = Recorder(name or f"{self.name}-client", steps)
        deadline = time.monotonic() + 30
        while True:
            try:
                await client.connect(str(self.sock))
                return client
            except Exception as e:  # the socket file may exist before listen()
                if time.monotonic() > deadline:
                    raise Failure(f"cannot connect to {self.sock}: {e}") from e
                await asyncio.sleep(0.02)

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- commands -----------------------------------------------------------
    async def cmd(self, execute, arguments=None, timeout=COMMAND_TIMEOUT):
        """Send a command; returns the raw reply dict. The reply's position
        among the events is recorded in self.steps (as {"reply", "execute"})."""
        msg = Message({"execute": execute})
        if arguments is not None:
            msg["arguments"] = arguments
        try:
            reply = await asyncio.wait_for(self.client._execute(msg), timeout)
        except asyncio.TimeoutError:
            raise Failure(f"{self.kind}: no reply to {execute} {arguments} within {timeout} s")
        reply = json.loads(bytes(reply))
        for st in reversed(self.steps):
            if "reply" in st and st["reply"].get("id") == msg["id"]:
                st["execute"] = execute
                st["arguments"] = arguments
                break
        return reply

    async def ret(self, execute, arguments=None, **kw):
        reply = await self.cmd(execute, arguments, **kw)
        if "error" in reply:
            raise QmpError(execute, reply)
        return reply["return"]

    async def err(self, execute, arguments, desc, cls="GenericError"):
        """The command must fail with exactly this class and description."""
        reply = await self.cmd(execute, arguments)
        check("error" in reply, f"{execute} {arguments} should have failed with {desc!r}: {reply}")
        eq((reply["error"]["class"], reply["error"]["desc"]), (cls, desc),
           f"{self.kind}: error of {execute} {json.dumps(arguments)}")

    # -- events -------------------------------------------------------------
    def mark(self):
        """Only events received from now on satisfy the next wait_event()."""
        self.cursor = len(self.steps)
        return self.cursor

    async def wait_event(self, name, pred=None, timeout=EVENT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self.cursor, len(self.steps)):
                st = self.steps[i]
                if st.get("event") == name and (pred is None or pred(st["data"])):
                    self.cursor = i + 1
                    return st["data"]
            if time.monotonic() > deadline:
                raise Failure(f"{self.kind}: timed out after {timeout} s waiting for {name}; "
                              f"job sequence so far: {self.seq()}")
            if self.proc is not None and self.proc.returncode is not None:
                raise Failure(f"{self.kind} exited ({self.proc.returncode}) while waiting for "
                              f"{name}: {self.stderr()}")
            await asyncio.sleep(0.005)

    async def wait_status(self, job, status, timeout=EVENT_TIMEOUT):
        return await self.wait_event(
            "JOB_STATUS_CHANGE", lambda d: d.get("id") == job and d.get("status") == status,
            timeout)

    def events(self, since=0, names=None):
        return [(s["event"], s["data"]) for s in self.steps[since:]
                if "event" in s and (names is None or s["event"] in names)]

    def event(self, name, job="job0", since=0):
        """The data of the only event NAME of `job` since `since`."""
        found = [d for n, d in self.events(since)
                 if n == name and (d.get("device") == job or d.get("id") == job)]
        eq(len(found), 1, f"number of {name} events of {job}")
        return found[0]

    def seq(self, job="job0", since=0, replies=False):
        """The job's events as tokens: JOB_STATUS_CHANGE -> its status,
        BLOCK_JOB_X -> "X". With replies=True, a command's reply appears as
        "<execute>" where it arrived (only commands naming the job)."""
        out = []
        for s in self.steps[since:]:
            if "event" in s:
                d = s["data"]
                if s["event"] == "JOB_STATUS_CHANGE" and d.get("id") == job:
                    out.append(d["status"])
                elif s["event"].startswith("BLOCK_JOB_") and (
                        d.get("device") == job or d.get("id") == job):
                    out.append(s["event"][len("BLOCK_JOB_"):])
            elif replies and "execute" in s:
                a = s.get("arguments") or {}
                if job in (a.get("job-id"), a.get("device"), a.get("id")):
                    out.append("<" + s["execute"] + ("!" if "error" in s["reply"] else "") + ">")
        return out

    # -- guest I/O through the export ----------------------------------------
    def uri(self, export="src"):
        return nbd_uri(self.nbd_sock, export)

    async def qemu_io(self, command, export="src", expect_ok=True):
        rc, out, err = await run("qemu-io", "-f", "raw", self.uri(export), "-c", command)
        if expect_ok:
            bad = rc != 0 or "failed" in (out + err).lower() or "error" in (out + err).lower()
            check(not bad, f"qemu-io {command!r} on {self.uri(export)}: rc {rc}\n{out}{err}")
        return rc, out, err

    # -- setup ----------------------------------------------------------------
    async def setup(self, size=32 * MiB, tgt_size=None, export=True, seed=1234):
        """src.raw (data, hole, pattern) and a blank tgt.raw as nodes src and
        tgt (io_uring, O_DIRECT), an NBD server on nbd.sock, export exp0
        (name "src", writable) on node src."""
        make_source(self.p("src.raw"), size, seed)
        make_blank(self.p("tgt.raw"), size if tgt_size is None else tgt_size)
        await self.ret("blockdev-add", file_node("src", self.p("src.raw")))
        await self.ret("blockdev-add", file_node("tgt", self.p("tgt.raw")))
        if export:
            await self.ret("nbd-server-start",
                           {"addr": {"type": "unix", "data": {"path": str(self.nbd_sock)}}})
            await self.ret("block-export-add", {"type": "nbd", "id": "exp0", "node-name": "src",
                                                "name": "src", "writable": True})

    async def query_job(self, job="job0"):
        for j in await self.ret("query-block-jobs"):
            if j["device"] == job:
                return j
        raise Failure(f"{job} not in query-block-jobs")

    async def query_jobs_entry(self, job="job0"):
        for j in await self.ret("query-jobs"):
            if j["id"] == job:
                return j
        raise Failure(f"{job} not in query-jobs")

    async def export_node(self, export_id="exp0"):
        for e in await self.ret("query-block-exports"):
            if e["id"] == export_id:
                return e["node-name"]
        raise Failure(f"export {export_id} not in query-block-exports")

    # -- shutdown -------------------------------------------------------------
    async def quit(self, timeout=30):
        """`quit`; the reply may be lost if the daemon closes first. Returns the
        exit code, which must be 0."""
        msg = Message({"execute": "quit"})
        try:
            await asyncio.wait_for(self.client._execute(msg), timeout)
            for st in reversed(self.steps):
                if "reply" in st and st["reply"].get("id") == msg["id"]:
                    st["execute"], st["arguments"] = "quit", None
                    break
        except ExecInterruptedError:
            pass
        except asyncio.TimeoutError:
            raise Failure(f"{self.kind}: no reply to quit within {timeout} s")
        rc = await self.wait_exit(timeout)
        try:
            await self.client.disconnect()
        except Exception:
            pass
        eq(rc, 0, f"{self.kind} exit code after quit (stderr: {self.stderr()})")
        return rc

    async def wait_exit(self, timeout=30):
        try:
            self.exit_code = await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            raise Failure(f"{self.kind} did not exit within {timeout} s")
        return self.exit_code

    async def kill(self):
        if self.client is not None:
            try:
                await asyncio.wait_for(self.client.disconnect(), 2)
            except Exception:
                pass
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    def transcript(self):
        lines = [f"--- {self.kind} ({self.name}) transcript, wire order ---"]
        for s in self.steps:
            if "event" in s:
                lines.append(f"  event {s['event']} {json.dumps(s['data'])}")
            else:
                what = s.get("execute", "?")
                lines.append(f"  reply to {what} {json.dumps(s.get('arguments'))}: "
                             f"{json.dumps({k: v for k, v in s['reply'].items() if k != 'id'})}")
        err = self.stderr().strip()
        if err:
            lines.append(f"--- {self.kind} stderr ---\n{err}")
        return "\n".join(lines)


class SmallFs:
    """A small ext4 filesystem (no blocks reserved for root) on a loop
    device, for a real ENOSPC. Needs root and loop devices, and says so
    loudly when it cannot mount. Unmounted by Ctx.cleanup() after the
    daemons are killed (lazily if they still hold files open on it)."""

    def __init__(self, ctx, name, mib):
        self.img = ctx.scratch / f"{name}.img"
        self.mnt = ctx.scratch / name
        self.mib = mib
        self.mounted = False
        ctx.cleanups.append(self.unmount)

    async def mount(self):
        make_blank(self.img, self.mib * MiB)
        await run_ok("mkfs.ext4", "-q", "-F", "-m", "0", str(self.img))
        self.mnt.mkdir(exist_ok=True)
        self.mounted = True  # before mount: a signal in between still unmounts
        rc, out, err = await run("mount", "-o", "loop", str(self.img), str(self.mnt))
        if rc != 0:
            self.mounted = False
        check(rc == 0, "mounting a loop filesystem failed (this scenario needs root and loop "
                       f"devices): rc {rc}: {out}{err}")
        return self

    def free(self):
        """Bytes an ordinary write can still get (ext4 keeps some clusters
        back even with -m 0; f_bavail leaves them out)."""
        st = os.statvfs(self.mnt)
        return st.f_bavail * st.f_frsize

    def fill(self, leave, name="filler"):
        """Allocate a file that leaves about `leave` bytes free."""
        path = self.mnt / name
        n = self.free() - leave
        check(n > 0, f"{self.mnt}: only {self.free()} bytes free, cannot leave {leave}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, n)
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def unmount(self, lazy=False):
        """Unmount; lazily (detached now, freed when the last file on it is
        closed) when asked or when it is still busy."""
        if not self.mounted:
            return
        self.mounted = False
        if not lazy:
            try:
                r = subprocess.run(["umount", str(self.mnt)], capture_output=True, timeout=30)
                if r.returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
        r = subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True, timeout=30)
        if r.returncode != 0:
            log(f"cannot unmount {self.mnt}: {r.stderr.decode(errors='replace').strip()}")


class Ctx:
    def __init__(self, binary, scratch):
        self.binary = Path(binary).resolve()
        self.scratch = Path(scratch).resolve()
        self.daemons = []
        # Run by run.py after the daemons are killed, last registered first;
        # each takes a `lazy` keyword (see cleanup).
        self.cleanups = []

    def cleanup(self, hurry=False):
        """Run the cleanups; `hurry` (from a signal handler, with daemons
        perhaps still exiting) asks them not to wait."""
        for fn in reversed(self.cleanups):
            try:
                fn(lazy=True) if hurry else fn()
            except Exception as e:  # report, and go on cleaning
                log(f"cleanup {fn}: {e}")

    def daemon(self, name="rm", kind="ringmirror"):
        return Daemon(self, name, kind)


# ---------------------------------------------------------------------------
# a raw monitor connection (for bytes qemu.qmp would never send)

class RawConn:
    """A bare unix-socket QMP connection. Messages from the daemon are read
    line by line (QEMU ends each with CRLF)."""

    def __init__(self, path):
        self.path = path
        self.n = 0
        self.events = []

    async def open(self, timeout=10):
        self.reader, self.writer = await asyncio.open_unix_connection(str(self.path),
                                                                      limit=16 * MiB)
        return await self.read(timeout)

    async def read(self, timeout=EVENT_TIMEOUT):
        try:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
        except asyncio.TimeoutError:
            raise Failure(f"raw monitor connection: nothing received within {timeout} s")
        if not line:
            raise EOFError("monitor closed the connection")
        return json.loads(line)

    async def send(self, data):
        if isinstance(data, (dict, list)):
            data = json.dumps(data).encode()
        self.writer.write(data)
        await self.writer.drain()

    async def exchange(self, data, timeout=EVENT_TIMEOUT):
        """Send raw bytes, then a probe {"execute": "query-version", "id":
        "probe-N"}; return the non-event messages received before the probe's
        reply (events are kept in self.events). The probe's reply proves the
        connection still works."""
        self.n += 1
        probe = f"probe-{self.n}"
        await self.send(data)
        await self.send({"execute": "query-version", "id": probe})
        out = []
        while True:
            m = await self.read(timeout)
            if "event" in m:
                self.events.append(m)
            elif m.get("id") == probe:
                check("return" in m, f"probe after {data!r:.200}: {m}")
                return out
            else:
                out.append(m)

    async def errors(self, data):
        """exchange() returning [(class, desc, id-or-absent)] of the replies."""
        return [(m["error"]["class"], m["error"]["desc"], m.get("id", "-"))
                if "error" in m else ("return", m.get("return"), m.get("id", "-"))
                for m in await self.exchange(data)]

    async def close(self):
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except Exception:
            pass

    def abort(self):
        self.writer.transport.abort()
