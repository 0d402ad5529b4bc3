"""A Byzantine node against its clients' buffers (issue 39, docs/buffers.md): it sends as
much as it can, or reads nothing at all.

Seed 002 L14-19: bounding buffers must not depend on a server's network code being
correct.  A node holds its own keys, so everything it sends opens under its sessions;
what bounds a client is its frame limit, that it handles one frame of a connection at a
time, and that it keeps nothing of a frame it does not want.

* :func:`flood_wrapper` (profile ``flood-client``): before answering a client's request it
  pushes ``FLOOD_PUSHES`` pushes of ``FLOOD_PUSH`` bytes of nonsense, each as soon as the
  client has taken the one before (as fast as the client reads), and then answers with
  nonsense instead of the reply, ``FLOOD_REPLY_WITHIN`` bytes (within the frame limit)
  and ``FLOOD_REPLY_PAST`` (past it) alternately.
* :class:`FreezeOnClientFrame` (profile ``stop-reading``): at the first frame of at least
  ``FREEZE_FRAME`` bytes from a client (a block write: pings and status polls, which are
  small, leave it running until then) the whole node process stops for
  ``FROZEN_SECONDS``: its kernel takes frames until the socket's receive buffer is full,
  then the TCP window closes and the clients' frames to it stay with them.  (A node's
  hooks cannot stop reading one connection alone; stopping all of them is what a node
  whose network stack withholds acknowledgements looks like.)
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from bftfs.ids import PrincipalId, is_node
from bftfs.net.frames import DEFAULT_MAX_FRAME
from bftfs.net.server import REPLY_BACKLOG

#: Pushes sent before each answer, and their size.
FLOOD_PUSHES = 8
FLOOD_PUSH = 1 << 20
#: The sizes of the nonsense a ``flood-client`` node answers with, alternately.
FLOOD_REPLY_WITHIN = DEFAULT_MAX_FRAME - 1024
FLOOD_REPLY_PAST = DEFAULT_MAX_FRAME + 1024
#: How long a ``stop-reading`` node stands still (the test kills it before), and the
#: smallest client frame that stops it.
FROZEN_SECONDS = 120.0
FREEZE_FRAME = 16 * 1024

_PUSH_BODY = {"flood": b"\xa5" * FLOOD_PUSH}
_REPLIES = (b"\x5a" * FLOOD_REPLY_WITHIN, b"\x5a" * FLOOD_REPLY_PAST)


def flood_wrapper() -> Any:
    """The ``flood-client`` node wrapper (module docstring).  Requests from nodes are
    answered honestly, so that the other nodes' catch-up and verification go on."""
    answers = itertools.count()

    async def request(ctx: Any, payload: Any, honest: Any) -> Any:
        if is_node(ctx.sender):
            return await honest(ctx, payload)
        server = ctx.node.server
        for _ in range(FLOOD_PUSHES):
            # As fast as the client takes them: wait for room on its connections (a push
            # to a connection over the backlog mark would be dropped by the server).
            for conn in list(server._open.get(ctx.sender, ())):
                await conn.writer.wait_below(REPLY_BACKLOG)
            server.push(ctx.sender, _PUSH_BODY)
        return _REPLIES[next(answers) % 2]

    return request


class FreezeOnClientFrame:
    """``on_frame`` of the ``stop-reading`` profile: the first frame of ``FREEZE_FRAME``
    bytes or more from a client stops the process for :data:`FROZEN_SECONDS` (a blocking
    sleep: nothing of the node runs)."""

    def __init__(self) -> None:
        self.frozen = False

    def __call__(self, sender: PrincipalId | None, frame: bytes) -> bytes:
        if (
            not self.frozen
            and len(frame) >= FREEZE_FRAME
            and sender is not None
            and not is_node(sender)
        ):
            self.frozen = True
            time.sleep(FROZEN_SECONDS)
        return frame
