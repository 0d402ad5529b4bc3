"""An open file's data to the servers: the flush engine.

A flush writes every block first (PASIS) and only then the size and mtime (Q/U), under a
write lease taken on the version the blocks were computed from; a small file's whole
content goes inline in one update.  When another client changed the file meanwhile, the
buffered writes are re-applied on its new content and the flush retried.  This is the
subtle part of the file system, kept apart from what the handles mean
(:mod:`bftfs.fs.handles`) and from truncation (:mod:`bftfs.fs.attributes`),
which use it.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import trio

from bftfs import fsobjects as obj
from bftfs.fs.caches import MetadataCache, content_version
from bftfs.fs.clients import FLUSH_ATTEMPTS, LEASE_NS, LeaseHeld, Meta, OutOfDate
from bftfs.fs.errors import Unavailable
from bftfs.fs.files import encodeahead
from bftfs.fs.files.fetch import Fetcher, Spawn
from bftfs.fs.files.openfile import BIG_BLOCK_THRESHOLD, OpenFile, reservation, sequential_end
from bftfs.fs.files.pace import Pace
from bftfs.rw.messages import block_id

#: A lease taken at create is used for a flush only with this much of it left.
LEASE_MARGIN_NS = 10 * 10**9
#: How long a background flush keeps the write lease (``fs.write``'s ``keep``): a
#: sequential writer's next flush, within ``KEPT_LEASE_NS - LEASE_MARGIN_NS``, needs no
#: ``fs.lock``; a writer that stops with the file open holds it no longer than this, less
#: than another client's flush retries for (``FLUSH_ATTEMPTS`` back-offs, about 20 s).
KEPT_LEASE_NS = 15 * 10**9
#: Failed attempts of a flush after which it claims the write lease before the next
#: (:meth:`FlushEngine._claim`): one conflict is retried as it is, a second means another
#: writer keeps changing the file.
CLAIM_AFTER = 2


def _declared(st: dict[str, Any], written: list[list[int]]) -> bool:
    """Whether a lease the client holds covers a flush that writes ``written``: a lease
    kept from the last flush (``fs.write`` with ``keep``) covers only the ranges past the
    size it declared (``zl``); a create's lease declares nothing and covers any (a dead
    first flush's blocks past the size stay, docs/fs-api.md); a file without the stale
    record (``z``) is cleared up to ``alloc`` whenever it grows."""
    declared = st.get("zl")
    if not declared or st.get("z") is None:
        return True
    size = int(st["size"])
    todo = [(max(lo, size), hi) for lo, hi in written if hi > size]
    return all(any(dlo <= lo and hi <= dhi for dlo, dhi in declared) for lo, hi in todo)


class FlushEngine:
    """Flushing an open file's buffered writes, with the part that reads into its cache
    (:attr:`fetcher`).  Given the protocol calls, the cache and the background's
    ``spawn``.  A file with a pending create is flushed only once the create is made: its
    callers see to that (:meth:`Handles._flush_file`)."""

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        *,
        readahead: int,
        readahead_max: int,
        big_bs: int,
        spawn: Spawn,
    ) -> None:
        self.meta = meta
        self.cache = cache
        self.bs = meta.bs
        self.inline = cache.inline
        self.lease_token = meta.lease_token
        #: Runs a task in the background (read-ahead, encode-ahead, write-behind, the
        #: creates' resends): ``Background.spawn``, bftfs/fs/background.py.
        self.spawn = spawn
        #: The block size of files written sequentially (0: every file has ``bs``;
        #: docs/fs.md).
        self.big_bs = big_bs
        #: Read-ahead and write-behind of big files: blocks prefetched, prefetched blocks
        #: a read used or waited for, background flushes and their failures (counted by
        #: ``fs/writeback/flush_behind.py``).
        self.streaming: Counter[str] = Counter()
        #: Encode-ahead runs one block at a time: a worker thread per filled block kept
        #: up to a dozen threads coding at once, each allocating in its own malloc arena
        #: (the daemon writing 1 GiB peaked at 785 MiB; fs/files/encodeahead.py).
        self.ahead_limit = trio.Semaphore(1)
        #: The background flushes' blocks rate and idle, which size write-behind
        #: (``fs/files/pace.py``, issue 65).
        self.pace = Pace()
        self.fetcher = Fetcher(
            meta,
            readahead=readahead,
            readahead_max=readahead_max,
            streaming=self.streaming,
            spawn=spawn,
        )

    @property
    def rw(self) -> Any:
        """The PASIS client (the one :class:`~bftfs.fs.clients.calls.Meta` holds)."""
        return self.meta.rw

    async def _update_data(self, f: OpenFile, method: str, arg: dict[str, Any]) -> None:
        """A flush's update of ``f`` (``fs.reserve``/``fs.write``), which the servers take
        only on the version ``arg`` names (``d``, ``v``).  The kernel's pages, which hold
        what was written, then follow to the new version if they were of that one."""
        self.took(f, arg, await self.meta.update([f.ino], method, arg))

    def took(self, f: OpenFile, arg: dict[str, Any], s: dict[str, Any]) -> None:
        """The servers took ``f``'s data update ``arg`` and answered its new state ``s``."""
        if self.cache.kernel_content.get(f.ino) == (arg["d"], arg["v"]):
            self.cache.kernel_content[f.ino] = content_version(s)
        if f.base == (arg["d"], arg["v"]):  # taken on our base: the new state is ours
            f.base = content_version(s)
        self.cache.own_stat(f.ino, s)

    def encode_ahead(self, f: OpenFile, k: int) -> None:
        """Seal and encode ``f``'s full dirty block ``k`` now, in the background, for the
        flush that will send it (``fs/files/encodeahead.py``)."""
        encodeahead.start(f, k, self.rw.prepare, self.spawn, self.streaming, self.ahead_limit)

    async def fetch(self, f: OpenFile, indices: list[int]) -> None:
        """Read blocks ``indices`` of ``f`` into its cache (:meth:`Fetcher.fetch`)."""
        await self.fetcher.fetch(f, indices)

    async def adopt(self, f: OpenFile, s: dict[str, Any]) -> None:
        """Take ``s`` as ``f``'s state, its buffered writes re-applied on another client's
        content (:meth:`Fetcher.adopt`)."""
        await self.fetcher.adopt(f, s)

    async def flush(self, f: OpenFile) -> None:
        """Send ``f``'s buffered writes; when another client changed the file meanwhile
        (``stale``) or is writing its blocks (``locked``), re-read, re-apply and retry
        after a growing random delay."""
        async with f.lock:
            for attempt in range(FLUSH_ATTEMPTS):
                if not f.buffered:
                    return
                try:
                    if attempt >= CLAIM_AFTER:
                        await self._claim(f)
                    await self._flush_once(f)
                    return
                except (OutOfDate, LeaseHeld):
                    self.meta.methods["flush-retries"] += 1
                    await self.meta.back_off(attempt)
                    await self.adopt(f, await self.meta.query(f.ino, "fs.open"))
                except Exception:
                    if attempt >= CLAIM_AFTER:  # its claim: others need not wait for its end
                        await self.give_up(f)
                    raise
            await self.give_up(f)
            raise Unavailable("flush: the file kept changing under other clients' writes")

    async def _claim(self, f: OpenFile) -> None:
        """Claim ``f``'s write lease on whatever version it has (``fs.lock`` with
        ``any``), then adopt that version: the flush's own ``fs.lock`` on it follows,
        and no other writer can change the file's data meanwhile.  A writer that keeps
        finding the file changed (another client appending and syncing without a pause:
        its next version always came before this one's lock) otherwise never gets a
        turn."""
        self.meta.methods["flush-claims"] += 1
        arg = {**self.lease_arg(*f.base), "any": True, "lease": LEASE_NS}
        # Not ``_update_data``: the claim was taken on the file's version, not on this
        # mount's base, whose cached blocks the adoption below must compare with.
        await self.meta.update([f.ino], "fs.lock", arg)
        await self.adopt(f, await self.meta.query(f.ino, "fs.open"))

    def lease_arg(self, d: int, v: int) -> dict[str, Any]:
        """What a data update carries: the content ``(d, v)`` it was computed on, which the
        servers require, and this client's lease token and clock."""
        return {"d": d, "v": v, "tok": self.lease_token, "now": self.meta.now()}

    async def _flush_once(self, f: OpenFile) -> None:
        start = trio.current_time()  # (the pace of a background flush: pace.py)
        if f.size <= self.inline:
            await self._flush_inline(f)
            return
        if f.st.get("inl") and 0 not in f.dirty:  # leaving inline: block 0 gets the content
            if f.missing(0):
                await self.fetch(f, [0])
            if f.st.get("inl") and 0 not in f.dirty:
                f.dirty[0] = bytearray(f.clean.get(0, b""))
                f.gen[0] = f.gen.get(0, 0) + 1
        decided = self._decide_block_size(f)
        # The log entries this flush sends are those its snapshot holds: counted here, as
        # writes may arrive during the awaits above (write-behind: the writer goes on).
        logged = len(f.log)
        # The dirty blocks as they are, shared with the file until the flush ends: a write
        # meanwhile copies the block it changes first (``OpenFile.private``), so the
        # snapshot costs no copy of a sequential writer's bytes (issue 34).
        # (Typed as bytes: nothing changes them in place from here; see ``private``.)
        snapshot = {k: (cast(bytes, buf), f.gen[k]) for k, buf in f.dirty.items()}
        f.shared.update(snapshot)
        try:
            await self._send_snapshot(f, snapshot, decided, logged, start)
        finally:
            f.shared.difference_update(snapshot)

    async def _send_snapshot(
        self,
        f: OpenFile,
        snapshot: dict[int, tuple[bytes, int]],
        decided: int,
        logged: int,
        start: float,
    ) -> None:
        """The blocks of ``snapshot`` under the write lease, then the size update."""
        bs, d = f.bs, f.data_id
        new_size, mtime = f.size, f.mtime if f.mtime is not None else self.meta.now()
        blocks = {k: v for k, (v, _) in snapshot.items()}
        # The gap's stale blocks (below ``alloc``: no reservation needed for them) are
        # cleared a chunk at a time under the lease, before the blocks with content.
        partial, empty = f.gap_blocks(new_size)
        if partial:
            await self.fetch(f, [k for k in partial if k not in f.clean])
            for k in partial:
                blocks[k] = f.clean.get(k, b"")
        need = max(new_size, (max(blocks) + 1) * bs if blocks else 0)
        # What this flush stores (not the cleared gap): declared with the lease (what a
        # dead flush may have left), and counted by the servers for st_blocks.
        written = obj.merge_extents([[k * bs, k * bs + len(v)] for k, v in blocks.items() if v])
        # The write lease, on the version the blocks were computed from (``v``; the servers
        # refuse ``stale`` if anyone changed the file since, ``locked`` while another
        # client writes its blocks), with a larger reservation when the blocks need one.
        held = f.lease_until is not None and self.meta.now() + LEASE_MARGIN_NS < f.lease_until
        held = held and _declared(f.st, written)
        f.lease_until = None  # used once: a failed attempt takes the lease again
        # A background flush (the writer goes on) keeps the lease for the next one.
        keep = f.behind is not None
        # A big block size is recorded with the lock, before any block is written under
        # it; the cluster's own size may wait for this flush's fs.write (below) when the
        # create's lease spares the lock round (a round per new block file otherwise:
        # Andrew's copy phase +13%, docs/performance.md).
        with_write = decided if decided == self.bs and held and need <= f.st["alloc"] else 0
        if need > f.st["alloc"] or not held or (decided and not with_write):
            arg = self.lease_arg(*f.base)
            arg["lease"] = LEASE_NS
            if decided:  # recorded before any block is written under it
                arg["bs"] = decided
            arg["z"] = written
            if need > f.st["alloc"]:
                arg["alloc"] = reservation(need, f.st["alloc"], bs)
            await self._update_data(f, "fs.lock", arg)
        try:
            newest = await self.meta.write_empty_blocks(d, empty, f.st.get("bt", 0))
            sent_at = trio.current_time()
            if blocks:
                written_at = await self.meta.blocks(
                    self.rw.write_blocks(
                        {block_id(d, k): v for k, v in blocks.items()},
                        after=f.st.get("bt", 0),
                        prepared=encodeahead.take(f, d, blocks, self.streaming),
                    )
                )
                newest = max(newest, *(ts.time for ts in written_at.values()))
            arg = self.lease_arg(*f.base)
            arg.update(end=new_size, mtime=mtime)
            if with_write:
                arg["bs"] = with_write
            if newest:
                arg["bt"] = newest
            if f.st.get("inl"):
                arg["blocks"] = True
            arg["w"] = written
            attrs = arg["attrs"] = dict(f.attrs)
            if keep:
                self._keep_lease(f, arg, new_size, new_size - f.st["size"])
            round_at = trio.current_time()
            await self._update_data(f, "fs.write", arg)
            if keep:  # a sequential writer's: what sizes its write-behind (pace.py)
                self.pace.flushed_at(blocks, start, sent_at, round_at)
        except Exception:
            await self.give_up(f)
            raise
        if keep:
            f.lease_until = arg["now"] + KEPT_LEASE_NS
        self.flushed(f, snapshot, mtime, attrs)
        f.log.sent(logged)

    def _keep_lease(self, f: OpenFile, arg: dict[str, Any], end: int, grown: int) -> None:
        """Ask the flush's ``fs.write`` to keep the write lease (``keep``), declaring the
        next ``2 * max(grown, bs)`` bytes past ``end`` (where a sequential writer's next
        flush lands: within it, that flush needs no ``fs.lock``; :func:`_declared`) and
        reserving them.  Declared, because a writer that dies after writing its next
        blocks leaves them past the size: the declaration then becomes the file's stale
        ranges, which whoever grows the file clears (``fsobjects/ranges.py``)."""
        ahead = end + 2 * max(grown, f.bs)
        arg["keep"] = KEPT_LEASE_NS
        arg["z"] = [[end, ahead]]
        if ahead > f.st["alloc"]:
            arg["alloc"] = reservation(ahead, f.st["alloc"], f.bs)

    def _decide_block_size(self, f: OpenFile) -> int:
        """The block size to record for ``f`` at this flush (0: none to record), with its
        buffered blocks re-keyed by it.

        Decided once, at the first flush of blocks: while the file has none on the servers
        (size 0, or its content inline) and records no ``bs``.  If the buffered writes were
        made sequentially from 0 (or from the end of the inline content) and reach
        ``BIG_BLOCK_THRESHOLD``, the file takes the big block size, else the cluster's.
        Writes are buffered under the cluster's size until then, because whether a file
        is written sequentially shows only once enough of it was written; re-keying here
        (no ``await`` before the flush's snapshot) costs one copy of the buffered bytes,
        once per file.  Recording the small size too keeps the decision from being made
        again after a truncation to zero: a file's block size never changes."""
        if not self.big_bs or "bs" in f.st:
            return 0
        if f.st["size"] != 0 and not f.st.get("inl"):
            return 0  # a file from before per-file sizes, with blocks: the cluster's
        end = sequential_end(f.log, 0) or sequential_end(f.log, f.valid)
        target = self.big_bs if end >= BIG_BLOCK_THRESHOLD else self.bs
        if any(f.missing(k) for k in range(-(-f.valid // f.bs))):
            return 0  # (cannot happen: an inline file's block 0 is dirty by now)
        f.rekey(target)
        self.streaming["big-block-files" if target != self.bs else "small-block-files"] += 1
        return target

    async def unlock(self, f: OpenFile) -> None:
        """End the write lease ``f`` holds with nothing buffered (its last close).  A
        lease kept from the last flush (its declaration ``zl``) ends completed, by an
        ``fs.write`` of the size the servers hold: nothing was written under it since, so
        its declaration is dropped instead of becoming stale ranges, which an extender
        would clear and a remover give back.  A create's lease is given up."""
        if not f.st.get("zl"):
            await self.give_up(f)
            return
        with contextlib.suppress(Exception):
            arg = self.lease_arg(*f.base)
            arg.update(end=f.st["size"], mtime=f.st["mt"], w=[])
            await self._update_data(f, "fs.write", arg)

    async def give_up(self, f: OpenFile) -> None:
        """Give the write lease up after a failed flush, so other clients need not wait
        for it to expire (best effort: if this fails too, it expires); what it declared
        becomes stale, as the flush may have written some of it."""
        with contextlib.suppress(Exception):
            s = await self.meta.update([f.ino], "fs.unlock", {"tok": self.lease_token})
            self.cache.own_stat(f.ino, s)

    async def _flush_inline(self, f: OpenFile) -> None:
        """A small file's whole content in one ``fs.write`` update (no PASIS round), taken
        only on the version it was computed from."""
        logged = len(f.log)
        f.lease_until = None  # the write ends a lease taken at create
        if f.missing(0):
            await self.fetch(f, [0])
        arg, done = self.inline_write(f, logged)
        await self._update_data(f, "fs.write", arg)
        done()

    def inline_write(self, f: OpenFile, logged: int) -> tuple[dict[str, Any], Callable[[], None]]:
        """``f``'s whole content as an inline ``fs.write`` argument (its content known
        here), and what to do once the servers took it: its buffered writes up to log
        entry ``logged`` are then clean (``fs/writeback/writemany.py`` sends several at once)."""
        content = f.assemble(0, f.size).ljust(f.size, b"\0")
        snapshot = {k: (bytes(buf), f.gen[k]) for k, buf in f.dirty.items()}
        mtime = f.mtime if f.mtime is not None else self.meta.now()
        arg = self.lease_arg(*f.base)
        arg.update(end=len(content), mtime=mtime, i=content)
        attrs = arg["attrs"] = dict(f.attrs)

        def done() -> None:
            self.flushed(f, snapshot, mtime, attrs)
            f.log.sent(logged)
            if 0 not in f.dirty:
                f.remember(0, content)

        return arg, done

    def flushed(
        self,
        f: OpenFile,
        snapshot: dict[int, tuple[bytes, int]],
        mtime: int,
        attrs: dict[str, int],
    ) -> None:
        """After a flush update: blocks and attributes sent, unchanged since, are clean
        (and read-ahead still in flight is of the content before it: dropped)."""
        f.invalidate_prefetch()
        for key, value in attrs.items():
            if f.attrs.get(key) == value:
                del f.attrs[key]
        for k, (data, g) in snapshot.items():
            if f.gen.get(k) == g and f.dirty.get(k) is not None:
                del f.dirty[k]
                encodeahead.forget(f, k)
                f.remember(k, data)
        if not f.dirty:
            f.size = f.st["size"]
            if f.mtime == mtime:
                f.mtime = None
