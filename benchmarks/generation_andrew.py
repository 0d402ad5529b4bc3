"""What a generation move costs a mount meanwhile: an Andrew run while ``bftfs generation
move`` runs, throttle off and on (issue 35; ``docs/membership.md``, "Generations: the mover
and finishing").  The replacement of a node has the same figures in ``replace.py``.

For each mover throttle given (``--rates``, ``--bytes-per-second`` of block data; 0: no
limit), on a fresh cluster of six real node processes (``t = b = 1``, durable commits):

1. a tree is written through a file system (``generation_move.fill``: ``--small`` files of
   1-4 KiB and ``--big`` files of ``--mib`` MiB), the nodes are left to finish verifying it,
   and one Andrew run (``andrew.py``'s short tree, Lua 5.4 from the pinned lupa sdist) on a
   mount measures the quiet cluster;
2. ``bftfs generation new --nodes N`` (``--nodes``, default 7: the same ``t = b = 1``, one
   node more, so every object and block is re-encoded for ``n = 7``), the new generation's
   node processes are started, then ``bftfs generation move --bytes-per-second R`` and a
   second Andrew run on the same mount start at once;
3. the move's time (the command's whole run), its counts (the cursor, ``move.json``), the
   Andrew run's time against the quiet one, and CPU seconds over the busy window (from the
   start to the later of the move's and Andrew's ends) of the old nodes, the new nodes, the
   mount daemon and the mover; then ``bftfs generation finish``, the old nodes are stopped,
   a third Andrew run measures the new generation alone (the slowdown is the run during
   the move against the mean of the runs before and after: the load of a shared machine
   drifts), and the written tree is read back through the mount, every file against its
   CRC.

Prints one line per throttle and writes ``--out`` (``.json`` and ``.md``).  Thirteen node
processes, a mount, the mover and the compiler share the machine: compare rows of one run
only.

Usage::

    .venv/bin/python benchmarks/generation_andrew.py --big 16 --mib 16 --rates 0,2097152
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import andrew
import common
import trio
from generation_move import fill, tree_bytes
from profiling import cpu_seconds, settle

from bftfs import config as cfgmod
from bftfs import local
from bftfs.config import ClusterConfig
from bftfs.fs.generations import MoveState, cursor_path
from bftfs.testing.mounts import Mount
from bftfs.testing.processes import ProcessCluster

#: The generation moved to (a fresh cluster is generation 1).
TARGET = 2


def node_pids(cfg: ClusterConfig) -> list[int]:
    """The running nodes' pids of the generation ``cfg`` describes."""
    return [p for p in (local.running_pid(s) for s in cfg.nodes) if p is not None]


def cpu_of(pids: list[int]) -> float:
    """CPU seconds so far of the processes still running among ``pids``."""
    return sum(cpu_seconds(p) or 0.0 for p in pids)


def bftfs_cmd(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "bftfs", *args, "--config", str(home / "cluster.toml")]


def run_cmd(home: Path, *args: str) -> str:
    """A ``bftfs`` command on the cluster in ``home``; its output.

    Raises:
        RuntimeError: it failed (its output is in the message: a finding, not a crash to
            guess at).
    """
    got = subprocess.run(bftfs_cmd(home, *args), capture_output=True, text=True, timeout=600)
    if got.returncode != 0:
        raise RuntimeError(
            f"bftfs {' '.join(args)}: exit {got.returncode}\n{got.stdout}{got.stderr}"
        )
    return got.stdout


def move_beside_andrew(
    home: Path, rate: int, tree: andrew.Tree, build: str, mnt: Path, mount_pid: int | None
) -> dict[str, Any]:
    """Step 2's move and Andrew run at once on the open mount ``mnt``; the figures."""
    old_cfg = cfgmod.load(home / "cluster.generation1.toml")
    new_cfg = cfgmod.load(home / "cluster.toml")
    old, new = node_pids(old_cfg), node_pids(new_cfg)
    mount = [mount_pid] if mount_pid is not None else []
    during: dict[str, Any] = {"errors": []}

    def run_during() -> None:
        try:
            during["andrew_s"] = andrew.run_once(tree, build, mnt / "during")
        except andrew.PhaseError as e:  # a wrong answer is a finding, not a crash
            during["andrew_s"] = float("nan")
            during["errors"].append(str(e))
        during["ended"] = time.monotonic()

    log = home / f"move-{rate}.log"
    cpu0 = {"old": cpu_of(old), "new": cpu_of(new), "mount": cpu_of(mount)}
    t0 = time.monotonic()
    with log.open("w") as out:
        mover = subprocess.Popen(
            bftfs_cmd(home, "generation", "move", "--bytes-per-second", str(rate)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    busy = threading.Thread(target=run_during)
    busy.start()
    # wait4, not Popen.wait: the mover's own CPU seconds come with its exit status.
    _, status, usage = os.wait4(mover.pid, 0)
    mover.returncode = os.waitstatus_to_exitcode(status)
    move_s = time.monotonic() - t0
    busy.join()
    window_s = max(move_s, during["ended"] - t0)
    cpu = {k: round(cpu_of(p) - cpu0[k], 1) for k, p in (("old", old), ("new", new))}
    cpu["mount"] = round(cpu_of(mount) - cpu0["mount"], 1)
    cpu["mover"] = round(usage.ru_utime + usage.ru_stime, 1)
    state = MoveState.load(cursor_path(home, TARGET))
    text = log.read_text(errors="replace")
    if mover.returncode != 0 or state is None or not state.complete:
        raise RuntimeError(f"bftfs generation move: exit {mover.returncode}\n{text[-3000:]}")
    return {
        "move_s": round(move_s, 1),
        "andrew_during_s": round(during["andrew_s"], 2),
        "andrew_within_move": during["ended"] <= t0 + move_s,
        "andrew_errors": during["errors"],
        "window_s": round(window_s, 1),
        "cpu_s": cpu,
        "objects": dict(state.objects),
        "blocks": dict(state.blocks),
        "bytes_moved": state.bytes,
        "summary": state.summary(),
    }


def check_tree(where: Path, crcs: dict[str, int]) -> tuple[int, float]:
    """Read every file of the written tree through the mount against its CRC; the files
    read and seconds taken.

    Raises:
        RuntimeError: a file is missing, an extra one is listed, or one reads wrong.
    """
    t0 = time.monotonic()
    listed = set(os.listdir(where))
    if listed != set(crcs):
        lost, extra = sorted(set(crcs) - listed), sorted(listed - set(crcs))
        raise RuntimeError(f"{where}: missing {lost[:10]}, extra {extra[:10]}")
    for name, want in crcs.items():
        crc = 0
        with open(where / name, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
        if crc != want:
            raise RuntimeError(f"{where / name}: CRC {crc:08x}, written {want:08x}")
    return len(crcs), time.monotonic() - t0


def one(rate: int, args: argparse.Namespace, tree: andrew.Tree, build: str) -> dict[str, Any]:
    """One row: a fresh cluster, filled, settled, a quiet Andrew run, the move beside a
    second one, finish, the tree read back."""
    got: dict[str, Any] = {"rate": rate, "load_start": round(os.getloadavg()[0], 1)}
    map_size = max(1 << 30, 4 * tree_bytes(args.small, args.big, args.mib))
    with tempfile.TemporaryDirectory(dir=args.work) as tmp, contextlib.ExitStack() as stack:
        home = Path(tmp) / "c"
        pc = stack.enter_context(ProcessCluster(home, clients=2, durable=True, map_size=map_size))
        t0 = time.monotonic()
        crcs = trio.run(fill, pc.config, args.small, args.big, args.mib)
        got["fill_s"] = round(time.monotonic() - t0, 1)
        got["settle_s"] = round(settle(node_pids(pc.config), deadline_s=args.settle), 1)
        # Stopped after the mount (exit order), before the old generation (ProcessCluster).
        stack.callback(lambda: local.stop_nodes(cfgmod.load(home / "cluster.toml")))
        m = stack.enter_context(Mount(pc.config, Path(tmp) / "mnt", client="client1"))
        mount_pid = m.proc.pid if m.proc is not None else None
        watched = [*node_pids(pc.config), *([mount_pid] if mount_pid else [])]
        cpu0, t0 = cpu_of(watched), time.monotonic()
        got["andrew_quiet_s"] = round(andrew.run_once(tree, build, m.mountpoint / "quiet"), 2)
        got["quiet_cpu_s"] = round(cpu_of(watched) - cpu0, 1)
        got["new_out"] = run_cmd(
            home, "generation", "new", "--nodes", str(args.nodes), "--t", "1", "--b", "1"
        )
        new_cfg = cfgmod.load(home / "cluster.toml")
        local.start_nodes(new_cfg)
        local.wait_ready(new_cfg)
        got.update(move_beside_andrew(home, rate, tree, build, m.mountpoint, mount_pid))
        got["finish_out"] = run_cmd(home, "generation", "finish")
        for i in range(pc.config.n):  # retired: the tree must read from the new ones alone
            pc.stop(i)
        got["andrew_after_s"] = round(andrew.run_once(tree, build, m.mountpoint / "after"), 2)
        got["checked_files"], check_s = check_tree(m.mountpoint / "tree", crcs)
        got["check_s"] = round(check_s, 1)
    got["load_end"] = round(os.getloadavg()[0], 1)
    # Against both quiet runs, one before and one after: the load of a shared machine
    # drifts over a row's minutes, and they bracket the run during the move.
    quiet = (got["andrew_quiet_s"] + got["andrew_after_s"]) / 2
    got["slowdown"] = round(got["andrew_during_s"] / quiet, 2)
    got["move_mib_s"] = round(got["bytes_moved"] / (1 << 20) / max(got["move_s"], 1e-3), 1)
    return got


def fmt_rate(rate: int) -> str:
    return "off" if rate == 0 else f"{rate / (1 << 20):g} MiB/s"


def line(r: dict[str, Any]) -> str:
    """One row as a line of text (printed as each row ends)."""
    return (
        f"throttle {fmt_rate(r['rate'])}: move {r['move_s']} s, "
        f"{r['objects'].get('moved', 0)} objects moved "
        f"({r['objects'].get('here', 0)} already there), "
        f"{r['blocks'].get('copied', 0)} blocks ({r['bytes_moved'] / (1 << 20):.0f} MiB), "
        f"Andrew {r['andrew_quiet_s']} s quiet, {r['andrew_during_s']} s during, "
        f"{r['andrew_after_s']} s after ({r['slowdown']}x), load {r['load_start']}-{r['load_end']}"
    )


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    m = common.machine_info()
    size = tree_bytes(args.small, args.big, args.mib)
    lines = [
        f"# Andrew during a generation move, 6 -> {args.nodes} nodes ({common.now_utc()})",
        "",
        f"`benchmarks/generation_andrew.py --small {args.small} --big {args.big} "
        f"--mib {args.mib} --nodes {args.nodes}`: {args.small} files of 1-4 KiB and "
        f"{args.big} of {args.mib} MiB ({size / (1 << 20):.0f} MiB) written through a file "
        f"system; {m['cores']} cores; commit {common.commit_info()['commit'][:10]}.",
        "",
        "| throttle | move | objects moved | blocks copied | move MiB/s | Andrew before "
        "| Andrew during | Andrew after | slowdown | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        within = "" if r["andrew_within_move"] else " (move ended first)"
        lines.append(
            f"| {fmt_rate(r['rate'])} | {r['move_s']} s | {r['objects'].get('moved', 0)} "
            f"| {r['blocks'].get('copied', 0)} ({r['bytes_moved'] / (1 << 20):.0f} MiB) "
            f"| {r['move_mib_s']} | {r['andrew_quiet_s']} s | {r['andrew_during_s']} s "
            f"| {r['andrew_after_s']} s | {r['slowdown']}x{within} "
            f"| {r['load_start']}-{r['load_end']} |"
        )
    lines += [
        "",
        "Andrew before: on the settled cluster before `generation new`; after: once "
        "`generation finish` ran and the old nodes were stopped (the new generation "
        "alone); slowdown: during against the mean of the two.",
        "",
        "CPU seconds over the busy window (move start to the later of its end and Andrew's):",
        "",
        "| throttle | window | old nodes | new nodes | mount | mover | quiet Andrew: nodes "
        "+ mount |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r["cpu_s"]
        lines.append(
            f"| {fmt_rate(r['rate'])} | {r['window_s']} s | {c['old']} | {c['new']} "
            f"| {c['mount']} | {c['mover']} | {r['quiet_cpu_s']} |"
        )
    lines += [
        "",
        "Per row: fill, settle, the tree read back after `finish` (old nodes stopped):",
        "",
    ]
    for r in rows:
        lines.append(
            f"- {fmt_rate(r['rate'])}: fill {r['fill_s']} s, settle {r['settle_s']} s, "
            f"{r['checked_files']} files read back in {r['check_s']} s; mover: {r['summary']}"
            + (f"; Andrew errors: {r['andrew_errors']}" if r["andrew_errors"] else "")
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--small", type=int, default=300, help="files of 1-4 KiB")
    ap.add_argument("--big", type=int, default=16, help="big files")
    ap.add_argument("--mib", type=int, default=16, help="MiB per big file")
    ap.add_argument("--nodes", type=int, default=7, help="the new generation's (t = b = 1)")
    ap.add_argument("--rates", default="0,2097152", help="mover throttles, bytes/s")
    ap.add_argument("--settle", type=float, default=180.0, help="most seconds to settle")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR / "generation-andrew")
    args = ap.parse_args(argv)
    args.rate_list = [int(x) for x in args.rates.split(",")]
    if any(r < 0 for r in args.rate_list):
        ap.error("--rates: bytes/s, 0 for no limit")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.install_sigterm_handler()
    progress = common.Progress("generation-andrew", False)
    tree = andrew.scan_tree(andrew.default_tree(progress) / andrew.LUA54)
    build = andrew.lua54_build()
    rows = []
    for rate in args.rate_list:
        progress(f"throttle {fmt_rate(rate)}: fill, quiet Andrew, move to {args.nodes} nodes")
        row = one(rate, args, tree, build)
        rows.append(row)
        print(line(row), flush=True)
    common.write_json(
        args.out.with_suffix(".json"),
        {
            "args": {k: v for k, v in vars(args).items() if k != "work"} | {"out": str(args.out)},
            "machine": common.machine_info(),
            "rows": rows,
        },
    )
    text = markdown(rows, args)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
