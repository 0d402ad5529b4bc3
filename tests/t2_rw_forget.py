"""Tier 2: forgetting given-back blocks (rw/forget.py, node/rw_forgetter.py) over real TCP
and LMDB (the in-process cluster), with the steps that race in a real cluster taken in
order by hand.

A node away while a file was written and removed catches up the empty version of its
blocks (node/rw_catchup.py) just before the others forget them: their agreement needs
its word only that it holds nothing older.  Its own verifier then reads nothing on the
others, so the version is never verified there; before, it stayed for good, as the
forgetting rule asked for a verified version.  A lone empty version every other node
holds nothing of is forgotten as well.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio
from rw_helpers import rw_cluster

from bftfs.policy import RetentionPolicy, VerificationPolicy
from bftfs.rw import collect, replica
from bftfs.rw.lazy import Pick
from bftfs.rw.timestamp import ZERO
from bftfs.testing.cluster import Cluster

#: Every node verifies for itself (no NOTIFYs) and only when the test says so.
BY_HAND = VerificationPolicy(
    mode="lazy", settle_seconds=3600.0, fallback_seconds=3600.0, stream_seconds=0.0
)
#: A given-back block is forgotten this long after its empty version was written: time
#: for the test to have every other node verify it first.
FORGET_AFTER = 4.0
BLOCK = 11
AWAY = 3


async def _until(what: str, cond: Callable[[], bool], timeout: float) -> None:
    """Wait for ``cond`` (checked every 50 ms) for at most ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not cond():  # noqa: ASYNC110 (stats and the store have no event to wait on)
            await trio.sleep(0.05)
        return
    raise AssertionError(f"{what}: not within {timeout} s")


def _hosted(cl: Cluster, i: int) -> list:
    return cl.nodes[i].store.read(lambda kv: collect.hosted_step(kv, BLOCK))


async def test_an_empty_version_caught_up_as_the_others_forget_it_is_forgotten(
    tmp_path: Path,
) -> None:
    retention = RetentionPolicy(
        keep_hourly=0, keep_daily=0, keep_seconds=0.0, forget_seconds=FORGET_AFTER
    )
    async with rw_cluster(tmp_path, clients=1, verification=BY_HAND, retention=retention) as (
        cl,
        (writer,),
    ):
        others = [i for i in range(cl.config.n) if i != AWAY]
        cl.crash(AWAY)
        await cl.wait_stopped(AWAY)
        # A removed file's block given back while node AWAY is down: a fresh empty version.
        ts = await writer.write_block(BLOCK, b"")
        await cl.recover(AWAY)
        away = cl.nodes[AWAY]
        # Its catch-up stores the empty version (the others still hold it) ...
        await _until("the catch-up", lambda: _hosted(cl, AWAY) == [ts], 20)
        # ... then the others verify it and, once it is due, forget it (AWAY lists it alone).
        async with trio.open_nursery() as nursery:
            for i in others:
                nursery.start_soon(cl.nodes[i].verifier.verify_wave, [Pick(BLOCK, "own")])
        assert all(
            cl.nodes[i].store.read(lambda kv: replica.is_verified(kv, BLOCK, ts)) for i in others
        )
        assert not any(cl.nodes[i].stats["rw.forgotten"] for i in others), "forgot too early"
        await _until(
            "the others forgot the block",
            lambda: all(cl.nodes[i].stats["rw.forgotten"] == 1 for i in others),
            FORGET_AFTER + 20,
        )
        assert all(_hosted(cl, i) == [] for i in others)
        # Node AWAY verifies its version only now: the others hold nothing, so the read
        # finds the initial value and nothing is marked verified here.
        await away.verifier.verify_wave([Pick(BLOCK, "own")])
        assert away.store.read(lambda kv: collect.verified_of(kv, BLOCK)) == ZERO
        # Before: kept for good (rw.forgotten stayed 0, the sweep skipped it too).
        await _until("node AWAY forgot it", lambda: away.stats["rw.forgotten"] == 1, 10)
        assert away.stats["rw.forgotten.unverified"] == 1
        assert _hosted(cl, AWAY) == []
        assert await writer.read_block(BLOCK) == b""
