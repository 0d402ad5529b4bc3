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
