"""A stored Q/U version record: its fields, its bytes, and how it is read back (the blobs
of a split state, applied table or answer joined through the store's getter).

:mod:`bftfs.qu.schema` stores and deletes these records (and their blobs' counts); this
module is the record's format alone.  Keys of the stored map: ``k`` kind, ``s`` state,
``ap`` applied table, ``co`` conditioned-on LT, ``a`` answer, ``acc`` accepted, ``o``
objects, ``w`` the node's time of storing; ``sk``/``ak``/``nk`` say that the state, the
applied table, the answer is a skeleton of parts (``qu/blobs.py``; ``nk`` since store
format 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bftfs.qu import blobs
from bftfs.qu.canon import map_header, map_values, pack, unpack
from bftfs.qu.timestamp import Timestamp

#: The store's blob of a hash (None: not stored).
BlobOf = Callable[[bytes], bytes | None]


class SchemaError(Exception):
    """Stored Q/U data that does not parse: local corruption, never a peer's fault."""


@dataclass(frozen=True)
class Version:
    """One stored object version."""

    lt: Timestamp
    kind: str  # METHOD, COPY, BARRIER or SYNCED
    state: bytes | None  # canonical state; None for barriers and for "object absent"
    applied: bytes  # canonical applied table {client: [seq, answer]}
    lt_co: Timestamp | None  # None for SYNCED versions (not known locally)
    answer: Any
    accepted: bool
    objects: tuple[int, ...]
    #: This server's clock when it stored the version (0: not recorded; retention by age).
    stored_ns: int = 0

    def encode(
        self,
        skeleton: bytes | None = None,
        applied: bytes | None = None,
        packed_answer: bytes | None = None,
        answer: bytes | None = None,
    ) -> bytes:
        """The stored value; with ``skeleton`` (``applied``, ``answer``), the state (the
        applied table, the answer) is stored as that skeleton.  ``packed_answer``,
        ``pack(self.answer)``, is put in as it is: an update of many objects stores its
        one answer in each of their versions, packed once (the bytes are those ``pack``
        gives the whole record)."""
        record = {
            "k": self.kind,
            "s": self.state if skeleton is None else skeleton,
            "ap": self.applied if applied is None else applied,
            "co": self.lt_co.encode() if self.lt_co else None,
            "a": self.answer,
            "acc": self.accepted,
            "o": list(self.objects),
        }
        if self.stored_ns:
            record["w"] = self.stored_ns
        if skeleton is not None:
            record["sk"] = blobs.SPLIT_VERSION
        if applied is not None:
            record["ak"] = blobs.SPLIT_VERSION
        if answer is not None:
            record["a"] = answer
            record["nk"] = blobs.SPLIT_VERSION
        if packed_answer is None or answer is not None:
            return pack(record)
        return b"".join(
            [map_header(len(record))]
            + [pack(k) + (packed_answer if k == "a" else pack(v)) for k, v in record.items()]
        )

    @classmethod
    def decode(cls, lt: Timestamp, data: bytes, blob_of: BlobOf | None = None) -> Version:
        """Parse a stored value (``blob_of``: the store's blobs, for a split state).

        Raises:
            SchemaError: the value is not one :meth:`encode` wrote.
        """
        try:
            d = unpack(data)
            co = d["co"]
            state, applied = d["s"], d["ap"]
            if d.get("sk") or d.get("ak") or d.get("nk"):
                if blob_of is None:
                    raise SchemaError("a split state needs the store to join it")
                if d.get("sk"):
                    state = blobs.join(state, blob_of)
                if d.get("ak"):
                    applied = blobs.join(applied, blob_of)
            return cls(
                lt,
                d["k"],
                state,
                applied,
                Timestamp.decode(co) if co is not None else None,
                answer_of(d, blob_of),
                bool(d["acc"]),
                tuple(d["o"]),
                int(d.get("w", 0)),
            )
        except (KeyError, TypeError, ValueError, blobs.BlobError) as e:
            raise SchemaError(f"bad stored version: {e}") from e


def answer_of(d: dict, blob_of: BlobOf | None) -> Any:
    """The answer a parsed version record holds: stored as a skeleton (``"nk"``) when it
    was long enough to split (a batch's answer is the same in each of its objects'
    versions: its parts are stored once)."""
    if not d.get("nk"):
        return d["a"]
    if blob_of is None:
        raise SchemaError("a split answer needs the store to join it")
    return unpack(blobs.join(d["a"], blob_of))


#: What :func:`contents` reads of a stored version record.
_CONTENTS = ("k", "s", "ap", "sk", "ak")


def contents(raw: bytes, blob_of: BlobOf) -> tuple[str, bytes | None, bytes]:
    """``(kind, state, applied table)`` of a stored record, the rest of it not decoded.

    Raises:
        SchemaError: the record does not parse.
    """
    try:
        d = map_values(raw, _CONTENTS)
        state, applied = d["s"], d["ap"]
        if d.get("sk"):
            state = blobs.join(state, blob_of)
        if d.get("ak"):
            applied = blobs.join(applied, blob_of)
        return d["k"], state, applied
    except (KeyError, TypeError, ValueError, blobs.BlobError) as e:
        raise SchemaError(f"bad stored version: {e}") from e
