"""What scrub and verification find against a node stays in ``bftfs status`` until an
operator clears it (issue 31, item 7), with real node processes and a Byzantine node.

Node 0 runs ``corrupt-fragments``: every fragment it serves has a byte flipped.  Lazy
verification on the other nodes reads fragments from it and ``bftfs verify`` checks every
node's fragment of every block; before, ``bftfs verify`` rewrote its fragments, exited 1,
and ``bftfs status`` right after said HEALTHY with every counter 0 (mounts' reads need not
ask the lying node, and their counters die with the mount).
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bftfs.testing.clis import bftfs_cli
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

LIAR = 0


def bftfs(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return bftfs_cli(home, *args, check=False)


def status(home: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    r = bftfs(home, "status", "--json", *extra)
    assert r.returncode in (0, 1, 2), r.stderr
    return r.returncode, json.loads(r.stdout)


def findings_of(doc: dict[str, Any], node: int) -> dict[str, Any] | None:
    return doc["nodes"][node]["findings"]


@pytest.mark.slow
def test_findings_against_a_lying_node_stand_until_cleared(tmp_path: Path) -> None:
    home = tmp_path / "c"
    liar = {LIAR: ["--byzantine", "corrupt-fragments"]}
    with ProcessCluster(home, durable=False, block_size=16384, node_args=liar) as pc:
        with Mount(pc.config, tmp_path / "m") as m:
            rng = random.Random(7)
            for i in range(4):
                (m.mountpoint / f"f{i}").write_bytes(rng.randbytes(40_000))
        # What the other nodes' lazy verification met from it is kept too, when it read
        # node 0's fragments at all: whether it does depends on which nodes are responsible
        # for the (random) block ids and on node 0 being asked last once it served a corrupt
        # fragment, so it is not waited for (a 60 s wait failed in one make test run).
        lazy = (findings_of(status(home)[1], LIAR) or {}).get("reported") or {}
        r = bftfs(home, "verify", "--json")
        assert r.returncode == 1, r.stderr
        rewritten = json.loads(r.stdout)["repaired_by_node"][str(LIAR)]
        assert rewritten > 0
        code, doc = status(home)
        assert code == 1 and doc["health"] == "degraded"
        mine = findings_of(doc, LIAR)
        assert mine is not None and mine["verify_rewritten"] == rewritten
        assert [findings_of(doc, i) for i in range(1, 6)] == [None] * 5
        assert any(p.startswith(f"node {LIAR}: bftfs verify rewrote") for p in doc["problems"])
        text = bftfs(home, "status", "-v").stdout
        assert "findings of scrub and verification" in text and "DEGRADED" in text

        # Restarted nodes (node 0 honest from now on) still show what was found.
        pc.node_args = {}
        for i in pc.config.node_ids:
            pc.stop(i)
            pc.start(i)
        code, doc = status(home)
        after = findings_of(doc, LIAR)
        assert code == 1 and after is not None
        assert after["verify_rewritten"] == rewritten
        assert (after.get("reported") or {}).get("corrupt", 0) >= lazy.get("corrupt", 0)

        # Cleared by the operator: healthy again, and it stays so.
        code, doc = status(home, "--clear")
        assert code == 0 and doc["health"] == "healthy", doc["problems"]
        assert findings_of(doc, LIAR) is None and doc["findings_cleared_at"]
        code, doc = status(home)
        assert code == 0 and findings_of(doc, LIAR) is None
