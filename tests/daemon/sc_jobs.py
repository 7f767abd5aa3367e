"""Mirror job scenarios: complete, cancel, pause/resume, pending, sync none,
write-blocking, drive-mirror, quit with a job running."""

import asyncio

import json

from rmtest import (CHILDREN, MiB, KiB, Failure, assert_same_file, check, eq, file_node,
                    make_blank, make_source, mirror_args, qemu_img_compare, read_range, run)

SIZE = 32 * MiB

# The job's events, from blockdev-mirror to the end, for the usual endings.
START = ["created", "running"]
COMPLETE_TAIL = ["waiting", "pending", "COMPLETED", "concluded", "null"]
CANCEL_TAIL = ["aborting", "CANCELLED", "concluded", "null"]


def final_event_ok(data, job="job0", speed=0):
    eq(sorted(data), ["device", "len", "offset", "speed", "type"], "final event keys")
    eq((data["device"], data["type"], data["speed"]), (job, "mirror", speed), "final event fields")


async def start_mirror(d, **kw):
    """blockdev-mirror; created and running must precede the reply (QSD emits
    both synchronously in the command)."""
    since = d.mark()
    await d.ret("blockdev-mirror", mirror_args(**kw))
    job = kw.get("job", "job0")
    eq(d.seq(job, since, replies=True)[:3], ["created", "running", "<blockdev-mirror>"],
       "events before the blockdev-mirror reply")
    return since


# ---------------------------------------------------------------------------

async def sc_complete(ctx):
    """sync=full with qemu-io writes through the export before and after
    READY; complete; the export follows the target; the images are identical
    at the switch; later writes land in the target file only."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    src, tgt = d.p("src.raw"), d.p("tgt.raw")
    since = await start_mirror(d, speed=1 * MiB)
    await d.wait_status("job0", "running")
    # Before READY (at 1 MiB/s the job needs 32 s for phase 1): into the part
    # copied first, into the hole and near the end.
    writes = [(0xab, 1 * MiB, 64 * KiB), (0xac, 25 * MiB, 64 * KiB), (0xad, 30 * MiB, 128 * KiB)]
    for pat, off, n in writes[:2]:
        await d.qemu_io(f"write -P {pat:#x} {off} {n}")
    j = await d.query_job()
    eq((j["status"], j["ready"], j["speed"], j["type"]), ("running", False, MiB, "mirror"),
       "query-block-jobs while running")
    check(d.seq("job0", since)[-1] == "running", f"READY too early: {d.seq()}")
    await d.qemu_io("write -P 0xad %d %d" % writes[2][1:])
    await d.ret("block-job-set-speed", {"device": "job0", "speed": 0})
    ready = await d.wait_event("BLOCK_JOB_READY")
    eq(sorted(ready), ["device", "len", "offset", "speed", "type"], "READY keys")
    eq((ready["device"], ready["type"], ready["speed"]), ("job0", "mirror", 0), "READY fields")
    eq(ready["len"], ready["offset"], "READY: offset == len")
    check(ready["len"] >= SIZE, f"READY len {ready['len']} < image size")
    j = await d.query_job()
    eq((j["status"], j["ready"], j["paused"], j["io-status"]), ("ready", True, False, "ok"),
       "query-block-jobs in ready")
    # After READY.
    writes += [(0xae, 2 * MiB, 64 * KiB), (0xaf, SIZE - 4 * KiB, 4 * KiB), (0xb0, 12345, 777)]
    for pat, off, n in writes[3:]:
        await d.qemu_io(f"write -P {pat:#x} {off} {n}")
    eq(d.seq("job0", since), START + ["ready", "READY"], "job events before complete")
    await d.ret("block-job-complete", {"device": "job0"})
    done = await d.wait_event("BLOCK_JOB_COMPLETED")
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since), START + ["ready", "READY"] + COMPLETE_TAIL, "job events")
    final_event_ok(done)
    eq(done["len"], done["offset"], "COMPLETED: offset == len")
    # Identical at the switch (nothing has written since).
    assert_same_file(src, tgt, "source and target after complete")
    await qemu_img_compare(src, tgt)
    for pat, off, n in writes:
        eq(read_range(tgt, off, n), bytes([pat]) * n, f"guest write {pat:#x} at {off} on target")
    eq(await d.ret("query-block-jobs"), [], "query-block-jobs after the job")
    eq(await d.ret("query-jobs"), [], "query-jobs after the job")
    eq(await d.export_node(), "tgt", "export exp0's node after complete")
    before_src = read_range(src, 0, 64 * KiB)
    await d.qemu_io("write -P 0x77 0 64k")
    eq(read_range(tgt, 0, 64 * KiB), b"\x77" * 64 * KiB, "write after complete on target file")
    eq(read_range(src, 0, 64 * KiB), before_src, "source file untouched after complete")
    await d.quit()


async def sc_cancel_before_ready(ctx):
    """Soft cancel while running (speed-limited) is a force cancel:
    aborting -> CANCELLED -> concluded -> null, no waiting/pending."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    since = await start_mirror(d, speed=1 * MiB)
    await d.wait_status("job0", "running")
    await asyncio.sleep(0.3)
    j = await d.query_job()
    eq((j["status"], j["ready"], j["speed"]), ("running", False, MiB), "query while running")
    check(j["offset"] < j["len"], f"job already done before cancel: {j}")
    await d.ret("block-job-cancel", {"device": "job0"})
    ev = await d.wait_event("BLOCK_JOB_CANCELLED")
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since), START + CANCEL_TAIL, "job events")
    final_event_ok(ev, speed=MiB)
    check(ev["offset"] < ev["len"], f"CANCELLED: a speed-limited job cannot be done: {ev}")
    eq(await d.ret("query-block-jobs"), [], "no job after cancel")
    eq(await d.export_node(), "src", "export stays on the source")
    # The source is unharmed and still served.
    await d.qemu_io("write -P 0x42 0 4k")
    eq(read_range(d.p("src.raw"), 0, 4096), b"\x42" * 4096, "write after cancel on source")
    await d.quit()


async def sc_force_cancel_ready(ctx):
    """Force cancel in READY: CANCELLED (not COMPLETED), export stays on src."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    since = await start_mirror(d)
    await d.wait_event("BLOCK_JOB_READY")
    await d.ret("block-job-cancel", {"device": "job0", "force": True})
    ev = await d.wait_event("BLOCK_JOB_CANCELLED")
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since), START + ["ready", "READY"] + CANCEL_TAIL, "job events")
    final_event_ok(ev)
    eq(ev["len"], ev["offset"], "CANCELLED in ready: offset == len")
    eq(d.events(since, {"BLOCK_JOB_COMPLETED"}), [], "no COMPLETED")
    eq(await d.export_node(), "src", "export stays on the source")
    await d.qemu_io("write -P 0x55 0 64k")
    eq(read_range(d.p("src.raw"), 0, 64 * KiB), b"\x55" * 64 * KiB, "later write on source")
    await d.quit()


async def sc_soft_cancel_ready(ctx):
    """Soft cancel in READY: COMPLETED without switch; the target is a
    consistent copy (identical to the source), the export stays on src and
    later writes go to src only."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    src, tgt = d.p("src.raw"), d.p("tgt.raw")
    since = await start_mirror(d)
    await d.wait_event("BLOCK_JOB_READY")
    await d.qemu_io("write -P 0x3e 5M 1M")
    await d.ret("block-job-cancel", {"device": "job0"})
    ev = await d.wait_event("BLOCK_JOB_COMPLETED")
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since), START + ["ready", "READY"] + COMPLETE_TAIL, "job events")
    final_event_ok(ev)
    eq(d.events(since, {"BLOCK_JOB_CANCELLED"}), [], "no CANCELLED on soft cancel in ready")
    eq(await d.export_node(), "src", "export stays on the source")
    assert_same_file(src, tgt, "point-in-time copy after soft cancel")
    await qemu_img_compare(src, tgt)
    before = read_range(tgt, 0, 64 * KiB)
    await d.qemu_io("write -P 0x66 0 64k")
    eq(read_range(src, 0, 64 * KiB), b"\x66" * 64 * KiB, "later write on source")
    eq(read_range(tgt, 0, 64 * KiB), before, "later write not on target")
    await d.quit()


async def sc_pause_resume(ctx):
    """Pause/resume while running (paused) and in ready (standby), the
    generic job-* verbs too; set-speed shows in query; progress is frozen
    while paused; complete in standby takes effect on resume."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    since = await start_mirror(d, speed=2 * MiB)
    await d.wait_status("job0", "running")
    await asyncio.sleep(0.2)
    mark = d.mark()
    await d.ret("block-job-pause", {"device": "job0"})
    await d.wait_status("job0", "paused")
    j = await d.query_job()
    eq((j["status"], j["paused"], j["ready"], j["busy"]), ("paused", True, False, False),
       "query while paused")
    await d.ret("block-job-set-speed", {"device": "job0", "speed": 3 * MiB})
    eq((await d.query_job())["speed"], 3 * MiB, "set-speed while paused shows in query")
    frozen = (await d.query_job())["offset"]
    qj = await d.query_jobs_entry()
    eq((qj["status"], qj["type"], qj["current-progress"]), ("paused", "mirror", frozen),
       "query-jobs while paused")
    await asyncio.sleep(1.0)
    eq((await d.query_job())["offset"], frozen, "offset while paused")
    check(frozen < SIZE, f"paused job already done: {frozen}")
    await d.ret("block-job-resume", {"device": "job0"})
    await d.wait_status("job0", "running")
    eq(d.seq("job0", mark), ["paused", "running"], "pause/resume events while running")
    j = await d.query_job()
    eq((j["status"], j["paused"], j["speed"]), ("running", False, 3 * MiB), "query after resume")
    # Progress moves again.
    deadline = asyncio.get_running_loop().time() + 20
    while (await d.query_job())["offset"] == frozen:
        check(asyncio.get_running_loop().time() < deadline, "no progress after resume")
        await asyncio.sleep(0.1)
    await d.ret("block-job-set-speed", {"device": "job0", "speed": 0})
    eq((await d.query_job())["speed"], 0, "set-speed 0 shows in query")
    await d.wait_event("BLOCK_JOB_READY")

    # In ready: pause -> standby, resume -> ready; both verb families.
    for pause, resume, key in (("block-job-pause", "block-job-resume", "device"),
                               ("job-pause", "job-resume", "id")):
        mark = d.mark()
        await d.ret(pause, {key: "job0"})
        await d.wait_status("job0", "standby")
        j = await d.query_job()
        eq((j["status"], j["paused"], j["ready"]), ("standby", True, True), "query in standby")
        eq((await d.query_jobs_entry())["status"], "standby", "query-jobs in standby")
        await d.ret(resume, {key: "job0"})
        await d.wait_status("job0", "ready")
        eq(d.seq("job0", mark), ["standby", "ready"], f"{pause}/{resume} in ready")
        j = await d.query_job()
        eq((j["status"], j["paused"], j["ready"]), ("ready", False, True), "query after resume")

    # Writes while in standby are mirrored after resume.
    await d.ret("block-job-pause", {"device": "job0"})
    await d.wait_status("job0", "standby")
    await d.qemu_io("write -P 0x99 3M 256k")
    # complete in standby: accepted, takes effect on resume.
    await d.ret("block-job-complete", {"device": "job0"})
    await asyncio.sleep(0.5)
    eq((await d.query_job())["status"], "standby", "complete in standby waits for resume")
    mark = d.mark()
    await d.ret("block-job-resume", {"device": "job0"})
    ev = await d.wait_event("BLOCK_JOB_COMPLETED")
    await d.wait_status("job0", "null")
    eq(d.seq("job0", mark), ["ready"] + COMPLETE_TAIL, "resume after complete in standby")
    final_event_ok(ev)
    eq(len(d.events(since, {"BLOCK_JOB_READY"})), 1, "one READY only")
    eq(await d.export_node(), "tgt", "export on target after complete")
    assert_same_file(d.p("src.raw"), d.p("tgt.raw"), "images after complete")
    await d.quit()


async def sc_complete_twice_in_standby(ctx):
    """QSD accepts block-job-complete in standby, and accepts it again (it
    only sets should_complete; tests/reference/qsd/wrong-verbs.json); on
    resume the job completes with no second READY."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    since = await start_mirror(d)
    await d.wait_event("BLOCK_JOB_READY")
    await d.ret("job-pause", {"id": "job0"})
    await d.wait_status("job0", "standby")
    await d.ret("block-job-complete", {"device": "job0"})
    await d.ret("job-complete", {"id": "job0"})
    await d.ret("block-job-complete", {"device": "job0"})
    eq((await d.query_job())["status"], "standby", "still in standby")
    await d.ret("job-resume", {"id": "job0"})
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since), START + ["ready", "READY", "standby", "ready"] + COMPLETE_TAIL,
       "job events")
    eq(await d.export_node(), "tgt", "export on target")
    assert_same_file(d.p("src.raw"), d.p("tgt.raw"), "images")
    await d.quit()


async def sc_auto_finalize_false(ctx):
    """auto-finalize/auto-dismiss false: pending + BLOCK_JOB_PENDING, wrong
    verbs while pending and concluded, job-finalize, job-dismiss; a write
    acknowledged through the export while pending is on the target after
    finalize (QEMU 10.0 loses it)."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    src, tgt = d.p("src.raw"), d.p("tgt.raw")
    since = await start_mirror(d, **{"auto-finalize": False, "auto-dismiss": False})
    await d.wait_event("BLOCK_JOB_READY")
    j = await d.query_job()
    eq((j["auto-finalize"], j["auto-dismiss"]), (False, False), "query shows the options")
    await d.ret("block-job-complete", {"device": "job0"})
    pend = await d.wait_event("BLOCK_JOB_PENDING")
    eq(pend, {"type": "mirror", "id": "job0"}, "BLOCK_JOB_PENDING data")
    eq(d.seq("job0", since), START + ["ready", "READY", "waiting", "pending", "PENDING"],
       "events up to pending")
    j = await d.query_job()
    eq((j["status"], j["ready"], j["paused"]), ("pending", False, True), "query in pending")
    eq((await d.query_jobs_entry())["status"], "pending", "query-jobs in pending")
    for cmd, args, verb in (("block-job-complete", {"device": "job0"}, "complete"),
                            ("job-dismiss", {"id": "job0"}, "dismiss"),
                            ("block-job-pause", {"device": "job0"}, "pause"),
                            ("block-job-set-speed", {"device": "job0", "speed": 1}, "set-speed")):
        await d.err(cmd, args, f"Job 'job0' in state 'pending' cannot accept command verb '{verb}'")
    # The data-loss window of QEMU 10.0: a write acknowledged while pending.
    await d.qemu_io("write -P 0x5a 1M 64k")
    await d.qemu_io("write -P 0x5b 20M 4k")
    mark = d.mark()
    await d.ret("job-finalize", {"id": "job0"})
    eq(d.seq("job0", mark, replies=True), ["COMPLETED", "concluded", "<job-finalize>"],
       "job-finalize: COMPLETED and concluded before the reply")
    j = await d.query_job()
    eq((j["status"], j["paused"], j["ready"]), ("concluded", False, False), "query in concluded")
    eq(read_range(tgt, 1 * MiB, 64 * KiB), b"\x5a" * 64 * KiB,
       "write acknowledged while pending is on the target file after finalize")
    eq(read_range(tgt, 20 * MiB, 4 * KiB), b"\x5b" * 4 * KiB, "second pending write on target")
    rc, out, err = await d.qemu_io("read -P 0x5a 1M 64k")
    check("Pattern verification failed" not in out + err, f"export lost the write: {out}{err}")
    eq(await d.export_node(), "tgt", "export on target after finalize")
    assert_same_file(src, tgt, "images after finalize")
    for cmd, args, verb in (("job-finalize", {"id": "job0"}, "finalize"),
                            ("block-job-cancel", {"device": "job0"}, "cancel"),
                            ("job-cancel", {"id": "job0"}, "cancel"),
                            ("job-pause", {"id": "job0"}, "pause")):
        await d.err(cmd, args, f"Job 'job0' in state 'concluded' cannot accept command verb '{verb}'")
    mark = d.mark()
    await d.ret("job-dismiss", {"id": "job0"})
    eq(d.seq("job0", mark, replies=True), ["null", "<job-dismiss>"], "job-dismiss")
    eq(await d.ret("query-jobs"), [], "no job after dismiss")
    eq(d.seq("job0", since), START + ["ready", "READY", "waiting", "pending", "PENDING",
                                      "COMPLETED", "concluded", "null"], "all job events")
    await d.quit()


async def sc_sync_none(ctx):
    """sync=none: READY at once with len=offset=0 (before the reply); only
    writes made after the start reach the target."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    tgt = d.p("tgt.raw")
    since = d.mark()
    await d.ret("blockdev-mirror", mirror_args(sync="none"))
    eq(d.seq("job0", since, replies=True),
       ["created", "running", "ready", "READY", "<blockdev-mirror>"], "sync=none start")
    ready = d.event("BLOCK_JOB_READY", since=since)
    eq((ready["len"], ready["offset"]), (0, 0), "READY progress with sync=none")
    await d.qemu_io("write -P 0x3c 2M 1M")
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        j = await d.query_job()
        if j["offset"] == j["len"] == MiB:
            break
        check(asyncio.get_running_loop().time() < deadline, f"progress after a 1 MiB write: {j}")
        await asyncio.sleep(0.05)
    await d.ret("block-job-complete", {"device": "job0"})
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since), START + ["ready", "READY"] + COMPLETE_TAIL, "job events")
    eq(read_range(tgt, 2 * MiB, MiB), b"\x3c" * MiB, "the write is on the target")
    eq(read_range(tgt, 0, 2 * MiB), bytes(2 * MiB), "unwritten data not copied")
    eq(read_range(tgt, 3 * MiB, MiB), bytes(MiB), "unwritten data not copied")
    eq(read_range(tgt, SIZE - MiB, MiB), bytes(MiB), "unwritten data not copied")
    eq(await d.export_node(), "tgt", "export on target")
    await d.quit()


async def sc_write_blocking(ctx):
    """copy-mode write-blocking: actively-synced false while running and true
    in ready; a write in ready is on the target file when qemu-io returns;
    block-job-change background -> write-blocking while running, with QEMU's
    errors for the other changes."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    src, tgt = d.p("src.raw"), d.p("tgt.raw")
    since = await start_mirror(d, speed=2 * MiB, **{"copy-mode": "write-blocking"})
    await d.wait_status("job0", "running")
    j = await d.query_job()
    eq((j["status"], j["actively-synced"]), ("running", False), "write-blocking while running")
    await d.ret("block-job-set-speed", {"device": "job0", "speed": 0})
    await d.wait_event("BLOCK_JOB_READY")
    deadline = asyncio.get_running_loop().time() + 20
    while not (await d.query_job())["actively-synced"]:
        check(asyncio.get_running_loop().time() < deadline, "actively-synced never true in ready")
        await asyncio.sleep(0.05)
    for i, off in enumerate((4 * MiB, 26 * MiB, 31 * MiB + 512)):
        pat = 0x11 + i
        await d.qemu_io(f"write -P {pat:#x} {off} 64k")
        eq(read_range(tgt, off, 64 * KiB), bytes([pat]) * 64 * KiB,
           f"write-blocking: write at {off} on the target when qemu-io returned")
    j = await d.query_job()
    eq((j["status"], j["actively-synced"]), ("ready", True), "still synced after writes")
    await d.ret("block-job-complete", {"device": "job0"})
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since), START + ["ready", "READY"] + COMPLETE_TAIL, "job0 events")
    assert_same_file(src, tgt, "images after write-blocking job")

    # job1: background, switched to write-blocking while running.
    make_source(d.p("src2.raw"), SIZE, seed=77)
    make_blank(d.p("tgt2.raw"), SIZE)
    await d.ret("blockdev-add", file_node("src2", d.p("src2.raw")))
    await d.ret("blockdev-add", file_node("tgt2", d.p("tgt2.raw")))
    await d.ret("nbd-server-add", {"device": "src2", "writable": True})
    since = await start_mirror(d, job="job1", device="src2", target="tgt2", speed=2 * MiB)
    await d.wait_status("job1", "running")
    eq((await d.query_job("job1"))["actively-synced"], False, "background job")
    change = {"id": "job1", "type": "mirror", "copy-mode": "write-blocking"}
    await d.ret("block-job-change", change)
    await d.ret("block-job-change", change)  # the same mode again: no-op
    await d.err("block-job-change", dict(change, **{"copy-mode": "background"}),
                "Change to copy mode 'background' is not implemented")
    await d.err("block-job-change", {"id": "job1", "type": "mirror"},
                "Parameter 'copy-mode' is missing")
    eq((await d.query_job("job1"))["actively-synced"], False, "not synced before ready")
    await d.ret("block-job-set-speed", {"device": "job1", "speed": 0})
    await d.wait_event("BLOCK_JOB_READY", lambda e: e["device"] == "job1")
    deadline = asyncio.get_running_loop().time() + 20
    while not (await d.query_job("job1"))["actively-synced"]:
        check(asyncio.get_running_loop().time() < deadline, "job1 never actively synced")
        await asyncio.sleep(0.05)
    await d.qemu_io("write -P 0x21 8M 128k", export="src2")
    eq(read_range(d.p("tgt2.raw"), 8 * MiB, 128 * KiB), b"\x21" * 128 * KiB,
       "after block-job-change: write on target when qemu-io returned")
    await d.ret("block-job-complete", {"device": "job1"})
    await d.wait_status("job1", "null")
    eq(d.seq("job1", since), START + ["ready", "READY"] + COMPLETE_TAIL, "job1 events")
    assert_same_file(d.p("src2.raw"), d.p("tgt2.raw"), "images of job1")
    await d.quit()


async def sc_drive_mirror(ctx):
    """drive-mirror with mode absolute-paths (creates the target file) and
    mode existing; job-id defaults to the device name."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    src, new = d.p("src.raw"), d.p("created.raw")
    check(not new.exists(), "target must not exist yet")
    since = d.mark()
    await d.ret("drive-mirror", {"device": "src", "target": str(new), "sync": "full",
                                 "format": "raw", "mode": "absolute-paths"})
    eq(d.seq("src", since, replies=True)[:3], ["created", "running", "<drive-mirror>"],
       "drive-mirror start (job id = device name)")
    check(new.exists(), "drive-mirror absolute-paths created the target")
    eq(new.stat().st_size, SIZE, "created target's size")
    await d.wait_event("BLOCK_JOB_READY", lambda e: e["device"] == "src")
    await d.qemu_io("write -P 0x31 7M 64k")
    await d.ret("block-job-complete", {"device": "src"})
    await d.wait_status("src", "null")
    eq(d.seq("src", since), START + ["ready", "READY"] + COMPLETE_TAIL, "drive-mirror events")
    assert_same_file(src, new, "drive-mirror absolute-paths copy")
    eq(read_range(new, 7 * MiB, 64 * KiB), b"\x31" * 64 * KiB, "guest write on created target")
    node = await d.export_node()
    check(node != "src", f"export still on src after drive-mirror complete: {node}")
    await d.qemu_io("write -P 0x32 0 4k")
    eq(read_range(new, 0, 4096), b"\x32" * 4096, "export writes to the created target")

    # mode existing onto a pre-made file, from a second node.
    make_source(d.p("src2.raw"), SIZE, seed=99)
    make_blank(d.p("existing.raw"), SIZE)
    await d.ret("blockdev-add", file_node("src2", d.p("src2.raw")))
    since = d.mark()
    await d.ret("drive-mirror", {"device": "src2", "job-id": "dm", "target": str(d.p("existing.raw")),
                                 "sync": "full", "format": "raw", "mode": "existing",
                                 "node-name": "dmtgt"})
    await d.wait_event("BLOCK_JOB_READY", lambda e: e["device"] == "dm")
    names = [n["node-name"] for n in await d.ret("query-named-block-nodes", {"flat": True})]
    check("dmtgt" in names, f"drive-mirror node-name in query-named-block-nodes: {names}")
    await d.ret("block-job-complete", {"device": "dm"})
    await d.wait_status("dm", "null")
    eq(d.seq("dm", since), START + ["ready", "READY"] + COMPLETE_TAIL, "mode existing events")
    assert_same_file(d.p("src2.raw"), d.p("existing.raw"), "drive-mirror mode existing copy")
    # mode existing with a missing file is an error, and leaves no job.
    reply = await d.cmd("drive-mirror", {"device": "src2", "job-id": "dm2",
                                         "target": str(d.p("missing.raw")), "sync": "full",
                                         "mode": "existing"})
    check("error" in reply and "missing.raw" in reply["error"]["desc"],
          f"drive-mirror existing onto a missing file: {reply}")
    eq(await d.ret("query-jobs"), [], "no job left by the failed drive-mirror")
    # blockdev-mirror without job-id: the id is the device name (QSD refuses
    # "Invalid job ID ''" for a node without a BlockBackend).
    make_blank(d.p("tgt3.raw"), SIZE)
    await d.ret("blockdev-add", file_node("tgt3", d.p("tgt3.raw")))
    since = d.mark()
    await d.ret("blockdev-mirror", {"device": "src2", "target": "tgt3", "sync": "full"})
    await d.wait_event("BLOCK_JOB_READY", lambda e: e["device"] == "src2")
    eq([j["id"] for j in await d.ret("query-jobs")], ["src2"], "default job id")
    await d.ret("block-job-cancel", {"device": "src2", "force": True})
    await d.wait_status("src2", "null")
    eq(d.seq("src2", since), START + ["ready", "READY"] + CANCEL_TAIL, "default-id job events")
    await d.quit()


async def sc_nonblank_target(ctx):
    """A target full of old data (0xEE everywhere): after complete it equals
    the source, the source's hole included (reads as zeros), and with
    target-is-zero false nothing of the old data survives."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    src, tgt = d.p("src.raw"), d.p("tgt.raw")
    with open(tgt, "r+b") as f:
        for off in range(0, SIZE, MiB):
            f.write(b"\xee" * MiB)
    since = await start_mirror(d)
    await d.wait_event("BLOCK_JOB_READY")
    await d.ret("block-job-complete", {"device": "job0"})
    await d.wait_status("job0", "null")
    eq(d.seq("job0", since), START + ["ready", "READY"] + COMPLETE_TAIL, "job events")
    eq(read_range(tgt, SIZE * 3 // 4, SIZE // 8), bytes(SIZE // 8), "the source's hole on target")
    assert_same_file(src, tgt, "images")
    await d.quit()


async def sc_quit_during_job(ctx):
    """quit with job0 running (speed-limited) and job1 ready: as in QSD, the
    export is deleted and both jobs are force-cancelled (aborting, CANCELLED,
    concluded, null; never COMPLETED, no switch), all of it before the quit
    reply; then the connection closes and the daemon exits 0. A second
    monitor connection sees the same events."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    make_source(d.p("src2.raw"), SIZE, seed=5)
    make_blank(d.p("tgt2.raw"), SIZE)
    await d.ret("blockdev-add", file_node("src2", d.p("src2.raw")))
    await d.ret("blockdev-add", file_node("tgt2", d.p("tgt2.raw")))
    observer_steps = []
    observer = await d.connect_client(observer_steps, "observer")
    await start_mirror(d, job="job1", device="src2", target="tgt2")
    await d.wait_event("BLOCK_JOB_READY", lambda e: e["device"] == "job1")
    await start_mirror(d, job="job0", speed=MiB)
    await d.wait_status("job0", "running")
    await asyncio.sleep(0.3)
    eq(sorted((j["id"], j["status"]) for j in await d.ret("query-jobs")),
       [("job0", "running"), ("job1", "ready")], "jobs before quit")
    since = d.mark()
    obs_since = len(observer_steps)
    await d.quit()
    # Let the observer read to EOF.
    for _ in range(3000):
        if observer.runstate.name != "RUNNING":
            break
        await asyncio.sleep(0.01)
    else:
        raise Failure("the observer's connection was not closed within 30 s of quit")
    try:
        await observer.disconnect()
    except Exception:
        pass
    quit_at = next(i for i, s in enumerate(d.steps) if s.get("execute") == "quit")
    eq([s.get("event") for s in d.steps[quit_at + 1:]], [], "nothing after the quit reply")
    for who, steps in (("quitting client", d.steps[since:quit_at]),
                       ("observer", observer_steps[obs_since:])):
        names = [s["event"] for s in steps if "event" in s]
        check("BLOCK_JOB_COMPLETED" not in names, f"{who}: a job completed on quit: {names}")
        deleted = [i for i, s in enumerate(steps) if s.get("event") == "BLOCK_EXPORT_DELETED"]
        eq([steps[i]["data"] for i in deleted], [{"id": "exp0"}], f"{who}: export deleted")
        for job in ("job0", "job1"):
            seq = [s["data"]["status"] if s["event"] == "JOB_STATUS_CHANGE" else s["event"]
                   for s in steps if "event" in s and job in (s["data"].get("id"),
                                                              s["data"].get("device"))]
            eq(seq, ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"],
               f"{who}: {job}'s events on quit")
            first = next(i for i, s in enumerate(steps) if s.get("event") == "JOB_STATUS_CHANGE"
                         and s["data"]["id"] == job)
            check(deleted[0] < first, f"{who}: the export is deleted before {job} is cancelled")
    # No switch happened, and the speed-limited job never finished its copy.
    check(read_range(d.p("tgt.raw"), 30 * MiB, MiB) != read_range(d.p("src.raw"), 30 * MiB, MiB),
          "job0 (1 MiB/s) cannot have copied the end of the image")
    check(not d.sock.exists(), "the QMP socket file is removed on quit")


async def sc_guest_share(ctx):
    """ringmirror's own x-guest-share (blockdev-mirror, drive-mirror) and
    x-block-job-set-guest-share: listed in query-commands, bad values refused
    with QMP's wording after the names and types are checked (no job, images
    untouched), good ones taken while running and in standby, shown in
    query-block-jobs as x-guest-share unless automatic (no `share`: back to
    automatic); refused under its own verb name while pending; the job then
    completes to an identical target."""
    d = await ctx.daemon().start()
    await d.setup(SIZE)
    src, tgt = d.p("src.raw"), d.p("tgt.raw")
    names = {c["name"] for c in await d.ret("query-commands")}
    check("x-block-job-set-guest-share" in names, "query-commands lacks x-block-job-set-guest-share")
    pct = "Parameter 'x-guest-share' expects a percentage from 0 to 100"
    for bad, desc in ((101, pct), (-1, pct), (1 << 40, pct),
                      ("50", "Invalid parameter type for 'x-guest-share', expected: integer"),
                      (50.5, "Invalid parameter type for 'x-guest-share', expected: integer")):
        await d.err("blockdev-mirror", mirror_args(**{"x-guest-share": bad}), desc)
    await d.err("blockdev-mirror", mirror_args(**{"x-guest-share": 101, "bogus": 1}),
                "Parameter 'bogus' is unexpected")
    eq(await d.ret("query-block-jobs"), [], "no job after refused starts")
    await start_mirror(d, speed=MiB, **{"x-guest-share": 50, "auto-finalize": False})
    await d.wait_status("job0", "running")
    j = await d.query_job()
    eq(sorted(j), ["actively-synced", "auto-dismiss", "auto-finalize", "busy", "device",
                   "io-status", "len", "offset", "paused", "ready", "speed", "status", "type",
                   "x-guest-share"], "query-block-jobs keys")
    eq(j["x-guest-share"], 50, "x-guest-share in query-block-jobs")
    cmd = "x-block-job-set-guest-share"
    share = "Parameter 'share' expects a percentage from 0 to 100"
    for args, desc, cls in (
            ({"device": "job0", "share": 101}, share, "GenericError"),
            ({"device": "job0", "share": -5}, share, "GenericError"),
            ({"device": "job0", "share": True},
             "Invalid parameter type for 'share', expected: integer", "GenericError"),
            ({"device": "job0", "share": 5, "speed": 1}, "Parameter 'speed' is unexpected",
             "GenericError"),
            ({"share": 5}, "Parameter 'device' is missing", "GenericError"),
            ({"device": "nope", "share": 5}, "Block job 'nope' not found", "DeviceNotActive")):
        await d.err(cmd, args, desc, cls=cls)
    eq((await d.query_job())["x-guest-share"], 50, "a refused share changed nothing")
    for s in (0, 100, 1, 75):
        eq(await d.ret(cmd, {"device": "job0", "share": s}), {}, f"share {s}")
        eq((await d.query_job())["x-guest-share"], s, f"share {s} in query-block-jobs")
    eq(await d.ret(cmd, {"device": "job0"}), {}, "back to automatic")
    check("x-guest-share" not in await d.query_job(), "automatic share shown in query")
    await d.ret("block-job-set-speed", {"device": "job0", "speed": 0})
    await d.wait_event("BLOCK_JOB_READY")
    await d.ret("block-job-pause", {"device": "job0"})
    await d.wait_status("job0", "standby")
    eq(await d.ret(cmd, {"device": "job0", "share": 0}), {}, "share in standby")
    await d.ret("block-job-resume", {"device": "job0"})
    await d.wait_status("job0", "ready")
    await d.ret("block-job-complete", {"device": "job0"})
    await d.wait_status("job0", "pending")
    await d.err(cmd, {"device": "job0", "share": 5},
                "Job 'job0' in state 'pending' cannot accept command verb 'set-guest-share'")
    await d.ret("job-finalize", {"id": "job0"})
    await d.wait_status("job0", "null")
    await d.err(cmd, {"device": "job0", "share": 5}, "Block job 'job0' not found",
                cls="DeviceNotActive")
    assert_same_file(src, tgt, "source and target after complete")
    await d.quit()


async def sc_mirror_cli(ctx):
    """`ringmirror mirror --qmp` (the README's step 4) drives a mirror on
    ringmirror serve and on qemu-storage-daemon alike: --json prints the
    job's events as they come, --complete-when-ready completes at READY, the
    export follows the target, the images are identical, exit code 0. Its
    errors (no such node, no socket, an out-of-range --guest-share) are one
    clear line and a non-zero exit."""
    for kind in ("ringmirror", "qsd"):
        d = await ctx.daemon(kind, kind).start()
        await d.setup(SIZE)
        src, tgt = d.p("src.raw"), d.p("tgt.raw")
        argv = [ctx.binary, "mirror", "--qmp", d.sock, "--job-id", "cli0"]
        mirror = [*argv, "--device", "src", "--target", "tgt", "--complete-when-ready", "--json"]
        if kind == "qsd":
            # QSD's monitor serves one client at a time; a second one waits
            # for the greeting, and ringmirror mirror says so after 10 s.
            rc, _, err = await run(*argv, "--device", "src", "--target", "tgt", timeout=30)
            check(rc == 1 and "one client at a time" in err, f"qsd busy: rc {rc}, {err!r}")
            await d.client.disconnect()
            rc, _, err = await run(*mirror, "--guest-share", "50")
            check(rc == 1 and "Parameter 'x-guest-share' is unexpected" in err,
                  f"qsd and --guest-share: rc {rc}, {err!r}")
            rc, out, err = await run(*mirror)
        else:
            # Held at 1 MiB/s until the share is seen on the job, then let go.
            proc = await asyncio.create_subprocess_exec(
                *map(str, mirror), "--speed", "1M", "--guest-share", "30",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            CHILDREN.append(proc)
            await d.wait_status("cli0", "running")
            eq((await d.query_job("cli0"))["x-guest-share"], 30, "--guest-share sent")
            await d.ret("block-job-set-speed", {"device": "cli0", "speed": 0})
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            rc, out, err = proc.returncode, out.decode(), err.decode()
        check(rc == 0, f"{kind}: ringmirror mirror failed (rc {rc}):\n{out}\n{err}")
        lines = [json.loads(line) for line in out.splitlines()]
        events = [e["event"] for e in lines if "event" in e]
        ends = [e for e in events if e.startswith("BLOCK_JOB_")]
        eq(ends, ["BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"], f"{kind}: block job events printed")
        statuses = [e["data"]["status"] for e in lines if e.get("event") == "JOB_STATUS_CHANGE"]
        # It exits at COMPLETED (concluded and null follow on the monitor).
        eq((statuses[:2], statuses[-3:], events[-1]),
           (["created", "running"], ["ready", "waiting", "pending"], "BLOCK_JOB_COMPLETED"),
           f"{kind}: status changes printed, up to COMPLETED")
        assert_same_file(src, tgt, f"{kind}: source and target after ringmirror mirror")
        rc, out, err = await run(*argv, "--device", "nope", "--target", "tgt")
        check(rc == 1 and "blockdev-mirror failed" in err and len(err.strip().splitlines()) == 1,
              f"{kind}: unknown node: rc {rc}, stderr {err!r}")
        if kind == "qsd":
            d.client = await d.connect_client(d.steps)
        eq(await d.export_node(), "tgt", f"{kind}: the export follows the target")
        await d.quit()
    rc, _, err = await run(ctx.binary, "mirror", "--qmp", d.p("no.sock"), "--device", "src",
                           "--target", "tgt")
    check(rc == 1 and "no.sock" in err, f"no socket: rc {rc}, stderr {err!r}")
    rc, _, err = await run(ctx.binary, "mirror", "--qmp", d.p("no.sock"), "--device", "src",
                           "--target", "tgt", "--guest-share", "101")
    check(rc == 2 and "101 is not in 0..=100" in err, f"--guest-share 101: rc {rc}, {err!r}")


SCENARIOS = {
    "complete": sc_complete,
    "cancel_before_ready": sc_cancel_before_ready,
    "force_cancel_ready": sc_force_cancel_ready,
    "soft_cancel_ready": sc_soft_cancel_ready,
    "pause_resume": sc_pause_resume,
    "complete_twice_in_standby": sc_complete_twice_in_standby,
    "auto_finalize_false": sc_auto_finalize_false,
    "sync_none": sc_sync_none,
    "write_blocking": sc_write_blocking,
    "drive_mirror": sc_drive_mirror,
    "nonblank_target": sc_nonblank_target,
    "quit_during_job": sc_quit_during_job,
    "guest_share": sc_guest_share,
    "mirror_cli": sc_mirror_cli,
}
