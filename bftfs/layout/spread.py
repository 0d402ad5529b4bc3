"""Where a new directory goes on a cluster of groups (issue 66, docs/layout.md
"Placement"): the group a keyless BLAKE2b of its parent's id and its name picks, so that
a tree's directories spread over every group (its files stay in their directory's group:
a create stays one group's update) and every client picks the same for the same name.
A directory made under the lease its parent passes on (``INHERIT``) stays in the
parent's group (``fs/names/namespace.py`` asks no spread for it): the parent's nodes
carry that lease over."""

from __future__ import annotations

import hashlib

from bftfs.layout.model import Layout


def dir_group(layout: Layout, parent: int, name: bytes) -> int:
    """The group of a new directory ``name`` in ``parent``."""
    h = hashlib.blake2b(parent.to_bytes(8, "little") + name, digest_size=8, person=b"bftfs-dir")
    return layout.groups[int.from_bytes(h.digest(), "little") % len(layout.groups)].id
