"""Fault scalability of the two metadata engines (issue 39): Q/U against FaB Paxos.

Seed 004 (L157-160, L2943-2947) claims that Q/U loses 36% of its throughput from b = 1 to
b = 5 where an agreement-based service loses 83%, and (L157-158, L3171: "in experiments
that permit an optimistic execution", "in contention-free experiments") that its lead
holds without contention.  This benchmark puts both engines (``[cluster] engine``) on the
same workload, for each ``b`` (t = b, n = 5b + 1, durable nodes, real node processes, real
FUSE mounts of distinct clients):

* ``1 client``: one mount creates (and writes 1 KiB), stats, renames and removes
  ``--files`` files in a directory of its own;
* ``k clients, one directory`` (``--clients``, default 2 and 4): ``k`` mounts at once, one
  thread each, do the same with their own names in one shared directory (the directory
  object is updated by every create, rename and remove: Q/U's contention case).

An *operation* is one of those four calls.  Per phase, from the nodes' own counters and
``/proc``: frames and bytes each node received and sent, requests by protocol, and the CPU
of each node and of the mounts, per operation; and operations per second of all mounts.
Both engines run with ``lease=0`` by default, so every metadata call goes through the
engine; ``--leases`` mounts with the default lease term instead, as users do (FaB mounts
take leases too since the recalls are pushed on execution), so a call a lease answers never
leaves the mount and contention shows up as recalls.  One cluster per (engine, b), the
phases in order on it; the machine's load average is recorded with each phase.

Results: ``benchmarks/results/<date>-fault-scalability-engines.{json,md}`` (``--out``,
``--name``); ``make bench-engines``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import profiling  # noqa: E402

ENGINES = ("qu", "fab")
DATA = b"x" * 1024
#: Request kinds by group, as the nodes count them (``stats.requests``).
GROUPS = ("qu", "fab", "rw", "ping")
#: What one snapshot of a node holds (all cumulative).
COUNTERS = ("cpu_s", "frames", "bytes", *(f"{g}_requests" for g in GROUPS))


def parse_list(text: str, allowed: Sequence[str] | None = None) -> list[str]:
    """``"qu, fab"`` -> ``["qu", "fab"]``; an empty or unknown entry is refused by name.

    Raises:
        ValueError: an empty list, or an entry not in ``allowed``.
    """
    items = [x.strip() for x in text.split(",")]
    if not items or any(not x for x in items):
        raise ValueError(f"empty entry in {text!r}")
    if allowed is not None:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise ValueError(f"unknown {', '.join(bad)}: choose from {', '.join(allowed)}")
    return items


def parse_ints(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; each at least 1.

    Raises:
        ValueError: not a list of positive integers.
    """
    out = [int(x) for x in parse_list(text)]
    if any(x < 1 for x in out):
        raise ValueError(f"not positive: {text!r}")
    return out


def protocol_frames(engine: str, n: int) -> float:
    """Frames one node's server handles per metadata call, from the protocol (common case,
    no retransmission), as the nodes count them (``traffic``: requests received, answers
    and pushes sent; a node's own outgoing calls are counted by their callee).

    * Q/U: the client's request to each of the ``n`` nodes and its answer: 2 per node.
    * FaB: node-to-node calls (a request and its empty answer at the callee) PROPOSE
      ``n - 1``, ACCEPTED ``n (n - 1)``, LEARNED ``n - 1``, CHECKPOINT ``n (n - 1) / 16``
      (one every 16 slots); the client's REQUEST to each node (2 frames) and each node's
      REPLY push (1).  Per node: ``(2 (n - 1) (n + 2 + n / 16) + 3 n) / n``, about
      ``2n + 7``: it grows with ``n`` where Q/U's does not.
    """
    if engine == "qu":
        return 2.0
    if engine == "fab":
        return (2 * (n - 1) * (n + 2 + n / 16) + 3 * n) / n
    raise ValueError(f"unknown engine {engine!r}")


# The workload -------------------------------------------------------------------------------


def files_work(d: Path, me: str, files: int) -> int:
    """Create (1 KiB), stat, rename and remove ``files`` files named after ``me`` in ``d``;
    the number of operations done."""
    for i in range(files):
        (d / f"{me}-{i}").write_bytes(DATA)
    for i in range(files):
        os.stat(d / f"{me}-{i}")
    for i in range(files):
        os.rename(d / f"{me}-{i}", d / f"{me}-{i}.r")
    for i in range(files):
        os.unlink(d / f"{me}-{i}.r")
    return 4 * files


def run_threads(dirs: Sequence[Path], work: Callable[[Path, str], int]) -> tuple[int, float]:
    """Run ``work`` on each directory at once (one thread per mount): (operations,
    seconds); the first error is raised after every thread ended."""
    done: list[int] = []
    errors: list[BaseException] = []

    def one(d: Path, me: str) -> None:
        try:
            done.append(work(d, me))
        except BaseException as e:  # noqa: BLE001 - raised after the join
            errors.append(e)

    threads = [threading.Thread(target=one, args=(d, f"m{k}")) for k, d in enumerate(dirs)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(done), took


# Measuring ----------------------------------------------------------------------------------


def node_counters(stats: Mapping[str, Any], cpu: float | None) -> dict[str, float]:
    """One node's cumulative counters from its ``stats`` (``bftfs status --json``)."""
    traffic = stats.get("traffic") or {}
    out = {
        "cpu_s": cpu or 0.0,
        "frames": float(traffic.get("frames_in", 0) + traffic.get("frames_out", 0)),
        "bytes": float(traffic.get("bytes_in", 0) + traffic.get("bytes_out", 0)),
    }
    for g in GROUPS:
        out[f"{g}_requests"] = 0.0
    for kind, count in (stats.get("requests") or {}).items():
        for g in GROUPS:
            if str(kind) == f"req.{g}" or str(kind).startswith(f"req.{g}."):
                out[f"{g}_requests"] += float(count)
    return out


def per_operation(
    before: Mapping[int, Mapping[str, float]], after: Mapping[int, Mapping[str, float]], ops: int
) -> dict[str, float]:
    """Mean over the nodes of each counter's growth per operation, and the busiest node's
    CPU (``max_cpu_s``); nodes missing from either snapshot are left out."""
    ids = sorted(set(before) & set(after))
    if not ids or ops <= 0:
        raise ValueError("no node in both snapshots, or no operation")
    out: dict[str, float] = {}
    for key in COUNTERS:
        xs = [(after[i][key] - before[i][key]) / ops for i in ids]
        out[key] = sum(xs) / len(xs)
        if key == "cpu_s":
            out["max_cpu_s"] = max(xs)
    return out


def kinds_per_operation(
    before: Mapping[int, Mapping[str, Any]], after: Mapping[int, Mapping[str, Any]], ops: int
) -> dict[str, float]:
    """FaB messages sent per operation by kind, summed over the nodes (``progress.fab``'s
    ``kinds``), largest first."""
    total: dict[str, float] = {}
    for i, prog in after.items():
        was = (before.get(i) or {}).get("kinds") or {}
        for kind, count in (prog.get("kinds") or {}).items():
            total[kind] = total.get(kind, 0.0) + (count - was.get(kind, 0)) / ops
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def snapshot(config: Any, pids: Mapping[int, int]) -> dict[int, dict[str, float]]:
    """Every node's cumulative counters now."""
    import trio

    from bftfs.local import query_status

    statuses = trio.run(lambda: query_status(config, timeout=10.0, client="client0"))
    return {
        int(st.id): node_counters(st.stats or {}, profiling.cpu_seconds(pids[int(st.id)]))
        for st in statuses
        if st.stats is not None and int(st.id) in pids
    }


def fab_progress(config: Any) -> dict[int, dict[str, Any]]:
    """Each FaB node's ``progress.fab`` (regency, executed, sent, dropped, ...)."""
    import trio

    from bftfs.local import query_status

    statuses = trio.run(lambda: query_status(config, timeout=10.0, client="client0"))
    return {
        int(st.id): dict(((st.stats or {}).get("progress") or {}).get("fab") or {})
        for st in statuses
    }


@contextmanager
def cluster(
    engine: str, b: int, home: Path, clients: int, *, leases: bool = False
) -> Iterator[tuple[Any, list[Path]]]:
    """A fresh durable cluster of ``engine`` at ``b`` and ``clients`` mounts, with lease=0
    unless ``leases``: (the cluster, the mount points)."""
    from bftfs.testing.mounts import Mount
    from bftfs.testing.processes import ProcessCluster

    wanted = ("allow_other" if os.getuid() == 0 else "", "" if leases else "lease=0")
    opts = ",".join(x for x in wanted if x)
    with ExitStack() as stack:
        pc = stack.enter_context(
            ProcessCluster(
                home / "c", t=b, b=b, engine=engine, map_size=common.MAP_SIZE, clients=clients
            )
        )
        mounts = [
            stack.enter_context(Mount(pc.config, home / f"m{k}", client=f"client{k}", options=opts))
            for k in range(clients)
        ]
        yield pc, mounts


def run_engine_b(
    engine: str, b: int, args: argparse.Namespace, work: Path, rec: dict[str, Any]
) -> None:
    """Every phase on one fresh cluster of ``engine`` at ``b``, into ``rec`` (so the
    phases done are kept when a later one fails)."""
    most = max([1, *args.clients])
    rec.update(engine=engine, b=b, phases=[])
    with (
        tempfile.TemporaryDirectory(dir=work) as tmp,
        cluster(engine, b, Path(tmp), most, leases=args.leases) as (pc, mounts),
    ):
        rec["n"] = pc.config.n
        pids = {i: pid for i in range(pc.config.n) if (pid := pc.pid(i)) is not None}
        mount_pids = [m.proc.pid for m in mounts if m.proc is not None]
        try:
            _phases(engine, args, pc, mounts, pids, mount_pids, rec)
        except OSError:
            rec["logs"] = str(keep_logs(pc.config.home, work / f"engines-failed-{engine}-b{b}"))
            print(f"  the mounts' logs are in {rec['logs']}", flush=True)
            raise
        if engine == "fab":
            rec["fab"] = fab_progress(pc.config)


def keep_logs(home: Path, kept: Path) -> Path:
    """Copy the mounts' logs of the cluster in ``home`` to ``kept`` (the cluster's
    directory goes when the run ends)."""
    kept.mkdir(parents=True, exist_ok=True)
    for log in home.glob("mount-*.log"):
        (kept / log.name).write_bytes(log.read_bytes())
    return kept


def _phases(
    engine: str,
    args: argparse.Namespace,
    pc: Any,
    mounts: Sequence[Any],
    pids: Mapping[int, int],
    mount_pids: Sequence[int],
    rec: dict[str, Any],
) -> None:
    """One mount alone, then each of ``args.clients`` mounts in one directory."""
    for k in [1, *args.clients]:
        shared = "solo" if k == 1 else f"shared{k}"
        (mounts[0].mountpoint / shared).mkdir()
        dirs = [m.mountpoint / shared for m in mounts[:k]]
        before = snapshot(pc.config, pids)
        fab0 = fab_progress(pc.config) if engine == "fab" else {}
        m0 = sum(profiling.cpu_seconds(p) or 0.0 for p in mount_pids)
        load0 = os.getloadavg()[0]
        ops, took = run_threads(dirs, lambda d, me: files_work(d, me, args.files))
        load1 = os.getloadavg()[0]
        m1 = sum(profiling.cpu_seconds(p) or 0.0 for p in mount_pids)
        after = snapshot(pc.config, pids)
        fab1 = fab_progress(pc.config) if engine == "fab" else {}
        phase = {
            "clients": k,
            "ops": ops,
            "seconds": took,
            "ops_per_s": ops / took,
            "load": [load0, load1],
            "mounts_cpu_s": (m1 - m0) / ops,
            **per_operation(before, after, ops),
        }
        if engine == "fab":
            phase["fab_sent"] = kinds_per_operation(fab0, fab1, ops)
            phase["regencies"] = max(int(p.get("regency", 0)) for p in fab1.values())
        rec["phases"].append(phase)
        print(
            f"  {engine} b={rec['b']} clients={k}: {phase['ops_per_s']:.1f} ops/s, per node per "
            f"op {phase['frames']:.1f} frames, {phase['bytes'] / 1024:.2f} KiB, "
            f"{phase['cpu_s'] * 1000:.2f} ms CPU (load {load0:.1f}-{load1:.1f}) "
            f"{phase.get('fab_sent', '')} regency {phase.get('regencies', '-')}",
            flush=True,
        )


# Reporting ----------------------------------------------------------------------------------


#: The table's columns after b and n: each engine's figure, in ``markdown``'s order.
def calls_per_operation(phase: Mapping[str, Any]) -> float:
    """Metadata calls per file-system operation: Q/U requests per node (each reaches every
    node), or FaB REPLYs over the ``n`` nodes (each node answers each call once)."""
    if "fab_sent" in phase:
        return float(phase["fab_sent"].get("REPLY", 0.0)) / phase["n"]
    return float(phase["qu_requests"])


def _per_call(p: Mapping[str, Any]) -> str:
    calls = calls_per_operation(p)
    measured = f"{p['frames'] / calls:.1f}" if calls else "?"
    return f"{measured} ({protocol_frames(p['engine'], p['n']):.0f})"


COLUMNS: tuple[Callable[[Mapping[str, Any]], str], ...] = (
    lambda p: f"{calls_per_operation(p):.2f}",
    _per_call,
    lambda p: f"{p['frames']:.1f}",
    lambda p: f"{p['bytes'] / 1024:.2f}",
    lambda p: f"{p['cpu_s'] * 1000:.2f}",
    lambda p: f"{p['max_cpu_s'] * 1000:.2f}",
    lambda p: f"{p['mounts_cpu_s'] * 1000:.2f}",
    lambda p: f"{p['ops_per_s']:.1f}",
    lambda p: f"{p['load'][0]:.1f}-{p['load'][1]:.1f}",
)


def _cell(rows: Mapping[str, Mapping[str, Any]], engine: str, fmt: Callable[[Any], str]) -> str:
    return fmt(rows[engine]) if engine in rows else "-"


def markdown(result: Mapping[str, Any]) -> str:
    """The two tables (one client; k clients in one directory), engines side by side."""
    runs = [r for r in result["runs"] if r.get("phases")]  # a failed run: its phases done
    engines = list(result["engines"])
    by: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    ns: dict[int, int] = {}
    for r in runs:
        ns[r["b"]] = r["n"]
        for p in r["phases"]:
            row = {**p, "n": r["n"], "engine": r["engine"]}
            by.setdefault((p["clients"], r["b"]), {})[r["engine"]] = row
    head = " / ".join(engines)
    lines = [
        f"# Fault scalability of the metadata engines ({head}): {result['files']} files "
        "per client, per file-system operation",
        "",
        f"Commit {result['commit'].get('commit', '?')}, {result['machine'].get('cpu', '?')}, "
        f"{result['when']}; durable nodes, t = b, mounts with "
        f"{'leases (the default term)' if result.get('leases') else 'lease=0'}; one run each.",
        "",
    ]
    for k in sorted({k for k, _ in by}):
        what = "1 client, own directory" if k == 1 else f"{k} clients, one directory"
        lines += [
            f"## {what}",
            "",
            f"| b | n | metadata calls ({head}) | frames per node per call (protocol) "
            "| frames per node | KiB per node | node CPU ms, mean | busiest node CPU ms "
            "| mounts' CPU ms | ops/s | load |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for b in sorted(b for kk, b in by if kk == k):
            rows = by[(k, b)]
            cells = [" / ".join(_cell(rows, e, fmt) for e in engines) for fmt in COLUMNS]
            lines.append(f"| {b} | {ns[b]} | " + " | ".join(cells) + " |")
        lines.append("")
    failed = [r for r in result["runs"] if "error" in r]
    for r in failed:
        lines.append(f"- {r['engine']} b={r['b']} FAILED: {r['error'].splitlines()[0][:200]}")
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="qu,fab", help="comma-separated: qu, fab")
    ap.add_argument("--bs", default="1,2,3", help="comma-separated b values (t = b)")
    ap.add_argument("--clients", default="2,4", help="mounts in one directory after one alone")
    ap.add_argument("--files", type=int, default=30, help="files per client per phase")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    ap.add_argument(
        "--name",
        default=f"{common.now_utc()[:10]}-fault-scalability-engines",
        help="results file name, without .json/.md (default: today's date, then the name)",
    )
    ap.add_argument(
        "--leases",
        action="store_true",
        help="mount with the default lease term, as users do (default: lease=0)",
    )
    ap.add_argument("--work", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--from-json", type=Path, help="print the tables of an earlier run")
    args = ap.parse_args(argv)
    try:
        args.engines = parse_list(args.engines, ENGINES)
        args.bs = parse_ints(args.bs)
        args.clients = [k for k in parse_ints(args.clients) if k > 1]
    except ValueError as e:
        ap.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:  # the tables again, from a run's results
        saved = json.loads(args.from_json.read_text())
        for one in saved.get("results", [saved]):  # one run, or several kept together
            print(markdown(one))
        return 0
    common.install_sigterm_handler()
    why = common.check_fuse()
    if why:
        print(f"cannot mount: {why}")
        return 2
    runs: list[dict[str, Any]] = []
    for b in args.bs:
        for engine in args.engines:
            print(f"{engine} b={b}", flush=True)
            rec: dict[str, Any] = {}
            runs.append(rec)
            try:
                run_engine_b(engine, b, args, args.work, rec)
            except (OSError, RuntimeError) as e:
                print(f"  FAILED: {str(e).splitlines()[0][:300]}", flush=True)
                rec["error"] = str(e)
    result = {
        "machine": common.machine_info(),
        "commit": common.commit_info(),
        "when": common.now_utc(),
        "engines": args.engines,
        "files": args.files,
        "leases": args.leases,
        "runs": runs,
    }
    md = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    common.write_json(args.out / f"{args.name}.json", result)
    (args.out / f"{args.name}.md").write_text(md)
    print(md)
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
