"""FaB Paxos: two-step Byzantine consensus ordering object methods (seed 003 ch. 6; issue 39).

A second metadata engine beside Q/U: the same deterministic object methods
(:class:`bftfs.qu.objects.Registry`, the file system's ``bftfs.fsobjects``), ordered by FaB
Paxos with ``a = 5f + 1`` acceptors (``bftfs.quorums.fab``) and executed in slot order.
The core is pure (no I/O, no clock); ``service`` drives it over the transport, ``durable``
keeps it across restarts, ``metaclient`` is what the file system calls on an
``engine = "fab"`` cluster (docs/fab.md, with what is not built yet).

Modules, one job each, bottom up: ``messages`` (wire format), ``auth`` (MAC authenticators
for forwarded statements), ``certificates`` (election proof, checkpoint and progress
certificates), ``acceptor``, ``learner``, ``election``, ``leader`` (the roles),
``execution`` (applying learned operations), ``checkpoints`` (stable checkpoints, log
collection), ``client`` (a client's request and reply certificates), ``replica``
(one node's step), ``durable`` (what a replica keeps across a restart), ``service`` (the
trio shell) and ``metaclient`` (the file system's client).
"""

from __future__ import annotations

from bftfs.fab.client import ReplyCollector, request
from bftfs.fab.execution import NOOP
from bftfs.fab.replica import Replica, Settings, Step

__all__ = ["NOOP", "Replica", "ReplyCollector", "Settings", "Step", "request"]
