"""What a node of a cluster of groups serves for the cross-group commit (issue 66,
docs/layout.md "Operations across groups"): the ``txn`` object type under the keys of the
layout it holds, whose participants' updates are the node's own object types and the
halves of operations split across groups (``fsobjects/halves.py``), which are served to
no client's own call."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from bftfs.fsobjects.halves import FSX
from bftfs.fsobjects.txnmethods import make_txn_type
from bftfs.layout.model import Layout
from bftfs.layout.txn import group_keys
from bftfs.qu.objects import Method, ObjectType, Registry


def txn_type(layout: Layout, types: Sequence[ObjectType]) -> ObjectType:
    """The ``txn`` type of a node holding ``layout`` and serving ``types``: a participant's
    update is one of ``types`` or a half (``fsx``), run only inside ``txn.prepare``."""
    return make_txn_type(Registry([*types, FSX]), group_keys(layout))


class LiveTxn:
    """The ``txn`` type of a node whose layout changes while it runs: its methods run
    under the keys of the layout held now, and a transaction begun under the layout held
    just before goes on under that one's keys (its descriptor names its version, ``lv``:
    what was pending when the layout changed can still be prepared, decided and
    finished; nothing new begins under it)."""

    def __init__(self, layout: Layout, types: Sequence[ObjectType]) -> None:
        self._types = tuple(types)
        self._by_version: dict[int, dict[str, Method]] = {}
        self.version = 0
        self.switch(layout)
        current = self._by_version[self.version]
        #: The type to register: each method looks its keys up at call time.
        self.type = ObjectType(
            "txn", tuple(replace(m, fn=self._delegate(m.name)) for m in current.values())
        )

    def switch(self, layout: Layout) -> None:
        """Run under ``layout``'s keys from now on; keep the previous layout's for the
        transactions pending under it."""
        built = txn_type(layout, self._types)
        self._by_version = {v: ms for v, ms in self._by_version.items() if v == self.version}
        self._by_version[layout.version] = {m.name: m for m in built.methods}
        self.version = layout.version

    def _delegate(self, name: str) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            methods = self._by_version[self.version]
            arg = args[1] if len(args) > 1 else None
            txn = arg.get("T") if isinstance(arg, Mapping) else None
            lv = txn.get("lv") if isinstance(txn, Mapping) else None
            if (
                name != "txn.begin"
                and isinstance(lv, int)
                and lv != self.version
                and lv in self._by_version
            ):
                methods = self._by_version[lv]
            return methods[name].fn(*args)

        return call
