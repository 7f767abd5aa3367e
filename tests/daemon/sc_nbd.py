"""The daemon's NBD side with real NBD software: qemu-nbd as a mirror
target, nbdinfo / qemu-img / fio against the export, and a raw NBD client
that vanishes mid-request during a mirror."""

import asyncio
import json
import struct
import subprocess
import time

from rmtest import (CHILDREN, MiB, KiB, Failure, assert_same_file, check, data_extents, eq,
                    file_node, make_blank, make_source, merge_extents, nbd_uri, qemu_img_compare,
                    read_range, run, run_ok)
from sc_jobs import COMPLETE_TAIL, START, start_mirror

SIZE = 32 * MiB


async def start_qemu_nbd(d, image, export, sock):
    """qemu-nbd serving `image` (raw) as `export` on unix socket `sock`."""
    proc = await asyncio.create_subprocess_exec(
        "qemu-nbd", "-f", "raw", "-x", export, "-k", str(sock), "--persistent", "--shared=8",
        str(image), stdin=subprocess.DEVNULL, stdout=open(d.p("qemu-nbd.log"), "wb"),
        stderr=subprocess.STDOUT)
    CHILDREN.append(proc)
    deadline = time.monotonic() + 30
    while True:
        check(proc.returncode is None, f"qemu-nbd exited: {d.p('qemu-nbd.log').read_text()}")
        if sock.exists():
            rc, _, _ = await run("nbdinfo", "--size", nbd_uri(sock, export), timeout=10)
            if rc == 0:
                return proc
        check(time.monotonic() < deadline, "qemu-nbd did not come up in 30 s")
        await asyncio.sleep(0.05)


async def sc_nbd_target(ctx):
    """Mirror onto an NBD node served by qemu-nbd, with guest writes during
    the job; complete; the export follows the NBD node; compare files."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    src = d.p("src.raw")
    remote = make_blank(d.p("remote.raw"), SIZE)
    rsock = d.p("remote.sock")
    qnbd = await start_qemu_nbd(d, remote, "remote", rsock)
    await d.ret("blockdev-add", {"driver": "nbd", "node-name": "rtgt",
                                 "server": {"type": "unix", "path": str(rsock)},
                                 "export": "remote"})
    nodes = {n["node-name"]: n for n in await d.ret("query-named-block-nodes", {"flat": True})}
    eq((nodes["rtgt"]["drv"], nodes["rtgt"]["image"]["virtual-size"]), ("nbd", SIZE),
       "NBD node in query-named-block-nodes")
    since = await start_mirror(d, target="rtgt", speed=4 * MiB)
    await d.wait_status("job0", "running")
    await d.qemu_io("write -P 0x61 100k 300k")
    await d.qemu_io("write -P 0x62 27M 64k")  # into the source's hole
    await d.ret("block-job-set-speed", {"device": "job0", "speed": 0})
    await d.wait_event("BLOCK_JOB_READY")
    await d.qemu_io("write -P 0x63 9M 1M")
    await d.ret("block-job-complete", {"device": "job0"})
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since), START + ["ready", "READY"] + COMPLETE_TAIL, "job events")
    eq(await d.export_node(), "rtgt", "export on the NBD node after complete")
    assert_same_file(src, remote, "source and the qemu-nbd served target")
    await d.qemu_io("write -P 0x64 0 64k")
    await d.qemu_io("flush")
    eq(read_range(remote, 0, 64 * KiB), b"\x64" * 64 * KiB,
       "write through the export after complete reaches qemu-nbd's file")
    check(read_range(src, 0, 64 * KiB) != b"\x64" * 64 * KiB, "source untouched after complete")
    await d.quit()
    qnbd.terminate()
    await qnbd.wait()
    eq(read_range(remote, 0, 64 * KiB), b"\x64" * 64 * KiB, "on disk after qemu-nbd exits")


async def nbd_map(uri):
    """nbdinfo --map as merged [(offset, length, is_data)]."""
    out = await run_ok("nbdinfo", "--map", uri)
    ext = []
    for line in out.splitlines():
        off, n, typ = line.split()[:3]
        ext.append((int(off), int(n), not (int(typ) & 1)))  # bit 0: hole
    return merge_extents(ext)


async def sc_nbd_tools(ctx):
    """nbdinfo --json / --map, qemu-img info / compare against the export,
    before and after a mirror; the completed target keeps the source's hole."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    src, tgt = d.p("src.raw"), d.p("tgt.raw")
    info = json.loads(await run_ok("nbdinfo", "--json", d.uri()))
    exports = {e["export-name"]: e for e in info["exports"]}
    check("src" in exports, f"nbdinfo --json exports: {list(exports)}")
    e = exports["src"]
    eq((e["export-size"], e["is_read_only"], e["can_flush"]), (SIZE, False, True),
       "nbdinfo --json: size, writable, flush")
    check("base:allocation" in e.get("contexts", []), f"contexts: {e.get('contexts')}")
    src_ext = data_extents(src)
    eq([x[2] for x in src_ext], [True, False, True], f"the source has a hole: {src_ext}")
    eq(await nbd_map(d.uri()), src_ext, "nbdinfo --map matches the source's holes")
    qi = json.loads(await run_ok("qemu-img", "info", "--output=json", "-f", "raw", d.uri()))
    eq(qi["virtual-size"], SIZE, "qemu-img info virtual-size")
    await qemu_img_compare(src, d.uri())
    # Mirror, complete; the export now serves the target.
    since = await start_mirror(d)
    await d.wait_event("BLOCK_JOB_READY")
    await qemu_img_compare(tgt, d.uri())  # in READY, the target is in sync
    await d.ret("block-job-complete", {"device": "job0"})
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since), START + ["ready", "READY"] + COMPLETE_TAIL, "job events")
    eq(await d.export_node(), "tgt", "export on target")
    await qemu_img_compare(src, d.uri())
    await qemu_img_compare(tgt, d.uri())
    # ringmirror keeps the target sparse (QEMU allocates it fully).
    eq(data_extents(tgt), src_ext, "the target keeps the source's hole")
    eq(await nbd_map(d.uri()), src_ext, "nbdinfo --map of the export on the target")
    # A write through the export shows in the map.
    await d.qemu_io("write -P 0x01 26M 1M")
    m = await nbd_map(d.uri())
    check(any(off <= 26 * MiB and off + n >= 27 * MiB and is_data for off, n, is_data in m),
          f"map after a write into the hole: {m}")
    await d.quit()


async def sc_fio_during_mirror(ctx):
    """fio's nbd engine: 2048 random 4k writes with verification through the
    export (verified as they go and all again at the end) while a
    speed-limited mirror runs; then complete and compare. A fixed amount,
    not a fixed time: a slow disk makes it longer, never emptier."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    # 512 KiB/s: the job needs a minute, far longer than fio.
    since = await start_mirror(d, speed=512 * KiB)
    await d.wait_status("job0", "running")
    eq((await d.query_job())["status"], "running", "job running when fio starts")
    rc, out, err = await run(
        "fio", "--name=guest", "--ioengine=nbd", f"--uri={d.uri()}", "--rw=randwrite",
        "--bs=4k", f"--size={SIZE}", "--io_size=8M", "--iodepth=8",
        "--verify=crc32c", "--verify_fatal=1", "--verify_backlog=512", "--randrepeat=0",
        "--verify_state_save=0", "--output-format=json", timeout=60, cwd=d.dir)
    check(rc == 0, f"fio failed (rc {rc}):\n{out[-3000:]}\n{err[-3000:]}")
    job = json.loads(out[out.index("{"):])["jobs"][0]
    eq(job["error"], 0, "fio job error")
    eq(job["write"]["total_ios"], 2048, "fio's writes")
    check(job["read"]["total_ios"] >= 2048,
          f"fio verified every write: verify reads {job['read']['total_ios']}")
    eq((await d.query_job())["status"], "running", "job still running when fio is done")
    await d.ret("block-job-set-speed", {"device": "job0", "speed": 0})
    await d.wait_event("BLOCK_JOB_READY")
    await d.ret("block-job-complete", {"device": "job0"})
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since), START + ["ready", "READY"] + COMPLETE_TAIL, "job events")
    assert_same_file(d.p("src.raw"), d.p("tgt.raw"), "images after fio + complete")
    await d.quit()


# -- a raw NBD client ---------------------------------------------------------

NBD_OPT_GO = 7
NBD_REP_ACK, NBD_REP_INFO = 1, 3
NBD_CMD_READ, NBD_CMD_WRITE = 0, 1
REQUEST_MAGIC = 0x25609513


async def nbd_connect(sock, export):
    """Fixed-newstyle handshake with NBD_OPT_GO; returns (reader, writer, size)."""
    r, w = await asyncio.open_unix_connection(str(sock))
    hello = await r.readexactly(18)
    eq(hello[:16], b"NBDMAGICIHAVEOPT", "NBD greeting")
    w.write(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    name = export.encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    w.write(b"IHAVEOPT" + struct.pack(">II", NBD_OPT_GO, len(data)) + data)
    await w.drain()
    size = None
    while True:
        _magic, _opt, rtype, n = struct.unpack(">QIII", await r.readexactly(20))
        payload = await r.readexactly(n)
        if rtype == NBD_REP_INFO and len(payload) >= 10 and payload[:2] == b"\x00\x00":
            size = struct.unpack(">Q", payload[2:10])[0]
        elif rtype == NBD_REP_ACK:
            return r, w, size
        elif rtype & 0x80000000:
            raise Failure(f"NBD_OPT_GO refused: {rtype:#x} {payload!r}")


def nbd_request(typ, handle, off, length):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, 0, typ, handle, off, length)


async def sc_nbd_client_vanishes(ctx):
    """NBD clients that vanish mid-request (half a WRITE payload; READs whose
    replies are never read; a half-sent header) while a mirror runs: the job
    goes on, completes, and the images are identical; the export still
    serves other clients."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    since = await start_mirror(d, speed=2 * MiB)
    await d.wait_status("job0", "running")
    # 1. A WRITE of 1 MiB with only half its payload, then gone.
    r, w, size = await nbd_connect(d.nbd_sock, "src")
    eq(size, SIZE, "export size from NBD_INFO_EXPORT")
    w.write(nbd_request(NBD_CMD_WRITE, 1, 4 * MiB, MiB) + b"\xee" * (MiB // 2))
    await w.drain()
    w.transport.abort()
    # 2. A burst of READs whose replies are never read, then gone.
    r, w, _ = await nbd_connect(d.nbd_sock, "src")
    for i in range(64):
        w.write(nbd_request(NBD_CMD_READ, 100 + i, (i * MiB) % SIZE, MiB))
    await w.drain()
    w.transport.abort()
    # 3. Half a request header, then gone; 4. gone during the handshake.
    r, w, _ = await nbd_connect(d.nbd_sock, "src")
    w.write(nbd_request(NBD_CMD_WRITE, 7, 0, 4096)[:13])
    await w.drain()
    w.close()
    r, w = await asyncio.open_unix_connection(str(d.nbd_sock))
    await r.readexactly(18)
    w.transport.abort()
    # A proper client meanwhile, and the job still runs.
    await d.qemu_io("write -P 0x71 6M 64k")
    j = await d.query_job()
    check(j["status"] in ("running", "ready") and j["io-status"] == "ok", f"job unharmed: {j}")
    await d.ret("block-job-set-speed", {"device": "job0", "speed": 0})
    await d.wait_event("BLOCK_JOB_READY")
    await d.ret("block-job-complete", {"device": "job0"})
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since), START + ["ready", "READY"] + COMPLETE_TAIL, "job events")
    assert_same_file(d.p("src.raw"), d.p("tgt.raw"), "images after the vanishing clients")
    eq(read_range(d.p("tgt.raw"), 6 * MiB, 64 * KiB), b"\x71" * 64 * KiB, "qemu-io's write")
    # Whether the half-written WRITE was applied is the server's choice, but
    # it must not be half applied beyond what was received: bytes past the
    # received half are the source's original data.
    orig = make_source(d.p("orig.raw"), SIZE)
    eq(read_range(d.p("tgt.raw"), 4 * MiB + MiB // 2, MiB // 2),
       read_range(orig, 4 * MiB + MiB // 2, MiB // 2), "unsent half of the vanished WRITE")
    await d.qemu_io("read -P 0x71 6M 64k")
    await d.quit()


SCENARIOS = {
    "nbd_target": sc_nbd_target,
    "nbd_tools": sc_nbd_tools,
    "fio_during_mirror": sc_fio_during_mirror,
    "nbd_client_vanishes": sc_nbd_client_vanishes,
}
