"""Fault scalability (issue 19): what one PostMark transaction costs each node as b grows.

The Q/U paper's claim (seed 004): throughput falls 36% from b = 1 to b = 5, agreement
protocols 83%, because each Q/U operation involves a quorum (q = 4b + 1 of n = 5b + 1) that
grows with the cluster, so each node's share of the work stays about the same.  On one
2-core machine every node shares the same CPU, so throughput mostly measures the sum of all
nodes' work; what does not depend on that is reported here, per node and per operation:

* messages: frames each node received and sent (requests from clients and other nodes,
  replies), from the nodes' own ``traffic`` counters;
* bytes: the same frames' sizes (encrypted, as on the wire);
* CPU: each node process's user + system time (``/proc``), and the FUSE daemon's;

for a fixed PostMark workload (``--files``, ``--transactions``, PostMark's default sizes and
seed) on a fresh cluster for each b (t = b, n = 3t + 2b + 1, durable), divided by the number
of PostMark transactions.  ``--runs`` repetitions, interleaved over b; medians.

Results: ``benchmarks/results/scalability.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import postmark  # noqa: E402
import profiling  # noqa: E402
from common import Progress  # noqa: E402


def node_snapshot(site: common.Site) -> dict[int, dict[str, float]]:
    """Per node: its CPU seconds so far and its traffic and Q/U counters."""
    import trio

    from bftfs.local import query_status

    statuses = trio.run(lambda: query_status(site.config, timeout=5.0, client="client1"))
    out: dict[int, dict[str, float]] = {}
    for st in statuses:
        pid = site.pids.get(f"node{st.id}")
        cpu = profiling.cpu_seconds(pid) if pid is not None else None
        stats = st.stats or {}
        traffic = stats.get("traffic") or {}
        requests = stats.get("requests") or {}
        by = {"qu": 0.0, "rw": 0.0, "ping": 0.0}
        for kind, count in requests.items():
            for group in by:
                if str(kind).startswith(f"req.{group}"):
                    by[group] += float(count)
        out[st.id] = {
            "cpu_s": cpu or 0.0,
            "frames": float(traffic.get("frames_in", 0) + traffic.get("frames_out", 0)),
            "bytes": float(traffic.get("bytes_in", 0) + traffic.get("bytes_out", 0)),
            "qu_requests": by["qu"],
            "rw_requests": by["rw"],
            "pings": by["ping"],
        }
    return out


def one_run(
    b: int, args: argparse.Namespace, work: Path, progress: Progress, rep: int
) -> dict[str, Any]:
    spec = common.bftfs_spec(t=b, b=b, durable=True)
    rec: dict[str, Any] = {"b": b, "rep": rep}
    with common.open_target(spec, work, f"b{b}-r{rep}") as site:
        n = site.info["n"]
        rec["n"] = n
        mount_pid = site.pids.get("mount")
        before = node_snapshot(site)
        daemon0 = profiling.cpu_seconds(mount_pid) if mount_pid else None
        res = postmark.run_postmark(site, work, args, progress)
        after = node_snapshot(site)
        daemon1 = profiling.cpu_seconds(mount_pid) if mount_pid else None
    tx = args.transactions
    per_node = {
        i: {k: (after[i][k] - before[i][k]) / tx for k in after[i]} for i in after if i in before
    }
    rec["tps"] = res.get("tps")
    rec["per_node"] = per_node
    vals = list(per_node.values())
    for key in ("frames", "bytes", "cpu_s", "qu_requests", "rw_requests", "pings"):
        xs = [v[key] for v in vals]
        rec[f"mean_{key}"] = statistics.mean(xs)
        rec[f"max_{key}"] = max(xs)
        rec[f"sum_{key}"] = sum(xs)
    rec["daemon_cpu_s"] = (daemon1 - daemon0) / tx if daemon0 is not None and daemon1 else None
    progress.more(
        f"  -> n={n}: per node per transaction {rec['mean_frames']:.1f} frames, "
        f"{rec['mean_bytes'] / 1024:.1f} KiB, {rec['mean_cpu_s'] * 1000:.2f} ms CPU",
        end="\n",
    )
    return rec


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for b in sorted({r["b"] for r in runs}):
        rs = [r for r in runs if r["b"] == b and "error" not in r]
        if not rs:
            continue

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float | None:
            xs = [r[key] for r in rs if r.get(key) is not None]
            return statistics.median(xs) if xs else None

        rows.append(
            {
                "b": b,
                "n": rs[0]["n"],
                "runs": len(rs),
                "frames_per_node": med("mean_frames"),
                "kib_per_node": (med("mean_bytes") or 0) / 1024,
                "cpu_ms_per_node": (med("mean_cpu_s") or 0) * 1000,
                "cpu_ms_max_node": (med("max_cpu_s") or 0) * 1000,
                "qu_requests_per_node": med("mean_qu_requests"),
                "rw_requests_per_node": med("mean_rw_requests"),
                "pings_per_node": med("mean_pings"),
                "cpu_ms_nodes_sum": (med("sum_cpu_s") or 0) * 1000,
                "cpu_ms_daemon": (med("daemon_cpu_s") or 0) * 1000,
                "tps": med("tps"),
            }
        )
    base = rows[0] if rows else None
    for row in rows:
        for key in ("frames_per_node", "kib_per_node", "cpu_ms_per_node"):
            row[f"{key}_vs_first"] = row[key] / base[key] if base and base[key] else None
    return rows


def markdown(result: dict[str, Any]) -> str:
    rows = result["summary"]
    lines = [
        f"# Fault scalability: PostMark {result['files']} files / {result['transactions']} "
        f"transactions, per transaction, median of {result['runs']} run(s)",
        "",
        f"Commit {result['commit'].get('commit', '?')}, {result['machine'].get('cpu', '?')}; "
        "durable nodes, t = b.",
        "",
        "| b | n | frames per node | KiB per node | node CPU ms (mean / max) "
        "| requests per node: Q/U, PASIS, heartbeat | nodes' CPU ms, summed "
        "| FUSE daemon CPU ms | tps |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['b']} | {r['n']} | {r['frames_per_node']:.1f} "
            f"({r['frames_per_node_vs_first']:.2f}x) | {r['kib_per_node']:.1f} "
            f"({r['kib_per_node_vs_first']:.2f}x) | {r['cpu_ms_per_node']:.2f} / "
            f"{r['cpu_ms_max_node']:.2f} ({r['cpu_ms_per_node_vs_first']:.2f}x) | "
            f"{r['qu_requests_per_node']:.2f}, {r['rw_requests_per_node']:.2f}, "
            f"{r['pings_per_node']:.2f} | {r['cpu_ms_nodes_sum']:.1f} | "
            f"{r['cpu_ms_daemon']:.1f} | {r['tps']:.1f} |"
        )
    lines.append("")
    lines.append("(x): against the first b of the table.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    rows = result["summary"]
    bs = [r["b"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].plot(bs, [r["frames_per_node"] for r in rows], "o-")
    axes[0].set_title("frames per node per transaction")
    axes[1].plot(bs, [r["cpu_ms_per_node"] for r in rows], "o-", label="mean node")
    axes[1].plot(bs, [r["cpu_ms_max_node"] for r in rows], "s--", label="busiest node")
    axes[1].set_title("node CPU ms per transaction")
    axes[1].legend()
    axes[2].plot(bs, [r["cpu_ms_nodes_sum"] for r in rows], "o-", label="all nodes")
    axes[2].plot(bs, [r["cpu_ms_daemon"] for r in rows], "s--", label="FUSE daemon")
    axes[2].set_title("CPU ms per transaction, summed")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("b (t = b, n = 5b + 1)")
        ax.set_ylim(bottom=0)
        ax.set_xticks(bs)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Per-node messages, bytes and CPU per PostMark transaction for b = 1..5 "
        "(fault scalability); fixed workload, fresh durable cluster per b."
    )
    ap.add_argument("--bs", default="1,2,3,4,5", help="comma-separated b values (t = b)")
    ap.add_argument("--files", type=int, default=100, help="PostMark 'set number'")
    ap.add_argument("--transactions", type=int, default=200, help="PostMark 'set transactions'")
    ap.add_argument("--size-min", type=int, default=500)
    ap.add_argument("--size-max", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--runs", type=int, default=1, help="repetitions, interleaved over b")
    ap.add_argument("--cap", type=float, default=600.0, help="seconds per PostMark run")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    args.bs = [int(x) for x in args.bs.split(",") if x.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm_handler()
    progress = Progress("scalability", args.quiet)
    if shutil.which("postmark") is None:
        progress("postmark is not installed: run scripts/setup-bench.sh (Debian package postmark)")
        return 2
    why = common.check_fuse()
    if why:
        progress(f"cannot mount: {why}")
        return 2
    runs = []
    with tempfile.TemporaryDirectory(prefix="bftfs-scal-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        for rep in range(args.runs):
            for b in args.bs:
                progress(f"run {rep + 1}/{args.runs} b={b}", end="")
                try:
                    runs.append(one_run(b, args, work, progress, rep))
                except (common.TargetError, postmark.PostMarkError, OSError, RuntimeError) as e:
                    progress.more(f" FAILED: {str(e).splitlines()[0][:200]}", end="\n")
                    runs.append({"b": b, "rep": rep, "error": str(e)})
    result = {
        "machine": common.machine_info(),
        "commit": common.commit_info(),
        "when": common.now_utc(),
        "files": args.files,
        "transactions": args.transactions,
        "runs": args.runs,
        "samples": runs,
        "summary": summarise(runs),
    }
    md = common.write_results(
        args.out, "scalability", result, markdown, plot, progress, with_plot=not args.no_plot
    )
    print(md)
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
