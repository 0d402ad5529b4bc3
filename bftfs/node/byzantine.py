"""Byzantine node profiles: a real node process that lies, for fault-tolerance tests.

``bftfs node --byzantine PROFILE`` runs an otherwise normal node whose answers are
corrupted by the named profile.  The profiles are what the papers promise to survive
(up to ``b`` such nodes); they are never enabled unless asked for on the command line.

========================  ===============================================================
profile                   behaviour
========================  ===============================================================
``corrupt-fragments``     every PASIS fragment the node serves has one byte flipped (its
                          cross checksum no longer matches: readers must notice and use
                          the other nodes)
``reject-everything``     every request is refused with an error
========================  ===============================================================
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bftfs.ids import PrincipalId

if TYPE_CHECKING:
    from bftfs.node.service import Handler, RequestContext

Wrapper = Callable[["RequestContext", Any, "Handler"], Awaitable[Any]]

#: PASIS read kinds (kept here as strings: the node does not import protocol modules).
_READ_KINDS = ("rw.read_latest", "rw.read_prev")


async def _corrupt_fragment(ctx: RequestContext, payload: Any, honest: Handler) -> Any:
    reply = await honest(ctx, payload)
    if isinstance(reply, dict) and isinstance(reply.get("f"), bytes) and reply["f"]:
        frag = bytearray(reply["f"])
        frag[len(frag) // 2] ^= 0xFF
        reply = dict(reply, f=bytes(frag))
    return reply


async def _reject(ctx: RequestContext, payload: Any, honest: Handler) -> Any:
    from bftfs.net.server import HandlerError

    raise HandlerError("refused", "this node refuses everything (Byzantine profile)")


class ByzantineProfile:
    """Implements the node's ``FaultHooks`` with handler overrides and nothing else."""

    def __init__(self, overrides: dict[str, Wrapper], default: Wrapper | None = None) -> None:
        self.overrides = overrides
        self.default = default

    def on_frame(self, sender: PrincipalId | None, frame: bytes) -> bytes:
        return frame

    def plan(self, sender: PrincipalId) -> list[float]:
        return [0.0]

    def drop_reply(self, sender: PrincipalId) -> bool:
        return False

    def handler(self, kind: str) -> Wrapper | None:
        if kind in ("ping", "stats"):
            return None  # stay visible in `bftfs status`
        return self.overrides.get(kind, self.default)


PROFILES: dict[str, Callable[[], ByzantineProfile]] = {
    "corrupt-fragments": lambda: ByzantineProfile(dict.fromkeys(_READ_KINDS, _corrupt_fragment)),
    "reject-everything": lambda: ByzantineProfile({}, default=_reject),
}


def profile(name: str) -> ByzantineProfile:
    """The profile called ``name``. Raises KeyError naming the known ones."""
    try:
        return PROFILES[name]()
    except KeyError:
        raise KeyError(f"unknown Byzantine profile {name!r}; known: {sorted(PROFILES)}") from None
