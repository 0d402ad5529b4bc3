"""The creates this mount answered and has not made: pending, failed for good, or moved onto
another client's file (write-behind, ``fs/writeback/creates.py``).

State only, no calls to the servers: the rules that add a create are
:class:`~bftfs.fs.writeback.creates.PendingCreates`', the gate that sends what a call must
follow is ``fs/callorder.py``, the sending ``creates_sending.py`` and ``creates_update.py``.
Each of them reads and changes the creates here, below them all, so none calls back up to the
part that made the create.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from bftfs.fs.caches import MetadataCache
from bftfs.fs.errors import FsError
from bftfs.fs.files import OpenFile
from bftfs.fs.writeback.creates_update import MOVED_LIMIT, PendingCreate

if TYPE_CHECKING:
    from bftfs.fs.writeback.held import HeldFiles
    from bftfs.fs.writeback.schedule import WriteBack
    from bftfs.fs.writeback.unlinks import PendingUnlinks


class HoldsBack(Protocol):
    """The other parts that hold work back with the creates (``Outbox`` in
    ``fs/writeback/outbox.py``; each None without directory write-back)."""

    @property
    def writeback(self) -> WriteBack | None:
        """Directory write-back (``fs/writeback/schedule.py``; None: every close sends)."""

    @property
    def unlinks(self) -> PendingUnlinks | None:
        """Removals held back with the creates (``fs/writeback/unlinks.py``), which calls
        follow too."""

    @property
    def held(self) -> HeldFiles | None:
        """The files this mount holds exclusively (``fs/writeback/held.py``): their
        buffered writes go before any call on them."""


class CreateTable:
    """The pending, failed and moved creates of one mount, and (``others``) the other
    parts that hold work back with them."""

    def __init__(self, cache: MetadataCache, others: HoldsBack) -> None:
        self.cache = cache
        self._others = others
        #: Directory id -> {name: pending create}.
        self._pending: dict[int, dict[bytes, PendingCreate]] = {}
        #: New object id -> its pending create.
        self._pending_oids: dict[int, PendingCreate] = {}
        #: Directory id -> {object id: pending create} of those that do not wait in
        #: directory write-back (an open file's, one being sent, one whose send failed):
        #: every call on the directory sends them first, and reads only them (with the
        #: creates it names), not the thousand that wait (issue 62; kept by
        #: :meth:`add`, :meth:`drop_pending` and :meth:`deferral`).
        self._undeferred: dict[int, dict[int, PendingCreate]] = {}
        #: Object id of a create that met an existing name -> the existing file's state
        #: (filled by ``CreateSender.collided``).
        self.moved_files: dict[int, OpenFile] = {}
        #: Object id -> why its create could not be made (its flush and close say so), and
        #: the create itself (forgotten at the file's last close).
        self._failed: dict[int, tuple[FsError, PendingCreate]] = {}
        # (The object ids of creates that failed for good, ``cache.unmade``, and the
        # directories' modes, ``cache.dir_modes``, are kept by the cache.)

    @property
    def writeback(self) -> WriteBack | None:
        """Directory write-back (:class:`HoldsBack`)."""
        return self._others.writeback

    @property
    def unlinks(self) -> PendingUnlinks | None:
        """Removals held back (:class:`HoldsBack`)."""
        return self._others.unlinks

    @property
    def held(self) -> HeldFiles | None:
        """Files held exclusively (:class:`HoldsBack`)."""
        return self._others.held

    def add(self, p: PendingCreate) -> None:
        """``p`` is pending now."""
        self._pending.setdefault(p.parent, {})[p.name] = p
        self._pending_oids[p.oid] = p
        self._undeferred.setdefault(p.parent, {})[p.oid] = p

    def deferral(self, p: PendingCreate, deferred: bool) -> None:
        """Pending ``p`` starts (``deferred``) or stops waiting in directory write-back
        (told by ``WriteBack``): it leaves or rejoins :meth:`undeferred_in`."""
        if deferred:
            self._drop_undeferred(p)
        elif self._pending_oids.get(p.oid) is p:
            self._undeferred.setdefault(p.parent, {})[p.oid] = p

    def _drop_undeferred(self, p: PendingCreate) -> None:
        in_dir = self._undeferred.get(p.parent)
        if in_dir is not None and in_dir.get(p.oid) is p:
            del in_dir[p.oid]
            if not in_dir:
                del self._undeferred[p.parent]

    def has_pending_in(self, parent: int) -> bool:
        """Whether directory ``parent`` has a pending create."""
        return parent in self._pending

    def named_in(self, parent: int, names: Iterable[bytes]) -> list[PendingCreate]:
        """The pending creates of ``names`` in directory ``parent`` (looked up by name)."""
        in_dir = self._pending.get(parent, {})
        return [in_dir[n] for n in names if n in in_dir]

    def undeferred_in(self, parent: int) -> list[PendingCreate]:
        """The pending creates of directory ``parent`` that do not wait in directory
        write-back (without it: all of them)."""
        return list(self._undeferred.get(parent, {}).values())

    def rename(self, p: PendingCreate, name: bytes) -> None:
        """Pending ``p`` is to be made under ``name`` instead (a rename in the mount)."""
        del self._pending[p.parent][p.name]
        p.name = name
        p.arg["name"] = name
        self._pending[p.parent][name] = p

    def named(self, parent: int, name: bytes) -> bool:
        """Whether a create of ``name`` in ``parent`` is pending."""
        return name in self._pending.get(parent, {})

    def pending_parents(self) -> list[int]:
        """The directories with pending creates (the unmount sends each one's)."""
        return list(self._pending)

    def pending_count(self) -> int:
        """How many creates are pending (the unmount's measure of what is left)."""
        return sum(len(names) for names in self._pending.values())

    def pending_in(self, parent: int) -> list[PendingCreate]:
        """The pending creates of directory ``parent``."""
        return list(self._pending.get(parent, {}).values())

    def pending_of(self, oid: int) -> PendingCreate | None:
        """``oid``'s pending create, if it was not sent yet."""
        return self._pending_oids.get(oid)

    def failure_of(self, oid: int) -> FsError | None:
        """Why ``oid``'s create could not be made, if it failed for good."""
        failed = self._failed.get(oid)
        return None if failed is None else failed[0]

    def moved_only(self, oid: int) -> bool:
        """Whether ``oid``'s create met another client's file and is no longer pending."""
        return oid in self.moved_files and oid not in self._pending_oids

    def fail(self, p: PendingCreate, e: FsError) -> None:
        """``p`` failed for good: its file's flush and close raise ``e``."""
        self._failed[p.oid] = (e, p)

    def moved(self, oid: int) -> bool:
        """Whether ``oid``'s create met another client's file under its name."""
        return oid in self.moved_files

    def holds_back_creates(self) -> bool:
        """Whether any create is pending, moved or failed (the gate's cheap test)."""
        return bool(self._pending_oids or self.moved_files or self.cache.unmade or self._failed)

    def is_pending(self, oid: int) -> bool:
        """Whether ``oid`` is a create this mount has not sent (or one whose name turned
        out taken)."""
        return oid in self._pending_oids or oid in self.moved_files

    def not_made(self, ino: int) -> bool:
        """Whether ``ino``'s create is pending or failed (a read sends it first)."""
        return ino in self._pending_oids or ino in self._failed

    def drop_pending(self, p: PendingCreate) -> None:
        """``p`` is no longer pending (made, or failed for good)."""
        if self.writeback is not None:
            self.writeback.sent(p.oid)
        names = self._pending.get(p.parent, {})
        if names.get(p.name) is p:
            del names[p.name]
            if not names:
                del self._pending[p.parent]
        self._pending_oids.pop(p.oid, None)
        self._drop_undeferred(p)

    def aliases_of(self, f: OpenFile) -> list[int]:
        """The object ids of creates whose writes moved to ``f`` (:meth:`CreateSender.collided`)."""
        return [oid for oid, g in self.moved_files.items() if g is f]

    def open_here(self, ino: int) -> bool:
        f = self.cache.files.get(ino)
        return f is not None and f.opens > 0

    def abandon(self, ino: int) -> None:
        """Forget a file whose create failed for good, with its data (never sent again),
        and make its inode answer ESTALE: the name the kernel cached for it leads nowhere,
        so the kernel looks it up again and finds what the servers hold - nothing, and
        ``open(O_CREAT)`` creates the name anew (it answered ENOENT), or another client's
        file."""
        _, p = self._failed.pop(ino)
        self.cache.files.pop(ino, None)
        self.cache.kernel_content.pop(ino, None)
        if self.cache.names.get(p.parent, {}).get(p.name, (None,))[0] == ino:
            self.cache.forget(p.parent, p.name)
        if len(self.cache.unmade) > MOVED_LIMIT:
            self.cache.unmade.clear()
        if ino not in self.moved_files:
            self.cache.unmade.add(ino)
