"""A directory object's entries, kept in hash buckets (the ``e`` field of its state).

Every directory update runs on every server of a quorum, and a method must unpack the
entries it changes and pack them again.  Kept as one msgpack map, a directory of 5000 names
(PostMark's configuration) cost 2.7 ms per update on each server, 0.27 ms at 500 names.
Split by a hash of the name into :data:`BUCKETS` separately packed maps, an update or a
lookup unpacks and packs one bucket - about 1/64 of the directory - and leaves the other
buckets' bytes as they were.

Layout: ``e`` is a map ``bucket index -> packed map {name: [object id, type code]}`` that
holds only non-empty buckets, so an empty directory has ``e == {}``.  The bucket of a name is
``crc32(name) % BUCKETS``: deterministic on every server (a Q/U method must be) and cheap.
A client choosing names can crowd one bucket, which only makes its own directory slower.

Directories written before buckets existed hold ``e`` as one packed map (bytes); they read
as before and move to buckets at their next update.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgpack

#: Buckets per directory (a power of two keeps the modulo cheap; 64 keeps buckets of a
#: 5000-name directory near 80 names).
BUCKETS = 64

Entry = list[int]  # [object id, type code]


def _unpack(blob: bytes) -> dict[bytes, Entry]:
    return msgpack.unpackb(blob, raw=False, use_list=True)


def _pack(ents: dict[bytes, Entry]) -> bytes:
    return msgpack.packb(dict(sorted(ents.items())), use_bin_type=True)


def bucket_of(name: bytes) -> int:
    """The bucket that holds ``name``."""
    return zlib.crc32(name) % BUCKETS


class Entries:
    """The entries of one directory state during one method: buckets are unpacked when
    first touched and packed again by :meth:`packed`, the rest stay as bytes."""

    def __init__(self, e: Any) -> None:
        if isinstance(e, bytes):  # a directory from before buckets: one map
            self._packed: dict[int, bytes] = {}
            self._open: dict[int, dict[bytes, Entry]] = {}
            for name, entry in _unpack(e).items():
                self._bucket(name)[name] = entry
        else:
            self._packed = dict(e)
            self._open = {}

    def _bucket(self, name: bytes) -> dict[bytes, Entry]:
        i = bucket_of(name)
        got = self._open.get(i)
        if got is None:
            blob = self._packed.get(i)
            got = self._open[i] = _unpack(blob) if blob is not None else {}
        return got

    def get(self, name: bytes) -> Entry | None:
        """``[object id, type code]`` of ``name``, or None."""
        return self._bucket(name).get(name)

    def __contains__(self, name: bytes) -> bool:
        return name in self._bucket(name)

    def __setitem__(self, name: bytes, entry: Entry) -> None:
        self._bucket(name)[name] = entry

    def __delitem__(self, name: bytes) -> None:
        del self._bucket(name)[name]

    def empty(self) -> bool:
        """No entries at all."""
        return not any(self._open.values()) and not any(i not in self._open for i in self._packed)

    def packed(self) -> dict[int, bytes]:
        """The ``e`` field for the new state: touched buckets packed again, empty ones left
        out, untouched ones as they were."""
        out = dict(self._packed)
        for i, ents in self._open.items():
            if ents:
                out[i] = _pack(ents)
            else:
                out.pop(i, None)
        return out


def all_entries(e: Any) -> dict[bytes, Entry]:
    """Every entry of an ``e`` field (either layout, or readdir's list of buckets), in name
    order."""
    if isinstance(e, bytes):
        return _unpack(e)
    merged: dict[bytes, Entry] = {}
    for blob in e.values() if isinstance(e, dict) else e:  # a state's map, readdir's list
        merged.update(_unpack(blob))
    return dict(sorted(merged.items()))


def is_empty(e: Any) -> bool:
    """Whether an ``e`` field (either layout) holds no entry, without unpacking buckets."""
    if isinstance(e, bytes):
        return not _unpack(e)
    return not e


def packed_size(e: Any) -> int:
    """Bytes the entries take (a directory's ``st_size``)."""
    if isinstance(e, bytes):
        return len(e)
    return sum(map(len, e.values()))  # every stat of a directory: 64 buckets, in C
