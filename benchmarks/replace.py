"""Replacing a node that holds data, online: how long, how many bytes, and what it costs an
Andrew run on a mount meanwhile (issue 35; ``docs/membership.md``, "Replacing a node").

For each catch-up throttle given (``--rates``, bytes/s of block data; 0: no limit), on a
fresh cluster of real node processes (``t = b = 1``: six nodes, ``m = 3``, durable
commits):

1. ``--gib`` of block data is written (``--block``-byte blocks, as a file system's
   contents), the nodes are left to finish verifying it, and one Andrew run
   (``benchmarks/andrew.py``'s short tree, the Lua 5.4 sources of the pinned lupa sdist)
   on a mount measures the quiet cluster;
2. ``bftfs node replace 5 --address 127.0.0.1:PORT`` issues the view with a new machine
   (new key, new empty data directory), the newcomer is started, and a second Andrew run
   starts on the same mount at once;
3. the newcomer's catch-ups (``qu.catchup``, ``rw.catchup``) are polled until both are
   done: the replacement's time from the newcomer's start, and the bytes it read from the
   others (``bytes_read``: whole blocks, what a reader of ``m`` fragments fetches) and
   stored (``bytes_stored``: its fragments and cross checksums).

Prints one line per throttle and writes ``benchmarks/results/replace.{json,md}``.  The
machine is shared by the seven processes, the mount and the compiler: compare rows of one
run only.

Usage::

    .venv/bin/python benchmarks/replace.py --gib 1 --rates 0,8388608
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import andrew
import common
import trio
from profiling import settle

from bftfs import config as cfgmod
from bftfs import local
from bftfs.config import ClusterConfig
from bftfs.connect import open_client
from bftfs.policy import VerificationPolicy
from bftfs.rw.client import open_rw_client
from bftfs.testing.mounts import Mount
from bftfs.testing.processes import ProcessCluster

#: The node replaced.
NODE = 5
#: Blocks written per ``write_blocks`` call while filling.
FILL_CHUNK = 256


async def fill(cfg: ClusterConfig, total: int, block: int) -> float:
    """Write ``total`` bytes of distinct blocks; seconds taken."""
    count = max(1, total // block)
    t0 = time.monotonic()
    async with open_client(cfg) as ep, open_rw_client(ep, cfg) as rw:
        for start in range(0, count, FILL_CHUNK):
            blocks = {
                (1 << 41) + b: (b"%016d" % b) * (block // 16)
                for b in range(start, min(count, start + FILL_CHUNK))
            }
            await rw.write_blocks(blocks, concurrency=16)
    return time.monotonic() - t0


def catch_ups(cfg: ClusterConfig, node: int) -> dict[str, Any] | None:
    """Node ``node``'s catch-up records once both are done, else None."""
    st = trio.run(local.query_status, cfg)[node]
    if not st.up or st.stats is None:
        return None
    progress = st.stats.get("progress") or {}
    records = {k: progress.get(k) or {} for k in ("qu.catchup", "rw.catchup")}
    if all(r.get("state") in ("done", "failed") for r in records.values()):
        return records
    return None


def replace_and_follow(home: Path, tree: andrew.Tree, build: str, mnt: Path) -> dict[str, Any]:
    """Steps 2 and 3 on an open mount ``mnt``; the figures."""
    (port,) = local.cluster_ports(home / "newcomer", 1)
    cmd = [sys.executable, "-m", "bftfs", "node", "replace", str(NODE)]
    cmd += ["--address", f"127.0.0.1:{port}", "--config", str(home / "cluster.toml")]
    subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    cfg = cfgmod.load(home / "cluster.toml")
    during: dict[str, float] = {}
    errors: list[str] = []

    def run_during() -> None:
        try:
            during["andrew_s"] = andrew.run_once(tree, build, mnt / "during")
        except andrew.PhaseError as e:  # a wrong answer is a finding, not a crash
            during["andrew_s"] = float("nan")
            errors.append(str(e))
        during["ended"] = time.monotonic()

    t0 = time.monotonic()
    local.start_node(cfg, NODE)
    busy = threading.Thread(target=run_during)
    busy.start()
    try:
        while (records := catch_ups(cfg, NODE)) is None:
            if time.monotonic() - t0 > 3600:
                raise RuntimeError("the newcomer did not catch up within an hour")
            time.sleep(0.5)
        caught_up_s = time.monotonic() - t0
    finally:
        busy.join()
        local.stop_node(cfg, NODE)
    rw, qu = records["rw.catchup"], records["qu.catchup"]
    return {
        "replace_s": round(caught_up_s, 1),
        "andrew_during_s": round(during["andrew_s"], 2),
        "andrew_all_during": during["ended"] <= t0 + caught_up_s,
        "bytes_read": rw.get("bytes_read", 0),
        "bytes_stored": rw.get("bytes_stored", 0),
        "blocks_done": rw.get("done", 0),
        "objects_done": qu.get("done", 0),
        "rw_state": rw.get("state"),
        "qu_state": qu.get("state"),
        "pass_s": rw.get("seconds"),
        "andrew_errors": errors,
    }


def one(rate: int, args: argparse.Namespace, tree: andrew.Tree, build: str) -> dict[str, Any]:
    policy = dataclasses.replace(VerificationPolicy(), catchup_bytes_per_second=rate).validate()
    total = int(args.gib * (1 << 30))
    map_size = max(1 << 30, 2 * total)
    with (
        tempfile.TemporaryDirectory(dir=args.work) as tmp,
        ProcessCluster(
            Path(tmp) / "c", clients=2, durable=True, map_size=map_size, verification=policy
        ) as pc,
    ):
        home = Path(tmp) / "c"
        fill_s = trio.run(fill, pc.config, total, args.block)
        settle_s = settle([p for p in (pc.pid(i) for i in range(pc.config.n)) if p is not None])
        with Mount(pc.config, Path(tmp) / "mnt", client="client1") as m:
            quiet = andrew.run_once(tree, build, m.mountpoint / "quiet")
            got = replace_and_follow(home, tree, build, m.mountpoint)
    got.update(
        rate=rate,
        fill_s=round(fill_s, 1),
        settle_s=round(settle_s, 1),
        andrew_quiet_s=round(quiet, 2),
    )
    got["slowdown"] = round(got["andrew_during_s"] / quiet, 2)
    got["read_mib_s"] = round(got["bytes_read"] / (1 << 20) / max(got["pass_s"] or 1, 1e-3), 1)
    return got


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    m = common.machine_info()
    load = m["loadavg_start"][0]
    lines = [
        f"# Replacing node {NODE} holding {args.gib:g} GiB of block data ({common.now_utc()})",
        "",
        f"{m['cores']} cores, load {load:.1f} at the start; commit "
        f"{common.commit_info()['commit'][:10]}.",
        "",
        "| throttle | replace (s) | block data read | fragments stored | read MiB/s "
        "| Andrew quiet (s) | Andrew during (s) | slowdown |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rate = "off" if r["rate"] == 0 else f"{r['rate'] / (1 << 20):g} MiB/s"
        lines.append(
            f"| {rate} | {r['replace_s']} | {r['bytes_read'] / (1 << 20):.0f} MiB "
            f"| {r['bytes_stored'] / (1 << 20):.0f} MiB | {r['read_mib_s']} "
            f"| {r['andrew_quiet_s']} | {r['andrew_during_s']} | {r['slowdown']}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=1.0, help="block data written first")
    ap.add_argument("--block", type=int, default=65536)
    ap.add_argument("--rates", default="0,8388608", help="catch-up throttles, bytes/s")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR / "replace")
    args = ap.parse_args()
    common.install_sigterm_handler()
    progress = common.Progress("replace", False)
    root = andrew.default_tree(progress) / andrew.LUA54
    tree = andrew.scan_tree(root)
    build = andrew.lua54_build()
    rows = []
    for rate in (int(x) for x in args.rates.split(",")):
        progress(f"throttle {rate} B/s: filling {args.gib:g} GiB, then replacing node {NODE}")
        row = one(rate, args, tree, build)
        progress(str(row))
        rows.append(row)
    common.write_json(
        args.out.with_suffix(".json"),
        {"args": vars(args) | {"work": None, "out": str(args.out)}, "rows": rows},
    )
    text = markdown(rows, args)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
