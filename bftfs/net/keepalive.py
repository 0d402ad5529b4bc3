"""A connection kept open to one node (``Endpoint.stay_connected``), so that its pushes
(lease recalls, lock wake-ups, a new view) reach a client that has not called it lately.

A lost connection is opened again through the endpoint's own connect (the same handshake
and the same record of unreachable nodes as calls), after a wait that doubles from
:data:`KEEP_BACKOFF_MIN` to :data:`KEEP_BACKOFF_MAX` while the node stays down, and is
never shorter than what the endpoint asks after a refusal: a node that is down costs a
connection attempt a second, not a busy loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bftfs.net.errors import TransportError

#: First and longest wait between attempts to reach a node; the longest is also how long
#: a connection must have lived to reset the wait.
KEEP_BACKOFF_MIN = 0.02
KEEP_BACKOFF_MAX = 1.0


async def keep_connected(
    connect: Callable[[], Awaitable[Any]],
    closing: Callable[[], bool],
    down_until: Callable[[], float],
) -> None:
    """Keep one node's connection open until ``closing()``: ``connect`` opens it (its
    result has ``gone``, an event set when it is lost); ``down_until`` is the earliest
    moment the endpoint tries the node again after a refusal."""
    delay = KEEP_BACKOFF_MIN
    while not closing():
        started = trio.current_time()
        try:
            conn = await connect()
        except TransportError:
            pass
        else:
            await conn.gone.wait()
            if trio.current_time() - started >= KEEP_BACKOFF_MAX:
                delay = KEEP_BACKOFF_MIN  # it lived: a fresh loss, try again soon
        if closing():
            return
        await trio.sleep_until(max(trio.current_time() + delay, down_until()))
        delay = min(delay * 2, KEEP_BACKOFF_MAX)
