"""Open files: their cached state, their data to and from the servers, and the calls on them.

The wing's modules, bottom to top:

- ``openfile.py``: :class:`OpenFile`, one file's buffered state and the pure decisions on
  it (which blocks a write reads first, how a read is assembled, what a flush writes),
  holding its write log (``writelog.py``) and read-ahead window (``window.py``);
- ``attr.py``: :class:`Attr`, a file's attributes as the FUSE layer sees them;
- ``table.py``: :class:`~bftfs.fs.files.table.HandleTable`, file handle -> open file;
- ``encodeahead.py``: a sequential writer's full blocks encoded as they fill;
- ``fetch.py``: :class:`~bftfs.fs.files.fetch.Fetcher`, blocks read into the cache and the
  read-ahead window;
- ``flush.py``: :class:`~bftfs.fs.files.flush.FlushEngine`, the flush (write lease, blocks,
  then size) and the re-application of buffered writes on another client's content;
- ``reclaim.py``: :class:`~bftfs.fs.files.reclaim.Reclaimer`, the blocks of dead contents
  given back.

The calls on open files that need the names and the write-back too (create/open, read,
write, flush, release; setattr and xattrs) sit above those wings, in ``fs/handles.py`` and
``fs/attributes.py``.

This face exports the wing's state, which any layer of ``bftfs.fs`` may hold (the metadata
cache keeps the open files, the FUSE layer the attributes).  The parts that act sit at
different layers of "The file system in parts" (docs/architecture.md: the flush engine
above ``meta`` and ``caches``, which import this face), so each is imported from its own
module, never through here: a face that imported them would import ``meta`` while
``meta`` imports it.
"""

from bftfs.fs.files.attr import Attr, attr_from_stat
from bftfs.fs.files.openfile import (
    BIG_BLOCK_THRESHOLD,
    DEFAULT_BEHIND_LIMIT,
    DEFAULT_CLEAN_LIMIT,
    DEFAULT_DIRTY_LIMIT,
    DEFAULT_READAHEAD,
    DEFAULT_READAHEAD_MAX,
    INITIAL_RESERVE,
    PREFETCH_GROUP,
    READAHEAD_MAX_BLOCKS,
    OpenFile,
    clip_ranges,
    file_block_size,
    initial_reserve,
    reservation,
    round_up,
    sequential_end,
    stale_ranges,
)

__all__ = [
    "BIG_BLOCK_THRESHOLD",
    "DEFAULT_BEHIND_LIMIT",
    "DEFAULT_CLEAN_LIMIT",
    "DEFAULT_DIRTY_LIMIT",
    "DEFAULT_READAHEAD",
    "DEFAULT_READAHEAD_MAX",
    "INITIAL_RESERVE",
    "PREFETCH_GROUP",
    "READAHEAD_MAX_BLOCKS",
    "Attr",
    "OpenFile",
    "attr_from_stat",
    "clip_ranges",
    "file_block_size",
    "reservation",
    "initial_reserve",
    "round_up",
    "sequential_end",
    "stale_ranges",
]
