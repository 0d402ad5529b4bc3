"""A cluster of three groups of six (issue 66, docs/layout.md, "Placement"), through the
real CLI, 18 real node processes and a real FUSE mount: ``bftfs up --groups 3`` makes,
starts and mounts it; a tree of 50 files is copied and read back; blocks land on every
group while every object of the tree lives in its root's group (a create and a mkdir
are two-object updates, kept in the parent's group); a rename between directories
works; a node refuses a block of another group (code ``misplaced``); ``bftfs status``
shows three healthy groups, then one degraded with a node stopped, and the tree reads
back whole from a new mount with that node down and a node of another group corrupting
the fragments it serves."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from bftfs import local
from bftfs.connect import open_client
from bftfs.fsobjects.limits import ROOT
from bftfs.layout.groups import group_config, load_layout
from bftfs.net.errors import RemoteError
from bftfs.rw.messages import block_id, encode_block_id
from bftfs.testing.mounts import fuse_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]


def bftfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bftfs", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=300,
    )


def _tree(root: Path) -> dict[str, bytes]:
    """50 files over 5 directories and their subdirectories, seeded sizes from 0 to 200 KB
    (inline files and files of several blocks)."""
    rng = random.Random(66)
    files = {}
    for d in range(5):
        for f in range(10):
            rel = f"d{d}/" + ("sub/" if f % 2 else "") + f"f{f}"
            files[rel] = rng.randbytes(rng.choice([0, 700, 30_000, 70_000, 200_000]))
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _same(mnt: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (mnt / rel).read_bytes() == data, rel


def _requests(doc: dict, key: str) -> dict[int, int]:
    return {
        n["id"]: (n["stats"] or {}).get("requests", {}).get(key, 0) for n in doc["nodes"] if n["up"]
    }


async def _misplaced(cfg: local.ClusterConfig) -> RemoteError:
    """A block of group 1 asked of node 0 of group 0: the node refuses it."""
    layout = load_layout(cfg)
    assert layout is not None
    block = next(b for b in (block_id(9, i) for i in range(256)) if layout.group_of_block(b) == 1)
    part = group_config(cfg, layout, 0)
    async with open_client(part, "client0") as ep:
        with pytest.raises(RemoteError) as e:
            await ep.call(0, "rw.read_latest", {"v": 1, "b": encode_block_id(block), "d": True})
    return e.value


def test_three_groups_copy_place_refuse_status_and_a_node_down(tmp_path: Path) -> None:
    home, mnt, src = tmp_path / "c", tmp_path / "mnt", tmp_path / "src"
    src.mkdir()
    files = _tree(src)
    up = ["up", "--dir", str(home), "--groups", "3", "--mount", str(mnt), "--clients", "1"]
    try:
        out = bftfs(*up, "--map-size", "64M", "--timeout", "120").stdout
        assert "3 groups of 6 nodes over 18 nodes" in out and f"mounted {mnt}" in out
        subprocess.run(["cp", "-r", f"{src}/.", str(mnt)], check=True, timeout=300)
        os.rename(mnt / "d0" / "f0", mnt / "d1" / "moved")  # two directories, one group
        files["d1/moved"] = files.pop("d0/f0")
        os.sync()
        _same(mnt, files)
        cfg = local.load_cluster(home)
        layout = load_layout(cfg)
        assert layout is not None
        members = [set(g.members) for g in layout.groups]

        status = bftfs("status", "--dir", str(home))
        assert status.returncode == 0 and "18/18 nodes up in 3 groups" in status.stdout
        doc = json.loads(bftfs("status", "--dir", str(home), "--json").stdout)
        assert [g["state"] for g in doc["groups"]] == ["healthy"] * 3
        assert doc["layout"]["version"] == 1 and len(doc["layout"]["groups"]) == 3
        wrote = {n for n, c in _requests(doc, "rw.write.new").items() if c}
        assert sum(1 for m in members if m & wrote) >= 2  # blocks on more than one group
        objects = {n for n, c in _requests(doc, "req.qu.request").items() if c}
        assert objects and objects <= members[layout.group_of_object(ROOT)]
        assert not any(_requests(doc, "refused.misplaced").values())  # the mount routes right

        refused = trio.run(_misplaced, cfg)
        assert refused.code == "misplaced" and "lives on group 1" in refused.message
        doc = json.loads(bftfs("status", "--dir", str(home), "--json").stdout)
        node0 = layout.groups[0].members[0]
        assert _requests(doc, "refused.misplaced")[node0] == 1

        liar = sorted(members[0])[1]  # it lies as its group's node (its index, its n)
        bftfs("node", "restart", str(liar), "--byzantine", "corrupt-fragments", "--dir", str(home))
        victim = sorted(members[1])[2]
        bftfs("node", "stop", str(victim), "--dir", str(home))
        status = bftfs("status", "--dir", str(home), "--json", check=False)
        assert status.returncode == 1
        groups = json.loads(status.stdout)["groups"]
        assert [g["state"] for g in groups] == ["healthy", "degraded", "healthy"]
        assert groups[1]["down"] == [victim]
        bftfs("umount", str(mnt), "--dir", str(home))
        bftfs("mount", "--dir", str(home), str(mnt))  # nothing cached: read from the nodes
        _same(mnt, files)
    finally:
        bftfs("down", "--dir", str(home), "--force", check=False)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
