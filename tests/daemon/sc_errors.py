"""Refusals with QEMU's exact wording (error class and desc, from
docs/qemu-reference.md), hostile monitor input, several monitor
connections, a mirror target on a filesystem that really fills up."""

import asyncio
import json
import time

from rmtest import (MiB, KiB, Failure, RawConn, SmallFs, assert_same_file, check, eq,
                    file_node, log, make_blank, make_source, mirror_args, read_range)
from sc_jobs import COMPLETE_TAIL, START, start_mirror

SIZE = 16 * MiB


def verb_error(state, verb, job="job0"):
    return f"Job '{job}' in state '{state}' cannot accept command verb '{verb}'"


async def sc_wrong_verbs(ctx):
    """Argument validation of blockdev-mirror, verbs in the wrong state,
    unknown jobs, second jobs on busy nodes, blockdev-del of busy nodes."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    make_blank(d.p("tgt2.raw"), SIZE)
    make_source(d.p("src2.raw"), SIZE, seed=2)
    make_blank(d.p("tgt3.raw"), SIZE)
    for n in ("tgt2", "src2", "tgt3"):
        await d.ret("blockdev-add", file_node(n, d.p(f"{n}.raw")))
    since = d.mark()

    # blockdev-mirror refusals, none of which leaves a job behind.
    bad = lambda **kw: mirror_args(job="bad", target="tgt2", **kw)  # noqa: E731
    for args, desc in (
            (bad(granularity=1000), "Parameter 'granularity' expects a power of 2"),
            (bad(granularity=256), "Parameter 'granularity' expects a value in range [512B, 64MB]"),
            (bad(granularity=128 * MiB), "Parameter 'granularity' expects a value in range [512B, 64MB]"),
            (bad(granularity=512 * MiB), "Parameter 'granularity' expects a value in range [512B, 64MB]"),
            (bad(granularity=-1), "Parameter 'granularity' expects uint32_t"),
            (bad(granularity=1 << 33), "Parameter 'granularity' expects uint32_t"),
            (mirror_args(job="bad", target="src"), "Can't mirror node into itself"),
            (mirror_args(job="bad", device="nope", target="tgt2"),
             "Cannot find device='nope' nor node-name='nope'"),
            (mirror_args(job="bad", target="nope"), "Cannot find device='nope' nor node-name='nope'"),
            (bad(speed=-1), "Parameter 'speed' expects a non-negative value"),
            (bad(**{"buf-size": -1}), "Invalid parameter 'buf-size'"),
            (mirror_args(job="bad id", target="tgt2"), "Invalid job ID 'bad id'"),
            (mirror_args(job="", target="tgt2"), "Invalid job ID ''"),
            (bad(sync="incremental"), "Sync mode 'incremental' not supported"),
            (bad(sync="none", bitmap="b"), "Parameter 'bitmap' is unexpected"),
            (bad(sync="bogus"), "Parameter 'sync' does not accept value 'bogus'"),
            (bad(bogus=1), "Parameter 'bogus' is unexpected"),
            (bad(speed=1.5), "Invalid parameter type for 'speed', expected: integer"),
            (bad(speed="fast"), "Invalid parameter type for 'speed', expected: integer"),
            (bad(**{"auto-finalize": "yes"}), "Invalid parameter type for 'auto-finalize', expected: boolean"),
            (dict(bad(), **{"job-id": 5}), "Invalid parameter type for 'job-id', expected: string"),
            ({"device": "src"}, "Parameter 'target' is missing"),
            ({"device": "src", "target": "tgt2"}, "Parameter 'sync' is missing"),
            ({}, "Parameter 'device' is missing")):
        await d.err("blockdev-mirror", args, desc)
    eq(await d.ret("query-jobs"), [], "no job left by refused blockdev-mirror")
    eq(d.events(since), [], "no events from refusals made before a job exists")

    # Options QEMU accepts: granularity 0 (default), buf-size 0 and 1000.
    for extra in ({"granularity": 0}, {"buf-size": 0}, {"buf-size": 1000},
                  {"on-source-error": "enospc"}):
        mark = d.mark()
        await d.ret("blockdev-mirror", bad(**extra))
        await d.ret("block-job-cancel", {"device": "bad", "force": True})
        await d.wait_status("bad", "null")
        check(d.seq("bad", mark)[-4:] == ["aborting", "CANCELLED", "concluded", "null"],
              f"{extra}: {d.seq('bad', mark)}")

    # job0 running (speed-limited): verbs in the wrong state.
    await start_mirror(d, speed=MiB)
    await d.wait_status("job0", "running")
    for cmd, args, desc in (
            ("block-job-complete", {"device": "job0"}, verb_error("running", "complete")),
            ("job-complete", {"id": "job0"}, verb_error("running", "complete")),
            ("job-finalize", {"id": "job0"}, verb_error("running", "finalize")),
            ("block-job-finalize", {"id": "job0"}, verb_error("running", "finalize")),
            ("job-dismiss", {"id": "job0"}, verb_error("running", "dismiss")),
            ("block-job-dismiss", {"id": "job0"}, verb_error("running", "dismiss")),
            ("block-job-resume", {"device": "job0"}, "Can't resume a job that was not paused"),
            ("job-resume", {"id": "job0"}, "Can't resume a job that was not paused")):
        await d.err(cmd, args, desc)
    await d.ret("block-job-pause", {"device": "job0"})
    await d.wait_status("job0", "paused")
    await d.err("block-job-pause", {"device": "job0"}, "Job is already paused")
    await d.err("job-pause", {"id": "job0"}, "Job is already paused")
    await d.err("block-job-complete", {"device": "job0"}, verb_error("paused", "complete"))
    await d.err("block-job-cancel", {"device": "job0"},
                "The block job for device 'job0' is currently paused")
    await d.ret("block-job-resume", {"device": "job0"})
    await d.wait_status("job0", "running")
    await d.err("block-job-resume", {"device": "job0"}, "Can't resume a job that was not paused")

    # Unknown jobs: DeviceNotActive for block-job-*, GenericError for job-*.
    for cmd, args in (("block-job-cancel", {"device": "nope"}),
                      ("block-job-pause", {"device": "nope"}),
                      ("block-job-resume", {"device": "nope"}),
                      ("block-job-complete", {"device": "nope"}),
                      ("block-job-set-speed", {"device": "nope", "speed": 0}),
                      ("block-job-finalize", {"id": "nope"}),
                      ("block-job-dismiss", {"id": "nope"}),
                      ("block-job-change", {"id": "nope", "type": "mirror",
                                            "copy-mode": "write-blocking"})):
        await d.err(cmd, args, "Block job 'nope' not found", cls="DeviceNotActive")
    for cmd in ("job-cancel", "job-pause", "job-resume", "job-complete", "job-finalize",
                "job-dismiss"):
        await d.err(cmd, {"id": "nope"}, "Job not found")
    await d.err("block-job-set-speed", {"device": "job0", "speed": -1},
                "Parameter 'speed' expects a non-negative value")
    await d.err("block-job-set-speed", {"device": "job0", "speed": -MiB},
                "Parameter 'speed' expects a non-negative value")
    await d.err("block-job-set-speed", {"device": "job0"}, "Parameter 'speed' is missing")
    await d.err("block-job-set-speed", {"device": "job0", "speed": "1"},
                "Invalid parameter type for 'speed', expected: integer")
    await d.err("block-job-cancel", {}, "Parameter 'device' is missing")
    await d.err("block-job-cancel", {"device": "job0", "force": 1},
                "Invalid parameter type for 'force', expected: boolean")

    # A second job on busy nodes; blockdev-del of busy nodes.
    for args, desc in (
            (mirror_args(job="job1", target="tgt2"), "Need a root block node"),
            (mirror_args(job="job1", device="src2", target="tgt"),
             "Node 'tgt' is busy: block device is in use by block job: mirror"),
            (mirror_args(job="job0", device="src2", target="tgt3"), "Job ID 'job0' already in use"),
            (mirror_args(job="job1", device="tgt", target="tgt3"), "Need a root block node")):
        await d.err("blockdev-mirror", args, desc)
    await d.err("blockdev-del", {"node-name": "src"},
                "Node 'src' is busy: block device is in use by block job: mirror")
    await d.err("blockdev-del", {"node-name": "tgt"}, "Node tgt is in use")
    await d.err("blockdev-del", {"node-name": "nope"}, "Failed to find node with node-name='nope'")
    eq([j["id"] for j in await d.ret("query-jobs")], ["job0"], "only job0 exists")
    eq((await d.query_job())["status"], "running", "job0 unharmed by the refusals")

    # The job still completes normally after all that.
    await d.ret("block-job-set-speed", {"device": "job0", "speed": 0})
    await d.wait_event("BLOCK_JOB_READY")
    await d.ret("block-job-complete", {"device": "job0"})
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since)[-len(COMPLETE_TAIL) - 2:], ["ready", "READY"] + COMPLETE_TAIL,
       "job0 ends normally")
    assert_same_file(d.p("src.raw"), d.p("tgt.raw"), "images after complete")
    # Unknown again once it is gone.
    await d.err("block-job-cancel", {"device": "job0"}, "Block job 'job0' not found",
                cls="DeviceNotActive")
    await d.err("job-dismiss", {"id": "job0"}, "Job not found")
    await d.quit()


GE, CNF = "GenericError", "CommandNotFound"
NEED_CAPS = (CNF, "Expecting capabilities negotiation with 'qmp_capabilities'")


def cmd(execute, **arguments):
    m = {"execute": execute}
    if arguments:
        m["arguments"] = arguments
    return m


async def expect(conn, data, *errors):
    """Send `data` (bytes or a dict); the replies before the probe must be
    exactly these errors (class, desc) with no id unless given as a third
    element."""
    got = await conn.errors(data)
    want = [(e[0], e[1], e[2] if len(e) > 2 else "-") for e in errors]
    eq(got, want, f"replies to {data!r:.160}")


async def sc_bad_input(ctx):
    """Malformed and hostile monitor input on a raw socket, with QEMU's
    wording; after each, the connection still works (a probe command gets its
    reply). Ends with a 70 MiB message while a mirror runs: the daemon keeps
    serving the monitor and the NBD export, and the job completes."""
    d = await ctx.daemon().start(connect=False)
    c = RawConn(d.sock)
    greeting = await c.open()
    eq(sorted(greeting), ["QMP"], "greeting")
    eq(greeting["QMP"]["capabilities"], ["oob"], "greeting capabilities")
    eq(greeting["QMP"]["version"]["qemu"], {"micro": 2, "minor": 0, "major": 10}, "version")

    # Before qmp_capabilities (one reply each; no probe, it would be refused too).
    for data, want in (
            (cmd("query-version"), [NEED_CAPS + ("-",)]),
            (dict(cmd("query-version"), id=7), [NEED_CAPS + (7,)]),
            (cmd("blockdev-add", driver="file"), [NEED_CAPS + ("-",)]),
            (cmd("no-such-command"), [NEED_CAPS + ("-",)]),
            (b'{"execute": "query-version",}', [(GE, "JSON parse error, expecting value", "-")]),
            (cmd("qmp_capabilities", enable=["bogus"]),
             [(GE, "Parameter 'null' does not accept value 'bogus'", "-")])):
        await c.send(data)
        got = []
        for _ in want:
            m = await c.read()
            got.append((m["error"]["class"], m["error"]["desc"], m.get("id", "-")))
        eq(got, want, f"before negotiation: {data!r:.100}")
    await c.send({"execute": "qmp_capabilities", "id": "caps"})
    eq(await c.read(), {"return": {}, "id": "caps"}, "qmp_capabilities")
    await expect(c, {"execute": "qmp_capabilities", "id": "caps2"},
                 (CNF, "Capabilities negotiation is already complete, command ignored", "caps2"))

    # Malformed JSON, non-objects, bad envelopes: errors without id (unless
    # the object had one), the connection stays usable.
    parse = "JSON parse error, "
    for data, *errors in (
            (b'{"execute": "query-version",}', (GE, parse + "expecting value")),
            (b"not json\n", (GE, parse + "invalid keyword 'not'"), (GE, parse + "invalid keyword 'json'")),
            (b"}", (GE, parse + "expecting value")),
            (b"]", (GE, parse + "expecting value")),
            (b'"a string"', (GE, "QMP input must be a JSON object")),
            (b"[1, 2]", (GE, "QMP input must be a JSON object")),
            (b"42", (GE, "QMP input must be a JSON object")),
            (b"null", (GE, "QMP input must be a JSON object")),
            (b"{}", (GE, "QMP input lacks member 'execute'")),
            (b'{"execute": "\xff"}', (GE, parse + "stray '\"\ufffd'"), (GE, parse + "expecting value")),
            (b'{"execute": "query-version", "id": 1, "id": 2}', (GE, parse + "duplicate key")),
            (b"\n\n  \r\n",),
            ({"id": 3}, (GE, "QMP input lacks member 'execute'", 3)),
            ({"execute": 1}, (GE, "QMP input member 'execute' must be a string")),
            ({"execute": "query-version", "arguments": []},
             (GE, "QMP input member 'arguments' must be an object")),
            ({"execute": "query-version", "foo": 1}, (GE, "QMP input member 'foo' is unexpected")),
            ({"exec-oob": "query-version"}, (GE, "QMP input member 'exec-oob' is unexpected")),
            ({"execute": "no-such-command", "id": "x"},
             (CNF, "The command no-such-command has not been found", "x")),
            ({"execute": "query-version", "arguments": {"x": 1}}, (GE, "Parameter 'x' is unexpected"))):
        await expect(c, data, *errors)
    # QEMU's lenient JSON still works, and ids of any JSON type are echoed.
    got = await c.exchange(b"{'execute': 'query-\\u0076ersion', 'id': {'a': [1, 2.5, null]}}")
    eq([m.get("id") for m in got], [{"a": [1, 2.5, None]}], "single quotes, escapes, object id")

    src, tgt, missing = d.p("src.raw"), d.p("tgt.raw"), d.p("missing.raw")
    make_source(src, SIZE)
    make_blank(tgt, SIZE)
    ok = ("return", {}, "-")
    file_args = {"driver": "file", "node-name": "a", "filename": str(src)}
    for args, want in (
            ({}, (GE, "Parameter 'driver' is missing")),
            ({"node-name": "a", "filename": str(src)}, (GE, "Parameter 'driver' is missing")),
            ({"driver": "bogus", "node-name": "a"}, (GE, "Parameter 'driver' does not accept value 'bogus'")),
            ({"driver": "file", "node-name": "a"}, (GE, "Parameter 'filename' is missing")),
            (dict(file_args, bogus=1), (GE, "Parameter 'bogus' is unexpected")),
            (dict(file_args, filename=5), (GE, "Invalid parameter type for 'filename', expected: string")),
            (dict(file_args, aio="bogus"), (GE, "Parameter 'aio' does not accept value 'bogus'")),
            (dict(file_args, cache={"direct": "yes"}),
             (GE, "Invalid parameter type for 'cache.direct', expected: boolean")),
            (dict(file_args, filename=str(missing)),
             (GE, f"Could not open '{missing}': No such file or directory")),
            ({"driver": "file", "filename": str(src)}, (GE, "'node-name' must be specified for the root node")),
            (dict(file_args, **{"node-name": "1bad"}), (GE, "Invalid node-name: '1bad'")),
            (file_node("src", src), ok),
            (file_node("src", tgt), (GE, "Duplicate nodes with node-name='src'")),
            (file_node("tgt", tgt), ok),
            ({"driver": "nbd", "node-name": "n", "server": {"type": "unix", "path": str(d.p("none.sock"))}},
             (GE, f"Failed to connect to '{d.p('none.sock')}': No such file or directory"))):
        await expect(c, cmd("blockdev-add", **args), want)
    await expect(c, cmd("blockdev-del", **{"node-name": "nope"}),
                 (GE, "Failed to find node with node-name='nope'"))

    nbd = str(d.nbd_sock)
    unix = {"type": "unix", "data": {"path": nbd}}
    for data, want in (
            (cmd("nbd-server-start"), (GE, "Parameter 'addr' is missing")),
            (cmd("nbd-server-start", addr={"type": "unix", "path": nbd}), (GE, "Parameter 'addr.data' is missing")),
            (cmd("nbd-server-start", addr={"type": "bogus", "data": {}}),
             (GE, "Parameter 'type' does not accept value 'bogus'")),
            (cmd("nbd-server-start", addr={"type": "unix", "data": {}}), (GE, "Parameter 'addr.data.path' is missing")),
            (cmd("nbd-server-start", addr={"type": "inet", "data": {"host": "127.0.0.1"}}),
             (GE, "Parameter 'addr.data.port' is missing")),
            (cmd("nbd-server-start", addr=unix, bogus=1), (GE, "Parameter 'bogus' is unexpected")),
            (cmd("block-export-add", type="nbd", id="e", **{"node-name": "src"}), (GE, "NBD server not running")),
            (cmd("nbd-server-start", addr=unix), ok),
            (cmd("nbd-server-start", addr=unix), (GE, "NBD server already running")),
            (cmd("block-export-add", type="nbd", id="e"), (GE, "Parameter 'node-name' is missing")),
            (cmd("block-export-add", type="nbd", id="e", **{"node-name": "nope"}),
             (GE, "Cannot find device='' nor node-name='nope'")),
            (cmd("block-export-add", type="bogus", id="e", **{"node-name": "src"}),
             (GE, "Parameter 'type' does not accept value 'bogus'")),
            (cmd("block-export-add", type="nbd", id="e", writable="yes", **{"node-name": "src"}),
             (GE, "Invalid parameter type for 'writable', expected: boolean")),
            (cmd("block-export-add", type="nbd", id="e", writable=True, **{"node-name": "src"}), ok),
            (cmd("block-export-add", type="nbd", id="e", **{"node-name": "tgt"}),
             (GE, "Block export id 'e' is already in use")),
            (cmd("block-export-add", type="nbd", id="e2", **{"node-name": "src"}),
             (GE, "NBD server already has export named 'src'"))):
        await expect(c, data, want)

    mirror = {"job-id": "job0", "device": "src", "target": "tgt", "sync": "full"}
    for args, want in (
            ({}, (GE, "Parameter 'device' is missing")),
            ({"device": "src"}, (GE, "Parameter 'target' is missing")),
            ({"device": "src", "target": "tgt"}, (GE, "Parameter 'sync' is missing")),
            (dict(mirror, bogus=1), (GE, "Parameter 'bogus' is unexpected")),
            (dict(mirror, sync="bogus"), (GE, "Parameter 'sync' does not accept value 'bogus'")),
            (dict(mirror, speed="fast"), (GE, "Invalid parameter type for 'speed', expected: integer")),
            (dict(mirror, **{"copy-mode": "bogus"}), (GE, "Parameter 'copy-mode' does not accept value 'bogus'")),
            (dict(mirror, **{"on-source-error": "bogus"}),
             (GE, "Parameter 'on-source-error' does not accept value 'bogus'")),
            (dict(mirror, **{"auto-dismiss": 1}), (GE, "Invalid parameter type for 'auto-dismiss', expected: boolean"))):
        await expect(c, cmd("blockdev-mirror", **args), want)
    eq(c.events, [], "no events from refused commands")

    # A mirror (speed-limited) runs; the guest writes through the export.
    await expect(c, cmd("blockdev-mirror", speed=4 * MiB, **mirror), ok)
    await d.qemu_io("write -P 0x1c 3M 64k")
    # 70 MiB in one message: QEMU's token size limit (64 MiB), then the rest
    # of the string lexed as garbage and the two unmatched closing braces
    # (the sequence qemu-storage-daemon 10.0.2 gives for the same bytes).
    huge = b'{"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "h", "filename": "'
    huge += b"A" * (70 * MiB) + b'"}}'
    await expect(c, huge, (GE, "JSON token size limit exceeded"), (GE, "JSON parse error, stray 'A'"),
                 (GE, parse + "expecting value"), (GE, parse + "expecting value"))
    del huge
    names = [m["node-name"] for m in
             (await c.exchange(cmd("query-named-block-nodes")))[0]["return"]]
    eq(sorted(names), ["src", "tgt"], "nodes after the bad input")
    # The export still works, and so does the job.
    await d.qemu_io("write -P 0x1d 5M 64k")
    await d.qemu_io("read -P 0x1c 3M 64k")
    jobs = (await c.exchange(cmd("query-block-jobs")))[0]["return"]
    eq(len(jobs), 1, "one job after the bad input")
    check(jobs[0]["status"] in ("running", "ready") and jobs[0]["io-status"] == "ok",
          f"job after the bad input: {jobs[0]}")
    await expect(c, cmd("block-job-set-speed", device="job0", speed=0), ok)
    while not any(e["event"] == "BLOCK_JOB_READY" for e in c.events):
        m = await c.read()
        check("event" in m, f"unexpected reply {m}")
        c.events.append(m)
    await expect(c, cmd("block-job-complete", device="job0"), ok)
    while not any(e["event"] == "JOB_STATUS_CHANGE" and e["data"]["status"] == "null"
                  for e in c.events):
        c.events.append(await c.read())
    seq = [e["data"]["status"] if e["event"] == "JOB_STATUS_CHANGE" else e["event"] for e in c.events]
    eq(seq, ["created", "running", "ready", "BLOCK_JOB_READY", "waiting", "pending",
             "BLOCK_JOB_COMPLETED", "concluded", "null"], "job events on the raw connection")
    assert_same_file(src, tgt, "images after the bad input")
    await c.send({"execute": "quit", "id": "q"})
    while True:
        try:
            m = await c.read()
        except EOFError:
            break
    eq(await d.wait_exit(), 0, "exit status")


async def sc_multi_monitor(ctx):
    """Several monitor connections at once: a second (raw) client gets its own
    greeting while the first is connected, sees no events before negotiating
    and all of them after; clients vanishing mid-command (the command still
    runs, nothing else is disturbed)."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    make_source(d.p("src2.raw"), SIZE, seed=3)
    make_blank(d.p("tgt2.raw"), SIZE)
    await d.ret("blockdev-add", file_node("src2", d.p("src2.raw")))
    await d.ret("blockdev-add", file_node("tgt2", d.p("tgt2.raw")))
    b = RawConn(d.sock)
    greeting = await b.open()
    eq(greeting["QMP"]["version"]["qemu"]["major"], 10, "second client's greeting")
    since = await start_mirror(d, speed=2 * MiB)
    await d.wait_status("job0", "running")
    # Not negotiated yet: no events, commands refused.
    await b.send(cmd("query-jobs"))
    m = await b.read()
    eq((m["error"]["class"], m["error"]["desc"]), NEED_CAPS, "second client before negotiation")
    await b.send({"execute": "qmp_capabilities", "id": "c"})
    eq(await b.read(), {"return": {}, "id": "c"}, "second client negotiates")
    # Now it sees the job's events too.
    mark = d.mark()
    await d.ret("block-job-pause", {"device": "job0"})
    await d.wait_status("job0", "paused")
    await d.ret("block-job-resume", {"device": "job0"})
    await d.wait_status("job0", "running")
    got = []
    while got[-1:] != ["running"]:
        e = await b.read()
        check("event" in e, f"second client: unexpected {e}")
        got.append(e["data"].get("status"))
    eq(got, ["paused", "running"], "second client sees pause/resume events")
    # Its commands work alongside the first client's.
    got = await b.exchange(cmd("query-jobs", ))
    eq([j["status"] for j in got[0]["return"]], ["running"], "query-jobs from the second client")

    # Clients that vanish mid-command.
    c1 = RawConn(d.sock)
    await c1.open()
    await c1.send(cmd("qmp_capabilities"))
    await c1.read()
    await c1.send(cmd("blockdev-add", **file_node("vanish", d.p("src2.raw"), **{"read-only": True})))
    c1.abort()
    c2 = RawConn(d.sock)
    await c2.open()
    await c2.send(cmd("qmp_capabilities"))
    await c2.read()
    await c2.send(cmd("blockdev-mirror", **mirror_args(job="job1", device="src2", target="tgt2",
                                                          speed=MiB)))
    c2.abort()
    c3 = RawConn(d.sock)
    await c3.open()
    await c3.send(b'{"execute": "qmp_capabilities"}{"execute": "block-job-pa')
    await c3.close()
    c4 = RawConn(d.sock)
    await c4.open()
    c4.abort()
    # The vanished clients' complete commands ran.
    await d.wait_status("job1", "running")
    deadline = asyncio.get_running_loop().time() + 30
    while "vanish" not in [n["node-name"] for n in await d.ret("query-named-block-nodes")]:
        check(asyncio.get_running_loop().time() < deadline, "blockdev-add of a vanished client")
        await asyncio.sleep(0.05)
    await d.ret("block-job-cancel", {"device": "job1"})
    await d.wait_status("job1", "null")
    # job0 was not disturbed; complete it.
    eq((await d.query_job())["status"], "running", "job0 after the vanished clients")
    await d.ret("block-job-set-speed", {"device": "job0", "speed": 0})
    await d.wait_event("BLOCK_JOB_READY", lambda e: e["device"] == "job0")
    await d.ret("block-job-complete", {"device": "job0"})
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since), START + ["paused", "running", "ready", "READY"] + COMPLETE_TAIL,
       "job0 events on the first client")
    assert_same_file(d.p("src.raw"), d.p("tgt.raw"), "images after complete")
    # The second client saw the same job0 events after it negotiated.
    rest, stashed = [], list(b.events)  # events exchange() set aside
    while rest[-1:] != ["null"]:
        e = stashed.pop(0) if stashed else await b.read()
        d_ = e.get("data", {})
        if d_.get("id") == "job0" or d_.get("device") == "job0":
            rest.append(d_.get("status", e["event"]))
    eq(rest, ["ready", "BLOCK_JOB_READY"] + ["waiting", "pending", "BLOCK_JOB_COMPLETED",
                                             "concluded", "null"], "second client's job0 events")
    await d.quit()
    # The second client's connection is closed by the quit.
    with_eof = False
    for _ in range(100):
        try:
            await b.read(timeout=5)
        except EOFError:
            with_eof = True
            break
    check(with_eof, "second client's connection closed after quit")


async def full_target_run(ctx, kind):
    """The ENOSPC sequence against one daemon; returns what must agree with
    qemu-storage-daemon. The target is a sparse image on a 64 MiB ext4
    filesystem filled up to 10 MiB free (more than two of either daemon's
    copy requests), the source 28 MiB of data in 32."""
    name = "rm" if kind == "ringmirror" else "qsd"
    fs = await SmallFs(ctx, f"fs-{name}", 64).mount()
    d = await ctx.daemon(name, kind).start()
    src = make_source(d.p("src.raw"), 32 * MiB, seed=77)
    with open(src, "rb") as f:
        src_before = f.read()
    await d.ret("blockdev-add", file_node("src", src))
    await d.ret("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(d.nbd_sock)}}})
    await d.ret("block-export-add", {"type": "nbd", "id": "exp0", "node-name": "src",
                                     "name": "src", "writable": True})
    out = {}

    # 1. on-target-error=report (the default): the job fails with the error,
    # the source is untouched, the daemon goes on serving.
    tgt1 = make_blank(fs.mnt / "tgt1.raw", 32 * MiB)
    filler = fs.fill(10 * MiB)
    await d.ret("blockdev-add", file_node("tgt1", tgt1))
    since = d.mark()
    await d.ret("blockdev-mirror", mirror_args("job1", target="tgt1"))
    done = await job_ending(d, "job1", since, "report", out)
    check(done["offset"] < done["len"], f"report: COMPLETED claims all was copied: {done}")
    with open(src, "rb") as f:
        check(f.read() == src_before, "report: the source changed")
    await d.qemu_io("read -P 0xa5 28M 4M")
    await d.ret("blockdev-del", {"node-name": "tgt1"})
    tgt1.unlink()

    # 2. on-target-error=enospc: the job stops (paused, io-status nospace),
    # keeps what it copied, the guest writes on; once space is freed,
    # resume finishes the copy and complete switches: nothing lost.
    tgt = make_blank(fs.mnt / "tgt.raw", 32 * MiB)
    filler.unlink()
    filler = fs.fill(10 * MiB)
    await d.ret("blockdev-add", file_node("tgt", tgt))
    since = d.mark()
    await d.ret("blockdev-mirror", mirror_args(**{"on-target-error": "enospc"}))
    await d.wait_event("BLOCK_JOB_ERROR")
    await d.wait_status("job0", "paused")
    await asyncio.sleep(0.5)  # errors of copies still in flight come in
    j = await d.query_job()
    out["stopped: query"] = {k: j[k] for k in ("status", "paused", "ready", "io-status", "busy")}
    check(0 < j["offset"] < j["len"], f"stopped: progress {j['offset']} of {j['len']}")
    # What the job wrote before the disk filled is the source's: every
    # 64 KiB block of the target is still blank or equal to the source.
    kept = 0
    with open(src, "rb") as fs_, open(tgt, "rb") as ft:
        for off in range(0, 32 * MiB, 64 * KiB):
            a, b = fs_.read(64 * KiB), ft.read(64 * KiB)
            if b != a:
                check(b == bytes(64 * KiB), f"stopped: target block at {off} is neither blank "
                                            "nor the source's")
            elif a != bytes(64 * KiB):
                kept += 1
    check(kept > 0, "stopped: no data block of the source on the target")
    await d.qemu_io("write -P 0x5e 1M 64k")  # the guest goes on while the job is stopped
    await d.qemu_io("write -P 0x5f 30M 64k")
    await asyncio.sleep(0.3)
    j2 = await d.query_job()
    eq(j2["offset"], j["offset"], "stopped: progress frozen")
    filler.unlink()
    await d.ret("block-job-resume", {"device": "job0"})
    await d.wait_event("BLOCK_JOB_READY")
    j = await d.query_job()
    out["resumed: query"] = {k: j[k] for k in ("status", "paused", "ready", "io-status")}
    await d.ret("block-job-complete", {"device": "job0"})
    await job_ending(d, "job0", since, "enospc", out)
    assert_same_file(src, tgt, f"{kind}: source and target after ENOSPC, resume and complete")
    eq(read_range(tgt, 1 * MiB, 64 * KiB), b"\x5e" * (64 * KiB), "guest write while stopped")
    eq(read_range(tgt, 30 * MiB, 64 * KiB), b"\x5f" * (64 * KiB), "guest write while stopped")
    await d.quit()
    return out


async def job_ending(d, job, since, what, out):
    """Wait for `job` to complete and go away; record in `out` its events
    since `since`, its distinct BLOCK_JOB_ERROR events and the COMPLETED
    error, under keys starting with `what`. Returns the COMPLETED data."""
    done = await d.wait_event("BLOCK_JOB_COMPLETED", lambda e: e.get("device") == job)
    await d.wait_status(job, "null")
    out[f"{what}: events"] = dedup(d.seq(job, since))
    out[f"{what}: error events"] = sorted({json.dumps(e, sort_keys=True) for _, e in
                                           d.events(since, ["BLOCK_JOB_ERROR"])})
    out[f"{what}: COMPLETED error"] = done.get("error")
    return done


def dedup(seq):
    """Runs of the same token collapsed: one BLOCK_JOB_ERROR comes per failed
    request, and how many requests were in flight is not the point."""
    return [t for i, t in enumerate(seq) if i == 0 or seq[i - 1] != t]


async def sc_full_target(ctx):
    """A mirror whose target filesystem really fills up (a loop-mounted
    ext4, not an injected fault): report fails the job with "No space left on
    device" and leaves the source as it was; enospc stops the job with
    io-status nospace, the guest keeps writing through the export, and after
    space is freed resume and complete give a target identical to the source
    with every guest write. The same steps against qemu-storage-daemon must
    give the same events (runs of BLOCK_JOB_ERROR collapsed), states and
    errors."""
    ours = await full_target_run(ctx, "ringmirror")
    want = {
        "report: events": ["created", "running", "ERROR", "aborting", "COMPLETED", "concluded",
                           "null"],
        "report: error events": [json.dumps({"action": "report", "device": "job1",
                                             "operation": "write"}, sort_keys=True)],
        "report: COMPLETED error": "No space left on device",
        "stopped: query": {"status": "paused", "paused": True, "ready": False,
                           "io-status": "nospace", "busy": False},
        "resumed: query": {"status": "ready", "paused": False, "ready": True, "io-status": "ok"},
        "enospc: events": ["created", "running", "ERROR", "paused", "running", "ready", "READY",
                           "waiting", "pending", "COMPLETED", "concluded", "null"],
        "enospc: error events": [json.dumps({"action": "stop", "device": "job0",
                                             "operation": "write"}, sort_keys=True)],
        "enospc: COMPLETED error": None,
    }
    for k, v in want.items():
        eq(ours[k], v, f"ringmirror: {k}")
    theirs = await full_target_run(ctx, "qsd")
    for k in want:
        eq(ours[k], theirs[k], f"ringmirror vs qemu-storage-daemon: {k}")
    log("full target: ringmirror and qemu-storage-daemon agree:", json.dumps(ours))


SCENARIOS = {
    "wrong_verbs": sc_wrong_verbs,
    "bad_input": sc_bad_input,
    "multi_monitor": sc_multi_monitor,
    "full_target": sc_full_target,
}
