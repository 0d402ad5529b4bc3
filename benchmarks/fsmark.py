"""fs_mark on bftfs, the local disk, bindfs and GlusterFS, side by side (issue 64).

Many small files, each written and ``fsync``'d before its close (``-S 1``, fs_mark's
default sync method), in one directory, by one thread and by several (``--threads``), with
the real ``fs_mark`` (Debian's package ``fsmark``): files per second as fs_mark computes
it, from its own result table (``parse_fsmark``).  It is the create-and-sync path of a
mail or build server, and what a BFT store pays most for: every file is a metadata
update and a durable write at a quorum.

Results: ``benchmarks/results/fsmark-<short|full>.{json,md,png}``; ``toolbench.py`` is the
harness.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import toolbench  # noqa: E402
from toolbench import Case, ToolError  # noqa: E402

_COLUMNS = ("fs_use_pct", "count", "size", "files_per_s", "app_overhead_us")


def parse_fsmark(text: str) -> dict[str, float]:
    """The last row of fs_mark's result table (the line after the ``FSUse%`` header):
    the file system's use, files made, their size, files/s and fs_mark's overhead (us).

    Raises:
        ToolError: no table row in ``text``.
    """
    rows: list[dict[str, float]] = []
    header = False
    for line in text.splitlines():
        fields = line.split()
        if fields[:1] == ["FSUse%"]:
            header = True
            continue
        if header and len(fields) == len(_COLUMNS):
            try:
                rows.append(dict(zip(_COLUMNS, map(float, fields), strict=True)))
            except ValueError:
                continue
    if not rows:
        raise ToolError(f"fs_mark printed no result row: {text[-300:]}")
    return rows[-1]


def fsmark_command(threads: int, args: argparse.Namespace) -> list[str]:
    """fs_mark's command line, run in the directory it fills: it refuses a ``-d`` path of
    40 bytes or more, and the targets' directories are longer."""
    return [
        "fs_mark",
        "-d",
        ".",
        "-n",
        str(args.files),
        "-s",
        str(args.file_size),
        "-t",
        str(threads),
        "-L",
        "1",
        "-S",
        "1",
    ]


def run_case(case: Case, where: Path, args: argparse.Namespace) -> dict[str, Any]:
    threads = int(case.key.removeprefix("threads-"))
    got = parse_fsmark(toolbench.run_tool(fsmark_command(threads, args), args.cap, cwd=where))
    return {"value": got["files_per_s"], "units": got["count"], "fs_mark": got}


def cases_for(threads: list[int]) -> list[Case]:
    return [
        Case(f"threads-{t}", f"files + fsync, {t} thread{'s' if t > 1 else ''}", "files/s", "file")
        for t in threads
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="fs_mark (small files, fsync before close; one and several threads) "
        "on the local disk, bindfs, GlusterFS and bftfs.",
        epilog="Short by default: 300 files per thread, b = 1, one run. --full: 3000 files "
        "per thread, b = 1,2, 3 runs.",
    )
    ap.add_argument("--threads", default="1,4", help="comma-separated thread counts (1,4)")
    ap.add_argument("--files", type=int, help="files per thread (short 300, full 3000)")
    ap.add_argument("--file-size", type=int, default=4096, help="bytes per file (4096)")
    toolbench.add_arguments(ap)
    args = toolbench.finish_arguments(ap.parse_args(argv))
    args.threads = toolbench.parse_ints(args.threads, "--threads")
    args.files = args.files or (3000 if args.full else 300)
    if args.files < 1 or args.file_size < 0:
        raise SystemExit("--files must be at least 1 and --file-size not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return toolbench.main(
        "fs_mark",
        "fsmark",
        "fs_mark",
        f"fs_mark -S 1 (fsync before close), {args.files} files of {args.file_size} B per "
        "thread in one directory, one loop; files per second as fs_mark reports it.",
        args,
        cases_for(args.threads),
        run_case,
        {"threads": args.threads, "files": args.files, "file_size": args.file_size},
    )


if __name__ == "__main__":
    sys.exit(main())
