"""A version's applied table read and rewritten as bytes, one client's entry at a time.

Every object a Q/U update operates on keeps an applied table, the canonical bytes of
``{client: [seq, answer]}`` (``qu/replica.py``, "Applied table"), and an update of ``k``
objects writes its answer into each of the ``k`` tables.  A write-back batch of 30 creates
answers 30 files' attributes (about 5 KB), so decoding every table to read one entry and
encoding it again with that entry replaced cost a node O(k^2) bytes of msgpack work per
update: a quarter of its update step in an in-process profile of batched creates and
removals.  Here the table stays bytes: the one entry an update needs is decoded, the
others are skipped (msgpack's own skipping, in C), and the new table is the old one's
byte slices with the entry spliced in at its canonical place.

The result is exactly ``canon.canonical_map`` of the decoded table with the entry set:
canonical maps are sorted by their keys' packed bytes, the values of a table read back
from canonical bytes pack to those same bytes, and a map's header depends only on its
size.  A table not in that form (a key that is not an integer, keys out of order, bytes
after the map) makes :func:`with_entry` answer None, and the caller takes the general
path.
"""

from __future__ import annotations

import bisect
from typing import Any

import msgpack

from bftfs.qu.canon import canonical_map, map_header, unpack

#: Most bytes the table's parser may hold (the unpacker's default is 100 MiB).
_MAX = 1 << 30


def _pairs(table: bytes) -> list[tuple[bytes, int, int, int]] | None:
    """``(packed key, key, start, end)`` of each entry of ``table`` in order (``start`` and
    ``end`` bound the entry's key and value), or None when ``table`` is not one map of
    integer keys in canonical order."""
    u = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True, max_buffer_size=_MAX)
    u.feed(table)
    try:
        count = u.read_map_header()
        pairs = []
        for _ in range(count):
            start = u.tell()
            key = u.unpack()
            mid = u.tell()
            u.skip()
            if type(key) is not int:
                return None
            pairs.append((table[start:mid], key, start, u.tell()))
    except (msgpack.OutOfData, ValueError, TypeError):
        return None
    if u.tell() != len(table):
        return None
    if any(pairs[i][0] >= pairs[i + 1][0] for i in range(len(pairs) - 1)):
        return None
    return pairs


def _at(table: bytes, client: int) -> msgpack.Unpacker | None:
    """An unpacker of ``table`` standing at ``client``'s entry (its key read, the other
    entries before it skipped, not decoded), or None when the table has none.

    Raises:
        ValueError: ``table`` is not one map (msgpack's errors are ValueErrors).
    """
    u = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True, max_buffer_size=_MAX)
    u.feed(table)
    try:
        for _ in range(u.read_map_header()):
            if u.unpack() == client:
                return u
            u.skip()
    except msgpack.OutOfData as e:
        raise ValueError("truncated table") from e
    return None


def entry(table: bytes, client: int) -> Any:
    """``client``'s entry ``[seq, answer]`` of the applied table ``table``, or None; the
    other entries are skipped, not decoded."""
    try:
        u = _at(table, client)
        return None if u is None else u.unpack()
    except (msgpack.OutOfData, ValueError, TypeError):
        got = unpack(table)  # not one map: as the general path would read it
        return got.get(client) if isinstance(got, dict) else None


def seq_of(table: bytes, client: int) -> Any:
    """The ``seq`` of ``client``'s entry ``[seq, answer]`` in ``table``, or None; its
    answer (a batch's: every object of the update holds it) is not decoded."""
    try:
        u = _at(table, client)
        if u is None:
            return None
        u.read_array_header()
        return u.unpack()
    except (msgpack.OutOfData, ValueError, TypeError):
        got = entry(table, client)
        return got[0] if got is not None else None


def with_entry(table: bytes, client: int, value: bytes) -> bytes | None:
    """The canonical bytes of ``table`` with ``client``'s entry set to the packed
    ``value`` (``[seq, answer]`` as msgpack packs it), or None if ``table`` is not a
    canonical map of integer keys (the caller then decodes it)."""
    pairs = _pairs(table)
    if pairs is None:
        return None
    key = msgpack.packb(client)
    keys = [p[0] for p in pairs]
    at = bisect.bisect_left(keys, key)
    replaced = at < len(pairs) and pairs[at][1] == client
    rest = at + 1 if replaced else at
    head = map_header(len(pairs) + (0 if replaced else 1))
    before = table[pairs[0][2] : pairs[at - 1][3]] if at else b""
    after = table[pairs[rest][2] : pairs[-1][3]] if rest < len(pairs) else b""
    return b"".join((head, before, key, value, after))


def set_entry(table: bytes, client: int, value: Any, packed: bytes) -> bytes:
    """The applied table ``table`` with ``client``'s entry set to ``value`` (normal: read
    back from canonical bytes or normalised; ``packed`` is its msgpack bytes): spliced in
    as bytes, or, for a table not in canonical form, decoded and encoded again."""
    spliced = with_entry(table, client, packed)
    if spliced is not None:
        return spliced
    t = dict(unpack(table))
    t[client] = value
    return canonical_map(t)


#: Most entries an installed applied table may hold (one per client that ever updated the
#: object; a client id is at most 2^32).
MAX_INSTALLED_CLIENTS = 1 << 16


def installed_table(blob: Any) -> dict[int, Any] | None:
    """The applied table a move installs (``Method.installs_applied``): the canonical bytes
    of ``{client: [seq, answer]}`` as the old generation's version held it; None if it is
    not one.  (Whoever moves an object could also write its state: the table adds the
    power to make one of a client's future updates, of that exact ``seq``, answer without
    running; docs/threat-model.md.)"""
    if not isinstance(blob, bytes):
        return None
    try:
        table = unpack(blob)
    except Exception:  # noqa: BLE001 - garbage from a client: refused, never raised
        return None
    if not isinstance(table, dict) or len(table) > MAX_INSTALLED_CLIENTS:
        return None
    for client, entry in table.items():
        if not isinstance(client, int) or isinstance(client, bool) or not 0 <= client < 1 << 32:
            return None
        if not isinstance(entry, list) or len(entry) != 2:
            return None
        seq = entry[0]
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 1 << 64:
            return None
    return table
