"""The answers this mount's leases keep good (issue 33): a query's answer, kept while the
leases on all of its objects live, answers the same query again without a round.

:class:`LeasedAnswers` knows nothing of leases' terms: :class:`bftfs.fs.leases.Leases`
decides whether the objects are leased and asks it for the answer.  It keeps the answers
filed under each query's first object, an index from each object to the answers it is
part of (so an update drops what it touches in proportion to that, not to all that is
kept), a generation per object (a query in flight across an update is not kept) and, per
directory, the listing known whole under the lease: a lookup of any other name is a miss,
and a lookup of a listed name whose object the listing or the mount's own update named is
answered from it.  It also keeps, per object, the names of its extended attributes as an
answer kept under the lease tells them (a stat's ``nx == 0``: none; an ``fs.listxattr``:
those), so a ``getxattr`` of any other name is answered "no such attribute" without a
round (``ls -l`` asks every file for ``security.selinux``: issue 62).
"""

from __future__ import annotations

import copy
import functools
import logging
import stat as st
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bftfs.fsobjects import DIR_TYPE, RENAME_EXCHANGE, entries
from bftfs.qu.canon import canonical
from bftfs.qu.objects import MethodRefused

log = logging.getLogger(__name__)

#: Most answers kept per object (a directory's lookups); past it the oldest half goes.
#: As many as the closed files a mount keeps (``fs/writeback/held.py``, ``MAX_KEPT``).
MAX_ANSWERS = 16384
#: Most entries this mount made kept per directory (a name, its object and type: about
#: 150 bytes); past it the oldest half goes (cleared whole at 4 096 before, every name
#: of a big directory made here was then looked up at the servers again).
MAX_MADE = 65536

#: Entry updates that make their name exist, and those that remove it (a refusal says the
#: same: a create refused ``exists`` found the name, an unlink refused ``not-found`` did not).
_MAKES_NAME = frozenset(
    {"fs.create", "fs.createwrite", "fs.createmany", "fs.mkdir", "fs.mkdirmany", "fs.link"}
)
_REMOVES_NAME = frozenset({"fs.unlink", "fs.unlinkmany", "fs.rmdir"})

#: Refusals that say who holds what now, not what the object is: never kept.
_PASSING = frozenset({"leased", "busy", "recalled"})

#: Queries whose answer is one object's stat (``fsobjects.stat_of``, with its ``nx``).
_STAT_OF_ONE = frozenset({"fs.stat", "fs.open"})


def xattr_names_told(oids: Sequence[int], method: str, answer: Any) -> dict[int, frozenset[bytes]]:
    """The objects whose extended attributes' names a query's answer tells whole: one
    whose stat (a stat, an open, a listing's ``fs.statmany``, a ``fs.lookupstat``) says it
    has none (``nx == 0``), or an ``fs.listxattr``'s.  Anything malformed tells nothing."""
    stats: list[tuple[int, Any]] = []
    if method in _STAT_OF_ONE and len(oids) == 1:
        stats = [(oids[0], answer)]
    elif method == "fs.statmany" and isinstance(answer, dict):
        stats = [(o, answer.get(str(o))) for o in oids]
    elif method == "fs.lookupstat" and len(oids) == 2 and isinstance(answer, dict):
        stats = [(oids[1], answer.get("s"))]
    elif method == "fs.listxattr" and len(oids) == 1 and isinstance(answer, list):
        names = [n for n in answer if isinstance(n, bytes)]
        return {oids[0]: frozenset(names)} if len(names) == len(answer) else {}
    return {o: frozenset() for o, s in stats if isinstance(s, dict) and s.get("nx") == 0}


def looked_up_name(method: str, arg: Any) -> bytes | None:
    """The entry name a lookup of a directory asks for (None for any other query)."""
    if method == "fs.lookup" and isinstance(arg, bytes):
        return arg
    if method == "fs.lookupstat" and isinstance(arg, dict) and isinstance(arg.get("name"), bytes):
        return arg["name"]
    return None


def made_entries(method: str, arg: Any) -> dict[bytes, list[int]]:
    """The entries an update that makes names makes, from its argument: name -> [object
    id, type code] (a link's type is not in it: left out, as is anything malformed)."""
    if not isinstance(arg, dict):
        return {}
    if method == "fs.rename":  # (same directory: ``Meta._entry_of``) there, object not said
        names = (arg.get("sn"), arg.get("dn")) if arg.get("flags", 0) & RENAME_EXCHANGE else ()
        return {n: [] for n in (*names, arg.get("dn")) if isinstance(n, bytes)}
    if method in ("fs.createmany", "fs.mkdirmany"):
        items = arg.get("files")
    elif method in ("fs.create", "fs.createwrite", "fs.mkdir"):
        items = [arg]
    else:
        return {}
    out: dict[bytes, list[int]] = {}
    for f in items if isinstance(items, list) else []:
        if not isinstance(f, dict):
            continue
        name, oid, mode = f.get("name"), f.get("o"), f.get("mode")
        if isinstance(name, bytes) and isinstance(oid, int) and isinstance(mode, int):
            made_dir = method in ("fs.mkdir", "fs.mkdirmany")
            out[name] = [oid, DIR_TYPE if made_dir else st.S_IFMT(mode) >> 12]
    return out


def is_refusal(answer: Any) -> bool:
    """Whether ``answer`` is a refusal (kept as it was raised, not copied)."""
    return isinstance(answer, MethodRefused)


def passing(answer: Any) -> bool:
    """Whether ``answer`` says who holds what now rather than what the object is."""
    return is_refusal(answer) and answer.code in _PASSING


def _key(oids: Sequence[int], method: str, arg: Any) -> bytes | None:
    try:
        return canonical([list(oids), method, arg])
    except Exception:  # noqa: BLE001 - an argument that has no canonical form is not cached
        return None


class LeasedAnswers:
    """Answers to queries, listings and generations of the objects (module docstring)."""

    def __init__(self) -> None:
        #: Kept answers, filed under the query's first object: key -> (objects, answer,
        #: the entry name a lookup asked for, or None).
        self._answers: dict[int, dict[bytes, tuple[list[int], Any, bytes | None]]] = {}
        #: Object -> the kept answers it is one of the objects of: (first object, key).
        self._involving: dict[int, set[tuple[int, bytes]]] = {}
        self._generation: Counter[int] = Counter()
        #: Leased directories whose every name this mount knows (a listing answered under
        #: the lease, kept up to date with its own entry updates): a lookup of any other
        #: name is answered "not found" without a round (a create's lookup first), and one
        #: of a listed name by its [object id, type code] when known (None: not known).
        self.listings: dict[int, dict[bytes, list[int] | None]] = {}
        #: Leased directories whose listing is not known whole: the entries this mount's
        #: own updates made there under the lease (name -> [object id, type code]).  Nobody
        #: else changes the directory while the lease lives, so a lookup of such a name is
        #: answered from it (``cp -a``, ``tar x`` and ``copytree`` chmod each directory
        #: they made, and the kernel then looks its name up again: a round apiece).
        self.made: dict[int, dict[bytes, list[int]]] = {}
        #: Directories whose listing is being read (:meth:`read_listing`).
        self._reading: set[int] = set()
        #: Leased objects -> the names of their extended attributes, as an answer kept
        #: under the lease told them whole (:func:`xattr_names_told`).
        self.xattrs: dict[int, frozenset[bytes]] = {}

    def read_listing(
        self,
        oid: int,
        query: Callable[[int, str, Any], Awaitable[Any]],
        spawn: Callable[[Callable[[], Awaitable[None]]], Any],
    ) -> None:
        """Read directory ``oid``'s listing in the background (``query``: the ungated
        query of the file system, whose answer comes back through ``Leases.answered``),
        unless it is known or being read.  The mount creates there: each create's lookup
        of its new name is then answered "not found" from it, and the listing itself in
        the mount.  A read that one of the mount's updates of the directory crossed is not
        kept; the caller asks again."""
        if oid in self.listings or oid in self._reading:
            return
        self._reading.add(oid)
        spawn(functools.partial(self._read_listing, oid, query))

    async def _read_listing(
        self, oid: int, query: Callable[[int, str, Any], Awaitable[Any]]
    ) -> None:
        try:
            await query(oid, "fs.readdir", None)
        except Exception as e:  # noqa: BLE001 - an optimisation: lookups ask the servers
            log.debug("listing of %d not read: %s", oid, e)
        finally:
            self._reading.discard(oid)

    def get(self, oids: Sequence[int], method: str, arg: Any) -> tuple[bool, Any]:
        """``(True, answer)`` for a query answered before (a copy, or the refusal anew)."""
        key = _key(oids, method, arg)
        got = None if key is None else self._answers.get(oids[0], {}).get(key)
        if got is None:
            return False, None
        answer = got[1]
        if is_refusal(answer):
            return True, MethodRefused(answer.code, answer.message)
        return True, copy.deepcopy(answer)

    def listed_miss(self, parent: int, name: bytes | None) -> bool:
        """Whether ``name`` is missing from ``parent``'s listing known whole here."""
        if name is None:
            return False
        names = self.listings.get(parent)
        return names is not None and name not in names

    def listed_entry(self, parent: int, name: bytes | None) -> list[int] | None:
        """``name``'s [object id, type code] in ``parent``'s listing known whole here, if
        the listing knows its object, or, with no listing known, as this mount made it
        (:attr:`made`)."""
        if name is None:
            return None
        names = self.listings.get(parent)
        got = self.made.get(parent, {}).get(name) if names is None else names.get(name)
        return None if got is None else list(got)

    def generations(self, oids: Sequence[int]) -> list[int]:
        """The objects' generations: an answer is kept only if none moved meanwhile."""
        return [self._generation[o] for o in oids]

    def keep(self, oids: Sequence[int], method: str, arg: Any, answer: Any) -> None:
        """Keep a query's answer (and a directory's listing, from its ``fs.readdir``)."""
        key = _key(oids, method, arg)
        if key is not None:
            self._keep(oids, key, answer, looked_up_name(method, arg))
        if not is_refusal(answer):
            self.xattrs.update(xattr_names_told(oids, method, answer))
        if method == "fs.readdir" and len(oids) == 1 and not is_refusal(answer):
            self.listings[oids[0]] = {n: list(e) for n, e in entries(answer).items()}

    def changed(self, oids: Sequence[int], parent: int | None, names: frozenset[bytes]) -> None:
        """``Leases.changed``: drop what the mount's update of ``oids`` makes stale."""
        for o in oids:
            entries_only = o == parent  # (no names: only the directory's times changed)
            if not entries_only:
                self.listings.pop(o, None)  # not entries: the names may have changed
                self.made.pop(o, None)
                self.xattrs.pop(o, None)  # (an entry update changes no extended attribute)
            else:
                self._unmade(o, names)
            self._generation[o] += 1
            self._forget(o, but_names_other_than=names if entries_only else None)

    def entry_done(
        self,
        method: str,
        parent: int,
        names: frozenset[bytes],
        outcome: str,
        made: dict[bytes, list[int]] | None = None,
        *,
        leased_before: bool = False,
    ) -> None:
        """``Leases.entry_done``: a known listing follows the mount's entry update
        (``made``: the entries a taken one made, :func:`made_entries`); without one, the
        entries it made are kept in :attr:`made` when the lease on ``parent`` was granted
        before the update was sent (``leased_before``)."""
        self._unmade(parent, names)
        listing = self.listings.get(parent)
        if listing is None:
            if leased_before and outcome == "taken" and method in _MAKES_NAME:
                self._keep_made(parent, {n: e for n, e in (made or {}).items() if n in names})
            return
        if outcome == "unknown":
            del self.listings[parent]
        elif method in _MAKES_NAME:
            for name in names:
                if outcome == "taken":  # the name leads to the new object (if named)
                    listing[name] = (made or {}).get(name)
                else:  # refused ``exists``: there, leading to what it led to
                    listing.setdefault(name, None)
        elif method in _REMOVES_NAME and outcome == "taken":
            for name in names:
                listing.pop(name, None)
        elif method == "fs.rename" and outcome == "taken":  # within the directory
            for name in names:  # the destination (both, exchanged) is there; the source not
                if name in (made or {}):
                    listing[name] = (made or {})[name] or None
                else:
                    listing.pop(name, None)

    def _unmade(self, parent: int, names: frozenset[bytes]) -> None:
        """The entries ``names`` of ``parent`` are being changed: not known any more."""
        own = self.made.get(parent)
        if own is None:
            return
        for name in names:
            own.pop(name, None)
        if not own:
            del self.made[parent]

    def _keep_made(self, parent: int, made: dict[bytes, list[int]]) -> None:
        """Keep the entries (with their object) an update made in ``parent``."""
        made = {n: list(e) for n, e in made.items() if len(e) == 2}
        if not made:
            return
        own = self.made.setdefault(parent, {})
        if len(own) + len(made) > MAX_MADE:  # (a lookup of one forgotten asks the servers)
            for name in list(own)[: max(MAX_MADE // 2, len(made))]:
                del own[name]
        own.update(made)

    def drop(self, oid: int) -> None:
        """The lease on ``oid`` ended: nothing kept of it answers any more."""
        self.listings.pop(oid, None)
        self.made.pop(oid, None)
        self.xattrs.pop(oid, None)
        self._generation[oid] += 1
        self._forget(oid)

    def _keep(self, oids: Sequence[int], key: bytes, answer: Any, name: bytes | None) -> None:
        first = oids[0]
        kept = self._answers.setdefault(first, {})
        if len(kept) >= MAX_ANSWERS:
            for k in list(kept)[: MAX_ANSWERS // 2]:
                self._discard(first, k)
            kept = self._answers.setdefault(first, {})
        kept[key] = (list(oids), answer if is_refusal(answer) else copy.deepcopy(answer), name)
        for o in oids:
            self._involving.setdefault(o, set()).add((first, key))

    def _discard(self, first: int, key: bytes) -> None:
        """Drop one kept answer and its entries in the index."""
        kept = self._answers.get(first)
        entry = None if kept is None else kept.pop(key, None)
        if entry is None:
            return
        if not kept:
            del self._answers[first]
        for o in entry[0]:
            refs = self._involving.get(o)
            if refs is not None:
                refs.discard((first, key))
                if not refs:
                    del self._involving[o]

    def _forget(self, oid: int, but_names_other_than: frozenset[bytes] | None = None) -> None:
        """Drop the kept answers ``oid`` is one of the objects of; with
        ``but_names_other_than``, keep the lookups of ``oid``'s other entry names."""
        for first, key in list(self._involving.get(oid, ())):
            entry = self._answers.get(first, {}).get(key)
            if entry is None:
                continue
            name = entry[2]
            if (
                but_names_other_than is not None
                and name is not None
                and name not in but_names_other_than
                and first == oid
            ):
                continue
            self._discard(first, key)
