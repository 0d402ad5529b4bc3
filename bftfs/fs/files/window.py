"""A sequential reader's read-ahead window over one open file (state only; the fetches
that fill it are :meth:`bftfs.fs.files.fetch.Fetcher.read_ahead`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio


@dataclass
class ReadWindow:
    """The window's current size in bytes, the next block index not yet asked for, block
    index -> the event its background fetch sets, and the epoch a fetch must still find to
    keep what it read (bumped by :meth:`restart`: a write, a flush, another version)."""

    size: int = 0
    next_block: int = 0
    inflight: dict[int, trio.Event] = field(default_factory=dict)
    epoch: int = 0

    def restart(self) -> None:
        """Fetches in flight keep nothing they read; the window grows again from the
        next read."""
        self.epoch += 1
        self.size = 0
        self.next_block = 0
