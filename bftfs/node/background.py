"""What the node's reclaiming tasks share (the Q/U pruner's tombstones and forgetting,
node/qu_pruner.py; forgetting given-back blocks, node/rw_forgetter.py).

* **Retries** (:class:`Backoff`) of a step that needs every other node's word: a key waits
  :data:`RETRY_SECONDS`, then twice as long each time, :data:`ATTEMPTS` times in all
  (about four minutes), then waits for the next sweep.
* **Batched steps** (:func:`write_batch`): several store steps in one transaction, a
  failed one counted and logged and the others' results kept.
* **Sweeps** (:func:`sweep`): their queues are in memory, so each walks the whole store a
  page at a time, at start and every :data:`SWEEP_SECONDS`, and queues what it finds: a
  restart, or a node down past the retries, delays reclamation but never loses it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import trio

if TYPE_CHECKING:
    from bftfs.node.parts import NodeParts

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Keys one sweep step reads, and how often a sweep starts again.
SWEEP_PAGE = 256
SWEEP_SECONDS = 3600.0

#: The first retry's delay (doubled at every attempt) and how many attempts a key gets.
RETRY_SECONDS = 1.0
ATTEMPTS = 8


class Backoff:
    """Attempts per key, and when each may try again."""

    def __init__(self) -> None:
        self._attempts: dict[int, int] = {}

    def next_due(self, key: int, now_ns: int) -> int | None:
        """When ``key``, which just failed, tries again (node clock ns), or None when its
        attempts ran out (it is forgotten here)."""
        tries = self._attempts.get(key, 0) + 1
        if tries >= ATTEMPTS:
            self._attempts.pop(key, None)
            return None
        self._attempts[key] = tries
        return now_ns + int(RETRY_SECONDS * 2 ** (tries - 1) * 1e9)

    def reset(self, key: int) -> None:
        """``key`` starts afresh (it succeeded, or something new came for it)."""
        self._attempts.pop(key, None)


async def sweep(
    node: NodeParts,
    what: str,
    read_page: Callable[[Any, int | None, int], tuple[list[Item], int | None]],
    take: Callable[[list[Item]], None],
    *,
    before_page: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Walk the store with ``read_page(kv, after, limit) -> (items, next after or None)``,
    handing each page to ``take``, again every :data:`SWEEP_SECONDS`; ``before_page`` waits
    for the caller's queue to drain first.  A failed read is logged and ends that pass
    (never returns while the node runs)."""
    while True:
        after: int | None = None
        while True:
            if before_page is not None:
                await before_page()
            await node.gate.step()
            try:
                page, after = node.store.read(functools.partial(_page, read_page, after))
            except Exception:
                node.stats["internal_errors"] += 1
                node.log.exception("node %s: sweeping %s", node.id, what)
                break
            take(page)
            if after is None:
                break
        await trio.sleep(SWEEP_SECONDS)


async def write_batch(
    node: NodeParts,
    keys: Sequence[int],
    steps: Sequence[Callable[[Any], Result]],
    what: str,
) -> list[tuple[int, Result]]:
    """Run ``steps`` (one per key of ``keys``) in one background store transaction,
    each alone if that fails (``Store.write_each``); a step that fails is counted as an
    internal error and logged (``node N: <what> <key>``), the others come back as (key,
    result), in order."""
    done = await node.store.write_each(steps, background=True)
    out: list[tuple[int, Result]] = []
    for key, got in zip(keys, done, strict=True):
        if isinstance(got, Exception):
            node.stats["internal_errors"] += 1
            node.log.error("node %s: %s %d", node.id, what, key, exc_info=got)
        else:
            out.append((key, got))
    return out


def _page(
    read_page: Callable[[Any, int | None, int], tuple[list[Item], int | None]],
    after: int | None,
    kv: Any,
) -> tuple[list[Item], int | None]:
    return read_page(kv, after, SWEEP_PAGE)
