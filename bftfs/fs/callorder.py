"""The gate before every call to the servers (``calls.CallGate``): what a call must follow
goes first, so whatever this mount does is seen by the servers in the order it did it.

Four kinds of work are held back in the mount, each by its own part, and this gate asks
each in turn before a gated query or update on ``objects``:

0. the mkdirs and renames held back (``fs/writeback/mkdirs.py``, ``fs/writeback/renames.py``): of a
   directory or moved object among the objects, and those in one of them that the call
   is not merely about another entry of;
1. the buffered writes of the files held exclusively here (``fs/writeback/held.py``) named
   by the call;
2. the removals held back in a directory (``fs/writeback/unlinks.py``) the call is about,
   then the directory's own attributes held back (``fs/writeback/dirattrs.py``), unless
   the call is about one of its entries;
3. the pending creates (``fs/writeback/creates_table.py``): those of a directory among the objects,
   and a pending file among them.  A call about another entry of a directory whose
   creates wait for write-back commutes with them (only this mount sees the directory,
   by its exclusive lease), so they stay deferred, and are not even read: such a call
   looks up the creates it names (by name and object) and reads those that do not wait
   (``CreateTable.undeferred_in``), not every create held back there (issue 62: each
   lookup, create and removal read up to 1 024 of them, quadratic in ``rm -rf`` and in
   the loop that made the files).

A create whose last send failed for want of a quorum is not sent again ahead of calls on
its directory that name neither its file nor its name until its
:attr:`~bftfs.fs.writeback.PendingCreate.resend_at` (issue 31, item 11: one such create
was re-sent ahead of every call on the directory for minutes, each waiting out its
patience and failing; its flush and close said EIO already, and the directory does not
hold the name meanwhile, so no call about another name depends on it).
"""

from __future__ import annotations

from typing import Any

import trio

from bftfs.fs.errors import StaleView
from bftfs.fs.leases.publish import FOR_FIRST_LOOK
from bftfs.fs.writeback import (
    CreateSends,
    CreateTable,
    HeldBack,
    PendingCreate,
    PendingLinks,
    PendingMkdirs,
    PendingRenames,
    about_another_entry,
)
from bftfs.fs.writeback.dirattrs import DirAttrs
from bftfs.fs.writeback.unlinks import entry_call


class CallOrder:
    """``calls.CallGate`` over the parts that hold work back (module docstring): the creates
    (``creates``, sent through ``sends``), and the held files and removals found with them
    (``creates.held``, ``creates.unlinks``).  The file system gives it to ``Meta`` as its
    gate (``Meta.gate``): ``Meta`` knows only the interface it declares, and this part,
    above it, calls down from there."""

    def __init__(
        self,
        creates: CreateTable,
        sends: CreateSends,
        held: HeldBack | None = None,
    ) -> None:
        """``held``: directory write-back's parts (None: off, nothing but creates waits)."""
        self.creates = creates
        self.sends = sends
        self.cache = creates.cache
        #: Mkdirs held back (``fs/writeback/mkdirs.py``; None: none): first, since what is
        #: made in a directory follows its mkdir.
        self.mkdirs: PendingMkdirs | None = None if held is None else held.mkdirs
        #: Renames held back (``fs/writeback/renames.py``; None: none): next, since a
        #: create, removal or mkdir of a name they moved follows them.
        self.renames: PendingRenames | None = None if held is None else held.renames
        #: Links to files whose create waits (``fs/writeback/links.py``; None: none): each
        #: sends its create first.
        self.links: PendingLinks | None = None if held is None else held.links
        #: Directories' own attributes held back (``fs/writeback/dirattrs.py``; None:
        #: none): after the removals, each sends what is held back in its directory first.
        self.dir_attrs: DirAttrs | None = None if held is None else held.dir_attrs
        #: Pending creates the gate read, in all (:meth:`_creates_to_read`): the work it
        #: costs per call, which must not grow with the creates held back (issue 62).
        self.examined = 0

    def holds_back(self) -> bool:
        """Whether anything may have to go first (asked before every call)."""
        unlinks, held = self.creates.unlinks, self.creates.held
        return (
            (self.mkdirs is not None and self.mkdirs.holds_back())
            or (self.renames is not None and self.renames.holds_back())
            or (self.links is not None and self.links.holds_back())
            or self.creates.holds_back_creates()
            or (unlinks is not None and unlinks.holds_back())
            or (held is not None and held.holds_back())
            or (self.dir_attrs is not None and self.dir_attrs.holds_back())
        )

    async def before_call(self, objects: list[int], method: str, arg: Any) -> None:
        """Send what call ``method`` on ``objects`` with argument ``arg`` must follow."""
        names = _names_in(method, arg)
        unlinks, held = self.creates.unlinks, self.creates.held
        if self.mkdirs is not None and self.mkdirs.holds_back():
            await self.mkdirs.before(objects, names, method, arg)
        if self.renames is not None and self.renames.holds_back():
            await self.renames.before(objects, names, method, arg)
        if self.links is not None and self.links.holds_back():
            await self.links.before(objects, names, method, arg)
        if held is not None and held.holds_back():
            await held.before(objects, method)
        if unlinks is not None and unlinks.holds_back():
            await unlinks.before(objects, names, method, arg)
        if self.dir_attrs is not None and self.dir_attrs.holds_back():
            await self.dir_attrs.before(objects, method, arg)
        await self._creates_before(objects, names, method, arg)

    async def _creates_before(
        self, objects: list[int], names: set[bytes], method: str, arg: Any
    ) -> None:
        """Send the pending creates a call on ``objects`` (about ``names`` in them) must
        follow: those of a directory among them, and a pending file among them."""
        creates = self.creates
        writeback = creates.writeback
        for oid in objects:
            if creates.moved_only(oid):
                raise StaleView(f"object {oid} was never made: its name was taken")
            p = creates.pending_of(oid)
            if p is not None:
                await self.sends.send_one(p)
            failed = creates.failure_of(oid)
            if failed is not None:  # open here: its calls say why
                raise failed
            if oid in self.cache.unmade:  # reached by a name the kernel cached: look again
                raise StaleView(f"object {oid} was never made: its create failed")
            deferred = []
            for p in self._creates_to_read(oid, objects, names, method, arg):
                if p.oid in objects or p.name in names:
                    await self.sends.send_one(p)
                elif self._about_another_entry(p, objects, method, arg):
                    continue  # written back later: a call about another name needs it not
                elif writeback is not None and writeback.deferred(p.oid):
                    deferred.append(p)  # sent together below (a recall's release, a listing)
                elif trio.current_time() >= p.resend_at:
                    await self.sends.send(p)
            if deferred:  # (a reader's first look: those left a while go without the lease)
                left = method == "fs.publish" and FOR_FIRST_LOOK.get()
                await self.sends.send_deferred(deferred, hand_over_left=left)

    def _creates_to_read(
        self, parent: int, objects: list[int], names: set[bytes], method: str, arg: Any
    ) -> list[PendingCreate]:
        """The pending creates of directory ``parent`` a call on ``objects`` (about
        ``names``) may have to send first.  A lookup or update of one entry (or a query of
        the directory's extended attributes) leaves every create that waits in write-back
        and that it does not name (:meth:`_about_another_entry`): only those it names
        (looked up by name and object) and those that do not wait are read.  Any other call
        reads them all (and sends them: it follows each).  Issue 62: every lookup, create
        and removal in a directory read each of its up to 1 024 held-back creates."""
        creates = self.creates
        if not creates.has_pending_in(parent):
            return []
        ok, entry = entry_call(parent, objects, method, arg)
        if not ok or creates.writeback is None:
            found = creates.pending_in(parent)
        else:
            wanted = names if entry is None else names | {entry}
            found = creates.named_in(parent, wanted)
            for o in objects:
                p = creates.pending_of(o)
                if p is not None and p.parent == parent:
                    found.append(p)
            found += creates.undeferred_in(parent)
            found = list(dict.fromkeys(found))
        self.examined += len(found)
        return found

    def _about_another_entry(
        self, p: PendingCreate, objects: list[int], method: str, arg: Any
    ) -> bool:
        """Whether a call is about one entry of ``p``'s directory other than ``p``'s (a
        lookup, create, unlink or mkdir of another name) while ``p`` waits for write-back
        or write-back is sending it (``WriteBack.writing_back``): such calls commute with
        ``p``'s create, so ``p`` stays deferred, or the call does not wait for its update
        (an update of the directory still follows it: one update per object at a time)."""
        writeback = self.creates.writeback
        if writeback is None or not (writeback.deferred(p.oid) or writeback.writing_back(p.oid)):
            return False
        return about_another_entry(p.parent, p.name, objects, method, arg)


def _names_in(method: str, arg: Any) -> set[bytes]:
    """The entry names a file-system method's argument is about (``fs.lookup``'s name,
    ``name``, a rename's ``sn`` and ``dn``); an extended attribute's name is none."""
    if method in ("fs.getxattr", "fs.setxattr", "fs.removexattr"):
        return set()
    if isinstance(arg, bytes):
        return {arg}
    if isinstance(arg, dict):
        return {v for k in ("name", "sn", "dn") if isinstance(v := arg.get(k), bytes)}
    return set()
