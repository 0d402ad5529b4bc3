"""The README's picture: the latest side-by-side figures as one small SVG, no dependencies
(and ``lines_svg``: quantities against age for ``ageing.py``).

Reads the JSON files ``andrew.py``, ``postmark.py`` and ``seqio.py`` wrote (the latest of
each in ``benchmarks/results/`` by default) and draws four panels, one per workload, a bar
per target (local disk, bindfs, GlusterFS replica 3, bftfs), each panel on its own linear
scale with the figure written on its bar::

    .venv/bin/python benchmarks/chart.py            # -> benchmarks/results/latest.svg
    .venv/bin/python benchmarks/chart.py --andrew A.json --postmark P.json --seqio S.json -o X.svg

The SVG is written by hand (matplotlib is an optional extra; the chart must not need it).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

RESULTS = Path(__file__).resolve().parent / "results"

#: The targets drawn, in order: (key in the results' "summary", label, colour).
TARGETS = (
    ("local", "local disk", "#9e9e9e"),
    ("bindfs", "bindfs", "#7fa7d9"),
    ("glusterfs", "GlusterFS r3", "#e0a040"),
    ("bftfs b=1", "bftfs b=1", "#3c8d4f"),
)


@dataclass(frozen=True)
class Panel:
    """One workload: a title, what its bars mean, and one value per target (None: absent)."""

    title: str
    unit: str
    values: tuple[float | None, ...]


def latest(kind: str, size_mib: int | None = None) -> Path:
    """The newest results JSON of benchmark ``kind`` with the most of :data:`TARGETS` (a
    run of bftfs alone, or of its fault cases, is not a side-by-side one); ``size_mib``:
    only a seqio run of that file size."""
    found: list[tuple[int, str, Path]] = []
    for path in RESULTS.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("benchmark") != kind:
            continue
        if size_mib is not None and data.get("config", {}).get("size_mib") != size_mib:
            continue
        shown = sum(key in data.get("summary", {}) for key, _label, _colour in TARGETS)
        found.append((shown, str(data.get("date", "")), path))
    if not found:
        raise SystemExit(f"no {kind} results JSON in {RESULTS}")
    return max(found)[2]


def _summary(path: Path) -> dict[str, dict]:
    summary: dict[str, dict] = json.loads(path.read_text())["summary"]
    return summary


def panels(andrew: Path, postmark: Path, seqio: Path) -> list[Panel]:
    """The four panels from the three results files.  PostMark's title gives the run's
    ``files / transactions`` as its results record them (a run past the commit window
    and a lease term is longer than the default's 4 000)."""
    pm = json.loads(postmark.read_text())
    a, p, s = _summary(andrew), pm["summary"], _summary(seqio)
    config = pm.get("config", {})
    pm_size = f"{config.get('files', 1000)} / {config.get('transactions', 4000)}"

    def pick(summary: dict[str, dict], field: str, sub: str | None = None) -> tuple:
        out: list[float | None] = []
        for key, _label, _colour in TARGETS:
            entry = summary.get(key)
            value = None if entry is None else entry.get(field)
            if sub is not None and isinstance(value, dict):
                value = value.get(sub)
            out.append(None if value is None else float(value))
        return tuple(out)

    return [
        Panel("Andrew (Lua 5.4 tree), total", "s, lower is better", pick(a, "median", "total")),
        Panel(f"PostMark {pm_size}", "transactions/s", pick(p, "tps_median")),
        Panel("200 MiB write + fsync", "MB/s", pick(s, "write_MBps_median")),
        Panel("200 MiB cold read", "MB/s", pick(s, "read_MBps_median")),
    ]


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}".replace(",", " ")
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def svg(drawn: list[Panel], caption: str) -> str:
    """The chart: the panels side by side, a legend and a caption under them."""
    pw, ph, top, bar_h, gap = 240, 150, 46, 22, 8
    width, height = pw * len(drawn) + 20, top + ph + 64
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for i, panel in enumerate(drawn):
        x0 = 10 + i * pw
        out.append(
            f'<text x="{x0 + 4}" y="18" font-weight="bold">{escape(panel.title)}</text>'
            f'<text x="{x0 + 4}" y="33" fill="#555">{escape(panel.unit)}</text>'
        )
        # The scale is the file systems' over the network or FUSE; the local disk, often ten
        # times faster, is clipped (drawn to the edge, cut, its figure written) so the others
        # stay readable.
        others = [v for v in panel.values[1:] if v is not None]
        top_value = max(others or [v for v in panel.values if v is not None] or [1.0]) or 1.0
        for j, value in enumerate(panel.values):
            y = top + j * (bar_h + gap)
            colour = TARGETS[j][2]
            if value is None:
                out.append(f'<text x="{x0 + 4}" y="{y + 15}" fill="#999">not run</text>')
                continue
            clipped = value > top_value * 1.15
            w = (pw - 70) * (1.15 if clipped else max(0.01, value / top_value))
            out.append(
                f'<rect x="{x0 + 4}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                f'fill="{colour}"/>'
                f'<text x="{x0 + 8 + w:.1f}" y="{y + 15}">{_fmt(value)}</text>'
            )
            if clipped:
                cut = x0 + 4 + w * 0.8
                out.append(
                    f'<path d="M{cut:.1f},{y - 1} l6,{bar_h / 2 + 1:.1f} l-6,{bar_h / 2 + 1:.1f}" '
                    f'stroke="white" stroke-width="3" fill="none"/>'
                )
    legend_y = top + ph - 6
    for j, (_key, label, colour) in enumerate(TARGETS):
        x = 14 + j * 150
        out.append(
            f'<rect x="{x}" y="{legend_y}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{x + 17}" y="{legend_y + 10}">{escape(label)}</text>'
        )
    out.append(f'<text x="14" y="{legend_y + 36}" fill="#555">{escape(caption)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class LinePanel:
    """One quantity against a common x axis: a title and its series (label, values, colour;
    None where a sample has no value)."""

    title: str
    series: list[tuple[str, list[float | None], str]]


def lines_svg(xs: list[float], drawn: list[LinePanel], xlabel: str, caption: str) -> str:
    """Panels side by side, each its own linear scale from zero, a polyline per series
    with a dot per sample (``benchmarks/ageing.py``: rate and CPU against age)."""
    pw, ph, top, left = 320, 180, 40, 46
    width, height = pw * len(drawn) + 20, top + ph + 70
    x_max = max(xs, default=0.0) or 1.0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for i, panel in enumerate(drawn):
        x0, w = 10 + i * pw + left, pw - left - 16
        values = [v for _l, ys, _c in panel.series for v in ys if v is not None]
        y_max = (max(values, default=0.0) or 1.0) * 1.1
        bottom = top + ph
        out.append(
            f'<text x="{x0}" y="18" font-weight="bold">{escape(panel.title)}</text>'
            f'<path d="M{x0},{top} V{bottom} H{x0 + w}" stroke="#333" fill="none"/>'
            f'<text x="{x0 - 4}" y="{top + 4}" text-anchor="end">{_fmt(y_max)}</text>'
            f'<text x="{x0 - 4}" y="{bottom}" text-anchor="end">0</text>'
            f'<text x="{x0 + w}" y="{bottom + 14}" text-anchor="end">{_fmt(x_max)}</text>'
            f'<text x="{x0 + w / 2}" y="{bottom + 28}" text-anchor="middle">{escape(xlabel)}</text>'
        )
        for j, (label, ys, colour) in enumerate(panel.series):
            points = [
                (x0 + w * x / x_max, bottom - ph * y / y_max)
                for x, y in zip(xs, ys, strict=True)
                if y is not None
            ]
            if points:
                path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
                out.append(f'<polyline points="{path}" stroke="{colour}" fill="none"/>')
                out += [
                    f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}"/>'
                    for px, py in points
                ]
            ly = bottom + 44
            out.append(
                f'<rect x="{x0 + j * 90}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
                f'<text x="{x0 + j * 90 + 14}" y="{ly}">{escape(label)}</text>'
            )
    out.append(f'<text x="14" y="{height - 6}" fill="#555">{escape(caption)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--andrew", type=Path, help="andrew.py JSON (default: the latest)")
    parser.add_argument("--postmark", type=Path, help="postmark.py JSON (default: the latest)")
    parser.add_argument("--seqio", type=Path, help="seqio.py JSON (default: the latest 200 MiB)")
    parser.add_argument("-o", "--out", type=Path, default=RESULTS / "latest.svg")
    args = parser.parse_args(argv)
    files = [
        args.andrew or latest("andrew"),
        args.postmark or latest("postmark"),
        args.seqio or latest("seqio", size_mib=200),
    ]
    caption = (
        "medians of interleaved runs on 2 cores (local disk cut where off the scale); from "
        + ", ".join(f.name for f in files)
    )
    args.out.write_text(svg(panels(*files), caption))
    print(f"wrote {args.out} from {', '.join(f.name for f in files)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
