"""A new generation online with real node processes (issue 35; docs/membership.md,
"Generations"): six nodes with ``t = b = 1`` grow to eleven with ``t = b = 2`` while a mount
keeps running.  ``bftfs generation new`` makes the eleven new nodes' keys and issues the
view; the six old nodes freeze; the eleven are started.  The mount opened before the
change takes the view from the nodes, reads every file (objects it touches move, blocks
are read from the old generation until rewritten), and writes, appends, renames and
removes through the new generation; a mount opened afterwards on the new configuration
sees the same tree; what was written after the change reads with every old node stopped."""

from __future__ import annotations

import os
import random
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bftfs import config as cfgmod
from bftfs import local
from bftfs.config import ClusterConfig
from bftfs.testing import consistency, registers
from bftfs.testing.clis import bftfs_cli
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster, wait_caught_up

OPTIONS: dict[str, Any] = {"clients": 2, "durable": False, "map_size": 1 << 28}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]


def bftfs(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return bftfs_cli(home, *args, timeout=120.0)


def tree(block_size: int) -> dict[str, bytes]:
    """Small files and files of several blocks, in nested directories (seeded)."""
    rng = random.Random(36)
    files = {f"small/f{i}.txt": f"small file {i}\n".encode() * (i + 1) for i in range(8)}
    for i in range(3):
        files[f"big/d{i}/blocks{i}.bin"] = rng.randbytes(block_size * (i + 2) + 100)
    return files


def write_synced(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def differing(root: Path, files: dict[str, bytes]) -> list[str]:
    """The files that do not read back byte for byte (or are missing)."""
    out = []
    for rel, data in files.items():
        try:
            if (root / rel).read_bytes() != data:
                out.append(rel)
        except OSError as e:
            out.append(f"{rel}: {e}")
    return out


def test_six_nodes_grow_to_eleven_with_b_two_under_a_running_mount(tmp_path: Path) -> None:
    home = tmp_path / "c"
    with ProcessCluster(home, **OPTIONS) as pc:
        old = pc.config
        files = tree(old.block_size)
        new = None
        try:
            with Mount(old, tmp_path / "through", client="client1") as through:
                root = through.mountpoint
                for rel, data in files.items():
                    write_synced(root, rel, data)
                # Cut short after the view was issued (--offline: as a kill before the push),
                # then run again: the same view is pushed, nothing is made twice.
                grow = ("generation", "new", "--nodes", "11", "--t", "2", "--b", "2")
                got = bftfs(home, *grow, "--offline")
                assert "generation 2 of 11 nodes (t=2 b=2" in got.stdout, got.stdout
                assert "not pushed" in got.stdout, got.stdout
                got = bftfs(home, *grow)
                assert "view 2 starts generation 2 already" in got.stdout, got.stdout
                assert "of the old generation: frozen" in got.stdout, got.stdout
                new = cfgmod.load(home / "cluster.toml")
                assert (new.n, new.t, new.b) == (11, 2, 2)
                assert all(not (s.data_dir / "lmdb").exists() for s in new.nodes)
                local.start_nodes(new)
                local.wait_ready(new)
                shown = bftfs(home, "generation", "show")
                assert shown.stdout.count("frozen (generation 1") == 6, shown.stdout
                assert shown.stdout.count("active (generation 2") == 11, shown.stdout
                status = bftfs_cli(home, "status", "-v", check=False, timeout=120.0).stdout
                assert "view 2, generation 2, moving from generation 1 (6 nodes" in status
                assert "move: not run yet (`bftfs generation move`)" in status, status
                # The mount opened in generation 1 goes on: reads, then changes.
                assert differing(root, files) == []
                write_synced(root, "after.txt", b"written in generation 2\n")
                files["after.txt"] = b"written in generation 2\n"
                with open(root / "big/d0/blocks0.bin", "ab") as f:
                    f.write(b"appended")
                    os.fsync(f.fileno())
                files["big/d0/blocks0.bin"] += b"appended"
                os.rename(root / "small/f0.txt", root / "big/f0.txt")
                files["big/f0.txt"] = files.pop("small/f0.txt")
                os.unlink(root / "small/f1.txt")
                del files["small/f1.txt"]
                assert differing(root, files) == []
            # A mount opened now, from the new configuration, sees the same tree.
            with Mount(new, tmp_path / "fresh", client="client0") as fresh:
                assert differing(fresh.mountpoint, files) == []
                assert not (fresh.mountpoint / "small/f1.txt").exists()
                assert sorted(os.listdir(fresh.mountpoint / "small")) == sorted(
                    f"f{i}.txt" for i in range(2, 8)
                )
            # What was written after the change lives in generation 2 alone: with every node
            # of generation 1 stopped, a new mount reads it (the root moved with the create,
            # the file was made in generation 2).
            for i in range(old.n):
                pc.stop(i)
            with Mount(new, tmp_path / "later", client="client0") as later:
                assert (later.mountpoint / "after.txt").read_bytes() == files["after.txt"]
        finally:
            if new is not None:
                local.stop_nodes(new)


LIAR = ["--byzantine", "corrupt-fragments"]


def test_the_checker_runs_through_growth_to_eleven_and_back_with_a_liar_in_each(
    tmp_path: Path,
) -> None:
    """Two mounts take turns on one directory, every read checked against close-to-open
    (``bftfs.testing.consistency``), while six nodes (``t = b = 1``, node 3 corrupting every
    fragment it serves) grow to eleven (``t = b = 2``, node 7 a liar), everything moves
    and the six retire, then the eleven shrink back to six (``t = b = 1``, node 2 a liar),
    everything moves again and the eleven retire.  The retired nodes keep running; a mount
    from a bundle made in the first view then learns the newest view through them and
    reads what the checker wrote.

    Throughout, two more threads (one per mount) read and rewrite two fixed-size files at
    once, and their history is checked for linearizability (``bftfs.testing.registers``).
    Nodes are killed during both moves, one fault beside each generation's liar where the
    thresholds allow two (``t = 2``): node 9 of the eleven (the new generation) is killed
    before the first move and restarted after it, node 5 of the eleven (now the old
    generation) before the second move and restarted after it; each then catches up and the
    generation is finished."""
    with consistency.mounted(tmp_path, 2, node_args={3: LIAR}) as (pc, dirs):
        home = pc.home
        bftfs_cli(home, "bundle", "--client", "client1", "-o", str(tmp_path / "laptop.tgz"))
        started: list[ClusterConfig] = []

        def new_generation(n: int, t: int, liar: int) -> Callable[[], None]:
            def change() -> None:
                got = bftfs(
                    home, "generation", "new", "--nodes", str(n), "--t", str(t), "--b", str(t)
                )
                assert "of the old generation: frozen" in got.stdout, got.stdout
                cfg = cfgmod.load(home / "cluster.toml")
                local.start_nodes(cfg, {liar: LIAR})
                started.append(cfg)
                local.wait_ready(cfg)

            return change

        def move_and_finish(down: int) -> Callable[[], None]:
            """Move with node ``down`` of the eleven killed, restart it, finish."""

            def change() -> None:
                cfg = started[0]
                local.stop_node(cfg, down, kill=True)
                moved = bftfs(home, "generation", "move")
                assert "complete" in moved.stdout, moved.stdout
                local.start_node(cfg, down)
                local.wait_ready(cfg, nodes=[down])
                wait_caught_up(cfg, down, seconds=120.0)
                done = bftfs(home, "generation", "finish")
                assert "may be powered off" in done.stdout, done.stdout

            return change

        def alone() -> None:
            shown = bftfs(home, "generation", "show").stdout
            assert "moving" not in shown and shown.count("active (generation 3") == 6, shown

        changes: dict[int, consistency.Change] = {
            10: ("grown to 11 nodes, t = b = 2", new_generation(11, 2, 7)),
            30: ("moved with node 9 of the eleven down, 6 retired", move_and_finish(9)),
            50: ("shrunk to 6 nodes, t = b = 1", new_generation(6, 1, 2)),
            70: ("moved with node 5 of the eleven down, 11 retired", move_and_finish(5)),
            90: ("generation 3 alone", alone),
        }
        try:
            with registers.running(dirs, seed=12) as concurrent:
                report = consistency.run(pc, dirs, seed=12, ops=120, faults=0, changes=changes)
            print(report.text())
            print(concurrent.history.text())
            # Each mount read the other's writes, through every generation.
            assert concurrent.own_and_others()["other"] > 20, concurrent.own_and_others()
            done = [e for e in report.schedule if e.endswith("done")]
            # (a change starts once the one before it ended: the last ops ran on generation 3)
            assert len(done) == 5 and done[-2].startswith("op 90"), report.schedule
            assert report.steps == 120 and sum(report.ops.values()) > 80
            shown = bftfs(home, "generation", "show").stdout
            assert "generation 3" in shown and shown.count("active (generation 3") == 6, shown
            # A laptop's bundle from view 1 names the first six nodes (retired): it learns
            # the newest view through them and the eleven, and reads what the others wrote.
            with tarfile.open(tmp_path / "laptop.tgz") as tar:
                tar.extractall(tmp_path / "laptop", filter="data")
            stale = cfgmod.load(tmp_path / "laptop" / "cluster.toml")
            names = sorted(p.name for p in dirs[0].iterdir())
            with Mount(stale, tmp_path / "laptop-mnt", client="client1") as laptop:
                work = laptop.mountpoint / dirs[0].name
                assert sorted(p.name for p in work.iterdir()) == names
                for name in names:
                    assert (work / name).read_bytes() == (dirs[0] / name).read_bytes()
        finally:
            for cfg in started:
                local.stop_nodes(cfg)
