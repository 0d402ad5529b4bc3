"""The namespace: lookup, getattr, readdir, readlink, statfs, and the updates that create,
link, remove and rename names.

Each operation is one Q/U query or one single- or multi-object update (the docstring of
:mod:`bftfs.fs.filesystem`); the caches only name the objects of an update or start a
speculative query, and the servers re-check every entry.  Its parts: the listings
(``names/listing.py``), the refusal of a stale name (``names/stale.py``, which other parts
use through :meth:`Names.check_reached` for calls that reach an object by a name the
kernel cached) and one rename (``names/rename.py``).
"""

from __future__ import annotations

import stat as st
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bftfs import fsobjects as obj
from bftfs.fs.caches import MetadataCache
from bftfs.fs.clients import LEASE_NS, MAX_ATTEMPTS, IdTaken, Meta, OutOfDate
from bftfs.fs.errors import (
    Forgotten,
    FsError,
    IsDir,
    NotDir,
    NotFound,
    check_name,
)
from bftfs.fs.files import Attr, initial_reserve
from bftfs.fs.files.reclaim import Reclaimer
from bftfs.fs.names.held import held_here, made_and_held_here, own_made_dir, own_unseen_file
from bftfs.fs.names.listing import Listing
from bftfs.fs.names.rename import Rename
from bftfs.fs.names.stale import StaleNames
from bftfs.fs.writeback import Outbox
from bftfs.fsobjects.leases import INHERIT, LEASE_TIME, NEW_LEASE


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
        #: Stale names refused (:meth:`check_reached`), and the kernel's walk again.
        self.stale = StaleNames(cache)
        #: The names of the creates this mount has not sent in a directory.
        self.pending_names: Callable[[int], list[bytes]] = (
            (lambda _ino: []) if outbox is None else outbox.pending_names
        )
        self.listing = Listing(meta, cache, lambda ino: self.pending_names(ino))
        #: Applies a rename in the mount when it may be (``PendingCreates.rename_deferred``):
        #: whether it did.
        self.rename_here: Callable[[int, bytes, int, bytes, int], Awaitable[bool]] = (
            _never if outbox is None else outbox.creates.rename_deferred
        )
        #: The attributes of a file a name leads to in this mount only (its create waits
        #: in write-back: ``Outbox.held_back_entry``), else None.
        self.held_back_entry: Callable[[int, bytes, int], dict[str, Any] | None] = (
            (lambda _p, _n, _o: None) if outbox is None else outbox.held_back_entry
        )
        #: Removals, mkdirs and renames left to directory write-back (None: none).
        self.unlinks = None if outbox is None else outbox.unlinks
        self.mkdirs = None if outbox is None else outbox.mkdirs
        self.renames = None if outbox is None else outbox.renames
        self.links = None if outbox is None else outbox.links
        #: Cancels an rmdir with its held-back mkdir (``HeldBack.rmdir_here``): whether it did.
        self.rmdir_here: Callable[[int, bytes], bool] = (
            (lambda _p, _n: False)
            if outbox is None or outbox.back is None
            else outbox.back.rmdir_here
        )

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
        if self.links is not None:
            await self.links.before_stat(ino)  # (a link held back: its link count)
        f = self.cache.files.get(ino)
        if f is not None and (f.opens or held_here(self.meta.leases, ino)):
            if reached_by_name and not f.opens:  # (an open file's fstat comes here too)
                self.check_reached(ino, f.st)
            return self.cache.attr(ino, f.st)
        own = own_made_dir(self.cache, self.meta.leases, ino)
        if own is not None:
            return self.cache.attr(ino, own)  # only this mount changed it (a copy's tree)
        own = own_unseen_file(self.cache, self.meta.leases, ino)
        if own is not None:  # made here, seen by no other client: its own update's
            if reached_by_name:
                self.check_reached(ino, own)
            return self.cache.attr(ino, own)
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
        self.stale.looked_up(parent, name, a.ino)
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
        if guess is not None:
            held_back = self.held_back_entry(parent, name, guess[0])
            if held_back is not None:  # only this mount knows the name yet: no round
                return self.cache.attr(guess[0], held_back)
        leases = self.meta.leases
        if (
            guess is None
            or self.cache.fresh(guess[0]) is not None
            or (guess[0] in self.cache.files and held_here(leases, guess[0]))
            or (leases is not None and leases.unseen.directory_of(guess[0]) == parent)
            or (guess[1] == obj.DIR_TYPE and made_and_held_here(self.meta.leases, guess[0]))
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
        """Every entry with its attributes, sorted by name (:meth:`Listing.readdir`)."""
        return await self.listing.readdir(ino)

    def held_names(self, ino: int) -> list[tuple[bytes, int, int]] | None:
        """The entries without a round, or None (:meth:`Listing.held_names`)."""
        return self.listing.held_names(ino)

    def known_attr(self, ino: int) -> Attr | None:
        """Attributes without a round, or None (:meth:`Listing.known_attr`)."""
        return self.listing.known_attr(ino)

    def listing_heads(self, ino: int) -> tuple[Attr, Attr] | None:
        """``.`` and ``..`` of a directory listed in the mount (:meth:`Listing.listing_heads`)."""
        return self.listing.listing_heads(ino)

    def check_reached(self, ino: int, s: dict[str, Any]) -> None:
        """Refuse an object no name reaches, reached by a cached name
        (:meth:`StaleNames.check_reached`)."""
        self.stale.check_reached(ino, s)

    def used_after_lookup(self, ino: int) -> None:
        """The lookup's exception for ``ino`` is spent (:meth:`StaleNames.used_after_lookup`)."""
        self.stale.used_after_lookup(ino)

    async def readlink(self, ino: int) -> bytes:
        return await self.meta.query(ino, "fs.readlink")

    # Namespace: creating -------------------------------------------------------------------

    async def _make(self, parent: int, name: bytes, method: str, arg: dict[str, Any]) -> Attr:
        """create/mkdir/mknod/symlink: a two-object update with a fresh random object id.

        ``oid-exists`` (:class:`IdTaken`) is a clash of the drawn id, or this update's own
        earlier send: a send refused by more than b nodes (a new directory's lease time
        ``behind`` their clocks, ``Meta._with_fresh_lease_time``) that others applied is
        completed by the next send's repair, which then finds the id taken.  The entry
        naming the drawn id tells the two apart (:meth:`_made_before`): then it was made,
        and is answered so; else another id is drawn."""
        check_name(name, self.name_max)
        for _ in range(MAX_ATTEMPTS):
            spread = name if method == "fs.mkdir" and INHERIT not in arg else None  # issue 66
            oid = self.meta.new_oid(near=parent, spread=spread)
            a = dict(arg, p=parent, o=oid, name=name, now=self.meta.now())
            try:
                child, pst = await self.meta.update([parent, oid], method, a)
            except IdTaken:
                made = await self._made_before(parent, name, oid)
                if made is None:
                    continue  # a real clash: another id
                child, pst = made
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

    async def _made_before(
        self, parent: int, name: bytes, oid: int
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The new object's and the parent's attributes when entry ``name`` of ``parent``
        names ``oid``: an earlier send of this update made it (ids are this mount's 63-bit
        random draws, so no other update names one); None when it does not."""
        arg = {"p": parent, "o": oid, "name": name}
        try:
            got = await self.meta.query([parent, oid], "fs.lookupstat", arg)
        except NotFound:
            return None
        if got["e"][0] != oid or got["s"] is None:
            return None
        return got["s"], await self.meta.query(parent, "fs.stat")

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
            arg.update(d=self.meta.new_oid(), alloc=initial_reserve(self.meta.bs))
            if self.inline:
                arg["i"] = b""
            if lease:
                arg.update(tok=self.lease_token, lease=LEASE_NS)
        return await self._make(parent, name, "fs.create", arg)

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        arg = {"mode": st.S_IFLNK | 0o777, "uid": uid, "gid": gid, "t": target}
        return await self._make(parent, name, "fs.create", arg)

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        """One two-object update (``fs.link``), or none for a file whose create waits in
        write-back, linked within its directory (``fs/writeback/links.py``: git's objects)."""
        check_name(new_name, self.name_max)
        if self.links is not None:
            held = self.links.defer(ino, new_parent, new_name)
            if held is not None:
                return self.cache.attr(ino, held)
        if self.meta.leases is not None:  # named elsewhere: others may reach it there
            self.meta.leases.unseen.seen([ino])
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
        if method == "fs.unlink" and self.links is not None:
            if self.links.unlinked(parent, name):
                return  # a link held back, never sent (fs/writeback/links.py)
            await self.links.send_for(parent, name)  # the file's other name goes first
        if method == "fs.rmdir" and self.rmdir_here(parent, name):
            return  # made and removed in the mount, never sent (fs/writeback/outbox.py)
        if method == "fs.unlink" and self.unlinks is not None:
            known = self.cache.names.get(parent, {}).get(name)
            if known is not None:
                await self.unlinks.room()  # (at the bound: the held-back ones go first)
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
                self.cache.forget(oid)
            else:
                await self.reclaimer.unlinked(oid, child)
            return
        raise FsError(f"{method}: directory kept changing")

    async def rename(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        """rename(2) (``fs/names/rename.py``): names this mount checks the length of.  A file
        whose create still waits in write-back is renamed in the mount when it may be
        (:attr:`rename_here`): the create then goes under its new name; a file the
        servers hold, renamed within a directory held here, too (:attr:`renames`)."""
        check_name(new_name, self.name_max)
        if self.links is not None:  # a rename of, or over, a name a held link names
            await self.links.send_for(parent, name)
            await self.links.send_for(new_parent, new_name)
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
