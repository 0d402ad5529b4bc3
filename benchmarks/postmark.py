"""PostMark on bftfs (b = 0, 1, 2, 3 ...), the local disk, bindfs and GlusterFS, side by side.

Runs the real PostMark program (Debian's ``postmark``, NetApp's small-file benchmark) with
the configuration of the Q/U evaluation (Abd-El-Malek et al., SOSP 2005, Q/U-NFSv3):
5000 files and 20000 transactions from one client, PostMark's defaults otherwise (files of
500 B to 9.77 KB, 512 B reads and writes, read/append and create/delete biases 5, seed 42).
Q/U-NFSv3 reached 129, 114, 102, 93, 84 and 76 transactions per second for b = 0 ... 5
(t = b, keeping file contents on the client); bftfs stores the contents on the nodes too.

PostMark reports whole seconds only, so the phases are timed here: PostMark's output is
unbuffered (``stdbuf -o0``) and timestamped as it arrives; the transaction phase runs from
"Performing transactions" to the "Done" after it, and tps = transactions / that time.
PostMark prints a dot at every tenth of the transactions, so a run stopped at its time cap
still gives a (marked) rate over the tenths it completed.

Targets, interleaved per repetition: ``local``, ``bindfs``, ``glusterfs`` (a GlusterFS
replica-3 volume on three local bricks, created for each run: ``benchmarks/gluster.py``),
then bftfs on a fresh cluster for each b in ``--bs`` (``t = b``; ``n = 3t + 2b + 1`` = 1, 6,
11, 16, 21, 26 nodes; b = 0 is t = 0, one node, as Q/U's b = 0 point is a single server).

Results: ``benchmarks/results/postmark-<short|full>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import costs  # noqa: E402
import profiling  # noqa: E402
import variants  # noqa: E402
from common import Progress, Site, TargetSpec  # noqa: E402

QU_NFS_TPS = {0: 129, 1: 114, 2: 102, 3: 93, 4: 84, 5: 76}  # Q/U-NFSv3, Fig. 7 of the paper
FIRST_BAR_TPS = 129  # the first bar: bftfs at b=1 above Q/U-NFSv3 at b=0
GOAL_TPS = 300


class PostMarkError(RuntimeError):
    """PostMark failed, or did not get through its transactions in time."""


def postmark_config(
    location: Path | str, files: int, transactions: int, seed: int, size_min: int, size_max: int
) -> str:
    """PostMark's configuration file; ``location`` relative to where it runs.

    PostMark 1.51 builds each file's path in a fixed buffer: a location of about 80
    characters overruns it, and the run then reads, appends to and deletes other names
    than it made (300 / 1 000 under ``/var/tmp/bftfs-postmark-*/bftfs_b=1_under_
    corrupt-fragments-r1/mnt/postmark``: 806 files made, 523 removed, 1.71 MB read against
    820, 820 and 3.12 MB, and 0.21 Q/U rounds a transaction against 0.007, with no node
    misbehaving).  So ``run_postmark`` runs it in the location's parent and gives it the
    last name only."""
    return "\n".join(
        [
            f"set location {location}",
            f"set number {files}",
            f"set transactions {transactions}",
            f"set size {size_min} {size_max}",
            f"set seed {seed}",
            "show",
            "run",
            "quit",
            "",
        ]
    )


def run_postmark(
    site: Site | None,
    work: Path,
    args: argparse.Namespace,
    progress: Progress,
    location: Path | None = None,
    keep_text: bool = False,
) -> dict[str, Any]:
    """One PostMark run in ``site`` (in ``location``, an existing directory, if given: two
    PostMarks sharing one directory, ``two_postmarks.py``); the phase times and the
    transaction rate, and PostMark's whole output as ``text`` if ``keep_text``.

    Raises:
        PostMarkError: PostMark exited with an error, or was stopped at the time cap before
            completing a tenth of its transactions.
    """
    if location is None:
        assert site is not None
        loc = site.path / "postmark"
        os.mkdir(loc)
    else:
        loc = location
    cfg = work / f"postmark-{os.getpid()}-{time.monotonic_ns()}.cfg"
    cfg.write_text(
        postmark_config(
            loc.name, args.files, args.transactions, args.seed, args.size_min, args.size_max
        )
    )
    cmd = ["postmark", str(cfg)]
    if shutil.which("stdbuf"):
        cmd = ["stdbuf", "-o0", *cmd]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=loc.parent,  # a short location (postmark_config)
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    t0 = time.perf_counter()
    deadline = t0 + args.cap
    out = b""
    marks: dict[str, float] = {}  # event -> time since start
    dots: list[float] = []
    capped = False
    last_shown = -1
    try:
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                capped = True
                break
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            now = time.perf_counter() - t0
            if not chunk:
                break
            for ch in chunk.decode(errors="replace"):
                out += ch.encode()
                _mark(out, ch, now, marks, dots)
            if dots and len(dots) != last_shown and "tx_end" not in marks:
                last_shown = len(dots)
                progress.more(f" {max(0, len(dots) - 1) * 10}%")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    text = out.decode(errors="replace")
    res: dict[str, Any] = {"wall_s": round(time.perf_counter() - t0, 3)}
    if "create_end" in marks:
        res["create_s"] = marks["create_end"] - marks.get("create_start", 0.0)
    own = _report(text)
    if "tx_end" in marks and marks["tx_end"] > marks["tx_start"]:
        tx_s = marks["tx_end"] - marks["tx_start"]
        res["tx_s"] = tx_s
        res["tps"] = args.transactions / tx_s
    elif "tx_end" in marks and int(own.get("tx_per_second", 0)) > 0:
        # The transaction phase's start and end arrived in one read (a fast target on a
        # loaded machine): only PostMark's own whole-second figure is left.
        res["tps"] = float(own["tx_per_second"])
        res["partial"] = "PostMark's own whole-second figure (its output came in one read)"
    elif "tx_start" in marks and len(dots) > 1 and dots[-1] > marks["tx_start"]:
        # Stopped at the cap: the rate over the tenths completed (dot 0 marks the start).
        tenths = len(dots) - 1
        res["tps"] = tenths * (args.transactions / 10) / (dots[-1] - marks["tx_start"])
        res["partial"] = f"{tenths}/10 of the transactions before the {args.cap:.0f} s cap"
    if "delete_end" in marks:
        res["delete_s"] = marks["delete_end"] - marks["delete_start"]
    res["postmark_report"] = own
    if keep_text:
        res["text"] = text
    if capped and "tps" not in res:
        phase = "transactions" if "tx_start" in marks else "file creation"
        raise PostMarkError(
            f"stopped at the {args.cap:.0f} s cap during {phase} "
            f"({len(dots) * 10 if dots else 0}% of transactions done)"
        )
    if not capped and proc.returncode != 0:
        raise PostMarkError(f"postmark exited {proc.returncode}: {text[-500:]}")
    if "tps" not in res:
        raise PostMarkError(f"postmark gave no transaction phase: {text[-500:]}")
    if location is None and not capped and own.get("created") != own.get("deleted"):
        # Alone in its directory, a whole run removes every file it made: otherwise it
        # ran another workload than the one configured (postmark_config).
        raise PostMarkError(
            f"postmark made {own.get('created')} files and removed {own.get('deleted')}"
        )
    return res


def _mark(out: bytes, ch: str, now: float, marks: dict[str, float], dots: list[float]) -> None:
    """Timestamp PostMark's progress output as it arrives (one character at a time)."""
    if out.endswith(b"Creating files...") and "create_start" not in marks:
        marks["create_start"] = now
    elif out.endswith(b"Performing transactions") and "tx_start" not in marks:
        marks["create_end"] = now
        marks["tx_start"] = now
    elif ch == "." and "tx_start" in marks and "tx_end" not in marks:
        dots.append(now)
    elif out.endswith(b"Done") and "tx_start" in marks and "tx_end" not in marks:
        marks["tx_end"] = now
    elif out.endswith(b"Deleting files...") and "delete_start" not in marks:
        marks["delete_start"] = now
    elif out.endswith(b"Done") and "delete_start" in marks and "delete_end" not in marks:
        marks["delete_end"] = now


def _report(text: str) -> dict[str, str]:
    """PostMark's own summary lines (whole-second resolution), kept for reference."""
    keep = {}
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"(\d+) seconds of transactions \((\d+) per second\)", line)
        if m:
            keep["tx_seconds"], keep["tx_per_second"] = m.group(1), m.group(2)
        m = re.match(r"(\d+) seconds total", line)
        if m:
            keep["total_seconds"] = m.group(1)
        m = re.match(r"(\d+) (created|deleted) \(", line)
        if m:
            keep[m.group(2)] = m.group(1)
        if "megabytes read" in line:
            keep["read"] = line
        if "megabytes written" in line:
            keep["written"] = line
    return keep


def specs_from_args(args: argparse.Namespace) -> list[TargetSpec]:
    specs: list[TargetSpec] = []
    for w in [t.strip() for t in args.targets.split(",") if t.strip()]:
        if w == "local":
            specs.append(common.local_spec())
        elif w == "bindfs":
            specs.append(common.bindfs_spec())
        elif w == "glusterfs":
            specs.append(common.glusterfs_spec())
        elif w == "seaweedfs":
            specs.append(common.seaweedfs_spec())
        elif w == "moosefs":
            specs.append(common.moosefs_spec())
        elif w == "cephfs":
            specs.append(common.cephfs_spec())
        elif w == "bftfs":
            for b in args.bs:
                specs.append(common.bftfs_spec(b, b, durable=not args.no_durable))
            if not args.no_durable:  # like for like with the in-memory Q/U prototype
                for b in args.no_fsync_bs:
                    specs.append(common.bftfs_spec(b, b, durable=False))
        elif w in ("bftfs-lease", "bftfs-nolease", "bftfs-plain"):  # issue 33; 38
            for b in args.bs:
                spec = common.spec_named(w, b, b, not args.no_durable)
                assert spec is not None
                specs.append(spec)
        elif w == "bftfs-noverify":  # the nodes without lazy verification (issue 16)
            for b in args.bs:
                specs.append(
                    common.bftfs_spec(b, b, durable=not args.no_durable, verification="off")
                )
        else:
            raise SystemExit(
                f"unknown target {w!r} "
                "(local, bindfs, glusterfs, seaweedfs, moosefs, cephfs, "
                "bftfs, bftfs-lease, bftfs-nolease, bftfs-noverify, "
                "bftfs-plain)"
            )
    return specs


def measure(
    args: argparse.Namespace,
    specs: list[TargetSpec],
    progress: Progress,
    work: Path,
    skipped: dict[str, str],
) -> list[dict[str, Any]]:
    """The interleaved runs; a peer whose set-up fails goes into ``skipped``."""
    runs: list[dict[str, Any]] = []
    for rep in range(args.runs):
        for spec in specs:
            if spec.name in skipped:
                continue
            progress(f"run {rep + 1}/{args.runs} {spec.name:<14}", end="")
            rec: dict[str, Any] = {
                "target": spec.name,
                "b": spec.b if spec.kind == "bftfs" else None,
                "rep": rep,
            }
            try:
                with variants.open_target(spec, work, f"r{rep}", args, progress) as site:
                    rec["setup_s"] = round(site.setup_s, 3)
                    rec["info"] = site.info
                    meter = costs.Costs(site)
                    meter("postmark", "start")
                    try:
                        with common.Watchdog(site, args.cap + 300 + costs.SETTLE_CAP):
                            rec.update(run_postmark(site, work, args, progress))
                            # The clock and the CPU run on until the run's changes are
                            # kept: a directory fsync, and bftfs's mount then empty.
                            rec["settle_s"] = _rounded(_settle(site, site.path / "postmark"))
                    finally:
                        meter("postmark", "end")
                        rec["cpu"] = meter.cpu.phases["postmark"]
                        rec["costs"] = meter.per_unit("postmark", args.transactions)
                        # The run's raw counters: Q/U operations by method, every lease
                        # counter of the mount (issue 64: where b = 2's time goes).
                        rec["counters"] = meter.counters.phases.get("postmark", {})
            except (common.TargetError, PostMarkError, OSError, RuntimeError) as e:
                rec["error"] = str(e)
                progress.more(f" FAILED: {str(e).splitlines()[0][:200]}", end="\n")
                if common.skip_after_failure(spec, e, skipped):
                    progress(f"{spec.name}: skipped from now on (see the results)")
            else:
                part = f" (partial: {rec['partial']})" if "partial" in rec else ""
                progress.more(
                    f"  -> {rec['tps']:.0f} tps (create "
                    f"{common.fmt_s(rec.get('create_s'))}, transactions "
                    f"{common.fmt_s(rec.get('tx_s'))}){part}"
                    + (f", settled {rec['settle_s']:.1f} s after" if rec.get("settle_s") else "")
                    + costs.brief(rec["costs"], "tx"),
                    end="\n",
                )
            runs.append(rec)
    return runs


def run_profile(
    args: argparse.Namespace, specs: list[TargetSpec], progress: Progress, work: Path
) -> dict[str, Any]:
    """One unmeasured PostMark run on bftfs (b = 1 if swept) under py-spy."""
    bft = [s for s in specs if s.kind == "bftfs"]
    spec = next((s for s in bft if s.b == 1), bft[0] if bft else None)
    if spec is None:
        return {"error": "no bftfs target to profile"}
    out = args.out / f"{args.name or 'postmark-' + args.mode}-profile"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    progress(f"profile run (untimed) on {spec.name} with py-spy -> {out}", end="")
    try:
        with common.open_target(spec, work, "prof") as site:
            prof = profiling.Profiler(site, out, ("mount", "node1"))
            prof("postmark", "start")
            try:
                with common.Watchdog(site, args.cap + 300):
                    res = run_postmark(site, work, args, progress)
            finally:
                prof("postmark", "end")
    except (common.TargetError, PostMarkError, OSError, RuntimeError) as e:
        progress.more(f" FAILED: {e}", end="\n")
        return {"error": str(e)}
    progress.more(f"  -> {res['tps']:.0f} tps", end="\n")
    dur = prof.durations["postmark"]
    return {
        "target": spec.name,
        "tps": res["tps"],
        "seconds": dur,
        "rate": profiling.Profiler.RATE,
        "processes": {
            w: profiling.summarise_profile(out / f"postmark-{w}.txt", dur, profiling.Profiler.RATE)
            for w in prof.watch
        },
    }


def _servers(info: dict[str, Any] | None) -> int | None:
    """Servers behind a target: bftfs nodes, GlusterFS bricks (replicas)."""
    info = info or {}
    n = info.get("n", info.get("replica"))
    return int(n) if n is not None else None


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _settle(site: Site, location: Path) -> float | None:
    """Seconds after a run until its changes are kept, on every target alike: an ``fsync``
    of the directory PostMark worked in (what an application does to make its files'
    creation and removal durable; on bftfs it sends what directory write-back holds back
    at once, rather than at its commit interval), then for bftfs until its mount holds
    nothing back (``costs.wait_settled``); None if bftfs did not settle."""
    start = time.monotonic()
    fd = os.open(location, os.O_RDONLY | os.O_DIRECTORY)
    try:  # (a peer refusing fsync of a directory keeps its changes as it does)
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
    if site.config is not None and costs.wait_settled(site) is None:
        return None
    return time.monotonic() - start


def _to_settled(run: dict[str, Any]) -> float | None:
    """Seconds from PostMark's start until the target kept everything: its run, then
    :func:`_settle`; None for a bftfs run that did not settle."""
    if "wall_s" not in run or (run.get("b") is not None and run.get("settle_s") is None):
        return None
    return float(run["wall_s"]) + float(run.get("settle_s") or 0.0)


def summarise(runs: list[dict[str, Any]], specs: list[TargetSpec]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in specs:
        mine = [r for r in runs if r["target"] == spec.name]
        ok = [r for r in mine if "tps" in r]
        out[spec.name] = {
            "kind": spec.kind,
            "b": spec.b if spec.kind == "bftfs" else None,
            "durable": spec.durable if spec.kind == "bftfs" else None,
            "variant": bool(spec.aged or spec.load or spec.attack),
            "costs": costs.median_costs([r["costs"] for r in ok if "costs" in r]),
            "runs": len(ok),
            "partial_runs": sum(1 for r in ok if "partial" in r),
            "errors": [r["error"] for r in mine if "error" in r],
            "tps_median": common.median([r["tps"] for r in ok]),
            "tps_min_max": common.spread([r["tps"] for r in ok]),
            "create_s_median": common.median([r["create_s"] for r in ok if "create_s" in r]),
            "settled_s_median": common.median([s for r in ok if (s := _to_settled(r)) is not None]),
            # CPU seconds per transaction-equivalent are not separable from creation, so
            # the whole run's CPU over its wall time: near 2.0 on 2 cores = CPU-bound.
            "cores_busy_median": common.median(
                [
                    sum(v for k, v in r["cpu"].items() if k != "wall") / r["cpu"]["wall"]
                    for r in ok
                    if r.get("cpu") and r["cpu"].get("wall")
                ]
            ),
            "cpu_median": {
                k: common.median([r["cpu"][k] for r in ok if r.get("cpu") and k in r["cpu"]])
                for k in ("wall", "workload", "mount", "bindfs", "nodes")
                if any(r.get("cpu") and k in r["cpu"] for r in ok)
            },
            # bftfs: nodes; GlusterFS: bricks (replicas)
            "n": _servers(ok[0].get("info")) if ok else None,
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    cfg, summary = result["config"], result["summary"]
    lines = [
        f"### PostMark ({cfg['mode']} run, {result['date']})",
        "",
        f"{cfg['files']} files, {cfg['transactions']} transactions, sizes "
        f"{cfg['size_min']}-{cfg['size_max']} B, seed {cfg['seed']}, one client; median of "
        f"{cfg['runs']} interleaved run(s) per target; bftfs with t = b on a fresh cluster "
        f"each run (durable={not cfg['no_durable']}). Time cap per run: {cfg['cap']:.0f} s. "
        "'run to settled': PostMark's whole run, then an fsync of its directory and, for "
        "bftfs, until its mount held nothing back (CPU counted until then too)."
        + common.peers_note(result),
        "",
        "| target | n | transactions/s | min-max | file creation | run to settled "
        "| Q/U-NFSv3 (same b) | CPU s: postmark / daemon / nodes | cores busy |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, s in summary.items():
        tps = "-" if s["tps_median"] is None else f"{s['tps_median']:.0f}"
        if s["partial_runs"]:
            tps += " (partial)"
        mm = s["tps_min_max"]
        mms = "-" if mm is None else f"{mm[0]:.0f}-{mm[1]:.0f}"
        qu = QU_NFS_TPS.get(s["b"]) if s["kind"] == "bftfs" else None
        c = s.get("cpu_median") or {}
        cpu = " / ".join(
            common.fmt_s(c.get(k))
            for k in ("workload", "bindfs" if "bindfs" in c else "mount", "nodes")
        )
        busy = "-" if s.get("cores_busy_median") is None else f"{s['cores_busy_median']:.2f}"
        lines.append(
            f"| {name} | {s['n'] or '-'} | {tps} | {mms} | "
            f"{common.fmt_s(s['create_s_median'])} | {common.fmt_s(s.get('settled_s_median'))} "
            f"| {qu if qu else '-'} | {cpu} | {busy} |"
        )
    rows = [
        (n, "-" if s["tps_median"] is None else f"{s['tps_median']:.0f}", s.get("costs") or {})
        for n, s in summary.items()
    ]
    figure = {n: s["tps_median"] for n, s in summary.items()}
    lines += costs.cost_table(rows, "tx/s", "tx", variants.ratios(result.get("twins", {}), figure))
    for name, s in summary.items():
        if s["kind"] != "bftfs" or s["b"] != 1 or not s["tps_median"]:
            continue
        verdict = "above" if s["tps_median"] > FIRST_BAR_TPS else "below"
        lines += [
            "",
            f"{name}: {s['tps_median']:.0f} tps, {verdict} the first bar "
            f"({FIRST_BAR_TPS} tps); goal {GOAL_TPS} tps.",
        ]
    if any(s.get("durable") is False for s in summary.values()) and not cfg["no_durable"]:
        lines += [
            "",
            "'no fsync': nodes acknowledge before their LMDB commit reaches the disk. The "
            'Q/U-NFSv3 figures come from servers that kept everything in memory ("no '
            'experiments incur any disk accesses", seed 004 L2895); on this machine the six '
            "nodes also share one disk, so their fsyncs queue behind each other.",
        ]
    skipped = result.get("skipped") or {}
    lines += common.skipped_markdown(skipped)
    errs = {n: s["errors"] for n, s in summary.items() if s["errors"] and n not in skipped}
    if errs:
        lines += ["", "Failed runs:"]
        for n, es in errs.items():
            lines.append(f"- {n}: {len(es)} failed; first: `{es[0].splitlines()[0][:300]}`")
    prof = result.get("profile") or {}
    if prof.get("processes"):
        lines += [
            "",
            f"#### Where bftfs spends the time (py-spy, one unmeasured run on {prof['target']}, "
            f"{prof['tps']:.0f} tps)",
            "",
            "| process | busy | by FUSE handler | by innermost layer | top functions (self) |",
            "|---|---:|---|---|---|",
        ]
        for w, p in prof["processes"].items():
            lines.append(
                f"| {w} | {profiling.pct(p.get('busy_share'))} "
                f"| {profiling.shares(p.get('by_handler'), 4)} "
                f"| {profiling.shares(p.get('by_layer'), 4)} "
                f"| {profiling.shares(p.get('self_by_function'), 3)} |"
            )
    elif prof.get("error"):
        lines += ["", f"Profile run failed: `{prof['error'].splitlines()[0][:300]}`"]
    lines += common.machine_markdown(result)
    return "\n".join(lines) + "\n"


def _plot_bftfs(ax: Any, summary: dict[str, Any], durable: bool, style: str, label: str) -> None:
    """One bftfs series (tps against b, min-max bars) of the PostMark plot."""
    bft = sorted(
        (s["b"], s)
        for s in summary.values()
        if s["kind"] == "bftfs"
        and s["tps_median"] is not None
        and not s.get("variant")
        and s.get("durable", True) is durable
    )
    if not bft:
        return
    med = [s["tps_median"] for _, s in bft]
    lo = [m - s["tps_min_max"][0] for m, (_, s) in zip(med, bft, strict=True)]
    hi = [s["tps_min_max"][1] - m for m, (_, s) in zip(med, bft, strict=True)]
    ax.errorbar(
        [b for b, _ in bft],
        med,
        yerr=[lo, hi],
        marker="o" if durable else "D",
        mfc=None if durable else "none",
        ls=style,
        capsize=3,
        color=common.colour_for("bftfs"),
        label=label,
    )
    for b, s in bft:
        ax.annotate(
            f"{s['tps_median']:.0f}",
            (b, s["tps_median"]),
            textcoords="offset points",
            xytext=(7, -3) if durable else (-24, -3),
            fontsize=8,
        )


def plot(result: dict[str, Any], path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    summary = result["summary"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for durable, style, label in (
        (True, "-", "bftfs (contents on the nodes)"),
        (False, ":", "bftfs, no fsync (as the in-memory prototype)"),
    ):
        _plot_bftfs(ax, summary, durable, style, label)
    bft = [(s["b"], s) for s in summary.values() if s["kind"] == "bftfs"]
    qb = sorted(QU_NFS_TPS)
    ax.plot(
        qb,
        [QU_NFS_TPS[b] for b in qb],
        marker="s",
        ls="--",
        color="grey",
        label="Q/U-NFSv3 (SOSP'05; contents on the client)",
    )
    for name in ("local", "bindfs", "glusterfs", "seaweedfs", "moosefs", "cephfs"):
        s = summary.get(name)
        if s and s["tps_median"]:
            ax.axhline(
                s["tps_median"],
                color=common.colour_for(name),
                lw=1.2,
                label=f"{name}: {s['tps_median']:.0f} tps",
            )
    ax.axhline(GOAL_TPS, color="black", lw=0.8, ls=":", label=f"goal {GOAL_TPS} tps")
    ax.set_yscale("log")
    ax.set_xlabel("b (Byzantine faults tolerated; t = b)")
    ax.set_ylabel("transactions per second (log scale)")
    ax.set_xticks(range(0, max([5, *[b for b, _ in bft]]) + 1))
    cfg = result["config"]
    commit = str(result["commit"]["commit"])[:10]
    ax.set_title(
        f"PostMark, {cfg['files']} files, {cfg['transactions']} transactions, "
        f"{cfg['runs']} run(s)\n({result['date']}, {commit})",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="PostMark (the real program) on bftfs for several b, the local disk, "
        "bindfs and GlusterFS replica 3, interleaved; transactions per second.",
        epilog="Short run by default: 500 files, 2000 transactions, b = 0..3, one run, "
        "capped at 60 s per run. --full: the Q/U-NFSv3 configuration (5000 files, 20000 "
        "transactions), b = 0..5, 3 runs. Results go to "
        "benchmarks/results/postmark-<short|full>.{json,md,png}.",
    )
    ap.add_argument(
        "--full",
        action="store_true",
        help="Q/U-NFSv3 configuration, b = 0..5, 3 runs, no practical cap",
    )
    ap.add_argument("--files", type=int, help="PostMark 'set number' (short 500, full 5000)")
    ap.add_argument(
        "--transactions", type=int, help="PostMark 'set transactions' (short 2000, full 20000)"
    )
    ap.add_argument("--size-min", type=int, default=500, help="smallest file (PostMark default)")
    ap.add_argument("--size-max", type=int, default=10000, help="largest file (PostMark default)")
    ap.add_argument("--seed", type=int, default=42, help="PostMark's seed (its default)")
    ap.add_argument("--runs", type=int, help="repetitions per target (short 1, full 3)")
    ap.add_argument(
        "--bs", help="comma-separated b values for bftfs, t = b (short 0,1,2,3; full 0,1,2,3,4,5)"
    )
    ap.add_argument(
        "--targets",
        default="local,bindfs,glusterfs,bftfs",
        help="comma-separated, in interleaving order: local, bindfs, glusterfs, seaweedfs, "
        "moosefs, cephfs, bftfs (one "
        "target per b of --bs), bftfs-noverify (default local,bindfs,glusterfs,bftfs)",
    )
    ap.add_argument(
        "--cap",
        type=float,
        help="seconds before a run is stopped and its rate "
        "taken over the tenths of transactions done (short 60, full 3600)",
    )
    ap.add_argument(
        "--no-durable",
        action="store_true",
        help="bftfs nodes acknowledge before fsync (default: durable)",
    )
    ap.add_argument(
        "--no-fsync-bs",
        default="1",
        help="comma-separated b values also measured with nodes that do not fsync, like for "
        "like with the Q/U prototype's in-memory servers (default 1; '' for none)",
    )
    ap.add_argument(
        "--work",
        type=Path,
        help="scratch directory on the local disk (default: a temporary directory under /var/tmp)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="add one unmeasured bftfs run (b=1) under py-spy and report where time goes",
    )
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR, help="results directory")
    ap.add_argument("--name", help="results file stem (default postmark-<short|full>)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    variants.add_arguments(ap, attacks=True)
    args = ap.parse_args(argv)
    args.mode = "full" if args.full else "short"
    full = args.full
    args.files = args.files or (5000 if full else 500)
    args.transactions = args.transactions or (20000 if full else 2000)
    args.runs = args.runs or (3 if full else 1)
    args.cap = args.cap or (3600.0 if full else 60.0)
    args.bs = [int(b) for b in (args.bs or ("0,1,2,3,4,5" if full else "0,1,2,3")).split(",")]
    args.no_fsync_bs = [int(b) for b in args.no_fsync_bs.split(",") if b.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm_handler()
    progress = Progress("postmark", args.quiet)
    if shutil.which("postmark") is None:
        progress("postmark is not installed: run scripts/setup-bench.sh (Debian package postmark)")
        return 2
    specs = variants.expand_args(specs_from_args(args), args)
    skipped = common.skip_reasons(specs)
    for name, why in skipped.items():
        progress(f"{name} skipped: {why}")
    specs = [s for s in specs if s.name not in skipped]
    progress(
        f"{args.files} files, {args.transactions} transactions; {args.runs} run(s) x "
        f"{len(specs)} targets ({', '.join(s.name for s in specs)})"
    )
    machine = common.machine_info()
    date = common.now_utc()
    work = Path(tempfile.mkdtemp(prefix="bftfs-postmark-", dir=args.work or "/var/tmp"))
    try:
        runs = measure(args, specs, progress, work, skipped)
        profile = run_profile(args, specs, progress, work) if args.profile else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg())
    summary = summarise(runs, specs)
    result = {
        "benchmark": "postmark",
        "date": date,
        "machine": machine,
        "commit": common.commit_info(),
        "config": {
            "mode": args.mode,
            "files": args.files,
            "transactions": args.transactions,
            "size_min": args.size_min,
            "size_max": args.size_max,
            "seed": args.seed,
            "runs": args.runs,
            "bs": args.bs,
            "t_equals_b": True,
            "cap": args.cap,
            "no_durable": args.no_durable,
            "no_fsync_bs": args.no_fsync_bs,
            "targets": [s.name for s in specs],
            **variants.config(args),
        },
        "twins": variants.twins(specs),
        "qu_nfsv3_tps": QU_NFS_TPS,
        "runs": runs,
        "summary": summary,
        "profile": profile,
        "skipped": skipped,
    }
    stem = args.name or f"postmark-{args.mode}"
    md = common.write_results(
        args.out, stem, result, markdown, plot, progress, with_plot=not args.no_plot
    )
    print(md)
    return 0 if all(s["runs"] for n, s in summary.items() if n not in skipped) else 1


if __name__ == "__main__":
    sys.exit(main())
