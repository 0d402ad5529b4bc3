"""Fair admission on real node processes (issue 64): a client flooding every node with
pipelined cheap requests does not put a correct client's Q/U operations behind its queue.

The flooder is what ``benchmarks/attack.py`` runs (``client-flood``), a process of its own
(at nice 0, unlike there: at 19 it could not keep a node busy beside six): one
authenticated connection per flooded node as ``client1``
(``bftfs.testing.flood.raw_session``) sending PASIS time queries as fast as it can, its
replies read by a task of their own and counted in memory shared with the test.  The correct client
(``client0``) runs Q/U operations meanwhile (an attribute of the root written and read).
What is measured is a count, not a time: the flood replies each node sent between the
start of an operation and its end, per quorum round the operation took.  Before fair
admission a node served up to its ``max_inflight`` (128) flood requests for each of the
correct client's; with the shared pool granted round-robin (net/admission.py) it is about
the pool's size.
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs.connect import open_client
from bftfs.fsobjects import ROOT
from bftfs.ids import NodeId
from bftfs.node.limits import HANDLER_SLOTS
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.rw.messages import KIND_TIME, BlockId, TimeRequest
from bftfs.testing.flood import RawSession, raw_session
from bftfs.testing.processes import ProcessCluster

#: Q/U operations of the correct client measured under the flood.
OPERATIONS = 30
#: Flood replies a node may send per round of the correct client's: the pool's requests
#: already running when its request arrives, one grant of the flooder's before its own,
#: and as many again for the replies in flight on the flooder's connection while the
#: correct client's reply travels (the two connections are not ordered).
BOUND = 2 * (HANDLER_SLOTS + 1)
NOW = 10**18
#: The nodes flooded: two of the six, which one Python process can keep saturated (every
#: node at once it cannot: sealing and opening its frames costs it about what answering
#: them costs a node).  Nodes 0 and 1 are in every quorum the client prefers.
FLOODED = (0, 1)


async def _flood(s: RawSession, node: int) -> None:
    """Pipelined time queries on ``s`` until cancelled (attack.py's ``flood``)."""
    rng = random.Random(node)
    sent = 0
    while True:
        await s.send(KIND_TIME, TimeRequest(BlockId(rng.randrange(1, 1 << 40))).to_wire())
        sent += 1
        if sent % 32 == 0:
            await trio.lowlevel.checkpoint()


async def _drain(s: RawSession, replies: Any, node: int) -> None:
    while await s.read_reply() is not None:
        replies[node] += 1


async def _flood_all(cfg: Any, replies: Any) -> None:
    sessions = [await raw_session(cfg, NodeId(i), client="client1") for i in FLOODED]
    async with trio.open_nursery() as nursery:
        for i, s in enumerate(sessions):
            nursery.start_soon(_drain, s, replies, i)
            nursery.start_soon(_flood, s, i)


def flooder(cfg: Any, replies: Any) -> None:
    """The flooding process (until terminated): replies counted per flooded node."""
    trio.run(_flood_all, cfg, replies)


async def _counts(ep: Any) -> list[tuple[int, int]]:
    """``(admitted, overtaken)`` of the correct client at each flooded node (its
    ``stats``: net/admission.py counts them)."""
    out = []
    for i in FLOODED:
        stats = await ep.call(NodeId(i), "stats", None)
        mine = stats["limits"]["principals"].get(str(ep.pid), {})
        out.append((mine.get("admitted", 0), mine.get("overtaken", 0)))
    return out


async def _measure(cfg: Any, replies: Any) -> list[float]:
    """Per flooded node: the flood requests admitted there between the read and the
    answer of each of the correct client's requests, on average over its operations."""
    async with open_client(cfg, "client0", timeout=30.0) as ep:
        qu = QUClient(ep, QUThresholds.from_config(cfg), client_id=ep.pid)
        await qu.update(ROOT, "fs.mkroot", {"mode": 0o755, "uid": 0, "gid": 0, "now": NOW})
        with trio.fail_after(60):  # the flood under way: every node answered thousands
            while min(replies[: len(FLOODED)]) < 2000:
                await trio.sleep(0.05)
        before = await _counts(ep)
        for k in range(OPERATIONS):
            if k % 2 == 0:
                arg = {"name": b"user.k", "value": b"%d" % k, "flags": 0, "now": NOW + k}
                await qu.update(ROOT, "fs.setxattr", arg)
            else:
                assert await qu.query(ROOT, "fs.getxattr", b"user.k") == b"%d" % (k - 1)
        after = await _counts(ep)
    per_node = []
    for (a0, o0), (a1, o1) in zip(before, after, strict=True):
        assert a1 - a0 >= OPERATIONS // 2, (a0, a1)  # its requests reached this node
        per_node.append((o1 - o0) / (a1 - a0))
    return per_node


@pytest.mark.slow
def test_a_flooders_queue_does_not_delay_a_correct_clients_q_u_operations(
    tmp_path: Path,
) -> None:
    ctx = multiprocessing.get_context("spawn")
    replies = ctx.Array("q", 16, lock=False)
    with ProcessCluster(tmp_path / "c", durable=False) as pc:
        flood = ctx.Process(target=flooder, args=(pc.config, replies), daemon=True)
        flood.start()
        try:
            per_node = trio.run(_measure, pc.config, replies)
        finally:
            flood.terminate()
            flood.join(10)
        flood_total = sum(replies)
    print(
        f"flood requests admitted per request of the correct client, nodes {FLOODED}: "
        + ", ".join(f"{x:.1f}" for x in per_node)
        + f" (bound {BOUND}); flood replies in all {flood_total}"
    )
    assert flood_total > 2000 * len(FLOODED)  # the flood was served all along
    assert max(per_node) <= BOUND, per_node
