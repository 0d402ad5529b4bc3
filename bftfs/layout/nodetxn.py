"""What a node of a cluster of groups serves for the cross-group commit (issue 66,
docs/layout.md "Operations across groups"): the ``txn`` object type under the keys of the
layout it holds, whose participants' updates are the node's own object types and the
halves of operations split across groups (``fsobjects/halves.py``), which are served to
no client's own call."""

from __future__ import annotations

from collections.abc import Sequence

from bftfs.fsobjects.halves import FSX
from bftfs.fsobjects.txnmethods import make_txn_type
from bftfs.layout.model import Layout
from bftfs.layout.txn import group_keys
from bftfs.qu.objects import ObjectType, Registry


def txn_type(layout: Layout, types: Sequence[ObjectType]) -> ObjectType:
    """The ``txn`` type of a node holding ``layout`` and serving ``types``: a participant's
    update is one of ``types`` or a half (``fsx``), run only inside ``txn.prepare``."""
    return make_txn_type(Registry([*types, FSX]), group_keys(layout))
