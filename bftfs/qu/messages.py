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

A request body may also travel as its msgpack bytes (``Request.packed``), which clients do:
one encoding for the q servers it goes to.

``status`` is ``ok`` (accepted / query answered on the conditioned-on version), ``fail`` (OHS
not current, or nothing to do; a query answer may ride along, answered at ``at``),
``refused`` (the method or the request is illegal; ``why`` says which) or ``need`` (the
request must also carry the objects in ``n``).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from bftfs.qu.canon import CanonicalError, canonical, pack, unpack
from bftfs.qu.history import (
    Authenticator,
    HistoryError,
    OHSEntry,
    auth_from_wire,
    is_initial,
    ohs_from_wire,
    ohs_item_from_wire,
    ohs_wire,
    rh_from_wire,
    rh_wire,
)
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


class MessageError(ValueError):
    """A Q/U message that does not parse or breaks a field rule."""


class ReplyStatus(enum.Enum):
    """Outcome of a Q/U request at one server (the ``st`` field of a reply)."""

    OK = "ok"
    FAIL = "fail"
    REFUSED = "refused"
    NEED = "need"


#: ReplyStatus by wire value (a dict lookup; calling the enum costs several times more).
_STATUS = {s.value: s for s in ReplyStatus}


def _int(v: Any, what: str, bits: int = 64) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < (1 << bits):
        raise MessageError(f"{what} must be an unsigned {bits}-bit integer")
    return v


def _dict(v: Any, what: str) -> dict:
    if not isinstance(v, dict):
        raise MessageError(f"{what} must be a map")
    if v.get("v", VERSION) != VERSION:
        raise MessageError(f"{what}: unsupported version")
    return v


def _objects(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list | tuple) or not 1 <= len(v) <= MAX_OBJECTS:
        raise MessageError(f"objects must be a list of 1..{MAX_OBJECTS} ids")
    objs = tuple(_int(o, "object id") for o in v)
    if list(objs) != sorted(set(objs)):
        raise MessageError("objects must be sorted and unique")
    return objs


def _lt(v: Any) -> Timestamp:
    try:
        return Timestamp.decode(v)
    except TimestampError as e:
        raise MessageError(str(e)) from e


#: The msgpack header of a 4-element array (an operation's canonical bytes start with it).
_OP_HEADER = b"\x94"


@dataclass(frozen=True)
class Operation:
    """Seed line 102, ``<Method, Class, Argument>``, plus a per-client sequence number.

    ``seq`` makes a retried update idempotent across repairs: see ``replica.py``
    ("applied table").  Queries carry ``seq = 0``.
    """

    method: str
    query: bool
    arg: Any
    seq: int
    #: The canonical bytes when parsing computed them (see :meth:`from_wire`).
    _canonical: bytes | None = field(default=None, compare=False, repr=False)

    def wire(self) -> list:
        """``[method, query, arg, seq]``."""
        return [self.method, self.query, self.arg, self.seq]

    def canonical(self) -> bytes:
        """The bytes that go into the timestamp hash."""
        got = self._canonical
        return got if got is not None else canonical(self.wire())

    @classmethod
    def from_wire(cls, v: Any) -> Operation:
        """Parse an operation.

        Raises:
            MessageError: wrong shape, method name, flag, argument or seq.
        """
        if not isinstance(v, list | tuple) or len(v) != 4:
            raise MessageError("operation must be [method, query, arg, seq]")
        method, query, arg, seq = v
        if not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD_NAME:
            raise MessageError("bad method name")
        if not isinstance(query, bool):
            raise MessageError("query flag must be a bool")
        try:
            arg_bytes = canonical(arg)
        except CanonicalError as e:
            raise MessageError(f"argument: {e}") from e
        if len(arg_bytes) > MAX_VALUE:
            raise MessageError("argument too large")
        seq = _int(seq, "seq")
        # canonical([m, q, a, s]) is the array header and its members' canonical bytes, one
        # after the other: keep it, so a server does not walk the argument a second time.
        body = _OP_HEADER + pack(method) + pack(query) + arg_bytes + pack(seq)
        return cls(method, query, arg, seq, body)


@dataclass(frozen=True)
class Link:
    """A conditioned-on link ``lt -> lt_co`` of object ``oid`` that a request's
    classification relies on (``classify.View.skips``), and its proof: the stored request
    that made ``lt`` (packed), whose timestamp hash binds it (``bftfs.qu.links``).  Stored
    requests keep their links without proofs."""

    oid: int
    lt: Timestamp
    lt_co: Timestamp
    proof: bytes | None = None

    def wire(self) -> list:
        """``[oid, lt, lt_co, proof or nil]``."""
        return [self.oid, self.lt.encode(), self.lt_co.encode(), self.proof]

    def fact(self) -> tuple[int, Timestamp, Timestamp]:
        """What the link says, without its proof."""
        return (self.oid, self.lt, self.lt_co)

    @classmethod
    def from_wire(cls, v: Any) -> Link:
        """Parse a link.

        Raises:
            MessageError: wrong shape or field.
        """
        if not isinstance(v, list | tuple) or len(v) != 4:
            raise MessageError("link must be [oid, lt, lt_co, proof]")
        proof = v[3]
        if proof is not None and (not isinstance(proof, bytes) or len(proof) > MAX_PROOF):
            raise MessageError("link proof must be bytes of bounded size")
        return cls(_int(v[0], "object id"), _lt(v[1]), _lt(v[2]), proof)


#: Links one request may carry (a conditioned-on chain walked back past a pruned stretch).
MAX_LINKS = 256
#: Largest proof (a stored request of up to 8 objects' histories).
MAX_PROOF = 1 << 20


@dataclass(frozen=True)
class Request:
    """A ``s_request(Operation, OHS)`` (line 1000) over one or more objects."""

    client: int  # whose timestamp this is; the sender unless this is an inline repair
    objects: tuple[int, ...]  # the objects operated on
    mohs: dict[int, dict[int, OHSEntry]]  # conditioned-on multi-OHS: objects + context
    op: Operation | None  # None: a repair request (barrier or copy, line 504)
    evidence: dict[int, dict[int, OHSEntry]] | None = None  # inline repair only
    links: tuple[Link, ...] = ()  # proven links classification used (rare: see Link)

    def wire(self) -> dict:
        """The message body (``"lk"`` only when there are links, so the usual request
        keeps the fixed layout :meth:`packed` and :meth:`from_bytes` rely on)."""
        d = {
            "v": VERSION,
            "c": self.client,
            "o": list(self.objects),
            "h": [ohs_wire(self.mohs[o]) for o in self.objects],
            "op": self.op.wire() if self.op else None,
            "e": [ohs_wire(self.evidence[o]) for o in self.objects] if self.evidence else None,
            "x": [[o, ohs_wire(self.mohs[o])] for o in self.context],
        }
        if self.links:
            d["lk"] = [lk.wire() for lk in self.links]
        return d

    def link_map(self) -> dict[tuple[int, Timestamp], Timestamp]:
        """The links as ``(oid, lt) -> lt_co`` (what ``classify.View`` takes)."""
        return {(lk.oid, lk.lt): lk.lt_co for lk in self.links}

    @property
    def context(self) -> tuple[int, ...]:
        """Objects whose histories ride along for deduction only."""
        return tuple(sorted(set(self.mohs) - set(self.objects)))

    def packed(self) -> bytes:
        """The body msgpack-encoded once: a client sends the same request to q servers, and
        a bytes payload is copied by the transport instead of re-encoded per server.

        The bytes of ``pack(self.wire())``, put together piece by piece so that an OHS entry
        parsed by :meth:`from_bytes` is copied as the bytes it arrived as instead of being
        encoded again (a server stores every update's request: re-encoding its OHS was 5%
        of an update).  Those bytes parsed to this very entry, so the result parses to this
        request; they are ``pack``'s own unless a client encoded integers or lengths wider
        than needed.
        """
        ohs = self.mohs.get(self.objects[0], {}) if self.objects else {}
        first = next(iter(ohs.values()), None)
        if first is None or first._item is None or self.links:
            return pack(self.wire())  # nothing to reuse (a client's request): one encoding
        return b"".join(
            (
                _REQ_HEAD,
                pack(self.client),
                _K_O,
                pack(list(self.objects)),
                _K_H,
                _array_header(len(self.objects)),
                *(_packed_ohs(self.mohs[o]) for o in self.objects),
                _K_OP,
                pack(self.op.wire() if self.op else None),
                _K_E,
                pack([ohs_wire(self.evidence[o]) for o in self.objects] if self.evidence else None),
                _K_X,
                pack([[o, ohs_wire(self.mohs[o])] for o in self.context]),
            )
        )

    @classmethod
    def from_wire(cls, v: Any, n: int) -> Request:
        """Parse a request body (or its :meth:`packed` bytes) for an ``n``-server system.

        Raises:
            MessageError: any field is malformed.
        """
        if isinstance(v, bytes):
            try:
                v = unpack(v)
            except Exception as e:  # msgpack raises several unrelated types on garbage
                raise MessageError(f"undecodable request: {type(e).__name__}") from None
        return cls._from_dict(v, n, lambda x: ohs_from_wire(x, n))

    @classmethod
    def from_bytes(cls, data: bytes, n: int) -> Request:
        """:meth:`from_wire` of packed bytes, with the OHS entries parsed from a cache.

        A client presents each server's ``[server, rh, auth]`` exactly as it received it,
        so a busy object's entries arrive byte for byte the same in request after request;
        parsing them was a fifth of a node's time per request.  The operated objects' OHSs
        are scanned without decoding their entries, and each entry is parsed once per
        distinct byte string (:func:`_ohs_item`).  Anything unusual - another layout,
        trailing bytes, any error - goes to :meth:`from_wire`, so the result (or the
        :class:`MessageError`) is always exactly the one it gives.

        Raises:
            MessageError: any field is malformed.
        """
        try:
            d = _scan_request(data, n)
            if d is not None:
                return cls._from_dict(d, n, lambda raws: _ohs_from_items(raws, n))
        except Exception:  # noqa: BLE001 - the reference parser says what is wrong
            pass
        return cls.from_wire(data, n)

    @classmethod
    def _from_dict(cls, v: Any, n: int, ohs_parse: Callable[[Any], dict[int, OHSEntry]]) -> Request:
        """The checks of :meth:`from_wire` over a decoded body; ``ohs_parse`` parses each
        operated object's OHS (decoded, or as the entries' bytes)."""
        d = _dict(v, "request")
        objects = _objects(d.get("o"))
        h, e = d.get("h"), d.get("e")
        if not isinstance(h, list | tuple) or len(h) != len(objects):
            raise MessageError("need one OHS per object")
        if e is not None and (not isinstance(e, list | tuple) or len(e) != len(objects)):
            raise MessageError("need one evidence OHS per object")
        op = d.get("op")
        try:
            mohs = {o: ohs_parse(x) for o, x in zip(objects, h, strict=True)}
            ev = (
                {o: ohs_from_wire(x, n) for o, x in zip(objects, e, strict=True)}
                if e is not None
                else None
            )
        except HistoryError as err:
            raise MessageError(str(err)) from err
        x = d.get("x") or []
        if not isinstance(x, list | tuple) or len(x) > MAX_OBJECTS:
            raise MessageError("context must be a short list")
        for item in x:
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise MessageError("context entry must be [oid, ohs]")
            oid = _int(item[0], "object id")
            if oid in mohs:
                raise MessageError("context object repeated")
            try:
                mohs[oid] = ohs_from_wire(item[1], n)
            except HistoryError as err:
                raise MessageError(str(err)) from err
        lk = d.get("lk") or []
        if not isinstance(lk, list | tuple) or len(lk) > MAX_LINKS:
            raise MessageError("links must be a short list")
        links = tuple(Link.from_wire(x) for x in lk)
        if len({(x.oid, x.lt) for x in links}) != len(links):
            raise MessageError("link repeated")
        return cls(
            _int(d.get("c"), "client"),
            objects,
            mohs,
            Operation.from_wire(op) if op is not None else None,
            ev,
            links,
        )


#: Pieces of a packed request body (``Request.packed``): a map of 7 entries in
#: ``Request.wire``'s key order.
_REQ_HEAD = b"\x87" + pack("v") + pack(VERSION) + pack("c")
_K_O, _K_H, _K_OP, _K_E, _K_X = (pack(k) for k in ("o", "h", "op", "e", "x"))


def _array_header(count: int) -> bytes:
    """The msgpack header of an array of ``count`` items (as ``msgpack.packb`` writes it)."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _packed_ohs(ohs: dict[int, OHSEntry]) -> bytes:
    """``pack(ohs_wire(ohs))``, reusing the bytes each entry was parsed from (if any)."""
    items = []
    for s, e in sorted(ohs.items()):
        if is_initial(e.rh):
            continue
        raw = e._item
        items.append(
            raw[1] if raw is not None and raw[0] == s else pack([s, rh_wire(e.rh), e.auth])
        )
    return _array_header(len(items)) + b"".join(items)


def _scan_request(data: bytes, n: int) -> dict | None:
    """The top-level map of a packed request, with ``"h"`` as the exact bytes of each OHS
    entry (one list per object), or None when the layout is not the expected one."""
    up = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(data))
    up.feed(data)
    d: dict = {}
    for _ in range(up.read_map_header()):
        k = up.unpack()
        if k != "h":
            d[k] = up.unpack()
            continue
        per_object = []
        for _ in range(up.read_array_header()):
            count = up.read_array_header()
            if count > n:
                return None
            raws = []
            for _ in range(count):
                start = up.tell()
                up.skip()
                raws.append(data[start : up.tell()])
            per_object.append(raws)
        d[k] = per_object
    if up.tell() != len(data):
        return None
    return d


def _ohs_from_items(raws: list[bytes], n: int) -> dict[int, OHSEntry]:
    """:func:`bftfs.qu.history.ohs_from_wire` of an OHS given as its entries' bytes."""
    out: dict[int, OHSEntry] = {}
    for raw in raws:
        s, e = _ohs_item(raw, n)
        if s in out:
            raise HistoryError("OHS server id invalid or repeated")
        out[s] = e
    return out


@functools.lru_cache(maxsize=4096)
def _ohs_item(raw: bytes, n: int) -> tuple[int, OHSEntry]:
    """One ``[server, rh, auth]`` entry parsed from its exact bytes (cached by them).

    Keyed by the bytes, not the decoded value (where ``True == 1``), so a hit returns what
    parsing these very bytes returns; invalid entries raise and are never cached.  The
    result is only parsed: each server still checks its MAC (``replica.cull``).
    """
    s, e = ohs_item_from_wire(unpack(raw), n)
    return s, OHSEntry(e.rh, e.auth, (s, raw))  # with what it was parsed from


@dataclass(frozen=True)
class Reply:
    """One server's answer to a request (lines 1008, 1021, 1030) or a history read."""

    status: ReplyStatus
    type: str | None = None  # the OpType value performed, for OK replies to requests
    lt: Timestamp | None = None  # the accepted candidate's LT (updates, barriers, copies)
    answer: Any = None
    at: tuple[Timestamp, ...] | None = None  # versions a query answer was computed on
    hist: tuple[OHSEntry, ...] = ()  # the server's <RH, alpha> per object of the request
    culled: tuple[tuple[int, ...], ...] = ()  # per object: servers whose RH was culled
    why: str = ""
    need: tuple[int, ...] = ()
    #: ``canonical(answer)`` when parsed from the wire (checked for size there anyway);
    #: the client compares answers by it instead of encoding each one again.
    answer_key: bytes | None = field(default=None, compare=False, repr=False)

    def key(self) -> bytes:
        """The canonical bytes of the answer (equal answers, equal keys)."""
        k = self.answer_key
        return k if k is not None else canonical(self.answer)

    def wire(self) -> dict:
        """The message body."""
        return {
            "st": self.status.value,
            "t": self.type,
            "lt": self.lt.encode() if self.lt else None,
            "a": self.answer,
            "at": [t.encode() for t in self.at] if self.at is not None else None,
            "h": [[rh_wire(x.rh), x.auth or None] for x in self.hist],
            "x": [list(c) for c in self.culled],
            "why": self.why,
            "n": list(self.need),
        }

    @classmethod
    def from_wire(cls, v: Any, objects: tuple[int, ...], n: int) -> Reply:
        """Parse a reply to a request over ``objects``.

        Raises:
            MessageError: malformed, or histories not one per object.
        """
        if not isinstance(v, dict):
            raise MessageError("reply must be a map")
        st = v.get("st")
        status = _STATUS.get(st) if isinstance(st, str) else None
        if status is None:
            raise MessageError("bad status")
        typ = v.get("t")
        if typ not in (None, "method", "copy", "barrier"):
            raise MessageError("bad type")
        lt = _lt(v["lt"]) if v.get("lt") is not None else None
        at_raw = v.get("at")
        if at_raw is not None and (not isinstance(at_raw, list) or len(at_raw) != len(objects)):
            raise MessageError("bad answer versions")
        at = tuple(_lt(x) for x in at_raw) if at_raw is not None else None
        h = v.get("h")
        if not isinstance(h, list) or len(h) != len(objects):
            raise MessageError("need one history per object")
        hist: list[OHSEntry] = []
        try:
            for item in h:
                if not isinstance(item, list) or len(item) != 2:
                    raise MessageError("history must be [rh, auth]")
                auth: Authenticator | None = auth_from_wire(item[1], n)
                hist.append(OHSEntry(rh_from_wire(item[0]), auth))
        except HistoryError as e:
            raise MessageError(str(e)) from e
        x = v.get("x", [])
        if not isinstance(x, list) or len(x) not in (0, len(objects)):
            raise MessageError("bad culled list")
        culled = tuple(
            tuple(_int(s, "server", 16) for s in c) if isinstance(c, list) else () for c in x
        )
        need_raw = v.get("n", [])
        if not isinstance(need_raw, list) or len(need_raw) > 8 * MAX_OBJECTS:
            raise MessageError("bad need list")
        why = v.get("why", "")
        if not isinstance(why, str):
            raise MessageError("bad reason")
        try:
            answer_key = canonical(v.get("a"))
        except CanonicalError as e:
            raise MessageError(f"answer: {e}") from e
        if len(answer_key) > MAX_VALUE:
            raise MessageError("answer too large")
        return cls(
            status,
            typ,
            lt,
            v.get("a"),
            at,
            tuple(hist),
            culled,
            why[:200],
            tuple(_int(o, "object id") for o in need_raw),
            answer_key,
        )


def parse_history_request(v: Any) -> tuple[int, ...]:
    """The objects of a ``qu.history`` body."""
    return _objects(_dict(v, "history request").get("o"))


def parse_fetch(v: Any) -> Timestamp:
    """The timestamp of a ``qu.fetch`` body."""
    return _lt(_dict(v, "fetch").get("lt"))


def parse_latest(v: Any) -> tuple[int | None, int]:
    """``(after, limit)`` of a ``qu.latest`` body (limit capped at :data:`MAX_LATEST`)."""
    d = _dict(v, "latest")
    after = d.get("after")
    return (
        None if after is None else _int(after, "object id"),
        max(1, min(MAX_LATEST, _int(d.get("limit", MAX_LATEST), "limit"))),
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
        oid = _int(item[0], "object id")
        if out and oid <= out[-1][0]:
            raise MessageError("latest entries must ascend")
        out.append((oid, _lt(item[1])))
    return out, bool(v.get("more"))


def parse_sync(v: Any) -> tuple[int, Timestamp]:
    """``(object id, timestamp)`` of a ``qu.sync`` body."""
    d = _dict(v, "sync")
    return _int(d.get("oid"), "object id"), _lt(d.get("lt"))


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
