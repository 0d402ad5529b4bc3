"""Tier 3: Parameterized FaB Paxos on four real node processes (issue 68): ``engine =
"fab"`` with ``n = 4, b = 1`` (``t = 0``: commit proofs, docs/fab.md).  A FaB metadata
client runs updates and queries, the leader of regency 0 is killed, and the three left
elect another and go on: with a node down no learner hears four ACCEPTED, so every
operation after the kill is learned through commit proofs.

No file system is mounted: blocks need PASIS, ``n >= 4b + 1`` (docs/fab.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from bftfs.config import ClusterConfig
from bftfs.connect import open_client
from bftfs.fab.metaclient import FabMetaClient
from bftfs.fsobjects import ROOT
from bftfs.local import query_status
from bftfs.testing.processes import ProcessCluster

NOW = 10**18


async def _setxattr(client: FabMetaClient, name: bytes, value: bytes) -> None:
    arg = {"name": name, "value": value, "flags": 0, "now": NOW + 1}
    await client.update(ROOT, "fs.setxattr", arg)


async def _run(pc: ProcessCluster) -> tuple[dict[bytes, bytes], list[dict[str, Any]]]:
    cfg = pc.config
    async with open_client(cfg, "client0") as ep:
        client = FabMetaClient(ep, [int(s.id) for s in cfg.nodes], cfg.b, timeout=30.0)
        with trio.fail_after(120):
            await client.update(ROOT, "fs.mkroot", {"mode": 0o755, "uid": 0, "gid": 0, "now": NOW})
            for k in range(3):
                await _setxattr(client, b"user.before%d" % k, b"v%d" % k)
            pc.kill(0)  # the leader of regency 0
            for k in range(3):
                await _setxattr(client, b"user.after%d" % k, b"w%d" % k)
            names = [b"user.before%d" % k for k in range(3)] + [
                b"user.after%d" % k for k in range(3)
            ]
            got = {n: await client.query(ROOT, "fs.getxattr", n) for n in names}
        return got, await _converged(cfg)


async def _converged(cfg: ClusterConfig) -> list[dict[str, Any]]:
    """The FaB figures of the live nodes once each is past the election and the 7 updates
    and all executed as far (the laggards pull what they missed; a node refreshes its
    figures every 0.25 s); fails after 60 s."""
    with trio.fail_after(60):
        while True:
            statuses = await query_status(cfg)
            fab = [s.stats["progress"]["fab"] for s in statuses if s.up and s.stats]
            done = all(p["regency"] >= 1 and p["executed"] >= 7 for p in fab)
            if done and len({p["executed"] for p in fab}) == 1:
                return fab
            await trio.sleep(0.2)


def test_four_fab_nodes_answer_with_the_leader_killed(tmp_path: Path) -> None:
    with ProcessCluster(
        tmp_path / "c", engine="fab", n=4, t=1, b=1, clients=1, map_size=1 << 28, durable=False
    ) as pc:
        assert (pc.config.n, pc.config.b, pc.config.engine) == (4, 1, "fab")
        got, fab = trio.run(_run, pc)
    assert got == {b"user.before%d" % k: b"v%d" % k for k in range(3)} | {
        b"user.after%d" % k: b"w%d" % k for k in range(3)
    }
    assert len(fab) == 3, fab  # nodes 1, 2 and 3, past the election and converged
