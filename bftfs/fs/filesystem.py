"""The inode-level file system on Q/U metadata and PASIS blocks (docs/fs-api.md).

Every namespace operation is one Q/U query or one single- or multi-object update, as in the
seed's Q/U-NFSv3 (Table 4.3, L3112-3156): ``getattr``/``readdir``/``readlink`` query one
object, ``lookup`` queries the directory (and the entry's attribute object concurrently when
this client already knows which it is), ``create``/``mkdir``/``symlink``/``mknod``/``link``/
``unlink``/``rmdir`` update the directory and one attribute or directory object together,
and ``rename`` updates up to two directories, the moved and the replaced object (plus the
ancestors that prove a directory does not move under itself, see
:func:`bftfs.fsobjects.rename._not_under`) atomically.  The servers validate every update; the
checks here only answer early.

What the client caches, and why it is safe:

- **Directory entries and parents** (``_names``, ``_parents``) are used only to *name the
  objects* of an update (unlink, rmdir, rename need the child's object id) or to start a
  speculative attribute query.  The servers re-check each entry inside the update and refuse
  with ``stale`` when the cache was wrong; the client then re-reads and retries.  So a stale
  cache costs a round trip, never correctness.
- **Attributes this client's own updates produced** are answered by ``getattr`` for
  ``attr_ttl`` seconds (default 1 s, the FUSE layer's kernel attribute timeout): the same
  window the kernel caches them in.  Queries always go to the servers.
- **Open files** (:class:`bftfs.fs.files.OpenFile`): close-to-open consistency as in NFS.
  ``open`` re-reads the attribute object; cached blocks survive only when its version
  counter is unchanged.  Writes are buffered per file and flushed on ``flush``, ``fsync``,
  ``release``, before a truncation, and when the dirty data passes a bound (8 MiB): in the
  background for a sequential writer (write-behind, bounded by ``behind_limit``; its errors
  reach the next write, flush or fsync), and sequential readers have a window of blocks
  fetched in the background (docs/fs.md, "Big files").  A flush writes every block first
  (PASIS, complete at ``N - t`` nodes) and only then sends the size and mtime (Q/U), so a
  crash in between leaves the old size over the old data.

Concurrency: pyfuse3 runs handlers as concurrent trio tasks; code between ``await`` points is
atomic.  Flushes and truncations of one file are serialised by its lock; the Q/U client
serialises its own operations per object.

The code is in parts, one module per job, which :class:`FileSystem` combines as mixin
classes over its one state (declared in :mod:`bftfs.fs.base`):

- :mod:`bftfs.fs.meta`: Q/U and PASIS calls, error translation, statistics, placement;
- :mod:`bftfs.fs.caches`: the attribute, name and parent caches and the reads through them;
- :mod:`bftfs.fs.namespace`: lookup, readdir, create, link, unlink, rename, ...;
- :mod:`bftfs.fs.attributes`: setattr, truncation, extended attributes;
- :mod:`bftfs.fs.handles`: the handle table, create/open, read, write, flush, release;
- :mod:`bftfs.fs.filedata`: fetching blocks and the flush engine (leases, re-applying
  buffered writes, inline files);
- :mod:`bftfs.fs.writebehind`: creates sent with their first flush (``write_behind``),
  and the calls that send a directory's pending creates first;
- this module: the constructor, ``FileSystem.open`` and introspection.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import types
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from bftfs import fsobjects as obj
from bftfs.fs.attributes import Attributes
from bftfs.fs.errors import Exists, NotFound
from bftfs.fs.filedata import FileData
from bftfs.fs.files import (
    DEFAULT_BEHIND_LIMIT,
    DEFAULT_DIRTY_LIMIT,
    DEFAULT_READAHEAD,
    DEFAULT_READAHEAD_MAX,
    OpenFile,
)
from bftfs.fs.handles import Handles
from bftfs.fs.namespace import Namespace
from bftfs.fs.writebehind import WriteBehind
from bftfs.fsobjects import RENAME_EXCHANGE, ROOT

__all__ = [
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "XATTR_CREATE",
    "XATTR_REPLACE",
    "FileSystem",
]

log = logging.getLogger(__name__)

RENAME_NOREPLACE = obj.RENAME_NOREPLACE
XATTR_CREATE = obj.XATTR_CREATE
XATTR_REPLACE = obj.XATTR_REPLACE


class _ClassOrInstance:
    """A method that is one function on the class and another on its instances."""

    def __init__(self, on_class: Callable[..., Any], on_instance: Callable[..., Any]) -> None:
        self.on_class = on_class
        self.on_instance = on_instance
        self.__doc__ = on_instance.__doc__

    def __get__(self, instance: Any, owner: type) -> Callable[..., Any]:
        if instance is None:
            return types.MethodType(self.on_class, owner)
        return types.MethodType(self.on_instance, instance)


class FileSystem(WriteBehind, Namespace, Attributes, Handles, FileData):
    """The file-system model of one client (one mount); see the module docstring."""

    def __init__(
        self,
        qu: Any,
        rw: Any,
        config: Any,
        *,
        uid: int = 0,
        gid: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
        attr_ttl: float = 1.0,
        dirty_limit: int = DEFAULT_DIRTY_LIMIT,
        readahead: int = DEFAULT_READAHEAD,
        readahead_max: int = DEFAULT_READAHEAD_MAX,
        behind_limit: int = DEFAULT_BEHIND_LIMIT,
        write_behind: bool = False,
    ) -> None:
        # The state the parts share; what each holds is declared in bftfs.fs.base.
        self.qu = qu
        self.rw = rw
        self.config = config
        self.uid = uid
        self.gid = gid
        self.clock_ns = clock_ns
        self.rng = rng or random.SystemRandom()
        self.lease_token = self.rng.randrange(1, obj.MAX_OID)
        self.attr_ttl = attr_ttl
        self.dirty_limit = dirty_limit
        self.readahead = readahead
        self.readahead_max = max(readahead_max, readahead) if readahead else 0
        self.behind_limit = behind_limit
        self.streaming = Counter()
        self.bs = config.block_size
        #: The block size of files written sequentially (0: every file has ``bs``).
        self.big_bs = int(getattr(config, "big_blocks", 0))
        self.inline = min(getattr(config, "inline_limit", 0), self.bs)
        self._names = {}
        self._refused_stale_at = -1e9
        self._refused_names = set()
        self._revalidated = {}
        self._parents = {}
        self._own = {}
        self._files = {}
        self._handles = {}
        self._next_fh = 1
        self._kernel_content = {}
        self._cache_current = set()
        self.methods = Counter()
        self.method_seconds = defaultdict(float)
        self._init_reclaim()
        self._init_write_behind(write_behind)
        self._space = None

    async def _open_fs(
        cls: Any,  # FileSystem: bound on the class by _ClassOrInstance
        qu: Any,
        rw: Any,
        config: Any,
        *,
        uid: int = 0,
        gid: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
        **options: Any,
    ) -> FileSystem:
        """A file system on these clients; creates the root directory if the cluster has
        none (``fs.mkroot`` is refused once it exists, so racing clients are harmless)."""
        fs = cls(qu, rw, config, uid=uid, gid=gid, clock_ns=clock_ns, **options)
        try:
            fs._observed(ROOT, await fs._query(ROOT, "fs.stat"))
        except NotFound:
            arg = {"mode": 0o755, "uid": uid, "gid": gid, "now": clock_ns()}
            with contextlib.suppress(Exists):  # another client made it first
                await fs._update([ROOT], "fs.mkroot", arg)
        return fs

    #: ``await FileSystem.open(qu, rw, config, ...)`` builds a file system,
    #: ``await fs.open(ino, flags)`` opens a file: the contract names both ``open``.
    open = _ClassOrInstance(_open_fs, Handles._open_file)

    # Introspection -------------------------------------------------------------------------

    def open_files(self) -> Mapping[int, OpenFile]:
        """The files this client holds state for (tests and statistics)."""
        return dict(self._files)
