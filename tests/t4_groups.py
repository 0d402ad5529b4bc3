"""A cluster of three groups of six (issue 66, docs/layout.md, "Placement"), through the
real CLI, 18 real node processes and a real FUSE mount: ``bftfs up --groups 3`` makes,
starts and mounts it; a tree of 20 files is copied and read back; blocks land on every
group and the tree's directories on more than one (a new directory's group is a hash of
its parent and name, its mkdir a cross-group transaction when that is not its parent's);
a file and a directory move between directories of two groups (``os.rename``, no
EXDEV), seen from a second mount; a node's reply to ``txn.begin`` carries valid
signatures; a node refuses a block of another group (code ``misplaced``); ``bftfs
status`` shows three healthy groups, then one degraded with a node stopped, and the tree
reads back whole from a new mount with that node down and a node of another group
corrupting the fragments it serves."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from bftfs import local
from bftfs.connect import open_client
from bftfs.fsobjects.limits import ROOT
from bftfs.fsobjects.txnsign import verify
from bftfs.layout.groups import group_config, load_layout
from bftfs.layout.spread import dir_group
from bftfs.layout.txn import Driver, Part, group_keys, vouch_for
from bftfs.net.errors import RemoteError
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.qu.reply import signed_statement
from bftfs.rw.messages import block_id, encode_block_id
from bftfs.testing.mounts import fuse_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]


def bftfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a ``bftfs`` command; with ``check``, a failure says its exit code and output
    (a bare ``CalledProcessError`` left a failure in CI without its reason)."""
    run = subprocess.run(
        [sys.executable, "-m", "bftfs", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert not check or run.returncode == 0, (
        f"bftfs {' '.join(args)}: exit {run.returncode}\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
    )
    return run


def _tree(root: Path) -> dict[str, bytes]:
    """20 files over 5 directories and their subdirectories, seeded sizes from 0 to 200 KB
    (inline files and files of several blocks)."""
    rng = random.Random(66)
    files = {}
    for d in range(5):
        for f in range(4):
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


def _dirs(files: dict[str, bytes]) -> list[str]:
    return sorted({r.rsplit("/", 1)[0] for r in files})


def _apart(group: dict[str, int]) -> tuple[str, str]:
    """Two top directories on two groups (the first such pair in name order)."""
    tops = [d for d in sorted(group) if "/" not in d]
    return next((x, y) for x in tops for y in tops if group[x] != group[y])


def _same_from_a_second_mount(
    home: Path, mnt2: Path, files: dict[str, bytes], dirs: list[str]
) -> None:
    """A second mount lists ``dirs`` as ``files`` says and reads every file back."""
    mnt2.mkdir()
    bftfs("mount", "--dir", str(home), str(mnt2))
    try:
        for d in dirs:
            if not any(r.startswith(d + "/") for r in files):
                continue
            want = {r[len(d) + 1 :].split("/")[0] for r in files if r.startswith(d + "/")}
            assert set(os.listdir(mnt2 / d)) == want, d
        _same(mnt2, files)
    finally:
        bftfs("umount", str(mnt2), "--dir", str(home), check=False)


async def _signed_begin(cfg: local.ClusterConfig) -> None:
    """A ``txn.begin`` sent to every group's real node processes: the reply carries the
    signatures of at least ``q`` nodes, each valid under the key the layout names."""
    layout = load_layout(cfg)
    assert layout is not None
    keys = group_keys(layout)
    rng = random.Random(7)
    for g in layout.groups:
        part = group_config(cfg, layout, g.id)
        async with open_client(part, "client0") as ep:
            qu = QUClient(
                ep, QUThresholds.from_config(part), client_id=ep.pid, vouch=vouch_for(keys, g.id)
            )
            rec = next(o for o in iter(lambda: rng.randrange(2, 1 << 60), 0)
                       if layout.group_of_object(o) == g.id)  # fmt: skip
            driver = Driver([qu], keys, int(ep.pid), time.time_ns, rng)
            desc = driver.descriptor([Part(g.id, (rec + 1,), "fs.stat", None)], g.id, rec)
            answer, lt, sigs = await qu.update_signed(
                rec, "txn.begin", {"T": desc, "lt": time.time_ns()}
            )
            assert len(sigs) >= keys.quorums[g.id]
            stmt = signed_statement("txn.begin", (rec,), lt, answer)
            for i, sig in sigs.items():
                assert verify(keys.groups[g.id][i], stmt, sig), (g.id, i)


def test_three_groups_copy_place_refuse_status_and_a_node_down(tmp_path: Path) -> None:
    home, mnt, src = tmp_path / "c", tmp_path / "mnt", tmp_path / "src"
    src.mkdir()
    files = _tree(src)
    up = ["up", "--dir", str(home), "--groups", "3", "--mount", str(mnt), "--clients", "1"]
    try:
        out = bftfs(*up, "--map-size", "64M", "--timeout", "120").stdout
        assert "3 groups of 6 nodes over 18 nodes" in out and f"mounted {mnt}" in out
        subprocess.run(["cp", "-r", f"{src}/.", str(mnt)], check=True, timeout=300)
        cfg = local.load_cluster(home)
        layout = load_layout(cfg)
        assert layout is not None
        members = [set(g.members) for g in layout.groups]
        group = {d: layout.group_of_object(os.stat(mnt / d).st_ino) for d in _dirs(files)}
        assert len(set(group.values())) >= 2  # directories spread over groups
        a, b = _apart(group)  # two directories on two groups
        f = next(r for r in sorted(files) if r.rsplit("/", 1)[0] == a)
        os.rename(mnt / f, mnt / b / "moved")  # a cross-group rename: no EXDEV
        files[f"{b}/moved"] = files.pop(f)
        d = next((x for x in group if x.startswith(a + "/")), None)
        if d is not None:  # a directory moved across groups, its files with it
            os.rename(mnt / d, mnt / b / "movedsub")
            for r in [r for r in files if r.startswith(d + "/")]:
                files[f"{b}/movedsub/{r[len(d) + 1 :]}"] = files.pop(r)
        # A directory on another group than its parent's (the root: in a directory this
        # mount holds exclusively a new one stays in its parent's group, docs/layout.md),
        # with a file, removed again (an rmdir across groups).
        name = next(f"x{i}" for i in range(99) if dir_group(layout, ROOT, f"x{i}".encode())
                    != layout.group_of_object(ROOT))  # fmt: skip
        gone = name
        (mnt / gone).mkdir()
        (mnt / gone / "file").write_bytes(b"x" * 5000)
        assert layout.group_of_object(os.stat(mnt / gone).st_ino) != layout.group_of_object(ROOT)
        shutil.rmtree(mnt / gone)
        os.sync()
        _same(mnt, files)
        _same_from_a_second_mount(home, tmp_path / "mnt2", files, [a, b])
        assert not os.path.exists(tmp_path / "mnt" / gone)
        trio.run(_signed_begin, cfg)

        status = bftfs("status", "--dir", str(home))
        assert status.returncode == 0 and "18/18 nodes up in 3 groups" in status.stdout
        doc = json.loads(bftfs("status", "--dir", str(home), "--json").stdout)
        assert [g["state"] for g in doc["groups"]] == ["healthy"] * 3
        assert doc["layout"]["version"] == 1 and len(doc["layout"]["groups"]) == 3
        wrote = {n for n, c in _requests(doc, "rw.write.new").items() if c}
        assert sum(1 for m in members if m & wrote) >= 2  # blocks on more than one group
        objects = {n for n, c in _requests(doc, "req.qu.request").items() if c}
        assert sum(1 for m in members if m & objects) >= 2  # metadata on several groups
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
