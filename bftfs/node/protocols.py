"""The protocol servers a node runs, registered explicitly, with the object types it
serves: the PASIS block store (``rw_server``) and Q/U objects (``qu_server``) for the file
system's object types, or FaB Paxos (``fab_server``) in their place when the cluster's
``engine`` is ``"fab"``.  Other object types (the test types ``counter`` and ``kv`` of
``bftfs/testing/testobjects.py``) are served only when whoever starts the node passes them
in (``bftfs node --test-objects``, the in-process test cluster): production nodes run
exactly the file system's methods, and the node never imports the test harness.  The
Listeners registers (``docs/listeners.md``) are served by a node started with ``bftfs node
--listeners`` (both variants, ``lr.*`` and the Byzantine-client ``bl.*``; each register is
charged to its writer's quota), and by every node of a cluster whose blocks live in
registers (``blocks = "registers"``: FaB on fewer nodes than PASIS needs), with the
blocks' history (``bl.past``), a restarted node's catch-up (``bl.sync``) and
``rw.space``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bftfs.fsobjects import OBJECT_TYPES as FS_TYPES
from bftfs.listeners import bhistory, bnodeside, bsync
from bftfs.listeners import nodeside as listeners
from bftfs.node import audits, rw_server
from bftfs.qu.objects import ObjectType
from bftfs.rw.messages import KIND_SPACE
from bftfs.thresholds import pasis_rule

if TYPE_CHECKING:
    from bftfs.node.service import Node

#: What a node serves when given no other types.
PRODUCTION_TYPES: tuple[ObjectType, ...] = tuple(FS_TYPES)


def register_all(node: Node, extra_object_types: Sequence[ObjectType] = ()) -> list[str]:
    """Register both protocols' handlers with ``node``, serving the file system's object
    types and ``extra_object_types``; the servers' names."""
    c = node.config
    blocks = pasis_rule(c.n, c.t, c.b, c.qc, c.m) is None  # not on FaB's 3b + 1 (docs/fab.md)
    if blocks:
        rw = rw_server.register(node)
        audits.register(node, rw.notified_by)  # proofs of storage, contributions (docs/bar.md)
    held = None
    if node.serve_registers:  # beside the engine (docs/listeners.md)
        held = listeners.register(node).byzantine
    if c.blocks == "registers":  # the file blocks (docs/listeners.md "Blocks on four nodes")
        held = held or bnodeside.register(node)
        bhistory.register(node, held.regs.get)
        bsync.register(node)  # a restarted node catches up
        node.register(KIND_SPACE, rw_server.space_handler(node), inline=True)
    types = (*extra_object_types, *PRODUCTION_TYPES)
    # Each engine's server is imported only where it runs: a node process starts in about
    # 0.7 s of CPU, most of it imports, and a cluster of six starts for every test of real
    # processes.
    if node.config.engine == "fab":  # the metadata methods ordered by FaB (docs/fab.md)
        from bftfs.node import fab_server

        fab_server.register(node, object_types=types)
        return ["rw", "fab"] if blocks else ["bl", "fab"]
    from bftfs.node import qu_server

    qu_server.register(node, object_types=types)
    return ["rw", "qu"]
