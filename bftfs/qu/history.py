"""Replica histories, authenticators and object history sets (seed Figure 4.3 lines 105-107).

- A *replica history* (RH) is a server's ordered set of candidates for one object (L2131-2133),
  kept here as a tuple sorted by LT, newest first, at most one candidate per LT.
- An *authenticator* is the server's vector of n MACs over the hash of its RH, entry ``s'``
  keyed with the pairwise key of the server and ``s'`` (L2174-2179, L2609-2611).  The hash
  binds the object id too: the seed's RH is implicitly per object, and without the id a
  client could replay object A's authenticated RH as object B's.
- An *object history set* (OHS) is the client's array, indexed by server, of ``<RH, alpha>``
  (L2135-2138).  A missing entry means ``{<0,0>}`` with no authenticator, the value clients
  start with (line 200) and servers substitute for culled entries (line 1002).
- A *multi-OHS* maps each object of a multi-object operation to its OHS (L2734-2737).

Everything here is pure; MAC keys come in as a function so this module needs no key ring.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from bftfs.crypto import MAC_SIZE, mac
from bftfs.qu.timestamp import INITIAL, Candidate, Timestamp, TimestampError

#: Most candidates a replica history may hold on the wire.  Honest histories are pruned to a
#: handful (L2622-2628); the bound stops a Byzantine server from inflating every request.
MAX_RH = 256

ReplicaHistory = tuple[Candidate, ...]
#: The replica history every server starts with (line 900).
INITIAL_RH: ReplicaHistory = (INITIAL,)


class HistoryError(ValueError):
    """A replica history or authenticator that is malformed."""


def make_rh(candidates: Iterable[Candidate]) -> ReplicaHistory:
    """A replica history from ``candidates``: newest first, one candidate per LT.

    Raises:
        HistoryError: two different candidates share one LT (no honest server does that,
            because the LT commits to the request that made it).
    """
    by_lt: dict[Timestamp, Candidate] = {}
    for c in candidates:
        old = by_lt.get(c.lt)
        if old is not None and old != c:
            raise HistoryError("two candidates with one timestamp")
        by_lt[c.lt] = c
    return tuple(sorted(by_lt.values(), key=lambda c: c.lt, reverse=True))


def rh_wire(rh: ReplicaHistory) -> list:
    """The msgpack-able form of ``rh`` (list of candidates, newest first)."""
    return [c.wire() for c in rh]


def rh_from_wire(value: object) -> ReplicaHistory:
    """Parse :func:`rh_wire` output.

    Raises:
        HistoryError: not a non-empty list of valid candidates, too long, or not canonical
            (the order must be the one :func:`make_rh` produces, so equal histories have
            equal bytes and hashes).
    """
    if not isinstance(value, list | tuple) or not 0 < len(value) <= MAX_RH:
        raise HistoryError("replica history must be a non-empty list of candidates")
    try:
        cands = [Candidate.from_wire(v) for v in value]
    except TimestampError as e:
        raise HistoryError(f"bad candidate: {e}") from e
    keys = [c.lt._bytes for c in cands]  # timestamps order as their encodings do
    if all(map(bytes.__gt__, keys, keys[1:])):
        return tuple(cands)  # already canonical: strictly newest first
    raise HistoryError("replica history not in canonical order")


@functools.lru_cache(maxsize=4096)
def rh_hash(oid: int, rh: ReplicaHistory) -> bytes:
    """The hash of object ``oid``'s replica history ``rh`` that authenticators cover.

    Every field is fixed width except the object list, which is length-prefixed, so the
    byte string is an unambiguous encoding of the history.  Cached: a server hashes the
    same histories in every request of a busy object (culling, then the OHS digest).
    """
    h = hashlib.blake2b(digest_size=32, person=b"bftfs-qu-rh")
    h.update(oid.to_bytes(8, "big"))
    h.update(b"".join(map(_hashed, rh)))
    return h.digest()


@functools.lru_cache(maxsize=16384)
def _hashed(c: Candidate) -> bytes:
    """What :func:`rh_hash` hashes of candidate ``c``: its LT, its LT_CO, and its objects,
    length-prefixed.  Cached: a multi-object candidate is in the history of each of its
    objects (up to 32), hashed in each."""
    return b"".join(
        (
            c.lt.encode(),
            c.lt_co.encode(),
            len(c.objects).to_bytes(1, "big"),
            b"".join(o.to_bytes(8, "big") for o in c.objects),
        )
    )


Authenticator = tuple[bytes, ...]


def make_authenticator(
    oid: int, rh: ReplicaHistory, n: int, key_for: Callable[[int], bytes]
) -> Authenticator:
    """A server's authenticator: entry ``s'`` is the MAC of H(RH) under ``key_for(s')``.

    Args:
        oid: the object the history belongs to.
        rh: the server's replica history.
        n: number of servers.
        key_for: the pairwise key of this server with server ``s'`` (itself included).
    """
    digest = rh_hash(oid, rh)
    return tuple(mac(key_for(s), digest) for s in range(n))


def auth_entry_ok(
    oid: int, rh: ReplicaHistory, auth: Authenticator | None, me: int, key: bytes
) -> bool:
    """Whether server ``me`` can validate ``rh`` through its entry of ``auth``.

    ``key`` is the pairwise key of ``me`` with the server the history claims to come from.
    The initial history needs no authenticator: it carries no information (line 200).
    """
    if is_initial(rh):
        return True
    if auth is None or me >= len(auth):
        return False
    return _mac_ok(oid, rh, auth[me], key)


@functools.lru_cache(maxsize=8192)
def _mac_ok(oid: int, rh: ReplicaHistory, tag: bytes, key: bytes) -> bool:
    """Whether ``tag`` is the MAC of ``H(oid || rh)`` under ``key``.

    Cached: a client sends back the histories it received unchanged, so a server checks the
    same few (history, MAC) pairs in every request of a busy object.  The result is a pure
    function of all four arguments (the exact MAC tested is part of the key, and histories
    are equal only if every timestamp's bytes are), so a hit never lets a forged entry pass.
    """
    return hmac.compare_digest(mac(key, rh_hash(oid, rh)), tag)


def is_initial(rh: ReplicaHistory) -> bool:
    """Whether ``rh`` is the initial history ``{<0,0>}``; cheaper than ``rh == INITIAL_RH``,
    which compares candidates field by field even when the lengths differ."""
    return len(rh) == 1 and rh[0] == INITIAL


def newest(rh: ReplicaHistory) -> Timestamp:
    """The timestamp of the newest candidate in ``rh`` (how far this server has moved)."""
    return max(c.lt for c in rh)


def auth_from_wire(value: object, n: int) -> Authenticator | None:
    """Parse an authenticator (or None).

    Raises:
        HistoryError: not None and not a list of ``n`` MAC-sized byte strings.
    """
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != n:
        raise HistoryError("authenticator must be a list of n MACs")
    try:  # the usual case, checked without a Python-level loop
        ok = set(map(type, value)) == {bytes} and set(map(len, value)) == {MAC_SIZE}
    except TypeError:
        ok = False
    if not ok and not all(isinstance(m, bytes) and len(m) == MAC_SIZE for m in value):
        raise HistoryError("authenticator must be a list of n MACs")
    return tuple(value)


@dataclass(frozen=True)
class OHSEntry:
    """One server's ``<RH, alpha>`` in an object history set."""

    rh: ReplicaHistory
    auth: Authenticator | None  # None only for the initial history
    #: ``(server, bytes)`` this entry was parsed from, when it was (``Request.packed``
    #: copies those bytes instead of encoding the entry again); not part of its value.
    _item: tuple[int, bytes] | None = field(default=None, compare=False, repr=False)


#: An object history set: server id -> entry.  Missing servers hold ``{<0,0>}``.
OHS = Mapping[int, OHSEntry]
#: A multi-object history set: object id -> OHS.
MultiOHS = Mapping[int, OHS]

INITIAL_ENTRY = OHSEntry(INITIAL_RH, None)


def entry(ohs: OHS, server: int) -> OHSEntry:
    """``ohs[server]``, defaulting to the initial entry."""
    return ohs.get(server, INITIAL_ENTRY)


def ohs_wire(ohs: OHS) -> list:
    """Msgpack-able OHS: ``[[server, rh, auth], ...]`` by server, initial entries omitted."""
    return [
        [s, rh_wire(e.rh), e.auth]  # a tuple packs as the same array as a list
        for s, e in sorted(ohs.items())
        if not is_initial(e.rh)
    ]


def ohs_from_wire(value: object, n: int) -> dict[int, OHSEntry]:
    """Parse :func:`ohs_wire` output.

    Raises:
        HistoryError: malformed, unknown or repeated server ids.
    """
    if not isinstance(value, list | tuple) or len(value) > n:
        raise HistoryError("OHS must be a list of at most n entries")
    out: dict[int, OHSEntry] = {}
    for item in value:
        s, e = ohs_item_from_wire(item, n)
        if s in out:
            raise HistoryError("OHS server id invalid or repeated")
        out[s] = e
    return out


def ohs_item_from_wire(item: object, n: int) -> tuple[int, OHSEntry]:
    """Parse one ``[server, rh, auth]`` item of :func:`ohs_wire` output.

    Raises:
        HistoryError: malformed, or the server id is not one of ``n``.
    """
    if not isinstance(item, list | tuple) or len(item) != 3:
        raise HistoryError("OHS entry must be [server, rh, auth]")
    s = item[0]
    if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < n:
        raise HistoryError("OHS server id invalid or repeated")
    return s, OHSEntry(rh_from_wire(item[1]), auth_from_wire(item[2], n))


def multi_ohs_digest(mohs: MultiOHS) -> bytes:
    """The hash of a (culled) multi-OHS that goes into timestamps (L2616-2620).

    Only the replica histories count (through :func:`rh_hash`), not the authenticators: once
    culled, the histories are what the operation conditions on, and the MAC vectors differ
    between a server and its copies in other OHSs without meaning anything.  Initial
    entries are skipped so "missing" and "culled" hash alike, as the seed treats them alike.
    """
    h = hashlib.blake2b(digest_size=32, person=b"bftfs-qu-ohs")
    for oid, ohs in sorted(mohs.items()):
        entries = [(s, e) for s, e in sorted(ohs.items()) if not is_initial(e.rh)]
        h.update(oid.to_bytes(8, "big") + len(entries).to_bytes(2, "big"))
        for s, e in entries:
            h.update(s.to_bytes(2, "big") + rh_hash(oid, e.rh))
    return h.digest()
