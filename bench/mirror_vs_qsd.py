#!/usr/bin/env python3
"""Issues 4 and 6: the live mirror of `ringmirror serve` against
qemu-storage-daemon, driven with the same QMP sequence (see bench/lib/daemons.py),
in the same run, alternating, median of N.

Part A, no guest I/O (4 GiB dense image and 10%-data image): time from
blockdev-mirror to BLOCK_JOB_READY as a fraction of the fio copy ceiling of
the same run, daemon CPU-seconds per GiB, peak RSS, target allocation; then
block-job-complete, cmp source vs target, and a qemu-io write through the
export that must land in the target file only.

Part B, guest workloads from fio-configs/ through the NBD export (dense
image): per daemon, a baseline run with no job, a run with a background mirror
and one with a write-blocking mirror started 5 s into the load; the job is
completed 10 s after READY while the load still runs; the load stops at
max(LOAD, complete + 5 s) or at LOAD if there is no READY ("did not converge"),
after which the job is left to converge and is completed. Windows of the
per-I/O latency log: before the mirror, mirror -> READY, READY -> complete,
after complete; the longest completion gap around block-job-complete.
Verification after every run: every 4 KiB block where source and target differ
was written by a guest write that completed after block-job-complete was sent
(writes acknowledged before it must all be on the target; later ones go to the
target only), plus the qemu-io export check.

Writes bench/out/mirror-*.json, the "mirror" section of bench/RESULTS.md and
bench/plots/mirror-*.png.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from lib.common import (GiB, REPO, allocated_bytes, drop_caches, log, loadavg,  # noqa: E402
                        machine_info, make_sparse, rm_f, run, save_json, scratch_dir,
                        timed, wait_quiet)
from lib.daemons import Daemon  # noqa: E402
from lib.fio import (GUEST_WORKLOADS, FioRun, max_gap, max_stall, window_stats,  # noqa: E402
                     written_blocks_after)
from lib.images import ensure_dense, ensure_sparse10  # noqa: E402
from lib.tools import ceiling_cmd  # noqa: E402
from lib.verify import cmp_files, differing_blocks  # noqa: E402

DAEMONS = ["ringmirror", "qsd"]
MONO2WALL = time.time() - time.monotonic()


SETTLE_S = 5


def wall(t):
    return None if t is None else t + MONO2WALL


def export_check(dm, src, tgt, size):
    """After completion: write a pattern through the export with qemu-io and
    check it landed in the target file and not in the source file."""
    off = (size // 2 // (64 * 1024)) * 64 * 1024 + 64 * 1024
    ln = 64 * 1024
    with open(src, "rb") as f:
        f.seek(off)
        before = f.read(ln)
    p = run(["qemu-io", "-f", "raw", "-c", f"write -P 0xa7 {off} {ln}", dm.uri], check=False)
    if p.returncode != 0:
        return False, f"qemu-io write through the export failed: {p.stderr.strip()[-300:]}"
    with open(tgt, "rb") as f:
        f.seek(off)
        t = f.read(ln)
    with open(src, "rb") as f:
        f.seek(off)
        s = f.read(ln)
    if t != b"\xa7" * ln:
        return False, "pattern written through the export after completion is NOT in the target"
    if s != before:
        return False, "pattern written through the export after completion changed the source"
    return True, "export serves the target (qemu-io pattern landed in target only)"


# ---------------------------------------------------------------------------
# part A

def run_ceiling(src, d, size):
    new = d / "ceiling-new.img"
    make_sparse(new, size)
    drop_caches()
    secs, p = timed(ceiling_cmd(src, new, size))
    rm_f(new)
    return secs


def fresh_target(d, size):
    """A new sparse target, the page cache dropped, and SETTLE_S of quiet:
    the previous run may have left the host's disk busy with its writes (the
    runs alternate, so each run follows the other daemon's, often a
    write-heavy one)."""
    tgt = d / "mirror-tgt.img"
    make_sparse(tgt, size)
    drop_caches()
    time.sleep(SETTLE_S)
    return tgt


def run_noio(kind, src, d, size, img):
    tgt = fresh_target(d, size)
    dm = Daemon(kind, d / "run", kind)
    r = {"kind": kind, "image": img, "load1": loadavg()[0]}
    try:
        dm.setup(src, tgt)
        dm.start_sampling()
        c0 = dm.cpu_seconds()
        t0 = dm.mirror("background")
        tr = dm.wait_ready(900, t0)
        c1 = dm.cpu_seconds()
        r["ready_s"] = (tr - t0) if tr else None
        r["cpu_s"] = c1 - c0
        dm.stop_sampling()
        r["progress"] = [(t - t0, o, ln, s) for t, o, ln, s in dm.progress]
        if tr is None:
            r["error"] = "no BLOCK_JOB_READY in 900 s"
            return r
        cs, cr, ce, data = dm.complete()
        r["complete_s"] = ce - cs
        r["rss_peak"] = dm.rss_peak()
        ok, msg = cmp_files(src, tgt)
        r["cmp_ok"], r["cmp_msg"] = ok, msg
        r["tgt_alloc"] = allocated_bytes(tgt)
        r["src_alloc"] = allocated_bytes(src)
        ok2, msg2 = export_check(dm, src, tgt, size)
        r["export_ok"], r["export_msg"] = ok2, msg2
        if not ok or not ok2:
            log(f"VERIFY FAILED {kind} {img}: {msg} / {msg2}")
    except Exception as e:
        r["error"] = f"{type(e).__name__}: {e}"
        log(f"ERROR {kind} no-I/O {img}: {r['error']}")
    finally:
        r["rc"] = dm.stop()
        r["stderr_tail"] = dm.stderr_path.read_text(errors="replace")[-1000:]
        rm_f(tgt)
    return r


# ---------------------------------------------------------------------------
# part B

def run_load(kind, mode, workload, src, d, size, load_s, baseline_s, keep_log=False,
             mirror_extra=None):
    """mode: None (baseline, no job), 'background' or 'write-blocking';
    mirror_extra: more blockdev-mirror arguments (e.g. x-guest-share)."""
    tgt = fresh_target(d, size)
    dm = Daemon(kind, d / "run", kind)
    tag = f"{kind}-{workload}-{mode or 'nojob'}"
    r = {"kind": kind, "mode": mode or "none", "workload": workload, "load1": loadavg()[0]}
    fio = None
    try:
        dm.setup(src, tgt)
        c0 = dm.cpu_seconds()
        fio = FioRun(workload, dm.uri, d / "run", tag, runtime=900)
        tl = time.monotonic()
        r["t_load"] = wall(tl)
        if mode is None:
            time.sleep(baseline_s)
            tstop = time.monotonic()
        else:
            time.sleep(max(0, tl + 5 - time.monotonic()))
            dm.start_sampling()
            tm = dm.mirror(mode, **(mirror_extra or {}))
            r["t_mirror"] = wall(tm)
            tr = dm.wait_ready(max(0.0, tl + load_s - time.monotonic()), tm)
            if tr is not None:
                r["t_ready"] = wall(tr)
                r["ready_s"] = tr - tm
                time.sleep(max(0, tr + 10 - time.monotonic()))
                cs, cr, ce, _ = dm.complete()
                r["t_complete_sent"], r["t_complete_reply"], r["t_completed"] = wall(cs), wall(cr), wall(ce)
                r["complete_s"] = ce - cs
                time.sleep(max(0, max(tl + load_s, ce + 5) - time.monotonic()))
                tstop = time.monotonic()
            else:
                j = dm.query_job()
                r["not_converged_s"] = time.monotonic() - tm
                r["at_deadline"] = {"offset": j and j.get("offset"), "len": j and j.get("len")}
                tstop = time.monotonic()
        fio.stop()
        r["t_stop"] = wall(tstop)
        r["cpu_s"] = dm.cpu_seconds() - c0
        r["load_s"] = tstop - tl
        r["fio_rc"] = fio.rc
        if mode is not None and "t_ready" not in r:
            # load is over: let the job converge, then complete and verify strictly
            tr2 = dm.wait_ready(300, tm)
            if tr2 is None:
                r["error"] = "no READY even 300 s after the load stopped"
            else:
                r["ready_after_stop_s"] = tr2 - tstop
                r["ready_s_total"] = tr2 - tm
                cs, cr, ce, _ = dm.complete()
                r["t_complete_sent"], r["t_completed"] = wall(cs), wall(ce)
                r["complete_s"] = ce - cs
        dm.stop_sampling()
        if mode is not None:
            tm0 = tm
            r["progress"] = [(t - tm0, o, ln, s) for t, o, ln, s in dm.progress]
        r["rss_peak"] = dm.rss_peak()
        L = fio.latlog()
        r["fio"] = fio.result()
        if r["fio"].get("error"):
            r["error"] = (f"fio ended with error {r['fio']['error']} ({os.strerror(r['fio']['error'])}): "
                          f"{fio.stderr.strip()[-200:]}")
            log(f"FIO ERROR {tag}: {r['error']}")
        analyse(r, L)
        if mode is not None and "t_complete_sent" in r:
            diff = differing_blocks(src, tgt)
            allowed = written_blocks_after(L, r["t_complete_sent"] - 0.005)
            bad = np.setdiff1d(diff, allowed)
            r["diff_blocks"] = int(len(diff))
            r["diff_not_explained"] = int(len(bad))
            r["verify_ok"] = len(bad) == 0
            if len(bad):
                r["verify_msg"] = (f"{len(bad)} blocks differ that no guest write after "
                                   f"block-job-complete explains; first offsets "
                                   f"{[int(b) * 4096 for b in bad[:5]]}")
                log(f"VERIFY FAILED {tag}: {r['verify_msg']}")
                r["forensics"] = forensics(src, tgt, bad, L, r)
                log(f"forensics {tag}: {r['forensics']}")
                keep = d / "failed"
                keep.mkdir(exist_ok=True)
                stamp = time.strftime("%H%M%S")
                tgt.rename(keep / f"{tag}-{stamp}-target.img")
                for f in (d / "run").glob(f"{tag}_lat.*.log"):
                    f.rename(keep / f"{tag}-{stamp}-{f.name}")
                np.save(keep / f"{tag}-{stamp}-unexplained.npy", bad)
                r["kept"] = str(keep / f"{tag}-{stamp}-*")
            ok2, msg2 = export_check(dm, src, tgt, size)
            r["export_ok"], r["export_msg"] = ok2, msg2
            if not ok2:
                log(f"EXPORT CHECK FAILED {tag}: {msg2}")
        if keep_log:
            step = max(1, len(L) // 60000)
            r["_log"] = {"t": L["t"][::step].copy(), "lat": L["lat"][::step].copy(),
                         "t_all": L["t"].copy(), "lat_all": L["lat"].copy()}
    except Exception as e:
        r["error"] = f"{type(e).__name__}: {e}"
        log(f"ERROR {tag}: {r['error']}")
        if fio is not None and fio.proc.poll() is None:
            fio.stop()
    finally:
        r["rc"] = dm.stop()
        r["stderr_tail"] = dm.stderr_path.read_text(errors="replace")[-1000:]
        rm_f(tgt)
        for f in (d / "run").glob(f"{tag}_*lat.*.log"):
            rm_f(f)
    return r


def forensics(src, tgt, bad, L, r, sample=2000):
    """What the unexplained differing blocks look like (sampled)."""
    idx = bad[np.linspace(0, len(bad) - 1, min(sample, len(bad))).astype(np.int64)]
    zt = zs = 0
    with open(src, "rb") as fs, open(tgt, "rb") as ft:
        for b in idx:
            fs.seek(int(b) * 4096)
            ft.seek(int(b) * 4096)
            zs += fs.read(4096) == bytes(4096)
            zt += ft.read(4096) == bytes(4096)
    cs = r["t_complete_sent"]
    w = L["ddir"] == 1
    wb = np.unique(L["off"][w & (L["t"] < cs)] // 4096)
    wa = np.unique(L["off"][w] // 4096)
    ra = np.unique(L["off"][(L["ddir"] == 0) & (L["t"] >= cs)] // 4096)
    return {"sampled": int(len(idx)), "target_zero": int(zt), "source_zero": int(zs),
            "written_before_complete": int(np.isin(idx, wb).sum()),
            "written_any_time": int(np.isin(idx, wa).sum()),
            "read_after_complete": int(np.isin(idx, ra).sum()),
            "log_entries": int(len(L)), "log_writes": int(w.sum()),
            "fio_write_ios": r.get("fio", {}).get("write", {}).get("total_ios"),
            "first_log_t": float(L["t"][0]) if len(L) else None, "t_complete_sent": cs}


def analyse(r, L):
    if len(L) == 0:
        r["windows"] = {}
        return
    t_first = float(L["t"][0])
    t_end = r.get("t_stop") or float(L["t"][-1])
    w = {}
    if r["mode"] == "none":
        w["whole"] = window_stats(L, t_first + 1, t_end)
        r["mirror_gap_ms"] = max_gap(L, t_first + 1, t_end)[0] * 1e3
        r["mirror_stall_ms"] = max_stall(L, t_first + 1, t_end) * 1e3
    else:
        tm = r["t_mirror"]
        tr = r.get("t_ready")
        cs = r.get("t_complete_sent")
        ce = r.get("t_completed")
        w["before"] = window_stats(L, t_first + 1, tm)
        w["mirror_to_ready"] = window_stats(L, tm, tr if tr else t_end)
        if tr:
            w["ready_to_complete"] = window_stats(L, tr, cs)
            if ce and ce < t_end:
                w["after_complete"] = window_stats(L, ce, t_end)
            gap, maxlat = max_gap(L, cs, min(ce + 0.5, t_end))
            r["complete_gap_ms"] = gap * 1e3
            r["complete_stall_ms"] = max_stall(L, cs, min(ce + 0.5, t_end)) * 1e3
            r["complete_maxlat_ms"] = maxlat * 1e3 if maxlat is not None else None
        w["whole_load"] = window_stats(L, t_first + 1, t_end)
        gap, _ = max_gap(L, tm, tr if tr else t_end)
        r["mirror_gap_ms"] = gap * 1e3
        r["mirror_stall_ms"] = max_stall(L, tm, tr if tr else t_end) * 1e3
    r["windows"] = w


# ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size", default="4G")
    ap.add_argument("--noio-images", default="dense,sparse10", help="'' to skip part A")
    ap.add_argument("--workloads", default="randwrite-4k-qd16",
                    help=f"comma list or 'all' ({','.join(GUEST_WORKLOADS)}); '' to skip part B")
    ap.add_argument("--modes", default="background,write-blocking")
    ap.add_argument("--load-secs", type=float, default=55)
    ap.add_argument("--baseline-secs", type=float, default=25)
    ap.add_argument("--daemons", default=",".join(DAEMONS))
    ap.add_argument("--no-results", action="store_true")
    ap.add_argument("--out", default=None, help="raw JSON path (default bench/out/mirror-STAMP.json)")
    a = ap.parse_args()
    from copy_vs_peers import parse_size
    size = parse_size(a.size)
    d = scratch_dir()
    (d / "run").mkdir(exist_ok=True)
    info = machine_info()
    daemons = a.daemons.split(",")
    suffix = "" if size == 4 * GiB else f"-{a.size}"
    imgs = {"dense": ensure_dense(d / f"dense{suffix}.img", size)}
    noio_imgs = [x for x in a.noio_images.split(",") if x]
    if "sparse10" in noio_imgs:
        imgs["sparse10"] = ensure_sparse10(d / f"sparse10{suffix}.img", size)
    workloads = GUEST_WORKLOADS if a.workloads == "all" else [w for w in a.workloads.split(",") if w]
    modes = [m for m in a.modes.split(",") if m]
    out = {"kind": "mirror", "size": size, "info": info, "reps": a.reps, "load_secs": a.load_secs,
           "baseline_secs": a.baseline_secs, "noio": [], "load": [], "ceiling": [],
           "images": {k: str(v) for k, v in imgs.items()}}
    t_bench = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = Path(a.out) if a.out else REPO / "bench" / "out" / f"mirror-{stamp}.json"
    logs = {}

    # part A
    for rep in range(a.reps if noio_imgs else 0):
        for img in noio_imgs:
            waited = wait_quiet()
            order = ["ceiling"] + daemons
            k = rep % len(order)
            order = order[k:] + order[:k]
            for who in order:
                if who == "ceiling":
                    s = run_ceiling(imgs[img], d, size)
                    out["ceiling"].append({"image": img, "rep": rep, "secs": s, "load1": loadavg()[0]})
                    log(f"noio {img} rep{rep} ceiling {s:.2f}s")
                else:
                    r = run_noio(who, imgs[img], d, size, img)
                    r["rep"] = rep
                    r["waited_for_compiles"] = waited
                    out["noio"].append(r)
                    log(f"noio {img} rep{rep} {who}: ready {r.get('ready_s')} cpu {r.get('cpu_s')} "
                        f"cmp {r.get('cmp_ok')} export {r.get('export_ok')} {r.get('error', '')}")
        save_json(out_path, out)

    # part B
    for wl in workloads:
        combos = [(k, m) for k in daemons for m in [None] + modes]
        for rep in range(a.reps):
            waited = wait_quiet()
            j = (rep * 2) % len(combos)
            order = combos[j:] + combos[:j]
            for kind, mode in order:
                r = run_load(kind, mode, wl, imgs["dense"], d, size, a.load_secs, a.baseline_secs,
                             keep_log=(rep == 0))
                r["rep"] = rep
                r["waited_for_compiles"] = waited
                if "_log" in r:
                    logs[(wl, kind, r["mode"])] = (r.pop("_log"), r)
                out["load"].append(r)
                save_json(out_path, out)      # after every run: a killed run keeps its data
                w = r.get("windows", {})
                log(f"{wl} rep{rep} {kind} {r['mode']}: ready {r.get('ready_s')} "
                    f"not_conv {r.get('not_converged_s')} iops {(w.get('mirror_to_ready') or w.get('whole') or {}).get('iops')} "
                    f"gap {r.get('complete_gap_ms')} verify {r.get('verify_ok')} {r.get('error', '')}")
            save_json(out_path, out)
        if not a.no_results:
            import mirror_report
            mirror_report.plot_load(wl, logs, daemons, modes)
    out["secs_total"] = time.monotonic() - t_bench
    save_json(out_path, out)
    import mirror_report
    if not a.no_results:
        mirror_report.plot_progress(out)
    md = mirror_report.render(out)
    print(md)
    if not a.no_results:
        from lib.report import update_section
        for name, body in mirror_report.sections(out):
            update_section(name, body)


if __name__ == "__main__":
    main()
