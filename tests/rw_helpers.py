"""Shared helpers for the PASIS tests (imported explicitly; not fixtures)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from bftfs import erasure
from bftfs.ids import client_id
from bftfs.rw.classify import NodeView, view_from_history
from bftfs.rw.client import RWClient, open_rw_client
from bftfs.rw.messages import (
    KIND_READ_LATEST,
    KIND_READ_PREV,
    KIND_TIME,
    KIND_WRITE,
)
from bftfs.rw.timestamp import ZERO, Timestamp
from bftfs.testing.cluster import Cluster, open_cluster


def ts(time: int, writer: int = 1, tag: int = 0) -> Timestamp:
    """A timestamp with a verifier derived from its other fields (distinct per tag)."""
    verifier = hashlib.blake2b(f"{time}/{writer}/{tag}".encode(), digest_size=32).digest()
    return Timestamp(time, writer, verifier)


def full_view(node: int, versions: Iterable[Timestamp]) -> NodeView:
    """A view of a node whose whole history is known."""
    return NodeView(node, frozenset(versions), ZERO)


def truncated_view(node: int, versions: Iterable[Timestamp], history: int) -> NodeView:
    """The view a READ_LATEST reply with a history of ``history`` versions gives."""
    hist = sorted(versions, reverse=True)
    return view_from_history(node, hist[:history], len(hist) > history, ZERO)


def answer(
    versions: Iterable[Timestamp], below: Timestamp | None, inclusive: bool, history: int
) -> tuple[list[Timestamp], bool]:
    """What a correct node holding ``versions`` answers to READ_LATEST / READ_PREV."""
    inrange = sorted(
        (v for v in versions if below is None or (v <= below if inclusive else v < below)),
        reverse=True,
    )
    return inrange[:history], len(inrange) > history


# --- in-process cluster helpers ----------------------------------------------------------

#: Client options for tests: probe quickly, give up within seconds.
TEST_CLIENT = {"probe_after": 0.05, "timeout": 5.0}
READ_KINDS = (KIND_READ_LATEST, KIND_READ_PREV)
ALL_KINDS = (KIND_TIME, KIND_WRITE, *READ_KINDS)
HUGE_TIME = 2**63


@asynccontextmanager
async def rw_cluster(
    tmp_path: Path,
    *,
    clients: int = 2,
    client_options: dict[str, Any] | None = None,
    batch: bool = True,
    **kwargs: Any,
) -> AsyncIterator[tuple[Cluster, list[RWClient]]]:
    """An in-process cluster and one :class:`RWClient` per configured client."""
    options = {**TEST_CLIENT, **(client_options or {})}
    async with (
        open_cluster(tmp_path, clients=clients, **kwargs) as cluster,
        AsyncExitStack() as stack,
    ):
        rws = [
            await stack.enter_async_context(
                open_rw_client(cluster.client(k), cluster.config, batch=batch, **options)
            )
            for k in range(clients)
        ]
        yield cluster, rws


Wrapper = Callable[[Any, Any, Callable[[Any, Any], Awaitable[Any]]], Awaitable[Any]]
_fake_counter = itertools.count(1)


def fabricated_version(node: int, n: int, m: int, time: int) -> tuple[Timestamp, bytes, bytes]:
    """A self-consistent version only node ``node`` hosts: (timestamp, cc, its fragment)."""
    enc = erasure.encode(b"forged by node %d" % node, m, n)
    return Timestamp(time, 666, enc.verifier), enc.cross_checksum, enc.fragments[node]


def _corrupt(cluster: Cluster, i: int) -> dict[str, Wrapper]:
    async def read(ctx: Any, payload: Any, honest: Any) -> Any:
        reply = await honest(ctx, payload)
        if reply.get("f"):
            f = bytearray(reply["f"])
            f[len(f) // 2] ^= 0x5A
            reply["f"] = bytes(f)
        return reply

    return dict.fromkeys(READ_KINDS, read)


def _fabricate(cluster: Cluster, i: int) -> dict[str, Wrapper]:
    cfg = cluster.config

    async def time_(ctx: Any, payload: Any, honest: Any) -> Any:
        return {"ts": Timestamp(HUGE_TIME + next(_fake_counter), 666, bytes(32)).encode()}

    async def read_latest(ctx: Any, payload: Any, honest: Any) -> Any:
        reply = await honest(ctx, payload)
        stamp, cc, frag = fabricated_version(i, cfg.n, cfg.m, HUGE_TIME + next(_fake_counter))
        reply["h"] = [stamp.encode(), *reply["h"]]
        if payload.get("d"):
            reply["cc"], reply["f"] = cc, frag
        return reply

    return {KIND_TIME: time_, KIND_READ_LATEST: read_latest}


def _stale(cluster: Cluster, i: int) -> dict[str, Wrapper]:
    async def write(ctx: Any, payload: Any, honest: Any) -> Any:
        return {"ok": True, "new": True}  # acknowledge, never store: answers stay old

    return {KIND_WRITE: write}


def _refuse_fresh(cluster: Cluster, i: int) -> dict[str, Wrapper]:
    """Answer "stale" to every one-round write (with a plausible timestamp: the write's
    own), store nothing; honest otherwise (issue 18: the fallback must take effect once)."""

    async def write(ctx: Any, payload: Any, honest: Any) -> Any:
        if payload.get("fr"):
            return {"ok": False, "stale": payload["ts"]}
        return await honest(ctx, payload)

    return {KIND_WRITE: write}


def _older_history(cluster: Cluster, i: int) -> dict[str, Wrapper]:
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


def _withhold(cluster: Cluster, i: int) -> dict[str, Wrapper]:
    async def never(ctx: Any, payload: Any, honest: Any) -> Any:
        await trio.sleep_forever()

    return dict.fromkeys(ALL_KINDS, never)


def _bogus(cluster: Cluster, i: int) -> dict[str, Wrapper]:
    async def read(ctx: Any, payload: Any, honest: Any) -> Any:
        reply = await honest(ctx, payload)
        real = [Timestamp.decode(h) for h in reply["h"]]
        top = real[0] if real else None
        lower = Timestamp.decode(payload["lt"]) if "lt" in payload else None
        # Invented versions just below the real latest (or the bound), and a claim that
        # there is always more: a history with no end.  Odd nodes also claim collection.
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


def _equivocate(cluster: Cluster, i: int) -> dict[str, Wrapper]:
    """Honest to client 0; to everyone else a forger that also drops their writes."""
    lies = {**_fabricate(cluster, i), **_stale(cluster, i)}

    def pick(kind: str) -> Wrapper:
        async def wrapper(ctx: Any, payload: Any, honest: Any) -> Any:
            if ctx.sender == client_id(0) or kind not in lies:
                return await honest(ctx, payload)
            return await lies[kind](ctx, payload, honest)

        return wrapper

    return {kind: pick(kind) for kind in ALL_KINDS}


def _garbage(cluster: Cluster, i: int) -> dict[str, Wrapper]:
    """Replies of the wrong shape and type, chosen by the cluster's seeded generator."""
    rng = cluster.faults[i].rng
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


BEHAVIOURS: dict[str, Callable[[Cluster, int], dict[str, Wrapper]]] = {
    "corrupt-fragment": _corrupt,
    "fabricate-huge-time": _fabricate,
    "stale": _stale,
    "refuse-fresh": _refuse_fresh,
    "older-history": _older_history,
    "withhold": _withhold,
    "bogus-history": _bogus,
    "equivocate": _equivocate,
    "garbage": _garbage,
}


def make_byzantine(cluster: Cluster, i: int, behaviour: str) -> None:
    """Turn node ``i`` Byzantine with one of :data:`BEHAVIOURS`."""
    for kind, wrapper in BEHAVIOURS[behaviour](cluster, i).items():
        cluster.faults[i].byzantine(kind, wrapper)


def make_crashed(cluster: Cluster, i: int) -> None:
    """Node ``i`` stops answering anything (a crash, without the restart cost)."""
    cluster.faults[i].drop(1.0)


def heal(cluster: Cluster) -> None:
    for f in cluster.faults:
        f.clear()
