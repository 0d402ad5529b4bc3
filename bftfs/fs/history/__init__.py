"""The file system's past (issues 17, 36, 39; ``docs/history.md``): versions of files and
directories, paths and contents as they were at a moment, read Byzantine-safely; the
read-only views of it a mount serves; planning and writing it back.

Code outside this package imports from here.  The modules, by job:

- ``versions.py``: what the past answers with (:class:`Version`, :class:`ObjectHistory`)
  and its errors (:class:`PastError`, :class:`Reclaimed`, :class:`NotThen`,
  :class:`Undecided`);
- ``changes.py``: what a user would say changed between two states (:func:`changes`);
- ``past.py``: :class:`Past`, history reads of a Q/U cluster: versions, states and paths
  at a moment, whole trees at several moments, snapshots;
- ``content.py``: a past version's bytes (its blocks as of its block Time);
- ``fab.py``: :class:`FabPast`, :class:`Past` over an ``engine = "fab"`` cluster's versions;
- ``view.py``: :class:`PastView`, the read-only tree at one moment (``mount --at``);
- ``snapshots.py``: :class:`SnapshotBrowser`, a live mount with ``/.snapshots`` in it;
- ``snapinodes.py``: the inode numbers of the snapshots' objects;
- ``plan.py``: pure planning over the past (changes in a range, undoing a client, a
  tree's size);
- ``restore.py``: :class:`TreeWriter`, a past tree written back through a ``FileSystem``.
"""

from bftfs.fs.history.changes import changes
from bftfs.fs.history.fab import FabPast
from bftfs.fs.history.past import Past, Progress
from bftfs.fs.history.plan import (
    Action,
    Change,
    RevertPlan,
    TreeSize,
    changes_in,
    plan_revert,
    tree_size,
)
from bftfs.fs.history.restore import Counts, TreeWriter
from bftfs.fs.history.snapinodes import SNAPDIR, InodeMap, is_live
from bftfs.fs.history.snapshots import PAST_FH, SNAPDIR_NAME, SnapshotBrowser
from bftfs.fs.history.versions import (
    NotThen,
    ObjectHistory,
    PastError,
    Reclaimed,
    Undecided,
    Version,
    present,
)
from bftfs.fs.history.view import PastView

__all__ = [
    "PAST_FH",
    "SNAPDIR",
    "SNAPDIR_NAME",
    "Action",
    "Change",
    "Counts",
    "FabPast",
    "InodeMap",
    "NotThen",
    "ObjectHistory",
    "Past",
    "PastError",
    "PastView",
    "Progress",
    "Reclaimed",
    "RevertPlan",
    "SnapshotBrowser",
    "TreeSize",
    "TreeWriter",
    "Undecided",
    "Version",
    "changes",
    "changes_in",
    "is_live",
    "plan_revert",
    "present",
    "tree_size",
]
