"""Byzantine node profiles: a real node process that lies, for fault-tolerance tests.

``bftfs node --byzantine PROFILE`` runs an otherwise normal node whose answers are
rewritten by the named profile, built from the same behaviours the in-process tests use
(:mod:`bftfs.testing.byzantine.qu`, :mod:`bftfs.testing.byzantine.rw`).  The profiles are
what the papers promise to survive (up to ``b`` such nodes); they are never enabled unless
asked for on the command line.

========================  ===============================================================
profile                   behaviour
========================  ===============================================================
``corrupt-fragments``     PASIS ``corrupt-fragment``: every fragment the node serves has
                          one byte flipped (its cross checksum no longer matches: readers
                          must notice and use the other nodes)
``reject-everything``     Q/U ``reject_everything`` for every request kind: each is refused
                          with an error
========================  ===============================================================
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from bftfs.ids import PrincipalId
from bftfs.testing.byzantine import qu, rw

if TYPE_CHECKING:
    from bftfs.config import ClusterConfig
    from bftfs.testing.byzantine import NodeWrapper


class ByzantineProfile:
    """Implements the node's ``FaultHooks`` with handler overrides and nothing else."""

    def __init__(
        self, overrides: dict[str, NodeWrapper], default: NodeWrapper | None = None
    ) -> None:
        self.overrides = overrides
        self.default = default

    def on_frame(self, sender: PrincipalId | None, frame: bytes) -> bytes:
        return frame

    def plan(self, sender: PrincipalId) -> list[float]:
        return [0.0]

    def drop_reply(self, sender: PrincipalId) -> bool:
        return False

    def handler(self, kind: str) -> NodeWrapper | None:
        if kind in ("ping", "stats"):
            return None  # stay visible in `bftfs status`
        return self.overrides.get(kind, self.default)


def _corrupt_fragments(config: ClusterConfig, node: int) -> ByzantineProfile:
    return ByzantineProfile(rw.corrupt_fragment(config, node, random.Random(node)))


def _reject_everything(config: ClusterConfig, node: int) -> ByzantineProfile:
    # The kind only matters to behaviours that look at it; this one refuses them all.
    return ByzantineProfile({}, default=qu.on_node(qu.reject_everything, "*"))


#: Profile builders by name: ``builder(config, node id)``.
PROFILES: dict[str, Callable[[ClusterConfig, int], ByzantineProfile]] = {
    "corrupt-fragments": _corrupt_fragments,
    "reject-everything": _reject_everything,
}


def profile(name: str, config: ClusterConfig, node: int) -> ByzantineProfile:
    """The profile called ``name`` for node ``node`` (its id) of ``config``.

    Raises:
        KeyError: no such profile (the message names the known ones).
    """
    try:
        build = PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown Byzantine profile {name!r}; known: {sorted(PROFILES)}") from None
    return build(config, node)
