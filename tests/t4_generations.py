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
from pathlib import Path
from typing import Any

import pytest

from bftfs import config as cfgmod
from bftfs import local
from bftfs.config import ClusterConfig
from bftfs.testing import consistency
from bftfs.testing.clis import bftfs_cli
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

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
                got = bftfs(home, "generation", "new", "--nodes", "11", "--t", "2", "--b", "2")
                assert got.returncode == 0, got.stdout + got.stderr
                assert "generation 2 of 11 nodes (t=2 b=2" in got.stdout, got.stdout
                assert "of the old generation: frozen" in got.stdout, got.stdout
                new = cfgmod.load(home / "cluster.toml")
                assert (new.n, new.t, new.b) == (11, 2, 2)
                assert all(not (s.data_dir / "lmdb").exists() for s in new.nodes)
                local.start_nodes(new)
                local.wait_ready(new)
                shown = bftfs(home, "generation", "show")
                assert shown.stdout.count("frozen (generation 1") == 6, shown.stdout
                assert shown.stdout.count("active (generation 2") == 11, shown.stdout
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


def test_the_checker_runs_through_a_generation_change_with_a_liar_in_each(
    tmp_path: Path,
) -> None:
    """Two mounts take turns on one directory, every read checked against close-to-open
    (``bftfs.testing.consistency``), while six nodes (``t = b = 1``, node 3 corrupting
    every fragment it serves) grow to eleven (``t = b = 2``, node 7 a liar too)."""
    with consistency.mounted(tmp_path, 2, node_args={3: LIAR}) as (pc, dirs):
        home = pc.home
        started: list[ClusterConfig] = []

        def grow() -> None:
            got = bftfs(home, "generation", "new", "--nodes", "11", "--t", "2", "--b", "2")
            assert "of the old generation: frozen" in got.stdout, got.stdout
            new = cfgmod.load(home / "cluster.toml")
            local.start_nodes(new, {7: LIAR})
            started.append(new)
            local.wait_ready(new)

        try:
            report = consistency.run(
                pc, dirs, seed=12, ops=120, faults=0, changes={30: ("grown to 11 nodes", grow)}
            )
            print(report.text())
            assert any(e.endswith("grown to 11 nodes done") for e in report.schedule), (
                report.schedule
            )
            assert report.steps == 120 and sum(report.ops.values()) > 80
        finally:
            for cfg in started:
                local.stop_nodes(cfg)
