"""Tier 4: a node under a client load that never pauses still verifies and collects, with
real node processes (issue 62: background work runs below the foreground, and keeps its
promises).

Background steps await the node's gate (``node/yielding.py``), which holds them while
client requests keep the node busy, but a wave of verification that a budget forced is
the clients' own debt and does not wait (docs/lazy.md).  A client here overwrites a few
blocks back to back, one writer per block, so lazy verification never sees an idle
moment: only the budgets force it (past ``per_client_block`` versions of one client's
block, ``per_client`` in all).  While the load goes on, every node must have verified (or
taken the NOTIFYs of) what the budgets forced and collected the versions below, and hold
no more unverified versions than the budget (twice it where a node waits for the
responsible nodes' NOTIFYs).  Gating forced waves too, with a server
whose in-flight count never went down and no floor, failed it (no collection in 120 s).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs.connect import open_client
from bftfs.ids import NodeId
from bftfs.policy import RetentionPolicy, VerificationPolicy
from bftfs.rw.client import open_rw_client
from bftfs.rw.lazy import COOPERATIVE_SLACK
from bftfs.testing.processes import ProcessCluster

#: Verification is forced past 4 unverified versions of one client's block.
POLICY = VerificationPolicy(settle_seconds=0.0, per_client_block=4, per_client=64, wave_blocks=4)
#: Only the newest verified version is kept: what verification passes is collected.
NEWEST = RetentionPolicy(keep_seconds=0.0, keep_versions=1, keep_hourly=0, keep_daily=0)
BLOCKS = 8
#: Versions each node must have collected while the load still runs.
COLLECTED = 200


async def node_stats(ep: Any, n: int) -> list[dict[str, Any]]:
    """Every node's ``stats`` (a status poll: not client work, it keeps no node busy)."""
    return [await ep.call(NodeId(i), "stats", None) for i in range(n)]


@pytest.mark.slow
def test_a_node_under_continuous_client_load_still_verifies_and_collects(
    tmp_path: Path,
) -> None:
    with ProcessCluster(
        tmp_path / "c", durable=False, block_size=4096, verification=POLICY, retention=NEWEST
    ) as pc:
        cfg = pc.config
        writes = [0]
        seen: list[list[dict[str, Any]]] = []

        async def load(rw: Any, block: int) -> None:
            rng = random.Random(block)
            while True:
                await rw.write_block(block, rng.randbytes(3000))
                writes[0] += 1

        async def main() -> None:
            async with (
                open_client(cfg, "client0", timeout=10.0) as ep,
                open_rw_client(ep, cfg, timeout=10.0) as rw,
                open_client(cfg, "client1", timeout=10.0) as monitor,
                trio.open_nursery() as nursery,
            ):
                for block in range(BLOCKS):  # one writer per block, all at once
                    nursery.start_soon(load, rw, block)
                with trio.fail_after(120):
                    while True:
                        await trio.sleep(0.5)
                        stats = await node_stats(monitor, cfg.n)
                        seen.append(stats)
                        if all(s["progress"]["rw.verify"]["collected"] >= COLLECTED for s in stats):
                            break
                written = writes[0]
                nursery.cancel_scope.cancel()
            final = seen[-1]
            for s in final:
                verify = s["progress"]["rw.verify"]
                # It verified, or took the NOTIFYs of the nodes responsible, for what the
                # budgets forced.
                assert verify["verified"] + verify["notify_applied"] > 0, verify
                # What it holds unverified stays within the budget: past ``per_client``
                # versions every block the client writes is forced, so at most what its
                # writers add while a forced wave runs comes on top.  A node that is not
                # among a forced block's responsible nodes waits for their NOTIFYs and
                # verifies the block itself only past twice the budgets
                # (``COOPERATIVE_SLACK``, docs/lazy.md): every node waits for some blocks
                # here, so its bound is the loose one (106 versions seen in CI).
                bound = COOPERATIVE_SLACK * POLICY.per_client + 2 * BLOCKS
                assert verify["backlog_versions"] <= bound, verify
            assert written > COLLECTED

        trio.run(main)
