"""An open file's write log: its buffered writes in order, until a flush sends them."""

from __future__ import annotations

from collections.abc import Iterator


class WriteLog:
    """The buffered writes of one file in order, ``(offset, bytes, appended)``, until a
    flush sends them: when another client changed the file meanwhile, the flush re-applies
    them on the servers' new content (:meth:`OpenFile.rebase`) - byte ranges, not whole
    blocks, so bytes the other client wrote in the same blocks are kept, and appended
    records move to the new end of file instead of overwriting what the other client
    appended."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, bytes, bool]] = []
        #: The bytes the entries hold (memory: ``OpenFile.dirty_bytes``).
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[tuple[int, bytes, bool]]:
        return iter(self.entries)

    def record(self, offset: int, data: bytes, appended: bool) -> None:
        """Remember a buffered write for a possible :meth:`OpenFile.rebase`."""
        self.entries.append((offset, bytes(data), appended))
        self.bytes += len(data)

    def sent(self, count: int) -> None:
        """The first ``count`` logged writes reached the servers (a flush succeeded)."""
        for _, data, _ in self.entries[:count]:
            self.bytes -= len(data)
        del self.entries[:count]

    def clear(self) -> None:
        """Forget every logged write (they were dropped: answered EIO)."""
        self.entries.clear()
        self.bytes = 0
