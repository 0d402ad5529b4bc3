"""fio, fs_mark, dbench and the kernel tree as the cases of ONE side-by-side run (issue 64).

``make bench-all`` runs the standard tools through this module rather than one process
per tool: ``toolbench.measure`` opens every target once per repetition and runs every
case of every tool in it, so a target (CephFS boots in 20-35 s) is set up once a run for
all four tools, not four times.  The cases are each tool's own (``fio.cases_for``,
``fsmark.cases_for``, ``dbench.cases_for``, ``kerneltree.cases``), their keys prefixed
with the tool's (``fio/seqwrite-j1``), run by the tool's own ``run_case`` with that tool's
options.  On each target the kernel tree runs first (it ends with its ``rm -rf``), then
fs_mark, dbench and fio, so each small-file tool meets a target with little on it and fio's
big files come last.  A tool that is not installed (or the kernel tarball missing) is
left out with its reason, printed and kept in the results (``left_out``).

Results: ``benchmarks/results/tools-<short|full>.{json,md,png}``, one row per case.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import dbench  # noqa: E402
import fio  # noqa: E402
import fsmark  # noqa: E402
import kerneltree  # noqa: E402
import toolbench  # noqa: E402
from toolbench import Case, Runner  # noqa: E402

#: The tools, in the order they run on each target (module docstring).
TOOLS = ("kerneltree", "fsmark", "dbench", "fio")
#: Each tool's name on the page and its Debian package.
NAMES = {"kerneltree": "kernel tree", "fsmark": "fs_mark", "dbench": "dbench", "fio": "fio"}
PACKAGES = {
    "kerneltree": kerneltree.PACKAGE,
    "fsmark": "fsmark",
    "dbench": "dbench",
    "fio": "fio",
}
RUNNERS: dict[str, Runner] = {
    "kerneltree": kerneltree.run_case,
    "fsmark": fsmark.run_case,
    "dbench": dbench.run_case,
    "fio": fio.run_case,
}


def tool_args(args: argparse.Namespace) -> dict[str, argparse.Namespace]:
    """Each tool's options, as its own module's ``parse_args`` names them."""
    shared = vars(args)
    return {
        "kerneltree": argparse.Namespace(**shared),  # subset, tar, counts, idle: its own names
        "fsmark": argparse.Namespace(**shared, threads=args.fsmark_threads,
                                     files=args.fsmark_files),
        "dbench": argparse.Namespace(**shared, clients=args.dbench_clients,
                                     seconds=args.dbench_seconds),
        "fio": argparse.Namespace(**shared, jobs=args.fio_jobs, size=args.fio_size,
                                  seconds=args.fio_seconds),
    }  # fmt: skip


def tool_cases(tool: str, args: argparse.Namespace) -> list[Case]:
    """``tool``'s cases, their keys prefixed with ``tool/``."""
    if tool == "kerneltree":
        own = kerneltree.cases(args.idle)
    elif tool == "fsmark":
        own = fsmark.cases_for(args.fsmark_threads)
    elif tool == "dbench":
        own = dbench.cases_for(args.dbench_clients)
    else:
        own = fio.cases_for(args.fio_jobs)
    return [replace(c, key=f"{tool}/{c.key}") for c in own]


def runner(per_tool: dict[str, argparse.Namespace]) -> Runner:
    """Run a prefixed case with its tool's ``run_case``, under its own key, with its tool's
    options."""

    def run(case: Case, where: Path, _args: argparse.Namespace) -> dict[str, Any]:
        tool, _, key = case.key.partition("/")
        return RUNNERS[tool](replace(case, key=key), where, per_tool[tool])

    return run


def missing(tool: str, args: argparse.Namespace) -> str | None:
    """Why ``tool`` cannot run here, or None."""
    if tool == "kerneltree":
        if not args.tarball.exists():
            return f"{args.tarball} is missing (Debian package {kerneltree.PACKAGE})"
        need = ("tar", "xz", "find", "grep", "du", "git")
    else:
        need = ({"fsmark": "fs_mark"}.get(tool, tool),)
    gone = [t for t in need if shutil.which(t) is None]
    return f"{', '.join(gone)} not installed (make bench-setup)" if gone else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="fio, fs_mark, dbench and the kernel tree as cases of one run: each "
        "target set up once per repetition for all of them.",
        epilog="Each tool's options default to its own module's (short unless --full).",
    )
    ap.add_argument("--tools", default=",".join(TOOLS), help="of " + ", ".join(TOOLS))
    ap.add_argument("--fio-jobs", default="1,4", help="fio job counts (1,4)")
    ap.add_argument("--fio-size", type=int, help="MiB per fio job's file (short 32, full 256)")
    ap.add_argument("--fio-seconds", type=int, help="fio's limit per case (short 10, full 30)")
    ap.add_argument("--fsmark-threads", default="1,4", help="fs_mark thread counts (1,4)")
    ap.add_argument("--fsmark-files", type=int, help="files per thread (short 300, full 3000)")
    ap.add_argument("--file-size", type=int, default=4096, help="fs_mark bytes per file (4096)")
    ap.add_argument("--dbench-clients", default="1,4", help="dbench client counts (1,4)")
    ap.add_argument("--dbench-seconds", type=int, help="dbench -t (short 20, full 60)")
    ap.add_argument("--subset", help="kernel tree: one top-level directory, or all "
                    "(short kernel, full all)")  # fmt: skip
    ap.add_argument("--tarball", type=Path, default=kerneltree.TARBALL)
    ap.add_argument("--cache", type=Path, default=common.CACHE_DIR, help="the unpacked tar's")
    ap.add_argument("--idle", type=float, default=0.0, help="kernel tree: idle phase's seconds")
    toolbench.add_arguments(ap)
    args = toolbench.finish_arguments(ap.parse_args(argv))
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not args.tools or any(t not in TOOLS for t in args.tools):
        raise SystemExit(f"--tools: of {', '.join(TOOLS)}: {args.tools}")
    args.tools = [t for t in TOOLS if t in args.tools]
    full = args.full
    args.fio_jobs = toolbench.parse_ints(args.fio_jobs, "--fio-jobs")
    args.fio_size = args.fio_size or (256 if full else 32)
    args.fio_seconds = args.fio_seconds or (30 if full else 10)
    args.fsmark_threads = toolbench.parse_ints(args.fsmark_threads, "--fsmark-threads")
    args.fsmark_files = args.fsmark_files or (3000 if full else 300)
    args.dbench_clients = toolbench.parse_ints(args.dbench_clients, "--dbench-clients")
    args.dbench_seconds = args.dbench_seconds or (60 if full else 20)
    args.subset = kerneltree.check_subset(args.subset or ("all" if full else "kernel"))
    if min(args.fio_size, args.fio_seconds, args.fsmark_files, args.dbench_seconds) < 1:
        raise SystemExit("--fio-size, --fio-seconds, --fsmark-files, --dbench-seconds: >= 1")
    return args


def description(args: argparse.Namespace, tools: list[str]) -> str:
    parts = {
        "kerneltree": f"kernel tree ({args.subset or 'whole tree'}"
        + (f", {args.counts['files']} files" if "counts" in args else "")
        + "; seconds per phase, lower is better)",
        "fsmark": f"fs_mark -S 1, {args.fsmark_files} files of {args.file_size} B per thread",
        "dbench": f"dbench client.txt, {args.dbench_seconds} s per case (MB/s)",
        "fio": f"fio psync, {args.fio_size} MiB file per job, at most {args.fio_seconds} s "
        "per case (random cases run that long)",
    }
    return (
        "In that order on each target, one set-up per run: "
        + "; ".join(parts[t] for t in tools)
        + "."
    )


def main(argv: list[str] | None = None) -> int:
    """Every case of every available tool on every target; 0 when every target that was
    not skipped ran every case (a tool left out is not a failure, its reason printed)."""
    args = parse_args(argv)
    common.install_sigterm_handler()
    progress = common.Progress("tools", args.quiet)
    left_out = {t: why for t in args.tools if (why := missing(t, args))}
    for tool, why in left_out.items():
        progress(f"{NAMES[tool]} left out: {why}")
    tools = [t for t in args.tools if t not in left_out]
    if not tools:
        return 0
    if "kerneltree" in tools:
        args.tar = kerneltree.prepare(args.tarball, args.subset, args.cache, progress)
        args.counts = kerneltree.tree_counts(args.tar)
    cases = [c for t in tools for c in tool_cases(t, args)]
    config = {
        "tools": tools,
        "left_out": left_out,
        "case_tools": {c.key: NAMES[c.key.partition("/")[0]] for c in cases},
        "versions": {NAMES[t]: toolbench.package_version(PACKAGES[t]) for t in tools},
        "fio": {"jobs": args.fio_jobs, "size_mib": args.fio_size, "seconds": args.fio_seconds},
        "fsmark": {"threads": args.fsmark_threads, "files": args.fsmark_files,
                   "file_size": args.file_size},
        "dbench": {"clients": args.dbench_clients, "seconds": args.dbench_seconds},
        "kerneltree": {"subset": args.subset, "tree": getattr(args, "counts", None),
                       "idle": args.idle},
    }  # fmt: skip
    return toolbench.run_cases(
        "tools", ", ".join(NAMES[t] for t in tools), "", "Standard tools", description(args, tools),
        args, cases, runner(tool_args(args)), config, progress,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
