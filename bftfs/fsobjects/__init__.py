"""The file system's replicated state machine: the Q/U object type ``fs`` whose methods every
node runs (seed 004 section 4.4.4, L3079-3163; spec ``pasis-qu-lazy.md`` part D), with
server-side validation.  Both sides import it: the nodes serve :data:`OBJECT_TYPES`
(``bftfs/node/protocols.py``), and the client (``bftfs/fs/``) answers from the same code and
limits before it asks.  It imports only the Q/U object-method types (``bftfs.qu.objects``).

Two kinds of Q/U object, both served by the one object type ``fs`` (a method may touch both
kinds at once, e.g. ``fs.create`` updates a directory and a new attribute object):

- a **directory object** holds the directory's entries (name -> object id and file type) and,
  as the seed prescribes (L3083-3085), the directory's own attributes inline, because almost
  every directory method needs them; it also holds its parent's id, so ``..`` and the
  "no directory under itself" check need no other object;
- an **attribute object** holds what NFS clients expect per file (L3082-3083): mode, owner,
  times, link count, size, the symlink target, extended attributes, and the layout of the
  file's PASIS blocks (``d`` = data id, ``alloc`` = the reservation mark, see
  :mod:`bftfs.fsobjects.data`).

Methods run on every server and are the only way to change an object, so this is where a
Byzantine client is confined (L1918-1920, L143-150): every method re-checks POSIX rules on the
server's own copy - names are legal and unique, a directory is empty before it is removed, a
directory never moves under itself, link counts follow the entries, an object is created
only where nothing exists - and raises :class:`MethodRefused` otherwise.  The client checks the
same rules first (to answer quickly); the servers' checks are what make them hold.

Operations map onto Table 4.3 (L3112-3156): ``stat``/``lookup``/``readdir``/``readlink``/
``getxattr``/``listxattr`` are queries on one object (``lookupstat`` queries the directory
and the object the client expects the entry to name together, so a lookup costs one
round); ``setattr``/``write``/``lock``/``unlock``/``setxattr``/``removexattr`` are
single-object updates; ``create``/``mkdir``/``link``/
``unlink``/``rmdir`` are two-object updates (directory + attribute or child directory), and
so is ``createwrite`` (a create with the new file's first inline content, one update);
``rename`` updates the two directories, the moved object, a replaced target and, when a
directory moves to another parent, the ancestors of its new parent up to its old parent or
the root (the proof that it does not move under itself).

Determinism: methods read no clock and draw no random number.  The client passes times
(integer ns) and new object ids in the argument; servers only check their range.  Entries are
kept in 64 hash buckets (``e``, :mod:`bftfs.fsobjects.dirents`), each one packed msgpack
map, an opaque byte string to the canonical encoder: an update or lookup in a directory of
thousands of names unpacks and packs one bucket, not the whole directory.

Refusal codes (``MethodRefused.code``) are errno names understood by :mod:`bftfs.fs.errors`, plus
``stale`` (the client's view of an entry or a data id is out of date: it re-reads and
retries), ``locked`` (another client holds the file's write lease: wait and retry) and
``oid-exists`` (a random new object id is taken: the client draws another).

Modules, bottom up (each imports only those above it):

- ``limits``: reserved object ids, the limits a method accepts, flag bits, type codes;
- ``dirents``: a directory's entries in hash buckets (pure, msgpack only; not named
  ``entries``, which is the function that lists them);
- ``state``: the argument validators, the object states, :func:`stat_of`;
- ``ranges``: a file's written ranges ``w``, stale ranges ``z`` and its write lease ``wl``;
- ``attributes``: ``setattr``, ``setxattr``, ``removexattr``, the block Time ``bt``;
- ``data``: ``write``, ``lock``, ``unlock``;
- ``names``: ``mkroot``, ``create``, ``createwrite``, ``mkdir``, ``link``, ``unlink``,
  ``rmdir``;
- ``rename``: ``rename`` (with ``RENAME_NOREPLACE`` and ``RENAME_EXCHANGE``);
- ``snapshots``: the snapshot list and the collection predicate ``finished``;
- ``sessions``: lease sessions (issue 62), the object type ``session``;
- ``leases``: leases (who may cache an object, until when) and their recall;
- ``locks``: file locks (``fcntl``, ``flock``) in lock objects, their range algebra;
- ``moves``: ``state`` and ``movein``, an object's move from one generation to the next;
- ``queries``: ``stat``, ``open``, ``peek``, ``lookup``, ``lookupstat``, ``statmany``,
  ``readdir``, ``readlink``, ``getxattr``, ``listxattr``;
- ``methods``: the method table, :data:`FS` and :data:`OBJECT_TYPES`.

This package re-exports what clients, nodes and tools use; the underscored method
functions are the package's own.
"""

from __future__ import annotations

from bftfs.fsobjects.limits import (
    CLOCKS,
    DIR_TYPE,
    FILE_TYPES,
    INLINE_MAX,
    LINK_MAX,
    MAX_BLOCK_TIME,
    MAX_COUNTER,
    MAX_EXTENTS,
    MAX_FILE_BLOCK,
    MAX_ID,
    MAX_LEASE,
    MAX_OID,
    MAX_SIZE,
    MAX_SNAPSHOTS,
    MAX_TIME,
    MIN_TIME,
    NAME_MAX,
    PATH_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT,
    SNAPSHOT_NAME_MAX,
    SNAPSHOTS,
    XATTR_CREATE,
    XATTR_NAME_MAX,
    XATTR_REPLACE,
    XATTR_SIZE_MAX,
    XATTR_TOTAL_MAX,
)
from bftfs.fsobjects.methods import FS, OBJECT_TYPES
from bftfs.fsobjects.names import created_stat, made_dir_stat
from bftfs.fsobjects.ranges import merge_extents
from bftfs.fsobjects.snapshots import snapshot_name, snapshot_times, valid_snapshot_name
from bftfs.fsobjects.state import check_name, check_xattr_name, entries, new_dir, stat_of

__all__ = [
    "CLOCKS",
    "DIR_TYPE",
    "FILE_TYPES",
    "FS",
    "INLINE_MAX",
    "LINK_MAX",
    "MAX_BLOCK_TIME",
    "MAX_COUNTER",
    "MAX_EXTENTS",
    "MAX_FILE_BLOCK",
    "MAX_ID",
    "MAX_LEASE",
    "MAX_OID",
    "MAX_SIZE",
    "MAX_SNAPSHOTS",
    "MAX_TIME",
    "MIN_TIME",
    "NAME_MAX",
    "OBJECT_TYPES",
    "PATH_MAX",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "ROOT",
    "SNAPSHOTS",
    "SNAPSHOT_NAME_MAX",
    "XATTR_CREATE",
    "XATTR_NAME_MAX",
    "XATTR_REPLACE",
    "XATTR_SIZE_MAX",
    "XATTR_TOTAL_MAX",
    "check_name",
    "check_xattr_name",
    "created_stat",
    "made_dir_stat",
    "entries",
    "merge_extents",
    "new_dir",
    "snapshot_name",
    "snapshot_times",
    "stat_of",
    "valid_snapshot_name",
]
