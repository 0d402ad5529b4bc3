"""fio on bftfs, the local disk, bindfs and GlusterFS, side by side (issue 64).

The block-I/O patterns every storage paper reports, with the real ``fio`` (Debian's
package): sequential write and read in 1 MiB blocks, random 4 KiB reads, and random
4 KiB writes with an ``fsync`` after each, each with one job and with four (``--jobs``).
Every job works on its own file of ``--size`` MiB; the write case lays the files out and
the read cases of the same job count read them back (fio invalidates the file's page
cache before a read job, ``invalidate=1``, so the local disk's reads are not served from
memory left by the write; bftfs's own client cache is not dropped).  Sequential cases
give MiB/s, random ones IOPS, over ``--seconds`` at most (random ones run that long).
fio's own JSON report (``--output-format=json``) is parsed by ``parse_fio``.

Results: ``benchmarks/results/fio-<short|full>.{json,md,png}``; ``toolbench.py`` is the
harness (targets, interleaving, medians, ratios to the local disk, costs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import toolbench  # noqa: E402
from toolbench import Case, ToolError  # noqa: E402

#: (key, label, fio rw=, block size, fsync every write, the figure)
PATTERNS = (
    ("seqwrite", "sequential write 1 MiB", "write", "1M", False, "MiB/s"),
    ("seqread", "sequential read 1 MiB", "read", "1M", False, "MiB/s"),
    ("randread", "random read 4 KiB", "randread", "4k", False, "IOPS"),
    ("randwrite-fsync", "random write 4 KiB + fsync", "randwrite", "4k", True, "IOPS"),
)
_BY_KEY = {p[0]: p for p in PATTERNS}


def parse_fio(text: str) -> dict[str, float]:
    """fio's JSON report (any warning lines before it skipped), summed over its jobs:
    per direction bytes, operations, bytes/s and IOPS.

    Raises:
        ToolError: no JSON report, no jobs, or a job reports an error.
    """
    start = text.find("{")
    try:
        doc = json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ToolError(f"fio printed no JSON report: {text[:300]}")
    jobs = doc.get("jobs") or []
    if not jobs:
        raise ToolError(f"fio reported no jobs: {text[:300]}")
    out: dict[str, float] = {}
    for job in jobs:
        if job.get("error"):
            raise ToolError(f"fio job {job.get('jobname')} failed: error {job['error']}")
        for d in ("read", "write"):
            part = job.get(d) or {}
            for src, dst in (("io_bytes", "bytes"), ("total_ios", "ios")):
                out[f"{d}_{dst}"] = out.get(f"{d}_{dst}", 0.0) + float(part.get(src, 0))
            out[f"{d}_bytes_s"] = out.get(f"{d}_bytes_s", 0.0) + float(part.get("bw_bytes", 0))
            out[f"{d}_iops"] = out.get(f"{d}_iops", 0.0) + float(part.get("iops", 0))
    return out


def fio_command(case: Case, directory: Path, args: argparse.Namespace) -> list[str]:
    """The fio command line of ``case`` (its key is ``<pattern>-j<jobs>``)."""
    pattern, jobs = case.key.rsplit("-j", 1)
    _, _, rw, bs, fsync, _ = _BY_KEY[pattern]
    cmd = [
        "fio",
        "--output-format=json",
        "--name=data",
        f"--directory={directory}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--size={args.size}M",
        f"--numjobs={jobs}",
        "--group_reporting",
        "--ioengine=psync",
        f"--runtime={args.seconds}",
    ]
    if rw in ("randread", "randwrite"):
        cmd.append("--time_based")
    if rw == "write":
        cmd.append("--end_fsync=1")
    if fsync:
        cmd.append("--fsync=1")
    return cmd


def run_case(case: Case, where: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One fio run; its files live in a directory per job count beside ``where``, so the
    read cases read what the write case of the same job count wrote."""
    directory = where.parent / f"fio-files-j{case.key.rsplit('-j', 1)[1]}"
    directory.mkdir(exist_ok=True)
    got = parse_fio(toolbench.run_tool(fio_command(case, directory, args), args.cap + 60))
    d = "read" if "read" in case.key else "write"
    if case.unit == "MiB/s":
        value, units = got[f"{d}_bytes_s"] / 2**20, got[f"{d}_bytes"] / 2**20
    else:
        value, units = got[f"{d}_iops"], got[f"{d}_ios"]
    if units <= 0:
        raise ToolError(f"fio did no {d}s in {case.key}")
    return {"value": value, "units": units, "fio": got}


def cases_for(jobs: list[int]) -> list[Case]:
    """Every pattern for each job count, the write first (it lays out the read's files)."""
    return [
        Case(
            f"{key}-j{j}",
            f"{label}, {j} job{'s' if j > 1 else ''}",
            unit,
            "MiB" if unit == "MiB/s" else "op",
        )
        for j in jobs
        for key, label, _, _, _, unit in PATTERNS
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="fio (sequential 1 MiB write/read, random 4 KiB read, random 4 KiB "
        "write + fsync; one and four jobs) on the local disk, bindfs, GlusterFS and bftfs.",
        epilog="Short by default: 32 MiB per job, 10 s, b = 1, one run. --full: 256 MiB, 30 s, "
        "b = 1,2, 3 runs.",
    )
    ap.add_argument("--jobs", default="1,4", help="comma-separated job counts (1,4)")
    ap.add_argument("--size", type=int, help="MiB per job's file (short 32, full 256)")
    ap.add_argument("--seconds", type=int, help="time limit per case (short 10, full 30)")
    toolbench.add_arguments(ap)
    args = toolbench.finish_arguments(ap.parse_args(argv))
    args.jobs = toolbench.parse_ints(args.jobs, "--jobs")
    args.size = args.size or (256 if args.full else 32)
    args.seconds = args.seconds or (30 if args.full else 10)
    if args.size < 1 or args.seconds < 1:
        raise SystemExit("--size and --seconds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return toolbench.main(
        "fio",
        "fio",
        "fio",
        f"fio, psync engine, {args.size} MiB file per job, at most {args.seconds} s per "
        "case (random cases run that long); sequential cases in MiB/s, random in IOPS; "
        "every target's write cases end with an fsync (random writes fsync each write).",
        args,
        cases_for(args.jobs),
        run_case,
        {"jobs": args.jobs, "size_mib": args.size, "seconds": args.seconds},
    )


if __name__ == "__main__":
    sys.exit(main())
