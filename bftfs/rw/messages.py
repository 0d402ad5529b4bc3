"""Wire format of the PASIS read/write protocol (storage-node interface, seed L915-924,
L1153-1158; spec A.8).

Requests and replies are msgpack-able dicts with short keys (the transport frames, MACs and
resends them).  Every field that arrives from the network is checked here, and every failure
is a :class:`MessageError`; nothing else in ``bftfs.rw`` parses network input.

Wire version: :data:`RW_WIRE_VERSION` (a request carrying another ``v`` is refused).

======================  ======================================  ===========================
kind                    request fields                          reply fields
======================  ======================================  ===========================
``rw.time``             ``v, b``                                ``ts``
``rw.write``            ``v, b, ts, cc, f`` [, ``fr``, ``mv``]  ``ok``, ``new`` | ``stale``
``rw.read_latest``      ``v, b, d``                             ReadReply
``rw.read_prev``        ``v, b, d, lt, incl``                   ReadReply
``rw.list``             ``v, a, n``                             ``e, more``
``rw.notify``           ``v, e``                                ``{}``
``rw.space``            ``v``                                   ``used``
``rw.hold``             ``v``                                   ``{}``
======================  ======================================  ===========================

Field meanings:

- ``v``: int, wire version.  ``b``: bytes(16), block id, big-endian.
- ``ts``, ``lt``: bytes(44), an encoded :class:`~bftfs.rw.timestamp.Timestamp`.
- ``cc``: bytes(8 + 32 N), the cross checksum; ``f``: bytes, this node's fragment.
- ``d``: bool, whether the reply carries the fragment (False: a *read witness*, seed L1172).
- ``incl``: bool; READ_PREV returns versions strictly below ``lt`` (seed L1056-1058, spec
  H.2) or, with ``incl``, at or below ``lt`` (used to fetch one exact version's fragment).
- ``fr``: bool, optional: a *fresh* (one-round) write, executed only if ``ts`` is above every
  version the node hosts.
- ``mv``: bool, optional: a *moved* version (issue 35, ``bftfs/fs/generations/mover.py``):
  the background mover copies a version generation g holds into g + 1 at its own Time and
  writer.  A node takes it from a sender that is not the writer only while its view has a previous
  generation (a move runs), charged to the writer it names; elsewhere it is a repair like any other
  (``node/rw_server.py``).  Optional, so nodes and clients without it are unchanged.
- ``ok``: True when the write was executed; then ``new``: bool, whether it created the
  version (False: it was already stored).  ``ok`` False only answers a fresh write the node
  refused; then ``stale``: bytes(44), the node's latest timestamp.

- ``a``: bytes(16) or None: ``rw.list`` lists blocks strictly above this block id (None: from
  the first); ``n``: int, at most this many (1 .. :data:`MAX_LIST`).  Only nodes may ask
  (catch-up of a restarted node, node/rw_catchup.py).
- ``e``: list of ``[bytes(16), bytes(44)]``: block ids in strictly ascending order, all above
  ``a``, each with the greatest timestamp the node hosts for it; ``more``: bool, blocks above
  the last one listed exist.

``rw.notify`` (lazy verification's NOTIFY, seed L1503-1505; only nodes may send it):
``e`` is a list of at most :data:`MAX_NOTIFY` ``[bytes(16), bytes(44), str]``: a block, a
timestamp and ``"verified"`` (the sender verified that version complete and valid) or
``"poisonous"`` (the sender found that version's fragments are not one codeword).

``rw.hold`` (only nodes may send it): the sender holds its idle-time verification back
because a client reads a big object it has left to verify (``node/rw_verifier.py``,
``Verifier.client_read``); a node told so by ``b + 1`` peers holds its own too.

``rw.space``: ``used`` is an int, the bytes of the node's store in use (``df`` on a mount;
a client takes the ``(b + 1)``-th largest of ``N - t`` answers, so ``b`` liars cannot move
it outside what correct nodes report).

ReadReply (``rw.read_latest`` / ``rw.read_prev``):

- ``h``: list of bytes(44), the node's versions below the bound in descending order, at most
  the node's history bound; ``h[0]`` is the version READ_LATEST / READ_PREV returns.
- ``more``: bool, older versions exist that ``h`` does not list.
- ``fl``: bytes(44), the node's garbage-collection floor: versions strictly below it may have
  been deleted (:data:`~bftfs.rw.timestamp.ZERO` if nothing was ever collected).
- ``cc``, ``f``: the cross checksum and fragment of ``h[0]`` when ``d`` was set and ``h`` is
  non-empty; otherwise None.
- ``vf``: bool, optional (absent: False): the node's verified flag of ``h[0]`` (lazy
  verification; a reader that sees it from ``b + 1`` nodes for its candidate skips the
  regeneration, seed L1695-1698).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NewType

from bftfs.erasure import cross_checksum_size
from bftfs.rw.timestamp import ZERO, Timestamp, TimestampError

#: Version of this wire format.
RW_WIRE_VERSION = 1
#: Size of an encoded block id.
BLOCK_ID_SIZE = 16
#: Largest history a client accepts in one reply (a node sends at most its own bound).
MAX_HISTORY = 64

KIND_TIME = "rw.time"
KIND_WRITE = "rw.write"
KIND_READ_LATEST = "rw.read_latest"
KIND_READ_PREV = "rw.read_prev"
KIND_LIST = "rw.list"
KIND_NOTIFY = "rw.notify"
KIND_SPACE = "rw.space"
KIND_HOLD = "rw.hold"
#: Most entries one ``rw.notify`` may carry.
MAX_NOTIFY = 512
#: Most blocks one ``rw.list`` reply may carry (a request asking for more is malformed).
MAX_LIST = 1024
#: One above the largest block id.
BLOCK_ID_LIMIT = 1 << (8 * BLOCK_ID_SIZE)

#: A block: an unsigned 128-bit integer (e.g. ``object << 64 | block index``).
BlockId = NewType("BlockId", int)


class MessageError(ValueError):
    """A request or reply that does not follow this wire format."""


def block_id(obj: int, index: int) -> BlockId:
    """The id of block ``index`` of object ``obj`` (both unsigned 64-bit)."""
    if not (0 <= obj < 1 << 64 and 0 <= index < 1 << 64):
        raise ValueError("object and index must be unsigned 64-bit")
    return BlockId(obj << 64 | index)


def object_of(block: int) -> int:
    """The object a block id belongs to (:func:`block_id`'s ``obj``)."""
    return block >> 64


def encode_block_id(block: int) -> bytes:
    """16 bytes big-endian, so that a block's keys sort together and by id."""
    return block.to_bytes(BLOCK_ID_SIZE, "big")


def _field(msg: Any, key: str) -> Any:
    if not isinstance(msg, dict):
        raise MessageError("message is not a map")
    if key not in msg:
        raise MessageError(f"missing field {key!r}")
    return msg[key]


def _bytes(msg: Any, key: str, *, size: int | None = None, max_size: int | None = None) -> bytes:
    val = _field(msg, key)
    if not isinstance(val, bytes):
        raise MessageError(f"field {key!r} is not bytes")
    if size is not None and len(val) != size:
        raise MessageError(f"field {key!r} has {len(val)} bytes, expected {size}")
    if max_size is not None and len(val) > max_size:
        raise MessageError(f"field {key!r} has {len(val)} bytes, limit {max_size}")
    return val


def _bool(msg: Any, key: str) -> bool:
    val = _field(msg, key)
    if not isinstance(val, bool):
        raise MessageError(f"field {key!r} is not a bool")
    return val


def _ts(msg: Any, key: str) -> Timestamp:
    try:
        return Timestamp.decode(_field(msg, key))
    except TimestampError as e:
        raise MessageError(f"field {key!r}: {e}") from None


def _check_version(msg: Any) -> None:
    if _field(msg, "v") != RW_WIRE_VERSION:
        raise MessageError(f"wire version {msg['v']!r}, expected {RW_WIRE_VERSION}")


def _block(msg: Any) -> BlockId:
    _check_version(msg)
    return BlockId(int.from_bytes(_bytes(msg, "b", size=BLOCK_ID_SIZE), "big"))


# --- requests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeRequest:
    """TIME_REQUEST: the greatest timestamp the node hosts for a block."""

    block: BlockId

    def to_wire(self) -> dict[str, Any]:
        return {"v": RW_WIRE_VERSION, "b": encode_block_id(self.block)}

    @classmethod
    def from_wire(cls, msg: Any) -> TimeRequest:
        return cls(_block(msg))


@dataclass(frozen=True)
class WriteRequest:
    """WRITE: store fragment ``fragment`` of version ``ts`` with its cross checksum.

    ``fresh`` marks a one-round write (client.py): the node executes it only if ``ts`` is
    above every version it hosts, and otherwise answers with its latest timestamp.
    """

    block: BlockId
    ts: Timestamp
    cross_checksum: bytes
    #: Bytes, or a read-only view of a block's stripes (``erasure.encode_into``).
    fragment: bytes | memoryview
    fresh: bool = False
    #: A version the background mover copies from the previous generation (``mv``).
    moved: bool = False

    def to_wire(self) -> dict[str, Any]:
        msg = {
            "v": RW_WIRE_VERSION,
            "b": encode_block_id(self.block),
            "ts": self.ts.encode(),
            "cc": self.cross_checksum,
            "f": self.fragment,
        }
        if self.fresh:
            msg["fr"] = True
        if self.moved:
            msg["mv"] = True
        return msg

    @classmethod
    def from_wire(cls, msg: Any, *, n: int, max_fragment: int) -> WriteRequest:
        """Parse and size-check a write for a cluster of ``n`` nodes."""
        block = _block(msg)
        fresh = _bool(msg, "fr") if "fr" in msg else False
        moved = _bool(msg, "mv") if "mv" in msg else False
        return cls(
            block,
            _ts(msg, "ts"),
            _bytes(msg, "cc", size=cross_checksum_size(n)),
            _bytes(msg, "f", max_size=max_fragment),
            fresh,
            moved,
        )


@dataclass(frozen=True)
class ReadRequest:
    """READ_LATEST (``below`` None) or READ_PREV (versions below ``below``).

    ``data`` False makes the request a read witness: the reply carries only the history.
    """

    block: BlockId
    data: bool
    below: Timestamp | None = None
    inclusive: bool = False

    @property
    def kind(self) -> str:
        return KIND_READ_LATEST if self.below is None else KIND_READ_PREV

    def admits(self, ts: Timestamp) -> bool:
        """Whether a version ``ts`` lies in the range this request asks about."""
        if self.below is None:
            return True
        return ts <= self.below if self.inclusive else ts < self.below

    def to_wire(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"v": RW_WIRE_VERSION, "b": encode_block_id(self.block)}
        msg["d"] = self.data
        if self.below is not None:
            msg["lt"] = self.below.encode()
            msg["incl"] = self.inclusive
        return msg

    @classmethod
    def from_wire(cls, msg: Any, *, prev: bool) -> ReadRequest:
        block = _block(msg)
        data = _bool(msg, "d")
        if not prev:
            return cls(block, data)
        return cls(block, data, _ts(msg, "lt"), _bool(msg, "incl"))


@dataclass(frozen=True)
class ListRequest:
    """LIST (not in the seed): the blocks a node hosts above ``after``, with their latest
    timestamps, at most ``limit`` of them (a page; the next page starts after the last)."""

    after: BlockId | None
    limit: int

    def to_wire(self) -> dict[str, Any]:
        after = None if self.after is None else encode_block_id(self.after)
        return {"v": RW_WIRE_VERSION, "a": after, "n": self.limit}

    @classmethod
    def from_wire(cls, msg: Any) -> ListRequest:
        _check_version(msg)
        after = None
        if _field(msg, "a") is not None:
            after = BlockId(int.from_bytes(_bytes(msg, "a", size=BLOCK_ID_SIZE), "big"))
        limit = _field(msg, "n")
        if type(limit) is not int or not 1 <= limit <= MAX_LIST:
            raise MessageError(f"list limit must be an int in 1..{MAX_LIST}")
        return cls(after, limit)


# --- replies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeReply:
    """The node's greatest hosted timestamp (:data:`ZERO` if it hosts none)."""

    latest: Timestamp

    def to_wire(self) -> dict[str, Any]:
        return {"ts": self.latest.encode()}

    @classmethod
    def from_wire(cls, msg: Any) -> TimeReply:
        return cls(_ts(msg, "ts"))


@dataclass(frozen=True)
class WriteReply:
    """The answer to WRITE.

    Executed: ``stale`` is None and ``new`` says whether the version was stored now (False:
    it was already there).  A fresh write the node refused because it hosts a version at or
    above its timestamp: ``stale`` is the node's latest timestamp.
    """

    new: bool
    stale: Timestamp | None = None

    @property
    def ok(self) -> bool:
        return self.stale is None

    def to_wire(self) -> dict[str, Any]:
        if self.stale is not None:
            return {"ok": False, "stale": self.stale.encode()}
        return {"ok": True, "new": self.new}

    @classmethod
    def from_wire(cls, msg: Any) -> WriteReply:
        ok = _field(msg, "ok")
        if ok is True:
            return cls(_bool(msg, "new"))
        if ok is False:
            return cls(False, _ts(msg, "stale"))
        raise MessageError("write reply 'ok' is not a bool")


@dataclass(frozen=True)
class ReadReply:
    """A node's answer to READ_LATEST / READ_PREV (see the module docstring)."""

    #: Versions in strictly descending order, all inside the request's range.
    history: tuple[Timestamp, ...]
    more: bool
    floor: Timestamp
    cross_checksum: bytes | None = None
    fragment: bytes | None = None
    #: The node's verified flag of ``history[0]``.
    verified: bool = False

    @property
    def latest(self) -> Timestamp | None:
        """The version READ_LATEST / READ_PREV returns, or None if the node has none."""
        return self.history[0] if self.history else None

    def to_wire(self) -> dict[str, Any]:
        msg = {
            "h": [ts.encode() for ts in self.history],
            "more": self.more,
            "fl": self.floor.encode(),
            "cc": self.cross_checksum,
            "f": self.fragment,
        }
        if self.verified:
            msg["vf"] = True
        return msg

    @classmethod
    def from_wire(cls, msg: Any, request: ReadRequest, *, n: int, max_fragment: int) -> ReadReply:
        """Parse a reply to ``request`` and check it is well formed.

        Well formed means: a strictly descending history of at most :data:`MAX_HISTORY`
        versions, all inside the requested range and none of them :data:`ZERO`; ``more``
        only with a non-empty history; a fragment and cross checksum exactly when data was
        asked for and a version is returned.  Whether the fragment is *valid* (the seed's
        VALIDATE) is checked by :func:`bftfs.rw.verify.validate_fragment`.
        """
        raw = _field(msg, "h")
        if not isinstance(raw, list) or len(raw) > MAX_HISTORY:
            raise MessageError("history is not a list of bounded length")
        try:
            history = tuple(Timestamp.decode(r) for r in raw)
        except TimestampError as e:
            raise MessageError(f"history: {e}") from None
        for newer, older in zip(history, history[1:], strict=False):
            if not older < newer:
                raise MessageError("history is not strictly descending")
        if history and (history[-1] == ZERO or not request.admits(history[0])):
            raise MessageError("history outside the requested range")
        more = _bool(msg, "more")
        if more and not history:
            raise MessageError("'more' without a history")
        floor = _ts(msg, "fl")
        cc, frag = _field(msg, "cc"), _field(msg, "f")
        if request.data and history:
            cc = _bytes(msg, "cc", size=cross_checksum_size(n))
            frag = _bytes(msg, "f", max_size=max_fragment)
        elif cc is not None or frag is not None:
            raise MessageError("unexpected fragment in reply")
        verified = _bool(msg, "vf") if "vf" in msg else False
        if verified and not history:
            raise MessageError("'vf' without a history")
        return cls(history, more, floor, cc, frag, verified)


@dataclass(frozen=True)
class ListReply:
    """A node's answer to LIST: ``(block, latest timestamp)`` in ascending block order."""

    entries: tuple[tuple[BlockId, Timestamp], ...]
    more: bool

    def to_wire(self) -> dict[str, Any]:
        return {
            "e": [[encode_block_id(b), ts.encode()] for b, ts in self.entries],
            "more": self.more,
        }

    @classmethod
    def from_wire(cls, msg: Any, request: ListRequest) -> ListReply:
        """Parse a reply to ``request`` and check it is well formed.

        Well formed means: at most ``request.limit`` entries, block ids strictly ascending
        and above ``request.after``, no :data:`ZERO` timestamp, and ``more`` only with at
        least one entry (so that paging always advances).  Whether the node really hosts
        those versions is for the reader to find out (node/rw_catchup.py never trusts a listing).
        """
        raw = _field(msg, "e")
        if not isinstance(raw, list) or len(raw) > request.limit:
            raise MessageError("entries are not a list of at most the requested length")
        entries: list[tuple[BlockId, Timestamp]] = []
        prev = -1 if request.after is None else request.after
        for item in raw:
            if not (isinstance(item, list) and len(item) == 2):
                raise MessageError("entry is not a [block, timestamp] pair")
            b, t = item
            if not isinstance(b, bytes) or len(b) != BLOCK_ID_SIZE:
                raise MessageError("entry block id is not bytes(16)")
            block = BlockId(int.from_bytes(b, "big"))
            if block <= prev:
                raise MessageError("entries are not strictly ascending above the cursor")
            try:
                ts = Timestamp.decode(t)
            except TimestampError as e:
                raise MessageError(f"entry timestamp: {e}") from None
            if ts == ZERO:
                raise MessageError("entry with the zero timestamp")
            entries.append((block, ts))
            prev = block
        more = _bool(msg, "more")
        if more and not entries:
            raise MessageError("'more' without entries")
        return cls(tuple(entries), more)


@dataclass(frozen=True)
class Notify:
    """NOTIFY (seed L1503-1505): what the sending node learned about some versions."""

    entries: tuple[tuple[BlockId, Timestamp, str], ...]

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": RW_WIRE_VERSION,
            "e": [[encode_block_id(b), ts.encode(), st] for b, ts, st in self.entries],
        }

    @classmethod
    def from_wire(cls, msg: Any) -> Notify:
        _check_version(msg)
        raw = _field(msg, "e")
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_NOTIFY:
            raise MessageError(f"entries are not a list of 1..{MAX_NOTIFY}")
        entries: list[tuple[BlockId, Timestamp, str]] = []
        for item in raw:
            if not (isinstance(item, list) and len(item) == 3):
                raise MessageError("entry is not [block, timestamp, status]")
            b, t, st = item
            if not isinstance(b, bytes) or len(b) != BLOCK_ID_SIZE:
                raise MessageError("entry block id is not bytes(16)")
            if st not in ("verified", "poisonous"):
                raise MessageError(f"entry status {st!r} is not 'verified' or 'poisonous'")
            try:
                ts = Timestamp.decode(t)
            except TimestampError as e:
                raise MessageError(f"entry timestamp: {e}") from None
            if ts == ZERO:
                raise MessageError("entry with the zero timestamp")
            entries.append((BlockId(int.from_bytes(b, "big")), ts, st))
        return cls(tuple(entries))


def hold_wire() -> dict[str, Any]:
    """An ``rw.hold`` request."""
    return {"v": RW_WIRE_VERSION}


def parse_hold(msg: Any) -> None:
    """Check an ``rw.hold`` request (it says nothing but that the sender holds)."""
    _check_version(msg)


def parse_space_reply(msg: Any) -> tuple[int, int | None]:
    """The ``used`` bytes of an ``rw.space`` reply, and the ``free`` disk bytes the node may
    count on (None from a node that does not say)."""
    used = _field(msg, "used")
    if type(used) is not int or not 0 <= used < 1 << 63:
        raise MessageError("'used' is not a non-negative int")
    free = msg.get("free")
    if free is not None and (type(free) is not int or not 0 <= free < 1 << 63):
        raise MessageError("'free' is not a non-negative int")
    return used, free
