"""``bftfs verify`` against real node processes (issue 16): a node that was down while
files were written is brought back to full redundancy by a scrub (or by its own background
catch-up, whichever comes first), the summary says what was checked and rewritten, and a
second scrub finds every fragment of every block intact on every node."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.slow,
]


def verify(cluster: ProcessCluster, *extra: str) -> tuple[dict, str]:
    """``bftfs verify --json``: its totals and stderr; exit 1 exactly when it rewrote."""
    cmd = [sys.executable, "-m", "bftfs", "verify", "--json", *extra]
    cmd += ["--config", str(cluster.home / "cluster.toml")]
    got = subprocess.run(cmd, capture_output=True, timeout=300)
    totals = json.loads(got.stdout)
    assert got.returncode == (1 if totals["fragments_repaired"] else 0), got.stderr
    return totals, got.stderr.decode()


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[ProcessCluster, Path]]:
    with (
        ProcessCluster(tmp_path / "c", durable=False, block_size=16384) as pc,
        Mount(pc.config, tmp_path / "m", client="client0") as m,
    ):
        yield pc, m.mountpoint


def test_a_scrub_restores_full_redundancy_after_a_node_missed_writes(
    mounted: tuple[ProcessCluster, Path],
) -> None:
    cluster, mp = mounted
    rng = random.Random(5)
    for i in range(3):
        (mp / f"before{i}").write_bytes(rng.randbytes(50_000))
    first, _ = verify(cluster)
    assert first["checked"] > 0 and first["fragments_repaired"] == 0
    cluster.stop(3)
    for i in range(3):
        (mp / f"meanwhile{i}").write_bytes(rng.randbytes(50_000))
    cluster.start(3)
    second, progress = verify(cluster, "--progress")
    assert second["fragments_unreachable"] == 0 and "blocks" in progress
    third, _ = verify(cluster)
    n = cluster.config.n
    assert third["fragments_repaired"] == 0
    assert third["fragments_intact"] == third["checked"] * n
    assert third["checked"] == second["checked"] > first["checked"]
