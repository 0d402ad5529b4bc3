"""The namespace: lookup, getattr, readdir, readlink, statfs, and the updates that create,
link, remove and rename names.

Each operation is one Q/U query or one single- or multi-object update (the docstring of
:mod:`bftfs.fs.filesystem`); the caches only name the objects of an update or start a
speculative query, and the servers re-check every entry.  Also here: the refusal of a
stale name (``check_reached``), which other parts use for calls that reach an object by
a name the kernel cached.
"""

from __future__ import annotations

import logging
import stat as st
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bftfs import fsobjects as obj
from bftfs.fs.attrs import Attr
from bftfs.fs.caches import MetadataCache
from bftfs.fs.clients import LEASE_NS, MAX_ATTEMPTS, IdTaken, Meta, OutOfDate
from bftfs.fs.errors import (
    Forgotten,
    FsError,
    IsDir,
    NotDir,
    NotFound,
    StaleView,
    check_name,
)
from bftfs.fs.reclaim import Reclaimer
from bftfs.fs.rename import Rename
from bftfs.fs.writeback import Outbox
from bftfs.fsobjects import ROOT
from bftfs.fsobjects.leases import INHERIT, LEASE_TIME, NEW_LEASE
from bftfs.qu.timestamp import MAX_OBJECTS

#: Seconds after a stale name was refused (ESTALE) during which a lookup counts as the
#: kernel's walk again, and the object it found may be used once by that name even if it
#: is removed meanwhile (``Names.check_reached``).
REVALIDATION_WINDOW = 0.1
#: Attribute queries (of up to 8 objects each) in flight at once for one readdir.
READDIR_CONCURRENCY = 16


def _listed_dir(ino: int) -> Attr:
    """A directory as a listing's ``.`` or ``..`` entry: its number and type are all the
    kernel reads of it there (``Names.listing_heads``)."""
    return Attr(ino, st.S_IFDIR, 2, 0, 0, 0, 0, 0, 0, 0, 4096, 0)


log = logging.getLogger(__name__)


async def _never(*_args: object) -> bool:
    """No rename is applied in the mount (no write-back)."""
    return False


class Names:
    """Names and the objects they lead to.  Given the protocol calls, the cache, and the
    reclaimer (a removed file's blocks are given back), and the outbox (``fs/writeback/``:
    what this mount holds back; None: nothing is)."""

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        reclaimer: Reclaimer,
        outbox: Outbox | None = None,
    ) -> None:
        #: The longest name (shorter in a sealed cluster: ``fs/clients/seal.py``).
        self.name_max = obj.NAME_MAX
        self.meta = meta
        self.cache = cache
        self.reclaimer = reclaimer
        self.config = meta.config
        self.inline = cache.inline
        self.lease_token = meta.lease_token
        #: Last ESTALE for a stale name (monotonic s), and objects a lookup found right
        #: after one, with until when (:meth:`check_reached`).
        self._refused_stale_at = -1e9
        #: The names of the creates this mount has not sent in a directory.
        self.pending_names: Callable[[int], list[bytes]] = (
            (lambda _ino: []) if outbox is None else outbox.pending_names
        )

        self._refused_names: set[tuple[int, bytes]] = set()
        self._revalidated: dict[int, float] = {}
        #: Applies a rename in the mount when it may be (``PendingCreates.rename_deferred``):
        #: whether it did.
        self.rename_here: Callable[[int, bytes, int, bytes, int], Awaitable[bool]] = (
            _never if outbox is None else outbox.creates.rename_deferred
        )
        #: Removals, mkdirs and renames left to directory write-back (None: none).
        self.unlinks = None if outbox is None else outbox.unlinks
        self.mkdirs = None if outbox is None else outbox.mkdirs
        self.renames = None if outbox is None else outbox.renames

    # Namespace: queries --------------------------------------------------------------------

    async def getattr(
        self, ino: int, *, reached_by_name: bool = False, within: float | None = None
    ) -> Attr:
        """Attributes of ``ino`` (buffered size/mtime for a file with dirty data): an open
        file's, those known fresh within their timeout (:meth:`attr_timeout`), else a query.

        ``reached_by_name``: the caller found ``ino`` through a name it cached (the kernel's
        path walk); if no name reaches it any more, the name was stale (:meth:`check_reached`).
        ``within``: cached attributes only if at most that many seconds old (a permission
        check that must not rest on a long regular-file timeout).
        """
        f = self.cache.files.get(ino)
        if f is not None and (f.opens or self._held_here(ino)):
            return self.cache.attr(ino, f.st)
        own = self._own_made_dir(ino)
        if own is not None:
            return self.cache.attr(ino, own)  # only this mount changed it (a copy's tree)
        s = await self.cache.stat(ino, within)
        if reached_by_name:  # (not open here: the kernel asks the same for an fstat)
            self.check_reached(ino, s)
        return self.cache.attr(ino, s)

    def _listed_as(self, parent: int, name: bytes, oid: int) -> bool:
        """Whether the leased listing of ``parent`` names ``oid`` for ``name``: the name
        alone is then answered in the mount (no round, nothing held back sent first)."""
        leases = self.meta.leases
        if leases is None or leases.exclusive_left(parent) <= 0:
            return False
        entry = leases.answers.listed_entry(parent, name)
        return entry is not None and entry[0] == oid

    def _held_here(self, ino: int) -> bool:
        """Whether this mount holds ``ino`` exclusively: its kept state is the file's
        (``fs/writeback/held.py``)."""
        leases = self.meta.leases
        return leases is not None and leases.exclusive_left(ino) > 0

    def check_reached(self, ino: int, s: dict[str, Any]) -> None:
        """Refuse an object that no name reaches (link count 0: unlinked, or a removed
        directory) when the caller came to it by a name: that name was cached and is stale
        (another client removed the object or replaced it).

        One exception: the kernel's walk again after such a refusal (fresh lookups,
        LOOKUP_REVAL) found this object by its name, and another client removed it in the
        moment between that lookup and this call.  The call then goes on, ordered before
        the removal (as a local file system orders an open that raced an unlink): answering
        ESTALE a second time would reach the application, since the kernel retries once
        (two clients creating and removing one journal name hit that about once in 50).

        Raises:
            StaleView: the kernel then walks the path again with fresh lookups and finds
                what the name is now (the replacing file of an atomic save, or nothing).
        """
        # The exception holds for the first use after the lookup only: a later call that
        # reaches the object by the then cached name is refused like any stale name.
        armed = self._revalidated.pop(ino, 0.0) if self._revalidated else 0.0
        if s["nl"] != 0:
            return
        now = time.monotonic()
        if armed > now:
            return
        self._refused_stale_at = now
        self._refused_names = {
            (parent, name)
            for parent, names in self.cache.names.items()
            for name, (oid, _) in names.items()
            if oid == ino
        }
        raise StaleView(f"object {ino} has no name any more")

    def used_after_lookup(self, ino: int) -> None:
        """The caller's first use of ``ino`` after the lookup that found it is this one,
        decided by the caller (an open's ``looked_up``): the lookup's exception of
        :meth:`check_reached` is spent, so a later call by the cached name is refused."""
        self._revalidated.pop(ino, None)

    async def lookup(self, parent: int, name: bytes) -> Attr:
        """The attributes of entry ``name`` of directory ``parent`` (``.``, ``..`` too);
        see :meth:`_lookup`.  A lookup of the refused name right after a stale name was
        refused is the kernel's walk again: the object it finds may be used once by that
        name even if it is removed meanwhile (:meth:`check_reached`).

        The directory and the object it names are read in two queries when the object is
        not cached; a removal in flight between them can show the entry still naming an
        object whose own version already says it has no name (link count 0).  That view
        is asked again, with backoff, until both agree: answering it would hand the kernel
        a dead object, which the next open refuses (ESTALE) - the kernel's own retry then
        met the same view and ESTALE reached applications (two clients on one name)."""
        a = await self._lookup(parent, name)
        for attempt in range(MAX_ATTEMPTS):
            if a.nlink != 0 or name in (b".", b".."):
                break
            await self.meta.back_off(attempt)
            self.cache.forget(parent, name)
            a = await self._lookup(parent, name)
        now = time.monotonic()
        if (
            now - self._refused_stale_at < REVALIDATION_WINDOW
            and (parent, name) in self._refused_names
        ):
            # Once per refusal: a later lookup of the name (another call's, the consistency
            # checker found one renaming over it) must not make a removed file usable.
            self._refused_names.discard((parent, name))
            self._revalidated[a.ino] = now + REVALIDATION_WINDOW
            if len(self._revalidated) > 64:  # expired ones
                self._revalidated = {k: v for k, v in self._revalidated.items() if v > now}
        return a

    async def _lookup(self, parent: int, name: bytes) -> Attr:
        """The attributes of entry ``name`` of directory ``parent`` (``.``, ``..`` too).

        One round when the entry's object is cached: a two-object query of the directory and
        the object it named (``fs.lookupstat``), or only the directory when that object's
        attributes are fresh here; else the directory, then the object.
        """
        if name == b".":
            return await self.getattr(parent)
        if self.unlinks is not None and self.unlinks.pending(parent, name) is not None:
            raise NotFound(f"{name!r} removed (written back later)")
        if name == b"..":
            p = await self.meta.query(parent, "fs.stat")
            if p["k"] != "d":
                raise NotDir()
            return await self.getattr(p["p"])
        check_name(name, self.name_max)
        guess = self.cache.names.get(parent, {}).get(name)
        if (
            guess is None
            or self.cache.fresh(guess[0]) is not None
            or (guess[0] in self.cache.files and self._held_here(guess[0]))
            or (guess[1] == obj.DIR_TYPE and self._made_and_held_here(guess[0]))
            or self._listed_as(parent, name, guess[0])
        ):  # the name alone (its answer often leased), then attributes known or fresh
            try:
                oid, code = await self.meta.query(parent, "fs.lookup", name)
            except NotFound:
                self.cache.forget(parent, name)
                raise
            self.cache.learn(parent, name, oid, code)
            return await self.getattr(oid)
        arg = {"p": parent, "o": guess[0], "name": name}
        try:
            got = await self.meta.query([parent, guess[0]], "fs.lookupstat", arg)
        except NotFound:
            self.cache.forget(parent, name)
            raise
        oid, code = got["e"]
        self.cache.learn(parent, name, oid, code)
        s = got["s"]
        if s is None:  # the entry names another object now
            return await self.getattr(oid)
        self.cache.observed(oid, s)
        if s["k"] == "d":
            self.cache.parents[oid] = s["p"]
        return self.cache.attr(oid, s)

    async def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        """Every entry with its attributes, sorted by name (no ``.``/``..``): one directory
        query, then the entries' attributes, up to 8 objects per query (``fs.statmany``).

        The objects of one query share a preferred quorum (object id mod ``n``), which is the
        case for every entry created in this directory (see :meth:`Meta.new_oid`); entries whose
        attributes are fresh here cost nothing.  ``ls -l`` of 500 names: 63 rounds, not 500.
        """
        local = self._local_entries(ino)
        if local is not None:
            ents = local
            assert self.meta.leases is not None
            self.meta.leases.stats["local_listings"] += 1
        else:
            d = await self.meta.query(ino, "fs.readdir")
            ents = obj.entries(d)
            self.cache.parents[ino] = d["p"]
            self.cache.names[ino] = {name: (oid, code) for name, (oid, code) in ents.items()}
        stats: dict[int, dict[str, Any] | None] = {}
        groups: dict[int, list[int]] = {}
        for oid, _ in ents.values():
            if oid in stats or oid in groups.get(oid % self.config.n, ()):
                continue
            fresh = self._known_stat(oid)
            if fresh is not None:
                stats[oid] = fresh
            else:
                groups.setdefault(oid % self.config.n, []).append(oid)
        limit = trio.Semaphore(READDIR_CONCURRENCY)

        async def some(oids: list[int]) -> None:
            async with limit:
                got = await self.meta.query(sorted(oids), "fs.statmany")
            for oid in oids:
                s = got.get(str(oid))
                stats[oid] = s
                if s is not None:
                    self.cache.observed(oid, s)
                if s is not None and s["k"] == "d":
                    self.cache.parents[oid] = s["p"]

        async def one(oid: int) -> None:
            async with limit:
                try:
                    s = await self.meta.query(oid, "fs.stat")
                except NotFound:
                    return
            stats[oid] = s
            self.cache.observed(oid, s)
            if s["k"] == "d":
                self.cache.parents[oid] = s["p"]

        async with trio.open_nursery() as n:
            for oids in groups.values():
                for i in range(0, len(oids), MAX_OBJECTS):
                    n.start_soon(some, oids[i : i + MAX_OBJECTS])
        # An object a several-object query found missing is asked alone before its entry
        # is left out: such an answer lacked objects made an instant before, which a query
        # of each found (issue 60 item 7: with a node just stopped, the last files a copy
        # made were missing from `diff -r` and from `rm -rf`'s listing).
        missing = {oid for oid, _ in ents.values() if oid in stats and stats[oid] is None}
        if missing:
            async with trio.open_nursery() as n:
                for oid in sorted(missing):
                    n.start_soon(one, oid)
            found = sum(1 for oid in missing if stats.get(oid) is not None)
            if found:
                log.info("listing of %d: %d objects found when asked alone", ino, found)
        # An entry whose object is gone raced with a removal: it is left out (and said in
        # the mount log: a listing that lacks a name the mount made is what a user reports).
        gone = [name for name, (oid, _) in ents.items() if stats.get(oid) is None]
        if gone:
            log.info(
                "listing of %d: %d entries left out, their objects gone: %r",
                ino,
                len(gone),
                gone[:4],
            )
        return [
            (name, self.cache.attr(oid, stats[oid]))  # type: ignore[arg-type]
            for name, (oid, _) in ents.items()
            if stats.get(oid) is not None
        ]

    def _local_entries(self, ino: int) -> dict[bytes, Any] | None:
        """Directory ``ino``'s entries without a round, when this mount holds a lease on
        it and knows its listing whole under it: nobody else changes the directory while
        the lease lives, so the listing, with the creates this mount has not sent yet
        (``pending_names``; its held-back removals left the listing already), is what the
        servers will hold.  None when a name's object is not in the cache (the round then
        answers)."""
        leases = self.meta.leases
        listed = None if leases is None else leases.listing(ino)
        if listed is None:
            return None
        known = self.cache.names.get(ino, {})
        out: dict[bytes, Any] = {}
        for name in listed | set(self.pending_names(ino)):
            entry = known.get(name)
            if entry is None:
                return None
            out[name] = entry
        return out

    def listing_heads(self, ino: int) -> tuple[Attr, Attr] | None:
        """``.`` and ``..`` of a directory whose listing is answered in the mount
        (:meth:`_local_entries`): the kernel takes only their inode numbers and types from
        a listing (readdirplus links no dentry for them), so their other attributes are
        not asked for: asking would send the creates held back in the directory, as a
        ``stat`` of it must (its times change with them).  The directory is leased here,
        so no other client removed it."""
        leases = self.meta.leases
        parent = ROOT if ino == ROOT else self.cache.parents.get(ino)
        if leases is None or parent is None or leases.listing(ino) is None:
            return None
        return _listed_dir(ino), _listed_dir(parent)

    def _known_stat(self, oid: int) -> dict[str, Any] | None:
        """Attributes of ``oid`` known without a round: an open or held file's, a create's
        this mount has not sent, or its own update's within their timeout."""
        f = self.cache.files.get(oid)
        if f is not None and (f.opens or self._held_here(oid)):
            return f.st
        local = self.cache.local_stat(oid)
        if local is not None:
            return local
        fresh = self.cache.fresh(oid)
        return fresh if fresh is not None else self._own_made_dir(oid)

    def _own_made_dir(self, oid: int) -> dict[str, Any] | None:
        """The attributes of directory ``oid`` its own updates answered, when it was made
        and is held here (:meth:`_made_and_held_here`): they are its attributes however
        old they are."""
        own = self.cache.own.get(oid)
        if own is not None and own[0]["k"] == "d" and self._made_and_held_here(oid):
            return own[0]
        return None

    def _made_and_held_here(self, oid: int) -> bool:
        """Whether ``oid`` came leased to this mount exclusively with its create and is
        held still.  For a directory, the attributes its own updates answered (and its
        held-back changes touched, ``Caches.own_touch``) are then the directory's however
        old they are, since only this mount changed it (one made by a copy, listed by its
        walk).  Not for a file: a removal of one of its names held back elsewhere changes
        its link count."""
        leases = self.meta.leases
        return leases is not None and leases.exclusive_from(oid) == float("-inf")

    async def readlink(self, ino: int) -> bytes:
        return await self.meta.query(ino, "fs.readlink")

    # Namespace: creating -------------------------------------------------------------------

    async def _make(self, parent: int, name: bytes, method: str, arg: dict[str, Any]) -> Attr:
        """create/mkdir/mknod/symlink: a two-object update with a fresh random object id."""
        check_name(name, self.name_max)
        for _ in range(MAX_ATTEMPTS):
            oid = self.meta.new_oid(near=parent)
            a = dict(arg, p=parent, o=oid, name=name, now=self.meta.now())
            try:
                child, pst = await self.meta.update([parent, oid], method, a)
            except IdTaken:
                continue
            except Forgotten:  # the id was used once and forgotten, or the directory was
                await self.meta.query(parent, "fs.stat")  # (then this answers ESTALE)
                continue
            except OutOfDate as e:  # only from a method that never says so: a bug
                raise FsError(str(e)) from None
            self.cache.own_stat(oid, child)
            self.cache.own_stat(parent, pst)
            self.cache.learn(parent, name, oid, st.S_IFMT(child["mode"]) >> 12)
            return self.cache.attr(oid, child)
        raise FsError("could not draw a free object id")

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        """A two-object update; the new directory comes leased to this mount exclusively,
        its listing known whole (empty): what is then made in it goes to write-back at
        once, and the lookups of the new names are answered "not found" here, with no
        lease or listing round.  In a directory this mount holds exclusively the lease is
        inherited (``fsobjects.leases.INHERIT``), and the mkdir itself waits in
        write-back when it may (:attr:`mkdirs`); elsewhere the lease is granted on its
        own (``NEW_LEASE``)."""
        arg: dict[str, Any] = {"mode": mode, "uid": uid, "gid": gid}
        leases = self.meta.leases
        if leases is None:
            return await self._make(parent, name, "fs.mkdir", arg)
        if leases.exclusive_left(parent) > 0:
            if self.mkdirs is not None:  # answered here, sent later (fs/writeback/mkdirs.py)
                check_name(name, self.name_max)
                answered = self.mkdirs.defer(parent, name, mode, uid, gid)
                if answered is not None:
                    return answered
            made = await self._make(parent, name, "fs.mkdir", {**arg, INHERIT: 1})
            leases.inherit(parent, [made.ino], empty_dirs=True)
            return made
        # Elsewhere the new directory is leased to this mount on its own, for a lease's
        # term from before it was asked (a copy's top directory: its tree is made, listed
        # and stat'ed here without a round).
        term = leases.new_lease_term(parent)
        if term is None:
            return await self._make(parent, name, "fs.mkdir", arg)
        asked, lt = trio.current_time(), self.meta.wall_ns()
        made = await self._make(parent, name, "fs.mkdir", {**arg, NEW_LEASE: term, LEASE_TIME: lt})
        leases.made_leased(made.ino, parent, asked, lt)
        return made

    async def mknod(
        self,
        parent: int,
        name: bytes,
        mode: int,
        rdev: int,
        uid: int,
        gid: int,
        *,
        lease: bool = False,
    ) -> Attr:
        if st.S_IFMT(mode) == 0:
            mode |= st.S_IFREG
        if st.S_IFMT(mode) == st.S_IFDIR:
            return await self.mkdir(parent, name, mode, uid, gid)
        arg: dict[str, Any] = {"mode": mode, "uid": uid, "gid": gid, "rdev": rdev}
        if st.S_ISREG(mode):
            arg.update(d=self.meta.new_oid(), alloc=self.meta.initial_reserve())
            if self.inline:
                arg["i"] = b""
            if lease:
                arg.update(tok=self.lease_token, lease=LEASE_NS)
        return await self._make(parent, name, "fs.create", arg)

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        arg = {"mode": st.S_IFLNK | 0o777, "uid": uid, "gid": gid, "t": target}
        return await self._make(parent, name, "fs.create", arg)

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        check_name(new_name, self.name_max)
        f, pst = await self.meta.update(
            [ino, new_parent],
            "fs.link",
            {"p": new_parent, "o": ino, "name": new_name, "now": self.meta.now()},
        )
        self.cache.own_stat(ino, f)
        self.cache.own_stat(new_parent, pst)
        self.cache.learn(new_parent, new_name, ino, st.S_IFMT(f["mode"]) >> 12)
        return self.cache.attr(ino, f)

    # Namespace: removing and renaming ------------------------------------------------------

    async def _remove(self, parent: int, name: bytes, method: str) -> None:
        check_name(name, self.name_max)
        if method == "fs.unlink" and self.unlinks is not None:
            known = self.cache.names.get(parent, {}).get(name)
            if known is not None and self.unlinks.defer(parent, name, *known):
                return  # written back later (fs/writeback/unlinks.py)
        fresh = False
        for _ in range(MAX_ATTEMPTS):
            oid, code = await self.cache.entry(parent, name, fresh)
            if method == "fs.unlink" and code == obj.DIR_TYPE:
                raise IsDir()
            if method == "fs.rmdir" and code != obj.DIR_TYPE:
                raise NotDir()
            try:
                child, pst = await self.meta.update(
                    [parent, oid],
                    method,
                    {"p": parent, "o": oid, "name": name, "now": self.meta.now()},
                )
            except (OutOfDate, NotFound) as e:
                self.cache.forget(parent)
                if isinstance(e, NotFound) and fresh:
                    raise
                fresh = True  # our cached entry may have been wrong: ask the servers
                continue
            self.cache.forget(parent, name)
            self.cache.own_stat(oid, child)
            self.cache.own_stat(parent, pst)
            if child["k"] == "d":
                self.cache.names.pop(oid, None)
            else:
                await self.reclaimer.unlinked(oid, child)
            return
        raise FsError(f"{method}: directory kept changing")

    async def rename(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        """rename(2) (``fs/rename.py``): names this mount checks the length of.  A file
        whose create still waits in write-back is renamed in the mount when it may be
        (:attr:`rename_here`): the create then goes under its new name; a file the
        servers hold, renamed within a directory held here, too (:attr:`renames`)."""
        check_name(new_name, self.name_max)
        if await self.rename_here(parent, name, new_parent, new_name, flags):
            return
        if self.renames is not None and self.renames.defer(
            parent, name, new_parent, new_name, flags
        ):
            return  # written back later (fs/writeback/renames.py)
        await Rename(self.meta, self.cache, self.reclaimer, self.name_max).run(
            parent, name, new_parent, new_name, flags
        )

    async def unlink(self, parent: int, name: bytes) -> None:
        await self._remove(parent, name, "fs.unlink")

    async def rmdir(self, parent: int, name: bytes) -> None:
        await self._remove(parent, name, "fs.rmdir")
