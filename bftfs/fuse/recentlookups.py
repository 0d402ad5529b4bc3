"""What each process's latest request, a lookup, found: the inode (an ``open`` right after
it came by a name found in this very call) or a missing name (a ``create`` right after it
may be answered before it is sent, write-behind, docs/fs.md).  Any other request of the
process forgets it (the handler wrapper, ``fuse/handler.py``)."""

from __future__ import annotations

import time

#: Seconds between the kernel's lookup that found a name missing and its create of the
#: name in the same call, within which the create may be answered before it is sent
#: (create write-behind, docs/fs.md); the two normally follow within a millisecond.
FRESH_MISS = 0.05
#: Processes remembered at most (then all forgotten: processes that never opened or
#: created what they looked up).
LIMIT = 4096


class RecentLookups:
    """Per process: the inode its latest lookup found, or the name it found missing."""

    def __init__(self) -> None:
        self._found: dict[int, int] = {}
        #: The name found missing, and when (``create``: write-behind only for a create of
        #: a name the servers just said is missing, not one the kernel cached as missing).
        self._missed: dict[int, tuple[int, bytes, float]] = {}

    def found(self, pid: int, ino: int) -> None:
        """Process ``pid``'s lookup found ``ino``."""
        self._found[pid] = ino
        if len(self._found) > LIMIT:
            self._found.clear()

    def missing(self, pid: int, parent: int, name: bytes) -> None:
        """Process ``pid``'s lookup found ``name`` missing in ``parent``."""
        self._missed[pid] = (parent, name, time.monotonic())
        if len(self._missed) > LIMIT:
            self._missed.clear()

    def opened(self, pid: int, ino: int) -> bool:
        """Whether process ``pid``'s latest request was the lookup that found ``ino``."""
        return self._found.get(pid) == ino

    def forget_found(self, pid: int) -> None:
        self._found.pop(pid, None)

    def fresh_miss(self, pid: int, parent: int, name: bytes) -> bool:
        """Whether process ``pid``'s latest request, just now, was the lookup that found
        ``name`` missing in ``parent`` (forgets it)."""
        missed = self._missed.pop(pid, None) if pid else None
        return (
            missed is not None
            and missed[:2] == (parent, name)
            and time.monotonic() - missed[2] < FRESH_MISS
        )

    def remembers_for(self, name: str) -> bool:
        """Whether a request ``name`` may make something here forgotten (cheap: the
        wrapper then looks for the calling process)."""
        return bool(
            (name not in ("lookup", "open") and self._found)
            or (name not in ("lookup", "create") and self._missed)
        )

    def other_request(self, name: str, pid: int) -> None:
        """Process ``pid`` sent request ``name``: what its lookup found is no longer what
        its latest request found (except for the requests that ask)."""
        if name not in ("lookup", "open") and self._found:
            self._found.pop(pid, None)
        if name not in ("lookup", "create") and self._missed:
            self._missed.pop(pid, None)
