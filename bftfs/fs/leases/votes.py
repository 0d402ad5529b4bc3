"""Counting the recalls nodes push to this mount (issue 33): a recall is believed once
``b + 1`` distinct nodes pushed it for an object, so that a Byzantine node's false pushes
alone cannot make the holder give up a lease, and a malformed push is counted, not obeyed.
The requests to publish nodes push (``fs/leases/publish.py``) are counted the same way,
by the whole entry (object, reader, token) rather than the object."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar, cast, overload

from bftfs.fsobjects.leases import MAX_RECALLED

K = TypeVar("K", bound=Hashable)


def _oid(item: Any) -> int | None:
    """A recall's item: an object id (None: malformed)."""
    return item if isinstance(item, int) and not isinstance(item, bool) else None


class RecallVotes(Generic[K]):
    """Which nodes pushed a recall of each object (or each item of another push): a
    recall is believed once ``b + 1`` distinct nodes pushed it (one of them correct), so a
    Byzantine node's false pushes alone take nothing from the holder."""

    @overload
    def __init__(self: RecallVotes[int], b: int, key: str = "recall") -> None: ...

    @overload
    def __init__(self, b: int, key: str, item: Callable[[Any], K | None]) -> None: ...

    def __init__(self, b: int, key: str = "recall", item: Any = None) -> None:
        """``key``: the push's key naming the items; ``item``: what an item counts as
        (None: malformed), object ids by default (``"publish"``'s entries,
        ``fs/leases/publish.py``)."""
        self.b = b
        self.key = key
        # (the first overload's K is int: object ids)
        self._item = cast("Callable[[Any], K | None]", item or _oid)
        self._pushed: dict[K, set[int]] = {}
        self._stats: Counter[str] = Counter()

    def count(self, node: int, body: Any, wanted: Callable[[K], bool]) -> list[K]:
        """Count node ``node``'s push ``body``: the items of it now believed (objects
        recalled).  Pushes for items not ``wanted`` (objects neither held nor asked for)
        are not counted."""
        items = body.get(self.key) if isinstance(body, dict) else None
        if not isinstance(items, list) or len(items) > MAX_RECALLED:
            self._stats["pushes_malformed"] += 1
            return []
        believed = []
        for raw in items:
            oid = self._item(raw)
            if oid is None:
                self._stats["pushes_malformed"] += 1
                continue
            if not wanted(oid):
                self._stats["pushes_unheld"] += 1
                continue
            nodes = self._pushed.setdefault(oid, set())
            nodes.add(int(node))
            if len(nodes) > self.b:
                believed.append(oid)
        return believed

    def believed(self, oid: K) -> bool:
        """Whether ``b + 1`` nodes pushed a recall of ``oid`` (a grant that raced it)."""
        return len(self._pushed.get(oid, ())) > self.b

    def __len__(self) -> int:
        """Objects with pushes counted (a bound on what a Byzantine node can make it keep)."""
        return len(self._pushed)

    def clear(self) -> None:
        """Forget every push counted."""
        self._pushed.clear()

    def forget(self, oid: K) -> None:
        """The lease on ``oid`` ended: its pushes were for that lease."""
        self._pushed.pop(oid, None)

    def take_stats(self) -> Counter[str]:
        """What was counted since the last call (merged into ``Leases.stats``)."""
        stats, self._stats = self._stats, Counter()
        return stats
