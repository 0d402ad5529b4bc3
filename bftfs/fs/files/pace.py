"""Write-behind sized from the measured round trip and bandwidth (issue 65).

A sequential writer's data goes in background flushes (``fs/writeback/flush_behind.py``):
each sends its blocks (PASIS, the bulk of the bytes), then the size (``fs.write``, a Q/U
round).  Between the last block of one flush and the first of the next the links idle for
``c``: the last frame's acknowledgement coming back, the ``fs.write`` round, the next
flush's start (a lock round, encoding what was not encoded ahead) and its first frame
travelling out.  With a
window of ``W`` buffered data bytes split over two flushes per cycle, the links are busy
``W / (W + 2 c R)`` of the time, ``R`` the bandwidth the blocks get (docs/wan.md, "Where
the write lost").  A fixed bound is right for one network only: on a LAN ``c`` is a
millisecond and 16 MiB is plenty; at 25 ms one-way and 50 Mbit/s a link (``c`` 0.2-0.3
s on a loaded machine, ``R`` 18.7 MB/s) it kept the links busy 0.6 of the time.

So the bound is measured: :class:`Pace` follows, over the background flushes, the blocks'
rate and the idle each flush leaves (its start before the first block, its update round
twice), and :func:`behind_window` asks for the ``W`` that keeps the links busy
:data:`TARGET` of the time, never below the configured bound (the floor:
what a LAN gets, as before) nor above ``behind_max`` (the memory the mount may hold per
file).  Only how much is buffered changes; every flush is the same protocol as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from dataclasses import dataclass

import trio

#: The largest write-behind bound the measured sizing may give a file, in buffered bytes
#: as ``OpenFile.dirty_bytes`` counts them (a sequential writer's dirty block and its
#: write-log entry: twice its data).  128 MiB is 64 MiB of data; with the fragments its
#: full blocks are encoded into ahead of their flush (``encodeahead.py``, twice the
#: data) a writing file holds at most about 200 MiB more than at the floor's 32 MiB.
DEFAULT_BEHIND_MAX = 128 * 1024 * 1024
#: The fraction of a flush cycle the links should carry blocks (the issue's bar is 0.8
#: of the links' bandwidth; the rest of the gap is the machine's).
TARGET = 0.9
#: Flushes between two links' idle spells per write-behind cycle (the window is shared by
#: the flush in flight and the one the writer fills meanwhile).
FLUSHES_PER_CYCLE = 2
#: The update rounds in a flush's idle ``c`` besides its start: the last acknowledgement
#: and the next flush's first frame (one round between them), and the ``fs.write`` round.
ROUNDS_IDLE = 2
#: Weight of a new flush's measure in the smoothed ones (as RFC 6298's SRTT: 1/8 would
#: take too many flushes to settle on a 200 MiB file; 1/4 does within a few).
ALPHA = 0.25
#: Buffered bytes counted per data byte (block and log: ``OpenFile.dirty_bytes``).
COUNTED = 2


def behind_window(
    rate: float, idle_s: float, floor: int, ceiling: int, target: float = TARGET
) -> int:
    """The write-behind bound (buffered bytes, counted as ``OpenFile.dirty_bytes`` counts)
    that keeps the links carrying blocks ``target`` of the time, given the blocks' ``rate``
    (bytes/s) and a flush's idle ``idle_s`` (s: :meth:`Pace.flushed`) measured on the
    background flushes; ``floor`` before any measure and at least, ``ceiling`` at most
    (``ceiling`` below ``floor``: the floor).

    ``W / (W + F c R) >= target`` gives ``W >= F c R target / (1 - target)`` bytes of
    data (``F``: :data:`FLUSHES_PER_CYCLE`, ``c``: ``idle_s``).
    """
    if rate <= 0 or idle_s <= 0 or not 0 < target < 1:
        return floor
    data = FLUSHES_PER_CYCLE * idle_s * rate * target / (1 - target)
    return int(min(max(floor, COUNTED * data), max(floor, ceiling)))


@dataclass
class Pace:
    """The blocks' rate and the update round, smoothed over the mount's background flushes
    (the links are the mount's, not a file's): what :func:`behind_window` sizes from."""

    #: Bytes per second of the blocks' writes (0: not measured yet).
    rate: float = 0.0
    #: Seconds a flush leaves the links idle (0: not measured yet).
    idle_s: float = 0.0
    flushes: int = 0
    #: The most the sizing may raise the bound to for a file (the mount's ``behind_max``;
    #: 0: never above the floor).
    ceiling: int = 0

    def flushed(self, nbytes: int, before_s: float, blocks_s: float, round_s: float) -> None:
        """A background flush spent ``before_s`` seconds before its first block (a lock
        round, encoding what was not encoded ahead), wrote ``nbytes`` of blocks in
        ``blocks_s`` and sent its ``fs.write`` in ``round_s``.  Its idle is
        ``before_s + ROUNDS_IDLE * round_s``: the blocks' time holds one round besides
        the bytes (the first frame out, the last acknowledgement back), which the rate
        leaves out (at most half the blocks' time: a rate cannot be told apart from a
        round on a flush of one wave)."""
        if nbytes <= 0 or blocks_s <= 0 or round_s <= 0:
            return
        rate = nbytes / max(blocks_s - round_s, blocks_s / 2)
        idle = max(before_s, 0.0) + ROUNDS_IDLE * round_s
        if not self.flushes:
            self.rate, self.idle_s = rate, idle
        else:
            self.rate += ALPHA * (rate - self.rate)
            self.idle_s += ALPHA * (idle - self.idle_s)
        self.flushes += 1

    def flushed_at(
        self, blocks: Mapping[int, Sized], start: float, sent_at: float, round_at: float
    ) -> None:
        """:meth:`flushed`, from a flush's trio times: begun at ``start``, its ``blocks``
        sent from ``sent_at``, its ``fs.write`` from ``round_at``, answered now."""
        nbytes = sum(len(v) for v in blocks.values())
        now = trio.current_time()
        self.flushed(nbytes, sent_at - start, round_at - sent_at, now - round_at)

    def limit(self, floor: int, ceiling: int | None = None) -> int:
        """The write-behind bound now (:func:`behind_window`; ``ceiling`` None: the
        mount's, :attr:`ceiling`)."""
        return behind_window(
            self.rate, self.idle_s, floor, self.ceiling if ceiling is None else ceiling
        )
