"""A command that needs the cluster fails fast when no quorum of nodes accepts a
connection (issue 67): ``bftfs log`` waited out 50 s of retries before saying that the
cluster does not answer, with every node refusing connections.  Now it tries the nodes'
ports for 2 s (etcdctl's dial timeout), and a node counts those probes apart from the
connections it refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from bftfs import local
from bftfs.cli.reach import accepting
from bftfs.testing.clis import bftfs_cli
from bftfs.testing.processes import ProcessCluster


@pytest.mark.slow
def test_history_and_verify_say_the_cluster_does_not_answer_when_no_node_listens(
    tmp_path: Path,
) -> None:
    home = tmp_path / "c"
    init = [sys.executable, "-m", "bftfs", "init", "--dir", str(home), "--map-size", "64M"]
    subprocess.run(init, capture_output=True, check=True, timeout=120)  # not started
    for args in (["log", "/"], ["cat", "/f", "--at", "-1m"], ["verify"]):
        r = bftfs_cli(home, *args, check=False)
        assert r.returncode == 4, (args, r.stderr)
        assert "the cluster does not answer: node(s) 0, 1, 2, 3, 4, 5 refuse" in r.stderr
        assert "within 2 s" in r.stderr and "Traceback" not in r.stderr


def test_a_probe_is_counted_as_one_not_as_a_refused_connection(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path / "c", map_size=1 << 28, durable=False) as pc:
        up = trio.run(accepting, pc.config)
        assert len(up) >= pc.config.n - pc.config.t
        statuses = trio.run(local.query_status, pc.config)
        probed = [s for s in statuses if s.id in up]
        for s in probed:
            assert s.stats is not None
            assert s.stats["requests"].get("probes") == 1, s.stats["requests"]
            assert not s.stats["rejected"], s.stats["rejected"]
