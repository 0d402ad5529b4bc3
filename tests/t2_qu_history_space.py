"""Tier 2: what Q/U history takes on each node (``node/qu_space.py``), as ``bftfs status``
shows it, on the in-process cluster (real node services, TCP, LMDB): older versions and
the records thinned ones left, against a count of the store made here another way.
Waits are conditions polled under a deadline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs.cli import statustables as tables
from bftfs.cli.common import human
from bftfs.local import NodeStatus
from bftfs.node import qu_space
from bftfs.policy import RetentionPolicy
from bftfs.qu import schema
from bftfs.testing.cluster import open_cluster, qu_client


def recount(kv: Any) -> tuple[int, int]:
    """(older versions' bytes, thinned records' bytes) of a store: each object's versions
    newest first, all but the first counted."""
    older = 0
    last: bytes | None = None
    for key, value in kv.scan(schema.DB_VER, b"", b"\xff" * 64, reverse=True):
        if key[:8] == last:
            older += len(key) + len(value)
        last = bytes(key[:8])
    thin = sum(len(k) + len(v) for k, v in kv.scan(schema.DB_THIN, b"", b"\xff" * 64))
    return older, thin


async def test_each_node_measures_its_q_u_history_and_status_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ten updates of three objects, one of them thinned by the hour's schedule: each
    node's figure is the bytes of every version but each object's newest plus its thinned
    records, counted here from the store, and ``bftfs status``'s table prints it from
    the node's own statistics."""
    retention = RetentionPolicy(keep_seconds=0.2, keep_hourly=1, keep_daily=0)
    async with open_cluster(tmp_path, clients=1, seed=4, retention=retention) as cl:
        c = qu_client(cl, 0)
        for oid, times in ((21, 5), (22, 3), (23, 2)):
            for _ in range(times):
                await c.update(oid, "counter.increment", 1)
        with trio.fail_after(20):  # node 0 thins object 21 (a background step: polled)
            while True:
                if cl.nodes[0].stats["qu.thinned"]:
                    break
                await trio.sleep(0.05)
        statuses = []
        for i, node in enumerate(cl.nodes):
            got = await qu_space.measure(node)
            older, thin = node.store.read(recount)
            assert (got.older_bytes, got.thinned_bytes) == (older, thin), i
            if i == 0:
                assert older > 0 and thin > 0 and got.thinned >= 1
            statuses.append(NodeStatus(i, "127.0.0.1:1", None, True, node.statistics(), None))
            assert node.progress["qu.history"]["bytes"] == older + thin
        tables.print_nodes(statuses)
        # Paced and a record a page: the same figure, each page a background step.
        node, steps = cl.nodes[0], cl.nodes[0].stats["bg.steps"]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(qu_space, "PAGE", 1)
            paced = await qu_space.measure(node, duty=0.9)
        records = paced.older_versions + paced.thinned + 3  # (and the three newest)
        assert paced == await qu_space.measure(node)
        assert node.stats["bg.steps"] - steps >= records
        out = capsys.readouterr().out
        want = ", ".join(f"{i} {human(sum(cl.nodes[i].store.read(recount)))}" for i in range(6))
        assert "history (older Q/U versions kept): " + want in " ".join(out.split()), out
