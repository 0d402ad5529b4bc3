"""The check a new connection passes before any request uses it, when its endpoint has one
(``Endpoint.admit``): a view tracker's (``membership/client.py``, docs/membership.md,
"Per-view keys").  The transport knows no views: it only runs the check, lets it ask the
node one request on that connection alone (to fetch or give a view), and handshakes again
when the check says the views were levelled meanwhile."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from bftfs.ids import NodeId
from bftfs.net.connection import Connection
from bftfs.net.errors import TransportError
from bftfs.net.session import Session

#: ``admit(node, session, ask)``: True to use the session, False to close it and handshake
#: again (the view just changed: fetched from the node, or given to it), or raises
#: TransportError to refuse the node; ``ask(kind, payload)`` is one request on that session.
Admit = Callable[[NodeId, Session, Callable[[str, Any], Awaitable[Any]]], Awaitable[bool]]
#: Handshakes with one node, at most, for one connection that passes.
ATTEMPTS = 3


async def admitted(
    connect: Callable[[NodeId], Awaitable[Connection]],
    node: NodeId,
    admit: Admit,
    ids: itertools.count[int],
    timeout: float,
) -> Connection:
    """A new connection to ``node`` (``connect``) that ``admit`` passed.

    Raises:
        TransportError: ``admit`` refused the node, the connection failed, or the view
            changed at every one of :data:`ATTEMPTS` handshakes.
    """
    for _ in range(ATTEMPTS):
        conn = await connect(node)

        async def ask(kind: str, payload: Any, conn: Connection = conn) -> Any:
            return await conn.ask(next(ids), kind, payload, timeout)

        try:
            passed = await admit(node, conn.session, ask)
        except BaseException:
            conn.close()
            raise
        if passed:
            return conn
        conn.close()
    raise TransportError(f"node {node}: its view changed at every handshake")
