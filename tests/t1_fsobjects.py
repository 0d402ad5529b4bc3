"""Tier 1: the shape of :mod:`bftfs.fsobjects`, the file system's replicated state machine.

The methods themselves are tested through their callers (``t1_fs_entries``,
``t1_fs_fileblocks``, the ``t3_fs_*`` tiers); here, what a reorganisation of the package
could break without any of those noticing at once: the wire names of the methods (kept in
histories) and the package's exports.
"""

from __future__ import annotations

import pkgutil

import bftfs.fsobjects as fsobjects
from bftfs.fsobjects.state import new_dir
from bftfs.qu.objects import Class

Q, U = Class.QUERY, Class.UPDATE
CLOCKS = ("now", "bt")

#: Every method of the ``fs`` type: wire name, class, fewest and most objects (what a node
#: accepts: ``MAX_OBJECTS``; a client names at most its cluster's ``max_objects``), clock keys.
#: The names are wire format (requests kept in histories name them): never change one.
TABLE = [
    ("fs.stat", Q, 1, 1, ()),
    ("fs.open", Q, 1, 1, ()),
    ("fs.peek", Q, 1, 1, ()),
    ("fs.peekmany", Q, 1, 32, ()),
    ("fs.snapshots", Q, 1, 1, ()),
    ("fs.snapshot", U, 1, 1, ()),
    ("fs.lookup", Q, 1, 1, ()),
    ("fs.lookupstat", Q, 2, 2, ()),
    ("fs.statmany", Q, 1, 32, ()),
    ("fs.readdir", Q, 1, 1, ()),
    ("fs.readlink", Q, 1, 1, ()),
    ("fs.getxattr", Q, 1, 1, ()),
    ("fs.listxattr", Q, 1, 1, ()),
    ("fs.mkroot", U, 1, 1, ()),
    ("fs.setattr", U, 1, 1, CLOCKS),
    ("fs.write", U, 1, 1, CLOCKS),
    ("fs.writemany", U, 1, 32, CLOCKS),
    ("fs.lock", U, 1, 1, CLOCKS),
    ("fs.unlock", U, 1, 1, ()),
    ("fs.setxattr", U, 1, 1, ()),
    ("fs.removexattr", U, 1, 1, ()),
    ("fs.create", U, 2, 2, CLOCKS),
    ("fs.createwrite", U, 2, 2, CLOCKS),
    ("fs.createmany", U, 2, 32, CLOCKS),
    ("fs.mkdir", U, 2, 2, ()),
    ("fs.mkdirmany", U, 2, 32, ()),
    ("fs.link", U, 2, 2, ()),
    ("fs.unlink", U, 2, 2, ()),
    ("fs.unlinkmany", U, 2, 32, ()),
    ("fs.rmdir", U, 2, 2, ()),
    ("fs.rename", U, 2, 8, ()),
    ("fs.lease", U, 1, 32, ()),
    ("fs.release", U, 1, 32, ()),
    ("fs.recall", U, 1, 32, ()),
    ("fs.askpub", U, 1, 32, ()),
    ("fs.publish", U, 1, 32, ()),
    ("fs.pubasked", Q, 1, 32, ()),
    ("fs.setlk", U, 1, 1, ()),
    ("fs.renewlk", U, 1, 32, ()),
    ("fs.unlockowner", U, 1, 32, ()),
    ("fs.lkwait", U, 1, 1, ()),
    ("fs.getlk", Q, 1, 1, ()),
    ("fs.state", Q, 1, 1, ()),
    ("fs.export", Q, 1, 1, ()),
    ("fs.movein", U, 1, 1, ()),
    ("fs.pubreq", Q, 1, 32, ()),
]


def test_the_method_table_keeps_every_wire_name_class_and_object_count() -> None:
    got = [
        (m.name, m.cls, m.min_objects, m.max_objects, tuple(m.clocks)) for m in fsobjects.FS.methods
    ]
    assert got == TABLE
    assert fsobjects.OBJECT_TYPES[0] == fsobjects.FS
    assert [t.name for t in fsobjects.OBJECT_TYPES] == ["fs", "session"]


def test_no_export_of_the_package_shadows_one_of_its_modules() -> None:
    """``from bftfs.fsobjects import X`` must give the module X when there is one (the
    function ``entries`` is why the entries module is ``dirents``)."""
    modules = {m.name for m in pkgutil.iter_modules(fsobjects.__path__)}
    assert modules & set(fsobjects.__all__) == set()
    assert all(hasattr(fsobjects, name) for name in fsobjects.__all__)


def test_a_touch_moves_a_directorys_times_only_forward() -> None:
    """``fs.setattr`` with ``touch`` (a directory's times sent late by write-back, when a
    create and its removal cancelled): an update of the directory taken meanwhile with a
    later time keeps it."""
    setattr_ = {m.name: m.fn for m in fsobjects.FS.methods}["fs.setattr"]
    d = new_dir(1, 0o755, 0, 0, 100)
    states, _ = setattr_({2: d}, {"touch": 500, "now": 500})
    assert (states[2]["mt"], states[2]["ct"]) == (500, 500)
    states, _ = setattr_({2: states[2]}, {"touch": 300, "now": 300})
    assert (states[2]["mt"], states[2]["ct"]) == (500, 500)
