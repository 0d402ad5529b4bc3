"""A file system on four nodes (issue 68's first bar; docs/listeners.md "Blocks on four
nodes"), through the real CLI.

``bftfs init --engine fab --n 4`` (``b = 1``: FaB metadata with commit proofs, blocks in
Byzantine Listeners registers), ``bftfs up`` mounts it, a seeded tree of 20 files (some of
several blocks, some past 1 MiB) is copied in and compared.  Node 3 is stopped, more is
written and compared.  Node 3 comes back honest and catches up on what it missed
(``bl.sync``); then node 0 is restarted running ``listeners-liar`` (made-up register
answers, echoes and history, STOREs withheld, made-up writes sent to the others), the mount
is remounted (nothing from its cache) and everything compared: the reads decide on nodes
1-3, so this needs node 3 caught up.  More is written and compared, ``bftfs log`` and
``bftfs cat --at`` read a file's first version back, and ``bftfs status`` names the engine
and block store and sees the liar lie.  The cluster is always stopped and the mount
unmounted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bftfs.testing.mounts import fuse_available

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.slow,
]

SIZES = (0, 10, 3000, 70_000, 200_000, 1_500_000)


def bftfs(*args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "bftfs", *args], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def _files(root: Path, rng: random.Random, names: range, dirs: int) -> None:
    for i in names:
        d = root / f"d{i % dirs}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(rng.randbytes(rng.choice(SIZES)))


def _same(src: Path, mnt: Path) -> None:
    """``diff -r``: the same names, the same bytes."""
    want = {p.relative_to(src): p for p in src.rglob("*")}
    got = {p.relative_to(mnt): p for p in mnt.rglob("*")}
    assert sorted(want) == sorted(got)
    for rel, p in want.items():
        if p.is_file():
            assert got[rel].read_bytes() == p.read_bytes(), rel


def _history(home: Path, first: bytes) -> None:
    """``bftfs log`` lists both writes of ``/tree/kept``; ``bftfs cat --at`` the first
    gives its first content back (the versions the register nodes retained)."""
    log = bftfs("log", "--dir", str(home), "/tree/kept").splitlines()
    written = [line.split()[0] for line in log if line.endswith("written")]
    assert len(written) >= 2, log
    old = subprocess.run(
        [sys.executable, "-m", "bftfs", "cat", "--dir", str(home), "--at", written[-1]]
        + ["/tree/kept"],
        capture_output=True,
        timeout=300,
    )
    assert old.returncode == 0, old.stderr
    differs = next(
        (i for i, (x, y) in enumerate(zip(old.stdout, first, strict=False)) if x != y), None
    )
    assert old.stdout == first, (len(old.stdout), len(first), differs, log, old.stderr)


def _caught_up(home: Path) -> None:
    """Wait until node 3 asked every other node for what it missed (``bl.sync``) and no
    node is still sending (``progress.blisteners-sync``); fails after 120 s."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        sync = [
            ((n.get("stats") or {}).get("progress") or {}).get("blisteners-sync") or {}
            for n in _status(home)["nodes"]
        ]
        if sync[3].get("asked") == 3 and all(s.get("sending") == 0 for s in sync):
            return
        time.sleep(0.2)  # polls the condition above
    raise AssertionError(f"node 3 did not catch up: {sync}")


def _status(home: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(bftfs("status", "--dir", str(home), "--json"))
    return doc


def test_four_nodes_copy_a_tree_through_a_stopped_node_and_a_liar(tmp_path: Path) -> None:
    home, mnt, src = tmp_path / "c", tmp_path / "m", tmp_path / "src"
    rng = random.Random(68)
    _files(src, rng, range(20), 5)
    first = rng.randbytes(100_000)
    (src / "kept").write_bytes(first)
    try:
        out = bftfs("init", "--engine", "fab", "--n", "4", "--dir", str(home), "--map-size", "256M")
        assert "FaB, blocks in registers" in out, out
        bftfs("up", "--dir", str(home), "--mount", str(mnt))
        shutil.copytree(src, mnt / "tree")
        _same(src, mnt / "tree")
        cluster = _status(home)["cluster"]
        assert (cluster["n"], cluster["engine"], cluster["blocks"]) == (4, "fab", "registers")

        bftfs("node", "stop", "3", "--dir", str(home))
        _files(src, rng, range(20, 28), 3)
        with (src / "d0" / "f0").open("ab") as f:
            f.write(b"appended with node 3 down")
        (src / "kept").write_bytes(rng.randbytes(70_000))
        shutil.copytree(src, mnt / "tree", dirs_exist_ok=True)
        _same(src, mnt / "tree")

        bftfs("node", "start", "3", "--dir", str(home))  # back honest: it catches up
        _caught_up(home)
        bftfs("node", "stop", "0", "--dir", str(home))
        bftfs("node", "start", "0", "--dir", str(home), "--byzantine", "listeners-liar")
        bftfs("umount", str(mnt), "--dir", str(home))
        bftfs("mount", "--dir", str(home), str(mnt))  # nothing from the old mount's cache
        _same(src, mnt / "tree")  # what node 0 held is read from 1, 2 and 3 now
        _files(src, rng, range(28, 32), 2)
        shutil.copytree(src, mnt / "tree", dirs_exist_ok=True)
        _same(src, mnt / "tree")
        _history(home, first)
        nodes = _status(home)["nodes"]
        lies = ((nodes[0].get("stats") or {}).get("progress") or {}).get("blisteners-liar")
        assert lies is not None and lies["lies"] > 0, lies
    finally:
        subprocess.run(
            [sys.executable, "-m", "bftfs", "down", "--dir", str(home)],
            capture_output=True,
            timeout=300,
            check=False,
        )
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
