"""Object sync's decisions (seed L2599-2607), apart from any transport.

A server that lacks a conditioned-on version asks other servers for it and believes an
answer only when ``b + 1`` of them give it byte for byte, so at least one comes from a
benign host.  It asks the hosts the OHS names first (they stored the version), then every
other server.  The node's driver (``bftfs.node.qu_server._sync``) runs these rules over its
quorum calls; the tier-1 in-memory cluster runs the same rules over direct calls, so both
test and production use one vote count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from bftfs.qu.canon import canonical
from bftfs.qu.messages import MessageError, parse_sync_reply

#: What a sync yields: the version's ``(state, applied)``.
Synced = tuple[bytes | None, bytes]


def sync_order(me: int, hosts: Iterable[int], n: int) -> list[int]:
    """Whom to ask, in order: the hosts named by the OHS (other than ``me``), then the
    other servers."""
    named = [s for s in hosts if s != me]
    return named + [s for s in range(n) if s != me and s not in named]


class SyncVotes:
    """The answers to one object sync, counted by their exact bytes."""

    def __init__(self, b: int) -> None:
        self.needed = b + 1
        self._seen: dict[bytes, Synced] = {}
        self._votes: Counter[bytes] = Counter()

    def add(self, raw: Any) -> bool:
        """Count one host's reply; whether its answer now has ``b + 1`` votes.  A
        malformed reply, or one without the version, counts for nothing."""
        try:
            got = parse_sync_reply(raw)
        except MessageError:
            return False
        if got is None:
            return False
        key = canonical(list(got))
        self._seen[key] = got
        self._votes[key] += 1
        return self._votes[key] >= self.needed

    def decided(self) -> bool:
        return any(v >= self.needed for v in self._votes.values())

    def result(self) -> Synced | None:
        """The answer ``b + 1`` hosts gave, or None."""
        for key, v in self._votes.most_common(1):
            if v >= self.needed:
                return self._seen[key]
        return None
