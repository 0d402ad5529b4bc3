"""Two real PostMarks at once in one directory, with and without leases (issue 33).

Issue 33's contention bar: two clients working in one directory stay as fast with leases as
without, shown "with two PostMarks in one directory".  ``contention.py``'s ``distinct``
pattern imitates that; this runs the real program (``postmark.py``'s configuration and
output parsing): per target, two PostMark processes start at once, each with its own
configuration file and seed (``--seed`` and ``--seed + 1``) but the same ``set location``
and no subdirectories, so both create, read, append and delete their files side by side in
one directory.  PostMark names its files from its random numbers; different seeds give
different names, and each process deletes only the files it made (a name both pick, or a
file of the other's removed, would show as an error PostMark prints: those are reported).

Targets, interleaved per repetition:

* ``local``: both processes in one directory of the local disk;
* ``glusterfs``: a GlusterFS replica-3 volume (``gluster.py``) mounted twice, one process
  on each mount (two clients, as bftfs);
* ``bftfs-nolease`` / ``bftfs-lease``: a fresh cluster (t = b = 1, durable) with two mounts
  (client0, client1, as ``contention.py``), mount option ``lease=0`` / ``lease=30``; the
  leases' counters (recalls, refusals, exclusive, deferred) from both mounts' status files;
* ``bftfs-recall``: as ``bftfs-lease`` with ``nopublish`` (a look recalls the other's
  exclusive lease instead of asking it to publish).

Reported: transactions per second of both processes together (the transactions of both over
the span from the first transaction phase's start to the last one's end: :func:`together`;
the sum of their rates beside it, which a run where one waits out the other overstates) and
of each, medians over ``--runs`` interleaved runs, and the ratios to local and GlusterFS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import contention  # noqa: E402
import costs  # noqa: E402
import gluster  # noqa: E402
import postmark  # noqa: E402
import variants  # noqa: E402
from common import Progress, Site, TargetSpec  # noqa: E402

TARGETS = ("local", "glusterfs", "bftfs-nolease", "bftfs-lease", "bftfs-recall")
LEASE_KEYS = ("recalled", "refused", "exclusive", "deferred", "taken")


def _error_lines(text: str) -> list[str]:
    """PostMark's complaints (``Error: ...``), e.g. a file the other process removed."""
    return [ln.strip() for ln in text.splitlines() if re.match(r"\s*Error", ln)]


def run_pair(loc: Path, locs: list[Path], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Two PostMarks at once, the i-th working in ``locs[i]`` (one path per mount of the
    shared directory ``loc``); each one's result, and the sum of their rates."""
    loc.mkdir()
    if args.apart:  # the last resort: one directory each, side by side in ``loc``
        locs = [p / f"p{i}" for i, p in enumerate(locs)]
        locs[0].mkdir()
        locs[1].mkdir()
    results: list[dict[str, Any]] = [{}, {}]
    quiet = Progress("two-postmarks", quiet=True)

    started = [0.0, 0.0]

    def one(i: int) -> None:
        mine = argparse.Namespace(**vars(args))
        mine.seed = args.seed + i
        started[i] = time.monotonic()
        try:
            results[i] = postmark.run_postmark(
                None, work, mine, quiet, location=locs[i], keep_text=True
            )
        except (postmark.PostMarkError, OSError) as e:
            results[i]["error"] = str(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out: dict[str, Any] = {"procs": []}
    for r in results:
        text = r.pop("text", "")
        errs = _error_lines(text)
        r["postmark_errors_n"] = len(errs)
        r["postmark_errors"] = errs[:10]
        out["procs"].append(r)
    if all("tps" in r for r in results):
        out["tps_sum"] = sum(r["tps"] for r in results)
        out["tps"] = together(results, started)
    out["left_in_dir"] = len(os.listdir(locs[0])) if locs[0].exists() else None
    return out


def together(results: list[dict[str, Any]], started: list[float]) -> float:
    """Both processes' transactions over the time from the first one's transactions
    beginning to the last one's ending.  Not the sum of their rates: a process that waits
    out the other's run (its creates held up behind the other's lease) has a fast rate of
    its own after the wait, and the sum would count the two as if they had run at once."""
    spans = [
        (t0 + r["create_s"], t0 + r["create_s"] + r["tx_s"])
        for r, t0 in zip(results, started, strict=True)
    ]
    done = sum(r["tps"] * r["tx_s"] for r in results)
    wall = max(end for _, end in spans) - min(begin for begin, _ in spans)
    return done / wall if wall > 0 else 0.0


@contextlib.contextmanager
def gluster_two(base: Path) -> Iterator[tuple[Path, Path, dict[str, int]]]:
    """A replica-3 volume mounted twice (two FUSE clients); the processes serving it."""
    with gluster.volume(base) as vol:
        second = base / "mnt2"
        second.mkdir()
        gluster._mount(vol.name, second, base / "client2.log")
        pids = dict(vol.pids)
        pid2 = gluster._client_pid(vol.name, second)
        if pid2 is not None:
            pids["mount2"] = pid2
        try:
            yield vol.mountpoint, second, pids
        finally:
            with contextlib.suppress(OSError):
                gluster._unmount(second)


def _measured(
    site: Site,
    b: Path | None,
    pid_b: int | None,
    work: Path,
    args: argparse.Namespace,
    progress: Progress,
) -> dict[str, Any]:
    """Both PostMarks in ``shared`` of the site's mount and of ``b`` (the second mount of
    the same file system, or None: one mount), under the site's variant's conditions;
    their costs per transaction of both."""
    a = site.path
    second = a if b is None else b
    mounts = [a] if b is None else [a, b]
    meter = costs.Costs(site, mounts, [site.pids.get("mount"), pid_b][: len(mounts)])
    with variants.conditions(site.spec, site, args, progress):
        meter("pair", "start")
        try:
            out = run_pair(a / "shared", [a / "shared", second / "shared"], work, args)
        finally:
            meter("pair", "end")
    out["costs"] = meter.per_unit("pair", 2 * args.transactions)
    out["info"] = site.info
    return out


def run_target(
    spec: TargetSpec, work: Path, args: argparse.Namespace, tag: str, progress: Progress
) -> dict[str, Any]:
    """One run of both PostMarks on a fresh target (``spec``: a name of ``TARGETS`` or a
    variant of one, ``variants.py``)."""
    name = variants.base_name(spec)
    base = work / f"{spec.name.replace(' ', '_')}-{tag}"
    base.mkdir()
    try:
        if name == "local":
            (base / "d").mkdir()
            return _measured(Site(spec, base / "d"), None, None, work, args, progress)
        if name == "glusterfs":
            with gluster_two(base) as (a, b, pids):
                return _measured(Site(spec, a, pids), b, pids.get("mount2"), work, args, progress)
        from bftfs.testing.mounts import Mount
        from bftfs.testing.processes import ProcessCluster

        options = ",".join(x for x in (contention.TARGETS[name], "metrics_port=0") if x)
        with (
            ProcessCluster(base / "c", map_size=1 << 30, durable=True, clients=2) as pc,
            Mount(pc.config, base / "a", client="client0", options=options) as ma,
            Mount(pc.config, base / "b", client="client1", options=options) as mb,
        ):
            pids = {f"node{i}": p for i in range(pc.config.n) if (p := pc.pid(i)) is not None}
            if ma.proc is not None:
                pids["mount"] = ma.proc.pid
            site = Site(spec, ma.mountpoint, pids, config=pc.config)
            pid_b = mb.proc.pid if mb.proc is not None else None
            out = _measured(site, mb.mountpoint, pid_b, work, args, progress)
            leases = contention._leases(pc, ma) + contention._leases(pc, mb)
            out["leases"] = {k: leases[k] for k in LEASE_KEYS}
            out["split"] = [mount_split(pc.config, m.mountpoint) for m in (ma, mb)]
            return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


#: The Q/U client's counters a mount's split shows (``bftfs_mount_qu_<name>_total``).
QU_COUNTERS = (
    "rounds",
    "behind",
    "behind_queries",
    "refused",
    "barriers",
    "copies",
    "backoffs",
    "backoff_ms",
    "inline_repairs",
    "history_fetches",
)
#: The leases' counters a mount's split shows (its status file).
LEASE_SPLIT = (
    "recalled",
    "recall_waits",
    "recall_wait_ms",
    "exclusive",
    "refused",
    "cooled",
    "deferred",
    "hits",
)


def mount_split(config: Any, mountpoint: Path) -> dict[str, Any]:
    """Where one mount's time went over its life (a fresh mount per run: the pair is
    nearly all of it): Q/U operations and their seconds by method, the Q/U client's
    rounds, refusals, repairs and backoffs, the leases' recalls and their waits, and the
    kernel requests' seconds by operation (the mount's metrics and status file)."""
    st = costs._status(config, mountpoint, time.time(), None, 5.0)
    samples: dict[str, float] = {}
    if st.get("metrics"):
        with contextlib.suppress(OSError):
            samples = costs.scrape(st["metrics"])

    def labelled(family: str, label: str) -> dict[str, float]:
        pre = family + "{" + label + '="'
        return {
            k[len(pre) : k.index('"', len(pre))]: v for k, v in samples.items() if k.startswith(pre)
        }

    ops = labelled("bftfs_mount_qu_operations_total", "method")
    secs = labelled("bftfs_mount_qu_operation_seconds_total", "method")
    fuse = labelled("bftfs_mount_request_duration_seconds_sum", "op")
    fuse_n = labelled("bftfs_mount_request_duration_seconds_count", "op")
    leases = st.get("leases") or {}
    return {
        "qu_operations": sum(ops.values()),
        "qu_by_method": {
            m: [int(n), round(secs.get(m, 0.0), 2)]
            for m, n in sorted(ops.items(), key=lambda kv: -secs.get(kv[0], 0.0))[:8]
        },
        **{c: samples.get(f"bftfs_mount_qu_{c}_total", 0.0) for c in QU_COUNTERS},
        "leases": {k: leases.get(k, 0) for k in LEASE_SPLIT},
        "fuse_seconds": {
            op: [int(fuse_n.get(op, 0)), round(v, 2)]
            for op, v in sorted(fuse.items(), key=lambda kv: -kv[1])[:8]
        },
    }


#: The split table's columns: a name, and how one run's (both mounts') figure is made.
SPLIT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("Q/U ops", "qu_operations"),
    ("rounds", "rounds"),
    ("behind", "behind"),
    ("of queries", "behind_queries"),
    ("barriers + copies + inline", "barriers+copies+inline_repairs"),
    ("history reads", "history_fetches"),
    ("backoffs", "backoffs"),
    ("backoff ms", "backoff_ms"),
    ("recalls", "leases.recalled"),
    ("recall wait ms", "leases.recall_wait_ms"),
)


def split_per_tx(run: dict[str, Any], transactions: int) -> dict[str, float] | None:
    """One bftfs run's split (both mounts summed) per transaction both PostMarks did
    (:func:`transactions_done`), by ``SPLIT_COLUMNS``; None for a run without one
    (another target, a failed run)."""
    mounts = run.get("split")
    done = transactions_done(run, transactions)
    if not mounts or done <= 0:
        return None

    def value(m: dict[str, Any], key: str) -> float:
        if key.startswith("leases."):
            return float((m.get("leases") or {}).get(key.split(".", 1)[1], 0))
        return float(sum(m.get(k, 0) for k in key.split("+")))

    return {name: sum(value(m, key) for m in mounts) / done for name, key in SPLIT_COLUMNS}


def transactions_done(run: dict[str, Any], transactions: int) -> float:
    """Transactions both PostMarks did: all of them, but the tenths a process stopped at
    the time cap after (its ``partial``: "k/10 of the transactions ...")."""
    done = 0.0
    for p in run.get("procs") or [{}, {}]:
        got = re.match(r"(\d+)/10 ", str(p.get("partial") or ""))
        done += transactions * (int(got.group(1)) / 10 if got else 1)
    return done


def split_markdown(runs: list[dict[str, Any]], transactions: int) -> list[str]:
    """Where each bftfs run's time went, per transaction (``split_per_tx``)."""
    rows = [(r, got) for r in runs if (got := split_per_tx(r, transactions)) is not None]
    if not rows:
        return []
    out = [
        "",
        "Per transaction of both PostMarks, both mounts summed (each mount's metrics and "
        "status file; `behind`: rounds sent again at once because the client's histories "
        "were out of date, another mount having changed the object since):",
        "",
        "| run | " + " | ".join(name for name, _ in SPLIT_COLUMNS) + " |",
        "|---|" + "---:|" * len(SPLIT_COLUMNS),
    ]
    for r, got in rows:
        cells = " | ".join(f"{got[name]:.2f}" for name, _ in SPLIT_COLUMNS)
        out.append(f"| {r['target']} r{r.get('rep', 0)} | {cells} |")
    return out


def summarise(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        mine = [r for r in runs if r["target"] == name]
        ok = [r for r in mine if "tps" in r]
        leases: Counter[str] = Counter()
        for r in ok:
            leases.update(r.get("leases") or {})
        out[name] = {
            "runs": len(ok),
            "tps_median": common.median([r["tps"] for r in ok]),
            "tps_min_max": common.spread([r["tps"] for r in ok]),
            "sum_median": common.median([r["tps_sum"] for r in ok if "tps_sum" in r]),
            "per_process_median": [
                common.median([r["procs"][i]["tps"] for r in ok]) for i in (0, 1)
            ],
            "leases": dict(leases) if any(r.get("leases") for r in ok) else None,
            "costs": costs.median_costs([r["costs"] for r in ok if "costs" in r]),
            "errors": [r["error"] for r in mine if "error" in r]
            + [e for r in mine for p in r.get("procs", []) for e in [p.get("error")] if e],
            "postmark_errors_median": common.median(
                [sum(p.get("postmark_errors_n", 0) for p in r["procs"]) for r in ok]
            ),
            "postmark_errors": [
                e for r in mine for p in r.get("procs", []) for e in p.get("postmark_errors", [])
            ][:10],
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    cfg, s = result["config"], result["summary"]
    local = (s.get("local") or {}).get("tps_median")
    gl = (s.get("glusterfs") or {}).get("tps_median")
    lines = [
        f"### Two PostMarks in one directory ({result['date']})",
        "",
        f"Two PostMark processes at once per target, each {cfg['files']} files and "
        f"{cfg['transactions']} transactions (sizes {cfg['size_min']}-{cfg['size_max']} B, "
        f"seeds {cfg['seed']} and {cfg['seed'] + 1}), "
        + (
            "each in its own subdirectory (p0, p1) of one shared directory (`--apart`: "
            "PostMark names its files 1, 2, 3 ... in every process, so in one directory "
            "the two would share every name). "
            if cfg.get("apart")
            else "both with the same `set location` (no subdirectories), so on the same "
            "names: PostMark names its files 1, 2, 3 ... in every process, and each reads, "
            "appends to and deletes files the other also made or removed (its errors are "
            "counted). "
        )
        + "GlusterFS replica 3 and bftfs (t = b = 1, durable) each with "
        "two mounts, one process on each; local: one mount, the disk. Median of "
        f"{cfg['runs']} interleaved run(s); time cap {cfg['cap']:.0f} s per process.",
        "",
        "| target | tx/s both | min-max | sum of rates | tx/s per process | vs local "
        "| vs GlusterFS | PostMark errors | leases (all runs) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, v in s.items():
        tps = v["tps_median"]
        mm = v["tps_min_max"]
        per = " / ".join("-" if x is None else f"{x:.0f}" for x in v["per_process_median"])
        lz = v["leases"]
        shown = ", ".join(f"{k} {n}" for k, n in lz.items() if n) or "none" if lz else "-"
        lines.append(
            f"| {name} | {'-' if tps is None else f'{tps:.0f}'} | "
            f"{'-' if mm is None else f'{mm[0]:.0f}-{mm[1]:.0f}'} | "
            f"{'-' if v['sum_median'] is None else format(v['sum_median'], '.0f')} | {per} | "
            f"{common.fmt_ratio(common.ratio(tps, local))} | "
            f"{common.fmt_ratio(common.ratio(tps, gl))} | "
            f"{'-' if v['postmark_errors_median'] is None else v['postmark_errors_median']:.0f} | "
            f"{shown} |"
        )
    partial = [
        n
        for r in result["runs"]
        for n in [r["target"]]
        if any("partial" in p for p in r.get("procs", []))
    ]
    if partial:
        lines += ["", f"Stopped at the time cap (rate over the tenths done): {', '.join(partial)}."]
    errs = {n: v for n, v in s.items() if v["errors"] or v["postmark_errors"]}
    if errs:
        lines += [
            "",
            "PostMark errors (median per run of both processes' in the table); first few:",
        ]
        for n, v in errs.items():
            for e in (v["errors"] + v["postmark_errors"])[:5]:
                lines.append(f"- {n}: `{e.splitlines()[0][:300]}`")
    else:
        lines += ["", "Neither PostMark printed an error on any target (no name collisions)."]
    rows = [
        (n, "-" if v["tps_median"] is None else f"{v['tps_median']:.0f}", v.get("costs") or {})
        for n, v in s.items()
    ]
    figure = {n: v["tps_median"] for n, v in s.items()}
    twins = variants.ratios(result.get("twins", {}), figure)
    lines += costs.cost_table(rows, "tx/s both", "tx", twins)
    lines += split_markdown(result["runs"], cfg["transactions"])
    lines += common.machine_markdown(result)
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=500, help="PostMark 'set number' per process")
    ap.add_argument("--transactions", type=int, default=2000, help="per process")
    ap.add_argument("--size-min", type=int, default=500)
    ap.add_argument("--size-max", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=42, help="the first process's; the second +1")
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs per target")
    ap.add_argument("--targets", default=",".join(TARGETS), help="subset of " + ",".join(TARGETS))
    ap.add_argument("--cap", type=float, default=240.0, help="seconds per PostMark process")
    ap.add_argument(
        "--apart",
        action="store_true",
        help="each process in its own subdirectory (p0, p1) of the shared one: no shared "
        "names (PostMark names its files 1, 2, 3 ... in every process)",
    )
    ap.add_argument("--work", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    ap.add_argument("--name", default="two-postmarks", help="results file stem")
    variants.add_arguments(ap)
    args = ap.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    for t in args.targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm_handler()
    progress = Progress("two-postmarks")
    if shutil.which("postmark") is None:
        progress("postmark is not installed: run scripts/setup-bench.sh")
        return 2
    targets = list(args.targets)
    if "glusterfs" in targets and gluster.why_not():
        progress(f"glusterfs skipped: {gluster.why_not()}")
        targets.remove("glusterfs")
    specs = variants.expand(
        [TargetSpec(n, "bftfs" if n.startswith("bftfs") else n) for n in targets],
        args.aged,
        args.load,
    )
    machine = common.machine_info()
    date = common.now_utc()
    work = Path(tempfile.mkdtemp(prefix="bftfs-2pm-", dir=args.work))
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(args.runs):
            for spec in specs:
                progress(f"run {rep + 1}/{args.runs} {spec.name:<14}", end="")
                rec: dict[str, Any] = {"target": spec.name, "rep": rep}
                try:
                    rec.update(run_target(spec, work, args, f"r{rep}", progress))
                except Exception as e:  # a failed set-up is recorded, the others go on
                    rec["error"] = f"{type(e).__name__}: {e}"
                per = " + ".join(f"{p.get('tps', 0):.0f}" for p in rec.get("procs", []))
                progress.more(
                    f" -> {rec.get('tps', 0):.0f} tx/s ({per}) {rec.get('leases', '')}"
                    f" {rec.get('error', '')[:200]}"
                    + (costs.brief(rec["costs"], "tx") if "costs" in rec else ""),
                    end="\n",
                )
                for i, sp in enumerate(rec.get("split", [])):
                    progress(f"  mount {i}: {json.dumps(sp)}")
                runs.append(rec)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg())
    result = {
        "benchmark": "two-postmarks",
        "date": date,
        "machine": machine,
        "commit": common.commit_info(),
        "config": {
            k: getattr(args, k)
            for k in (
                "files",
                "transactions",
                "size_min",
                "size_max",
                "seed",
                "runs",
                "cap",
                "apart",
            )
        }
        | {"targets": [s.name for s in specs], **variants.config(args)},
        "twins": variants.twins(specs),
        "runs": runs,
        "summary": summarise(runs, [s.name for s in specs]),
    }
    md = common.write_results(
        args.out, args.name, result, markdown, None, progress, with_plot=False
    )
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
