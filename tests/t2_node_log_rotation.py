"""Local nodes' logs rotate (issue 67): a node started by ``bftfs up`` appended its stdout
and stderr to ``node<I>/node.log`` without bound; it now logs through the rotating handler
mounts use, and only what the process writes itself (a crash's stacks) goes beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bftfs import local
from bftfs.testing.processes import ProcessCluster

#: Bytes a log rotates at here: smaller than two of a node's lines, so each start's and
#: stop's lines rotate it.
SMALL = 100


@pytest.mark.slow
def test_a_local_nodes_log_rotates_at_its_size_and_keeps_three(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BFTFS_LOG_BYTES", str(SMALL))  # the nodes inherit it
    with ProcessCluster(tmp_path / "c", map_size=1 << 28, durable=False) as pc:
        for _ in range(3):  # each run logs "listening", "SIGTERM received", "stopped"
            pc.stop(0)
            pc.start(0)
        spec = pc.config.node(0)
        log = local.log_path(spec)
        names = sorted(p.name for p in log.parent.glob("node.log*"))
        assert names == ["node.log", "node.log.1", "node.log.2", "node.log.3"], names
        assert "node 0 listening" in log.read_text()  # the newest run's first line
        assert all(p.stat().st_size < 2 * SMALL for p in log.parent.glob("node.log*"))
        assert local.stderr_path(spec).read_text() == ""  # no crash, nothing of its own
