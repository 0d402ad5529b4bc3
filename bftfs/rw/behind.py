"""Which blocks a catching-up node looks at and what it makes of a read: the pure core of
catch-up (node/rw_catchup.py has the task and the argument).

* :class:`ListingMerge` walks the other nodes' paged ``rw.list`` listings in block order and
  yields only blocks that ``need = b + 1`` of them list, so at least one correct node does.
* :func:`is_candidate`: ``b + 1`` peers report as their latest a version this node lacks.
* :func:`judge`: what a read's outcome means for this node (behind, current, incomplete).
* :func:`own_fragment`: this node's fragment of the outcome, checked like a WRITE.

Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from bftfs.rw.classify import Kind
from bftfs.rw.messages import BlockId, ListReply
from bftfs.rw.timestamp import ZERO, Timestamp
from bftfs.rw.verify import ReadOutcome, validate_fragment


@dataclass(frozen=True)
class NeedPages:
    """Fetch the next page from each of these peers, listing blocks above the cursor."""

    after: dict[int, BlockId | None]


@dataclass(frozen=True)
class Listed:
    """A block that enough peers list, with each one's latest timestamp for it."""

    block: BlockId
    latest: dict[int, Timestamp]


class ListingMerge:
    """A merge of the peers' paged listings that yields the blocks ``need`` peers list.

    Sans I/O: :meth:`step` says which pages to fetch (:class:`NeedPages`) or returns the next
    block listed by at least ``need`` peers (:class:`Listed`), or None when no such block is
    left.  The driver answers :class:`NeedPages` with :meth:`feed` or :meth:`drop`.

    Why ``need`` and the jump: with ``need = b + 1`` every block considered is listed by a
    correct peer.  The next block considered is the ``need``-th smallest head of the peers'
    listings: no block below it can be listed by ``need`` peers, so every peer below it
    jumps there (its next page starts just below it).  A Byzantine peer listing endless
    invented blocks thus costs one page per page of the correct peers' listings.
    """

    def __init__(self, peers: Iterable[int], need: int) -> None:
        if need < 1:
            raise ValueError("need must be at least 1")
        self.need = need
        self._buf: dict[int, deque[tuple[BlockId, Timestamp]]] = {p: deque() for p in peers}
        #: The block the peer's next page starts above (None: from the first block).
        self._after: dict[int, BlockId | None] = dict.fromkeys(self._buf)
        self._more: dict[int, bool] = dict.fromkeys(self._buf, True)

    @property
    def peers(self) -> list[int]:
        """Peers still taking part (not dropped)."""
        return sorted(self._buf)

    def feed(self, peer: int, reply: ListReply) -> None:
        """A page from ``peer`` (parsed against the request for its cursor)."""
        if peer not in self._buf:
            return
        self._buf[peer].extend(reply.entries)
        if reply.entries:
            self._after[peer] = reply.entries[-1][0]
        self._more[peer] = reply.more

    def drop(self, peer: int) -> None:
        """Leave ``peer`` out from now on (it sent garbage or did not answer)."""
        self._buf.pop(peer, None)
        self._after.pop(peer, None)
        self._more.pop(peer, None)

    def cursor(self, peer: int) -> BlockId | None:
        return self._after[peer]

    def step(self) -> NeedPages | Listed | None:
        """The next thing to do (see the class docstring)."""
        while True:
            want = {p: self._after[p] for p, buf in self._buf.items() if not buf and self._more[p]}
            if want:
                return NeedPages(want)
            heads = sorted(buf[0][0] for buf in self._buf.values() if buf)
            if len(heads) < self.need:
                return None  # fewer than `need` peers list anything more
            target = heads[self.need - 1]
            jumped = False
            for p, buf in self._buf.items():
                popped = False
                while buf and buf[0][0] < target:
                    buf.popleft()
                    popped = True
                jumped = jumped or popped
                if popped and not buf and self._more[p]:
                    # Its next page starts at `target` (a cursor only moves forward).
                    cur = self._after[p]
                    if cur is None or cur < target - 1:
                        self._after[p] = BlockId(target - 1)
            if jumped:
                continue
            latest = {
                p: buf.popleft()[1] for p, buf in self._buf.items() if buf and buf[0][0] == target
            }
            return Listed(target, latest)


def is_candidate(
    latest: Mapping[int, Timestamp], hosts: Callable[[Timestamp], bool], need: int
) -> bool:
    """Whether at least ``need`` peers report, as their latest, a version this node lacks."""
    return sum(1 for ts in latest.values() if not hosts(ts)) >= need


class Verdict(enum.Enum):
    """What to do with a candidate after reading it."""

    #: The latest complete write is one this node lacks: store its fragment.
    BEHIND = "behind"
    #: This node holds the latest complete write already (or it is the initial value).
    CURRENT = "current"
    #: The newest candidate is only repairable: not provably complete, leave it.
    INCOMPLETE = "incomplete"


def judge(outcome: ReadOutcome, hosts: Callable[[Timestamp], bool], floor: Timestamp) -> Verdict:
    """Classify a read's outcome for this node (``hosts``: whether it stores a version;
    ``floor``: its collection floor, below which it would not store anything)."""
    if outcome.kind is not Kind.COMPLETE:
        return Verdict.INCOMPLETE
    if outcome.ts == ZERO or outcome.ts < floor or hosts(outcome.ts):
        return Verdict.CURRENT
    return Verdict.BEHIND


class NotValidated(Exception):
    """The fragment this node would store does not validate (nothing is stored)."""


def own_fragment(outcome: ReadOutcome, node: int, n: int) -> tuple[bytes, bytes]:
    """This node's (cross checksum, fragment) of the outcome's version, checked.

    The fragments of a read's outcome were regenerated from ``m`` fragments and their
    cross checksum compared with the candidate's as a whole; this repeats, for the one
    fragment stored here, the check a node makes on WRITE (VALIDATE: the cross checksum
    hashes to the timestamp's verifier and the fragment to its entry), so nothing is stored
    that an honest WRITE could not have stored.

    Raises:
        NotValidated: no fragment for ``node``, or it fails VALIDATE.
    """
    cc = outcome.cross_checksum
    if cc is None or not 0 <= node < len(outcome.fragments):
        raise NotValidated(f"no fragment {node} in the read's outcome")
    frag = outcome.fragments[node]
    if not validate_fragment(outcome.ts, cc, frag, node, n):
        raise NotValidated(f"fragment {node} does not validate against {outcome.ts!r}")
    return cc, frag
