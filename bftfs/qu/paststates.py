"""Fetching the states of an object's agreed past versions (``qu.states``), for
:class:`~bftfs.qu.pastread.PastReader`: each from one of its hosts, checked against its
agreed digest, the next host asked when one gives it back altered, not at all, or is
silent for :data:`ROUND_TIMEOUT` (a withholding host costs a read that long, not its
call's stretched timeout)."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import trio

from bftfs.ids import NodeId
from bftfs.net.endpoint import Endpoint
from bftfs.net.errors import TransportError
from bftfs.qu.attempt import QUUnavailable
from bftfs.qu.messages import MessageError
from bftfs.qu.past import (
    KIND_STATES,
    MAX_STATES,
    Agreed,
    parse_states_reply,
    state_digest,
    states_request,
)
from bftfs.qu.timestamp import Timestamp

log = logging.getLogger(__name__)

#: Seconds a history round waits for servers beyond a quorum.
ROUND_TIMEOUT = 5.0


class HistoryUnavailable(QUUnavailable):
    """Too few servers answered a history request, or none holding a version's state gave
    it back intact."""


@dataclass(frozen=True)
class _Heard:
    """What one ``qu.states`` request of :meth:`StateFetcher._hedged` brought: its states
    (None: nothing yet, :data:`ROUND_TIMEOUT` passed), ``late`` when after that."""

    chunk: list[Agreed]
    got: Mapping[Timestamp, bytes | None] | None
    late: bool


class StateFetcher:
    """The ``qu.states`` fetches of one reader (module docstring)."""

    def __init__(self, endpoint: Endpoint, unanswered: set[int]) -> None:
        self.endpoint = endpoint
        #: Nodes that once let a request go unanswered (shared with the reader).
        self._unanswered = unanswered
        #: ``qu.states`` requests sent, and states taken from what ``qu.chains`` offered.
        self.fetches = 0
        self.offered_taken = 0
        #: States asked of a next host because the one asked was silent.
        self.hedged = 0

    async def states(
        self,
        oid: int,
        versions: Sequence[Agreed],
        offered: Mapping[Timestamp, bytes] | None = None,
    ) -> dict[Timestamp, bytes | None]:
        """The states of ``versions`` (agreed entries), each checked against its digest;
        thinned ones are left out (they have none).  ``offered``: states a ``qu.chains``
        round brought (:class:`~bftfs.qu.pastread.Seed`), taken where they match; the
        others are asked for."""
        out: dict[Timestamp, bytes | None] = {}
        todo = []
        for v in versions:
            if v.digest is None:
                out[v.lt] = None
            elif not v.thinned:
                state = None if offered is None else offered.get(v.lt)
                if state is not None and state_digest(state) == v.digest:
                    out[v.lt] = state
                    self.offered_taken += 1
                else:
                    todo.append(v)
        if todo:
            await self._hedged(oid, todo, out)
        return out

    async def _hedged(
        self, oid: int, todo: Sequence[Agreed], out: dict[Timestamp, bytes | None]
    ) -> None:
        """Fetch the states of ``todo`` into ``out``: each from the first of its hosts
        (:meth:`_next_host`); one that gives it back altered or not at all, or has not
        answered within :data:`ROUND_TIMEOUT`, is followed by the next host.  A host
        silent that long is not given up on (slow is not unavailable: its answer is still
        taken when it comes) but not waited for alone either: before, a host that withheld
        held the fetch for its call's whole timeout, which the transport stretches to
        four of the node's response times (``net/rtt.py``: 20-40 s on a loaded machine),
        and the campaign's final history reads hung on one Byzantine node.

        Raises:
            HistoryUnavailable: no host left to ask, none outstanding, for a version.
        """
        tried: dict[Timestamp, set[int]] = {}
        asking: Counter[Timestamp] = Counter()  # requests outstanding per version
        fresh: Counter[Timestamp] = Counter()  # ... of them, not silent that long yet
        send, recv = trio.open_memory_channel[_Heard](math.inf)
        lost: list[Timestamp] = []  # versions no host gave back intact
        async with trio.open_nursery() as nursery:

            def ask(versions: Sequence[Agreed]) -> None:
                by_host: dict[int, list[Agreed]] = {}
                for v in versions:
                    host = self._next_host(v.hosts, tried.setdefault(v.lt, set()))
                    if host is None:
                        if not asking.get(v.lt):
                            lost.append(v.lt)
                        continue  # every host asked: wait for those outstanding
                    tried[v.lt].add(host)
                    asking[v.lt] += 1
                    fresh[v.lt] += 1
                    by_host.setdefault(host, []).append(v)
                for host, wanted in by_host.items():
                    for i in range(0, len(wanted), MAX_STATES):
                        nursery.start_soon(self._ask, send, host, oid, wanted[i : i + MAX_STATES])

            ask(todo)
            while not lost and any(v.lt not in out for v in todo):
                heard = await recv.receive()
                left = [v for v in heard.chunk if v.lt not in out]
                if heard.got is None:  # silent for ROUND_TIMEOUT: the next host too
                    fresh.subtract(v.lt for v in left)
                    ask(left)
                    continue
                for v in left:
                    asking[v.lt] -= 1
                    fresh[v.lt] -= 0 if heard.late else 1
                    state = heard.got.get(v.lt)
                    if state is not None and state_digest(state) == v.digest:
                        out[v.lt] = state
                # Not given back: the next host, unless one asked is not overdue yet.
                ask([v for v in left if v.lt not in out and fresh[v.lt] <= 0])
            nursery.cancel_scope.cancel()  # hosts still silent: their answers are not needed
        if lost:
            raise HistoryUnavailable(f"object {oid}: no server gave version {lost[0]} intact")

    async def _ask(
        self, send: trio.MemorySendChannel[_Heard], host: int, oid: int, chunk: list[Agreed]
    ) -> None:
        """:meth:`_fetch` of ``chunk`` from ``host``, its states sent when they come; a
        :class:`_Heard` without states first if that takes :data:`ROUND_TIMEOUT` (the
        host is then asked last by later fetches)."""
        late = False
        async with trio.open_nursery() as nursery:

            async def slow() -> None:
                nonlocal late
                await trio.sleep(ROUND_TIMEOUT)
                late = True
                self._unanswered.add(host)
                self.hedged += 1
                log.info("object %#x: node %s silent on states, asking the next host", oid, host)
                await send.send(_Heard(chunk, None, late=False))

            nursery.start_soon(slow)
            got = await self._fetch(host, oid, chunk)
            nursery.cancel_scope.cancel()
        await send.send(_Heard(chunk, got, late=late))

    def _next_host(self, hosts: Sequence[int], tried: set[int]) -> int | None:
        """The first of ``hosts`` not yet ``tried``, those that once let a request go
        unanswered last: a server that withholds states (or is down) costs this reader one
        timeout, not one per version it hosts."""
        left = [h for h in hosts if h not in tried]
        return min(left, key=lambda h: h in self._unanswered, default=None)

    async def _fetch(
        self, host: int, oid: int, wanted: Sequence[Agreed]
    ) -> Mapping[Timestamp, bytes | None]:
        self.fetches += 1
        try:
            raw = await self.endpoint.call(
                NodeId(host),
                KIND_STATES,
                states_request(oid, [v.lt for v in wanted]),
                timeout=ROUND_TIMEOUT,
            )
            states = parse_states_reply(raw, len(wanted))
        except TransportError:
            self._unanswered.add(host)
            return {}
        except MessageError:
            return {}
        return {v.lt: s for v, s in zip(wanted, states, strict=True)}
