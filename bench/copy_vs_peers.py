#!/usr/bin/env python3
"""Issue 2's benchmark: `ringmirror copy` against the fio copy ceiling and the
copy peers (cp, nbdcopy, qemu-img convert twice, dd), on a 4 GiB fully
written image and a 4 GiB image with 10% data, in one run, alternating the
contenders (the order rotates every repetition), page cache dropped before
every run, median of N runs. ringmirror's output is verified with cmp on every
run, each peer's on its first run. Writes bench/out/copy-*.json, the
"copy" section of bench/RESULTS.md and bench/plots/copy-throughput.png.

Usage: bench/copy.sh [--reps 3] [--size 4G] [--images dense,sparse10]
                     [--rm-extra '--request-size 1M' ...] [--no-results]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.common import (GiB, REPO, allocated_bytes, drop_caches, fmt, log,  # noqa: E402
                        loadavg, machine_info, make_sparse, median, rm_f, save_json,
                        scratch_dir, timed, wait_quiet)
from lib.images import ensure_dense, ensure_sparse10  # noqa: E402
from lib.report import PLOTS, plt, table, update_section  # noqa: E402
from lib.tools import NOT_COPIES, READ_FLOOR, contenders  # noqa: E402
from lib.verify import cmp_files  # noqa: E402


def parse_size(s):
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size", default="4G")
    ap.add_argument("--images", default="dense,sparse10")
    ap.add_argument("--rm-extra", action="append", default=[],
                    help="extra `ringmirror copy` variant with these options (after the defaults)")
    ap.add_argument("--only", default=None, help="comma-separated contender names (debug)")
    ap.add_argument("--no-results", action="store_true", help="do not touch bench/RESULTS.md")
    ap.add_argument("--section", default="copy",
                    help="RESULTS.md section (and plot) name; e.g. copy-options for --rm-extra runs")
    a = ap.parse_args()
    size = parse_size(a.size)
    d = scratch_dir()
    info = machine_info()
    imgs = {}
    for name in a.images.split(","):
        suffix = "" if size == 4 * GiB else f"-{a.size}"
        if name == "dense":
            imgs[name] = ensure_dense(d / f"dense{suffix}.img", size)
        elif name == "sparse10":
            imgs[name] = ensure_sparse10(d / f"sparse10{suffix}.img", size)
        else:
            sys.exit(f"unknown image {name}")
    cont = contenders(a.rm_extra)
    if a.only:
        cont = {k: v for k, v in cont.items() if k in a.only.split(",")}
    names = list(cont)
    dst = d / "copy-dst.img"
    runs = []
    t_bench = time.monotonic()
    for img, src in imgs.items():
        src_alloc = allocated_bytes(src)
        for rep in range(a.reps):
            waited = wait_quiet()
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                if name == READ_FLOOR and img != "dense":
                    continue  # a floor only where every byte is data
                tmpl, precreate, is_peer = cont[name]
                rm_f(dst)
                if precreate:
                    make_sparse(dst, size)
                cmd = tmpl(src, dst, size, img == "sparse10")
                drop_caches()
                la = loadavg()[0]
                secs, p = timed(cmd, check=False)
                r = {"image": img, "rep": rep, "tool": name, "cmd": cmd, "secs": secs,
                     "rc": p.returncode, "load1": la, "waited_for_compiles": waited,
                     "dst_alloc": allocated_bytes(dst) if dst.exists() else None,
                     "src_alloc": src_alloc}
                if p.returncode != 0:
                    r["stderr"] = p.stderr[-2000:]
                    log(f"FAILED {name}: rc={p.returncode} {p.stderr[-500:]}")
                if p.returncode == 0 and (name.startswith("ringmirror") or rep == 0) \
                        and name not in NOT_COPIES:
                    ok, msg = cmp_files(src, dst)
                    r["verified"] = ok
                    if not ok:
                        r["verify_msg"] = msg
                        log(f"VERIFY FAILED {name}: {msg}")
                log(f"copy {img} rep{rep} {name}: {secs:.2f}s rc={p.returncode} "
                    f"alloc={r['dst_alloc']} load={la}")
                runs.append(r)
                rm_f(dst)
    total = time.monotonic() - t_bench
    out = {"kind": "copy", "size": size, "info": info, "runs": runs, "secs_total": total,
           "images": {k: str(v) for k, v in imgs.items()}}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    save_json(REPO / "bench" / "out" / f"copy-{stamp}.json", out)
    out["section"] = a.section
    md = render(out, names)
    print(md)
    if not a.no_results:
        update_section(a.section, md)
        plot(out, names)


def summarize(out, names):
    size = out["size"]
    res = {}
    for img in out["images"]:
        rows = {}
        for n in names:
            rs = [r for r in out["runs"] if r["image"] == img and r["tool"] == n]
            if not rs:
                continue
            ok = [r["secs"] for r in rs if r["rc"] == 0]
            rows[n] = {"median": median(ok), "runs": [r["secs"] if r["rc"] == 0 else None for r in rs],
                       "failed": [r for r in rs if r["rc"] != 0],
                       "verified": [r.get("verified") for r in rs if "verified" in r],
                       "alloc": median([r["dst_alloc"] for r in rs if r["rc"] == 0 and r["dst_alloc"] is not None]),
                       "src_alloc": rs[0]["src_alloc"] if rs else None,
                       "cmd": rs[0]["cmd"] if rs else "",
                       "load": [r["load1"] for r in rs]}
            m = rows[n]["median"]
            rows[n]["mbps"] = size / m / 1e6 if m else None
        res[img] = rows
    return res


def render(out, names):
    size = out["size"]
    res = summarize(out, names)
    info = out["info"]
    sec = out.get("section", "copy")
    L = [f"## Copy (issue 2): `ringmirror copy` vs the copy ceiling and peers"
         + ("" if sec == "copy" else f" — `ringmirror copy` options ({sec})"),
         "",
         f"Generated by `bench/copy.sh` on {info['date']} ({out['secs_total'] / 60:.1f} min), ringmirror "
         f"`{info['ringmirror']}`. {size / GiB:g} GiB images; page cache dropped before every run; "
         f"contenders alternate (the order rotates each repetition); **median of "
         f"{max(len(v['runs']) for v in res[next(iter(res))].values())} runs**. "
         "MB/s = 10^6 bytes/s. *× ceiling* = speed / copy-ceiling speed of the same run set; "
         "*rm / tool* = ringmirror's speed / that tool's speed (>1: ringmirror faster). "
         "Allocated = `stat %b` × 512 of DST, vs the source's.", ""]
    for img, rows in res.items():
        ceil = rows.get("fio copy ceiling", {}).get("median")
        rm = rows.get("ringmirror copy", {}).get("median")
        peers = {n: r["median"] for n, r in rows.items()
                 if n not in NOT_COPIES and not n.startswith("ringmirror") and r["median"]}
        fastest = min(peers, key=peers.get) if peers else None
        title = "fully written (dense)" if img == "dense" else "10% data in scattered extents"
        L.append(f"### {title}: `{out['images'][img]}`")
        L.append("")
        trs = []
        for n, r in rows.items():
            m = r["median"]
            xc = (ceil / m) if (m and ceil) else None
            rmr = (m / rm) if (m and rm) else None
            ver = r["verified"]
            vtxt = ("cmp ok" if ver and all(ver) else ("**cmp FAILED**" if ver else "-"))
            runs_txt = ", ".join(fmt(x, 2) if x is not None else "fail" for x in r["runs"])
            alloc = r["alloc"]
            atxt = (f"{alloc / GiB:.2f} GiB ({alloc / r['src_alloc']:.2f}× src)"
                    if alloc is not None and r["src_alloc"] else "n/a")
            name = f"**{n}**" if n == fastest else n
            trs.append([name, fmt(m, 2), fmt(r["mbps"], 0), fmt(xc, 2),
                        fmt(rmr, 2) if not n.startswith("ringmirror") else "-",
                        atxt, runs_txt, vtxt])
        L.append(table(["tool", "median s", "MB/s", "× ceiling", "rm / tool", "DST allocated",
                        "runs (s)", "verified"], trs))
        L.append("")
        if rm and fastest:
            L.append(f"ringmirror copy: **{ceil / rm:.2f}× the copy ceiling**, "
                     f"**{peers[fastest] / rm:.2f}× the fastest peer** ({fastest}, "
                     f"{peers[fastest]:.2f} s)." if ceil else "")
        elif not rm:
            L.append("ringmirror copy: **no successful run** (see failures below).")
        floor = rows.get(READ_FLOOR, {}).get("median")
        if img == "dense" and floor and rm and fastest:
            L.append("")
            L.append(f"Reading the source alone took {floor:.2f} s (median): a copy reads every byte of it, "
                     "so it cannot take less, up to run-to-run noise. "
                     f"ringmirror took {rm / floor:.2f}× that, the fastest peer "
                     f"{peers[fastest] / floor:.2f}×; a copy 1.15× faster than that peer would "
                     f"take {peers[fastest] / 1.15:.2f} s"
                     + (" — less than reading the source." if peers[fastest] / 1.15 < floor else "."))
        L.append("")
        for n, r in rows.items():
            for f in r["failed"]:
                L.append(f"- FAILED: `{f['cmd']}` rc={f['rc']}: `{(f.get('stderr') or '').strip()[-300:]}`")
        L.append("")
    L.append("Commands (SRC, DST as above; DST removed before each run, pre-created sparse "
             "where the tool needs it):")
    L.append("")
    L.append("```")
    first = next(iter(res))
    for n, r in res[first].items():
        L.append(f"# {n}\n{r['cmd']}")
    if "sparse10" in res and "qemu-img convert -n io_uring,direct" in res["sparse10"]:
        L.append("# on the 10% image qemu-img -n also gets --target-is-zero")
    L.append("```")
    loads = [r["load1"] for r in out["runs"]]
    L.append("")
    L.append(f"Load average (1 min) at the start of runs: min {min(loads):.2f}, "
             f"median {median(loads):.2f}, max {max(loads):.2f}.")
    L.append("")
    L.append(f"![copy throughput](plots/{sec}-throughput.png)")
    return "\n".join(L)


def plot(out, names):
    res = summarize(out, names)
    p = plt()
    fig, axes = p.subplots(1, len(res), figsize=(6 * len(res), 4.5), squeeze=False)
    for ax, (img, rows) in zip(axes[0], res.items()):
        ns = [n for n in rows if rows[n]["mbps"]]
        vals = [rows[n]["mbps"] for n in ns]
        cols = ["#444" if n in NOT_COPIES else ("#c0392b" if n.startswith("ringmirror")
                                                         else "#2980b9") for n in ns]
        ax.barh(range(len(ns)), vals, color=cols)
        ax.set_yticks(range(len(ns)))
        ax.set_yticklabels(ns, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("MB/s (SIZE / median wall time)")
        ax.set_title(f"{img} ({out['size'] / GiB:g} GiB)")
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.0f}", va="center", fontsize=8)
    fig.tight_layout()
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOTS / f"{out.get('section', 'copy')}-throughput.png", dpi=110)


if __name__ == "__main__":
    main()
