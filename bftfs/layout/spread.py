"""Where a new directory goes on a cluster of groups (issue 66, docs/layout.md
"Placement"): the group a keyless BLAKE2b of its parent's id and its name picks, so that
a tree's directories spread over every group (its files stay in their directory's group:
a create stays one group's update) and every client picks the same for the same name."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from bftfs.fsobjects.leases import INHERIT
from bftfs.layout.model import Layout


def dir_group(layout: Layout, parent: int, name: bytes) -> int:
    """The group of a new directory ``name`` in ``parent``."""
    h = hashlib.blake2b(parent.to_bytes(8, "little") + name, digest_size=8, person=b"bftfs-dir")
    return layout.groups[int.from_bytes(h.digest(), "little") % len(layout.groups)].id


def spread_of(method: str, name: bytes, arg: Mapping[str, Any]) -> bytes | None:
    """What a new object's id is drawn by (``Meta.new_oid(spread=...)``): a directory's
    name, except for one made under the lease its parent passes on (``INHERIT``: the
    lease is carried over on the parent's group, so that directory stays there); None
    for everything else (in the parent's group)."""
    return name if method == "fs.mkdir" and INHERIT not in arg else None
