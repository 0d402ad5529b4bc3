"""Byzantine answers to history reads (issues 17 and 31): node wrappers for ``qu.versions``
(a server's conditioned-on chain, ``bftfs/qu/past.py``), ``qu.states`` and ``qu.chains``
(both for many objects at once, ``bftfs/qu/pastmany.py``: each lie told of every page and
offered state).

=================  =====================================================================
behaviour          lie
=================  =====================================================================
``misdate``        a true chain, every version dated 1970 (``stored_ns`` 1)
``misdate-old``    a true chain, every version but the newest asked dated 1970: the old
                   versions retention may have left at only ``b + 1`` nodes
``date-ahead``     a true chain, every version dated ten years ahead
``forge-chain``    every other version's digest forged, every time ten years ahead
``empty-chain``    no versions at all (as if it kept none)
``forge-states``   every state it hands out with one byte changed
=================  =====================================================================

A reader must believe a digest or a link only when ``b + 1`` nodes report it, a time only
when ``2b + 1`` give one, and a state only when it hashes to the agreed digest.  The
profiles ``lie-about-history``, ``withhold-history`` and ``misdate-history``
(:mod:`bftfs.testing.byzantine.profiles`) and the campaign's switching nodes
(:mod:`bftfs.testing.byzantine.switching`) are built from these.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bftfs.testing.byzantine import NodeWrapper

KIND_VERSIONS = "qu.versions"
KIND_STATES = "qu.states"
KIND_CHAINS = "qu.chains"
#: The history request kinds these behaviours answer.
KINDS = (KIND_VERSIONS, KIND_STATES, KIND_CHAINS)
#: The time ``misdate`` gives: 1 ns after the epoch (0 means "no time" on the wire and
#: would not be counted).
MISDATED_NS = 1
TEN_YEARS_NS = 10 * 365 * 86400 * 10**9


Page = list[list[Any]]


def _misdate(page: Page) -> Page:
    return [[lt, co, digest, MISDATED_NS] for lt, co, digest, _ in page]


def _misdate_old(page: Page) -> Page:
    return [
        [lt, co, digest, stored if i == 0 else MISDATED_NS]
        for i, (lt, co, digest, stored) in enumerate(page)
    ]


def _date_ahead(page: Page) -> Page:
    return [[lt, co, digest, stored + TEN_YEARS_NS] for lt, co, digest, stored in page]


def _forge_chain(page: Page) -> Page:
    out = []
    for i, (lt, co, digest, stored) in enumerate(page):
        if i % 2 == 0 and digest is not None:
            digest = hashlib.blake2b(b"forged" + lt, digest_size=32).digest()
        out.append([lt, co, digest, stored + TEN_YEARS_NS])
    return out


def _empty_chain(page: Page) -> Page:
    return []


def _forge(states: list[Any]) -> list[Any]:
    return [None if s is None or not s else bytes([s[0] ^ 1]) + s[1:] for s in states]


def _on_pages(lie: Callable[[Page], Page]) -> NodeWrapper:
    """``lie`` told of each page of a ``qu.versions`` reply (one page)."""

    async def wrapper(ctx: Any, payload: Any, handler: Any) -> Any:
        return lie(await handler(ctx, payload))

    wrapper.__doc__ = lie.__doc__
    return wrapper


def _on_chains(
    lie: Callable[[Page], Page], states: Callable[[list[Any]], list[Any]]
) -> NodeWrapper:
    """``lie`` told of each object's page of a ``qu.chains`` reply, ``states`` of the
    states it offers (one per page entry, cut or padded to the page's new length)."""

    async def wrapper(ctx: Any, payload: Any, handler: Any) -> Any:
        out = []
        for page, offered in await handler(ctx, payload):
            page = lie(page)
            offered = states(offered)[: len(page)]
            out.append([page, offered + [None] * (len(page) - len(offered))])
        return out

    return wrapper


#: A true chain page whose every version is dated 1970.
misdate = _on_pages(_misdate)
#: A true chain page whose versions after the first (the one asked) are dated 1970.
misdate_old = _on_pages(_misdate_old)
#: A true chain page whose every version is dated ten years ahead.
date_ahead = _on_pages(_date_ahead)
#: A chain page with every other entry's digest forged and every time ten years ahead;
#: where the digest is left true, the node is a host of the version and is asked for its
#: state, which :func:`forge_states` alters.
forge_chain = _on_pages(_forge_chain)
#: No versions.
empty_chain = _on_pages(_empty_chain)


async def forge_states(ctx: Any, payload: Any, handler: Any) -> Any:
    """States with one byte changed (``qu.states``): a reader must check the digest."""
    return _forge(await handler(ctx, payload))


def _same(states: list[Any]) -> list[Any]:
    return states


#: The same lies in ``qu.chains`` replies (many objects' pages and offered states).
chains_misdate = _on_chains(_misdate, _same)
chains_misdate_old = _on_chains(_misdate_old, _same)
chains_date_ahead = _on_chains(_date_ahead, _same)
chains_forge_chain = _on_chains(_forge_chain, _forge)
chains_empty_chain = _on_chains(_empty_chain, _same)
chains_forge_states = _on_chains(lambda page: page, _forge)


#: Behaviour name -> ``{kind: wrapper}``.
BEHAVIOURS: dict[str, dict[str, NodeWrapper]] = {
    "misdate": {KIND_VERSIONS: misdate, KIND_CHAINS: chains_misdate},
    "misdate-old": {KIND_VERSIONS: misdate_old, KIND_CHAINS: chains_misdate_old},
    "date-ahead": {KIND_VERSIONS: date_ahead, KIND_CHAINS: chains_date_ahead},
    "forge-chain": {KIND_VERSIONS: forge_chain, KIND_CHAINS: chains_forge_chain},
    "empty-chain": {KIND_VERSIONS: empty_chain, KIND_CHAINS: chains_empty_chain},
    "forge-states": {KIND_STATES: forge_states, KIND_CHAINS: chains_forge_states},
}
