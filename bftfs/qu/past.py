"""Reading an object's past from the servers, Byzantine-safely (issue 17): wire formats,
the servers' steps, and the client's pure agreement rules.

Every server keeps the versions of an object it stored (until retention lets them go,
``serverconfig.Retention``), each with the conditioned-on timestamp ``lt_co`` of the update that
made it and this server's clock when it stored it (``stored_ns``).  The object's history is
the **conditioned-on chain**: from the latest established version back through ``lt_co``
to the initial version.  Candidates that never completed are off the chain (a later update
conditions on the version before them), so following ``lt_co`` reads only what some
client could have observed.

Two request kinds, answered by any server to any authenticated principal:

- ``qu.versions`` ``{"o": oid, "lt": start, "n": limit}``: this server's chain of ``oid``
  from ``start`` backwards, at most ``n`` entries (:data:`MAX_CHAIN`), each
  ``[lt, lt_co or nil, digest or nil, stored_ns]``; ``digest`` is BLAKE2b-256 of the
  version's canonical state (nil: the object did not exist then; empty, :data:`THINNED`:
  retention's schedule thinned the version here, and its ``lt_co`` and ``stored_ns`` are
  from the record it left).  The chain stops early where this server lacks a version
  (never had it, or let it go past the horizon) or does not know its ``lt_co`` (a version
  it got by object sync).
- ``qu.states`` ``{"o": oid, "lts": [lt, ...]}`` (at most :data:`MAX_STATES`): the states
  themselves (bytes or nil each; nil also when absent).

A client believes an entry only when ``b + 1`` servers report the same digest for the same
timestamp (one of them is benign), and a ``lt_co`` only when ``b + 1`` report it; a state
it fetches from any one server is checked against the agreed digest.  A version's time is
the median of the ``stored_ns`` that the servers reporting the agreed digest give, and only
when at least ``2b + 1`` of them give one: then the median has an honest report at or below
it and one at or above it, so ``b`` lying servers cannot move it outside the range of the
honest servers' clocks (seed 004 assumes clocks no better than loosely synchronised; the
client's own clock plays no part, so a Byzantine client cannot date its writes).  With
fewer reports (retention let the version go on the other servers) the time is **unknown**
(None): ``b`` liars among ``b + 1`` reports could otherwise date it to 1970 or to next
year.  :func:`current_at` says which version was current at a moment without ever taking
an unknown time for an early one (issue 31).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bftfs.kv import KV
from bftfs.qu import schema
from bftfs.qu.messages import MessageError
from bftfs.qu.timestamp import ZERO, Timestamp, TimestampError

KIND_VERSIONS = "qu.versions"
KIND_STATES = "qu.states"
#: Most chain entries one ``qu.versions`` reply carries.
MAX_CHAIN = 256
#: Most states one ``qu.states`` request asks for.
MAX_STATES = 64
DIGEST_SIZE = 32
#: The digest a server reports for a version it thinned (``qu.retention.thin_step``).
THINNED = b""


def state_digest(state: bytes | None) -> bytes | None:
    """The digest a server reports for a state (None: the object absent)."""
    return None if state is None else hashlib.blake2b(state, digest_size=DIGEST_SIZE).digest()


@dataclass(frozen=True)
class ChainEntry:
    """One version as one server reports it."""

    lt: Timestamp
    co: Timestamp | None
    digest: bytes | None
    stored_ns: int

    def to_wire(self) -> list[Any]:
        return [
            self.lt.encode(),
            None if self.co is None else self.co.encode(),
            self.digest,
            self.stored_ns,
        ]

    @classmethod
    def from_wire(cls, v: Any) -> ChainEntry:
        if not isinstance(v, list) or len(v) != 4:
            raise MessageError("chain entry must be a 4-list")
        lt_raw, co_raw, digest, stored = v
        try:
            lt = Timestamp.decode(lt_raw)
            co = None if co_raw is None else Timestamp.decode(co_raw)
        except TimestampError as e:
            raise MessageError(str(e)) from e
        if digest is not None and (
            not isinstance(digest, bytes) or len(digest) not in (DIGEST_SIZE, len(THINNED))
        ):
            raise MessageError("digest must be 32 bytes, empty or nil")
        if not isinstance(stored, int) or isinstance(stored, bool) or not 0 <= stored < 1 << 64:
            raise MessageError("stored time must be an unsigned 64-bit integer")
        return cls(lt, co, digest, stored)


# Requests -------------------------------------------------------------------------------


def versions_request(oid: int, start: Timestamp, limit: int = MAX_CHAIN) -> dict[str, Any]:
    return {"o": oid, "lt": start.encode(), "n": limit}


def parse_versions_request(v: Any) -> tuple[int, Timestamp, int]:
    """``(oid, start, limit)`` of a ``qu.versions`` body (limit capped)."""
    if not isinstance(v, dict):
        raise MessageError("versions request must be a map")
    oid, n = v.get("o"), v.get("n", MAX_CHAIN)
    if not isinstance(oid, int) or isinstance(oid, bool) or not 0 < oid < 1 << 64:
        raise MessageError("object id must be a positive 64-bit integer")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise MessageError("limit must be a positive integer")
    try:
        start = Timestamp.decode(v.get("lt"))
    except TimestampError as e:
        raise MessageError(str(e)) from e
    return oid, start, min(n, MAX_CHAIN)


def parse_versions_reply(v: Any, start: Timestamp) -> list[ChainEntry]:
    """A server's chain page: entries newest first, the first at ``start``, each the
    previous one's ``lt_co``.

    Raises:
        MessageError: malformed, too long, or not a chain from ``start``.
    """
    if not isinstance(v, list) or len(v) > MAX_CHAIN:
        raise MessageError("versions reply must be a list of at most MAX_CHAIN entries")
    out = [ChainEntry.from_wire(e) for e in v]
    want: Timestamp | None = start
    for e in out:
        if want is None or e.lt != want:
            raise MessageError("versions reply is not a chain from the asked version")
        want = e.co
    return out


def states_request(oid: int, lts: Sequence[Timestamp]) -> dict[str, Any]:
    return {"o": oid, "lts": [lt.encode() for lt in lts]}


def parse_states_request(v: Any) -> tuple[int, list[Timestamp]]:
    if not isinstance(v, dict):
        raise MessageError("states request must be a map")
    oid, lts = v.get("o"), v.get("lts")
    if not isinstance(oid, int) or isinstance(oid, bool) or not 0 < oid < 1 << 64:
        raise MessageError("object id must be a positive 64-bit integer")
    if not isinstance(lts, list) or not 0 < len(lts) <= MAX_STATES:
        raise MessageError("lts must be a list of 1..MAX_STATES timestamps")
    try:
        return oid, [Timestamp.decode(x) for x in lts]
    except TimestampError as e:
        raise MessageError(str(e)) from e


def parse_states_reply(v: Any, count: int) -> list[bytes | None]:
    if not isinstance(v, list) or len(v) != count:
        raise MessageError("states reply must be a list, one per asked timestamp")
    if not all(s is None or isinstance(s, bytes) for s in v):
        raise MessageError("each state must be bytes or nil")
    return list(v)


# Server steps (read-only over the store) ---------------------------------------------------


def versions_step(kv: KV, oid: int, start: Timestamp, limit: int) -> list[list[Any]]:
    """This server's conditioned-on chain of ``oid`` from ``start``, as wire entries.

    Barrier versions are never on a chain (an update conditions on a version with a state);
    a barrier at ``start`` answers an empty chain.  A thinned version is reported from its
    record, digest :data:`THINNED`.
    """
    out: list[list[Any]] = []
    lt: Timestamp | None = start
    while lt is not None and lt != ZERO and len(out) < limit:
        v = schema.load_version(kv, oid, lt)
        if v is None:
            thinned = schema.load_thinned(kv, oid, lt)
            if thinned is None:
                break
            out.append(ChainEntry(lt, thinned[0], THINNED, thinned[1]).to_wire())
            lt = thinned[0]
            continue
        if v.kind == schema.BARRIER:
            break
        out.append(ChainEntry(lt, v.lt_co, state_digest(v.state), v.stored_ns).to_wire())
        lt = v.lt_co
    return out


def states_step(kv: KV, oid: int, lts: Sequence[Timestamp]) -> list[bytes | None]:
    """The stored states of ``oid`` at ``lts`` (nil where absent or a barrier)."""
    out: list[bytes | None] = []
    for lt in lts:
        v = schema.load_version(kv, oid, lt)
        out.append(None if v is None or v.kind == schema.BARRIER else v.state)
    return out


# Client agreement (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class Agreed:
    """One version ``b + 1`` servers vouch for (its state, or that it was thinned)."""

    lt: Timestamp
    #: The version it was conditioned on (None: not agreed yet by ``b + 1``).
    co: Timestamp | None
    #: :data:`THINNED`: its state is not held by ``b + 1`` servers agreeing on it.
    digest: bytes | None
    #: Median of the reporting servers' clocks when they stored it (ns); None: unknown
    #: (fewer than ``2b + 1`` servers gave a time, see :func:`agreed_time`).
    time_ns: int | None
    #: Servers that reported the agreed digest (where its state can be fetched).
    hosts: tuple[int, ...]

    @property
    def thinned(self) -> bool:
        """Retention thinned this version: the walk steps over it, its state is gone."""
        return self.digest == THINNED


def agree(
    lt: Timestamp, reports: Mapping[int, ChainEntry], b: int, *, settled: bool = False
) -> Agreed | None:
    """What ``b + 1`` of ``reports`` (one server's entry for ``lt`` each) agree on, or None.

    The digest needs ``b + 1`` identical reports; so does ``lt_co``, counted over every
    report (a version's ``lt_co`` is the same whether a server still holds it or thinned
    it; servers that got the version by object sync report none and do not count).  The
    time is :func:`agreed_time` of the stored times of the servers that reported the
    agreed digest or :data:`THINNED`.  Without an agreed digest, a version whose ``lt_co``
    ``b + 1`` report and :data:`THINNED` ``b + 1`` report is agreed as thinned: its state
    is not to be had, and the walk may step over it (a read of its moment is then told
    the version was reclaimed, never given an older state).  ``settled``: every server
    was asked; a version whose ``lt_co`` is agreed but neither its digest nor
    :data:`THINNED` (servers thinned it at different moments, each by its own clock) is
    taken as thinned too, its time from every report.
    """
    cos = Counter(e.co for e in reports.values() if e.co is not None)
    co = next((c for c, k in cos.items() if k >= b + 1), None)
    thin = sorted(s for s, e in reports.items() if e.digest == THINNED)
    digests = Counter(e.digest for e in reports.values() if e.digest != THINNED)
    agreed = [d for d, k in digests.items() if k >= b + 1]
    if len(agreed) > 1:
        return None  # two (more than b liars: not a case to guess in)
    if not agreed:
        if co is None or len(thin) < b + 1 and not settled:
            return None
        time_ns = agreed_time(
            [e.stored_ns for e in reports.values()]
            if settled
            else [reports[s].stored_ns for s in thin],
            b,
        )
        return Agreed(lt, co, THINNED, time_ns, ())
    digest = agreed[0]
    hosts = sorted(s for s, e in reports.items() if e.digest == digest)
    time_ns = agreed_time([reports[s].stored_ns for s in hosts + thin], b)
    return Agreed(lt, co, digest, time_ns, tuple(hosts))


def agreed_time(stored: Sequence[int], b: int) -> int | None:
    """The time ``b`` liars among ``stored`` (one report per server; 0: none) cannot move
    outside the honest reports, or None (unknown).

    Sorted, the ``k`` reports' lower median sits at index ``(k - 1) // 2``; it has an
    honest report at or below it when at least ``b + 1`` reports are at or below it, and
    one at or above it when at least ``b + 1`` are at or above it: both hold exactly when
    ``k >= 2b + 1`` (it is then also the lower median of what remains after dropping the
    ``b`` lowest and the ``b`` highest).  With fewer reports no choice is safe: one liar
    among ``b + 1`` reports could set the lowest to 1970 and the highest to 2100.
    """
    times = sorted(t for t in stored if t)
    if len(times) < 2 * b + 1:
        return None
    return times[(len(times) - 1) // 2]


@dataclass(frozen=True)
class AtMoment:
    """Which of an object's versions (newest first) was current at a moment."""

    #: Index of the newest version known to be stored at or before the moment (None: no
    #: version is, as far as the times known say).
    index: int | None
    #: A version of unknown time lies where it could be the current one (newer than
    #: ``index`` and not newer than any version known to be after the moment): the answer
    #: cannot be decided from what the servers still report.
    undecided: bool


def current_at(times: Sequence[int | None], moment: int) -> AtMoment:
    """Which version was current at ``moment``, from the versions' times newest first
    (None: unknown, :func:`agreed_time`).

    An unknown time is never taken for a time at or before ``moment`` (an old version
    misdated to 1970 must not answer for a moment before the object existed).  A chain is
    in time order, so a version of unknown time older than one known to be after
    ``moment`` may still be before it; newer than such a version, it is after it too.
    """
    undecided = False
    for i, t in enumerate(times):
        if t is None:
            undecided = True
        elif t <= moment:
            return AtMoment(i, undecided)
        else:
            undecided = False
    return AtMoment(None, undecided)
