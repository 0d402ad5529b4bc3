"""Sending a held-back entry change once (a mkdir, a rename: ``fs/writeback/mkdirs.py``,
``fs/writeback/renames.py``).

Several tasks may need the same held-back change on the servers before their own call: the
first sends it, the others wait for that send and go on.  The sending task itself comes
back here through its own gated steps (the mkdir of the parent it sends first, a rename's
earlier renames) and must not wait for itself.  One guard per held-back change does both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class SendOnce:
    """Who sends one held-back change, and the event the others wait on."""

    __slots__ = ("_done", "_sender")

    def __init__(self) -> None:
        self._done: trio.Event | None = None
        self._sender: trio.lowlevel.Task | None = None

    @property
    def busy(self) -> bool:
        """Whether a task is sending it now."""
        return self._done is not None

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[bool]:
        """True inside: this task sends it now (the others wait until the block ends,
        however it ends).  False: another task sent it meanwhile (waited for), or this
        task is sending it already (a nested call goes on without waiting for itself)."""
        if self._done is not None:
            if self._sender is not trio.lowlevel.current_task():
                await self._done.wait()
            yield False
            return
        self._done, self._sender = trio.Event(), trio.lowlevel.current_task()
        try:
            yield True
        finally:
            done, self._done, self._sender = self._done, None, None
            done.set()
