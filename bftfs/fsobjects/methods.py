"""The method table: the ``fs`` object type, every method by its wire name with its class
(query or update), its number of objects and the argument keys nodes check against their
clocks, and the object types a node serves (:data:`OBJECT_TYPES`: ``fs`` and the lease
sessions, ``session``).

A new method is written in the module of its job (:mod:`bftfs.fsobjects.queries`,
``attributes``, ``data``, ``names``, ``snapshots``, ``locks``, ``moves``) and listed here; its name
and argument keys are wire format, kept in histories, so they never change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bftfs.fsobjects.attributes import fs_removexattr, fs_setattr, fs_setxattr
from bftfs.fsobjects.data import fs_lock, fs_unlock, fs_write, fs_write_many
from bftfs.fsobjects.leases import (
    LEASE_SKEW,
    LEASE_TIME,
    NEW_LEASE,
    fs_lease,
    fs_recall,
    fs_release,
    guarded,
    leased,
)
from bftfs.fsobjects.limits import CLOCKS
from bftfs.fsobjects.locks import fs_getlk, fs_lkwait, fs_renewlk, fs_setlk, fs_unlock_owner
from bftfs.fsobjects.moves import fs_export, fs_movein, fs_state
from bftfs.fsobjects.names import (
    fs_create,
    fs_create_many,
    fs_create_write,
    fs_link,
    fs_mkdir,
    fs_mkdir_many,
    fs_mkroot,
    fs_rmdir,
    fs_unlink,
    fs_unlink_many,
)
from bftfs.fsobjects.publish import (
    fs_askpub_legacy,
    fs_pub_asked_legacy,
    fs_publish,
    fs_pubreq,
)
from bftfs.fsobjects.queries import (
    fs_getxattr,
    fs_listxattr,
    fs_lookup,
    fs_lookup_stat,
    fs_open,
    fs_peek,
    fs_peek_many,
    fs_readdir,
    fs_readlink,
    fs_stat,
    fs_stat_many,
)
from bftfs.fsobjects.rename import fs_rename
from bftfs.fsobjects.sessions import session_renew
from bftfs.fsobjects.snapshots import finished, fs_snapshot, fs_snapshots
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
        _query("fs.stat", fs_stat),
        _query("fs.open", fs_open),
        Method("fs.peek", Class.QUERY, fs_peek),
        Method("fs.peekmany", Class.QUERY, fs_peek_many, 1, MAX_OBJECTS),
        Method("fs.snapshots", Class.QUERY, fs_snapshots),
        _update("fs.snapshot", fs_snapshot),
        _query("fs.lookup", fs_lookup),
        _query("fs.lookupstat", fs_lookup_stat, 2, 2),
        _query("fs.statmany", fs_stat_many, 1, MAX_OBJECTS),
        _query("fs.readdir", fs_readdir),
        _query("fs.readlink", fs_readlink),
        _query("fs.getxattr", fs_getxattr),
        _query("fs.listxattr", fs_listxattr),
        _update("fs.mkroot", fs_mkroot),
        _update("fs.setattr", fs_setattr, clocks=CLOCKS),
        _update("fs.write", fs_write, clocks=CLOCKS),
        _update("fs.writemany", fs_write_many, 1, MAX_OBJECTS, clocks=CLOCKS),
        _update("fs.lock", fs_lock, clocks=CLOCKS),
        _update("fs.unlock", fs_unlock),
        _update("fs.setxattr", fs_setxattr),
        _update("fs.removexattr", fs_removexattr),
        _update("fs.create", fs_create, 2, 2, clocks=CLOCKS),
        _update("fs.createwrite", fs_create_write, 2, 2, clocks=CLOCKS),
        _update("fs.createmany", fs_create_many, 2, MAX_OBJECTS, clocks=CLOCKS),
        _update("fs.mkdir", fs_mkdir, 2, 2, grants_with=NEW_LEASE),
        _update("fs.mkdirmany", fs_mkdir_many, 2, MAX_OBJECTS, grants_with=NEW_LEASE),
        _update("fs.link", fs_link, 2, 2),
        _update("fs.unlink", fs_unlink, 2, 2),
        _update("fs.unlinkmany", fs_unlink_many, 2, MAX_OBJECTS),
        _update("fs.rmdir", fs_rmdir, 2, 2),
        _update("fs.rename", fs_rename, 2, 8),
        _lease_method("fs.lease", fs_lease, grants=True),
        _lease_method("fs.release", fs_release),
        _lease_method("fs.recall", fs_recall),
        _lease_method("fs.askpub", fs_askpub_legacy),  # (an older release's: stored requests)
        _lease_method("fs.publish", fs_publish),
        Method("fs.pubasked", Class.QUERY, fs_pub_asked_legacy, 1, MAX_OBJECTS),  # (older)
        _lock_method("fs.setlk", fs_setlk, grants=True),
        _lock_method("fs.renewlk", fs_renewlk, grants=True, many=True),
        _lock_method("fs.unlockowner", fs_unlock_owner, grants=False, many=True),
        _lock_method("fs.lkwait", fs_lkwait, grants=False),
        Method("fs.getlk", Class.QUERY, fs_getlk, caller=True),
        Method("fs.state", Class.QUERY, fs_state),
        Method("fs.export", Class.QUERY, fs_export, applied=True),
        Method(
            "fs.movein",
            Class.UPDATE,
            fs_movein,
            caller=True,
            lease_clock="lt",
            lease_skew=LEASE_SKEW,
            grants=True,
            installs_applied="a",
        ),
        # A reader's request to publish: a query, so it makes no version the holder's own
        # updates of the objects must catch up with (fsobjects/publish.py).
        Method("fs.pubreq", Class.QUERY, fs_pubreq, 1, MAX_OBJECTS, caller=True),
    ),
    finished=finished,
)


GUARDED_QUERIES = frozenset(_GUARDED)

#: Lease sessions (:mod:`bftfs.fsobjects.sessions`, issue 62): renewed by their client
#: alone, its lease time checked both ways as a grant's.
SESSION = ObjectType(
    "session",
    (
        Method(
            "session.renew",
            Class.UPDATE,
            session_renew,
            caller=True,
            lease_clock=LEASE_TIME,
            lease_skew=LEASE_SKEW,
            grants=True,
        ),
    ),
)

#: The object types of the file system: what a node serves (``bftfs.node.protocols``).
OBJECT_TYPES = (FS, SESSION)
