"""The method table: the ``fs`` object type, every method by its wire name with its class
(query or update), its number of objects and the argument keys nodes check against their
clocks, and the object types a node serves (:data:`OBJECT_TYPES`).

A new method is written in the module of its job (:mod:`bftfs.fsobjects.queries`,
``attributes``, ``data``, ``names``, ``snapshots``) and listed here; its name and argument
keys are wire format, kept in histories, so they never change.
"""

from __future__ import annotations

from bftfs.fsobjects.attributes import _removexattr, _setattr, _setxattr
from bftfs.fsobjects.data import _lock, _unlock, _write
from bftfs.fsobjects.limits import CLOCKS
from bftfs.fsobjects.names import (
    _create,
    _create_write,
    _link,
    _mkdir,
    _mkroot,
    _rmdir,
    _unlink,
)
from bftfs.fsobjects.queries import (
    _getxattr,
    _listxattr,
    _lookup,
    _lookup_stat,
    _open,
    _peek,
    _readdir,
    _readlink,
    _stat,
    _stat_many,
)
from bftfs.fsobjects.rename import _rename
from bftfs.fsobjects.snapshots import _finished, _snapshot, _snapshots
from bftfs.qu.objects import Class, Method, ObjectType
from bftfs.qu.timestamp import MAX_OBJECTS

FS = ObjectType(
    "fs",
    (
        Method("fs.stat", Class.QUERY, _stat),
        Method("fs.open", Class.QUERY, _open),
        Method("fs.peek", Class.QUERY, _peek),
        Method("fs.snapshots", Class.QUERY, _snapshots),
        Method("fs.snapshot", Class.UPDATE, _snapshot),
        Method("fs.lookup", Class.QUERY, _lookup),
        Method("fs.lookupstat", Class.QUERY, _lookup_stat, 2, 2),
        Method("fs.statmany", Class.QUERY, _stat_many, 1, MAX_OBJECTS),
        Method("fs.readdir", Class.QUERY, _readdir),
        Method("fs.readlink", Class.QUERY, _readlink),
        Method("fs.getxattr", Class.QUERY, _getxattr),
        Method("fs.listxattr", Class.QUERY, _listxattr),
        Method("fs.mkroot", Class.UPDATE, _mkroot),
        Method("fs.setattr", Class.UPDATE, _setattr, clocks=CLOCKS),
        Method("fs.write", Class.UPDATE, _write, clocks=CLOCKS),
        Method("fs.lock", Class.UPDATE, _lock, clocks=CLOCKS),
        Method("fs.unlock", Class.UPDATE, _unlock),
        Method("fs.setxattr", Class.UPDATE, _setxattr),
        Method("fs.removexattr", Class.UPDATE, _removexattr),
        Method("fs.create", Class.UPDATE, _create, 2, 2, clocks=CLOCKS),
        Method("fs.createwrite", Class.UPDATE, _create_write, 2, 2, clocks=CLOCKS),
        Method("fs.mkdir", Class.UPDATE, _mkdir, 2, 2),
        Method("fs.link", Class.UPDATE, _link, 2, 2),
        Method("fs.unlink", Class.UPDATE, _unlink, 2, 2),
        Method("fs.rmdir", Class.UPDATE, _rmdir, 2, 2),
        Method("fs.rename", Class.UPDATE, _rename, 2, 8),
    ),
    finished=_finished,
)


#: The object types of the file system: what a node serves (``bftfs.node.protocols``).
OBJECT_TYPES = (FS,)
