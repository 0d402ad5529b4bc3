"""A reader's side of a publication (issue 64; the protocol: ``fsobjects/publish.py``).

A query another client's exclusive lease refuses asks that holder to publish
(``fs.askpub``) rather than recalling its lease, and is sent again with the tokens the
request was given until the holder has published up to them; the tokens ride in the
query's mount envelope (``fs/clients/mounttag.py``), which sits below the sealing of
arguments, so they travel in :data:`TOKENS` (a context variable of the asking task) rather
than in the argument.  A holder that has not published after :data:`PUBLISH_WAIT` is
recalled as before (``Meta._recalling``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

#: Seconds a reader waits for a publication before it recalls the lease: a correct
#: holder publishes within its pace and a few rounds (``fs/leases/publish.py``).
PUBLISH_WAIT = 2.0

#: The tokens the current task's queries read with (object -> token; None: none).
TOKENS: ContextVar[dict[int, int] | None] = ContextVar("publication_tokens", default=None)

#: ``QUClient.update`` (the objects, the method, the argument).
Update = Callable[[list[int], str, Any], Awaitable[Any]]


async def ask_publication(update: Update, objects: list[int], lt: int) -> dict[int, int]:
    """Ask the exclusive holders of ``objects`` to publish: the tokens of those another
    client holds exclusively (``{}``: none does any more, the query may go at once)."""
    answer = await update(objects, "fs.askpub", {"lt": lt})
    tokens: dict[int, int] = {}
    for item in answer if isinstance(answer, list) else ():
        if (
            isinstance(item, list)
            and len(item) == 3
            and isinstance(item[0], int)
            and isinstance(item[2], int)
        ):
            tokens[item[0]] = item[2]
    return tokens


@contextlib.contextmanager
def reading_with(tokens: dict[int, int] | None) -> Iterator[None]:
    """The current task's queries carry ``tokens`` inside this block."""
    reset = TOKENS.set(tokens or None)
    try:
        yield
    finally:
        TOKENS.reset(reset)
