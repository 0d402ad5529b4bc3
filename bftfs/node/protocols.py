"""The protocol servers a node runs, registered explicitly, with the object types it
serves: the PASIS block store (``rw_server``) and Q/U objects (``qu_server``) for the file
system's object types.  The Q/U test types (``counter``, ``kv``) are served only when asked
for (``bftfs node --test-objects``, the in-process test cluster): production nodes run
exactly the file system's methods."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bftfs.fsobjects import OBJECT_TYPES as FS_TYPES
from bftfs.node import qu_server, rw_server
from bftfs.qu.objects import ObjectType
from bftfs.qu.testobjects import OBJECT_TYPES as TEST_TYPES

if TYPE_CHECKING:
    from bftfs.node.service import Node

#: What a node serves by default, and with the test types too.
PRODUCTION_TYPES: tuple[ObjectType, ...] = tuple(FS_TYPES)
WITH_TEST_TYPES: tuple[ObjectType, ...] = (*TEST_TYPES, *FS_TYPES)


def register_all(node: Node, object_types: Sequence[ObjectType] | None = None) -> list[str]:
    """Register both protocols' handlers with ``node``; the servers' names."""
    rw_server.register(node)
    qu_server.register(
        node, object_types=PRODUCTION_TYPES if object_types is None else object_types
    )
    return ["rw", "qu"]
