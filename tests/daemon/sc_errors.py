"""Refusals with QEMU's exact wording (error class and desc, from
docs/qemu-reference.md), hostile monitor input, several monitor
connections."""

import asyncio
import json
import time

from rmtest import (MiB, KiB, Failure, assert_same_file, check, eq, file_node, make_blank,
                    make_source, mirror_args, read_range)
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


SCENARIOS = {
    "wrong_verbs": sc_wrong_verbs,
}
