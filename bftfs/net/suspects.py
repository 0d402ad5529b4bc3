"""Nodes a client asks last, or not at all while others answer, for what they did: sending
what no correct node sends, or holding a connection attempt far past its round trip (pure:
no trio, no clock; the pool passes the time).  Issue 64: a Byzantine node must cost a
correct client little while a quorum of the others answers.

**Suspects.**  A node whose frames prove it faulty - a frame the session refuses (past the
frame limit, a bad MAC), a message neither reply nor push, more than ``PUSH_BUDGET``
bytes of pushes between two replies (``net/connection.py``: the connection is closed), a
batch, PASIS or Q/U reply that does not parse - is *suspect* for
:data:`SUSPECT_SECONDS` from its latest such frame.  Only a faulty node (or a network
attacker forging frames) sends them: its session's keys are its own.  A suspect is asked
last by every quorum call (like a node that refused a connection, ``Pool.down``) and
held in reserve by it (:func:`suspects_last`, ``QuorumEngine(reserve=)``): not among the
targets asked at once, nor probed because the others are slower than ``probe_after``;
only when one of them fails, refuses, is overdue for a resend, all answered without
``enough``, or all were asked ``QuorumEngine.reserve_wait`` ago without it (a crashed or
withholding node reports nothing: a call must not fail while a quorum of correct nodes
is up).  A suspect whose reply a quorum call accepted is pardoned (:meth:`Suspects.pardon`):
asked in order again.  A write or a Q/U update, which go to every node, go to the others; a request
whose connection the suspect broke is not sent again.  So a node that answers every
request with megabytes of pushes and nonsense (``flood-client``) costs one or two of its
requests per :data:`SUSPECT_SECONDS`, not every one.
Nothing is believed of it more or less than before: what it answers is judged as ever;
only who is asked first changes, and a suspect is asked whenever the others do not do.

**Stuck connections.**  A node whose connection attempt (TCP and the handshake) has been
under way for ``max(CONNECTING_FLOOR, CONNECTING_K * RTO)`` - its round trip measured by
its own TCP set-up, so a node far away is given time in proportion - is asked last while
the attempt lasts (:meth:`Suspects.stuck`): a node that stopped reading (its process frozen,
``stop-reading``) accepts TCP connections in its kernel and never answers the handshake,
and until the connect timeout gave up on it (seconds) every read asked it for its
fragment and waited for a probe to another node.  A call waiting for that connection
reports trouble to its quorum call at the same mark (``Pool.connect``), so the call asks
another node at once instead of after its ``probe_after``; from then the attempt is stuck
until it ends, whatever the node's round trip, sampled by the attempt since, says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

#: A node id (``ids.NodeId`` or a plain int).
N = TypeVar("N", bound=int)

#: Seconds a node stays suspect after its latest frame that proves it faulty.
SUSPECT_SECONDS = 60.0
#: A connection attempt under way this long (and ``CONNECTING_K`` RTOs of the node's own
#: round trip) marks its node as asked last until it ends.
CONNECTING_FLOOR = 0.05
CONNECTING_K = 4.0


class Suspects:
    """Suspect nodes and connection attempts under way (see the module docstring)."""

    __slots__ = ("until", "reasons", "connecting", "overdue")

    def __init__(self) -> None:
        #: Per suspect node, when it stops being one.
        self.until: dict[int, float] = {}
        #: Why nodes were made suspect: ``(node, reason)`` -> count.
        self.reasons: Counter[tuple[int, str]] = Counter()
        #: Per node with a connection attempt under way, when it began.
        self.connecting: dict[int, float] = {}
        #: Nodes whose attempt under way already kept a caller waiting its patience
        #: (:meth:`connect_overdue`): stuck whatever their round trip says since.
        self.overdue: set[int] = set()

    def suspect(self, node: int, reason: str, now: float) -> None:
        """``node`` sent a frame that proves it faulty (``reason``) at ``now``."""
        self.until[int(node)] = now + SUSPECT_SECONDS
        self.reasons[(int(node), reason)] += 1

    def pardon(self, nodes: Iterable[int]) -> None:
        """``nodes`` answered a quorum call correctly: asked in order again (a node made
        suspect once, by a lie or a frame mangled on the way, is not held back for the
        rest of :data:`SUSPECT_SECONDS` once it answers as a correct node does)."""
        for n in nodes:
            self.until.pop(int(n), None)

    def suspected(self, targets: Iterable[N], now: float) -> set[N]:
        """Those of ``targets`` suspect at ``now``."""
        until = self.until
        if not until:
            return set()
        return {n for n in targets if until.get(int(n), 0.0) > now}

    def connect_started(self, node: int, now: float) -> None:
        self.connecting[int(node)] = now

    def connect_overdue(self, node: int) -> None:
        """A caller waited its patience for ``node``'s attempt under way: the attempt is
        stuck until it ends, also if the node's round trip, sampled by the attempt's own
        TCP set-up since, now gives it more patience (a loaded machine's first sample:
        else every call in between asked it first again and waited for it)."""
        if int(node) in self.connecting:
            self.overdue.add(int(node))

    def connect_ended(self, node: int) -> None:
        self.connecting.pop(int(node), None)
        self.overdue.discard(int(node))

    def stuck(self, targets: Iterable[N], now: float, rto: Callable[[int], float]) -> set[N]:
        """Those of ``targets`` whose connection attempt has lasted ``max(CONNECTING_FLOOR,
        CONNECTING_K * rto(node))``, or kept a caller waiting that long
        (:meth:`connect_overdue`)."""
        connecting = self.connecting
        if not connecting:
            return set()
        out = set()
        for n in targets:
            began = connecting.get(int(n))
            if began is None:
                continue
            if int(n) in self.overdue or now - began > connect_patience(rto(n)):
                out.add(n)
        return out


def connect_patience(rto: float) -> float:
    """Seconds a connection attempt to a node of round-trip timeout ``rto`` (0: none
    measured) may last before its node is asked last and its callers probe others."""
    return max(CONNECTING_FLOOR, CONNECTING_K * rto)


def suspects_last(targets: Sequence[N], suspects: set[N]) -> tuple[list[N], int]:
    """``targets`` with ``suspects`` moved to the end (the order kept otherwise), and how
    many of them a quorum call holds in reserve (``QuorumEngine(reserve=)``: not asked at
    once, nor for ``probe_after`` alone): all, unless no other target is left."""
    if not suspects:
        return list(targets), 0
    others = [n for n in targets if n not in suspects]
    if not others:
        return list(targets), 0
    last = [n for n in targets if n in suspects]
    return others + last, len(last)
