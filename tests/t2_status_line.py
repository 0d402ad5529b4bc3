"""``bftfs status`` as an operator outside the checkout meets it (issue 67): the cluster
found from ``$BFTFS_DIR`` or ``$BFTFS_CONFIG`` alone, one line when healthy (``zpool
status -x``), only the problems when not, and capacity: a node whose disk fills is
``nearfull`` at 85% and ``full`` at 95% (a small tmpfs under one node's directory, filled
by a file beside its store).  Real node processes; the commands run as child processes
from a directory outside the clone, with a ``HOME`` of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bftfs.cli.discover import SYSTEM_DIRS
from bftfs.testing.processes import ProcessCluster


def run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``bftfs ARGS`` in ``cwd`` with exactly the BFTFS_* variables of ``env`` (and a
    ``HOME`` of its own, no ``XDG_CONFIG_HOME``: no per-user cluster is found)."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith("BFTFS_") and k != "XDG_CONFIG_HOME"
    }
    return subprocess.run(
        [sys.executable, "-m", "bftfs", *args],
        cwd=cwd,
        env={**base, "HOME": str(cwd / "home"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``where`` (created) for the block's duration."""
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_to(directory: Path, fraction: float) -> None:
    """Grow ``directory/filler`` until the file system holding it is ``fraction`` used."""
    st = os.statvfs(directory)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    want = int(total * fraction) - (total - free)
    filler = directory / "filler"
    with open(filler, "ab") as f:
        f.write(b"\0" * max(want, 0))  # tmpfs: written bytes take pages, zeros too


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
@pytest.mark.slow
def test_found_without_dir_one_line_when_healthy_problems_and_capacity(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    (outside / "home").mkdir(parents=True)
    home = tmp_path / "cluster"
    with (
        tmpfs(home / "node3", "16m") as disk,
        ProcessCluster(home, t=1, b=0, map_size=1 << 26, durable=False) as pc,
    ):
        by_dir = {"BFTFS_DIR": str(home)}
        healthy = run(outside, by_dir, "status")
        assert healthy.returncode == 0, healthy.stderr
        assert healthy.stdout == f"cluster {home}: healthy (4/4 nodes up, 0 mounts)\n"
        by_config = run(outside, {"BFTFS_CONFIG": str(home / "cluster.toml")}, "status")
        assert (by_config.returncode, by_config.stdout) == (0, healthy.stdout)
        verbose = run(outside, by_dir, "status", "-v")
        assert "health: HEALTHY" in verbose.stdout and "capacity (used):" in verbose.stdout

        # Nothing to find: the error names each place searched (exit 4).
        if not any((d / "cluster.toml").exists() for d in SYSTEM_DIRS):
            lost = run(outside, {}, "status")
            assert lost.returncode == 4 and "no cluster found" in lost.stderr, lost.stderr
            mine = outside / "home" / ".config" / "bftfs" / "cluster.toml"
            assert str(mine) in lost.stderr and "nodes/cluster.toml" in lost.stderr

        # A node down: the problems only, found from the environment again.
        stopped = run(outside, by_dir, "node", "stop", "2")
        assert stopped.returncode == 0, stopped.stderr
        down = run(outside, by_dir, "status")
        assert down.returncode == 1
        lines = down.stdout.splitlines()
        assert lines[0] == f"cluster {home}: DEGRADED (3/4 nodes up, 0 mounts)", lines
        assert lines[1] == "  - node(s) 2 not answering", lines
        assert "node 0" not in down.stdout  # no table: only what is wrong
        pc.start(2)
        assert run(outside, by_dir, "status").returncode == 0

        # Node 3's disk fills: nearfull at 85% (degraded), full at 95%.
        fill_to(disk, 0.90)
        near = run(outside, by_dir, "status")
        assert near.returncode == 1, near.stdout
        assert "node 3: disk nearfull (9" in near.stdout, near.stdout
        fill_to(disk, 0.97)
        full = run(outside, by_dir, "status", "--json")
        assert full.returncode == 1
        doc = json.loads(full.stdout)
        assert doc["nodes"][3]["capacity"]["state"] == "full"
        assert [n["capacity"]["state"] for n in doc["nodes"][:3]] == ["ok"] * 3
        assert any(p.startswith("node 3: disk full") for p in doc["problems"])
        (disk / "filler").unlink()
        assert run(outside, by_dir, "status").returncode == 0
