"""What this mount holds exclusively: an object's state kept here is then the object's
(``fs/writeback/held.py``), and a directory made here and held still changed only here."""

from __future__ import annotations

from typing import Any

from bftfs.fs.caches import MetadataCache
from bftfs.fs.leases import Leases


def held_here(leases: Leases | None, ino: int) -> bool:
    """Whether this mount holds ``ino`` exclusively, or by the shared lease that continued
    its exclusive one (``Leases.to_session``): its kept state is the file's
    (``fs/writeback/held.py``)."""
    return leases is not None and leases.kept_left(ino) > 0


def made_and_held_here(leases: Leases | None, oid: int) -> bool:
    """Whether ``oid`` came leased to this mount exclusively with its create and is
    held still.  For a directory, the attributes its own updates answered (and its
    held-back changes touched, ``Caches.own_touch``) are then the directory's however
    old they are, since only this mount changed it (one made by a copy, listed by its
    walk).  Not for a file: a removal of one of its names held back elsewhere changes
    its link count."""
    return leases is not None and leases.exclusive_from(oid) == float("-inf")


def own_made_dir(cache: MetadataCache, leases: Leases | None, oid: int) -> dict[str, Any] | None:
    """The attributes of directory ``oid`` its own updates answered, when it was made
    and is held here (:func:`made_and_held_here`): they are its attributes however
    old they are."""
    own = cache.own.get(oid)
    if own is not None and own[0]["k"] == "d" and made_and_held_here(leases, oid):
        return own[0]
    return None


def own_unseen_file(cache: MetadataCache, leases: Leases | None, oid: int) -> dict[str, Any] | None:
    """The attributes of regular file ``oid`` its own updates answered (its create, its
    writes), while no other client can have seen the file (``leases/unseen.py``: made here
    under its directory's exclusive lease, held without a break since) and it has one
    name: nobody else can have changed it, so they are its attributes however old they
    are, with no lease on the file itself (past ``MAX_KEPT`` closed files the mount keeps
    no more of it than this, and a lookup of it cost an ``fs.stat`` round; issue 62)."""
    own = cache.own.get(oid)
    if leases is None or own is None or own[0]["k"] != "f" or own[0].get("nl") != 1:
        return None
    return own[0] if leases.unseen.directory_of(oid) is not None else None
