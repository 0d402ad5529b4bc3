"""A client's identity outlives the removal of another's entry (issue 31, item 6), with
real node processes and mounts: removing client1 from ``cluster.toml`` used to give
client2 client1's id (ids were positions), so client2's new writes were attributed,
charged and revertible as client1's and client1's old versions were shown as client2's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bftfs.testing.clis import bftfs_cli
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")


def bftfs(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return bftfs_cli(home, *args, timeout=120.0)


def authors(home: Path, path: str) -> list[str]:
    rows: list[dict[str, Any]] = json.loads(bftfs(home, "log", path, "--json").stdout)["versions"]
    return [r["client"] for r in rows]


def remove_entry_by_hand(config: Path, name: str) -> None:
    """What an operator revoking a key does without tools: delete its [[clients]] table."""
    text = config.read_text()
    tables = text.split("\n\n")
    mine = [t for t in tables if t.startswith("[[clients]]") and f'name = "{name}"' in t]
    assert len(mine) == 1, tables
    config.write_text(text.replace(mine[0] + "\n\n", "", 1))


@pytest.mark.slow
def test_removing_a_client_keeps_every_other_identity(tmp_path: Path) -> None:
    home = tmp_path / "c"
    with ProcessCluster(home, clients=3, durable=False, map_size=1 << 28) as pc:
        with (
            Mount(pc.config, tmp_path / "m1", client="client1") as m1,
            Mount(pc.config, tmp_path / "m2", client="client2") as m2,
        ):
            (m1.mountpoint / "a").write_bytes(b"by client1")
            (m2.mountpoint / "b").write_bytes(b"by client2, first")
        assert authors(home, "fs:/a")[0] == "client1"
        remove_entry_by_hand(home / "cluster.toml", "client1")
        for i in pc.config.node_ids:  # nodes read the configuration when they start
            pc.stop(i)
            pc.start(i)
        with Mount(pc.config, tmp_path / "m2", client="client2") as m2:
            (m2.mountpoint / "b").write_bytes(b"by client2, after the removal")
        # client2 is the author of its writes before and after; client1's stays its own.
        assert set(authors(home, "fs:/b")) == {"client2"}
        assert set(authors(home, "fs:/a")) == {"client#1"}
