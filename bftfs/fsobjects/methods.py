"""The method table: the ``fs`` object type, every method by its wire name with its class
(query or update), its number of objects and the argument keys nodes check against their
clocks, and the object types a node serves (:data:`OBJECT_TYPES`).

A new method is written in the module of its job (:mod:`bftfs.fsobjects.queries`,
``attributes``, ``data``, ``names``, ``snapshots``, ``locks``, ``moves``) and listed here; its name
and argument keys are wire format, kept in histories, so they never change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bftfs.fsobjects.attributes import _removexattr, _setattr, _setxattr
from bftfs.fsobjects.data import _lock, _unlock, _write, _write_many
from bftfs.fsobjects.leases import (
    LEASE_SKEW,
    LEASE_TIME,
    NEW_LEASE,
    _lease,
    _recall,
    _release,
    guarded,
    leased,
)
from bftfs.fsobjects.limits import CLOCKS
from bftfs.fsobjects.locks import _getlk, _lkwait, _renewlk, _setlk, _unlock_owner
from bftfs.fsobjects.moves import _export, _movein, _state
from bftfs.fsobjects.names import (
    _create,
    _create_many,
    _create_write,
    _link,
    _mkdir,
    _mkroot,
    _rmdir,
    _unlink,
    _unlink_many,
)
from bftfs.fsobjects.queries import (
    _getxattr,
    _listxattr,
    _lookup,
    _lookup_stat,
    _open,
    _peek,
    _peek_many,
    _readdir,
    _readlink,
    _stat,
    _stat_many,
)
from bftfs.fsobjects.rename import _rename
from bftfs.fsobjects.snapshots import _finished, _snapshot, _snapshots
from bftfs.qu.objects import Class, Method, ObjectType, UpdateFn
from bftfs.qu.timestamp import MAX_OBJECTS


def _update(
    name: str,
    fn: UpdateFn,
    min_objects: int = 1,
    max_objects: int = 1,
    *,
    clocks: tuple[str, ...] = (),
    grants_with: str | None = None,
) -> Method:
    """An update under the lease rule (:func:`bftfs.fsobjects.leases.leased`): told its
    caller, its lease time ``lt`` checked by nodes against their clocks (behind too when
    the argument has ``grants_with``: the update then leases what it makes)."""
    return Method(
        name,
        Class.UPDATE,
        leased(fn),
        min_objects,
        max_objects,
        clocks=clocks,
        caller=True,
        lease_clock=LEASE_TIME,
        lease_skew=LEASE_SKEW,
        grants_with=grants_with,
    )


#: The queries under :func:`bftfs.fsobjects.leases.guarded` (their argument may come in the
#: asking mount's envelope, ``leases.tag_query``).
_GUARDED: set[str] = set()


def _query(name: str, fn: Callable[..., Any], min_objects: int = 1, max_objects: int = 1) -> Method:
    """A query of the present state, refused while another client holds an exclusive lease
    on one of its objects (:func:`bftfs.fsobjects.leases.guarded`): told its caller."""
    _GUARDED.add(name)
    return Method(name, Class.QUERY, guarded(fn), min_objects, max_objects, caller=True)


def _lease_method(name: str, fn: Callable[..., Any], *, grants: bool = False) -> Method:
    """A lease method: on up to ``MAX_OBJECTS`` objects, told its caller."""
    return Method(
        name,
        Class.UPDATE,
        fn,
        1,
        MAX_OBJECTS,
        caller=True,
        lease_clock=LEASE_TIME,
        lease_skew=LEASE_SKEW,
        grants=grants,
    )


def _lock_method(name: str, fn: Callable[..., Any], *, grants: bool, many: bool = False) -> Method:
    """A file-lock update (:mod:`bftfs.fsobjects.locks`): told its caller, its lease time
    checked by nodes (``grants``: behind too, for what takes or renews a lock)."""
    return Method(
        name,
        Class.UPDATE,
        fn,
        1,
        MAX_OBJECTS if many else 1,
        caller=True,
        lease_clock=LEASE_TIME,
        lease_skew=LEASE_SKEW,
        grants=grants,
    )


FS = ObjectType(
    "fs",
    (
        _query("fs.stat", _stat),
        _query("fs.open", _open),
        Method("fs.peek", Class.QUERY, _peek),
        Method("fs.peekmany", Class.QUERY, _peek_many, 1, MAX_OBJECTS),
        Method("fs.snapshots", Class.QUERY, _snapshots),
        _update("fs.snapshot", _snapshot),
        _query("fs.lookup", _lookup),
        _query("fs.lookupstat", _lookup_stat, 2, 2),
        _query("fs.statmany", _stat_many, 1, MAX_OBJECTS),
        _query("fs.readdir", _readdir),
        _query("fs.readlink", _readlink),
        _query("fs.getxattr", _getxattr),
        _query("fs.listxattr", _listxattr),
        _update("fs.mkroot", _mkroot),
        _update("fs.setattr", _setattr, clocks=CLOCKS),
        _update("fs.write", _write, clocks=CLOCKS),
        _update("fs.writemany", _write_many, 1, MAX_OBJECTS, clocks=CLOCKS),
        _update("fs.lock", _lock, clocks=CLOCKS),
        _update("fs.unlock", _unlock),
        _update("fs.setxattr", _setxattr),
        _update("fs.removexattr", _removexattr),
        _update("fs.create", _create, 2, 2, clocks=CLOCKS),
        _update("fs.createwrite", _create_write, 2, 2, clocks=CLOCKS),
        _update("fs.createmany", _create_many, 2, MAX_OBJECTS, clocks=CLOCKS),
        _update("fs.mkdir", _mkdir, 2, 2, grants_with=NEW_LEASE),
        _update("fs.link", _link, 2, 2),
        _update("fs.unlink", _unlink, 2, 2),
        _update("fs.unlinkmany", _unlink_many, 2, MAX_OBJECTS),
        _update("fs.rmdir", _rmdir, 2, 2),
        _update("fs.rename", _rename, 2, 8),
        _lease_method("fs.lease", _lease, grants=True),
        _lease_method("fs.release", _release),
        _lease_method("fs.recall", _recall),
        _lock_method("fs.setlk", _setlk, grants=True),
        _lock_method("fs.renewlk", _renewlk, grants=True, many=True),
        _lock_method("fs.unlockowner", _unlock_owner, grants=False, many=True),
        _lock_method("fs.lkwait", _lkwait, grants=False),
        Method("fs.getlk", Class.QUERY, _getlk, caller=True),
        Method("fs.state", Class.QUERY, _state),
        Method("fs.export", Class.QUERY, _export, applied=True),
        Method(
            "fs.movein",
            Class.UPDATE,
            _movein,
            caller=True,
            lease_clock="lt",
            lease_skew=LEASE_SKEW,
            grants=True,
            installs_applied="a",
        ),
    ),
    finished=_finished,
)


GUARDED_QUERIES = frozenset(_GUARDED)

#: The object types of the file system: what a node serves (``bftfs.node.protocols``).
OBJECT_TYPES = (FS,)
