"""Object sync's decisions (seed L2599-2607), apart from any transport.

A server that lacks a conditioned-on version asks other servers for it and believes an
answer only when ``b + 1`` of them give it byte for byte, so at least one comes from a
benign host.  It asks the hosts the OHS names first (they stored the version), then every
other server.  The node's driver (``node/qu_objsync.py``) runs these rules over its
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


#: What a catch-up from the current state yields: ``(state, applied, kind, answer)``.
Current = tuple[bytes | None, bytes, str, Any]

#: The kinds of version a server accepts (a method it ran or a copy it made).
ACCEPTED_KINDS = ("method", "copy")


def parse_current_reply(raw: Any) -> Current | None:
    """A ``qu.sync`` reply with the version's kind and stored answer (what a restarted
    server's catch-up takes over, ``adoption.adopt_step``), or None without them, without
    the version, or for a version the host did not accept itself (a synced one).

    Raises:
        MessageError: malformed.
    """
    got = parse_sync_reply(raw)
    if got is None:
        return None
    kind = raw.get("k")
    if kind not in ACCEPTED_KINDS:
        return None
    return got[0], got[1], kind, raw.get("a")


class SyncVotes:
    """The answers to one object sync, counted by their exact bytes (with ``full``: with
    the version's kind and stored answer, :func:`parse_current_reply`)."""

    def __init__(self, b: int, *, full: bool = False) -> None:
        self.needed = b + 1
        self.full = full
        self._seen: dict[bytes, Any] = {}
        self._votes: Counter[bytes] = Counter()

    def add(self, raw: Any) -> bool:
        """Count one host's reply; whether its answer now has ``b + 1`` votes.  A
        malformed reply, or one without the version, counts for nothing."""
        try:
            got: Any = parse_current_reply(raw) if self.full else parse_sync_reply(raw)
            key = canonical(list(got)) if got is not None else None
        except (MessageError, ValueError, TypeError):
            return False
        if got is None or key is None:
            return False
        self._seen[key] = got
        self._votes[key] += 1
        return self._votes[key] >= self.needed

    def promising(self, raw: Any) -> bool:
        """Count ``raw`` (:meth:`add`); whether its answer has ``b + 1`` votes now, or is
        the same as every answer counted before it: worth waiting for the other hosts
        asked to confirm it, rather than asking one more at once (a malformed answer, or
        one that disagrees, is not)."""
        before = sum(self._votes.values())
        if self.add(raw):
            return True
        votes = self._votes
        return sum(votes.values()) > before and max(votes.values()) == before + 1

    def decided(self) -> bool:
        return any(v >= self.needed for v in self._votes.values())

    def result(self) -> Any:
        """The answer ``b + 1`` hosts gave (:data:`Synced`, or :data:`Current` when
        ``full``), or None."""
        for key, v in self._votes.most_common(1):
            if v >= self.needed:
                return self._seen[key]
        return None
