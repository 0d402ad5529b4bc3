"""Q/U wire format (version 1): every message as a msgpack-able value, and its parser.

Every field that arrives from the network is checked here before any protocol code sees
it; anything wrong raises :class:`MessageError` (the one parse-error family), which the node
turns into a refusal and the client into a bad reply from that server.

Layout (``oid`` = u64 object id, ``lt`` = 49-byte timestamp, ``rh`` = list of candidates
``[lt, lt_co, [oid...]]`` newest first, ``auth`` = list of n 16-byte MACs or nil,
``ohs`` = ``[[server, rh, auth], ...]``)::

    kind         direction        body
    qu.request   client -> node   {"v": 1, "c": client, "o": [oid...] (sorted, unique, 1..8),
                                   "h": [ohs per object], "op": operation or nil (repair),
                                   "e": nil or [ohs per object] (inline-repair evidence),
                                   "x": [[oid, ohs], ...] context objects: histories carried
                                   only for deduction, not operated on (at most 8),
                                   "lk": [[oid, lt, lt_co, proof], ...] only when present:
                                   conditioned-on links, proven by stored requests}
    qu.history   client -> node   {"v": 1, "o": [oid...]}
    qu.fetch     client -> node   {"v": 1, "lt": lt}          stored request of a candidate
    qu.sync      node -> node     {"v": 1, "oid": oid, "lt": lt}   object sync
    qu.latest    node -> node     {"v": 1, "after": oid or nil, "limit": n}  newest lt per
                                  object, oids > after: {"o": [[oid, lt], ...], "more": bool}
    operation                     [method (str), query (bool), argument, seq (u64)]
    reply to request / history    {"st": status, "t": type or nil, "lt": lt or nil,
                                   "a": answer, "at": [lt per object] or nil,
                                   "h": [[rh, auth] per object], "x": [[server...] per object]
                                   (culled histories), "why": str, "n": [oid...] (missing)}
    reply to fetch                {"r": request body or nil}
    reply to sync                 {"s": state bytes or nil, "ap": applied bytes} or nil

The messages' types: ``request.py`` (:class:`~bftfs.qu.request.Operation`,
:class:`~bftfs.qu.request.Link`, :class:`~bftfs.qu.request.Request` and its packed form) and
``reply.py`` (:class:`~bftfs.qu.reply.Reply`); this module holds the layout, the kinds and
limits, the field rules they share and the parsers of the small bodies.

A request body may also travel as its msgpack bytes (``Request.packed``), which clients do:
one encoding for the q servers it goes to.

``status`` is ``ok`` (accepted / query answered on the conditioned-on version), ``fail`` (OHS
not current, or nothing to do; a query answer may ride along, answered at ``at``),
``refused`` (the method or the request is illegal; ``why`` says which) or ``need`` (the
request must also carry the objects in ``n``).
"""

from __future__ import annotations

import enum
from typing import Any

from bftfs.qu.timestamp import MAX_OBJECTS, Timestamp, TimestampError

VERSION = 1
#: Largest canonical argument or answer accepted (bytes); keeps one request bounded.
MAX_VALUE = 1 << 20
MAX_METHOD_NAME = 128

KIND_REQUEST = "qu.request"
KIND_HISTORY = "qu.history"
KIND_FETCH = "qu.fetch"
KIND_SYNC = "qu.sync"
KIND_LATEST = "qu.latest"
#: Several ``qu.request``/``qu.history``/``qu.fetch`` requests to one node in one frame
#: (``bftfs/node/batching.py``; docs/qu.md, "Request batching").
KIND_BATCH = "qu.batch"
#: The kinds a ``qu.batch`` may carry, and at most how many items (a node refuses more).
BATCHED_KINDS = (KIND_REQUEST, KIND_HISTORY, KIND_FETCH)
MAX_BATCH = 64
#: Objects one ``qu.latest`` answer lists at most.
MAX_LATEST = 1024
#: Further stored requests one ``qu.fetch`` may ask for by timestamp (``more``).
MAX_FETCH_MORE = 63


class MessageError(ValueError):
    """A Q/U message that does not parse or breaks a field rule."""


class ReplyStatus(enum.Enum):
    """Outcome of a Q/U request at one server (the ``st`` field of a reply)."""

    OK = "ok"
    FAIL = "fail"
    REFUSED = "refused"
    NEED = "need"


def parse_uint(v: Any, what: str, bits: int = 64) -> int:
    """An unsigned ``bits``-bit integer field (``what`` names it in the error)."""
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < (1 << bits):
        raise MessageError(f"{what} must be an unsigned {bits}-bit integer")
    return v


def parse_map(v: Any, what: str) -> dict:
    """A message body: a map, of this version if it says."""
    if not isinstance(v, dict):
        raise MessageError(f"{what} must be a map")
    if v.get("v", VERSION) != VERSION:
        raise MessageError(f"{what}: unsupported version")
    return v


def parse_objects(v: Any) -> tuple[int, ...]:
    """An ``objects`` field: 1 to 8 object ids, sorted and unique."""
    if not isinstance(v, list | tuple) or not 1 <= len(v) <= MAX_OBJECTS:
        raise MessageError(f"objects must be a list of 1..{MAX_OBJECTS} ids")
    objs = tuple(parse_uint(o, "object id") for o in v)
    if list(objs) != sorted(set(objs)):
        raise MessageError("objects must be sorted and unique")
    return objs


def parse_lt(v: Any) -> Timestamp:
    """A timestamp field."""
    try:
        return Timestamp.decode(v)
    except TimestampError as e:
        raise MessageError(str(e)) from e


def parse_history_request(v: Any) -> tuple[int, ...]:
    """The objects of a ``qu.history`` body."""
    return parse_objects(parse_map(v, "history request").get("o"))


def parse_fetch(v: Any) -> Timestamp:
    """The timestamp of a ``qu.fetch`` body."""
    return parse_lt(parse_map(v, "fetch").get("lt"))


def parse_fetch_chain(v: Any) -> tuple[Timestamp, int | None, int]:
    """``(lt, oid, n)`` of a ``qu.fetch`` body: the chain before ``lt`` in object
    ``oid``'s history is asked for too when ``oid`` is given (``n`` requests at most)."""
    d = parse_map(v, "fetch")
    oid = d.get("oid")
    return (
        parse_lt(d.get("lt")),
        None if oid is None else parse_uint(oid, "object id"),
        parse_uint(d.get("n", 0), "count"),
    )


def parse_fetch_more(v: Any) -> tuple[Timestamp, ...]:
    """The further timestamps a ``qu.fetch`` body asks stored requests of (``more``): a
    node proving links sent without proofs knows exactly which it lacks, scattered down
    a chain (every node misses the updates whose quorum it was not in), so it names them
    rather than walking a chain the answering server has gaps in too."""
    more = parse_map(v, "fetch").get("more", [])
    if not isinstance(more, list | tuple) or len(more) > MAX_FETCH_MORE:
        raise MessageError(f"more must be a list of at most {MAX_FETCH_MORE} timestamps")
    return tuple(parse_lt(lt) for lt in more)


def parse_latest(v: Any) -> tuple[int | None, int]:
    """``(after, limit)`` of a ``qu.latest`` body (limit capped at :data:`MAX_LATEST`)."""
    d = parse_map(v, "latest")
    after = d.get("after")
    return (
        None if after is None else parse_uint(after, "object id"),
        max(1, min(MAX_LATEST, parse_uint(d.get("limit", MAX_LATEST), "limit"))),
    )


def parse_latest_reply(v: Any) -> tuple[list[tuple[int, Timestamp]], bool]:
    """The ``(oid, newest lt)`` pairs of a ``qu.latest`` answer, ascending, and whether more
    follow.

    Raises:
        MessageError: malformed, or not ascending.
    """
    if not isinstance(v, dict):
        raise MessageError("latest reply must be a map")
    items = v.get("o")
    if not isinstance(items, list | tuple) or len(items) > MAX_LATEST:
        raise MessageError("latest reply needs a bounded list")
    out: list[tuple[int, Timestamp]] = []
    for item in items:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise MessageError("latest entry must be [oid, lt]")
        oid = parse_uint(item[0], "object id")
        if out and oid <= out[-1][0]:
            raise MessageError("latest entries must ascend")
        out.append((oid, parse_lt(item[1])))
    return out, bool(v.get("more"))


def parse_sync(v: Any) -> tuple[int, Timestamp]:
    """``(object id, timestamp)`` of a ``qu.sync`` body."""
    d = parse_map(v, "sync")
    return parse_uint(d.get("oid"), "object id"), parse_lt(d.get("lt"))


def parse_sync_reply(v: Any) -> tuple[bytes | None, bytes] | None:
    """``(state, applied)`` of a ``qu.sync`` reply, or None if the host lacks the version.

    Raises:
        MessageError: malformed.
    """
    if v is None:
        return None
    if not isinstance(v, dict):
        raise MessageError("sync reply must be a map or nil")
    s, ap = v.get("s"), v.get("ap")
    if (s is not None and not isinstance(s, bytes)) or not isinstance(ap, bytes):
        raise MessageError("sync reply fields must be bytes")
    if (s is not None and len(s) > 16 * MAX_VALUE) or len(ap) > 16 * MAX_VALUE:
        raise MessageError("sync reply too large")
    return s, ap
