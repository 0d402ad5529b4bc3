"""The write-back wing: work this mount answered and sends to the servers later.

Other code imports from here (this is the wing's face); the file system builds it whole
with one :class:`Outbox` (``outbox.py``).  The map, one concept per module:

- ``outbox.py``: :class:`Outbox`, the whole outbox built in one call, and
  :class:`~bftfs.fs.writeback.outbox.HeldBack`, directory write-back's parts wired together;
- ``creates.py``: :class:`PendingCreates`, the rules of create write-behind (a create
  answered now, sent with the file's first flush or close);
- ``creates_table.py``: :class:`CreateTable`, the pending, failed and moved creates (state
  only);
- ``creates_sending.py``: :class:`CreateSends`, when pending creates go: once, together,
  again in the background;
- ``creates_update.py``: :class:`PendingCreate` and ``CreateSender``, the update that makes
  one create, and what a send finds when the name is taken;
- ``schedule.py``: :class:`WriteBack`, directory write-back's schedule: what is held back
  under an exclusive lease, when it is due, and the task that sends it (its bounds:
  :data:`MAX_FILE`, ...);
- ``unlinks.py``: :class:`PendingUnlinks`, removals held back;
- ``dirattrs.py``: ``DirAttrs``, a directory's own attributes held back (touches, a
  chmod, chown or utimens);
- ``mkdirs.py``: :class:`PendingMkdirs`, mkdirs held back;
- ``renames.py``: :class:`PendingRenames`, renames held back;
- ``once.py``: ``SendOnce``, one held-back change sent by one task, the others waiting;
- ``held.py``: :class:`HeldFiles`, files held exclusively: kept when closed, their writes
  sent later;
- ``links.py``: ``PendingLinks``, links to files whose create waits (git's objects);
- ``writemany.py``: ``write_inline_many``, small held files' writes in one update;
- ``flush_behind.py``: :func:`flush_behind`, a sequential writer's flush in the background.
"""

from bftfs.fs.writeback.creates import PendingCreates
from bftfs.fs.writeback.creates_sending import CreateSends
from bftfs.fs.writeback.creates_table import CreateTable
from bftfs.fs.writeback.creates_update import PendingCreate
from bftfs.fs.writeback.flush_behind import behind_done, flush_behind
from bftfs.fs.writeback.held import HeldFiles
from bftfs.fs.writeback.links import PendingLinks
from bftfs.fs.writeback.mkdirs import PendingMkdirs
from bftfs.fs.writeback.outbox import HeldBack, Outbox
from bftfs.fs.writeback.renames import PendingRenames
from bftfs.fs.writeback.schedule import MAX_FILE, WriteBack
from bftfs.fs.writeback.unlinks import PendingUnlinks, about_another_entry

__all__ = [
    "MAX_FILE",
    "CreateSends",
    "CreateTable",
    "HeldBack",
    "HeldFiles",
    "Outbox",
    "PendingCreate",
    "PendingCreates",
    "PendingLinks",
    "PendingMkdirs",
    "PendingRenames",
    "PendingUnlinks",
    "WriteBack",
    "about_another_entry",
    "behind_done",
    "flush_behind",
]
