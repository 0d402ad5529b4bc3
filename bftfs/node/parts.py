"""What a node's background tasks use of it (:class:`NodeParts`): a typed view of the
:class:`~bftfs.node.service.Node`, so a task's constructor says what it depends on and a
test can hand it something smaller than a whole node.

The tasks that need more (the lazy verifier and the scrubber: the findings, the time of
the latest client request, the server's busy gap; block catch-up: the verifier) take the
``Node`` itself.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

import trio

from bftfs.config import ClusterConfig
from bftfs.ids import PrincipalId
from bftfs.net.endpoint import Endpoint

if TYPE_CHECKING:
    from bftfs.node.store import Store
    from bftfs.node.yielding import Gate


class NodeParts(Protocol):
    """A node's identity, configuration, store and client of the others, its counters and
    logger, its clock, where background work reports progress and the gate its steps
    await."""

    @property
    def id(self) -> PrincipalId: ...

    @property
    def config(self) -> ClusterConfig: ...

    @property
    def store(self) -> Store: ...

    @property
    def endpoint(self) -> Endpoint: ...

    @property
    def stats(self) -> Counter[str]:
        """Counters by name (``bftfs status``, metrics)."""

    @property
    def log(self) -> logging.Logger: ...

    @property
    def progress(self) -> dict[str, dict[str, Any]]:
        """Progress of background work by name (``qu.catchup``, ...), shown by status."""

    @property
    def finished(self) -> dict[str, trio.Event]:
        """Set when the background work of the same name has finished."""

    @property
    def gate(self) -> Gate:
        """What each background step awaits first: client requests go first
        (``node/yielding.py``)."""

    def now_ns(self) -> int:
        """The node's clock (ns since the epoch)."""
