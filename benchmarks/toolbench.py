"""The harness the standard-tool workloads share (``fio.py``, ``fsmark.py``, ``dbench.py``;
issue 64): targets, interleaved runs, medians, a table of ratios to the local disk, JSON.

Each tool module gives a list of ``Case`` (one configuration of its tool: a fio job, an
fs_mark thread count, a dbench client count) and a function that runs one case in a
directory and returns its figure; this module opens every target once per repetition
(local, bindfs, the peers: glusterfs, seaweedfs, moosefs, cephfs; bftfs for each b;
``--aged``/``--load`` variants from ``variants.py``), runs the cases in it one after the
other, meters each case's costs (``costs.py``: CPU of the mount and servers, rounds per
unit), and writes ``benchmarks/results/<tool>-<short|full>.{json,md,png}`` like the other
side-by-side benchmarks.  Targets are interleaved (A B C A B C ...) so a slow minute of the shared
machine lands on all of them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common
import costs
import variants
from common import Progress, TargetSpec

TARGETS = ("local", "bindfs", "glusterfs", "seaweedfs", "moosefs", "cephfs", "bftfs")


@dataclass(frozen=True)
class Case:
    """One configuration of a tool, a row of the table."""

    key: str  # stable id in the JSON, e.g. "randwrite-fsync-j4"
    label: str  # the table's row label
    unit: str  # the figure's unit, e.g. "MiB/s", "IOPS", "files/s"
    cost_unit: str  # what costs are divided by: "MiB", "op", "file"


class ToolError(RuntimeError):
    """The tool failed or printed nothing this harness could parse."""


#: Runs one case in a directory (on the target) and returns at least ``value`` (the
#: figure, in ``case.unit``) and ``units`` (work done, in ``case.cost_unit``).
Runner = Callable[[Case, Path, argparse.Namespace], dict[str, Any]]


def run_tool(cmd: Sequence[str], cap: float, cwd: Path | None = None) -> str:
    """Run ``cmd`` to completion (stdout and stderr together) within ``cap`` seconds.

    Raises:
        ToolError: it exited non-zero or ran past the cap.
    """
    try:
        r = subprocess.run(
            list(cmd),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=cap,
        )
    except subprocess.TimeoutExpired as e:
        raise ToolError(f"{cmd[0]} ran past the {cap:.0f} s cap") from e
    if r.returncode != 0:
        raise ToolError(f"{cmd[0]} exited {r.returncode}: {r.stdout[-600:]}")
    return r.stdout


def package_version(package: str) -> str | None:
    """The installed Debian package's version (the tools' own ``--version`` differ)."""
    try:
        r = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
        )
    except OSError:
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The flags every tool benchmark shares (the tool's own come before)."""
    ap.add_argument("--full", action="store_true", help="bigger sizes, b = 1,2, 3 runs")
    ap.add_argument("--runs", type=int, help="repetitions per target (short 1, full 3)")
    ap.add_argument("--bs", help="comma-separated b values for bftfs, t = b (short 1; full 1,2)")
    ap.add_argument(
        "--targets",
        default="local,bindfs,glusterfs,bftfs",
        help="comma-separated, in interleaving order: " + ", ".join(TARGETS),
    )
    ap.add_argument("--cap", type=float, help="seconds before one case is stopped (short 300)")
    ap.add_argument("--work", type=Path, help="scratch directory (default under /var/tmp)")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR, help="results directory")
    ap.add_argument("--name", help="results file stem (default <tool>-<short|full>)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    variants.add_arguments(ap)


def finish_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the shared flags' mode-dependent defaults and check the targets."""
    args.mode = "full" if args.full else "short"
    args.runs = args.runs or (3 if args.full else 1)
    args.cap = args.cap or (1800.0 if args.full else 300.0)
    args.bs = parse_ints(args.bs or ("1,2" if args.full else "1"), "--bs", minimum=0)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in args.targets if t not in TARGETS]
    if bad or not args.targets:
        raise SystemExit(f"unknown target(s) {bad or args.targets} ({', '.join(TARGETS)})")
    return args


def parse_ints(text: str, flag: str, minimum: int = 1) -> list[int]:
    """A comma-separated list of integers >= ``minimum``; SystemExit names the flag."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: not a list of integers: {text!r}") from None
    if not out or any(x < minimum for x in out):
        raise SystemExit(f"{flag}: needs integers >= {minimum}: {text!r}")
    return out


def specs_from_args(args: argparse.Namespace) -> list[TargetSpec]:
    specs: list[TargetSpec] = []
    for w in args.targets:
        if w == "bftfs":
            specs += [common.bftfs_spec(b, b) for b in args.bs]
        else:
            spec = common.spec_named(w, 1, 1, durable=True)
            assert spec is not None  # finish_arguments checked the name
            specs.append(spec)
    return specs


def measure(
    args: argparse.Namespace,
    specs: Sequence[TargetSpec],
    cases: Sequence[Case],
    runner: Runner,
    progress: Progress,
    work: Path,
    skipped: dict[str, str],
) -> list[dict[str, Any]]:
    """Every case on every target, targets interleaved per repetition; one record per
    (repetition, target, case), with ``error`` where it failed."""
    runs: list[dict[str, Any]] = []
    for rep in range(args.runs):
        for spec in specs:
            if spec.name in skipped:
                continue
            progress(f"run {rep + 1}/{args.runs} {spec.name}")
            try:
                with variants.open_target(spec, work, f"r{rep}", args, progress) as site:
                    # The cases run back to back: each starts from the counters the one
                    # before ended with (a status rewrite, up to 2 s, waited for once).
                    meter = costs.Costs(site, chain=True)
                    for i, case in enumerate(cases):
                        rec: dict[str, Any] = {"target": spec.name, "case": case.key, "rep": rep}
                        runs.append(rec)
                        progress(f"  {case.label:<40}", end="")
                        where = site.path / f"c{i}"
                        os.mkdir(where)
                        meter(case.key, "start")
                        try:
                            with common.Watchdog(site, args.cap + 120):
                                rec.update(runner(case, where, args))
                        except (ToolError, OSError) as e:
                            rec["error"] = str(e)
                            progress.more(f" FAILED: {str(e).splitlines()[0][:200]}", end="\n")
                            continue
                        finally:
                            meter(case.key, "end")
                        rec["costs"] = meter.per_unit(case.key, rec["units"])
                        progress.more(f" {rec['value']:10.1f} {case.unit}", end="\n")
            except (common.TargetError, OSError, RuntimeError) as e:
                runs.append({"target": spec.name, "case": None, "rep": rep, "error": str(e)})
                progress(f"{spec.name} FAILED: {str(e).splitlines()[0][:200]}")
                if common.skip_after_failure(spec, e, skipped):
                    progress(f"{spec.name}: skipped from now on (see the results)")
    return runs


def summarise(
    runs: Sequence[dict[str, Any]], specs: Sequence[TargetSpec], cases: Sequence[Case]
) -> dict[str, dict[str, Any]]:
    """Per case, per target: the median figure, its spread, the median costs, errors."""
    out: dict[str, dict[str, Any]] = {}
    for case in cases:
        row: dict[str, Any] = {}
        for spec in specs:
            mine = [r for r in runs if r["target"] == spec.name and r["case"] in (case.key, None)]
            ok = [r for r in mine if "value" in r]
            vals = [float(r["value"]) for r in ok]
            row[spec.name] = {
                "median": common.median(vals),
                "min_max": common.spread(vals),
                "runs": len(ok),
                "errors": [r["error"] for r in mine if "error" in r],
                "costs": costs.median_costs([r["costs"] for r in ok if "costs" in r]),
            }
        out[case.key] = row
    return out


def reference(targets: Sequence[str]) -> str | None:
    """The target the ratios are to: the local disk, else the first target."""
    return "local" if "local" in targets else (targets[0] if targets else None)


def fmt_figure(x: float) -> str:
    """A rate: whole numbers from 100 up, three significant digits below."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def fmt_ratio(r: float | None) -> str:
    """A ratio to the reference: two decimals, two significant digits below 0.1 (a
    thousandth of the local disk is not 0.00x)."""
    if r is None:
        return "-"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def ratio_table(
    summary: dict[str, dict[str, Any]], cases: Sequence[Case], targets: Sequence[str]
) -> list[str]:
    """Markdown: a row per case, a column per target, each cell the median and its ratio
    to the reference target's (``reference``)."""
    ref = reference(targets)
    lines = [
        "| workload | unit | " + " | ".join(targets) + " |",
        "|---|---|" + "---:|" * len(targets),
    ]
    for case in cases:
        row = summary.get(case.key, {})
        base = (row.get(ref) or {}).get("median") if ref else None
        cells = []
        for t in targets:
            m = (row.get(t) or {}).get("median")
            if m is None:
                cells.append("-")
            elif t == ref:
                cells.append(fmt_figure(m))
            else:
                cells.append(f"{fmt_figure(m)} ({fmt_ratio(common.ratio(m, base))})")
        lines.append(f"| {case.label} | {case.unit} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict[str, Any], cases: Sequence[Case]) -> str:
    cfg = result["config"]
    targets = [t for t in cfg["targets"] if t not in result.get("skipped", {})]
    lines = [
        f"### {result['title']} ({cfg['mode']} run, {result['date']})",
        "",
        f"{result['description']} Median of {cfg['runs']} interleaved run(s) per target; "
        f"in brackets the ratio to {reference(targets)}; bftfs with t = b on a fresh cluster "
        f"each run, durable. {result['tool']} {cfg.get('tool_version') or ''}."
        + common.peers_note(result),
        "",
        *ratio_table(result["summary"], cases, targets),
    ]
    units = sorted({c.cost_unit for c in cases})
    per = units[0] if len(units) == 1 else "unit"
    rows = [
        (
            f"{c.label} · {t}" + ("" if len(units) == 1 else f" (per {c.cost_unit})"),
            "-" if (m := result["summary"][c.key][t]["median"]) is None else fmt_figure(m),
            result["summary"][c.key][t]["costs"],
        )
        for c in cases
        for t in targets
    ]
    lines += costs.cost_table(rows, "figure", per)
    skipped = result.get("skipped") or {}
    lines += common.skipped_markdown(skipped)
    errs = [
        f"- {t} / {k}: {len(s['errors'])} failed; first: `{s['errors'][0].splitlines()[0][:300]}`"
        for k, row in result["summary"].items()
        for t, s in row.items()
        if s["errors"] and t not in skipped
    ]
    if errs:
        lines += ["", "Failed runs:", *errs]
    lines += common.machine_markdown(result)
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path, cases: Sequence[Case]) -> bool:
    """Grouped bars: each case's figure over the reference target's, per target."""
    plt = common.pyplot()
    if plt is None:
        return False
    targets = [t for t in result["config"]["targets"] if t not in result.get("skipped", {})]
    ref = reference(targets)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cases)), 4.5))
    width = 0.8 / max(1, len(targets))
    for j, t in enumerate(targets):
        ys = []
        for c in cases:
            row = result["summary"][c.key]
            ys.append(common.ratio(row[t]["median"], row[ref]["median"] if ref else None) or 0)
        xs = [i + j * width for i in range(len(cases))]
        ax.bar(xs, ys, width, label=t, color=common.colour_for(t))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    ax.set_xticklabels([c.label for c in cases], rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel(f"figure / {ref}'s (log scale)")
    ax.set_title(f"{result['title']} ({result['date']})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(
    tool: str,
    package: str,
    title: str,
    description: str,
    args: argparse.Namespace,
    cases: Sequence[Case],
    runner: Runner,
    config: dict[str, Any],
) -> int:
    """Run ``cases`` of ``tool`` over the targets and write the results; 0 when every
    target that was not skipped ran every case.  A missing tool is a skip (exit 0) with
    the reason printed, never a silent pass: nothing is written."""
    common.install_sigterm_handler()
    progress = Progress(tool, args.quiet)
    if shutil.which(tool) is None:
        progress(f"{tool} skipped: not installed (Debian package {package}; make bench-setup)")
        return 0
    return run_cases(tool, tool, package, title, description, args, cases, runner, config, progress)


def run_cases(
    name: str,
    tool: str,
    package: str,
    title: str,
    description: str,
    args: argparse.Namespace,
    cases: Sequence[Case],
    runner: Runner,
    config: dict[str, Any],
    progress: Progress,
) -> int:
    """Run ``cases`` over the targets and write the results as benchmark ``name``
    (``tool``: what the page names as the tool, of Debian ``package``); 0 when every
    target that was not skipped ran every case."""
    specs = variants.expand(specs_from_args(args), args.aged, args.load)
    skipped = common.skip_reasons(specs)
    for target, why in skipped.items():
        progress(f"{target} skipped: {why}")
    progress(f"{len(cases)} case(s); {args.runs} run(s) x {len(specs)} target(s)")
    machine, date = common.machine_info(), common.now_utc()
    work = Path(tempfile.mkdtemp(prefix=f"bftfs-{name}-", dir=args.work or "/var/tmp"))
    try:
        runs = measure(args, specs, cases, runner, progress, work, skipped)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg())
    summary = summarise(runs, specs, cases)
    result: dict[str, Any] = {
        "benchmark": name,
        "title": title,
        "description": description,
        "tool": tool,
        "date": date,
        "machine": machine,
        "commit": common.commit_info(),
        "config": {
            "mode": args.mode,
            "runs": args.runs,
            "bs": args.bs,
            "cap": args.cap,
            "targets": [s.name for s in specs],
            "tool_version": package_version(package),
            "cases": [asdict(c) for c in cases],
            **config,
            **variants.config(args),
        },
        "twins": variants.twins(specs),
        "runs": runs,
        "summary": summary,
        "skipped": skipped,
    }
    md = common.write_results(
        args.out,
        args.name or f"{name.replace('_', '')}-{args.mode}",
        result,
        lambda r: markdown(r, cases),
        lambda r, p: plot(r, p, cases),
        progress,
        with_plot=not args.no_plot,
    )
    print(md)
    return int(
        not all(
            row[s.name]["runs"] for row in summary.values() for s in specs if s.name not in skipped
        )
    )
