"""One liar in every group (issue 66's "Scale shown": the Byzantine campaign with one liar
per group), through the real CLI, 18 real node processes and real FUSE mounts.

``bftfs up --groups 3``; then one node of each group restarts as a Byzantine profile, a
different one per group (``bftfs node restart I --byzantine P``: it lies as its group's
node): group 0's corrupts every fragment it serves, group 1's is ``rational`` (drops one
block in two of the fragments it is sent while answering OK, skips verification, answers
audits with stale fragments), group 2's refuses every request.  A tree of 50 files is
copied in with the liars in place, a file and a directory move between directories of two
groups (cross-group transactions, whose votes and decisions each group's nodes sign: the
liar among them), and the tree reads back whole from the mount, then from a second mount
of the other client while the first still holds its leases, then from a fresh mount with
nothing cached (every block from the nodes)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from t4_groups import _apart, _dirs, _same, _tree, bftfs

from bftfs import local
from bftfs.layout.groups import load_layout
from bftfs.testing.mounts import fuse_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]

#: The profile of each group's liar (``bftfs/testing/byzantine/profiles.py``).
LIARS = ("corrupt-fragments", "rational", "reject-everything")


def _faults(home: Path) -> list[dict[str, dict[str, int]]]:
    """What each mount reported at its end as "faults detected per node" (global ids)."""
    out = []
    for log in (home / "mounts").glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "faults detected per node: " in line:
                out.append(json.loads(line.split("faults detected per node: ", 1)[1]))
    return out


def test_one_byzantine_node_per_group_copy_move_and_read_back(tmp_path: Path) -> None:
    home, mnt, mnt2, src = tmp_path / "c", tmp_path / "mnt", tmp_path / "mnt2", tmp_path / "src"
    src.mkdir()
    files = _tree(src)
    up = ["up", "--dir", str(home), "--groups", "3", "--no-mount", "--clients", "2"]
    try:
        bftfs(*up, "--map-size", "64M", "--timeout", "120")
        cfg = local.load_cluster(home)
        layout = load_layout(cfg)
        assert layout is not None
        liars = {}
        for g, profile in zip(layout.groups, LIARS, strict=True):
            liar = g.members[(g.id + 1) % len(g.members)]  # not always its group's first
            bftfs("node", "restart", str(liar), "--byzantine", profile, "--dir", str(home))
            liars[liar] = profile
        bftfs("mount", "--dir", str(home), str(mnt))
        subprocess.run(["cp", "-r", f"{src}/.", str(mnt)], check=True, timeout=300)
        group = {d: layout.group_of_object(os.stat(mnt / d).st_ino) for d in _dirs(files)}
        a, b = _apart(group)  # two directories on two groups
        f = next(r for r in sorted(files) if r.rsplit("/", 1)[0] == a)
        os.rename(mnt / f, mnt / b / "moved")  # a cross-group rename with a liar per group
        files[f"{b}/moved"] = files.pop(f)
        d = next((x for x in group if x.startswith(a + "/")), None)
        if d is not None:
            os.rename(mnt / d, mnt / b / "movedsub")
            for r in [r for r in files if r.startswith(d + "/")]:
                files[f"{b}/movedsub/{r[len(d) + 1 :]}"] = files.pop(r)
        os.sync()
        _same(mnt, files)

        mnt2.mkdir()
        bftfs("mount", "--dir", str(home), "--as", "client1", str(mnt2))
        try:  # another client, while the first mount still holds its leases
            _same(mnt2, files)
            assert not (mnt2 / f).exists()
        finally:
            bftfs("umount", str(mnt2), "--dir", str(home), check=False)
        bftfs("umount", str(mnt), "--dir", str(home))
        bftfs("mount", "--dir", str(home), str(mnt))  # nothing cached: read from the nodes
        _same(mnt, files)
        # Every group serves; a node seen down is a liar (one refusing everything refuses
        # the status query too).
        status = bftfs("status", "--dir", str(home), "--json", check=False)
        groups = json.loads(status.stdout)["groups"]
        assert all(g["state"] in ("healthy", "degraded") for g in groups), groups
        assert {n for g in groups for n in g["down"]} <= set(liars), (groups, liars)
        bftfs("umount", str(mnt), "--dir", str(home))
        corrupt = next(n for n, p in liars.items() if p == "corrupt-fragments")
        assert any(str(corrupt) in f and "corrupt" in f[str(corrupt)] for f in _faults(home))
    finally:
        bftfs("down", "--dir", str(home), "--force", check=False)
        for m in (mnt, mnt2):
            if os.path.ismount(m):
                subprocess.run(["fusermount3", "-u", "-z", str(m)], check=False)
