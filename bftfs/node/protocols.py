"""The protocol modules a node loads at start-up; each exposes ``register(node)``."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bftfs.node.service import Node

log = logging.getLogger(__name__)

#: PASIS read/write blocks, then Q/U objects.
PROTOCOL_MODULES = ("bftfs.rw.node", "bftfs.qu.node")


def register_all(node: Node) -> list[str]:
    """Register every available protocol's handlers with ``node``; the names loaded.

    A module that does not exist yet is skipped (the protocols land one issue at a time);
    any other import error is a bug and propagates.
    """
    loaded = []
    for name in PROTOCOL_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # Missing module or missing parent package: that protocol is not built yet.
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise
            continue
        mod.register(node)
        loaded.append(name)
    return loaded
