"""Byzantine PASIS storage nodes: the lies of the R/W protocol's fault model.

A behaviour is built for one node (:data:`Factory`: from the cluster configuration, the
node's index and a seeded ``random.Random``, so a real node process can build one as well
as the in-process cluster) and gives a node wrapper ``wrapper(ctx, payload, honest)`` per
request kind it lies about; the other kinds stay honest.

======================  =================================================================
behaviour               lie
======================  =================================================================
``corrupt-fragment``    every fragment it serves has one byte flipped (the cross checksum
                        no longer matches)
``fabricate-huge-time`` a logical time near 2**63, and a self-consistent version only it
                        hosts at such a time
``stale``               acknowledges every write and stores nothing
``refuse-fresh``        answers "stale" to every one-round write
``older-history``       reads answered with its newest version left out
``withhold``            never answers anything
``bogus-history``       invented versions below the real latest, a history with no end
``equivocate``          honest to client 0, ``fabricate-huge-time`` + ``stale`` to others
``garbage``             replies of the wrong shape and type
======================  =================================================================
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from bftfs import erasure
from bftfs.ids import client_id
from bftfs.rw.messages import KIND_READ_LATEST, KIND_READ_PREV, KIND_TIME, KIND_WRITE
from bftfs.rw.timestamp import ZERO, Timestamp

if TYPE_CHECKING:
    from bftfs.config import ClusterConfig
    from bftfs.testing.byzantine import NodeWrapper
    from bftfs.testing.cluster import Cluster

#: ``factory(config, index, rng)``: the wrappers by request kind of node ``index``.
Factory = Callable[["ClusterConfig", int, random.Random], dict[str, "NodeWrapper"]]

READ_KINDS = (KIND_READ_LATEST, KIND_READ_PREV)
ALL_KINDS = (KIND_TIME, KIND_WRITE, *READ_KINDS)
#: Logical times far above any honest one (a forger's favourite).
HUGE_TIME = 2**63
_fake_counter = itertools.count(1)


def fabricated_version(node: int, n: int, m: int, time: int) -> tuple[Timestamp, bytes, bytes]:
    """A self-consistent version only node ``node`` hosts: (timestamp, cc, its fragment)."""
    enc = erasure.encode(b"forged by node %d" % node, m, n)
    return Timestamp(time, 666, enc.verifier), enc.cross_checksum, bytes(enc.fragments[node])


def corrupt_fragment(config: ClusterConfig, i: int, rng: random.Random) -> dict[str, NodeWrapper]:
    """Flip one byte in the middle of every fragment served (readers must notice by the
    cross checksum and use the other nodes)."""

    async def read(ctx: Any, payload: Any, honest: Any) -> Any:
        reply = await honest(ctx, payload)
        if isinstance(reply, dict) and isinstance(reply.get("f"), bytes) and reply["f"]:
            f = bytearray(reply["f"])
            f[len(f) // 2] ^= 0x5A
            reply["f"] = bytes(f)
        return reply

    return dict.fromkeys(READ_KINDS, read)


def fabricate_huge_time(
    config: ClusterConfig, i: int, rng: random.Random
) -> dict[str, NodeWrapper]:
    """Answer TIME with a huge logical time, and put a fabricated version at such a time on
    top of every history (with its fragment when data is asked for)."""

    async def time_(ctx: Any, payload: Any, honest: Any) -> Any:
        return {"ts": Timestamp(HUGE_TIME + next(_fake_counter), 666, bytes(32)).encode()}

    async def read_latest(ctx: Any, payload: Any, honest: Any) -> Any:
        reply = await honest(ctx, payload)
        stamp, cc, frag = fabricated_version(i, config.n, config.m, HUGE_TIME + next(_fake_counter))
        reply["h"] = [stamp.encode(), *reply["h"]]
        if payload.get("d"):
            reply["cc"], reply["f"] = cc, frag
        return reply

    return {KIND_TIME: time_, KIND_READ_LATEST: read_latest}


def stale(config: ClusterConfig, i: int, rng: random.Random) -> dict[str, NodeWrapper]:
    """Acknowledge every write and store nothing: its answers stay old."""

    async def write(ctx: Any, payload: Any, honest: Any) -> Any:
        return {"ok": True, "new": True}

    return {KIND_WRITE: write}


def refuse_fresh(config: ClusterConfig, i: int, rng: random.Random) -> dict[str, NodeWrapper]:
    """Answer "stale" to every one-round write (with a plausible timestamp: the write's
    own), store nothing; honest otherwise (issue 18: the fallback must take effect once)."""

    async def write(ctx: Any, payload: Any, honest: Any) -> Any:
        if payload.get("fr"):
            return {"ok": False, "stale": payload["ts"]}
        return await honest(ctx, payload)

    return {KIND_WRITE: write}


def older_history(config: ClusterConfig, i: int, rng: random.Random) -> dict[str, NodeWrapper]:
    """Answer reads with a plausible older history: the newest version this node hosts is
    left out, as if the latest write never reached it (and its fragment with it)."""

    async def read_latest(ctx: Any, payload: Any, honest: Any) -> Any:
        reply = await honest(ctx, payload)
        if isinstance(reply, dict) and reply.get("h"):
            reply["h"] = reply["h"][1:]
            if payload.get("d"):
                reply["cc"], reply["f"] = None, None
        return reply

    return {KIND_READ_LATEST: read_latest}


def withhold(config: ClusterConfig, i: int, rng: random.Random) -> dict[str, NodeWrapper]:
    """Never answer a PASIS request (the client must get on without this node)."""

    async def never(ctx: Any, payload: Any, honest: Any) -> Any:
        await trio.sleep_forever()

    return dict.fromkeys(ALL_KINDS, never)


def bogus_history(config: ClusterConfig, i: int, rng: random.Random) -> dict[str, NodeWrapper]:
    """Invent versions just below the real latest (or the bound) and claim there is always
    more: a history with no end.  Odd nodes also claim the rest was collected."""

    async def read(ctx: Any, payload: Any, honest: Any) -> Any:
        reply = await honest(ctx, payload)
        real = [Timestamp.decode(h) for h in reply["h"]]
        top = real[0] if real else None
        lower = Timestamp.decode(payload["lt"]) if "lt" in payload else None
        ceiling = top or lower or Timestamp(HUGE_TIME, 0, bytes(32))
        fakes = [
            Timestamp(ceiling.time - k, 666, bytes([k]) * 32)
            for k in range(1, 6)
            if ceiling.time - k > 0
        ]
        hist = sorted({*real[1:], *fakes}, reverse=True)
        hist = ([top] if top else []) + [h for h in hist if top is None or h < top]
        reply["h"] = [h.encode() for h in hist[:20]]
        if i % 2 and top is not None:
            reply["more"], reply["fl"] = False, top.encode()
        else:
            reply["more"] = bool(reply["h"])
        return reply

    return dict.fromkeys(READ_KINDS, read)


def equivocate(config: ClusterConfig, i: int, rng: random.Random) -> dict[str, NodeWrapper]:
    """Honest to client 0; to everyone else a forger that also drops their writes."""
    lies = {**fabricate_huge_time(config, i, rng), **stale(config, i, rng)}

    def pick(kind: str) -> NodeWrapper:
        async def wrapper(ctx: Any, payload: Any, honest: Any) -> Any:
            if ctx.sender == client_id(0) or kind not in lies:
                return await honest(ctx, payload)
            return await lies[kind](ctx, payload, honest)

        return wrapper

    return {kind: pick(kind) for kind in ALL_KINDS}


def garbage(config: ClusterConfig, i: int, rng: random.Random) -> dict[str, NodeWrapper]:
    """Replies of the wrong shape and type, chosen by ``rng`` (seeded: replayable)."""
    stamp = Timestamp(5, 1, bytes(32)).encode()
    junk: list[Any] = [
        None,
        7,
        "text",
        [],
        {},
        {"ts": b"short"},
        {"ok": "yes"},
        {"ok": False, "stale": 3},
        {"h": [stamp, stamp], "more": False, "fl": stamp, "cc": None, "f": None},
        {"h": [b"x" * 44], "more": True, "fl": ZERO.encode(), "cc": b"", "f": b""},
        {"h": "nope", "more": None},
    ]

    async def wrapper(ctx: Any, payload: Any, honest: Any) -> Any:
        return junk[rng.randrange(len(junk))]

    return dict.fromkeys(ALL_KINDS, wrapper)


#: The behaviours by name (the names the tests' parameter lists use).
BEHAVIOURS: dict[str, Factory] = {
    "corrupt-fragment": corrupt_fragment,
    "fabricate-huge-time": fabricate_huge_time,
    "stale": stale,
    "refuse-fresh": refuse_fresh,
    "older-history": older_history,
    "withhold": withhold,
    "bogus-history": bogus_history,
    "equivocate": equivocate,
    "garbage": garbage,
}


def make_byzantine(cluster: Cluster, i: int, behaviour: str) -> None:
    """Turn node ``i`` of an in-process cluster Byzantine with one of :data:`BEHAVIOURS`
    (its random choices come from the node's seeded fault injector)."""
    injector = cluster.faults[i]
    for kind, wrapper in BEHAVIOURS[behaviour](cluster.config, i, injector.rng).items():
        injector.byzantine(kind, wrapper)
