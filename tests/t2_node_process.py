"""Real node processes: the CLI lifecycle, SIGTERM shutdown, SIGKILL and restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from bftfs import local
from bftfs.connect import open_client
from bftfs.testing.processes import ProcessCluster

BFTFS = [sys.executable, "-m", "bftfs"]


def bftfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BFTFS, *args], capture_output=True, text=True, check=check, timeout=120)


def test_cli_init_up_status_down(tmp_path: Path) -> None:
    home = tmp_path / "nodes"
    try:
        out = bftfs(
            "up", "--dir", str(home), "--t", "1", "--b", "0", "--map-size", "64M", "--no-mount"
        ).stdout
        assert "created a cluster of 4 nodes" in out and "bftfs cluster up" in out
        status = bftfs("status", "-v", "--dir", str(home))
        assert status.returncode == 0 and status.stdout.count(" up ") == 4
        assert "unverified" in status.stdout and "verification off" not in status.stdout
        cfg = local.load_cluster(home)
        assert all(local.running_pid(s) for s in cfg.nodes)
        assert "stopped 4 node(s)" in bftfs("down", "--dir", str(home)).stdout
        assert not any(local.running_pid(s) for s in cfg.nodes)
        status = bftfs("status", "-v", "--dir", str(home), check=False)
        assert status.returncode == 2 and status.stdout.count(" down ") == 4  # unavailable
        log = (home / "node0" / "node.log").read_text()
        assert "SIGTERM received, shutting down" in log
    finally:
        bftfs("down", "--dir", str(home), check=False)


def test_bad_configuration_exits_3_and_names_the_rule(tmp_path: Path) -> None:
    r = bftfs(
        "init", "--dir", str(tmp_path / "c"), "--t", "1", "--b", "1", "--qc", "5", check=False
    )
    assert r.returncode == 3
    assert "QC <= N - t - b" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "c").exists()


def test_node_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    cfg = local.init_cluster(tmp_path / "c", map_size=1 << 26)
    cfg.node(0).key_path.chmod(0o644)
    r = bftfs("node", "--config", str(tmp_path / "c" / "cluster.toml"), "--id", "0", check=False)
    assert r.returncode == 5 and "accessible by others" in r.stderr


def test_sigkilled_node_restarts_with_its_data(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path / "c", map_size=1 << 26) as pc:
        before = trio.run(local.query_status, pc.config)[2].stats
        assert before is not None
        pc.kill(2)
        statuses = trio.run(local.query_status, pc.config)
        assert not statuses[2].up and all(s.up for s in statuses if s.id != 2)
        pc.start(2)

        async def ping() -> dict[str, object]:
            async with open_client(pc.config) as ep:
                return await ep.call(2, "stats", None)  # type: ignore[no-any-return]

        after = trio.run(ping)
        assert after["lmdb_bytes"] >= before["lmdb_bytes"]
