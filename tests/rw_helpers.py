"""Shared helpers for the PASIS tests (imported explicitly; not fixtures).

The Byzantine behaviours live in :mod:`bftfs.testing.byzantine.rw`."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from bftfs.rw.classify import NodeView, view_from_history
from bftfs.rw.client import RWClient, open_rw_client
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


def make_crashed(cluster: Cluster, i: int) -> None:
    """Node ``i`` stops answering anything (a crash, without the restart cost)."""
    cluster.faults[i].drop(1.0)


def heal(cluster: Cluster) -> None:
    """Undo every fault and Byzantine behaviour of every node."""
    for f in cluster.faults:
        f.clear()
