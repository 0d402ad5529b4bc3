"""Byzantine answers to FaB history reads (issue 39): node wrappers for ``fab.versions``
(``bftfs/fab/pastclient.py``), each lie told of every page the node answers, first pages
(``[complete, versions, more]``) and continuations after a cursor (``[versions, more]``).

=====================  ==================================================================
behaviour              lie
=====================  ==================================================================
``forge``              the true slots, every other version's state with one byte changed
                       and the others dated an hour earlier
``truncate``           a history cut short and claimed whole: a first page without its
                       older half, said complete with nothing more; a continuation
                       without its newer half, with nothing more
``older-start``        an incomplete first page reaching further back than the truth:
                       up to three made-up versions (states altered, earlier times) at
                       free slots before the true first version
=====================  ==================================================================

Each is well formed (slots increasing inside the cursor and the cut), so the client's
checks do not filter it: only the ``f + 1`` rule stands between it and the reader.  The
profiles ``fab-forge-history``, ``fab-truncate-history`` and ``fab-older-history``
(:mod:`bftfs.testing.byzantine.profiles`) put one on a real node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bftfs.testing.byzantine import NodeWrapper

KIND = "fab.versions"
HOUR_NS = 3600 * 10**9

#: ``lie(page, after)``: a page (first when ``after`` is None) as the liar tells it.
Lie = Callable[[list[Any], Any], list[Any]]


def _altered(state: bytes | None) -> bytes | None:
    return None if not state else bytes([state[0] ^ 1]) + state[1:]


def _forge_entries(entries: list[list[Any]]) -> list[list[Any]]:
    out = []
    for i, (slot, t, client, state, thinned) in enumerate(entries):
        if i % 2 == 0 and state is not None:
            state = _altered(state)
        else:
            t -= HOUR_NS
        out.append([slot, t, client, state, thinned])
    return out


def _forge(page: list[Any], after: Any) -> list[Any]:
    if after is None:
        complete, entries, more = page
        return [complete, _forge_entries(entries), more]
    entries, more = page
    return [_forge_entries(entries), more]


def _truncate(page: list[Any], after: Any) -> list[Any]:
    if after is None:
        _, entries, _ = page
        return [True, entries[len(entries) // 2 :], False]
    entries, _ = page
    return [entries[: len(entries) // 2], False]


def _older_start(page: list[Any], after: Any) -> list[Any]:
    if after is not None:
        return page
    _, entries, more = page
    if not entries:
        return page
    slot, t, client, state, _ = entries[0]
    made = [
        [s, t - (slot - s) * 10**9, client, _altered(state), False]
        for s in range(max(0, slot - 3), slot)
    ]
    return [False, made + entries, more]


def _on_pages(lie: Lie) -> NodeWrapper:
    """``lie`` told of each page of a ``fab.versions`` answer."""

    async def wrapper(ctx: Any, payload: Any, honest: Any) -> Any:
        got = await honest(ctx, payload)
        if not (isinstance(got, list) and got and got[0] == "ok"):
            return got
        afters = payload[2] if len(payload) == 3 else [None] * len(payload[0])
        pages = [None if p is None else lie(p, a) for p, a in zip(got[1], afters, strict=True)]
        return ["ok", pages]

    return wrapper


#: Behaviour name -> the ``fab.versions`` wrapper.
BEHAVIOURS: dict[str, NodeWrapper] = {
    "forge": _on_pages(_forge),
    "truncate": _on_pages(_truncate),
    "older-start": _on_pages(_older_start),
}
