"""The Q/U request message (``qu.request``, layout in ``messages.py``): :class:`Operation`,
:class:`Link` and :class:`Request`, each with its wire value and parser, and the request's
packed form (one msgpack encoding for the q servers it goes to; a server parses a busy
object's OHS entries once per distinct byte string).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from bftfs.crypto import MAC_SIZE
from bftfs.qu.canon import CanonicalError, canonical, pack, unpack
from bftfs.qu.history import (
    Authenticator,
    HistoryError,
    OHSEntry,
    ReplicaHistory,
    is_initial,
    ohs_from_wire,
    ohs_item_from_wire,
    ohs_wire,
    rh_from_wire,
    rh_wire,
)
from bftfs.qu.messages import (
    MAX_METHOD_NAME,
    MAX_VALUE,
    VERSION,
    MessageError,
    parse_lt,
    parse_map,
    parse_objects,
    parse_uint,
)
from bftfs.qu.timestamp import MAX_OBJECTS, Timestamp

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
        seq = parse_uint(seq, "seq")
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
        return cls(parse_uint(v[0], "object id"), parse_lt(v[1]), parse_lt(v[2]), proof)


#: Links one request may carry (a conditioned-on chain walked back past a pruned stretch).
#: Past :data:`MAX_PROVEN` of them they go without proofs, and each server checks them
#: against the requests it stored itself (``links.verified``): ~100 bytes each.
MAX_LINKS = 4096
#: Links one request may carry with their proofs (each a stored request, a few KB).
MAX_PROVEN = 256
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
        d = parse_map(v, "request")
        objects = parse_objects(d.get("o"))
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
            oid = parse_uint(item[0], "object id")
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
        if sum(x.proof is not None for x in links) > MAX_PROVEN:
            raise MessageError("links must carry few proofs")
        return cls(
            parse_uint(d.get("c"), "client"),
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
    items = [entry_bytes(s, e) for s, e in sorted(ohs.items()) if not is_initial(e.rh)]
    return _array_header(len(items)) + b"".join(items)


def entry_bytes(server: int, e: OHSEntry) -> bytes:
    """Server ``server``'s entry ``e`` as one packed ``[server, rh, auth]`` item (the bytes
    it was parsed from, if any), which :func:`parse_entry` reads back."""
    raw = e._item
    return raw[1] if raw is not None and raw[0] == server else pack([server, rh_wire(e.rh), e.auth])


def parse_entry(raw: bytes, n: int) -> tuple[int, OHSEntry]:
    """``(server, entry)`` of one item :func:`entry_bytes` made (parsed once per distinct
    byte string, :func:`_ohs_item`).

    Raises:
        HistoryError: malformed, or the server id is not one of ``n``.
    """
    return _ohs_item(raw, n)


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
    fast = _split_item(raw, n)
    if fast is not None:
        try:
            s, rh_raw, auth = fast
            return s, OHSEntry(_rh_parsed(rh_raw), auth, (s, raw))
        except Exception:  # noqa: BLE001 - the reference parser says what is wrong
            pass
    s, e = ohs_item_from_wire(unpack(raw), n)
    return s, OHSEntry(e.rh, e.auth, (s, raw))  # with what it was parsed from


def _split_item(raw: bytes, n: int) -> tuple[int, bytes, Authenticator | None] | None:
    """``(server, the history's bytes, authenticator)`` of an entry in the layout a server's
    reply gives it (``[fixint, rh, nil or n bin8 MACs]``), or None for any other layout.

    The servers of one object usually hold the same history, so an object's OHS carries it
    n times under n different MAC vectors: splitting it off lets :func:`_rh_parsed` parse
    it once per distinct byte string instead of once per server (at ``b = 2`` an OHS entry
    is ~500 bytes of candidates naming up to 32 objects each, parsed 11 times an object).
    The split is the reference parse's: the tail is one whole msgpack object by its
    layout, and the history's bytes must unpack whole, so the two are the array's last two
    members (msgpack values are self-delimiting)."""
    if len(raw) < 3 or raw[0] != 0x93 or raw[1] >= min(n, 0x80):
        return None
    head, tags, sizes, macs = _auth_layout(n)
    tail = raw[-len(head) - n * (2 + MAC_SIZE) :]
    if (
        len(raw) - len(tail) >= 3
        and tail.startswith(head)
        and tail[len(head) :: 2 + MAC_SIZE] == tags
        and tail[len(head) + 1 :: 2 + MAC_SIZE] == sizes
    ):
        return raw[1], raw[2 : -len(tail)], tuple(map(tail.__getitem__, macs))
    if raw[-1] == 0xC0:  # no authenticator: the initial history's
        return raw[1], raw[2:-1], None
    return None


@functools.lru_cache(maxsize=64)
def _auth_layout(n: int) -> tuple[bytes, bytes, bytes, tuple[slice, ...]]:
    """How ``pack`` writes an authenticator of ``n`` MACs: the array's header, the tag and
    the size byte of each ``bin8``, and where each MAC lies after the header."""
    head = _array_header(n)
    step = 2 + MAC_SIZE
    macs = tuple(slice(len(head) + i * step + 2, len(head) + (i + 1) * step) for i in range(n))
    return head, b"\xc4" * n, bytes((MAC_SIZE,)) * n, macs


@functools.lru_cache(maxsize=4096)
def _rh_parsed(rh_raw: bytes) -> ReplicaHistory:
    """A replica history from its exact bytes, parsed once per distinct byte string
    (:func:`_split_item`); raises (uncached) what :func:`rh_from_wire` raises, or the
    unpacker's error on bytes that are not one whole msgpack value."""
    return rh_from_wire(unpack(rh_raw))
