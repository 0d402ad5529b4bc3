"""Many objects' pasts in one request (issue 36): ``qu.chains``, a batched ``qu.versions``
that may carry states.

Reading a tree's past asked every object's chain in a round of its own (``qu.versions``
to every server) and its states in another request (``qu.states``): a thousand files were
some 7 000 requests, and the per-request work on both sides (framing, encryption, a
dispatch, a read transaction, a round's bookkeeping) was most of the 3-5 s ``bftfs diff``
took.  ``qu.chains`` asks a server for up to :data:`MAX_OBJECTS` objects' chain pages at
once, each exactly what ``qu.versions`` would answer for that object (the same server step,
:func:`bftfs.qu.past.versions_step`), and, for the objects the request names as this
server's to serve, the states a reader will most likely want, so that one round usually
settles every object of a batch.

Wire: request ``{"objs": [[oid, lt], ...], "n": limit, "until": ns or nil, "at": [ns, ...],
"all": bool, "s": [index, ...]}``; reply: one ``[page, states]`` per object, ``page`` as a
``qu.versions`` reply, ``states`` one entry per page entry (bytes or nil).

- ``until``: each page stops :data:`SLACK` entries after the first whose ``stored_ns`` is
  at or before it (the reader wants the chain back to a moment; the servers' clocks differ
  a little, and the agreed time is a median of them).
- States, for the objects at the indices ``s`` only: every entry's if ``all`` (a whole
  history: ``changes``, ``revert``), else the entry current at each moment of ``at`` by
  this server's clock.  At most :data:`STATE_BUDGET` bytes of states per reply; beyond
  it, nil.

**Why the client may believe it exactly as before.**  A reply is one server's report on
each object, from an authenticated session (a server cannot speak for another), and each
object's page is parsed by :func:`~bftfs.qu.past.parse_versions_reply` (a chain from the
asked version, or the whole reply is refused, as a malformed ``qu.versions`` reply is).
The round ends when a quorum of servers answered, as a ``qu.versions`` round does, so each
object has the same number of reports from the same kind of servers as before, and they go
through the same :func:`~bftfs.qu.past.agree` (``b + 1`` identical digests, ``b + 1``
identical ``lt_co``, ``2b + 1`` times for a known time) in
:meth:`bftfs.qu.pastread.PastReader.walk`, which asks on alone where the batch was not
enough (a page cut short, a time that needs every server).  A state is taken only when
its hash is the agreed digest, as a ``qu.states`` answer is; a server that offers a wrong
or no state costs a ``qu.states`` request to another holder, nothing else.  Batching
changes how many reports travel per message, not which reports are believed.

**Where the walks start: ``qu.starts``.**  A walk starts from an established version of
its object.  One object's is the answer point of a Q/U query (``fs.peek``): two rounds for
a client that has not seen the object, eight objects per query (``fs.peekmany``), so the
starts of a thousand files were ~1 800 of the ~2 300 requests of a ``bftfs diff``.
``qu.starts`` ``{"o": [oid, ...]}`` (up to :data:`MAX_OBJECTS`) answers this server's
replica history of each object (``[rh, ...]``, as :func:`~bftfs.qu.history.rh_wire`), and
the client classifies them itself (:func:`established_start`) by the rule a Q/U client
applies to a query's replies (:func:`~bftfs.qu.classify.established_answer_point`, seed
L2588-2595): the newest non-barrier candidate listed by ``q`` of a quorum of servers,
with no newer candidate listed by ``r``.  Each server speaks only for its own history (an
authenticated session; the authenticators that stop a client forging a server's history
are not needed), ``b`` liars can list a candidate at most ``b < r`` times, and two quorums
share ``r`` benign servers, so a liar can neither make an incomplete or invented version
the start nor an established version older than the newest one: it can only keep an
object from settling, which then starts with a query of its own.  The walk still believes
each version only on ``b + 1`` digests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bftfs.kv import KV
from bftfs.qu import schema
from bftfs.qu.classify import QUThresholds, View, established_answer_point
from bftfs.qu.history import HistoryError, OHSEntry, ReplicaHistory, rh_from_wire, rh_wire
from bftfs.qu.messages import MessageError
from bftfs.qu.past import (
    MAX_CHAIN,
    THINNED,
    ChainEntry,
    parse_versions_reply,
    versions_step,
)
from bftfs.qu.timestamp import Timestamp, TimestampError

KIND_CHAINS = "qu.chains"
KIND_STARTS = "qu.starts"
#: Most objects one ``qu.chains`` request names.
MAX_OBJECTS = 64
#: Most moments one request names.
MAX_MOMENTS = 8
#: Entries a page goes on past the first one at or before ``until``.
SLACK = 2
#: Most bytes of states one reply carries.
STATE_BUDGET = 4 << 20


@dataclass(frozen=True)
class ChainsAsk:
    """What one ``qu.chains`` request asks (the same of every server but ``serve``)."""

    objs: tuple[tuple[int, Timestamp], ...]
    limit: int = MAX_CHAIN
    until_ns: int | None = None
    moments: tuple[int, ...] = ()
    all_states: bool = False
    #: Indices into ``objs`` whose states this server is to send.
    serve: tuple[int, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {
            "objs": [[oid, lt.encode()] for oid, lt in self.objs],
            "n": self.limit,
            "until": self.until_ns,
            "at": list(self.moments),
            "all": self.all_states,
            "s": list(self.serve),
        }


def _uint(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 64:
        raise MessageError(f"{what} must be an unsigned 64-bit integer")
    return v


def parse_chains_request(v: Any) -> ChainsAsk:
    """A ``qu.chains`` body, checked (limit capped at :data:`MAX_CHAIN`).

    Raises:
        MessageError: malformed.
    """
    if not isinstance(v, dict):
        raise MessageError("chains request must be a map")
    raw, n = v.get("objs"), v.get("n", MAX_CHAIN)
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_OBJECTS:
        raise MessageError(f"objs must be a list of 1..{MAX_OBJECTS} [oid, lt]")
    objs = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 2:
            raise MessageError("each object must be [oid, lt]")
        oid = _uint(item[0], "object id")
        if oid == 0:
            raise MessageError("object id must be positive")
        try:
            objs.append((oid, Timestamp.decode(item[1])))
        except TimestampError as e:
            raise MessageError(str(e)) from e
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise MessageError("limit must be a positive integer")
    until = v.get("until")
    at, serve = v.get("at", []), v.get("s", [])
    if not isinstance(at, list) or len(at) > MAX_MOMENTS:
        raise MessageError(f"at must be a list of at most {MAX_MOMENTS} times")
    if not isinstance(serve, list) or len(serve) > len(objs):
        raise MessageError("s must be a list of object indices")
    indices = tuple(_uint(i, "index") for i in serve)
    if any(i >= len(objs) for i in indices):
        raise MessageError("s names an object the request does not")
    return ChainsAsk(
        tuple(objs),
        min(n, MAX_CHAIN),
        None if until is None else _uint(until, "until"),
        tuple(_uint(t, "moment") for t in at),
        v.get("all") is True,
        indices,
    )


def chains_step(kv: KV, ask: ChainsAsk) -> list[list[Any]]:
    """This server's answer to ``ask`` (read-only over the store)."""
    budget = STATE_BUDGET
    serve = set(ask.serve)
    out: list[list[Any]] = []
    for i, (oid, start) in enumerate(ask.objs):
        page = versions_step(kv, oid, start, ask.limit)
        if ask.until_ns is not None:
            first = next((k for k, e in enumerate(page) if 0 < e[3] <= ask.until_ns), None)
            if first is not None:
                page = page[: first + 1 + SLACK]
        states: list[bytes | None] = [None] * len(page)
        if i in serve:
            for k in _wanted(page, ask):
                v = schema.load_version(kv, oid, Timestamp.decode(page[k][0]))
                if v is None or v.kind == schema.BARRIER or v.state is None:
                    continue
                if len(v.state) > budget:
                    break
                budget -= len(v.state)
                states[k] = v.state
        out.append([page, states])
    return out


def _wanted(page: list[list[Any]], ask: ChainsAsk) -> list[int]:
    """Indices of ``page``'s entries whose states ``ask`` wants (thinned ones have none)."""
    held = [k for k, e in enumerate(page) if e[2] is not None and e[2] != THINNED]
    if ask.all_states:
        return held
    picks = {next((k for k in held if 0 < page[k][3] <= t), None) for t in ask.moments}
    return sorted(k for k in picks if k is not None)


@dataclass
class ChainsReply:
    """One server's reports on the objects of a request: each object's page and the
    states it offered (unchecked: :meth:`PastReader.states` checks them)."""

    pages: list[list[ChainEntry]]
    offered: list[dict[Timestamp, bytes]]


def parse_chains_reply(v: Any, starts: Sequence[Timestamp]) -> ChainsReply:
    """A server's ``qu.chains`` reply to a request for objects starting at ``starts``.

    Raises:
        MessageError: malformed, the wrong number of objects, or a page that is not a
            chain from its asked version.
    """
    if not isinstance(v, list) or len(v) != len(starts):
        raise MessageError("chains reply must be a list, one per asked object")
    out = ChainsReply([], [])
    for item, start in zip(v, starts, strict=True):
        if not isinstance(item, list) or len(item) != 2:
            raise MessageError("each object's answer must be [page, states]")
        page = parse_versions_reply(item[0], start)
        states = item[1]
        if not isinstance(states, list) or len(states) != len(page):
            raise MessageError("states must be a list, one per page entry")
        offered: dict[Timestamp, bytes] = {}
        for e, s in zip(page, states, strict=True):
            if s is None:
                continue
            if not isinstance(s, bytes):
                raise MessageError("each state must be bytes or nil")
            offered[e.lt] = s
        out.pages.append(page)
        out.offered.append(offered)
    return out


# Starts (``qu.starts``) ---------------------------------------------------------------------


def starts_request(oids: Sequence[int]) -> dict[str, Any]:
    return {"o": list(oids)}


def parse_starts_request(v: Any) -> tuple[int, ...]:
    """The objects of a ``qu.starts`` body: 1 to :data:`MAX_OBJECTS` distinct positive ids.

    Raises:
        MessageError: malformed.
    """
    raw = v.get("o") if isinstance(v, dict) else None
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_OBJECTS:
        raise MessageError(f"o must be a list of 1..{MAX_OBJECTS} object ids")
    oids = tuple(_uint(o, "object id") for o in raw)
    if 0 in oids or len(set(oids)) != len(oids):
        raise MessageError("object ids must be positive and distinct")
    return oids


def starts_step(kv: KV, oids: Sequence[int]) -> list[list[Any]]:
    """This server's replica history of each of ``oids`` (read-only)."""
    return [rh_wire(schema.load_rh(kv, oid)[0]) for oid in oids]


def parse_starts_reply(v: Any, count: int) -> list[ReplicaHistory]:
    """A server's ``qu.starts`` reply to a request for ``count`` objects.

    Raises:
        MessageError: malformed, or not one replica history per object.
    """
    if not isinstance(v, list) or len(v) != count:
        raise MessageError("starts reply must be a list, one history per asked object")
    try:
        return [rh_from_wire(rh) for rh in v]
    except HistoryError as e:
        raise MessageError(str(e)) from e


def established_start(
    oid: int, histories: Mapping[int, ReplicaHistory], th: QUThresholds
) -> Timestamp | None:
    """The established version of ``oid`` that servers' replica histories (server ->
    history, one report per server) show, by a Q/U query's client rule; None: they show
    none (fewer than ``q`` reports, a newer candidate of order ``r`` or more not yet
    complete, or nothing complete): the object's start is to be asked with a query."""
    if len(histories) < th.q:
        return None
    view = View({oid: {s: OHSEntry(rh, None) for s, rh in histories.items()}}, th)
    cand = established_answer_point(view, oid)
    return None if cand is None else cand.lt
