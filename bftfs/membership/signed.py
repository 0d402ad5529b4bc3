"""Administrator-signed, numbered documents: the envelope, its check and their ordering,
one implementation for every such document (views, ``membership/view.py``; layouts,
``bftfs/layout/``; docs/membership.md, docs/layout.md).

A document is believed because the administrator signed it, whoever delivers it; a party
takes one only if its number is above the one it holds (:func:`judge`).  Envelope, msgpack::

    signed    = [MAGIC, format, body: bin, signature: bin(64)]
    signature = Ed25519(admin, DOMAINS[format] || body)

Each document type has its own magic string and signing domains, so a signature over one
type (or one format) is never one over another.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from bftfs.config.model import ConfigError
from bftfs.crypto import AdminKey, signature_ok


@dataclass(frozen=True)
class Kind:
    """One type of signed document: its magic, its signing domain per format, its size
    bound (a peer's blob is parsed before its signature is checked) and the word messages
    name it by."""

    magic: str
    domains: Mapping[int, bytes]
    max_bytes: int
    what: str
    error: type[ConfigError]


def seal(kind: Kind, fmt: int, body: bytes, key: AdminKey) -> bytes:
    """``body`` (canonical bytes of format ``fmt``) signed by the administrator."""
    signature = key.sign(kind.domains[fmt] + body)
    return msgpack.packb([kind.magic, fmt, body, signature], use_bin_type=True)


def unseal(kind: Kind, blob: Any, admin_public: bytes) -> tuple[int, bytes]:
    """The format and body of ``blob`` if the administrator whose key is ``admin_public``
    signed it (the body is not parsed: the caller's codec does).

    Raises:
        kind.error: not bytes, too big, malformed, an unknown format, a bad signature.
    """
    what, err = kind.what, kind.error
    if not isinstance(blob, bytes):
        raise err(f"a signed {what} is bytes")
    if len(blob) > kind.max_bytes:
        raise err(f"signed {what} of {len(blob)} bytes (at most {kind.max_bytes})")
    outer = unpack(kind, blob)
    if not isinstance(outer, list) or len(outer) != 4 or outer[0] != kind.magic:
        raise err(f"not a signed {what}")
    fmt = outer[1]
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt not in kind.domains:
        raise err(
            f"signed {what} format {fmt!r}, this version reads "
            f"{min(kind.domains)} to {max(kind.domains)}"
        )
    body, signature = outer[2], outer[3]
    if not isinstance(body, bytes) or not isinstance(signature, bytes):
        raise err(f"signed {what}: body and signature must be bytes")
    if not signature_ok(admin_public, kind.domains[fmt] + body, signature):
        raise err(f"the {what} is not signed by this cluster's administrator key")
    return fmt, body


def unpack(kind: Kind, data: bytes) -> Any:
    """msgpack ``data``, any garbage one ``kind.error``."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise kind.error(f"malformed {kind.what} ({type(e).__name__})") from None


class Verdict(enum.Enum):
    """What a party holding one document makes of another, validly signed, one."""

    NEWER = "newer"  # take it
    SAME = "same"  # already held (a resent or forwarded copy): acknowledge
    OLDER = "older"  # a replay of an ended one, or a party behind: refuse
    CONFLICT = "conflict"  # another document with the held number: the admin key was misused


def judge(held: tuple[int, bytes], offered: tuple[int, bytes]) -> Verdict:
    """How a party holding the document numbered ``held[0]`` with body ``held[1]`` treats
    ``offered`` (both validly signed)."""
    if offered[0] > held[0]:
        return Verdict.NEWER
    if offered[0] < held[0]:
        return Verdict.OLDER
    return Verdict.SAME if offered[1] == held[1] else Verdict.CONFLICT
