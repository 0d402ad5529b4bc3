"""``make bench-all``: the whole benchmark set in one command, and one results page (issue 64).

Runs, one after another, each benchmark of the set as its own process (its targets
interleaved inside it, medians of ``--runs``): Andrew, PostMark, seqio (a big file written
with fsync and read cold) and the standard tools (``tools.py``: fio, fs_mark, dbench and the
kernel-tree workload as cases of one process, each target set up once a run for all four)
on the local disk, bindfs, GlusterFS, SeaweedFS, MooseFS, CephFS and bftfs; then PostMark
and the big-file read under attack (``--attack``: each Byzantine node profile and the
Byzantine client, with one healthy twin a run for all of them, ``attack.py``; smaller sizes,
``ATTACK_SIZES``) and PostMark at ``b = 1`` and ``b = 2`` (6 and 11 nodes).
Each step writes its own JSON into a scratch directory; this module reads them all and
writes ONE page, ``benchmarks/results/bench-all-<short|full>.md``, with the table (each
figure and its ratio to the local disk), the attack table (attacked / healthy against the
0.7x bar), the ``b`` ratio, every target's skip reason and the commands, and one SVG beside
it with the plots (``page_svg``).

The full set fits in an hour on two cores (docs/benchmarks.md); ``--short`` (``make
bench-all SHORT=1``) in ten minutes: small sizes, one run each (not medians), the peers
left out (each named with that reason), a few attacks.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attack  # noqa: E402
import common  # noqa: E402

HERE = Path(__file__).resolve().parent
ALL_TARGETS = "local,bindfs,glusterfs,seaweedfs,moosefs,cephfs,bftfs"
SHORT_TARGETS = "local,bindfs,bftfs"
#: The attacks of the short mode: one that lies about data, one that refuses everything,
#: and the Byzantine client.
SHORT_ATTACKS = "corrupt-fragments,reject-everything,client"


@dataclass(frozen=True)
class Step:
    """One benchmark process of the set: its key (results stem), script and arguments."""

    key: str
    script: str
    args: tuple[str, ...]
    #: What the step measures: "side" (targets beside the local disk), "attack" or "b".
    kind: str = "side"


@dataclass
class Figure:
    """One row of the page: a workload's figure per target."""

    workload: str
    unit: str
    higher_is_better: bool
    values: dict[str, float | None] = field(default_factory=dict)

    def speed_ratio(self, target: str, reference: str = "local") -> float | None:
        """``target``'s speed over ``reference``'s (a time's inverse ratio): above 1 is
        faster than the reference, whatever the unit."""
        a, b = self.values.get(target), self.values.get(reference)
        return common.ratio(a, b) if self.higher_is_better else common.ratio(b, a)


#: The standard tools' sizes (``tools.py``: one process, each target set up once a run for
#: all four).  Full: fio's random cases 4 s each (the 1 and 4 job IOPS of the page) and
#: dbench 8 s a client count, to fit seven targets x 3 runs in the hour (docs/benchmarks.md).
TOOLS_SHORT = (
    *("--fio-jobs", "1", "--fio-size", "16", "--fio-seconds", "4"),
    *("--fsmark-threads", "1", "--fsmark-files", "100"),
    *("--dbench-clients", "1", "--dbench-seconds", "5", "--subset", "init"),
)
TOOLS_FULL = (
    *("--fio-jobs", "1,4", "--fio-size", "32", "--fio-seconds", "4"),
    *("--fsmark-threads", "1,4", "--fsmark-files", "300"),
    *("--dbench-clients", "1,4", "--dbench-seconds", "8", "--subset", "kernel"),
)
#: PostMark and the big file under attack, both modes: 14 clusters a run (the healthy twin
#: and 13 attacked).  The Byzantine client slows PostMark a hundredfold: a run stops at
#: 30 s and its rate is taken over the tenths done (a healthy one takes 1-2 s).
ATTACK_SIZES = {
    "postmark": ("--files", "300", "--transactions", "1000", "--cap", "30"),
    "seqio": ("--size", "64"),
}


def steps(short: bool, runs: int, targets: str, attacks: str) -> list[Step]:
    """The set, in order (module docstring)."""
    r = ("--runs", str(runs))
    t = ("--targets", targets)
    one_b = ("--bs", "1", "--no-fsync-bs", "")
    if short:
        sizes: dict[str, tuple[str, ...]] = {
            "andrew": (),
            "postmark": ("--files", "300", "--transactions", "1000", *one_b),
            "seqio": ("--size", "32"),
            "tools": TOOLS_SHORT,
        }
        attack_sizes = {"postmark": ATTACK_SIZES["postmark"], "seqio": sizes["seqio"]}
    else:
        sizes = {
            "andrew": (),
            "postmark": ("--files", "1000", "--transactions", "4000", *one_b),
            "seqio": ("--size", "200"),
            "tools": TOOLS_FULL,
        }
        attack_sizes = ATTACK_SIZES
    out = [Step(k, f"{k}.py", (*r, *t, *a)) for k, a in sizes.items()]
    # One healthy twin a run for every attack (variants.expand): attacked / healthy is a
    # ratio of medians of the same run.
    a = ("--targets", "bftfs", "--attack", attacks, *r)
    pm_a = (*a, *attack_sizes["postmark"], *one_b)
    out.append(Step("postmark-attack", "postmark.py", pm_a, "attack"))
    out.append(Step("seqio-attack", "seqio.py", (*a, *attack_sizes["seqio"]), "attack"))
    pm_b = [x for x in sizes["postmark"] if x not in one_b]
    b_args = ("--targets", "bftfs", "--bs", "1,2", "--no-fsync-bs", "", *r, *pm_b)
    out.append(Step("postmark-b", "postmark.py", b_args, "b"))
    return out


def run_step(step: Step, scratch: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Run ``step`` (its progress shown as it goes); its results JSON, or a record of why
    there is none."""
    cmd = [sys.executable, str(HERE / step.script), *step.args]
    cmd += ["--out", str(scratch), "--name", step.key, "--no-plot"]
    log(f"== {step.key}: {shlex.join(['benchmarks/' + step.script, *step.args])}")
    t0 = time.monotonic()
    rc = subprocess.call(cmd, stdout=sys.stderr)  # the page goes to stdout at the end
    wall = time.monotonic() - t0
    path = scratch / f"{step.key}.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data["_step"] = {"key": step.key, "kind": step.kind, "rc": rc, "wall_s": round(wall, 1)}
    data["_step"]["command"] = shlex.join(["benchmarks/" + step.script, *step.args])
    log(f"== {step.key}: exit {rc}, {wall:.0f} s")
    return data


# Reading the steps' results ---------------------------------------------------------------


def figures_of(data: dict[str, Any]) -> list[Figure]:
    """The side-by-side figures one step's results hold (none if it wrote nothing)."""
    summary = data.get("summary") or {}
    kind = data.get("benchmark")
    if kind == "andrew":
        return [
            Figure(
                "Andrew, total",
                "s",
                False,
                {t: (s.get("median") or {}).get("total") for t, s in summary.items()},
            )
        ]
    if kind == "postmark":
        return [
            Figure("PostMark", "tx/s", True, {t: s.get("tps_median") for t, s in summary.items()})
        ]
    if kind == "seqio":
        return [
            Figure("big file write + fsync", "MB/s", True, pick(summary, "write_MBps_median")),
            Figure("big file cold read", "MB/s", True, pick(summary, "read_MBps_median")),
        ]
    out = []
    config = data.get("config") or {}
    # tools.py's cases name their own tool; a one-tool benchmark's, the benchmark's.
    case_tools = config.get("case_tools") or {}
    for case in config.get("cases", []):
        row = summary.get(case["key"]) or {}
        label = f"{case_tools.get(case['key'], data.get('tool', kind))}: {case['label']}"
        values = {t: v.get("median") for t, v in row.items()}
        out.append(Figure(label, case["unit"], case["unit"] != "s", values))
    return out


def pick(summary: dict[str, Any], key: str) -> dict[str, float | None]:
    return {t: s.get(key) for t, s in summary.items()}


def attack_rows(
    data: dict[str, Any],
) -> list[tuple[str, str, float | None, float | None, float | None]]:
    """Per attacked variant of an attack step: (workload, variant, its figure, its twin's,
    attacked / healthy)."""
    summary = data.get("summary") or {}
    if data.get("benchmark") == "postmark":
        workload, key = "PostMark tx/s", "tps_median"
    else:
        workload, key = "big file cold read MB/s", "read_MBps_median"
    rows = []
    for name, (twin, _what) in (data.get("twins") or {}).items():
        a = (summary.get(name) or {}).get(key)
        h = (summary.get(twin) or {}).get(key)
        rows.append((workload, name, a, h, common.ratio(a, h)))
    return rows


def b_ratio(data: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """PostMark tx/s at b = 1 and b = 2, and their ratio."""
    summary = data.get("summary") or {}
    one = (summary.get("bftfs b=1") or {}).get("tps_median")
    two = (summary.get("bftfs b=2") or {}).get("tps_median")
    return one, two, common.ratio(two, one)


def skip_reasons(
    results: Sequence[dict[str, Any]], targets: Sequence[str], short: bool
) -> dict[str, str]:
    """Why each target of ``targets`` is missing from the page: the steps' own reasons
    (a peer not installed, its set-up failed), or left out of the short mode."""
    out: dict[str, str] = {}
    for data in results:
        for target, why in (data.get("skipped") or {}).items():
            out.setdefault(target, f"{data['_step']['key']}: {why}")
    if short:
        for target in ALL_TARGETS.split(","):
            if target not in targets:
                out.setdefault(target, "left out of the short mode (make bench-all runs it)")
    return out


# The page ---------------------------------------------------------------------------------


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def side_table(figures: Sequence[Figure], targets: Sequence[str]) -> list[str]:
    """The main table: per workload, each target's figure and its speed over local's."""
    names = [t for t in targets if any(t in f.values for f in figures)]
    lines = ["| workload | unit | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for f in figures:
        cells = []
        for t in names:
            v = f.values.get(t)
            r = f.speed_ratio(t) if t != "local" else None
            cells.append(fmt(v) + (f" ({r:.2f}x)" if r is not None else ""))
        lines.append(f"| {f.workload} | {f.unit} | " + " | ".join(cells) + " |")
    return lines


def attack_table(
    rows: Sequence[tuple[str, str, float | None, float | None, float | None]],
) -> list[str]:
    lines = ["| workload | under attack | attacked | healthy twin | attacked / healthy | bar |"]
    lines.append("|---|---|---:|---:|---:|---|")
    for workload, name, a, h, r in rows:
        ratio = "-" if r is None else f"{r:.2f}x"
        lines.append(
            f"| {workload} | {name} | {fmt(a)} | {fmt(h)} | {ratio} | {attack.verdict(r)} |"
        )
    return lines


def markdown(page: dict[str, Any]) -> str:
    """The results page (module docstring) from ``collect``'s dictionary."""
    mode = "short" if page["short"] else "full"
    lines = [
        f"# make bench-all ({mode}), {page['date']}",
        "",
        f"Every benchmark of the set, then PostMark and the big-file read under attack, then "
        f"PostMark at b = 1 and b = 2; {page['runs']} interleaved run(s) per target, "
        f"{'medians' if page['runs'] > 1 else 'one run each (the short mode: not medians)'}. "
        f"In brackets: the speed over the local disk's (its time over the target's for "
        f"Andrew and the kernel tree). Took {page['wall_s'] / 60:.1f} min. "
        f"Plots: [{page['svg']}]({page['svg']}).",
        "",
        f"![ratios to local, attack and b]({page['svg']})",
        "",
        *side_table(page["figures"], page["targets"]),
        "",
        "## Under attack (node 0 Byzantine, or a Byzantine client beside the correct one)",
        "",
        *attack_table(page["attack"]),
        "",
        "## Fault scaling",
        "",
    ]
    one, two, r = page["b"]
    verdict = "-" if r is None else ("meets 0.7x" if r >= attack.BAR else "BELOW 0.7x")
    lines += [
        "| PostMark b = 1 (6 nodes) | b = 2 (11 nodes) | b = 2 / b = 1 | bar |",
        "|---:|---:|---:|---|",
        f"| {fmt(one)} | {fmt(two)} | {'-' if r is None else f'{r:.2f}x'} | {verdict} |",
        "",
        "## Targets not run",
        "",
    ]
    lines += [f"- {t}: {why}" for t, why in page["skipped"].items()] or ["- none"]
    lines += ["", "## Steps", ""]
    for s in page["steps"]:
        lines.append(f"- `{s['command']}`: exit {s['rc']}, {s['wall_s']:.0f} s")
    lines += ["", *common.machine_markdown({"machine": page["machine"], "commit": page["commit"]})]
    return "\n".join(lines) + "\n"


def collect(
    results: Sequence[dict[str, Any]],
    args: argparse.Namespace,
    wall: float,
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The page's contents from every step's results (``machine``: ``common.machine_info``
    at the start of the run, now by default)."""
    machine = dict(machine or common.machine_info())
    machine["loadavg_end"] = list(os.getloadavg())
    figures = [f for d in results if d["_step"]["kind"] == "side" for f in figures_of(d)]
    attacked = [row for d in results if d["_step"]["kind"] == "attack" for row in attack_rows(d)]
    b = next((b_ratio(d) for d in results if d["_step"]["kind"] == "b"), (None, None, None))
    targets = [("bftfs b=1" if t == "bftfs" else t) for t in args.targets.split(",") if t.strip()]
    return {
        "short": args.short,
        "date": common.now_utc(),
        "runs": args.runs,
        "wall_s": wall,
        "svg": f"{args.name}.svg",
        "figures": figures,
        "targets": targets,
        "attack": attacked,
        "b": b,
        "skipped": skip_reasons(results, args.targets.split(","), args.short),
        "steps": [d["_step"] for d in results],
        "machine": machine,
        "commit": common.commit_info(),
    }


def write_page(page: dict[str, Any], out: Path, name: str) -> str:
    """Write ``<name>.md`` and ``<name>.svg`` into ``out``; the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(page)
    (out / f"{name}.md").write_text(md)
    ratios = {
        f.workload: {t: f.speed_ratio(t) for t in page["targets"] if t != "local"}
        for f in page["figures"]
    }
    attacked = {f"{w.split()[0]} {n.split(' under ')[-1]}": r for w, n, _a, _h, r in page["attack"]}
    (out / f"{name}.svg").write_text(page_svg(ratios, attacked, page["b"][2], attack.BAR))
    return md


# The plots (hand-written SVG, as chart.py: matplotlib is an optional extra) ----------------

PALETTE = ("#7fa7d9", "#e0a040", "#b07aa1", "#59a14f", "#e15759", "#3c8d4f", "#9e9e9e")
ROW, BAR_W, LABEL_W = 13, 260, 230


def _bars(
    x0: float,
    y: float,
    rows: Sequence[tuple[str, float | None, str]],
    top: float,
    lines: Sequence[float],
) -> tuple[list[str], float]:
    """Horizontal bars from ``x0`` (a label, a ratio, a colour each) on a 0..``top`` scale
    (longer ones clipped and written), with dashed lines at ``lines``; the SVG and the
    height used."""
    out = []
    for i, (label, value, colour) in enumerate(rows):
        yy = y + i * ROW
        out.append(f'<text x="{x0 - 4}" y="{yy + 10}" text-anchor="end">{escape(label)}</text>')
        if value is None:
            out.append(f'<text x="{x0 + 2}" y="{yy + 10}" fill="#999">not run</text>')
            continue
        w = BAR_W * min(value, top) / top
        out.append(
            f'<rect x="{x0}" y="{yy + 1}" width="{w:.1f}" height="{ROW - 3}" fill="{colour}"/>'
            f'<text x="{x0 + w + 3:.1f}" y="{yy + 10}">{value:.2f}x</text>'
        )
    h = len(rows) * ROW
    for v in lines:
        x = x0 + BAR_W * v / top
        out.append(
            f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + h}" stroke="#333" '
            f'stroke-dasharray="3,3"/><text x="{x:.1f}" y="{y - 2}" text-anchor="middle" '
            f'fill="#333">{v:g}x</text>'
        )
    return out, h


def page_svg(
    ratios: dict[str, dict[str, float | None]],
    attacked: dict[str, float | None],
    b_ratio: float | None,
    bar: float,
) -> str:
    """Two panels: each workload's speed over the local disk's per target (left), and the
    correct client's attacked / healthy ratios and PostMark's b = 2 / b = 1 (right), with
    the bar drawn."""
    targets = sorted(
        {t for row in ratios.values() for t in row}, key=lambda t: (t == "bftfs b=1", t)
    )
    colour = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(targets)}
    left: list[tuple[str, float | None, str]] = []
    for workload, row in ratios.items():
        left += [(f"{workload[:28]} | {t}", row.get(t), colour[t]) for t in targets]
    right = [
        (name[:34], r, "#3c8d4f" if r is not None and r >= bar else "#e15759")
        for name, r in attacked.items()
    ]
    right.append(("PostMark b=2 / b=1", b_ratio, "#3c8d4f" if (b_ratio or 0) >= bar else "#e15759"))
    top_left = max([1.2, *(min(v, 3.0) for _l, v, _c in left if v is not None)])
    a, ha = _bars(LABEL_W + 10, 50, left, top_left, [1.0])
    x1 = LABEL_W * 2 + BAR_W + 70
    b, hb = _bars(x1, 50, right, 1.3, [bar, 1.0])
    width, height = x1 + BAR_W + 60, 70 + max(ha, hb)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="10"><rect width="{width}" height="{height}" '
        f'fill="white"/><text x="10" y="20" font-weight="bold" font-size="12">Speed over '
        f"the local disk (time ratio for Andrew, kernel tree; clipped at 3x)</text>"
        f'<text x="{x1 - LABEL_W}" y="20" font-weight="bold" font-size="12">Correct client '
        f"under attack / healthy, and b = 2 / b = 1 (bar {bar}x)</text>"
    )
    return "\n".join([head, *a, *b, "</svg>"]) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="The whole benchmark set and one results page.")
    ap.add_argument("--short", action="store_true", help="fits in ten minutes (module docstring)")
    ap.add_argument("--runs", type=int, help="repetitions per target (short 1, full 3)")
    ap.add_argument(
        "--targets", help=f"comma-separated (short {SHORT_TARGETS}; full {ALL_TARGETS})"
    )
    ap.add_argument("--attack", help=f"attacks (short {SHORT_ATTACKS}; full all)")
    ap.add_argument("--only", help="comma-separated step keys to run (default all)")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR, help="where the page goes")
    ap.add_argument("--name", help="the page's stem (default bench-all-<short|full>)")
    ap.add_argument("--work", type=Path, help="scratch directory for the steps' JSON files")
    args = ap.parse_args(argv)
    args.runs = args.runs or (1 if args.short else 3)
    args.targets = args.targets or (SHORT_TARGETS if args.short else ALL_TARGETS)
    args.attack = args.attack or (SHORT_ATTACKS if args.short else "all")
    attack.attacks_from(args.attack)  # refuse a typo before hours of running
    args.name = args.name or f"bench-all-{'short' if args.short else 'full'}"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm_handler()
    progress = common.Progress("bench-all")
    plan = steps(args.short, args.runs, args.targets, args.attack)
    if args.only:
        keep = set(args.only.split(","))
        plan = [s for s in plan if s.key in keep]
    scratch = Path(tempfile.mkdtemp(prefix="bftfs-bench-all-", dir=args.work or "/var/tmp"))
    t0, machine = time.monotonic(), common.machine_info()
    results = [run_step(step, scratch, progress) for step in plan]
    page = collect(results, args, time.monotonic() - t0, machine)
    md = write_page(page, args.out, args.name)
    progress(f"wrote {args.out / args.name}.md and .svg (steps' JSON in {scratch})")
    print(md)
    for target, why in page["skipped"].items():
        progress(f"{target} not run: {why}")
    return 0 if all(d["_step"]["rc"] == 0 for d in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
