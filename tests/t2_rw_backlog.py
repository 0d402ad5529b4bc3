"""Tier 2: a PASIS client holds a bounded backlog for a node that does not answer (issue 34).

A write returns after ``N - t`` acknowledgements; its request to the last node goes on in
the background, holding its fragment until that node answers or the call times out.  A
node that never answers (here: one that drops everything) would make a long stream of
writes hold every fragment written meanwhile - the mount daemon grew to 1.4 GB for a
1 GiB file with one node down.  The batcher now fails a request at once when its node has
``MAX_PENDING`` unanswered, which the quorum call takes as a faulty node's answer.  Real
TCP and LMDB (the in-process cluster).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rw_helpers import make_crashed, rw_cluster

from bftfs.rw.batch import MAX_PENDING
from bftfs.rw.client import DEFAULT_CONCURRENCY


async def test_a_silent_node_holds_at_most_max_pending_requests(tmp_path: Path) -> None:
    async with rw_cluster(tmp_path, clients=1, seed=5) as (cluster, (rw,)):
        make_crashed(cluster, 0)
        batcher = rw.batcher
        assert batcher is not None
        outstanding = {"now": 0, "most": 0}
        submit = batcher.submit

        def counting(node: Any, kind: str, payload: Any, done: Any, trouble: Any) -> None:
            if node != 0:
                submit(node, kind, payload, done, trouble)
                return
            outstanding["now"] += 1
            outstanding["most"] = max(outstanding["most"], outstanding["now"])

            def answered(outcome: Any) -> None:
                outstanding["now"] -= 1
                done(outcome)

            submit(node, kind, payload, answered, trouble)

        batcher.submit = counting  # type: ignore[method-assign]
        blocks = {k: bytes([k % 251]) * 1024 for k in range(3 * MAX_PENDING)}
        written = await rw.write_blocks(blocks)
        assert len(written) == len(blocks)  # every write complete without node 0
        # (plus, for one scheduler pass, the refused ones of a wave until their flush)
        assert MAX_PENDING <= outstanding["most"] <= MAX_PENDING + DEFAULT_CONCURRENCY
        assert batcher.backlogged > 0
        for k in (0, len(blocks) - 1):
            assert await rw.read_block(k) == blocks[k]
