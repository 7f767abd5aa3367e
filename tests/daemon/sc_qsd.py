"""Same script, same events: one QMP script run against `ringmirror serve`
and against qemu-storage-daemon (/usr/bin/qemu-storage-daemon), comparing
the normalized transcripts (events, the replies whose place QSD fixes, and
selected query results) and checking both targets against their sources.

Normalization: timestamps and progress numbers (len/offset,
current/total-progress, busy) are dropped, `len == offset` is kept as a
boolean where QEMU guarantees it; QSD's drain "flaps" (a paused->running or
standby->ready pair nobody asked for, which QEMU emits whenever a graph
change drains the nodes) are removed, and so is ringmirror's SHUTDOWN event
on quit (qemu-system's event, see qmp/README.md). The quit reply is not
compared: QSD sends it after the shutdown events, ringmirror's monitor
currently before them.

Deliberate differences (also in docs/qemu-reference.md, "Deliberate
differences"), which these scripts avoid or check on each side separately:
  * a target of a different size: QSD accepts blockdev-mirror and fails the
    job at once (COMPLETED with error "Source and target image have different
    sizes"); ringmirror refuses the command up front with the same message;
  * pending (auto-finalize false): ringmirror keeps mirroring, so a write
    acknowledged while pending is on the target after job-finalize; QSD 10.0
    loses it (it lands on the source only);
  * ringmirror keeps the target sparse where the source has holes; QSD
    allocates the whole target;
  * job-id defaults to the device name in ringmirror; QSD refuses a missing
    job-id on a node without a BlockBackend ("Invalid job ID ''").
"""

import json

from rmtest import (MiB, KiB, check, eq, file_node, first_difference, make_blank,
                    make_source, mirror_args, qemu_img_compare, read_range)

SIZE = 32 * MiB
PROGRESS = {"len", "offset", "busy", "current-progress", "total-progress"}

# Commands whose reply QSD sends after the events they cause (the job
# coroutine runs inside the command); their place in the event stream is
# compared. Other replies race with the job's events and are left out.
ORDERED_REPLIES = {"blockdev-mirror", "job-finalize", "job-dismiss", "quit"}


def strip_progress(v):
    if isinstance(v, list):
        return [strip_progress(x) for x in v]
    if isinstance(v, dict):
        out = {k: strip_progress(x) for k, x in v.items() if k not in PROGRESS}
        if "len" in v and "offset" in v:
            out["offset==len"] = v["len"] == v["offset"]
        return out
    return v


def normalize(steps):
    """Events and ordered replies of a transcript slice as comparable items."""
    out = []
    for s in steps:
        if s.get("event") == "SHUTDOWN":
            continue  # ringmirror emits it on quit as qemu-system does (qmp/README.md)
        if "event" in s:
            data = strip_progress(s["data"])
            if s["event"] == "BLOCK_JOB_CANCELLED":
                data.pop("offset==len", None)  # a cancel stops wherever it is
            out.append(("event", s["event"], data))
        elif s.get("execute") in ORDERED_REPLIES:
            out.append(("reply", s["execute"], "error" if "error" in s["reply"] else "ok"))
    return drop_flaps(out)


def job_of(item):
    if item[0] == "event" and isinstance(item[2], dict):
        return item[2].get("device") if "device" in item[2] else (
            item[2].get("id") if item[1] in ("JOB_STATUS_CHANGE", "BLOCK_JOB_PENDING") else None)
    return None


def drop_flaps(items):
    """Remove QEMU's drain flaps: a JOB_STATUS_CHANGE `paused` (`standby`)
    whose job's next status change is `running` (`ready`). These scripts
    never pause a job themselves."""
    out, skip = [], set()
    for i, it in enumerate(items):
        if i in skip:
            continue
        if it[1] == "JOB_STATUS_CHANGE" and it[2]["status"] in ("paused", "standby"):
            job = it[2]["id"]
            nxt = next((j for j in range(i + 1, len(items)) if items[j][1] == "JOB_STATUS_CHANGE"
                        and items[j][2]["id"] == job), None)
            back = {"paused": "running", "standby": "ready"}[it[2]["status"]]
            if nxt is not None and items[nxt][2]["status"] == back:
                skip.add(nxt)
                continue
        out.append(it)
    return out


def projections(items):
    """For each job, the transcript without the other jobs' events: the
    interleaving of two jobs' events is not part of the contract (QSD cancels
    jobs one after the other on quit, ringmirror all at once)."""
    jobs = sorted({j for j in map(job_of, items) if j is not None})
    return {job: [it for it in items if job_of(it) in (None, job)] for job in jobs}


class Script:
    """Runs the same steps on one daemon, collecting observations."""

    def __init__(self, d):
        self.d = d
        self.obs = []

    def observe(self, what, value):
        self.obs.append((what, strip_progress(value)))

    async def query(self, name, args=None):
        self.observe(name, await self.d.ret(name, args))


async def both(ctx, script):
    """Run `script(Script)` on ringmirror and on QSD; compare; return both."""
    out = {}
    for kind in ("ringmirror", "qsd"):
        d = await ctx.daemon(kind, kind).start()
        s = Script(d)
        await d.setup(SIZE)
        since = d.mark()
        await script(s)
        s.transcript = normalize(d.steps[since:])
        out[kind] = s
    rm, qsd = out["ringmirror"], out["qsd"]
    prm, pqsd = projections(rm.transcript), projections(qsd.transcript)
    eq(sorted(prm), sorted(pqsd), "jobs in the transcripts")
    for job in prm:
        a_, b_ = prm[job], pqsd[job]
        if a_ != b_:
            lines = [f"normalized transcripts differ (job {job} and non-job items):",
                     f"  {'ringmirror':70s} | qemu-storage-daemon"]
            for i in range(max(len(a_), len(b_))):
                a = json.dumps(a_[i]) if i < len(a_) else ""
                b = json.dumps(b_[i]) if i < len(b_) else ""
                lines.append(f"{'  ' if a == b else '!='}{a[:70]:70s} | {b[:70]}")
            raise AssertionError("\n".join(lines))
    eq(rm.obs, qsd.obs, "query results (progress numbers stripped)")
    for s in (rm, qsd):
        check(len(s.transcript) > 0, "empty transcript")
    return rm, qsd


async def images_identical(s, what):
    d = s.d
    diff = first_difference(d.p("src.raw"), d.p("tgt.raw"))
    check(diff is None, f"{d.kind}: {what}: src.raw and tgt.raw differ: {diff}")
    await qemu_img_compare(d.p("src.raw"), d.p("tgt.raw"))


async def sc_compare_complete(ctx):
    """blockdev-mirror sync=full, READY, block-job-complete, until null; the
    export follows the target on both; both targets equal their source."""
    async def script(s):
        d = s.d
        await d.ret("blockdev-mirror", mirror_args())
        await d.wait_event("BLOCK_JOB_READY")
        await s.query("query-block-jobs")
        await s.query("query-jobs")
        await d.ret("block-job-complete", {"device": "job0"})
        await d.wait_status("job0", "null")
        await s.query("query-block-jobs")
        await s.query("query-jobs")
        await s.query("query-block-exports")
        await images_identical(s, "after complete")
        await d.qemu_io("write -P 0x77 0 64k")
        s.observe("write after complete on target file",
                  read_range(d.p("tgt.raw"), 0, 64 * KiB) == b"\x77" * 64 * KiB)
        s.observe("... and not on source file",
                  read_range(d.p("src.raw"), 0, 64 * KiB) == b"\x77" * 64 * KiB)
        await d.quit()

    rm, qsd = await both(ctx, script)
    eq([i[2].get("status") for i in rm.transcript if i[1] == "JOB_STATUS_CHANGE"],
       ["created", "running", "ready", "waiting", "pending", "concluded", "null"], "statuses")


async def sc_compare_soft_cancel(ctx):
    """block-job-cancel (soft) in READY: COMPLETED without switch on both;
    the export stays on src; the targets are consistent copies."""
    async def script(s):
        d = s.d
        await d.ret("blockdev-mirror", mirror_args())
        await d.wait_event("BLOCK_JOB_READY")
        await d.qemu_io("write -P 0x3e 5M 1M")
        await d.ret("block-job-cancel", {"device": "job0"})
        await d.wait_status("job0", "null")
        await s.query("query-block-jobs")
        await s.query("query-block-exports")
        await images_identical(s, "after soft cancel")
        await d.quit()

    rm, qsd = await both(ctx, script)
    names = [i[1] for i in rm.transcript if i[0] == "event"]
    check("BLOCK_JOB_COMPLETED" in names and "BLOCK_JOB_CANCELLED" not in names, f"{names}")


async def sc_compare_auto_finalize(ctx):
    """auto-finalize/auto-dismiss false: pending with BLOCK_JOB_PENDING,
    job-finalize (COMPLETED and concluded before its reply), job-dismiss
    (null before its reply). A write made while pending is kept by
    ringmirror; QSD 10.0 loses it (a deliberate difference): everything else
    of both targets equals the source."""
    async def script(s):
        d = s.d
        await d.ret("blockdev-mirror", mirror_args(**{"auto-finalize": False,
                                                      "auto-dismiss": False}))
        await d.wait_event("BLOCK_JOB_READY")
        await d.ret("block-job-complete", {"device": "job0"})
        await d.wait_event("BLOCK_JOB_PENDING")
        await s.query("query-jobs")
        await s.query("query-block-jobs")
        await d.qemu_io("write -P 0x5a 1M 64k")
        await d.ret("job-finalize", {"id": "job0"})
        await s.query("query-jobs")
        await s.query("query-block-exports")
        await d.ret("job-dismiss", {"id": "job0"})
        await s.query("query-jobs")
        src, tgt = d.p("src.raw"), d.p("tgt.raw")
        s.pending_write_on_target = read_range(tgt, MiB, 64 * KiB) == b"\x5a" * 64 * KiB
        # Everything but the pending write's range is identical.
        for off, n in ((0, MiB), (MiB + 64 * KiB, SIZE - MiB - 64 * KiB)):
            eq(read_range(tgt, off, n) == read_range(src, off, n), True,
               f"{d.kind}: target equals source in [{off}, {off + n})")
        await d.quit()

    rm, qsd = await both(ctx, script)
    eq(rm.pending_write_on_target, True, "ringmirror keeps the write made while pending")
    print(f"qemu-storage-daemon kept the write made while pending: {qsd.pending_write_on_target} "
          "(10.0.2 loses it)")
    await images_identical(rm, "ringmirror after finalize")


async def sc_compare_cancel_pending(ctx):
    """Cancel while pending (auto-finalize false): any cancel, soft or
    force, aborts the job (QEMU's mirror treats a soft cancel as force
    once the job is no longer READY): BLOCK_JOB_CANCELLED, no switch, the
    export still on the source. After block-job-complete (a soft
    block-job-cancel), and after a soft cancel in READY (job-cancel, which
    always forces; then again with a soft block-job-cancel). Same transcript
    on both daemons."""
    async def script(s):
        d = s.d
        await d.ret("blockdev-mirror", mirror_args(**{"auto-finalize": False}))
        await d.wait_event("BLOCK_JOB_READY")
        await d.ret("block-job-complete", {"device": "job0"})
        await d.wait_event("BLOCK_JOB_PENDING")
        await d.ret("block-job-cancel", {"device": "job0"})
        await d.wait_event("BLOCK_JOB_CANCELLED")
        await d.wait_status("job0", "null")
        await s.query("query-jobs")
        await s.query("query-block-exports")
        await d.ret("blockdev-mirror", mirror_args(job="job1", **{"auto-finalize": False}))
        await d.wait_event("BLOCK_JOB_READY", lambda e: e["device"] == "job1")
        await d.ret("block-job-cancel", {"device": "job1"})
        await d.wait_event("BLOCK_JOB_PENDING", lambda e: e["id"] == "job1")
        await s.query("query-jobs")
        await d.ret("job-cancel", {"id": "job1"})
        await d.wait_status("job1", "null")
        await s.query("query-jobs")
        await s.query("query-block-exports")
        # And a soft block-job-cancel of a job soft-cancelled in READY.
        await d.ret("blockdev-mirror", mirror_args(job="job2", **{"auto-finalize": False}))
        await d.wait_event("BLOCK_JOB_READY", lambda e: e["device"] == "job2")
        await d.ret("block-job-cancel", {"device": "job2"})
        await d.wait_event("BLOCK_JOB_PENDING", lambda e: e["id"] == "job2")
        await d.ret("block-job-cancel", {"device": "job2"})
        await d.wait_status("job2", "null")
        await s.query("query-jobs")
        await d.quit()

    rm, qsd = await both(ctx, script)
    await images_identical(rm, "ringmirror after the soft-cancelled job")


async def sc_compare_size_mismatch(ctx):
    """A target of a different size: QSD accepts the command and fails the
    job at once; ringmirror refuses it up front with the same message."""
    msg = "Source and target image have different sizes"
    for kind in ("ringmirror", "qsd"):
        d = await ctx.daemon(kind, kind).start()
        await d.setup(SIZE)
        make_blank(d.p("small.raw"), SIZE // 2)
        await d.ret("blockdev-add", file_node("small", d.p("small.raw")))
        since = d.mark()
        reply = await d.cmd("blockdev-mirror", mirror_args(target="small"))
        if kind == "ringmirror":
            eq(reply.get("error"), {"class": "GenericError", "desc": msg}, "ringmirror refuses")
            eq(d.events(since), [], "no job events")
        else:
            eq(reply.get("return"), {}, "QSD accepts")
            done = await d.wait_event("BLOCK_JOB_COMPLETED")
            await d.wait_status("job0", "null")
            eq(done.get("error"), msg, "QSD's job fails with the same message")
            eq(d.seq("job0", since), ["created", "running", "aborting", "COMPLETED", "concluded",
                                      "null"], "QSD's events")
        eq(await d.ret("query-jobs"), [], f"{kind}: no job left")
        await d.quit()


async def sc_compare_quit(ctx):
    """quit with job0 running (speed-limited) and job1 ready: the export is
    deleted, then each job is force-cancelled, all before the quit reply;
    exit status 0."""
    async def script(s):
        d = s.d
        make_source(d.p("src2.raw"), SIZE, seed=5)
        make_blank(d.p("tgt2.raw"), SIZE)
        await d.ret("blockdev-add", file_node("src2", d.p("src2.raw")))
        await d.ret("blockdev-add", file_node("tgt2", d.p("tgt2.raw")))
        await d.ret("blockdev-mirror", mirror_args(job="job1", device="src2", target="tgt2"))
        await d.wait_event("BLOCK_JOB_READY")
        await d.ret("blockdev-mirror", mirror_args(speed=MiB))
        await d.wait_status("job0", "running")
        await s.query("query-jobs")
        await d.quit()

    rm, qsd = await both(ctx, script)
    tail = [it for it in projections(rm.transcript)["job0"] if it[1] != "JOB_STATUS_CHANGE"
            or it[2]["status"] not in ("created", "running", "ready")]
    eq([(it[1], it[2].get("status") if isinstance(it[2], dict) else it[2]) for it in tail[-6:]],
       [("BLOCK_EXPORT_DELETED", None), ("JOB_STATUS_CHANGE", "aborting"),
        ("BLOCK_JOB_CANCELLED", None), ("JOB_STATUS_CHANGE", "concluded"),
        ("JOB_STATUS_CHANGE", "null"), ("quit", "ok")], "end of the quit transcript")


SCENARIOS = {
    "compare_qsd_complete": sc_compare_complete,
    "compare_qsd_soft_cancel": sc_compare_soft_cancel,
    "compare_qsd_auto_finalize": sc_compare_auto_finalize,
    "compare_qsd_size_mismatch": sc_compare_size_mismatch,
    "compare_qsd_cancel_pending": sc_compare_cancel_pending,
    "compare_qsd_quit": sc_compare_quit,
}
