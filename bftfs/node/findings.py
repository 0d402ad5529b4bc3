"""What a node's background checks found, kept in its LMDB until an operator clears it.

Mounts count the faults their reads meet, but reads take the first valid fragments and may
never ask a lying node, and their counters die with the mount.  The node's own checks do
meet every node: lazy verification reads a block from all its peers
(``node/rw_verifier.py``) and the scrub checks this node's own fragments
(``node/rw_scrubber.py``).  Their findings are evidence an operator must see in ``bftfs
status`` - as ``zpool status`` keeps its CKSUM column - so they are kept here, across
restarts of the node and of the status command:

- ``(peer, kind)``: faults this node's reads met in a peer's replies: ``corrupt``
  (a fragment that does not validate against the version the peer claims), ``refuted``
  (listed a version, then could not produce it), ``malformed``, ``time_ahead``; counted by
  the RW clients the node's verification and scrub read with (they share
  :attr:`Findings.peer_faults`);
- ``(self, "damaged")``: versions of this node's own store its scrub found damaged (of
  them ``repaired`` and ``left``), from the scrub's counters in ``node.stats``.

Totals only grow (``findings`` database, key ``"<node>:<kind>"``, an 8-byte count); the
operator's ``bftfs status --clear`` records the totals it has seen as its baseline in the
cluster directory (``bftfs/health.py``), so clearing needs no request a client could forge.
New findings are written at most every :data:`FLUSH_SECONDS`.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from bftfs.node.parts import NodeParts

DB = "findings"
PROGRESS_KEY = "findings"
#: How often new findings are written to the store (and shown by ``stats``).
FLUSH_SECONDS = 1.0
#: The scrub's counters in ``node.stats`` (node/rw_scrubber.py) and the kinds they become.
SCRUB_COUNTERS = {
    "rw.scrub.damaged": "damaged",
    "rw.scrub.repaired": "repaired",
    "rw.scrub.left": "left",
}


class Findings:
    """The findings of one node (see the module docstring)."""

    def __init__(self, node: NodeParts) -> None:
        self.node = node
        #: Faults this node's own RW clients met, by ``(peer, kind)``: the clients of the
        #: verifier and the scrub count into this one Counter.
        self.peer_faults: Counter[tuple[int, str]] = Counter()
        #: Everything ever found, as stored: ``(subject node, kind)`` -> count.
        self.totals: Counter[tuple[int, str]] = Counter()
        #: How much of each source is already in :attr:`totals`.
        self._taken: Counter[tuple[int, str]] = Counter()

    def pending(self) -> Counter[tuple[int, str]]:
        """What was found since the last flush, by ``(subject, kind)``."""
        now: Counter[tuple[int, str]] = Counter(self.peer_faults)
        for counter, kind in SCRUB_COUNTERS.items():
            now[(int(self.node.id), kind)] += self.node.stats.get(counter, 0)
        return Counter({k: v - self._taken[k] for k, v in now.items() if v > self._taken[k]})

    def load(self) -> None:
        """Read the stored totals (at start: they survive restarts)."""

        def step(kv: Any) -> list[tuple[bytes, bytes]]:
            return list(kv.scan(DB, b"", b"\xff"))

        for key, value in self.node.store.read(step):
            subject, _, kind = key.decode().partition(":")
            self.totals[(int(subject), kind)] = int.from_bytes(value, "big")
        self.publish()

    async def flush(self) -> None:
        """Add what was found since the last flush to the stored totals."""
        new = self.pending()
        if not new:
            return

        def step(kv: Any) -> None:
            for (subject, kind), count in new.items():
                key = f"{subject}:{kind}".encode()
                old = kv.get(DB, key)
                total = (0 if old is None else int.from_bytes(old, "big")) + count
                kv.put(DB, key, total.to_bytes(8, "big"))

        await self.node.store.write(step)
        self._taken.update(new)
        self.totals.update(new)
        self.publish()

    def publish(self) -> None:
        """``progress["findings"]``: ``{subject: {kind: count}}`` for ``stats``."""
        table: dict[str, dict[str, int]] = {}
        for (subject, kind), count in sorted(self.totals.items()):
            table.setdefault(str(subject), {})[kind] = count
        self.node.progress[PROGRESS_KEY] = table

    async def run(self) -> None:
        """Load, then flush every :data:`FLUSH_SECONDS` while the node runs; never raises."""
        try:
            self.load()
        except Exception:
            self.node.log.exception("node %s: stored findings unreadable", self.node.id)
        while True:
            await trio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:  # the node must keep serving: the next flush tries again
                self.node.log.exception("node %s: findings not stored", self.node.id)
