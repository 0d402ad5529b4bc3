"""Byzantine answers to history reads (issues 17 and 31): node wrappers for ``qu.versions``
(a server's conditioned-on chain, ``bftfs/qu/past.py``) and ``qu.states``.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bftfs.testing.byzantine import NodeWrapper

KIND_VERSIONS = "qu.versions"
KIND_STATES = "qu.states"
#: The history request kinds these behaviours answer.
KINDS = (KIND_VERSIONS, KIND_STATES)
#: The time ``misdate`` gives: 1 ns after the epoch (0 means "no time" on the wire and
#: would not be counted).
MISDATED_NS = 1
TEN_YEARS_NS = 10 * 365 * 86400 * 10**9


async def misdate(ctx: Any, payload: Any, handler: Any) -> Any:
    """A true chain page whose every version is dated 1970."""
    page = await handler(ctx, payload)
    return [[lt, co, digest, MISDATED_NS] for lt, co, digest, _ in page]


async def misdate_old(ctx: Any, payload: Any, handler: Any) -> Any:
    """A true chain page whose versions after the first (the one asked) are dated 1970."""
    page = await handler(ctx, payload)
    return [
        [lt, co, digest, stored if i == 0 else MISDATED_NS]
        for i, (lt, co, digest, stored) in enumerate(page)
    ]


async def date_ahead(ctx: Any, payload: Any, handler: Any) -> Any:
    """A true chain page whose every version is dated ten years ahead."""
    page = await handler(ctx, payload)
    return [[lt, co, digest, stored + TEN_YEARS_NS] for lt, co, digest, stored in page]


async def forge_chain(ctx: Any, payload: Any, handler: Any) -> Any:
    """A chain page with every other entry's digest forged and every time ten years ahead;
    where the digest is left true, the node is a host of the version and is asked for its
    state, which :func:`forge_states` alters."""
    page = await handler(ctx, payload)
    out = []
    for i, (lt, co, digest, stored) in enumerate(page):
        if i % 2 == 0 and digest is not None:
            digest = hashlib.blake2b(b"forged" + lt, digest_size=32).digest()
        out.append([lt, co, digest, stored + TEN_YEARS_NS])
    return out


async def empty_chain(ctx: Any, payload: Any, handler: Any) -> Any:
    """No versions."""
    return []


async def forge_states(ctx: Any, payload: Any, handler: Any) -> Any:
    """States with one byte changed (``qu.states``): a reader must check the digest."""
    states = await handler(ctx, payload)
    return [None if s is None or not s else bytes([s[0] ^ 1]) + s[1:] for s in states]


#: Behaviour name -> ``{kind: wrapper}``.
BEHAVIOURS: dict[str, dict[str, NodeWrapper]] = {
    "misdate": {KIND_VERSIONS: misdate},
    "misdate-old": {KIND_VERSIONS: misdate_old},
    "date-ahead": {KIND_VERSIONS: date_ahead},
    "forge-chain": {KIND_VERSIONS: forge_chain},
    "empty-chain": {KIND_VERSIONS: empty_chain},
    "forge-states": {KIND_STATES: forge_states},
}
