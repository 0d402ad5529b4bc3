"""What this client caches of the servers' state, and the reads that go through it.

Directory entries and parents name the objects of an update; attributes this client's own
updates produced answer ``getattr`` for ``attr_ttl``; an open file's attributes are fresh by
close-to-open.  Longer caching is what leases give (``fs/leases.py``; NFS's ``acregmin``/
``acregmax``, once mount options here, were folded into them).  Why each is safe is the
subject of the docstring of :mod:`bftfs.fs.filesystem`.  The methods here keep the caches'
rules in one place: an own update's stat yields to a newer one the servers answer
(``observed``), the name cache is bounded, and an open file with buffered writes answers
its buffered size and times (``_attr``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from bftfs.fs.clients import Meta
from bftfs.fs.files import Attr, OpenFile, attr_from_stat, file_block_size

#: Cached directory entries in all (the cache is cleared when it grows past this).
NAME_CACHE_LIMIT = 200_000
#: Attributes of objects this mount's own updates answered (``MetadataCache.own``) kept at
#: most; past it the quarter stored first goes, files first.  Each is a stat (about 1 KiB):
#: a mount that made millions of files over its life kept every one.  One forgotten costs
#: a ``stat`` round where it would have answered alone (a file or directory held here).
OWN_LIMIT = 100_000


def content_version(s: dict[str, Any]) -> tuple[int, int]:
    """``(data id, version counter)`` of a file's stat: one content (every update of the
    file raises the counter)."""
    return (s.get("d", 0), s["v"])


#: The stat keys of ``fs.setattr``'s time arguments (the others are named alike).
_STAT_KEYS = {"atime": "at", "mtime": "mt"}


def with_attrs(s: dict[str, Any], attrs: dict[str, int]) -> dict[str, Any]:
    """Stat ``s`` with attributes a ``setattr`` held back here over it (``attrs`` by
    ``fs.setattr``'s argument names: ``mode``'s permission bits, ``uid``, ``gid``,
    ``atime``, ``mtime``), as the servers will have it once it is sent: a held file's
    (``OpenFile.attrs``) or a directory's (:class:`HeldAttrs`)."""
    s = dict(s)
    for key, value in attrs.items():
        if key == "mode":
            s["mode"] = (s["mode"] & ~0o7777) | (value & 0o7777)
        else:
            s[_STAT_KEYS.get(key, key)] = value
    return s


@dataclass
class HeldAttrs:
    """A directory's ``setattr`` answered here and held back (``fs/writeback/dirattrs.py``)."""

    #: By ``fs.setattr``'s argument names (:func:`with_attrs`).
    attrs: dict[str, int]
    #: Its time (ns, ``Meta.now``): the directory's ctime once it is sent.
    now: int


class MetadataCache:
    """The attribute, name and parent caches, the open files, and the reads that consult
    them.  Given the protocol calls (:class:`~bftfs.fs.clients.calls.Meta`) for its reads; every
    other part is given this cache."""

    def __init__(self, meta: Meta, *, attr_ttl: float, inline: int) -> None:
        self.meta = meta
        self.clock_ns: Callable[[], int] = meta.clock_ns
        self.attr_ttl = attr_ttl
        self.bs = meta.bs
        #: Regular files up to this size keep their content in the attribute object.
        self.inline = inline
        #: Directory id -> {name: (object id, type code)} (partial; see
        #: :mod:`bftfs.fs.filesystem`).
        self.names: dict[int, dict[bytes, tuple[int, int]]] = {}
        #: Directories whose ``names`` came whole from a listing (and lost only the names
        #: removed here since): how many entries they hold is known (:meth:`entries_left`).
        self.listed: set[int] = set()
        self.parents: dict[int, int] = {}
        #: Object id -> (stat produced by our own update, trio time it arrived).
        self.own: dict[int, tuple[dict[str, Any], float]] = {}
        #: The files this client holds state for (open, or with writes still buffered).
        self.files: dict[int, OpenFile] = {}
        #: File id -> (data id, version counter) of the content the kernel may hold pages
        #: of (:meth:`bftfs.fs.handles.Handles.keep_cache`).
        self.kernel_content: dict[int, tuple[int, int]] = {}
        #: Directory id -> (mode, gid) as last seen: a new file's group and mode follow
        #: them (write-behind, :mod:`bftfs.fs.writeback.creates`).
        self.dir_modes: dict[int, tuple[int, int]] = {}
        #: Objects whose create failed for good (:mod:`bftfs.fs.writeback.creates`): their
        #: inode answers ESTALE until a name is found to lead to one after all.
        self.unmade: set[int] = set()
        #: Object id -> trio time the servers last answered that it has no extended
        #: attributes (a stat's ``nx == 0``): ``getxattr`` is answered from it for
        #: ``attr_ttl``, as the kernel answers ``stat`` from the attributes it keeps
        #: (:meth:`no_xattrs_seen`).
        self.no_xattrs: dict[int, float] = {}
        #: Objects whose extended attributes this mount changed: an answer to a query
        #: sent before the change may arrive after it, so none of theirs is kept (and
        #: past :data:`OWN_LIMIT` of them, none at all).
        self.xattrs_changed: set[int] | None = set()
        #: The attributes of an object only this mount knows yet (a create left to
        #: directory write-back, a held-back mkdir: ``Outbox.local_stat``), else None.
        self.local_stat: Callable[[int], dict[str, Any] | None] = lambda _oid: None
        #: The links a directory gains from mkdirs in it this mount answered and has not
        #: sent (``Outbox.links_in``): an update of the directory answers the
        #: servers' count, without them.
        self.pending_links: Callable[[int], int] = lambda _oid: 0
        #: Directory id -> the ``setattr`` of it answered here and held back
        #: (``fs/writeback/dirattrs.py``): every answer about the directory shows it
        #: (:meth:`attr`) until it is sent.
        self.held_dir_attrs: dict[int, HeldAttrs] = {}

    def kernel_saw(self, ino: int, s: dict[str, Any]) -> bool:
        """Record that the kernel's pages of ``ino`` are of version ``s`` (an open's answer);
        True if they already were (:meth:`bftfs.fs.handles.Handles.keep_cache`)."""
        return self.kernel_saw_at(ino, content_version(s))

    def kernel_saw_at(self, ino: int, now: tuple[int, int]) -> bool:
        """:meth:`kernel_saw` by ``(data id, version counter)``: an open this mount answers
        alone names the content by the file's ``OpenFile.base``, which follows its own
        sends as the record does (its kept stat may be older than what it sent)."""
        if len(self.kernel_content) > NAME_CACHE_LIMIT:
            self.kernel_content.clear()  # forgetting only costs re-reads
        before = self.kernel_content.get(ino)
        self.kernel_content[ino] = now
        return before == now

    def drop_refused_writes(self, f: OpenFile) -> None:
        """Forget ``f``'s buffered writes, which the servers refused for space or quota
        (ENOSPC, EDQUOT) and its close reported: the file is what the servers stored.  Kept,
        they made the next open of the file flush them first and fail with EDQUOT again,
        showed this mount a size no other mount saw, and would have been stored behind the
        program's back by the first open after space came back.  The kernel's pages hold
        them too: the next open drops those (no content version is recorded for it)."""
        if self.files.get(f.ino) is f:
            del self.files[f.ino]
        self.kernel_content.pop(f.ino, None)

    def known_for(self, oid: int) -> float | None:
        """Seconds the cached attributes of ``oid`` (own update or servers' answer) stay
        fresh from now, or None when there are none or they are stale."""
        own = self.own.get(oid)
        if own is None:
            return None
        left = self.attr_ttl - (trio.current_time() - own[1])
        return left if left > 0 else None

    def forget_own(self, oids: list[int]) -> None:
        """Drop the attributes kept of ``oids`` (a lease on them begins: only what was read
        under it may be kept as long as it runs)."""
        for oid in oids:
            self.own.pop(oid, None)

    def own_touch(self, oid: int, now: int) -> None:
        """A change of directory ``oid``'s entries this mount holds back (a create or
        removal left to write-back) moves its times to ``now`` in the attributes its own
        last update answered, for as long as they answer (they are the servers' once it
        is sent; a ``stat`` must not show the times from before it, nor send it)."""
        kept = self.own.get(oid)
        if kept is not None:
            s = dict(kept[0])
            s["mt"], s["ct"] = max(s["mt"], now), max(s["ct"], now)
            self.own[oid] = (s, kept[1])
        self._entries_changed(oid, now)

    def _entries_changed(self, oid: int, now: int) -> None:
        """Directory ``oid``'s entries changed at ``now``: an mtime held back from a
        ``setattr`` before then no longer holds (the change moved it on, as it does on the
        servers, where the change may arrive first)."""
        held = self.held_dir_attrs.get(oid)
        if held is not None and now >= held.now:
            held.attrs.pop("mtime", None)

    def own_stat(self, oid: int, s: dict[str, Any]) -> None:
        if s["k"] == "d":
            self._entries_changed(oid, s["ct"])
            links = self.pending_links(oid)
            if links:
                s = dict(s, nl=s["nl"] + links)
        if len(self.own) >= OWN_LIMIT and oid not in self.own:
            self._shed_own()
        self.own[oid] = (s, trio.current_time())
        if s["k"] == "d":
            self.parents[oid] = s["p"]
        f = self.files.get(oid)
        if f is not None and s["k"] == "f":
            f.reset(s, own=True)
        self._dir_mode(oid, s)

    def _shed_own(self) -> None:
        """Forget the quarter of :attr:`own` stored first, files before directories (a
        directory's entry also carries the times its held-back changes gave it)."""
        files = (k for k, (st_, _) in self.own.items() if st_["k"] != "d")
        gone = list(itertools.islice(files, OWN_LIMIT // 4))
        gone += itertools.islice(self.own, OWN_LIMIT // 4 - len(gone))
        for oid in gone:
            self.own.pop(oid, None)

    def _dir_mode(self, oid: int, s: dict[str, Any]) -> None:
        if s["k"] == "d":
            if len(self.dir_modes) > NAME_CACHE_LIMIT:
                self.dir_modes.clear()  # forgetting costs one synchronous create each
            self.dir_modes[oid] = (s["mode"], s["gid"])

    def learn(self, parent: int, name: bytes, oid: int, code: int) -> None:
        names = self.names.get(parent)
        if names is None:
            if sum(len(v) for v in self.names.values()) > NAME_CACHE_LIMIT:
                self.names.clear()
                self.listed.clear()
            names = self.names[parent] = {}
        names[name] = (oid, code)
        # A name found to lead to ``oid`` makes it usable again, should an abandoned
        # create's object exist after all.
        if self.unmade:
            self.unmade.discard(oid)

    def forget(self, parent: int, name: bytes | None = None) -> None:
        if name is None:
            self.names.pop(parent, None)
            self.listed.discard(parent)
        else:
            self.names.get(parent, {}).pop(name, None)

    def listed_whole(self, parent: int, names: dict[bytes, tuple[int, int]]) -> None:
        """``names`` is directory ``parent``'s whole listing, as the servers answered it."""
        self.names[parent] = names
        self.listed.add(parent)

    def listed_names(self, parent: int) -> dict[bytes, tuple[int, int]] | None:
        """Directory ``parent``'s entries (name -> object id, type code) in the order its
        listing was read, when it was read whole (then only the names removed here left
        it; another client's changes since are not counted), else None."""
        return self.names.get(parent) if parent in self.listed else None

    def entries_left(self, parent: int) -> int | None:
        """How many entries directory ``parent`` holds, when its listing was read whole
        (:meth:`listed_names`: an estimate, for deciding whether a lease pays), else None."""
        names = self.listed_names(parent)
        return None if names is None else len(names)

    def attr(self, oid: int, s: dict[str, Any]) -> Attr:
        f = self.files.get(oid)
        if f is not None and s["k"] == "f" and (f.buffered or f.opens):
            s = dict(f.st, size=f.size)
            if f.dirty and s.get("al") is not None:  # buffered data will be stored too
                s["al"] += sum(len(b) for b in f.dirty.values())
                s["inl"] = f.size <= self.inline
            if f.mtime is not None:
                s["mt"] = f.mtime
            s = with_attrs(s, f.attrs)
        held = self.held_dir_attrs.get(oid) if s["k"] == "d" else None
        if held is not None:
            s = with_attrs(s, held.attrs)
            s["ct"] = max(s["ct"], held.now)
        return attr_from_stat(oid, s, file_block_size(s, self.bs))

    def observed(self, oid: int, s: dict[str, Any]) -> None:
        """The servers answered ``s`` for ``oid`` (a stat, lookup, listing or open).

        Attributes our own update produced earlier are no longer the freshest, so they stop
        answering ``getattr`` and ``lookup`` (a lookup of another name for the object, after
        another client changed it, answered our older size, and the kernel cut its pages to
        it).  Only our own updates' attributes are answered so: an open invalidates the
        kernel's attributes when they changed, and the stat after it asks the servers
        (``t4_two_clients``: a chmod elsewhere shows at once then)."""
        own = self.own.get(oid)
        if own is not None and s["v"] > own[0]["v"]:
            del self.own[oid]
        self._dir_mode(oid, s)
        changed = self.xattrs_changed
        if s.get("nx") == 0 and changed is not None and oid not in changed:
            if len(self.no_xattrs) >= OWN_LIMIT:
                self.no_xattrs.clear()  # forgetting costs a query per getxattr
            self.no_xattrs[oid] = trio.current_time()
        else:
            self.no_xattrs.pop(oid, None)

    def no_xattrs_seen(self, oid: int) -> bool:
        """Whether the servers said within ``attr_ttl`` that ``oid`` has no extended
        attributes.  ``ls -l`` of a directory another client filled asks each entry for
        ``security.selinux`` right after the listing's stats: a query apiece before (19 ms
        an entry of a first ``ls -lR`` on a busy machine).  Another client's ``setxattr``
        shows within ``attr_ttl``, as its ``chmod`` does in ``stat``."""
        seen = self.no_xattrs.get(oid)
        return seen is not None and trio.current_time() - seen < self.attr_ttl

    def xattrs_changed_here(self, oid: int) -> None:
        """This mount changed (or may have changed) ``oid``'s extended attributes."""
        self.no_xattrs.pop(oid, None)
        changed = self.xattrs_changed
        if changed is not None:
            changed.add(oid)
            if len(changed) > OWN_LIMIT:
                self.xattrs_changed = None
                self.no_xattrs.clear()

    def fresh(self, oid: int) -> dict[str, Any] | None:
        """Attributes known fresh without a query: an open file's (close-to-open) or those
        our own update produced within ``attr_ttl``; else None."""
        f = self.files.get(oid)
        if f is not None and f.opens:
            return f.st
        if self.known_for(oid) is not None:
            return self.own[oid][0]
        return None

    async def stat(self, oid: int, within: float | None = None) -> dict[str, Any]:
        """Fresh attributes of ``oid`` (a query), unless known fresh within their timeout
        (``within``: at most that many seconds old, whatever their timeout); those of an
        object no server holds yet (:attr:`local_stat`) always."""
        local = self.local_stat(oid)
        if local is not None:
            return local
        own = self.own.get(oid)
        if (
            own is not None
            and self.known_for(oid) is not None
            and (within is None or trio.current_time() - own[1] < within)
        ):
            return own[0]
        s = await self.meta.query(oid, "fs.stat")
        self.observed(oid, s)
        if s["k"] == "d":
            self.parents[oid] = s["p"]
        return s

    async def entry(self, parent: int, name: bytes, fresh: bool = False) -> tuple[int, int]:
        """(object id, type code) of ``name`` in ``parent``: the cache, else a query."""
        got = None if fresh else self.names.get(parent, {}).get(name)
        if got is not None:
            return got
        oid, code = await self.meta.query(parent, "fs.lookup", name)
        self.learn(parent, name, oid, code)
        return oid, code
