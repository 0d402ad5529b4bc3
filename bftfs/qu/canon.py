"""Canonical byte encoding of msgpack-able values (the input of every Q/U hash).

Timestamps are a hash of the operation and the conditioned-on OHS (seed L2616-2620), and
every server that receives the same request must build byte-identical timestamps and objects
(seed L2189-2192).  Plain ``msgpack.packb`` already is deterministic for one Python value, but
two equal values can still pack differently: a dict's key order follows insertion, and a
peer's encoder may pick another integer width.  ``canonical`` fixes both by sorting map keys
(by their own canonical encoding) and always re-encoding from the parsed value, so the bytes
depend only on the value.

Floats are refused: the seed's objects are deterministic, and NaN/-0.0 would make "equal
value" ambiguous.  Only None, bool, int (64-bit), str, bytes, list/tuple and dict are allowed.
"""

from __future__ import annotations

from typing import Any

import msgpack

#: Bound on nesting so a hostile value cannot exhaust the stack while being canonicalised.
MAX_DEPTH = 32


class CanonicalError(ValueError):
    """A value has no canonical encoding (float, unknown type, too deep, int out of range)."""


#: Types taken as they are.  ``int`` is among them: msgpack itself refuses an integer
#: outside -2**63 .. 2**64-1 (OverflowError, turned into CanonicalError by
#: :func:`canonical`), so no range check per integer is needed here.
_PLAIN = (type(None), bool, int, str, bytes)

#: Packed form of string map keys, the sort key of canonical maps.  Object states and
#: answers use a few dozen key names over and over; packing each anew was a fifth of a
#: node's time.  Only ``str`` keys are cached (``True == 1`` would collide in a dict).
_PACKED_KEYS: dict[str, bytes] = {}
_PACKED_KEYS_MAX = 4096
#: Packed form of the small non-negative ints that key maps such as a directory's 64
#: entry buckets (a positive fixint is the one byte ``k``).
_SMALL_INT_KEYS = tuple(bytes((k,)) for k in range(128))


def _packed_key(item: tuple[Any, Any]) -> bytes:
    k = item[0]
    t = type(k)
    if t is str:
        got = _PACKED_KEYS.get(k)
        if got is None:
            got = msgpack.packb(k, use_bin_type=True)
            if len(_PACKED_KEYS) < _PACKED_KEYS_MAX:
                _PACKED_KEYS[k] = got
        return got
    if t is int and 0 <= k < 128:
        return _SMALL_INT_KEYS[k]
    return msgpack.packb(k, use_bin_type=True)


def _norm(value: Any, depth: int) -> Any:
    if type(value) in _PLAIN:
        return value
    if depth > MAX_DEPTH:
        raise CanonicalError("value nested too deeply")
    if isinstance(value, bool | int | str | bytes):  # subclasses (msgpack checks int range)
        return value
    # Plain members are taken as they are without a call (states and answers are maps of
    # strings, bytes and small ints: this halves the calls of a canonical encoding).
    d = depth + 1
    if isinstance(value, list | tuple):
        return [v if type(v) in _PLAIN else _norm(v, d) for v in value]
    if isinstance(value, dict):
        items = [
            (
                k if type(k) in _PLAIN else _norm(k, d),
                v if type(v) in _PLAIN else _norm(v, d),
            )
            for k, v in value.items()
        ]
        items.sort(key=_packed_key)
        return dict(items)
    raise CanonicalError(f"type {type(value).__name__} has no canonical encoding")


def canonical(value: Any) -> bytes:
    """The canonical msgpack bytes of ``value``.

    Raises:
        CanonicalError: ``value`` contains a float, an unsupported type, or is too deep.
    """
    try:
        return msgpack.packb(_norm(value, 0), use_bin_type=True)
    except OverflowError as e:  # from packing a value or sorting by a key's encoding
        raise CanonicalError("integer out of 64-bit range") from e


def canonical_map(value: dict) -> bytes:
    """``canonical(value)`` for a map whose values are already normal (as read back from
    canonical bytes, or returned by :func:`normalise`): only the keys are checked and
    sorted, the values are packed as they are.

    For the applied table, re-encoded in every update with one entry changed: walking its
    values again cost a node about 5% of an update.

    Raises:
        CanonicalError: a key has no canonical encoding.
    """
    items = list(value.items())
    for k, _ in items:
        if type(k) is int:
            if not -(1 << 63) <= k < (1 << 64):
                raise CanonicalError("integer out of 64-bit range")
        elif type(k) is not str:
            return canonical(value)  # anything else takes the general path
    if len(items) > 1:
        items.sort(key=_packed_key)
    return msgpack.packb(dict(items), use_bin_type=True)


def map_header(count: int) -> bytes:
    """The msgpack header of a map of ``count`` entries, as :func:`pack` writes it (for a
    map put together from entries already packed)."""
    if count < 16:
        return bytes((0x80 | count,))
    if count < 1 << 16:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")


def pack(value: Any) -> bytes:
    """Plain msgpack bytes, for values whose construction already fixes the byte layout
    (maps built in a fixed key order from canonical parts).  Used for storage, not hashing.
    """
    return msgpack.packb(value, use_bin_type=True)


def normalise(value: Any) -> Any:
    """``value`` as it reads back from its canonical bytes (tuples become lists, keys sorted)."""
    return unpack(canonical(value))


def unpack(data: bytes | memoryview) -> Any:
    """Parse canonical bytes (or any msgpack) with the settings the encoder assumes."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)


def map_value(data: bytes | memoryview, key: str, default: Any = None) -> Any:
    """The value of ``key`` in packed map ``data`` (``default`` if absent), the other
    keys' values skipped, not decoded: a stored version's time is read at each update's
    retention check, and decoding the whole version (its state, its applied table) for it
    was a seventh of a node's update work (``qu/schema.py`` ``oldest_versions``).

    Raises:
        ValueError: ``data`` is not one packed map (msgpack's errors are ValueErrors).
    """
    return map_values(data, (key,)).get(key, default)


def map_values(data: bytes | memoryview, keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of those of ``keys`` that packed map ``data`` holds, the other keys'
    values skipped, not decoded (:func:`map_value`; a version's state read for an update
    without the answer stored beside it, ``qu/schema.py`` ``load_contents``).

    Raises:
        ValueError: ``data`` is not one packed map (msgpack's errors are ValueErrors).
    """
    u = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True)
    u.feed(data)
    got: dict[str, Any] = {}
    try:
        for _ in range(u.read_map_header()):
            k = u.unpack()
            if k in keys:
                got[k] = u.unpack()
                if len(got) == len(keys):
                    break
            else:
                u.skip()
    except msgpack.OutOfData as e:
        raise ValueError("truncated map") from e
    return got
