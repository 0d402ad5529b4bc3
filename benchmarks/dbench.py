"""dbench on bftfs, the local disk, bindfs and GlusterFS, side by side (issue 64).

The real ``dbench`` (Debian's package) replays a Windows file-server client's operation
mix (its ``client.txt`` load: creates, renames, unlinks, stat-like queries, directory
listings, reads, writes, locks and flushes) from one and from several client processes
(``--clients``) for ``--seconds``; the figure is dbench's own final throughput (MB/s over
the run), from its ``Throughput`` line, and the operations it did, from its table
(``parse_dbench``).

Results: ``benchmarks/results/dbench-<short|full>.{json,md,png}``; ``toolbench.py`` is the
harness.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import toolbench  # noqa: E402
from toolbench import Case, ToolError  # noqa: E402

_THROUGHPUT = re.compile(
    r"^Throughput ([\d.]+) MB/sec\s+(\d+) clients\s+(\d+) procs\s+max_latency=([\d.]+) ms",
    re.M,
)
_OP_ROW = re.compile(r"^\s*([A-Za-z]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s*$")


def parse_dbench(text: str) -> dict[str, Any]:
    """dbench's final ``Throughput`` line (MB/s, clients, processes, the largest latency
    in ms) and its operation table (count per operation and their sum).

    Raises:
        ToolError: no Throughput line in ``text``.
    """
    found = list(_THROUGHPUT.finditer(text))
    if not found:
        raise ToolError(f"dbench printed no Throughput line: {text[-300:]}")
    m = found[-1]
    tail = text[: m.start()]
    table = tail[tail.rfind(" Operation ") :] if " Operation " in tail else ""
    ops = {r.group(1): int(r.group(2)) for line in table.splitlines() if (r := _OP_ROW.match(line))}
    return {
        "mb_per_s": float(m.group(1)),
        "clients": int(m.group(2)),
        "procs": int(m.group(3)),
        "max_latency_ms": float(m.group(4)),
        "operations": ops,
        "operations_total": sum(ops.values()),
    }


def dbench_command(clients: int, where: Path, args: argparse.Namespace) -> list[str]:
    return ["dbench", "-D", str(where), "-t", str(args.seconds), str(clients)]


def run_case(case: Case, where: Path, args: argparse.Namespace) -> dict[str, Any]:
    clients = int(case.key.removeprefix("clients-"))
    got = parse_dbench(toolbench.run_tool(dbench_command(clients, where, args), args.cap))
    if not got["operations_total"]:
        raise ToolError("dbench did no operations")
    return {"value": got["mb_per_s"], "units": got["operations_total"], "dbench": got}


def cases_for(clients: list[int]) -> list[Case]:
    return [
        Case(f"clients-{c}", f"client mix, {c} client{'s' if c > 1 else ''}", "MB/s", "op")
        for c in clients
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="dbench (a file-server client mix; one and several clients) on the "
        "local disk, bindfs, GlusterFS and bftfs.",
        epilog="Short by default: 20 s per case, b = 1, one run. --full: 60 s, b = 1,2, 3 runs.",
    )
    ap.add_argument("--clients", default="1,4", help="comma-separated client counts (1,4)")
    ap.add_argument("--seconds", type=int, help="dbench -t per case (short 20, full 60)")
    toolbench.add_arguments(ap)
    args = toolbench.finish_arguments(ap.parse_args(argv))
    args.clients = toolbench.parse_ints(args.clients, "--clients")
    args.seconds = args.seconds or (60 if args.full else 20)
    if args.seconds < 1:
        raise SystemExit("--seconds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return toolbench.main(
        "dbench",
        "dbench",
        "dbench",
        f"dbench's client.txt load, {args.seconds} s per case; MB/s from its Throughput "
        "line (its cost unit: one operation of its table).",
        args,
        cases_for(args.clients),
        run_case,
        {"clients": args.clients, "seconds": args.seconds},
    )


if __name__ == "__main__":
    sys.exit(main())
