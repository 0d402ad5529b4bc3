"""Age a bftfs cluster and watch its speed and cost against its age (issue 62).

bftfs got slower the more it was used (issue 62: PostMark from 65 to 19 transactions/s
after eight minutes of work and five idle ones, CPU per transaction 3.3x).  This module
has the fixed ageing workload the side-by-side benchmarks run before their ``aged``
targets (``variants.py``), and a loop that ages one cluster for a given time:

* **the workload** (``age``, seeded, in a new directory of the mount, removed after):
  ``--andrew-rounds`` Andrew rounds (``andrew.py``'s five phases on Lua 5.4's directory of
  the cached lupa sdist), a ``--big-mib`` MiB file written with fsync (``seqio.py``) and
  removed, and a tree of ``--small-files`` small files (seeded sizes up to 8 KiB, 100 per
  directory) made and removed;
* **the loop** (``main``): on one fresh cluster, a PostMark sample (``--files`` /
  ``--transactions``), then rounds of the workload, each followed by a sample, until
  ``--minutes`` have passed.  A sample records transactions/s and, per transaction, CPU
  seconds of the mount and of the nodes (``/proc``), lease renewals and Q/U rounds (the
  mount's status file and metrics: ``costs.py``), and the nodes' disk use.

Results: ``<name>.json``, ``.md`` and ``.svg`` (rate and CPU per transaction against age,
``chart.lines_svg``) in ``--out`` (default ``benchmarks/results/``, stem ``ageing``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import andrew  # noqa: E402
import chart  # noqa: E402
import common  # noqa: E402
import costs  # noqa: E402
import postmark  # noqa: E402
import profiling  # noqa: E402
import seqio  # noqa: E402
from common import Progress, Site  # noqa: E402

MiB = 1 << 20
SMALL_MAX = 8192  # bytes: the small files' sizes are drawn from 0..SMALL_MAX
PER_DIR = 100


@dataclass(frozen=True)
class Ageing:
    """The fixed workload; the defaults are issue 62's (about 8 minutes on 2 cores)."""

    andrew_rounds: int = 3
    big_mib: int = 1024
    small_files: int = 3000
    seed: int = 62


def config_from(args: argparse.Namespace) -> Ageing:
    """The workload a benchmark's ``--age-*`` flags (``variants.add_arguments``) ask for."""
    return Ageing(args.age_andrew_rounds, args.age_big_mib, args.age_small_files)


def small_sizes(n: int, seed: int) -> list[int]:
    """The small files' sizes: seeded, so every ageing writes the same bytes."""
    rng = random.Random(seed)
    return [rng.randint(0, SMALL_MAX) for _ in range(n)]


def make_small_tree(root: Path, sizes: list[int], seed: int) -> None:
    """``len(sizes)`` files of those sizes, ``PER_DIR`` to a directory."""
    data = random.Random(seed).randbytes(SMALL_MAX)
    for i, size in enumerate(sizes):
        d = root / f"d{i // PER_DIR:03d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05d}").write_bytes(data[:size])


def age(where: Path, cfg: Ageing) -> dict[str, float]:
    """One pass of the workload in the new directory ``where`` (removed after); seconds
    per step and ``total_s``.

    Raises:
        andrew.PhaseError: an Andrew round failed or read back wrong data.
        OSError: the file system refused a step.
    """
    where.mkdir()
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    quiet = Progress("ageing", quiet=True)
    tree = andrew.scan_tree(andrew.default_tree(quiet) / andrew.LUA54)
    for i in range(cfg.andrew_rounds):
        andrew.run_once(tree, andrew.lua54_build(), where / f"andrew{i}")
    out["andrew_s"] = time.perf_counter() - t0
    if cfg.big_mib > 0:
        t = time.perf_counter()
        big = where / "big"
        seqio.write_file(big, cfg.big_mib * MiB, seqio.make_block(MiB, cfg.seed))
        big.unlink()
        out["big_s"] = time.perf_counter() - t
    t = time.perf_counter()
    make_small_tree(where / "small", small_sizes(cfg.small_files, cfg.seed), cfg.seed)
    shutil.rmtree(where / "small")
    out["small_s"] = time.perf_counter() - t
    t = time.perf_counter()
    shutil.rmtree(where)
    out["remove_s"] = time.perf_counter() - t
    out["total_s"] = time.perf_counter() - t0
    return {k: round(v, 3) for k, v in out.items()}


# The loop ---------------------------------------------------------------------------------


def disk_mib(home: Path) -> float:
    """MiB the cluster's files take on disk (allocated blocks: LMDB maps are sparse)."""
    total = 0
    for dirpath, _dirs, files in os.walk(home):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                continue
    return round(total / MiB, 1)


def sample(site: Site, work: Path, args: argparse.Namespace, n: int) -> dict[str, Any]:
    """One PostMark run in a new directory: its rate and its costs per transaction.

    Raises:
        postmark.PostMarkError: PostMark failed or did not get through its transactions.
    """
    loc = site.path / f"postmark{n}"
    loc.mkdir()
    meter = costs.Costs(site)
    meter("postmark", "start")
    try:
        res = postmark.run_postmark(site, work, args, Progress("ageing", True), location=loc)
    finally:
        meter("postmark", "end")
    loc.rmdir()
    counters = meter.counters.phases.get("postmark", {})  # every lease counter, rounds by method
    per = meter.per_unit("postmark", args.transactions)
    return {"tps": res["tps"], **per, "counters": counters}


def run(args: argparse.Namespace, progress: Progress, work: Path) -> list[dict[str, Any]]:
    """Samples of one cluster as it ages, the first at age 0."""
    spec = common.bftfs_spec(args.t, args.b)
    samples: list[dict[str, Any]] = []
    cfg = Ageing(args.andrew_rounds, args.big_mib, args.small_files, args.seed)
    with common.open_target(spec, work, "age") as site:
        t0 = time.monotonic()
        rounds = 0
        while True:
            age_s = time.monotonic() - t0
            s = sample(site, work, args, rounds)
            s.update(
                age_s=round(age_s, 1),
                ageing_rounds=rounds,
                disk_mib=disk_mib(site.config.home),
                when="settled" if args.settled and rounds else "",
            )
            samples.append(s)
            progress(
                f"age {age_s / 60:5.1f} min, {rounds} round(s): {s['tps']:.0f} tps"
                + costs.brief(s, "tx")
                + f", {s['disk_mib']:.0f} MiB on disk"
            )
            if time.monotonic() - t0 >= args.minutes * 60:
                return samples
            took = age(site.path / f"ageing{rounds}", cfg)
            rounds += 1
            progress(f"ageing round {rounds}: {took}")
            if args.settled:  # right after the round, then (at the top) once the nodes idle
                s = sample(site, work, args, rounds * 1000)
                s.update(
                    age_s=round(time.monotonic() - t0, 1),
                    ageing_rounds=rounds,
                    disk_mib=disk_mib(site.config.home),
                    when="right after",
                )
                samples.append(s)
                progress(f"right after: {s['tps']:.0f} tps" + costs.brief(s, "tx"))
                nodes = [pid for name, pid in site.pids.items() if name.startswith("node")]
                waited = profiling.settle(nodes)
                progress(f"the nodes settled after {waited:.0f} s")


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"### bftfs as it ages ({result['date']})",
        "",
        f"One cluster (t = b = {cfg['b']}), aged for {cfg['minutes']} min by rounds of "
        f"{cfg['andrew_rounds']} Andrew runs, a {cfg['big_mib']} MiB file and "
        f"{cfg['small_files']} small files made and removed; after each round PostMark "
        f"{cfg['files']} / {cfg['transactions']} (seed {cfg['seed']}). CPU per transaction: "
        "the whole PostMark run's CPU (creation, transactions, deletion) over its transactions.",
        "",
        "| age (min) | ageing rounds | sample | tx/s | CPU ms/tx: mount | nodes | renewals/tx "
        "| rounds/tx | disk MiB |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["samples"]:
        ms = ["-" if s.get(k) is None else f"{1000 * s[k]:.3g}" for k in ("mount_cpu", "nodes_cpu")]
        lines.append(
            f"| {s['age_s'] / 60:.1f} | {s['ageing_rounds']} | {s.get('when') or '-'} "
            f"| {s['tps']:.0f} | {ms[0]} | {ms[1]} "
            f"| {costs.fmt_cost(s.get('renewals'))} | {costs.fmt_cost(s.get('rounds'))} "
            f"| {s['disk_mib']:.0f} |"
        )
    first, last = result["samples"][0], result["samples"][-1]
    lines += [
        "",
        f"Last sample over the first: {common.fmt_ratio(common.ratio(last['tps'], first['tps']))}"
        " transactions/s, "
        + common.fmt_ratio(
            common.ratio(
                (last.get("mount_cpu") or 0) + (last.get("nodes_cpu") or 0),
                (first.get("mount_cpu") or 0) + (first.get("nodes_cpu") or 0),
            )
        )
        + " CPU per transaction (mount + nodes).",
    ]
    lines += common.machine_markdown(result)
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    """Rate and CPU per transaction against age, as an SVG (``chart.lines_svg``)."""
    ss = result["samples"]
    xs = [s["age_s"] / 60 for s in ss]

    def ys(key: str, scale: float = 1.0) -> list[float | None]:
        return [None if s.get(key) is None else s[key] * scale for s in ss]

    panels = [
        chart.LinePanel("PostMark transactions/s", [("bftfs", ys("tps"), "#3c8d4f")]),
        chart.LinePanel(
            "CPU ms per transaction",
            [
                ("mount", ys("mount_cpu", 1000), "#7fa7d9"),
                ("nodes", ys("nodes_cpu", 1000), "#c44e52"),
            ],
        ),
    ]
    path.write_text(chart.lines_svg(xs, panels, "age (minutes)", f"bftfs ageing, {result['date']}"))
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="how long to age (60)")
    ap.add_argument("--files", type=int, default=1000, help="PostMark files per sample (1000)")
    ap.add_argument("--transactions", type=int, default=4000, help="per sample (4000)")
    ap.add_argument("--size-min", type=int, default=500)
    ap.add_argument("--size-max", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=42, help="PostMark's seed (42)")
    ap.add_argument("--cap", type=float, default=1800.0, help="seconds per PostMark (1800)")
    ap.add_argument("--andrew-rounds", type=int, default=3, help="Andrew runs per round (3)")
    ap.add_argument("--big-mib", type=int, default=1024, help="the big file's MiB (1024)")
    ap.add_argument("--small-files", type=int, default=3000, help="small files per round")
    ap.add_argument("--t", type=int, default=1)
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp"), help="scratch directory")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR, help="results directory")
    ap.add_argument("--name", default="ageing", help="results file stem (ageing)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument(
        "--settled",
        action="store_true",
        help="after each round sample right away and again once the nodes idle: what the "
        "round's history costs apart from the background work it left",
    )
    args = ap.parse_args(argv)
    if args.minutes < 0 or args.transactions <= 0 or args.files <= 0:
        ap.error("--minutes must be >= 0, --files and --transactions positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm_handler()
    progress = Progress("ageing", args.quiet)
    if shutil.which("postmark") is None:
        progress("postmark is not installed: run scripts/setup-bench.sh")
        return 2
    machine, date = common.machine_info(), common.now_utc()
    work = Path(tempfile.mkdtemp(prefix="bftfs-ageing-", dir=args.work))
    try:
        samples = run(args, progress, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg())
    keys = ("minutes", "files", "transactions", "size_min", "size_max", "seed", "cap", "settled")
    result = {
        "benchmark": "ageing",
        "date": date,
        "machine": machine,
        "commit": common.commit_info(),
        "config": {k: getattr(args, k) for k in keys}
        | {"andrew_rounds": args.andrew_rounds, "big_mib": args.big_mib}
        | {"small_files": args.small_files, "t": args.t, "b": args.b},
        "samples": samples,
    }
    md = common.write_results(
        args.out, args.name, result, markdown, plot, progress, with_plot=False
    )
    plot(result, args.out / f"{args.name}.svg")
    progress(f"wrote {args.out / args.name}.svg")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
