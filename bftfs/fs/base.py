"""The state the parts of :class:`~bftfs.fs.filesystem.FileSystem` share, and the methods
one part calls on another, declared once.

``FileSystem`` is one object composed of cooperating mixin classes, one module per job
(the layout is in the docstring of :mod:`bftfs.fs.filesystem`).  Every part works on the
one instance's state, as the methods did when they were one class: the caches, the open
files and the handle table are shared, and keeping them in one object keeps each method's
code as it was.  The parts stack: :class:`~bftfs.fs.meta.Meta` (calls to the servers) on
this base, :class:`~bftfs.fs.caches.Caches` on it, and the four peers - namespace,
attributes, handles, file data - each on ``Caches``.

The state is declared here (``FileSystem.__init__`` sets it), and so is every method one
peer calls on another, as an abstract method: mypy checks those calls against one
signature and each implementation against it, and a ``FileSystem`` missing one cannot be
instantiated.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from bftfs.fs.attrs import Attr
from bftfs.fs.files import OpenFile


class FsBase(ABC):
    """What every part of ``FileSystem`` may use: the shared state, and the methods called
    across parts (implemented in the module named)."""

    # Clients and configuration -------------------------------------------------------------

    qu: Any
    rw: Any
    config: Any
    uid: int
    gid: int
    clock_ns: Callable[[], int]
    rng: random.Random
    #: This client's write-lease token (``fs.lock``): random, so that two mounts of
    #: one client identity do not share leases.
    lease_token: int
    attr_ttl: float
    dirty_limit: int
    readahead: int
    #: The read-ahead window's largest size (bytes), 0: no background read-ahead.
    readahead_max: int
    #: Buffered bytes of a sequentially written file at which a write waits for the
    #: background flush; 0: no write-behind of big files (every flush in the write).
    behind_limit: int
    bs: int
    #: The block size of files written sequentially (0: every file has ``bs``; docs/fs.md).
    big_bs: int
    #: Regular files up to this size keep their content in the attribute object.
    inline: int

    # Caches (bftfs.fs.caches; why they are safe: the docstring of bftfs.fs.filesystem) ----

    #: Directory id -> {name: (object id, type code)} (partial; see :mod:`bftfs.fs.filesystem`).
    _names: dict[int, dict[bytes, tuple[int, int]]]
    #: Last ESTALE for a stale name (monotonic s), and objects a lookup found right
    #: after one, with until when (``_check_reached``).
    _refused_stale_at: float
    _refused_names: set[tuple[int, bytes]]
    _revalidated: dict[int, float]
    _parents: dict[int, int]
    #: Object id -> (stat produced by our own update, trio time it arrived).
    _own: dict[int, tuple[dict[str, Any], float]]

    # Open files and handles (bftfs.fs.handles, bftfs.fs.filedata) -------------------------

    _files: dict[int, OpenFile]
    _handles: dict[int, tuple[OpenFile, int]]
    _next_fh: int
    #: File id -> (data id, version counter) of the content the kernel may hold pages
    #: of; see :meth:`keep_cache`.
    _kernel_content: dict[int, tuple[int, int]]
    #: Handles whose open found the kernel's pages current.
    _cache_current: set[int]

    #: (trio time, bytes used on a node) of the last ``statfs`` answer from the nodes.
    _space: tuple[float, int] | None

    # Statistics (bftfs.fs.meta) ------------------------------------------------------------

    #: Q/U operations sent and seconds spent in them, by method (where a workload's
    #: rounds go; logged at unmount).
    methods: Counter[str]
    method_seconds: defaultdict[str, float]
    #: Read-ahead and write-behind of big files (bftfs.fs.filedata): blocks prefetched,
    #: prefetched blocks a read used or waited for, background flushes and their failures.
    streaming: Counter[str]

    # Called across parts -------------------------------------------------------------------

    @abstractmethod
    async def getattr(self, ino: int, *, reached_by_name: bool = False) -> Attr:
        """bftfs.fs.namespace"""

    @abstractmethod
    def _check_reached(self, ino: int, s: dict[str, Any]) -> None:
        """bftfs.fs.namespace"""

    @abstractmethod
    async def mknod(
        self,
        parent: int,
        name: bytes,
        mode: int,
        rdev: int,
        uid: int,
        gid: int,
        *,
        lease: bool = False,
    ) -> Attr:
        """bftfs.fs.namespace"""

    @abstractmethod
    async def _truncate(
        self, ino: int, size: int, mtime_ns: int | None, *, reached_by_name: bool = False
    ) -> dict[str, Any]:
        """bftfs.fs.attributes"""

    @abstractmethod
    async def _fetch(self, f: OpenFile, indices: list[int]) -> None:
        """bftfs.fs.filedata"""

    @abstractmethod
    async def _flush(self, f: OpenFile) -> None:
        """bftfs.fs.filedata"""

    @abstractmethod
    async def _unlock(self, f: OpenFile) -> None:
        """bftfs.fs.filedata"""

    @abstractmethod
    async def _read_ahead(self, f: OpenFile, offset: int, size: int) -> None:
        """bftfs.fs.filedata"""

    @abstractmethod
    def _flush_behind(self, f: OpenFile) -> None:
        """bftfs.fs.filedata"""

    @abstractmethod
    async def _behind_done(self, f: OpenFile, *, report: bool) -> None:
        """bftfs.fs.filedata"""

    @abstractmethod
    def _lease_arg(self, d: int, v: int) -> dict[str, Any]:
        """bftfs.fs.filedata"""
