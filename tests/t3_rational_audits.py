"""Audits between the nodes of an in-process cluster (real TCP, LMDB; ``node/audits.py``):
an auditor's rounds driven by the test with a seeded random source, so every peer is asked
for every block (three blocks, four challenges a peer).

- A correct node that lost its fragments answers ``missing``, fetches them from the
  others, and passes when asked again: no failure is recorded against it.
- A node that withholds its answers while answering pings fails, as does one answering with
  made-up fragments (the ``rational`` profile's answer); a correct peer passes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio
from rw_helpers import rw_cluster

from bftfs.node.auditcore import KIND_CHALLENGE
from bftfs.node.audits import FETCHED, Auditor
from bftfs.policy import VerificationPolicy
from bftfs.rw import replica
from bftfs.rw.schema import DB_VERSIONS, version_key
from bftfs.rw.timestamp import Timestamp
from bftfs.testing.byzantine import rational

#: Verify at once; the periodic audits never run by themselves (the test drives rounds).
POLICY = VerificationPolicy(settle_seconds=0.0, idle_seconds=0.0, audit_seconds=3600.0)
BLOCKS = (11, 12, 13)


async def written_and_verified(cl: Any, writer: Any) -> dict[int, Timestamp]:
    """Three blocks written and flagged verified on every node."""
    rng = random.Random(5)
    stamps = {b: await writer.write_block(b, rng.randbytes(6000)) for b in BLOCKS}
    with trio.fail_after(20):
        for node in cl.nodes:
            for blk, ts in stamps.items():
                while not node.store.read(
                    lambda kv, blk=blk, ts=ts: replica.is_verified(kv, blk, ts)
                ):
                    await node.verifier.changed.wait()
    return stamps


async def drop_fragments(node: Any, stamps: dict[int, Timestamp]) -> None:
    def step(kv: Any) -> None:
        for blk, ts in stamps.items():
            kv.delete(DB_VERSIONS, version_key(blk, ts))

    await node.store.write(step)


def seen(auditor: Auditor, peer: int) -> dict[str, int]:
    return auditor.ledger.peers[peer].counts


async def test_a_node_that_lost_fragments_fetches_them_and_passes(tmp_path: Path) -> None:
    async with rw_cluster(tmp_path, verification=POLICY) as (cl, (writer, _)):
        stamps = await written_and_verified(cl, writer)
        await drop_fragments(cl.nodes[2], stamps)
        auditor = Auditor(cl.nodes[0], rng=random.Random(1), deadline=2.0)
        await auditor.one_round()
        assert seen(auditor, 2)["missing"] == len(BLOCKS)
        assert len(auditor.ledger.owed(2)) == len(BLOCKS)
        with trio.fail_after(20):  # node 2 fetches what it said it lacked
            await cl.nodes[2].finished[FETCHED].wait()
        assert cl.nodes[2].stats["audits.fetched"] == len(BLOCKS)
        await auditor.one_round()
        assert auditor.ledger.owed(2) == []
        assert seen(auditor, 2)["failed"] == 0 and seen(auditor, 2)["passed"] >= len(BLOCKS)
        assert all(seen(auditor, p)["failed"] == 0 for p in (1, 3, 4, 5))
        assert not any(k == "audit_failed" for _, k in cl.nodes[0].findings.peer_faults)


@pytest.mark.expected_logs(
    "bftfs.node.0", "WARNING", match=r"^node 0: node [34] failed an audit of block"
)
async def test_withheld_and_made_up_answers_fail(tmp_path: Path) -> None:
    async with rw_cluster(tmp_path, verification=POLICY) as (cl, (writer, _)):
        stamps = await written_and_verified(cl, writer)

        async def withhold(ctx: Any, payload: Any, honest: Any) -> Any:
            await trio.sleep_forever()

        cl.faults[3].byzantine(KIND_CHALLENGE, withhold)
        # Node 4 dropped its fragments and answers as the rational profile does.
        await drop_fragments(cl.nodes[4], stamps)
        cl.faults[4].byzantine(KIND_CHALLENGE, rational.Rational(cl.config, 4).challenge)
        auditor = Auditor(cl.nodes[0], rng=random.Random(2), deadline=0.5)
        await auditor.one_round()
        assert seen(auditor, 3)["failed"] == len(BLOCKS)  # pings answered: withheld
        assert seen(auditor, 4)["failed"] == len(BLOCKS)  # made-up fragments
        assert seen(auditor, 1) == {**seen(auditor, 1), "passed": len(BLOCKS), "failed": 0}
        faults = cl.nodes[0].findings.peer_faults
        assert faults[(3, "audit_failed")] == faults[(4, "audit_failed")] == len(BLOCKS)
        assert faults[(1, "audit_failed")] == 0
