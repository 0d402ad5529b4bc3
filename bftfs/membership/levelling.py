"""Levelling a numbered, administrator-signed document between two parties: one
implementation for views (``membership/client.py``, ``node/views.py``) and layouts
(``layout/tracker.py``, ``node/layouts.py``); docs/membership.md, docs/layout.md.

Each party holds a document numbered ``number`` and says the number in its handshake
(``net/session.py``: the hello's and acknowledgement's view field; a cluster of groups has
no views, and its parties say their layout version there).  Whichever side learns the
other is behind levels them: a party behind fetches the document (``<kind>.get``) and
takes it if the administrator signed it and it is newer; a party ahead sends its own
(``<kind>.install``).  The signature, not the sender, makes a document believable, so
any party may deliver it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from bftfs.ids import NodeId
from bftfs.net.errors import RemoteError, TransportError

log = logging.getLogger(__name__)

#: ``ask(kind, payload)``: one request to the other party.
Ask = Callable[[str, Any], Awaitable[Any]]
#: ``call(node, kind, payload)``: one request to ``node`` through an endpoint.
Call = Callable[[NodeId, str, Any], Awaitable[Any]]


class Holder(Protocol):
    """Who holds a numbered document: its number, its signed bytes (None: none held, so
    nothing to send), and :meth:`take`."""

    @property
    def number(self) -> int: ...

    @property
    def blob(self) -> bytes | None: ...

    async def take(self, blob: Any) -> None:
        """Take the document in ``blob`` if validly signed and newer; never raises."""


@dataclass(frozen=True)
class Kind:
    """The requests a document is levelled by (``view``: ``view.get``, ``view.install``)."""

    name: str

    @property
    def get(self) -> str:
        return f"{self.name}.get"

    @property
    def install(self) -> str:
        return f"{self.name}.install"


VIEW = Kind("view")
LAYOUT = Kind("layout")


class Unlevelled(TransportError):
    """A node claims a newer document than ours but shows none we take (a forged number,
    or a document not signed by the administrator); ``refused``: it refused to show one."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


async def level_session(holder: Holder, kind: Kind, node: NodeId, theirs: int, ask: Ask) -> str:
    """Level ``holder`` with ``node``, which said ``theirs`` in a new session's handshake,
    over that session (``ask``): ``"level"`` (nothing to do), ``"fetched"`` (we took its
    newer document: handshake again) or ``"sent"`` (it was behind and was given ours).

    Raises:
        Unlevelled: the node claims a newer number but does not show such a document
            (a refusal counts the same).
        TransportError: the connection failed meanwhile.
    """
    ours = holder.number
    if theirs > ours:
        try:
            await holder.take(await ask(kind.get, None))
        except RemoteError as e:
            why = f"node {node} claims {kind.name} {theirs} but refuses it: {e}"
            raise Unlevelled(why, refused=True) from e
        if holder.number < theirs:
            raise Unlevelled(f"node {node} claims {kind.name} {theirs} but shows no such one")
        return "fetched"
    blob = holder.blob
    if theirs < ours and blob is not None:
        try:
            await ask(kind.install, blob)
        except RemoteError as e:
            log.debug("node %s did not take our %s: %s", node, kind.name, e)
        return "sent"
    return "level"


class Leveller:
    """Levels ``holder`` with the nodes whose numbers it hears (a handshake's, or a
    node's push) in the background: one fetch or send per node at a time, each within
    ``timeout`` (the next handshake retries anyway)."""

    def __init__(
        self,
        holder: Holder,
        kind: Kind,
        timeout: float,
        failed: Callable[[NodeId, BaseException], None] | None = None,
    ) -> None:
        self.holder, self.kind, self.timeout = holder, kind, timeout
        #: Told each fetch that failed (the transport, or a refusal), e.g. to count it.
        self.failed = failed
        self._busy: set[Hashable] = set()

    def heard(
        self,
        spawn: Callable[..., None],
        call: Call,
        node: NodeId,
        number: int,
        key: Hashable = None,
    ) -> None:
        """``node`` (reached by ``call``) holds ``number``: fetch from it if it is ahead,
        send to it if it is behind, unless a fetch or send with it (``key``: the node by
        default) is under way.  ``spawn(fn, *args)`` runs the exchange in the background."""
        key = node if key is None else key
        if key in self._busy:
            return
        if number > self.holder.number:
            spawn(self._fetch, call, node, key)
        elif number < self.holder.number and self.holder.blob is not None:
            self.send(spawn, call, node, self.holder.blob, key)

    def send(
        self,
        spawn: Callable[..., None],
        call: Call,
        node: NodeId,
        blob: bytes,
        key: Hashable = None,
    ) -> None:
        """Send ``blob`` to ``node`` in the background (a document just taken, forwarded)."""
        spawn(self._send, call, node, node if key is None else key, blob)

    async def _fetch(self, call: Call, node: NodeId, key: Hashable) -> None:
        self._busy.add(key)
        try:
            with trio.move_on_after(self.timeout) as waited:
                await self.holder.take(await call(node, self.kind.get, None))
            if waited.cancelled_caught:
                raise TransportError(f"no answer in {self.timeout:.0f} s")
        except (TransportError, RemoteError) as e:
            if self.failed is not None:
                self.failed(node, e)
            log.debug("no %s from node %s: %s", self.kind.name, node, e)
        finally:
            self._busy.discard(key)

    async def _send(self, call: Call, node: NodeId, key: Hashable, blob: bytes) -> None:
        self._busy.add(key)
        try:
            with trio.move_on_after(self.timeout):
                await call(node, self.kind.install, blob)
        except (TransportError, RemoteError) as e:
            log.debug("node %s did not take our %s: %s", node, self.kind.name, e)
        finally:
            self._busy.discard(key)
