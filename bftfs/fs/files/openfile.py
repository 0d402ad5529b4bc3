"""Files as fixed-size PASIS blocks, and the per-file write-back cache (no I/O here).

The seed's Q/U-NFSv3 keeps file data outside the metadata service (L3086-3088, L3103-3104);
bftfs keeps it in PASIS blocks (seed chapter 3): block ``i`` of a file is
``block_id(d, i)`` where ``d`` is the data id in the file's attribute object.  This module
holds the state of one file this client has open or cached, and the pure decisions on it:
which blocks a write must read first, how a read is assembled from dirty, clean and fetched
blocks, and what a flush must write.  :mod:`bftfs.fs.handles`,
:mod:`bftfs.fs.files.fetch` and :mod:`bftfs.fs.files.flush` do the I/O.

Byte ``p`` of the file (``p < size``) is, in this order: the dirty block's byte (zero beyond
its current length), else the server's block clamped at ``valid`` (the size the servers
hold as far as this client knows; bytes at or past it may be left over from a crashed
writer - see :mod:`bftfs.fsobjects` on ``alloc`` - and read as zero), else zero (a hole).

Code between two ``await`` points runs atomically (trio), so these methods need no locks;
the filesystem serialises flushes and truncations of one file with :attr:`OpenFile.lock`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from bftfs.fs.files.window import ReadWindow
from bftfs.fs.files.writelog import WriteLog

#: Flush a file once its dirty blocks exceed this many bytes.
DEFAULT_DIRTY_LIMIT = 8 * 1024 * 1024
#: Clean blocks kept per file (least recently used go first).
DEFAULT_CLEAN_LIMIT = 32 * 1024 * 1024
#: Bytes read ahead of a sequential reader at first (the window doubles with each
#: sequential read up to ``DEFAULT_READAHEAD_MAX``; a random read starts it again).
DEFAULT_READAHEAD = 1024 * 1024
#: The read-ahead window's largest size: this many bytes of blocks are fetched in the
#: background ahead of a sequential reader (issue 19: a 1 MiB window awaited inside each
#: read kept two blocks in flight; 8 MiB keeps the nodes' batches full).
DEFAULT_READAHEAD_MAX = 8 * 1024 * 1024
#: The read-ahead window's largest size in blocks: a file of small blocks fills its 8 MiB
#: window with thousands of reads, more than the batcher lets one node have unanswered
#: (``bftfs.rw.batch.MAX_PENDING``); 128 blocks are eight groups, 8 MiB at 64 KiB blocks.
READAHEAD_MAX_BLOCKS = 128
#: Blocks of one background fetch (one task, its reads started together, so the batcher
#: puts them into one frame per node).
PREFETCH_GROUP = 16
#: Buffered bytes (dirty blocks and write log) of a sequentially written file at which a
#: ``write`` waits for the background flush (write-behind's backpressure).
DEFAULT_BEHIND_LIMIT = 32 * 1024 * 1024
#: Reservation (``alloc``) given to a new or emptied file: small files need no ``fs.reserve``.
INITIAL_RESERVE = 1024 * 1024
#: A file whose first flush of blocks carries at least this many bytes written sequentially
#: from offset 0 takes the cluster's big block size (``[cluster] big_block_size``; docs/fs.md,
#: "Per-file block size").  The write-behind flushes a sequential writer every
#: ``DEFAULT_DIRTY_LIMIT`` (8 MiB), so a streaming copy always passes it, while files that
#: end below it (most files) keep the small blocks that make small rewrites cheap.
BIG_BLOCK_THRESHOLD = 1024 * 1024


def file_block_size(st: dict[str, Any], default: int) -> int:
    """The block size of the file whose stat is ``st``: the one its attribute object records
    (``bs``), else the cluster's ``default`` (files from before per-file sizes)."""
    bs = st.get("bs")
    return int(bs) if bs else default


def sequential_end(log: Iterable[tuple[int, bytes, bool]], start: int) -> int:
    """Where the buffered writes ``log`` end if they were written sequentially from
    ``start`` (each begins at or before the end of those before it: rewriting what was
    just written is still sequential, a jump forward is not); 0 if they were not."""
    pos = start
    for offset, data, _ in log:
        if offset > pos:
            return 0
        pos = max(pos, offset + len(data))
    return pos


def round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def initial_reserve(block_size: int) -> int:
    """The space a new file's data id reserves at its create (:data:`INITIAL_RESERVE`,
    whole blocks)."""
    return round_up(INITIAL_RESERVE, block_size)


def stale_ranges(st: dict[str, Any]) -> list[tuple[int, int]] | None:
    """The byte ranges a file's stat says may hold stale bytes in its blocks (its record
    ``z`` and what a write lease's holder declared, ``zl``: bftfs.fsobjects.ranges), sorted and
    joined; None for a file without the record (anything up to ``alloc`` may)."""
    z = st.get("z")
    if z is None:
        return None
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted((int(lo), int(hi)) for lo, hi in [*z, *(st.get("zl") or ())]):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def clip_ranges(ranges: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of sorted disjoint ``ranges`` inside ``[lo, hi)``."""
    return [(max(a, lo), min(b, hi)) for a, b in ranges if b > lo and a < hi]


def _gap_blocks(
    st: dict[str, Any], bs: int, valid: int, new_size: int, dirty: set[int]
) -> tuple[list[int], Iterator[int]]:
    """:meth:`OpenFile.gap_blocks` of a file at stat ``st`` with block size ``bs``, the
    servers' bytes below ``valid`` and the ``dirty`` blocks."""
    limit = min(new_size, int(st["alloc"]))
    if limit <= valid:
        return [], iter(())
    stale = stale_ranges(st)
    spans = [(valid, limit)] if stale is None else clip_ranges(stale, valid, limit)
    partial = []
    k = valid // bs
    if valid % bs and k not in dirty and spans and spans[0][0] < (k + 1) * bs:
        partial.append(k)
    return partial, _empty_gap_blocks(spans, bs, valid, dirty)


def _empty_gap_blocks(
    spans: list[tuple[int, int]], bs: int, valid: int, dirty: set[int]
) -> Iterator[int]:
    """The blocks covering ``spans`` (sorted, disjoint) that :meth:`OpenFile.gap_blocks`
    makes empty: not in ``dirty`` (the flush writes those) and holding no byte below
    ``valid``; each once, ascending.  The arguments are taken when the flush decides, as
    writes arriving while it runs must not change what it clears."""
    after = -1
    for lo, hi in spans:
        for k in range(max(lo // bs, after + 1), (hi - 1) // bs + 1):
            if k * bs >= valid and k not in dirty:
                yield k
        after = max(after, (hi - 1) // bs)


def _rekeyed_ends(
    dirty: dict[int, bytes | bytearray], clean: dict[int, bytes], old: int, bs: int
) -> dict[int, int]:
    """For :meth:`OpenFile.rekey`: the blocks of size ``bs`` covering a byte of the
    ``dirty`` blocks (keyed by ``old``), each with where its content ends: at the last
    buffered or server (``clean``) byte it holds."""
    ends: dict[int, int] = {}
    for k, buf in dirty.items():
        lo, hi = k * old, k * old + max(len(buf), 1)
        for n in range(lo // bs, (hi - 1) // bs + 1):
            ends[n] = max(ends.get(n, 0), min(hi, (n + 1) * bs))
    for k, data in clean.items():  # server bytes in a new block are kept too
        lo, hi = k * old, k * old + len(data)
        for n in range(lo // bs, (hi - 1) // bs + 1) if data else ():
            if n in ends:
                ends[n] = max(ends[n], min(hi, (n + 1) * bs))
    return ends


def reservation(need: int, current: int, bs: int) -> int:
    """The ``alloc`` to ask for when blocks up to ``need`` bytes must be writable: at least
    half again the current mark, so a growing file pays for ``fs.reserve`` only
    logarithmically often."""
    return round_up(max(need, current + current // 2, INITIAL_RESERVE), bs)


@dataclass
class OpenFile:
    """One file's cached state in this client (shared by all its open handles)."""

    ino: int
    #: The attribute object's stat as last read or produced by our own update.
    st: dict[str, Any]
    #: The size of this file's blocks, which ``dirty`` and ``clean`` are keyed by: its
    #: attribute object's ``bs``, else ``default_bs``; a file without blocks yet may
    #: change it at its first flush (``FlushEngine._decide_block_size``).
    bs: int
    #: The cluster's ``block_size``: the block size of a file that records none.
    default_bs: int = 0
    opens: int = 0
    #: The logical size (buffered writes included).
    size: int = 0
    #: Bytes below this are the servers' data; see the module docstring.
    valid: int = 0
    #: Block index -> its new content (length <= bs): a bytearray, or the bytes of a
    #: write of exactly the block (:meth:`apply_write`; :meth:`private` before a change).
    dirty: dict[int, bytes | bytearray] = field(default_factory=dict)
    #: Block index -> modification count (a flush removes only blocks it wrote unchanged).
    gen: dict[int, int] = field(default_factory=dict)
    #: Dirty blocks a running flush is sending as they are (no copy): the next change to
    #: one copies it first (:meth:`private`).
    shared: set[int] = field(default_factory=set)
    #: Dirty blocks being encoded ahead of their flush, or encoded (``fs/files/encodeahead.py``:
    #: ``Ahead`` entries); the next change to one copies it first (:meth:`private`).
    ahead: dict[int, Any] = field(default_factory=dict)
    #: Block index -> content read from the servers, clamped at ``valid``.
    clean: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    clean_bytes: int = 0
    #: mtime of the latest buffered write (or set while writing), until a flush sends it.
    mtime: int | None = None
    #: Attribute changes (``mode``, ``uid``, ``gid``, ``atime``) made while the file has
    #: buffered state: written back with its data by the next flush.
    attrs: dict[str, int] = field(default_factory=dict)
    #: Where the last read ended (sequential reads trigger read-ahead).
    last_read: int = -1
    #: The buffered writes in order, re-applied on another client's content (:meth:`rebase`).
    log: WriteLog = field(default_factory=WriteLog)
    #: ``(data id, version counter)`` of the servers' content the buffered writes were made
    #: on: a flush's updates are taken only on it (``v``), so nothing another client wrote
    #: since can be overwritten unseen.  Moves at reads of the servers' state while nothing
    #: is logged, at a :meth:`rebase`, and with our own version-checked updates.
    base: tuple[int, int] = (0, -1)
    #: Until when (client clock, ns) this client holds the file's write lease without
    #: another round: set by a create that took it, cleared by the flush that ends it.
    lease_until: int | None = None
    #: When (trio time) the query whose answer this state last adopted was asked (an open,
    #: a revalidation): an exclusive lease held without a break since then makes it the
    #: file's state (``fs/writeback/held.py``).
    adopted: float = float("-inf")
    lock: trio.Lock = field(default_factory=trio.Lock)
    #: Read-ahead (``bftfs.fs.files.fetch``), restarted by :meth:`invalidate_prefetch`.
    window: ReadWindow = field(default_factory=ReadWindow)
    #: Write-behind: where the last write ended (sequential writes flush in the
    #: background), the running background flush's end (None: none), and the error it
    #: failed with until a write, flush, fsync or close reports it.
    last_write: int = -1
    behind: trio.Event | None = None
    behind_error: BaseException | None = None
    #: Handles open when a call on another answered EIO and dropped the buffered writes
    #: (``Handles._unsent``): their next flush or fsync answers EIO once, as Linux reports
    #: a write-back error to every descriptor open at the time - what was written through
    #: them may be among what was dropped.
    dropped_for: set[int] = field(default_factory=set)

    @classmethod
    def from_stat(cls, ino: int, st: dict[str, Any], bs: int) -> OpenFile:
        """The cached state of file ``ino`` at stat ``st``; ``bs`` is the cluster's
        ``block_size`` (the file's own, if it records one, wins)."""
        f = cls(ino, st, file_block_size(st, bs), bs)
        f.reset(st)
        return f

    def reset(self, st: dict[str, Any], *, own: bool = False) -> None:
        """Adopt ``st`` as the servers' state; clean blocks survive only if nobody else
        changed the file (same version counter, or the next one when ``st`` is the answer of
        our own update) - close-to-open consistency.  An ``fs.open`` answer of an inline
        file carries the content (``i``): it becomes block 0."""
        content = st.get("i")
        if content is not None:
            st = {k: v for k, v in st.items() if k != "i"}
        expected = self.st["v"] + 1 if own else self.st["v"]
        if st["v"] not in (self.st["v"], expected) or st["d"] != self.st["d"]:
            self.drop_clean()
        # The block size follows the servers' record; a file that records none keeps the
        # one its buffered blocks are keyed by until its first flush decides it.
        bs = file_block_size(st, self.default_bs or self.bs)
        if bs != self.bs and ("bs" in st or not self.dirty):
            self.rekey(bs)
        self.st = st
        if not self.log:
            self.base = (st["d"], st["v"])
        self.valid = st["size"]
        self.size = max(st["size"], self.size) if self.dirty else st["size"]
        if content is not None:
            self.remember(0, content)

    def discard_buffered(self) -> None:
        """Forget the buffered writes and attribute changes: a call was answered EIO for
        them, which means not applied (docs/fs.md, "What EIO means").  The file is the
        servers' last known state again."""
        self.dirty.clear()
        self.gen.clear()
        self.shared.clear()
        self.ahead.clear()
        self.log.clear()
        self.mtime = None
        self.attrs.clear()
        self.invalidate_prefetch()
        self.reset(self.st)

    def rekey(self, bs: int) -> None:
        """Key the buffered blocks by another block size ``bs`` (same bytes).

        Only a file without blocks on the servers changes its block size (its first flush,
        or adopting the size another client's first flush recorded), so every server byte
        a new block spans is cached already (an inline file's content is block 0, which
        :meth:`FlushEngine._flush_once` makes dirty before deciding).  Each new block that
        covers a dirty byte becomes dirty with its whole content up to the last buffered
        or server byte it holds; clean blocks are dropped (read again under ``bs``)."""
        if bs == self.bs:
            return
        blocks: dict[int, bytes | bytearray] = {}
        for n, hi in _rekeyed_ends(self.dirty, self.clean, self.bs, bs).items():
            lo = n * bs
            hi = min(hi, max(self.size, lo))
            blocks[n] = bytearray(self.assemble_at(lo, hi - lo).ljust(hi - lo, b"\0"))
        gen = max(self.gen.values(), default=0) + 1
        self.ahead.clear()
        self.dirty = blocks
        self.gen = dict.fromkeys(blocks, gen)
        self.bs = bs
        self.drop_clean()

    def assemble_at(self, offset: int, size: int) -> bytes:
        """:meth:`assemble` without moving the read-ahead's notion of the last read."""
        last = self.last_read
        try:
            return self.assemble(offset, size)
        finally:
            self.last_read = last

    def changed_by_others(self, st: dict[str, Any]) -> bool:
        """Whether ``st`` (an answer the servers gave, not our own update's) is another
        content than the one this client's buffered writes were made on."""
        return (st["d"], st["v"]) != self.base

    def rebase(self, st: dict[str, Any]) -> list[tuple[int, bytes, bool]]:
        """Adopt ``st``, another client's version, under buffered writes: drop every
        cached and dirty block (they are of the old content) and return the write log,
        which the caller re-applies (``FlushEngine.adopt``) once the blocks those writes
        partly cover are fetched again."""
        self.dirty.clear()
        self.gen.clear()
        self.ahead.clear()
        self.drop_clean()
        self.size = 0  # reset() takes the servers' size: nothing is dirty now
        self.reset(st)
        self.base = (st["d"], st["v"])
        return list(self.log)

    def missing(self, index: int) -> bool:
        """Whether block ``index`` holds server bytes this client does not have."""
        return index not in self.dirty and index not in self.clean and index * self.bs < self.valid

    @property
    def data_id(self) -> int:
        return int(self.st["d"])

    @property
    def buffered(self) -> bool:
        """Whether a flush has anything to send (data, an mtime or attributes)."""
        return bool(self.dirty) or self.mtime is not None or bool(self.attrs)

    @property
    def dirty_bytes(self) -> int:
        """Memory the buffered writes hold: dirty blocks and the write log."""
        return len(self.dirty) * self.bs + self.log.bytes

    # Clean cache -------------------------------------------------------------------------

    def remember(self, index: int, data: bytes, limit: int = DEFAULT_CLEAN_LIMIT) -> bytes:
        """Keep a block read from the servers (clamped at ``valid``); the clamped bytes."""
        start = index * self.bs
        if start + len(data) > self.valid:
            data = data[: max(0, self.valid - start)]
        old = self.clean.pop(index, None)
        if old is not None:
            self.clean_bytes -= len(old)
        self.clean[index] = data
        self.clean_bytes += len(data)
        while self.clean_bytes > limit and self.clean:
            _, gone = self.clean.popitem(last=False)
            self.clean_bytes -= len(gone)
        return data

    def drop_clean(self) -> None:
        self.clean.clear()
        self.clean_bytes = 0
        self.invalidate_prefetch()

    def invalidate_prefetch(self) -> None:
        """Background fetches still in flight must not keep what they read (their blocks
        may be of a content this client has since changed or left); readers waiting for
        them fetch again themselves.  The window starts again from the next read."""
        self.window.restart()

    def _base(self, index: int) -> bytes | None:
        """The servers' content of a block if known without I/O (None: must be read)."""
        if index * self.bs >= self.valid:
            return b""
        got = self.clean.get(index)
        if got is not None:
            self.clean.move_to_end(index)
        return got

    # Reads -------------------------------------------------------------------------------

    def blocks_to_fetch(self, offset: int, size: int, readahead: int) -> list[int]:
        """Blocks a read of ``[offset, offset + size)`` must fetch (plus read-ahead when the
        reader is sequential), those neither dirty nor cached and below ``valid``."""
        end = min(offset + size, self.size)
        if offset >= end:
            return []
        bs = self.bs
        last = (end - 1) // bs
        if offset == self.last_read and readahead:
            last = max(last, (min(end + readahead, self.valid) - 1) // bs)
        return [
            k
            for k in range(offset // bs, last + 1)
            if k not in self.dirty and k * bs < self.valid and k not in self.clean
        ]

    def reply(self, offset: int, size: int) -> bytes | memoryview:
        """:meth:`assemble` for a FUSE read reply: a read-only view of a clean block when
        the read lies inside it, else the assembled bytes.

        pyfuse3 takes the reply through the buffer protocol and writes it to the kernel
        after :meth:`Operations.read` returns, a big one from a worker thread while other
        tasks run (``fuse/readreplies.py``, issue 63).  That is safe because a clean block
        is never changed in place (a write copies it into a dirty block first,
        :meth:`apply_write`; a truncation replaces it by a slice), and the view keeps it
        alive when the cache drops it.  That saves the copy of every byte a big file's
        reader gets (issue 34).  Dirty blocks are copied: they are changed in place, and
        an export alive by mistake would make their resizing fail."""
        end = min(offset + size, self.size)
        bs = self.bs
        if offset < end and offset // bs == (end - 1) // bs:
            k = offset // bs
            src = None if k in self.dirty else self._base(k)
            lo = offset - k * bs
            if src is not None and len(src) >= lo + end - offset:
                self.last_read = end
                return memoryview(src).toreadonly()[lo : lo + end - offset]
        return self.assemble(offset, size)

    def assemble(self, offset: int, size: int) -> bytes:
        """The bytes of ``[offset, offset + size)`` (short at end of file), from dirty and
        clean blocks; blocks neither dirty nor clean below ``valid`` must have been
        fetched (:meth:`blocks_to_fetch`) - missing ones read as zeros."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        self.last_read = end
        bs = self.bs
        first, last = offset // bs, (end - 1) // bs
        src: bytes | bytearray | None
        if first == last:  # the common small read: one slice, no copy loop
            src = self.dirty.get(first)
            if src is None:
                src = self._base(first) or b""
            lo = offset - first * bs
            # Through a view: a block opened in place is a bytearray, whose slice would be
            # copied once more by bytes().
            piece = bytes(memoryview(src)[lo : lo + end - offset])
            return piece + bytes(end - offset - len(piece))
        # The pieces as views, joined once: the answer is copied once (slicing each
        # block, filling a bytearray and turning it into bytes was three copies).
        parts: list[bytes | memoryview] = []
        for k in range(first, last + 1):
            start = k * bs
            src = self.dirty.get(k)
            if src is None:
                src = self._base(k) or b""
            lo = max(offset, start) - start
            hi = min(end, start + bs) - start
            chunk = memoryview(src)[lo:hi]
            parts.append(chunk)
            if len(chunk) < hi - lo:  # a short block or a hole reads as zeros
                parts.append(bytes(hi - lo - len(chunk)))
        return b"".join(parts)

    # Writes ------------------------------------------------------------------------------

    def blocks_to_read_for_write(self, offset: int, length: int) -> list[int]:
        """Partially written blocks whose old content must be read first."""
        bs = self.bs
        end = offset + length
        out = []
        for k in {offset // bs, (end - 1) // bs}:
            start = k * bs
            partial = offset > start or end < min(start + bs, max(self.size, end))
            if partial and k not in self.dirty and self._base(k) is None:
                out.append(k)
        return sorted(out)

    def private(self, k: int) -> bytearray | None:
        """Dirty block ``k`` to change in place: copied first if a flush is sending it
        (``shared``), so what the flush sends stays what it snapshotted, if a worker
        thread encodes it ahead (``ahead``: its encoding is then of the old bytes, and
        dropped), or if it is a whole-block write's own bytes (:meth:`apply_write`)."""
        buf = self.dirty.get(k)
        if buf is not None and (type(buf) is not bytearray or k in self.shared or k in self.ahead):
            buf = self.dirty[k] = bytearray(buf)
            self.shared.discard(k)
            self.ahead.pop(k, None)
        return buf

    def apply_write(self, offset: int, data: bytes | memoryview, now: int) -> None:
        """Buffer a write (its partial blocks' old content must be cached already)."""
        bs = self.bs
        end = offset + len(data)
        view = memoryview(data)
        for k in range(offset // bs, (end - 1) // bs + 1):
            start = k * bs
            lo = max(offset, start) - start
            hi = min(end, start + bs) - start
            chunk = view[start + lo - offset : start + hi - offset]
            buf = self.private(k)
            if buf is None:
                if lo == 0 and hi == bs:
                    # A whole block: a write of exactly it (a sequential writer's 1 MiB
                    # calls) is kept as it came, immutable bytes, shared with the write log
                    # and copied only if changed later (:meth:`private`): a copy of the
                    # block into fresh pages, with the GIL held, per block written (issue
                    # 34).  A write spanning blocks copies each one, as before.
                    if isinstance(data, bytes) and len(data) == bs:
                        self.dirty[k] = data
                    else:
                        self.dirty[k] = bytearray(chunk)
                    self.gen[k] = self.gen.get(k, 0) + 1
                    continue
                base = self._base(k) or b""
                buf = bytearray(base)
                self.dirty[k] = buf
            if len(buf) < lo:
                buf.extend(bytes(lo - len(buf)))
            _put(buf, lo, chunk)
            self.gen[k] = self.gen.get(k, 0) + 1
        self.size = max(self.size, end)
        self.mtime = now
        self.last_write = end
        if self.window.inflight or self.window.size:
            self.invalidate_prefetch()

    # Flush -------------------------------------------------------------------------------

    def gap_blocks(self, new_size: int) -> tuple[list[int], Iterator[int]]:
        """Blocks to clear before the size grows from ``valid`` to ``new_size``.

        Bytes in ``[valid, min(new_size, alloc))`` may be stale: cut off by a truncation,
        or a crashed writer's leftovers.  The attribute object records where
        (:func:`stale_ranges`); the blocks there that are not dirty are rewritten: the one
        containing ``valid`` keeps its bytes below ``valid`` (it must be read: first
        list), the others become empty (second: lazily, as the stale ranges may span
        many blocks).  A file without the record (made before it existed) clears every
        block of the gap.  Beyond ``alloc`` no block was ever written.
        """
        return _gap_blocks(self.st, self.bs, self.valid, new_size, set(self.dirty))

    def truncate_cache(self, size: int) -> None:
        """Apply a truncation to the cached blocks (after the servers took it)."""
        self.invalidate_prefetch()
        bs = self.bs
        for k in [k for k in self.dirty if k * bs >= size]:
            del self.dirty[k]
            self.ahead.pop(k, None)
        for k in [k for k in self.clean if k * bs >= size]:
            self.clean_bytes -= len(self.clean.pop(k))
        k = size // bs
        if size % bs:
            buf = self.private(k)
            if buf is not None:
                del buf[size - k * bs :]
            if k in self.clean:
                old = self.clean[k]
                self.clean[k] = old[: size - k * bs]
                self.clean_bytes -= len(old) - len(self.clean[k])
        self.size = size


def _put(buf: bytearray, lo: int, chunk: memoryview) -> None:
    """``buf[lo : lo + len(chunk)] = chunk``, growing ``buf`` if it ends inside, in one copy
    (``len(buf) >= lo``).  A bytearray's slice assignment copies any value that is not a
    bytearray into a temporary one first: a second copy, into fresh pages, of every byte
    a write of less than a block brings (issue 34)."""
    hi = lo + len(chunk)
    if hi <= len(buf):
        with memoryview(buf) as view:
            view[lo:hi] = chunk
        return
    del buf[lo:]
    buf += chunk
