"""Measured round-trip times per node, and the timeouts they stretch (pure: no trio, no
clock; callers pass the time).  Issue 65: across a WAN a node 150 ms away must not be
taken for a dead one, and one node far away must not slow every operation down.

**The estimator** is RFC 6298's (section 2), fed with each request/reply pair's time
(Karn's rule: never with the reply to a request sent more than once, since it is not
known which copy it answers) and with each TCP connection's set-up (SYN to SYN-ACK, one
round trip on the network alone)::

    first sample R:  SRTT = R,  RTTVAR = R / 2
    later ones:      RTTVAR = (1 - BETA) * RTTVAR + BETA * |SRTT - R|
                     SRTT   = (1 - ALPHA) * SRTT + ALPHA * R
    RTO = SRTT + max(GRANULARITY, 4 * RTTVAR)

A reply's time includes the node's own work, so SRTT is a *response* time: the right
measure for how long to wait for an answer.

**The timeout rule**: a timeout that was a fixed constant becomes ``max(floor, k * RTO)``
(:func:`stretch`), the floor being the constant it was.  So nothing fails sooner than it
did (slow is not unavailable), and a node far away gets time in proportion to its distance
(``docs/wan.md`` lists each timeout, its floor and its ``k``).  Before the first sample a
timeout is its floor.

**Slow and overdue nodes** (:meth:`RttTable.ask_last`): a node whose SRTT is well above the others'
(:data:`SLOW_RATIO` times the median and :data:`SLOW_MARGIN` more) is asked last by a
quorum call, like a node that refused a connection: Q/U and PASIS need ``n - t`` answers,
so one far node costs nothing when it is not among the first asked.  An estimate older
than :data:`STALE` seconds does not count (a node asked last is asked less, so a hiccup
must not keep it last for ever).  So is a node silent since it was asked something for
``max(OVERDUE_FLOOR, OVERDUE_K * RTO)`` (:meth:`RttTable.overdue`): a node hung or cut off
is passed over within a few of its round trips; only ``Liveness`` (much later) judges it
absent.

**Replies arriving** (:class:`Arrival`): a request is resent when its reply does not come
within the resend interval, but on a slow link a big reply (a read of 16 fragments, 5.6
MB) or the big replies queued before it take longer than that to arrive, and a resend
then only asks the node to send them all again.  Each connection measures the rate its
big frames arrive at; while bytes keep arriving, a resend waits for the frame being
received at that rate and one interval more (:meth:`Arrival.hold`), as often as another
frame follows.  Only resends wait: the call's deadline stays where it was.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

#: A node id (``ids.NodeId`` or a plain int: this module imports nothing of bftfs).
N = TypeVar("N", bound=int)

#: RFC 6298's gains for SRTT and RTTVAR.
ALPHA = 1 / 8
BETA = 1 / 4
#: The clock granularity term of RTO (seconds).
GRANULARITY = 0.001
#: A node is slow when its SRTT is this many times the median SRTT ...
SLOW_RATIO = 3.0
#: ... and this many seconds above it (a WAN's distances, not a loaded machine's jitter).
SLOW_MARGIN = 0.05
#: Seconds after which a node's last sample no longer makes it slow.
STALE = 10.0
#: A node silent this long (and ``OVERDUE_K`` RTOs) since it was asked something is
#: overdue: asked last, nothing more (``Liveness`` judges it absent much later).
OVERDUE_FLOOR = 0.5
OVERDUE_K = 4.0

#: The ``k`` of each stretched timeout (``docs/wan.md`` has the table):
#: a connection's TCP set-up and handshake (two round trips, the keys' work);
CONNECT_K = 3.0
#: one call's reply, its connection included (``Endpoint.call``, ``bftfs status``);
CALL_K = 4.0
#: a quorum call, over its slowest target (``Endpoint.quorum_call``);
QUORUM_K = 4.0
#: the interval between resends of an unanswered request (RFC 6298's RTO itself).
RESEND_K = 1.0


@dataclass(slots=True)
class RttEstimator:
    """One peer's smoothed round-trip time and its variation (RFC 6298)."""

    srtt: float | None = None
    rttvar: float = 0.0
    samples: int = 0
    #: When the last sample was taken (the caller's clock).
    at: float = 0.0
    #: The shortest sample yet: the round trip with the least queueing in it (the
    #: connection's set-up is one), what a bandwidth-delay product is sized from
    #: (:func:`bandwidth_delay`); a reply's SRTT counts the big replies queued before it.
    least: float = math.inf

    def sample(self, r: float, now: float = 0.0) -> None:
        """One measured round trip of ``r`` seconds (negative ones are ignored)."""
        if r < 0:
            return
        if self.srtt is None:
            self.srtt, self.rttvar = r, r / 2
        else:
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - r)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * r
        self.samples += 1
        self.at = now
        self.least = min(self.least, r)

    def rto(self) -> float:
        """SRTT + max(G, 4 RTTVAR); 0 before the first sample."""
        if self.srtt is None:
            return 0.0
        return self.srtt + max(GRANULARITY, 4 * self.rttvar)


def stretch(floor: float, k: float, est: RttEstimator | None) -> float:
    """The timeout rule: ``max(floor, k * RTO)``; ``floor`` without a sample."""
    if est is None or est.srtt is None:
        return floor
    return max(floor, k * est.rto())


class RttTable:
    """An estimator per node (an endpoint's, for every session it has had with each)."""

    __slots__ = ("nodes",)

    def __init__(self) -> None:
        self.nodes: dict[int, RttEstimator] = {}

    def sample(self, node: int, r: float, now: float) -> None:
        """A round trip of ``r`` seconds to ``node``, measured at ``now``."""
        est = self.nodes.get(node)
        if est is None:
            est = self.nodes[node] = RttEstimator()
        est.sample(r, now)

    def get(self, node: int) -> RttEstimator | None:
        return self.nodes.get(node)

    def least(self, node: int) -> float:
        """``node``'s shortest round trip yet (infinite before its first sample)."""
        est = self.nodes.get(node)
        return math.inf if est is None else est.least

    def srtt(self, node: int) -> float:
        """``node``'s SRTT (0 before its first sample)."""
        est = self.nodes.get(node)
        return 0.0 if est is None or est.srtt is None else est.srtt

    def rto(self, node: int) -> float:
        """``node``'s RTO (0 before its first sample)."""
        est = self.nodes.get(node)
        return 0.0 if est is None else est.rto()

    def timeout(self, node: int, floor: float, k: float) -> float:
        """:func:`stretch` for ``node``."""
        return stretch(floor, k, self.nodes.get(node))

    def quorum_timeout(self, targets: Iterable[int], floor: float, k: float) -> float:
        """The timeout rule over the slowest of ``targets``: ``max(floor, k * RTO)``."""
        return max(floor, k * max((self.rto(n) for n in targets), default=0.0))

    def slow(self, targets: Iterable[N], now: float) -> set[N]:
        """Those of ``targets`` far slower than the rest (module docstring): empty unless
        at least three have fresh samples."""
        fresh: dict[N, float] = {}
        for node in targets:
            est = self.nodes.get(node)
            if est is not None and est.srtt is not None and now - est.at <= STALE:
                fresh[node] = est.srtt
        if len(fresh) < 3:
            return set()
        ranked = sorted(fresh.values())
        median = ranked[(len(ranked) - 1) // 2]
        bar = max(SLOW_RATIO * median, median + SLOW_MARGIN)
        return {node for node, srtt in fresh.items() if srtt > bar}

    def overdue(self, targets: Iterable[N], asked_at: Mapping[N, float], now: float) -> set[N]:
        """Those of ``targets`` silent since they were asked something (``asked_at``: when,
        the endpoint's ``Liveness``) for ``max(OVERDUE_FLOOR, OVERDUE_K * RTO)``: a node
        hung or cut off is asked last within a few round trips, not failed."""
        return {
            node
            for node in targets
            if (asked := asked_at.get(node)) is not None
            and now - asked > self.timeout(node, OVERDUE_FLOOR, OVERDUE_K)
        }

    def ask_last(self, targets: Iterable[N], asked_at: Mapping[N, float], now: float) -> set[N]:
        """:meth:`slow` and :meth:`overdue` ones: a quorum call asks them last."""
        targets = list(targets)
        return self.slow(targets, now) | self.overdue(targets, asked_at, now)


def bandwidth_delay(links: Iterable[tuple[float, float]], m: int) -> tuple[float, float]:
    """The data rate (bytes/s) and the round (s) a read of ``m`` fragments gets, from each
    link's ``(rate, least round trip)``: :attr:`Arrival.rate` and
    :attr:`RttEstimator.least`.  A read takes its fragments from ``m`` nodes at once, so
    its rate is the sum of the ``m`` fastest measured links' and its round the longest of
    theirs; ``(0, 0)`` until ``m`` links have both measures."""
    measured = sorted(
        ((rate, rtt) for rate, rtt in links if rate > 0 and math.isfinite(rtt)), reverse=True
    )[: max(m, 1)]
    if len(measured) < m or not measured:
        return 0.0, 0.0
    return sum(rate for rate, _ in measured), max(rtt for _, rtt in measured)


@dataclass(slots=True)
class Arrival:
    """The big frames arriving on one connection (``FrameReader.on_progress``): when the
    last chunk came, how much of the current frame is still to come, and the rate whole
    frames arrive at (each frame's bytes after its first chunk over the time they took,
    smoothed with :data:`ALPHA`)."""

    #: Bytes per second (0 before the first frame measured).
    rate: float = 0.0
    #: When the last chunk arrived (the caller's clock).
    last: float = -math.inf
    #: Bytes of the frame being received still to come (0 between frames).
    left: int = 0
    started: float = 0.0
    counted: int = 0

    def chunk(self, got: int, left: int, now: float) -> None:
        """``got`` bytes of a big frame arrived at ``now``, ``left`` more to come."""
        if self.left == 0:  # a frame's first chunk: its bytes arrived before ``now``
            self.started, self.counted = now, 0
        else:
            self.counted += got
        self.last, self.left = now, left
        if left == 0 and self.counted > 0 and now > self.started:
            sample = self.counted / (now - self.started)
            self.rate = sample if self.rate == 0 else (1 - ALPHA) * self.rate + ALPHA * sample

    def hold(self, now: float, window: float) -> float:
        """Seconds a resend due at ``now`` waits more: 0 unless a chunk arrived within
        ``window`` (the resend interval); then until ``window`` after that chunk (the reply
        awaited may be the frame that follows) and the rest of the frame being received at
        the measured rate."""
        if now - self.last > window:
            return 0.0
        return self.last + window - now + (self.left / self.rate if self.rate > 0 else 0.0)
