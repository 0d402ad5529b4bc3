"""Counting the recalls nodes push to this mount (issue 33): a recall is believed once
``b + 1`` distinct nodes pushed it for an object, so that a Byzantine node's false pushes
alone cannot make the holder give up a lease, and a malformed push is counted, not obeyed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from bftfs.fsobjects.leases import MAX_RECALLED


class RecallVotes:
    """Which nodes pushed a recall of each object: a recall is believed once ``b + 1``
    distinct nodes pushed it (one of them correct), so a Byzantine node's false pushes
    alone take nothing from the holder."""

    def __init__(self, b: int, key: str = "recall") -> None:
        """``key``: the push's key naming the objects (``"publish"``: a request to publish,
        ``fs/leases/publish.py``)."""
        self.b = b
        self.key = key
        self._pushed: dict[int, set[int]] = {}
        self._stats: Counter[str] = Counter()

    def count(self, node: int, body: Any, wanted: Callable[[int], bool]) -> list[int]:
        """Count node ``node``'s push ``body``: the objects of it now believed recalled.
        Pushes for objects not ``wanted`` (neither held nor asked for) are not counted."""
        oids = body.get(self.key) if isinstance(body, dict) else None
        if not isinstance(oids, list) or len(oids) > MAX_RECALLED:
            self._stats["pushes_malformed"] += 1
            return []
        believed = []
        for oid in oids:
            if not isinstance(oid, int) or isinstance(oid, bool):
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

    def believed(self, oid: int) -> bool:
        """Whether ``b + 1`` nodes pushed a recall of ``oid`` (a grant that raced it)."""
        return len(self._pushed.get(oid, ())) > self.b

    def __len__(self) -> int:
        """Objects with pushes counted (a bound on what a Byzantine node can make it keep)."""
        return len(self._pushed)

    def clear(self) -> None:
        """Forget every push counted."""
        self._pushed.clear()

    def forget(self, oid: int) -> None:
        """The lease on ``oid`` ended: its pushes were for that lease."""
        self._pushed.pop(oid, None)

    def take_stats(self) -> Counter[str]:
        """What was counted since the last call (merged into ``Leases.stats``)."""
        stats, self._stats = self._stats, Counter()
        return stats
